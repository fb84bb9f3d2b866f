"""The job's training step against a bare PyTorch loop: ``python -m icl.bench parts=[overhead]`` (``bench=overhead``).

Both sides train the same model from the same initial weights on the same prompt stream with the same optimiser,
schedule and clipping, in one process, in alternating rounds of ``steps_per_round`` steps:

- **job**: ``trainer.fit`` of the real job (``icl.run.train.build`` / ``make_trainer`` on the composed ``train``
  config with ``overrides``, e.g. ``experiment=smoke``): its DataLoader, callbacks (checkpointing, progress bar,
  learning-rate monitor, diagnostics), logger and metrics. A step's time is the interval between two consecutive
  ``on_train_batch_end`` calls of the last callback (``Rounds``): one whole loop iteration, whatever runs in it.
- **bare**: ``BareLoop``, what one would write by hand: sample the batch of step s, forward, loss, backward, clip,
  step, schedule. Its rounds run inside ``Rounds``' hook, between two job steps, and are left out of the job's
  intervals; so the two sides alternate without restarting the fit, and no set-up cost enters either.

Reported: each side's ms per step (median over rounds of the round's mean step) and job / bare with a bootstrap CI
(``icl.stats.ratio_ci``). Where the job's extra time goes: a separate profiled fit of the same job under Lightning's
``SimpleProfiler`` (mean ms per step of every hook and loop action) and ``cProfile`` (functions by own time), written
to ``out_dir``. ``BareLoop`` also serves the test that the job's training is arithmetically the bare loop's
(identical parameters after a few steps).
"""

from __future__ import annotations

import copy
import cProfile
import io
import logging
import pstats
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from icl.data import PromptDataModule, PromptStream
from icl.files import write_text
from icl.module import ICLModule, lr_lambda, make_optimizer
from icl.run.configs import CONFIG_DIR
from icl.tables import markdown_table

log = logging.getLogger(__name__)


def job_config(overrides: list[str], out_dir: Path) -> DictConfig:
    """The composed ``train`` config with ``overrides``, writing into ``out_dir``, sharing no trained model."""
    args = [*overrides, f"paths.output_dir={out_dir}", "paths.store=null"]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app (the bench CLI): same config directory
        return compose("train", overrides=args)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=args)


class BareLoop:
    """The job's training in plain PyTorch: a copy of ``module``'s model (same weights), the job's optimiser and
    schedule, gradient clipping at ``clip`` (None: none), batch s = ``PromptStream.batch_at(s)`` of ``datamodule``."""

    def __init__(self, module: ICLModule, datamodule: PromptDataModule, max_steps: int, clip: float | None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.model = copy.deepcopy(module.model).train()
        self.initial = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        self.task, self.clip, self.step = module.task, clip, 0
        self.opt = make_optimizer(self.model.parameters(), lr=module.optim["lr"], weight_decay=module.optim["weight_decay"])
        schedule = lr_lambda(module.optim["schedule"], int(module.optim["warmup_steps"]), max(max_steps, 1))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        self.stream = PromptStream(datamodule.sampler, datamodule.curriculum, datamodule.batch_size, datamodule.seed)

    def run(self, steps: int) -> list[float]:
        """Train ``steps`` steps; seconds per step."""
        times, start = [], self.clock()
        for _ in range(steps):
            batch = self.stream.batch_at(self.step)
            self.opt.zero_grad(set_to_none=True)
            loss = self.task.loss(self.model(batch["xs"], batch["ys"]), batch["ys"])
            loss.backward()
            if self.clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.opt.step()
            self.sched.step()
            self.step += 1
            now = self.clock()
            times.append(now - start)
            start = now
        return times


class Rounds(L.Callback):
    """Times every job step (interval between consecutive ``on_train_batch_end``); after every ``steps`` job steps
    runs ``steps`` bare steps (``bare``, may be None) whose time is left out of the job's intervals; stops the fit
    after ``rounds`` rounds (so the job's lr schedule still spans its ``max_steps``)."""

    def __init__(self, steps: int, rounds: int, bare: BareLoop | None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.steps, self.rounds, self.bare, self.clock = steps, rounds, bare, clock
        self.job: list[list[float]] = [[]]
        self.bare_rounds: list[list[float]] = []
        self.last: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        now = self.clock()
        if self.last is not None:
            self.job[-1].append(now - self.last)
        if len(self.job[-1]) == self.steps:
            if self.bare is not None:
                self.bare_rounds.append(self.bare.run(self.steps))
            if len(self.job) == self.rounds:
                trainer.should_stop = True
            self.job.append([])
            now = self.clock()
        self.last = now


def clip_value(cfg: DictConfig) -> float | None:
    value = cfg.trainer.get("gradient_clip_val")
    return None if value is None else float(value)


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}  # process: this process's CPU seconds


def check(part: DictConfig) -> None:
    """The ``overhead`` settings, each bad one as one line."""
    if part.clock not in CLOCKS:
        raise ValueError(f"overhead.clock must be one of {', '.join(CLOCKS)}, got '{part.clock}'")
    for key in ("steps_per_round", "rounds"):
        if not isinstance(part[key], int) or part[key] < 1:
            raise ValueError(f"overhead.{key} must be an integer >= 1, got {part[key]!r}")
    if not isinstance(part.profile_steps, int) or part.profile_steps < 0:
        raise ValueError(f"overhead.profile_steps must be an integer >= 0 (0: no profile), got {part.profile_steps!r}")


def timed_job(cfg: DictConfig, steps: int, rounds: int, seed: int, clock: str = "wall") -> Rounds:
    """Fit the job for ``rounds`` rounds (+1 warm-up round, untimed) with a bare round after each, timed by ``clock``
    (``CLOCKS``: wall time, or CPU seconds, the fairer one on a shared machine with one thread)."""
    from icl.run.train import build, make_trainer

    L.seed_everything(seed, workers=True, verbose=False)
    datamodule, module = build(cfg)
    bare = BareLoop(module, datamodule, int(cfg.trainer.max_steps), clip_value(cfg), CLOCKS[clock])
    timer = Rounds(steps, rounds + 1, bare, CLOCKS[clock])
    trainer = make_trainer(cfg, [timer])
    trainer.fit(module, datamodule=datamodule)
    return timer


def profiled_job(cfg: DictConfig, steps: int, out_dir: Path, seed: int) -> tuple[dict[str, float], str]:
    """A separate fit of ``steps`` steps under Lightning's SimpleProfiler and cProfile: mean ms per step of every
    profiled action, and cProfile's top functions by own time (also written to ``out_dir``)."""
    from lightning.pytorch.profilers import SimpleProfiler

    from icl.run.train import build, make_trainer

    L.seed_everything(seed, workers=True, verbose=False)
    datamodule, module = build(cfg)
    trainer = make_trainer(cfg, [Rounds(steps, 1, None)])
    profiler = SimpleProfiler(dirpath=str(out_dir), filename="profile_overhead_lightning")
    trainer.profiler = profiler
    prof = cProfile.Profile()
    prof.enable()
    trainer.fit(module, datamodule=datamodule)
    prof.disable()
    per_step = {re.sub(r"\{.*\}", "", name): 1e3 * float(np.sum(d)) / steps
                for name, d in profiler.recorded_durations.items() if len(d) >= steps}  # the per-step actions
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(40)
    write_text(out_dir / "profile_overhead_cprofile.txt", text.getvalue())
    return per_step, text.getvalue()


def run_overhead(part: DictConfig, out_dir: Path, n_boot: int, ci: float, seed: int) -> tuple[list[dict], str]:
    """Rows of bench.csv (part ``overhead``: one per side) and the markdown section with the profile."""
    from icl.stats import mann_whitney_p, ratio_ci

    steps, rounds = int(part.steps_per_round), int(part.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = job_config(list(part.overrides), Path(tmp))
        needed = max(steps * (rounds + 1) + 1, int(part.profile_steps) + 1)  # +1: the first step has no interval
        if int(cfg.trainer.max_steps) < needed:
            raise ValueError(f"the job's trainer.max_steps ({cfg.trainer.max_steps}) is below the {needed} steps the "
                             "overhead rounds need: raise it in overhead.overrides or lower overhead.rounds")
        timer = timed_job(cfg, steps, rounds, seed, str(part.clock))
        job = np.array([np.mean(r) for r in timer.job[1:rounds + 1]])  # round 0: warm-up
        bare = np.array([np.mean(r) for r in timer.bare_rounds[1:rounds + 1]])
        profile = profiled_job(job_config(list(part.overrides), Path(tmp) / "profiled"), int(part.profile_steps),
                               out_dir, seed) if part.profile_steps else ({}, "")
    ratio, lo, hi = ratio_ci(job, bare, n_boot, ci)
    common = {"part": "overhead", "model": str(cfg.model.name), "attn": str(cfg.attn.name), "quant": "none",
              "n_points": int(cfg.task.curriculum.points.end), "n_dims": int(cfg.task.n_dims),
              "batch": int(cfg.data.batch_size), "steps_per_round": steps, "rounds": len(job),
              "overrides": " ".join(part.overrides), "clock": str(part.clock)}
    rows = [{**common, "impl": impl, "median_ms": 1e3 * float(np.median(t)), "q1_ms": 1e3 * np.quantile(t, 0.25),
             "q3_ms": 1e3 * np.quantile(t, 0.75), "steps_per_s": 1 / float(np.median(t))}
            for impl, t in (("job", job), ("bare", bare))]
    rows[0].update(ratio=ratio, ratio_ci_low=lo, ratio_ci_high=hi, p_value=mann_whitney_p(job, bare))
    return rows, markdown(rows, profile[0], ci)


def markdown(rows: list[dict], per_step: dict[str, float], ci: float) -> str:
    job, bare = rows
    lines = [f"**The job's training step vs a bare PyTorch loop** ({job['overrides']}: model {job['model']}, "
             f"d = {job['n_dims']}, {job['n_points']} points, batch {job['batch']}; {job['rounds']} alternating rounds "
             f"of {job['steps_per_round']} steps, {job['clock']} clock)", "",
             markdown_table(["side", "ms per step (median of rounds) [IQR]", "steps/s", "job / bare [CI]"],
                            ([r["impl"], f"{r['median_ms']:.3g} [{r['q1_ms']:.3g}, {r['q3_ms']:.3g}]",
                              f"{r['steps_per_s']:.3g}",
                              f"{r['ratio']:.3f} [{r['ratio_ci_low']:.3f}, {r['ratio_ci_high']:.3f}] ({ci:.0%})"
                              if r["impl"] == "job" else "1"] for r in rows))]
    if per_step:
        top = sorted(per_step.items(), key=lambda kv: -kv[1])[:25]
        lines += ["", f"Where the job's step goes (Lightning SimpleProfiler, ms per step; bare step "
                      f"{bare['median_ms']:.3g} ms; nested actions overlap):", "",
                  markdown_table(["action", "ms per step"], ([f"`{name}`", f"{ms:.3g}"] for name, ms in top))]
    return "\n".join(lines)
