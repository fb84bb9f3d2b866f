"""Old per-prompt loops vs the batched baselines, side by side in one process (`make bench-eval`).

For each baseline the loop it replaced (``icl.lab.reference.LOOPS``, or the sequential ``_prefix_fit`` for trees and
xgboost) and the new implementation run on the same evaluation prompts, alternating (``icl.timing.interleaved``),
so a drift of this shared machine hits both alike; the table gives median seconds and the ratio old / new with a
bootstrap CI. Times are this process's CPU seconds (``time.process_time``: on a machine shared with other jobs,
wall time mostly measures their load), except for the trees, whose new path runs in joblib worker processes
that the process clock does not see: wall time there (``clock=`` overrides both). Where the loop is too slow
for all prompts it runs on the first ``loop_prompts`` and its time is
scaled linearly to the new one's prompt count (the loop's cost is exactly linear in prompts: one fit each); the
table says so. It also reports how far the predictions moved (max |new − old| over the prompts both ran) and,
with ``grid=true``, one whole default-grid evaluation of sparse_linear at d = 20 (every strategy, all baselines of
the task, no cache), the issue's 5-minute target.

    python -m icl.bench.eval                     # lasso, gd_2nn, trees + xgboost, bayes (times: docs/baselines.md)
    python -m icl.bench.eval parts=[lasso] grid=true
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from icl import baselines, prompts
from icl.bench.timing import interleaved
from icl.lab.reference import LOOPS
from icl.run.cli import parse
from icl.stats import ratio_ci
from icl.tables import markdown_table
from icl.tasks import build_task


def _prompts(task: str, d: int, n_prompts: int, n_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation's standard prompts (eval.seed 0): the very ones a job's baselines are fitted on."""
    p = prompts.make_prompts("standard", build_task(task, d), n_prompts, n_points, seed=0)
    return p.xs, p.ys


def _lasso_loop(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return torch.stack([LOOPS[f"lasso_{a}"](xs, ys) for a in baselines.LASSO_ALPHAS])


def _lasso_new(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    baselines._LASSO_LAST.clear()  # time the solve, not the memo
    return torch.stack([baselines.predict(f"lasso_{a}", xs, ys) for a in baselines.LASSO_ALPHAS])


TREES = ("tree_depth4", "tree_unbounded", "xgboost")


def _trees_sequential(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The old path: the scikit-learn estimators (DecisionTreeRegressor, XGBRegressor) in this one process."""
    return torch.stack([LOOPS[name](xs, ys) for name in TREES])


def _trees_parallel(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return torch.stack([baselines.predict(name, xs, ys) for name in TREES])


def _bayes_new(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return baselines.predict("bayes", xs, ys, task=build_task("sparse_linear", xs.shape[-1]))


PARTS: dict[str, dict[str, Any]] = {
    # name: task, d, points, the loop, the new version, prompts for each (defaults; CLI overrides), clock
    "lasso": dict(task="sparse_linear", d=20, points=41, old=_lasso_loop, new=_lasso_new, loop_prompts=16,
                  prompts=1280, what="all five α"),
    "gd_2nn": dict(task="relu_2nn", d=20, points=101, old=LOOPS["gd_2nn"],
                   new=lambda xs, ys: baselines.predict("gd_2nn", xs, ys), loop_prompts=16, prompts=16,
                   what="2-layer nets, 100 Adam steps"),
    "trees": dict(task="decision_tree", d=20, points=101, old=_trees_sequential, new=_trees_parallel,
                  loop_prompts=8, prompts=8, what="trees + xgboost: estimators, one process vs lean fits, joblib",
                  clock="wall"),
    "bayes": dict(task="sparse_linear", d=20, points=41, old=None, new=_bayes_new, loop_prompts=0, prompts=1280,
                  what="exact posterior mean, 1140 supports (new; no loop existed)"),
}


CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def run_part(name: str, repeats: int, loop_prompts: int | None, prompts: int | None,
             clock: str = "auto") -> dict[str, Any]:
    """Time one part; returns the row of the table (seconds, ratio and CI, prediction change). ``clock``: cpu,
    wall, or auto (the part's own: cpu unless its new path runs in other processes)."""
    spec = PARTS[name]
    clock = spec.get("clock", "cpu") if clock == "auto" else clock
    P_new = prompts or spec["prompts"]
    P_old = min(loop_prompts or spec["loop_prompts"], P_new)
    xs, ys = _prompts(spec["task"], spec["d"], P_new, spec["points"])
    out: dict[str, torch.Tensor] = {}
    calls: dict[str, Callable[[], object]] = {"new": lambda: out.__setitem__("new", spec["new"](xs, ys))}
    if spec["old"] is not None:
        calls["old"] = lambda: out.__setitem__("old", spec["old"](xs[:P_old], ys[:P_old]))
    times, _ = interleaved(calls, torch.device("cpu"), warmup=0, repeats=repeats, clock=CLOCKS[clock])
    row: dict[str, Any] = {"part": name, "what": spec["what"], "clock": clock, "setting": f"{spec['task']} d={spec['d']}, "
                           f"{spec['points']} points", "new_prompts": P_new, "new_s": float(np.median(times["new"]))}
    if spec["old"] is not None:
        scale = P_new / P_old
        old = np.asarray(times["old"]) * scale
        ratio, lo, hi = ratio_ci(old, times["new"])
        new_small = out["new"][..., :P_old, :].double()  # (…, prompts, n): the prompts both ran
        change = (new_small - out["old"].double()).abs()
        row.update(old_prompts=P_old, old_s=float(np.median(old)), extrapolated=scale != 1, ratio=ratio,
                   ratio_low=lo, ratio_high=hi, max_change=float(change.max()) / float(ys[:P_old].abs().max()),
                   median_change=float(change.median()) / float(ys[:P_old].abs().max()))
        if name == "lasso":  # where the loop's coordinate descent stopped short: by α
            row["change_by_alpha"] = {a: float(change[j].max()) / float(ys[:P_old].abs().max())
                                      for j, a in enumerate(baselines.LASSO_ALPHAS)}
    return row


def grid_seconds() -> float:
    """One default-grid evaluation of sparse_linear d = 20 without a model or cache (all its baselines)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from icl.evaluation import EvalConfig, evaluate
    from icl.run.configs import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["task=sparse_linear", "eval.cache=null"])
    eval_cfg = EvalConfig.from_config(OmegaConf.to_container(cfg.eval, resolve=True))
    t = time.perf_counter()
    evaluate(None, build_task("sparse_linear", 20), eval_cfg, 41, {})
    return time.perf_counter() - t


def markdown(rows: list[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        if "old_s" in r:
            old = f"{r['old_s']:.1f}" + (f" (from {r['old_prompts']} prompts, ×{r['new_prompts'] // r['old_prompts']})"
                                         if r["extrapolated"] else "")
            ratio = f"{r['ratio']:.1f} [{r['ratio_low']:.1f}, {r['ratio_high']:.1f}]"
            change = f"{r['max_change']:.2g}, {r['median_change']:.2g}"
        else:
            old, ratio, change = "—", "—", "—"
        cells.append([f"{r['part']} ({r['what']})", f"{r['setting']}, {r['new_prompts']} prompts", r["clock"], old,
                      f"{r['new_s']:.1f}", ratio, change])
    return markdown_table(["baseline", "setting", "clock", "old loop (s)", "new (s)", "old / new [95% CI]",
                           "change: max, median (÷ max abs y)"], cells) + "\n"


@dataclass
class Options:
    parts: list[str] = field(default_factory=lambda: list(PARTS), metadata={"help": "baselines to time"})
    repeats: int = field(default=3, metadata={"help": "interleaved old/new repeats"})
    loop_prompts: int | None = field(default=None, metadata={"help": "prompts the old loops run on"})
    prompts: int | None = field(default=None, metadata={"help": "prompts the new versions run on"})
    grid: bool = field(default=False, metadata={"help": "also time the default grid of sparse_linear d=20"})
    clock: str = field(default="auto", metadata={
        "help": "cpu: this process's CPU seconds; wall; auto: cpu except trees (joblib workers)"})
    threads: int = field(default=1, metadata={"help": "torch threads (the job's budget)"})


def main(argv: list[str] | None = None) -> None:
    args = parse(Options, argv, "python -m icl.bench.eval", __doc__)
    for name in args.parts:
        if name not in PARTS:
            raise SystemExit(f"error: python -m icl.bench.eval: unknown part {name!r}: choose from {', '.join(PARTS)}")
    if args.clock not in ("auto", *CLOCKS):
        raise SystemExit(f"error: python -m icl.bench.eval: clock={args.clock}: choose auto, {', '.join(CLOCKS)}")
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.parts:
        rows.append(run_part(name, args.repeats, args.loop_prompts, args.prompts, args.clock))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\ntorch threads {torch.get_num_threads()}, repeats {args.repeats}, interleaved old/new, "
          f"clock {args.clock}\n")
    print(markdown(rows))
    for r in rows:
        if "change_by_alpha" in r:
            print("lasso, max change ÷ max |y| by α: " + ", ".join(f"{a}: {v:.2g}" for a, v in r["change_by_alpha"].items()))
    if args.grid:
        print(f"default eval grid, sparse_linear d=20, 41 points, 1280 prompts, all baselines, no cache: "
              f"{grid_seconds():.0f} s")


if __name__ == "__main__":
    main()
