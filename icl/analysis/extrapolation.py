"""Extended context per positional encoding: which mixers keep their error on prompts longer than they trained on.

Jobs trained on n_train points (``task.curriculum.points.end``) with room for more (``model.n_positions``) and
evaluated with ``eval.strategies.long_context`` (configs/experiment/extended_context.yaml) score every k up to
n_positions − 1. Per job (mixer × ``model.pos`` × quant × seed) the table gives the error at the last trained k
(n_train − 1, standard prompts), at about twice that and at the longest k, each with its 95% bootstrap CI, and the
paired difference at the longest k to the job of the same mixer, quant mode and seed with ``pos: learned`` (the
same prompts: paired bootstrap over them). ``pos: null`` (the mixer's default: learned when it attends, none for
the recurrent mixers) is labelled ``default``. A row *extrapolates* when its error at the
longest k is not above its error at the last trained k: the lower end of the first CI at most the upper end of
the second. ``summary`` pools the seeds of each mixer × pos × quant (counts of seeds, never one seed's verdict).
``make figures`` writes ``extended_context.{csv,md}`` and ``extended_context_summary.csv``. Pandas only: never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from icl.analysis.results import load_results, paired_differences
from icl.contract import strategies
from icl.files import input_relative, write_csv, write_text
from icl.tables import markdown_table

log = logging.getLogger(__name__)
LONG = "long_context"
KEYS = ["task", "n_dims", "model", "attn", "pos", "quant", "seed"]
COLUMNS = [*KEYS, "n_train", "k_trained", "error_trained", "trained_low", "trained_high", "k_mid", "error_mid",
           "mid_low", "mid_high", "k_long", "error_long", "long_low", "long_high", "diff_vs_learned",
           "diff_low", "diff_high", "extrapolates", "run_dir"]


def _with_pos(results: pd.DataFrame) -> pd.DataFrame:
    pos = results["cfg.model.pos"] if "cfg.model.pos" in results else pd.Series(None, index=results.index)
    return results.assign(pos=np.where(pos.isna(), "default", pos.astype(str)),
                          n_train=results["cfg.task.curriculum.points.end"].astype(int))


def _at(rows: pd.DataFrame, k: int) -> tuple[float, float, float]:
    row = rows[rows["k"] == k]
    return tuple(float(row[c].iloc[0]) for c in ("error", "ci_low", "ci_high")) if len(row) else (float("nan"),) * 3


def extended_context(results: pd.DataFrame, n_boot: int = 1000, ci: float = 0.95) -> pd.DataFrame:
    """One row per job that was scored past its training length (module doc)."""
    if results.empty or "cfg.task.curriculum.points.end" not in results:
        return pd.DataFrame(columns=COLUMNS)
    results = _with_pos(results[results["predictor"] == "transformer"])
    results = results.assign(strategy=strategies(results))
    long_jobs = results.loc[results["strategy"] == LONG, "run_dir"].unique()
    results = results[results["run_dir"].isin(long_jobs)]
    if results.empty:
        return pd.DataFrame(columns=COLUMNS)
    paired = paired_differences(results, reference={"pos": "learned"}, n_boot=n_boot, ci=ci,
                                match=("attn", "quant"))
    paired = paired[(paired["strategy"] == LONG) & (paired["predictor"] == "transformer")]
    rows = []
    for run_dir, job in results.groupby("run_dir", sort=False):
        first = job.iloc[0]
        standard, long = job[job["strategy"] == "standard"], job[job["strategy"] == LONG]
        n_train, k_long = int(first["n_train"]), int(long["k"].max())
        k_mid = min(2 * (n_train - 1), k_long)
        mine = paired[(paired["run_dir"] == run_dir) & (paired["k"] == k_long)]
        diff = tuple(float(mine[c].iloc[0]) for c in ("diff", "diff_low", "diff_high")) if len(mine) else \
            (float("nan"),) * 3
        trained, mid, longest = _at(standard, n_train - 1), _at(long, k_mid), _at(long, k_long)
        rows.append({**{c: first[c] for c in KEYS}, "n_train": n_train, "k_trained": n_train - 1,
                     "error_trained": trained[0], "trained_low": trained[1], "trained_high": trained[2],
                     "k_mid": k_mid, "error_mid": mid[0], "mid_low": mid[1], "mid_high": mid[2],
                     "k_long": k_long, "error_long": longest[0], "long_low": longest[1], "long_high": longest[2],
                     "diff_vs_learned": diff[0], "diff_low": diff[1], "diff_high": diff[2],
                     "extrapolates": bool(longest[1] <= trained[2]), "run_dir": run_dir})
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(KEYS, ignore_index=True)


SUMMARY = ["task", "n_dims", "model", "attn", "pos", "quant", "n_train", "k_long", "seeds", "error_trained",
           "error_long", "extrapolate", "paired", "better_than_learned", "worse_than_learned", "verdict"]


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per mixer × pos × quant (and training / scored length), over its training seeds (the unit of replication):
    the mean errors at the last trained and the longest k, on how many seeds the row extrapolates, and, of the seeds
    with a pos=learned twin (``paired``), on how many the paired difference at the longest k is below 0 / above 0
    (CI clear of 0; empty where no seed has a twin). The verdict counts seeds: *extrapolates* on every seed, *does
    not* on none, else *mixed*. A seed found twice (overlapping inputs) counts once."""
    keys = [c for c in KEYS if c != "seed"] + ["n_train", "k_long"]
    rows = []
    for key, group in table.groupby(keys, sort=True, dropna=False):
        if group["seed"].duplicated().any():
            log.warning("%s: a seed appears in more than one job folder; each seed counted once", key)
            group = group.drop_duplicates("seed")
        n, ok = len(group), int(group["extrapolates"].sum())
        paired = group[group["diff_vs_learned"].notna()]
        verdict = "extrapolates" if ok == n else "does not extrapolate" if ok == 0 else f"mixed ({ok} of {n} seeds)"
        rows.append({**dict(zip(keys, key)), "seeds": n, "error_trained": group["error_trained"].mean(),
                     "error_long": group["error_long"].mean(), "extrapolate": ok, "paired": len(paired),
                     "better_than_learned": int((paired["diff_high"] < 0).sum()) if len(paired) else None,
                     "worse_than_learned": int((paired["diff_low"] > 0).sum()) if len(paired) else None,
                     "verdict": verdict})
    return pd.DataFrame(rows, columns=SUMMARY)


def summary_markdown(table: pd.DataFrame) -> str:
    rows = [[r.attn, r.pos, r.quant, r.seeds, f"{r.error_trained:.3f}", f"k = {r.k_long}: {r.error_long:.3f}",
             f"{r.extrapolate} of {r.seeds}",
             "—" if not r.paired else f"{r.better_than_learned:.0f} / {r.worse_than_learned:.0f} of {r.paired}",
             r.verdict] for r in table.itertuples()]
    return markdown_table(["mixer", "pos", "quant", "seeds", "mean error at the last trained k",
                           "mean error at the longest k", "seeds that extrapolate",
                           "seeds better / worse than learned at the longest k (paired CI clear of 0)", "verdict"],
                          rows)


def _ci(value: float, low: float, high: float) -> str:
    return "—" if pd.isna(value) else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def markdown(table: pd.DataFrame) -> str:
    rows = [[r.attn, r.pos, r.quant, r.seed, _ci(r.error_trained, r.trained_low, r.trained_high),
             _ci(r.error_mid, r.mid_low, r.mid_high), _ci(r.error_long, r.long_low, r.long_high),
             _ci(r.diff_vs_learned, r.diff_low, r.diff_high), "yes" if r.extrapolates else "no"]
            for r in table.itertuples()]
    first = table.iloc[0]
    return markdown_table(["mixer", "pos", "quant", "seed", f"error at k = {first.k_trained} (trained)",
                           f"k = {first.k_mid}", f"k = {first.k_long}", "paired diff vs learned at the longest k",
                           "extrapolates"], rows)


def extended_context_files(inputs: Sequence[str | Path], out_dir: Path, n_boot: int = 1000,
                           ci: float = 0.95) -> list[Path]:
    """For ``make figures``: extended_context.csv and .md when some job was scored past its training length."""
    results = load_results(inputs)
    if results.empty or "strategy" not in results or not (strategies(results) == LONG).any():
        return []
    table = extended_context(results, n_boot, ci)
    if table.empty:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pooled = summary(table)
    named = table.assign(run_dir=[input_relative(d, inputs) for d in table["run_dir"]])
    write_csv(out_dir / "extended_context.csv", named, index=False)
    write_csv(out_dir / "extended_context_summary.csv", pooled, index=False)
    write_text(out_dir / "extended_context.md", "Per mixer and pos, over training seeds:\n\n"
               + summary_markdown(pooled) + "\n\nPer job:\n\n" + markdown(table) + "\n")
    return [out_dir / "extended_context.csv", out_dir / "extended_context_summary.csv",
            out_dir / "extended_context.md"]
