"""Did each job of a sweep learn? The seed study's guard (``configs/study.yaml``'s ``guard:``) on job folders.

``python -m icl.lab.learned sweeps=[<dir>,…] [out=<file.md>]``

Per job: its transformer's normalised error on standard prompts at the guard's k (the task's ``guard.k``, else
min(2d, the last trained k), as the study's), the best baseline that can fit the task at that k
(``guard.baselines``), the guard's bar and whether the model learned; then per config: k of n seeds that did not
learn with a Clopper–Pearson interval — the study's training-failure table for a sweep that is not a study cell (e.g. the demo's
config over training seeds: "the smoke recipe must learn on every seed tried"). The verdict is this rule's, the same
one every study comparison uses, never a reading of the numbers by eye. As in the study, a model with a
non-finite error on any prompt (``errors.npz``, every strategy; eval.csv's means skip such a prompt) did not learn. Jobs are
counted together only when their configs differ in the training seed alone (``config`` in the tables: a
fingerprint of the rest); ``study=paper`` judges by the paper preset's guard. Reads job folders only (no torch).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.errors import HydraException
from omegaconf import MISSING, OmegaConf

from icl import contract
from icl.analysis.results import find_jobs, flatten_config, load_errors
from icl.contract import read_eval_csv
from icl.files import write_text
from icl.lab.study.compact import config_fingerprint, resolved_config
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
    study: str | None = None      # a configs/study/ preset whose guard: is the rule (e.g. paper); null: the CPU study's


def guard_of(preset: str | None = None) -> Guard:
    """The study's guard (with its k per task and the baselines that can fit each task), composed as
    ``python -m icl.study [study=<preset>]`` composes it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("study", overrides=[f"study={preset}"] if preset else [])
    return Guard.from_config(OmegaConf.to_container(cfg.guard, resolve=True))


def job_row(job: Path, guard: Guard) -> dict[str, Any]:
    """One job's guard reading, from its config, eval.csv and errors.npz (a ValueError names what is missing)."""
    config = resolved_config(job)
    flat = flatten_config(config)
    try:
        task, d, seed = str(flat["task.name"]), int(flat["task.n_dims"]), int(flat["seed"])
        k_train = int(flat["task.curriculum.points.end"]) - 1
    except KeyError as err:
        raise ValueError(f"{job}: config.yaml has no {err} (not an icl.train job?)") from None
    frame = read_eval_csv(job / contract.EVAL)
    if frame is None:
        raise ValueError(f"{job}: no readable eval.csv (finish or re-evaluate the job first)")
    std = frame[(frame["strategy"] == "standard") & (frame["param"].isna())]
    k = guard.k_for(task, d, k_train)
    at_k = std[std["k"] == k].set_index("predictor")["error"]
    if "transformer" not in at_k.index:
        raise ValueError(f"{job}: no transformer error at k = {k} on standard prompts (the guard's k for {task}; "
                         f"scored: k = {int(std['k'].min()) if len(std) else '—'}…{int(std['k'].max()) if len(std) else '—'})")
    name, base = guard.best_baseline(task, lambda n: float(at_k.get(n, math.nan)))
    error = float(at_k["transformer"])
    errors = load_errors(job) or {}
    # as Study.learned: a non-finite error on any prompt of any strategy (eval.csv's means skip the prompt)
    finite = all(np.isfinite(v).all() for key, v in errors.items() if key.endswith("/transformer"))
    rest = {key: value for key, value in config.items() if key != "seed"}
    return {"job": job.name, "task": task, "attn": str(flat.get("attn.name")), "quant": str(flat.get("quant.name", "none")),
            "seed": seed, "config": config_fingerprint(rest)[:8], "k": k, "error": error, "baseline": name,
            "baseline_error": base, "bar": guard.bar(base), "finite": finite,
            "learned": guard.learned(error, base) and finite}


def failures(rows: Sequence[Mapping[str, Any]], ci: float) -> list[dict[str, Any]]:
    """k of n seeds that did not learn per config (task × variant × quant mode × everything else but the seed),
    with a Clopper–Pearson interval. A seed twice in one config is refused: it would be counted twice."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["attn"], r["quant"], r["config"]), []).append(r)
    out = []
    for (task, attn, quant, config), mine in sorted(groups.items()):
        seeds = [r["seed"] for r in mine]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"config {config} ({task}, {attn}, {quant}) has seed {max(seeds, key=seeds.count)} in "
                             f"more than one job: {', '.join(r['job'] for r in mine)}; keep one (or move one away)")
        failed = sum(not r["learned"] for r in mine)
        low, high = failure_rate(failed, len(mine), ci)
        out.append({"task": task, "attn": attn, "quant": quant, "config": config, "failed": failed,
                    "seeds": len(mine), "ci_low": low, "ci_high": high,
                    "did not learn": ", ".join(f"seed {r['seed']}" for r in mine if not r["learned"]) or "—"})
    return out


def tables(rows: Sequence[Mapping[str, Any]], fails: Sequence[Mapping[str, Any]], guard: Guard) -> str:
    rule = (f"learned: error at the guard's k ≤ {guard.zero_fraction} (the zero estimator is 1)"
            + (f", or ≤ the best fitting baseline + {guard.baseline_margin} where that is higher"
               if guard.baseline_margin is not None else ""))
    jobs = [{"job": r["job"], "task": r["task"], "attn": r["attn"], "quant": r["quant"], "config": r["config"],
             "seed": r["seed"], "k": r["k"],
             "error": f"{r['error']:.3f}" + ("" if r["finite"] else " (non-finite on some prompt)"),
             "best fitting baseline": f"{r['baseline']} {r['baseline_error']:.3f}",
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
    try:
        guard = guard_of(opts.study)
        rows = sorted((job_row(j, guard) for j in jobs),
                      key=lambda r: (r["task"], r["attn"], r["quant"], r["config"], r["seed"]))
        text = tables(rows, failures(rows, opts.ci), guard)
    except (ValueError, HydraException) as err:
        print(f"error: {PROG}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    print(text)
    if opts.out:
        write_text(Path(opts.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
