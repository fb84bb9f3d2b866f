"""``icl-status sweep=<dir> [rerun=true | dry_run=true]`` (``make status SWEEP=…``): where each job of a sweep stands.

Per job folder under the directory: ``done``, ``running`` (status.json says running and a live process holds the
folder's lock), ``interrupted`` (says running, but no process holds the lock: killed, pre-empted, or the machine went
down; or it recorded a Ctrl-C), ``failed`` (with its error line) or ``not started``; the steps done of the total
(metrics.csv's last step, ``trainer.max_steps``) and, for a running job, an ETA at the rate since it last started.

``rerun=true`` reruns the failed, interrupted and not-started jobs one after another, each into its own folder with the
overrides it was launched with (``.hydra/overrides.yaml``), so each resumes from its last checkpoint; a job whose
folder holds a config other than those overrides compose to today (configs edited since) is refused: resuming
there would continue a different run. ``dry_run=true`` prints the commands instead.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from omegaconf import MISSING, OmegaConf

from icl.run.cli import parse
from icl.run.job import INTERRUPTED, JobDir

RERUN = ("failed", "interrupted", "not started")


def lock_held(job: JobDir) -> bool:
    """Whether a live process holds the job folder's lock (``JobDir.held``: the one probe every reader uses)."""
    return job.held()


@dataclass
class JobState:
    """One job's line in the status table."""

    path: Path
    state: str
    step: int | None = None
    total: int | None = None
    eta_s: float | None = None
    error: str | None = None


def last_step(job: JobDir) -> int | None:
    """metrics.csv's highest step (None without a readable one)."""
    try:
        steps = pd.read_csv(job.metrics_csv, usecols=["step"])["step"]
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    return int(steps.max()) if steps.notna().any() else None


def max_steps(job: JobDir) -> int | None:
    try:
        value = OmegaConf.select(job.load_config(), "trainer.max_steps", throw_on_resolution_failure=False)
    except (FileNotFoundError, ValueError, yaml.YAMLError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def eta(job: JobDir, step: int | None, total: int | None, now: float) -> float | None:
    """Seconds left at the rate since the job last (re)started (config.yaml is written at each start); a resumed
    job's earlier steps count in that rate, so its ETA is optimistic."""
    if not step or not total or not job.config_file.is_file() or not job.metrics_csv.is_file():
        return None
    elapsed = job.metrics_csv.stat().st_mtime - job.config_file.stat().st_mtime
    if elapsed <= 0:
        return None
    rate = step / elapsed
    return max(0.0, (total - step) / rate - (now - job.metrics_csv.stat().st_mtime))


def job_state(job: JobDir, now: float | None = None) -> JobState:
    status = job.status()
    step, total = last_step(job), max_steps(job)
    state, error = status["status"], status.get("error")
    if state == "running":
        state = "running" if lock_held(job) else "interrupted"
    elif state == "failed" and error == INTERRUPTED:
        state = "interrupted"
    elif state == "incomplete":
        state = "running" if lock_held(job) else "not started"
    if state == "done":
        step = total if total is not None else step  # metrics.csv logs every n steps: the last may be short of it
    left = eta(job, step, total, time.time() if now is None else now) if state == "running" else None
    return JobState(job.path, state, step, total, left, error if state == "failed" else None)


def sweep_states(root: str | Path) -> list[JobState]:
    """Every job folder under ``root`` (a sweep, or a single job folder), in path order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory: give a sweep folder (multirun/<date>/<time>) or a job")
    folders = sorted({p.parent.parent for p in root.glob("**/.hydra/config.yaml")}, key=lambda p: str(p))
    return [job_state(JobDir(p)) for p in folders]


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s"


def table(states: Sequence[JobState], root: Path) -> str:
    lines = []
    for s in states:
        name = str(s.path.relative_to(root)) if s.path != root else s.path.name
        steps = "" if s.total is None else f"{s.step or 0}/{s.total} steps"
        extra = f"ETA {_duration(s.eta_s)}" if s.eta_s is not None else (s.error or "")
        lines.append(f"{name:<24} {s.state:<12} {steps:<18} {extra}".rstrip())
    counts = Counter(s.state for s in states)
    lines.append(", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no job folders")
    return "\n".join(lines)


def rerun_command(job: JobDir) -> list[str]:
    """``python -m icl.train <the job's overrides> hydra.run.dir=<job>``; raises ValueError (one line) if the folder
    holds a config that those overrides no longer compose to."""
    overrides_file = job.path / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise ValueError(f"{job.path}: no .hydra/overrides.yaml, so the cell is unknown: rerun it by hand")
    overrides = [str(o) for o in yaml.safe_load(overrides_file.read_text()) or []]
    if job.config_file.is_file():
        check_same_config(job, overrides)
    return [sys.executable, "-m", "icl.train", *overrides, f"hydra.run.dir={job.path}"]


def check_same_config(job: JobDir, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from icl.run.configs import CONFIG_DIR
    from icl.run.train import same_job  # torch: only a rerun needs it
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        now = compose("train", overrides=[*overrides, f"paths.output_dir={job.path}"])
    if not same_job(job.load_config(), now):
        raise ValueError(f"{job.path} holds another config than its overrides compose to now (configs changed "
                         "since it ran): resuming there would continue a different run; move that folder away to "
                         "rerun the cell afresh, or rerun it by hand")


@dataclass
class Options:
    """``icl-status sweep=<dir> [rerun=true | dry_run=true]``."""

    sweep: str = field(default=MISSING, metadata={"help": "a sweep folder (multirun/<date>/<time>) or any folder of jobs"})
    rerun: bool = field(default=False, metadata={"help": "rerun the failed, interrupted and not-started jobs"})
    dry_run: bool = field(default=False, metadata={"help": "print the rerun commands only"})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(Options, argv, "icl-status", __doc__)
    if args.rerun and args.dry_run:
        raise SystemExit("error: icl-status: rerun=true and dry_run=true exclude each other: pass one")
    try:
        states = sweep_states(Path(args.sweep))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(states, Path(args.sweep)))
    if not (args.rerun or args.dry_run):
        return 0
    refused, commands = [], []
    for s in (s for s in states if s.state in RERUN):
        try:
            commands.append(rerun_command(JobDir(s.path)))
        except ValueError as err:
            refused.append(str(err))
    for line in refused:
        print(f"refused: {line}", file=sys.stderr)
    for command in commands:
        print(shlex.join(command))
        if args.rerun and subprocess.run(command).returncode != 0:
            refused.append(f"{command[-1]} failed again")
    return 1 if refused else 0


def cli() -> None:
    """Console script ``icl-status``."""
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
