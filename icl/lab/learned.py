"""Did each job of a sweep learn? The seed study's guard (``configs/study.yaml``'s ``guard:``) on job folders.

``python -m icl.lab.learned sweeps=[<dir>,…] [out=<file.md>]``

Per job: its transformer's normalised error on standard prompts at the guard's k (the task's ``guard.k``, else
min(2d, the last k scored)), the best baseline that can fit the task at that k (``guard.baselines``), the guard's bar
and whether the model learned; then per task × variant × quant mode: k of n seeds that did not learn with a
Clopper–Pearson interval — the study's training-failure table for a sweep that is not a study cell (e.g. the demo's
config over training seeds: "the smoke recipe must learn on every seed tried"). The verdict is this rule's, the same
one every study comparison uses, never a reading of the numbers by eye. Reads job folders only (no torch).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

from icl.analysis.results import find_jobs, flatten_config, load_config
from icl.contract import read_eval_csv
from icl.files import write_text
from icl.lab.study.inference import Guard, failure_rate
from icl.run.cli import parse
from icl.run.configs import CONFIG_DIR
from icl.tables import markdown_table

PROG = "python -m icl.lab.learned"


@dataclass
class Options:
    sweeps: list[str] = MISSING   # folders holding job folders (searched recursively)
    out: str | None = None        # also write the tables here (markdown)
    ci: float = 0.95              # of the failure rate's Clopper–Pearson interval
    study: str = str(CONFIG_DIR / "study.yaml")   # whose guard: block is the rule


def guard_of(study_yaml: str | Path) -> tuple[Guard, Mapping[str, Any]]:
    """The study's guard and its ``guard:`` block (k per task, the baselines that can fit each task)."""
    block = OmegaConf.to_container(OmegaConf.load(study_yaml).guard, resolve=True)
    return Guard.from_config(block), block


def job_row(job: Path, guard: Guard, block: Mapping[str, Any]) -> dict[str, Any]:
    """One job's guard reading, from its config and eval.csv."""
    flat = flatten_config(load_config(job))
    task, d = str(flat["task.name"]), int(flat["task.n_dims"])
    frame = read_eval_csv(job / "eval.csv")
    if frame is None:
        raise ValueError(f"{job}: no readable eval.csv (finish or re-evaluate the job first)")
    std = frame[(frame["strategy"] == "standard") & (frame["param"].isna())]
    k = (block.get("k") or {}).get(task)
    k = int(k) if k is not None else min(2 * d, int(std["k"].max()))
    at_k = std[std["k"] == k].set_index("predictor")["error"]
    fitting = [(n, float(at_k[n])) for n in (block.get("baselines") or {}).get(task, []) if n in at_k.index]
    name, base = min(fitting, key=lambda nv: nv[1]) if fitting else ("—", math.nan)
    error = float(at_k.get("transformer", math.nan))
    return {"job": job.name, "task": task, "attn": flat.get("attn.name"), "quant": flat.get("quant.name", "none"),
            "seed": int(flat["seed"]), "k": k, "error": error, "baseline": name, "baseline_error": base,
            "bar": guard.bar(base), "learned": guard.learned(error, base)}


def failures(rows: Sequence[Mapping[str, Any]], ci: float) -> list[dict[str, Any]]:
    """k of n seeds that did not learn per task × variant × quant mode, with a Clopper–Pearson interval."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["attn"], r["quant"]), []).append(r)
    out = []
    for (task, attn, quant), mine in sorted(groups.items()):
        failed = sum(not r["learned"] for r in mine)
        low, high = failure_rate(failed, len(mine), ci)
        out.append({"task": task, "attn": attn, "quant": quant, "failed": failed, "seeds": len(mine),
                    "ci_low": low, "ci_high": high,
                    "did not learn": ", ".join(f"seed {r['seed']}" for r in mine if not r["learned"]) or "—"})
    return out


def tables(rows: Sequence[Mapping[str, Any]], fails: Sequence[Mapping[str, Any]], guard: Guard) -> str:
    rule = (f"learned: error at the guard's k ≤ {guard.zero_fraction} (the zero estimator is 1)"
            + (f", or ≤ the best fitting baseline + {guard.baseline_margin} where that is higher"
               if guard.baseline_margin is not None else ""))
    jobs = [{"job": r["job"], "task": r["task"], "attn": r["attn"], "quant": r["quant"], "seed": r["seed"],
             "k": r["k"], "error": f"{r['error']:.3f}", "best fitting baseline": f"{r['baseline']} {r['baseline_error']:.3f}",
             "bar": f"{r['bar']:.3f}", "learned": "yes" if r["learned"] else "**no**"} for r in rows]
    summary = [{**{k: v for k, v in f.items() if k not in ("ci_low", "ci_high")},
                "failure rate CI": f"[{f['ci_low']:.2f}, {f['ci_high']:.2f}]"} for f in fails]
    return (f"{rule} ({PROG}).\n\n{markdown_table(list(jobs[0]), [r.values() for r in jobs])}\n\n"
            f"{markdown_table(list(summary[0]), [r.values() for r in summary])}\n")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse(Options, argv, PROG, __doc__ or "")
    jobs = find_jobs(opts.sweeps)
    if not jobs:
        print(f"error: {PROG}: no job folders under {', '.join(opts.sweeps)}", file=sys.stderr)
        return 1
    guard, block = guard_of(opts.study)
    try:
        rows = sorted((job_row(j, guard, block) for j in jobs), key=lambda r: (r["task"], r["attn"], r["seed"]))
    except ValueError as err:
        print(f"error: {PROG}: {err}", file=sys.stderr)
        return 1
    text = tables(rows, failures(rows, opts.ci), guard)
    print(text)
    if opts.out:
        write_text(Path(opts.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
