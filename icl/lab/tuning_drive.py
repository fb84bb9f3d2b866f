"""Train a tuning sweep's jobs one at a time, skipping a recipe as soon as the tuning protocol calls it dominated.

``python -m icl.lab.tuning_drive experiment=<tuning experiment> [override ...] [shared=true] [rank=worst]
[reporting_seed=0] [dry_run=true]`` (``make study-tune``)

The sweep is the one ``python -m icl.train -m <overrides>`` would run: the experiment's ``hydra.sweeper.params``,
the command line's values winning, each job in the folder Hydra would give it (``hydra.sweep.dir`` / ``subdir``;
the sweep folder must not change with the time, so a rerun finds it). The jobs run seed-major — every recipe's
first seed, then the next seed, … — so each recipe gets an early verdict, and a later seed goes to the recipes
ranked best so far first, so that a runner-up's next seed is trained only if the leader's did not already dominate
it (``seed=0,1``: tune on seed 0, confirm the winner on seed 1); each job as a one-job ``icl.train -m`` (the sweep's
own checks and failure report apply). Before each job the finished ones are ranked as
``python -m icl.lab.tuning`` ranks them (``icl.lab.tuning.candidates``, with the whole grid as the measure of a
complete recipe): a job whose recipe is dominated — one of its jobs is worse than the worst job of a recipe
complete over the grid, so it cannot win whatever its other jobs score — is not trained. A job done in its folder
is not trained again: a rerun continues where the last one stopped. Exits 1 if a job failed (each one is named).
The selection itself is then ``python -m icl.lab.tuning sweeps=[<sweep folder>] …``.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict

from icl.analysis.results import flatten_config, load_config, read_status
from icl.lab.tuning import (
    Rank,
    candidate_position,
    candidate_status,
    candidates,
    cell_row,
    load_cells,
    recipe_identity,
    same_value,
)
from icl.run.cli import parse
from icl.run.configs import CONFIG_DIR, check_yaml, run_cli
from icl.run.spec import sweep_cells

log = logging.getLogger(__name__)
PROG = "python -m icl.lab.tuning_drive"


@dataclass
class Options:
    """``python -m icl.lab.tuning_drive experiment=<tuning experiment> [override ...] [key=value ...]``."""

    shared: bool = field(default=False, metadata={"help": "one recipe for every variant (as icl.lab.tuning shared=)"})
    rank: Rank = field(default=Rank.worst, metadata={"help": "rank a recipe by its worst or median seed (median: "
                                                         "nothing is dominated, every job trains)"})
    reporting_seed: int = field(default=0, metadata={"help": "eval.seed of the reported numbers (never tuned on)"})
    dry_run: bool = field(default=False, metadata={"help": "list each job's state in order, train nothing"})


@dataclass(frozen=True)
class Job:
    """One job of the sweep: Hydra's number for it, its overrides, its folder and its cell (``cell_row``)."""

    number: int
    overrides: list[str]
    subdir: str
    folder: Path
    cell: dict[str, Any]


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The driver's own ``key=value`` words (``Options``) and the sweep's overrides."""
    own = {f.name for f in fields(Options)}
    words = [w for w in argv if w.split("=", 1)[0] in own or w in ("-h", "--help")]
    return words, [w for w in argv if w not in words]


def plan(overrides: Sequence[str]) -> tuple[Path, list[Job]]:
    """The sweep's folder and every job of it, in Hydra's order (needs an initialised Hydra)."""
    from hydra import compose

    if bad := [o for o in overrides if o.startswith("-")]:
        raise ValueError(f"{bad[0]}: pass config overrides only (the driver runs the sweep itself)")
    base = compose("train", overrides=single_values(overrides), return_hydra_config=True)
    raw_dir = str(OmegaConf.to_container(base.hydra.sweep, resolve=False)["dir"])
    if "${now:" in raw_dir:
        raise ValueError(f"hydra.sweep.dir={raw_dir} changes with the time: set a fixed hydra.sweep.dir (the "
                         "experiment's, or on the command line) so that a rerun finds the finished jobs")
    sweep = Path(str(base.hydra.sweep.dir))
    params = base.hydra.sweeper.get("params") or {}
    # params first, the command line after: for a key in both Hydra's basic sweeper keeps the params' place and
    # the command line's value, so the job numbers are the ones `icl.train -m` would give
    cells = sweep_cells([*(f"{key}={value}" for key, value in params.items()), *overrides])
    jobs = [job_of(number, cell, sweep) for number, cell in enumerate(cells)]
    first: dict[Path, Job] = {}
    for job in jobs:  # a later job would find the earlier one's status "done" in its folder and never run
        if (other := first.setdefault(job.folder, job)) is not job:
            raise ValueError(f"jobs {other.number} and {job.number} of the sweep share the folder {job.folder}: add "
                             "the keys they differ in to hydra.sweep.subdir")
    return sweep, jobs


def single_values(overrides: Sequence[str]) -> list[str]:
    """The overrides without the command line's sweeps (a composition takes one value per key)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
    return [text for text, o in zip(overrides, parsed) if not o.is_sweep_override()]


def job_of(number: int, overrides: list[str], sweep: Path) -> Job:
    from hydra import compose

    cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.job.num = number  # what a subdir of ${hydra.job.num} reads in the sweep
        subdir = str(cfg.hydra.sweep.subdir)
        del cfg["hydra"]
        cfg.paths.output_dir = str(sweep / subdir)  # the job's folder, known now: everything else resolves
    if "'" in subdir or "'" in str(sweep):
        raise ValueError(f"job folder {sweep / subdir} has a quote in its name: choose another hydra.sweep.dir/subdir")
    return Job(number, overrides, subdir, sweep / subdir, cell_row(flatten_config(cfg)))


def seed_major(jobs: Sequence[Job], shared: bool) -> list[Job]:
    """Jobs by training seed, then by recipe (in the order the sweep first reaches it), then Hydra's number."""
    grid = pd.DataFrame([j.cell for j in jobs])
    names = recipe_identity(grid, shared)
    recipes = [tuple(str(job.cell.get(n)) for n in names) for job in jobs]
    first = {recipe: i for i, recipe in reversed(list(enumerate(recipes)))}
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i].cell.get("seed") or 0, first[recipes[i]], jobs[i].number))
    return [jobs[i] for i in order]


def ranking(sweep: Path, grid: pd.DataFrame, options: Options) -> pd.DataFrame | None:
    """``candidates``' table (best first, with each recipe's status) of the sweep's finished jobs; None if none."""
    cells = load_cells([sweep])
    return None if cells.empty else candidates(cells, options.reporting_seed, options.rank, options.shared, grid=grid)


def best_first(pending: Sequence[Job], ranked: pd.DataFrame | None, shared: bool) -> list[Job]:
    """``pending`` (in ``seed_major`` order) by training seed, then by where its recipe ranks now (recipes without a
    finished job after those with one, in their order): a later seed goes to the best recipe first, so the
    runner-up's next seed is trained only if the leader's did not dominate it — ``seed=0,1`` is "tune on seed 0,
    confirm the winner on seed 1" without a second command."""
    def position(job: Job) -> float:
        row = None if ranked is None else candidate_position(ranked, job.cell, shared)
        return math.inf if row is None else row
    order = sorted(range(len(pending)), key=lambda i: (pending[i].cell.get("seed") or 0, position(pending[i]), i))
    return [pending[i] for i in order]


def launch(job: Job, sweep: Path) -> None:
    """The job as a one-job ``icl.train -m`` into its own folder (its output goes to this terminal)."""
    cmd = [sys.executable, "-m", "icl.train", "-m", *job.overrides, f"hydra.sweep.dir='{sweep}'",
           f"hydra.sweep.subdir='{job.subdir}'"]
    log.info("training job %d: %s", job.number, " ".join(job.overrides))
    subprocess.run(cmd, check=False)  # judged by the job's status.json (the caller reads it)


def check_done_folders(jobs: Sequence[Job]) -> None:
    """Refuse a job whose folder holds a finished job of another cell (an older grid with the same folder names):
    counted done, this job would never run and the other cell would be ranked in its place."""
    for job in jobs:
        if read_status(job.folder)["status"] != "done":
            continue
        have = cell_row(flatten_config(load_config(job.folder)))
        if differ := [f"{key}: {have.get(key)} -> {want}" for key, want in job.cell.items()
                      if not same_value(have.get(key), want)]:
            raise ValueError(f"{job.folder} holds a finished job of another cell ({', '.join(differ)}): move it "
                             "away or choose another hydra.sweep.dir")


def drive(sweep: Path, jobs: Sequence[Job], options: Options) -> dict[str, list[Job]]:
    """Run the sweep's jobs seed-major, skipping the done ones and those of dominated recipes; each job's outcome:
    ``done`` (before), ``trained``, ``dominated`` (skipped), ``failed``, ``planned`` (dry run)."""
    check_done_folders(jobs)
    grid = pd.DataFrame([j.cell for j in jobs])
    outcome: dict[str, list[Job]] = {k: [] for k in ("done", "trained", "dominated", "failed", "planned")}
    pending = seed_major(jobs, options.shared)
    while pending:
        ranked = ranking(sweep, grid, options)
        job = best_first(pending, ranked, options.shared)[0]
        pending.remove(job)
        if read_status(job.folder)["status"] == "done":
            outcome["done"].append(job)
            continue
        if ranked is not None and candidate_status(ranked, job.cell, options.shared) == "dominated":
            log.info("skipping job %d (%s): its recipe is dominated", job.number, job.subdir)
            outcome["dominated"].append(job)
            continue
        if options.dry_run:
            log.info("would train job %d (%s)", job.number, job.subdir)
            outcome["planned"].append(job)
            continue
        launch(job, sweep)
        outcome["trained" if read_status(job.folder)["status"] == "done" else "failed"].append(job)
    return outcome


def summary(sweep: Path, outcome: Mapping[str, Sequence[Job]], options: Options) -> str:
    counts = ", ".join(f"{len(jobs)} {name}" for name, jobs in outcome.items() if jobs or name != "planned")
    lines = [f"{sweep}: {counts}"]
    if outcome["failed"]:
        lines.append(f"error: {len(outcome['failed'])} job(s) failed: "
                     + ", ".join(f"{j.folder} ({why_not_done(j.folder)})" for j in outcome["failed"]))
    lines.append(f"select: python -m icl.lab.tuning sweeps=[{sweep}] rank={options.rank} "
                 f"shared={str(options.shared).lower()} reporting_seed={options.reporting_seed}")
    return "\n".join(lines)


def why_not_done(folder: Path) -> str:
    """The folder's error, else its status (``running``: another process holds it; ``incomplete``: never started)."""
    status = read_status(folder)
    return status["error"] or status["status"]


def main(argv: Sequence[str] | None = None) -> int:
    from hydra import initialize_config_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    own, overrides = split_argv(sys.argv[1:] if argv is None else argv)
    options = parse(Options, own, PROG, __doc__)
    check_yaml()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            sweep, jobs = plan(overrides)
        outcome = drive(sweep, jobs, options)
    except (ValueError, HydraException) as err:  # a bad override or value: one line
        log.error("error: %s", str(err).splitlines()[0])
        return 1
    print(summary(sweep, outcome, options))
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))  # run_cli: the joblib launcher's schema warning silenced, as in icl.train
