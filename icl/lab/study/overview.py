"""The overview grid of a study page: per task × arm × variant × quant mode, how well the model learned at the
guard's k — generic for every study preset (the seed study's three kernels, the sequence mixers' grid), whether or
not its grid holds a pair a claim compares.

Computed from the committed cells alone (``icl.lab.study.compact``, read through ``claims.Study``): the mean
normalised error at the guard's k over the seeds that learned, with the seed-level t-interval
(``icl.lab.study.inference.seed_interval``), k of n seeds that learned, the best fitting baseline's error and the
zero estimator's raw error beside it, and how training ended per seed: still improving, loss rose after its
minimum, or unknown (no curve); converged otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from icl.lab.study.claims import Study
from icl.lab.study.compact import Cell
from icl.lab.study.inference import convergence_flags, seed_interval


def _groups(study: Study) -> dict[tuple[str, str, str, str], list[Cell]]:
    """(task, arm, variant, quant) → its committed cells, in the grid's order of arms and variants."""
    arms, attns = list(study.cfg["grid"]["arms"]), list(study.cfg["grid"]["attns"])

    def order(c: Cell) -> tuple:
        m = c.meta
        return (m["task"], arms.index(m["arm"]) if m["arm"] in arms else len(arms),
                attns.index(m["attn"]) if m["attn"] in attns else len(attns), m["attn"], int(m["seed"]))
    out: dict[tuple[str, str, str, str], list[Cell]] = {}
    for cell in sorted(study.cells.values(), key=order):
        for quant in sorted(cell.meta["quants"], key=lambda q: (q != "none", q)):
            out.setdefault((cell.meta["task"], cell.meta["arm"], cell.meta["attn"], quant), []).append(cell)
    return out


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def overview_rows(study: Study) -> list[dict[str, Any]]:
    """One row per task × arm × variant × quant mode of the committed cells (numbers; ``overview_table`` words)."""
    rows = []
    for (task, arm, attn, quant), cells in _groups(study).items():
        ks = {study.guard_k(c) for c in cells}
        if len(ks) != 1:
            raise ValueError(f"cells of {arm}/{task}/{attn} have different guard k {sorted(ks)}: export every seed "
                             "at the same scale")
        (k,) = ks
        errors = [c.mean(quant, "standard", None, "transformer", k) for c in cells]
        learned = [c for c in cells if study.learned(c, quant)[0]]
        iv = seed_interval([c.mean(quant, "standard", None, "transformer", k) for c in learned], study.ci)
        names = {study.best_baseline(c, k)[0] for c in cells} - {"—"}
        win = study.windows(task)
        zeros = [z.mean() / len(win.fit) for c in cells
                 if win is not None and (z := c.window("none", "standard", None, win.fit, "zero")) is not None]
        rows.append({"task": task, "arm": arm, "variant": attn, "quant": quant, "k": k,
                     "learned": len(learned), "seeds": len(cells),
                     "mean": iv.mean, "low": iv.low, "high": iv.high,
                     "mean_all": _finite_mean(errors),
                     **target_columns(errors, study.cfg.get("overview_target"), study.ci),
                     "baseline": "/".join(sorted(names)) or "—",
                     "baseline_error": _finite_mean([study.best_baseline(c, k)[1] for c in cells]),
                     "zero_raw_mse": float(np.mean(zeros)) if zeros else math.nan,
                     "zero_window": f"k = {win.fit[0]}…{win.fit[-1]}" if win is not None and win.fit else "",
                     "improving": [int(c.meta["seed"]) for c in cells if study.improving(c)],
                     "rose": [int(c.meta["seed"]) for c in cells if study.convergence(c).rose],
                     "unknown": [int(c.meta["seed"]) for c in cells if not study.convergence(c).known],
                     "end": "; ".join(convergence_flags([(int(c.meta["seed"]), study.convergence(c).flags)
                                                          for c in cells])) or "converged"})
    return rows


def target_columns(errors: Sequence[float], target: float | None, ci: float) -> dict[str, Any]:
    """The preset's error target at the guard's k (``overview_target``; issue 26: ≤ 0.15 at k = 2d), judged on every
    seed, failed ones included (a failed training counts against the variant, as in every comparison): met when the
    mean over all seeds is at most the target (a non-finite seed: not met), clear when the upper end of their
    t-interval is too. No target: no columns."""
    if target is None:
        return {}
    iv = seed_interval(errors, ci)
    finite = len(errors) > 0 and all(math.isfinite(e) for e in errors)
    return {"target": float(target), "target_mean": iv.mean, "target_low": iv.low, "target_high": iv.high,
            "target_met": finite and iv.mean <= target, "target_clear": finite and iv.high <= target}


def _target_text(row: Mapping[str, Any]) -> str:
    verdict = "yes" if row["target_met"] else "**no**"
    interval = "" if math.isinf(row["target_high"]) else f" [{row['target_low']:.3f}, {row['target_high']:.3f}]"
    clear = ", CI clear" if row["target_clear"] else ""
    return f"{verdict}{clear}: {row['target_mean']:.3f}{interval}"


def _error_text(row: Mapping[str, Any], ci: float) -> str:
    n = row["learned"]
    if n == 0:  # the failed models' level still shown: how far from learning they are
        return f"— (no seed learned; all {row['seeds']}: {row['mean_all']:.3f})"
    if n == 1:
        return f"{row['mean']:.3f} (one seed: no interval)"
    return f"{row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"


def overview_table(rows: Sequence[Mapping[str, Any]], ci: float, table: Any) -> str:
    """The report's section body: one markdown table through the report's ``table`` writer, or a sentence when
    no cell is committed (never an empty table)."""
    if not rows:
        return "No cell is committed."
    lines = [{"task": r["task"], "arm": r["arm"], "variant": r["variant"], "quant": r["quant"], "k": r["k"],
              "learned": f"{r['learned']} of {r['seeds']}",
              f"error at k, mean [{ci:.0%} t-interval] over learned seeds": _error_text(r, ci),
              "best fitting baseline": "—" if math.isnan(r["baseline_error"]) else
              f"{r['baseline']} {r['baseline_error']:.3f}",
              "zero (raw MSE)": "—" if math.isnan(r["zero_raw_mse"]) else f"{r['zero_raw_mse']:.3f} ({r['zero_window']})",
              "end of training": r["end"],
              **({f"≤ {r['target']:g}? (mean of all seeds [{ci:.0%} t-interval])": _target_text(r)}
                 if "target" in r else {})}
             for r in rows]
    return table(lines, list(lines[0]))


def overview_frame_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows as CSV records (the flagged seeds joined)."""
    return [{**r, **{key: " ".join(map(str, r[key])) for key in ("improving", "rose", "unknown")}} for r in rows]
