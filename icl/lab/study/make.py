"""``python -m icl.lab.study.make`` (``make study``): train and export every cell of the grid whose committed
results are missing or were made with another config; a cell whose ``cell.json`` fingerprint matches the config
it would be trained with is skipped. The study can so be built over several sittings and machines: commit the
cells as they finish (``docs/study/cells/<cell>/``). Grid and paths: ``configs/study.yaml``; ``train_overrides``
are added to every cell's training command (e.g. ``trainer=gpu``)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from hydra.errors import HydraException, OverrideParseException
from omegaconf import OmegaConf, open_dict

from icl.analysis.results import find_jobs
from icl.lab.study.compact import CELL_JSON, cell_name, config_fingerprint, export
from icl.lab.study.grid import active
from icl.run.configs import CONFIG_DIR, check_yaml, run_cli

log = logging.getLogger(__name__)


def cell_overrides(grid: Mapping[str, Any], arm: str, task: str, attn: str, seed: int,
                   extra: Sequence[str]) -> list[str]:
    """The training command's overrides for one cell."""
    return [f"experiment={grid['experiment']}", *grid["arms"][arm]["overrides"], f"task={task}", f"attn={attn}",
            f"seed={seed}", *extra]


def expected_fingerprint(overrides: Sequence[str], seed: int | None = None) -> str:
    """The fingerprint of the config a cell would train with (composed, not run), under an initialised Hydra;
    ``seed``: that training seed instead of the composed one (one composition serves every seed of a cell)."""
    return expected_fingerprints(overrides, [seed])[0]


def expected_fingerprints(overrides: Sequence[str], seeds: Sequence[int | None]) -> list[str]:
    from hydra import compose

    cfg = compose("train", overrides=list(overrides))
    out = []
    with open_dict(cfg):  # where the job would run is not hashed; the runtime output dir exists only in a run
        cfg.paths.output_dir = "unset"
        for seed in seeds:
            if seed is not None:
                cfg.seed = seed  # set before resolving, so keys that interpolate the seed follow it
            out.append(config_fingerprint(OmegaConf.to_container(cfg, resolve=True)))
    return out


def committed_fingerprint(cells: Path, name: str) -> str | None:
    path = cells / name / CELL_JSON
    return json.loads(path.read_text()).get("fingerprint") if path.is_file() else None


class Todo(NamedTuple):
    """A cell to (re)train: its name, arm, training overrides, why, and the fingerprint its export must have."""

    name: str
    arm: str
    overrides: list[str]
    why: str
    fingerprint: str


def plan(cfg: Mapping[str, Any]) -> list[Todo]:
    """Every cell to (re)train (of ``only``'s cells where set); the rest match their config."""
    cfg = active(cfg)
    grid, cells = cfg["grid"], Path(cfg["cells"])
    todo, grid_names = [], []
    for arm in grid["arms"]:
        for task, spec in grid["tasks"].items():
            for attn in grid["attns"]:
                seeds = list(range(int(spec["seeds"])))
                wanted = expected_fingerprints(cell_overrides(grid, arm, task, attn, 0, cfg["train_overrides"]), seeds)
                for seed, want in zip(seeds, wanted):
                    name = cell_name(arm, task, attn, seed)
                    overrides = cell_overrides(grid, arm, task, attn, seed, cfg["train_overrides"])
                    have = committed_fingerprint(cells, name)
                    if have != want:
                        todo.append(Todo(name, arm, overrides, "missing" if have is None else "config changed", want))
                    grid_names.append(name)
    return only(todo, cfg.get("only"), grid_names)


def only(todo: list[Todo], names: Sequence[str] | str | None, grid_names: Sequence[str]) -> list[Todo]:
    """The cells of ``todo`` named in ``names`` (``only=[...]``: this sitting's share, another core or machine
    taking the rest); None: all. A name outside the grid is one error line (a typo would otherwise train nothing)."""
    if names is None:
        return todo
    if isinstance(names, str):  # only=<one cell> without brackets
        names = [names]
    if not names:
        raise ValueError("only: an empty list trains nothing: name cells (only=[<arm>-<task>-<attn>-seed<s>]) or "
                         "drop only= for every planned cell")
    unknown = sorted(set(names) - set(grid_names))
    if unknown:
        raise ValueError(f"only: {', '.join(unknown)} not in the grid's cells ({len(grid_names)}: e.g. "
                         f"{grid_names[0]}); name cells as <arm>-<task>-<attn>-seed<s>, or drop the grid's overrides")
    return [t for t in todo if t.name in set(names)]


def run_cell(cfg: Mapping[str, Any], cell: Todo) -> Path:
    """Train and evaluate one cell (a sweep over its quant modes), then export its compact results — only if the
    exported cell has the fingerprint ``plan`` computed for it (a job of the sweep that failed, or an older job
    folder left in the sweep, would otherwise be exported in its place)."""
    sweep = Path(cfg["study_dir"]) / cell.name
    cmd = [sys.executable, "-m", "icl.train", "-m", *cell.overrides, f"hydra.sweep.dir={sweep}",
           f"quant={','.join(cfg['grid']['quants'])}"]
    log.info("training %s: %s", cell.name, " ".join(cmd[2:]))
    subprocess.run(cmd, check=True)
    return checked_export(sweep, Path(cfg["cells"]), cell.arm, int(cfg["paper_d"]), cell.fingerprint)


def checked_export(sweep: Path, cells: Path, arm: str, paper_d: int, want: str) -> Path:
    """Export the one cell in ``sweep`` into ``cells`` if its fingerprint is ``want`` (staged first, so a refused
    export leaves the committed cell as it was)."""
    cells.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cells.parent, prefix=".staging-") as staging:
        (staged,) = export(find_jobs([sweep]), Path(staging), arm, paper_d)
        have = json.loads((staged / CELL_JSON).read_text())["fingerprint"]
        if have != want:
            raise ValueError(f"{sweep.name}: the jobs in {sweep} are of another config (fingerprint {have}, the "
                             f"cell's {want}): a job failed or an older job folder is there; move it away and rerun")
        out = cells / staged.name
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(staged), out)
    return out


def build(cfg: Mapping[str, Any], todo: Sequence[Todo]) -> list[Path]:
    """Run every cell of ``todo`` in turn (each checks its export's fingerprint)."""
    log.info("%d cell(s) to train: %s", len(todo), ", ".join(f"{t.name} ({t.why})" for t in todo) or "none")
    written = []
    for cell in todo:
        start = time.perf_counter()
        written.append(run_cell(cfg, cell))
        log.info("exported %s in %.0f s", written[-1], time.perf_counter() - start)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m icl.lab.study.make [override ...]``: overrides of configs/study.yaml, as for ``icl.study``."""
    from hydra import compose, initialize_config_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_yaml()  # also when main() is called directly, not through run_cli
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = OmegaConf.to_container(compose("study", overrides=words), resolve=True)
            todo = plan(cfg)
            build(cfg, todo)
    except OverrideParseException as err:  # Hydra's grammar: an override inside a list needs quotes
        unquoted = any("=[" in w and "=" in w.split("=[", 1)[1] and "'" not in w for w in words)
        log.error("error: %s%s", str(err).splitlines()[0],
                  " (quote a list's overrides: \"train_overrides=['threads=1']\")" if unquoted else "")
        return 1
    except (ValueError, HydraException, subprocess.CalledProcessError) as err:
        log.error("error: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
