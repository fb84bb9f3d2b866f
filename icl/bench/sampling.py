"""Prompt sampling vs the training step: ``python -m icl.bench.sampling [tasks=[…]] [threads=N] [steps=N] [set=[K=V,…]]``.

For each task (default: the mujoco_* ones) under ``experiment=smoke_mujoco`` it builds the job's data and model as
``icl.train`` would, then alternates, ``steps`` times: draw the batch of step s (``PromptStream.batch_at``), then one
optimiser step on it (forward, loss, backward, Adam). It prints the medians — sampling ms per batch, prompts/s, the
training step's ms — and the share of a step spent sampling, which issue 18 bounds at 20 % (docs/mujoco.md).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from hydra import compose, initialize_config_dir

from icl.data import PromptStream
from icl.run.cli import parse
from icl.run.configs import CONFIG_DIR
from icl.run.train import build
from icl.tables import markdown_table

MUJOCO_TASKS = ("mujoco_pendulum", "mujoco_cartpole", "mujoco_reacher")


def measure(task: str, steps: int, overrides: tuple[str, ...] = ()) -> dict[str, float]:
    """Median sampling and training-step time (seconds) of one task's smoke job, interleaved step by step."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"task={task}", "experiment=smoke_mujoco", "paths.store=null", *overrides])
    datamodule, module = build(cfg)
    stream = PromptStream(datamodule.sampler, datamodule.curriculum, int(cfg.data.batch_size), int(cfg.seed))
    opt = torch.optim.Adam(module.parameters(), lr=float(cfg.optim.lr))
    sample, train = [], []
    for step in range(steps + 3):  # the first 3 warm up (allocations, the simulator's model copies)
        start = time.perf_counter()
        batch = stream.batch_at(step)
        mid = time.perf_counter()
        loss = module.task.loss(module(batch["xs"], batch["ys"]), batch["ys"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        end = time.perf_counter()
        if step >= 3:
            sample.append(mid - start)
            train.append(end - mid)
    s, t = statistics.median(sample), statistics.median(train)
    return {"sample_s": s, "train_s": t, "prompts_per_s": int(cfg.data.batch_size) / s, "share": s / (s + t)}


@dataclass
class Options:
    tasks: list[str] = field(default_factory=lambda: list(MUJOCO_TASKS), metadata={"help": "tasks to time"})
    threads: int = field(default=1, metadata={"help": "torch threads (1: what smoke jobs use here)"})
    steps: int = field(default=50, metadata={"help": "interleaved sampling/training steps"})
    set: list[str] = field(default_factory=list, metadata={
        "help": "Hydra overrides of the job, e.g. set='[task.params.timestep=0.01,task.params.frame_skip=5]'"})


def cli(argv: list[str] | None = None) -> None:
    args = parse(Options, argv, "python -m icl.bench.sampling", __doc__)
    torch.set_num_threads(args.threads)
    rows = []
    for task in args.tasks:
        r = measure(task, args.steps, tuple(args.set))
        rows.append([task, f"{1e3 * r['sample_s']:.1f}", f"{r['prompts_per_s']:.0f}", f"{1e3 * r['train_s']:.1f}",
                     f"{100 * r['share']:.0f} %"])
    print(markdown_table(["task", "sampling ms/batch", "prompts/s", "training step ms", "sampling share"], rows))


if __name__ == "__main__":
    cli()
