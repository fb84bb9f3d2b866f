"""Compact results of one study cell (one training: arm × task × attention × seed, with its quant modes), written
from finished job folders and read back by the report, which needs nothing else.

``<cells>/<arm>-<task>-<attn>-seed<s>/``:
- ``cell.json``: the cell's identity and config fingerprint, recipe, scale, guard inputs, per-quant mean normalised
  errors per k (transformer and baselines, every strategy: the figures), train/eval seconds, machine;
- ``errors.npz``: per-prompt errors of every evaluated strategy summed over each of the claims' k windows (float16;
  float32 where a sum would overflow it), keys ``<quant>/<strategy>/<param>/<predictor>/<window>`` (transformer per
  quant mode; zero once: every mode is scored on the same prompts) and the window's ks, ``ks/<strategy>/<param>/<window>``.
  Every claim statistic is a ratio of such sums, so the CIs are recomputed exactly from them; per-k curves come
  from ``cell.json``'s means;
- ``curve.csv``: the training curve (step, loss ÷ the zero estimator's), at most ``CURVE_ROWS`` rows;
- ``quant/<mode>.json``: each quant mode's quant.json (how far the quantised model's predictions moved).

``python -m icl.lab.study.compact jobs=[<job folder>,…] cells=docs/study/cells arm=tuned`` exports finished jobs.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import MISSING

from icl import contract
from icl.analysis.results import find_jobs, flat_config, load_errors, read_eval_csv
from icl.files import atomic_write, write_csv, write_npz, write_text
from icl.lab.tuning import RECIPE_KEYS
from icl.run.cli import parse
from icl.run.job import JobDir

CELL_JSON, ERRORS, CURVE, QUANT_DIR = "cell.json", "errors.npz", "curve.csv", "quant"
CURVE_ROWS = 200
# config keys that change neither the trained model nor what is scored (where a job ran, how it logs)
UNHASHED = {"paths", "hydra", "experiment", "ckpt_path", "quant", "threads", "skip_done", "recipe", "callbacks",
            "logger"}
UNHASHED_TRAINER = {"enable_progress_bar", "enable_model_summary", "log_every_n_steps", "default_root_dir"}


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """16 hex digits of the resolved config minus where/how it ran: same fingerprint = same cell results."""
    kept = {k: v for k, v in config.items() if k not in UNHASHED}
    if isinstance(kept.get("trainer"), dict):
        kept["trainer"] = {k: v for k, v in kept["trainer"].items() if k not in UNHASHED_TRAINER}
    if isinstance(kept.get("eval"), dict):
        kept["eval"] = {k: v for k, v in kept["eval"].items() if k != "cache"}
    if isinstance(kept.get("data"), dict):
        kept["data"] = {k: v for k, v in kept["data"].items() if k != "num_workers"}
    return hashlib.sha256(json.dumps(_without_nulls(kept), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _without_nulls(node: Any) -> Any:
    """``node`` without its null entries: an option added later defaults to null (= its former behaviour), so a
    cell trained before the option existed keeps its fingerprint."""
    if isinstance(node, Mapping):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    return node


@dataclass(frozen=True)
class Windows:
    """The claims' k windows at this scale (paper k values scaled by d / paper_d)."""

    fit: list[int]        # k = d … k_train: (a), (c), (e)
    robust: list[int]     # "from about 15 examples on" … k_train: (b)
    beyond: list[int]     # k_train + 1 … n_positions − 1: (d)

    @classmethod
    def of(cls, d: int, k_train: int, n_positions: int, paper_d: int) -> "Windows":
        start = max(1, min(k_train, round(15 * d / paper_d)))
        return cls(list(range(min(d, k_train), k_train + 1)), list(range(start, k_train + 1)),
                   list(range(k_train + 1, n_positions)))

    @property
    def early(self) -> list[int]:
        """(d)'s "first": the first half of the extended context."""
        return self.beyond[:(len(self.beyond) + 1) // 2]

    @property
    def late(self) -> list[int]:
        """(d)'s "then": the second half."""
        return self.beyond[(len(self.beyond) + 1) // 2:]

    def named(self, strategy: str) -> dict[str, list[int]]:
        """The windows a strategy's errors are summed over (non-empty ones)."""
        out = {"fit": self.fit}
        if strategy == "scale_x":
            out["robust"] = self.robust
        if strategy == "long_context":
            out |= {"early": self.early, "late": self.late}
        return {name: ks for name, ks in out.items() if ks}


def window_sums(errors: np.ndarray, windows: Windows, strategy: str) -> dict[str, tuple[list[int], np.ndarray]]:
    """Per window: its ks (those the errors reach) and the (P,) per-prompt sum over them, float16 when it fits."""
    out = {}
    for name, ks in windows.named(strategy).items():
        ks = [k for k in ks if k < errors.shape[1]]
        if ks:
            sums = errors[:, ks].astype(np.float64).sum(1)
            with np.errstate(over="ignore"):
                small = sums.astype(np.float16)
            # per prompt: a NaN prompt elsewhere must not hide a finite sum that float16 turns into inf
            fits = np.array_equal(np.isfinite(small), np.isfinite(sums))
            out[name] = (ks, small if fits else sums.astype(np.float32))
    return out


def cell_name(arm: str, task: str, attn: str, seed: int) -> str:
    return f"{arm}-{task}-{attn}-seed{seed}"


def resolved_config(job: Path) -> dict[str, Any]:
    """The job's resolved config.yaml, as a plain dict."""
    import yaml

    return yaml.safe_load((job / contract.CONFIG).read_text())


def trained_by(job: Path) -> Path:
    """The job folder that trained ``job``'s model: itself, or — when its model came from the trained-model store
    (``icl/run/store.py``) — the job that published it (status.json's ``trained_by``), whose metrics.csv holds the
    training curve. A publisher that no longer exists on this machine leaves ``job``."""
    by = (JobDir(job).status().get("metrics") or {}).get("trained_by")
    return Path(by) if by and Path(by).is_dir() else job


def _curve(job: Path) -> pd.DataFrame:
    path = job / contract.METRICS
    if not path.is_file():
        return pd.DataFrame(columns=["step", "loss_rel_zero"])
    df = pd.read_csv(path)
    if "train/loss_rel_zero" not in df:
        return pd.DataFrame(columns=["step", "loss_rel_zero"])
    df = df[["step", "train/loss_rel_zero"]].dropna().rename(columns={"train/loss_rel_zero": "loss_rel_zero"})
    df = df.groupby("step", as_index=False).mean()
    if len(df) > CURVE_ROWS:  # mean over equal blocks of steps: keeps the shape, drops the noise
        df = df.groupby(np.arange(len(df)) * CURVE_ROWS // len(df)).mean()
    return df.reset_index(drop=True)


def _means(eval_csv: pd.DataFrame) -> dict[str, dict[str, list[float | None]]]:
    """``strategy/param`` → predictor → mean normalised error per k (index = k)."""
    out: dict[str, dict[str, list[float | None]]] = {}
    params = pd.to_numeric(eval_csv["param"], errors="coerce")
    df = eval_csv.assign(strategy=eval_csv["strategy"].fillna("standard"),
                         tag=["" if math.isnan(p) else repr(float(p)) for p in params])
    for (strategy, param, predictor), sub in df.groupby(["strategy", "tag", "predictor"]):
        errs = sub.set_index("k")["error"]
        row = [None if math.isnan(float(errs.get(k, math.nan))) else round(float(errs[k]), 5)
               for k in range(int(errs.index.max()) + 1)]
        out.setdefault(f"{strategy}/{param}", {})[predictor] = row
    return out


def _versions(job: Path) -> dict[str, Any]:
    """``job``'s versions.json (seed, threads, library versions, git commit); {} without one."""
    path = job / contract.VERSIONS
    return json.loads(path.read_text()) if path.is_file() else {}


def export(jobs: Sequence[Path], cells: Path, arm: str, paper_d: int) -> list[Path]:
    """Write one cell per training among ``jobs`` (grouped by task, attention, seed); returns the cell folders.
    Per-prompt errors of every evaluated strategy are kept on the claims' k windows (``Windows.ks``)."""
    groups: dict[tuple[str, str, int], list[tuple[str, Path, dict]]] = {}
    for job in jobs:
        if JobDir(job).status()["status"] != "done":
            raise ValueError(f"{job} is not done: finish it (rerun its command) before exporting")
        flat = flat_config(job)
        key = (str(flat["task.name"]), str(flat["attn.name"]), int(flat["seed"]))
        groups.setdefault(key, []).append((str(flat["quant.name"]), job, flat))
    return [write_cell(cells, arm, *key, sorted(members), paper_d)
            for key, members in sorted(groups.items())]


def write_cell(cells: Path, arm: str, task: str, attn: str, seed: int, members: list[tuple[str, Path, dict]],
               paper_d: int) -> Path:
    quants = [q for q, _, _ in members]
    if "none" not in quants or len(set(quants)) != len(quants):
        raise ValueError(f"cell {task}/{attn}/seed {seed}: need exactly one float job (quant=none) and one job per "
                         f"quant mode, got {quants}")
    float_job, flat = next((j, f) for q, j, f in members if q == "none")
    d, k_train, n_pos = int(flat["task.n_dims"]), int(flat["task.curriculum.points.end"]) - 1, int(
        flat["model.n_positions"])
    win = Windows.of(d, k_train, n_pos, paper_d)
    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {}
    zero_ref: dict[str, np.ndarray] = {}
    for quant, job, _ in members:
        errors = load_errors(job) or {}
        for key, model in sorted(errors.items()):
            tag, predictor = key.rsplit("/", 1)
            zero = errors.get(f"{tag}/zero")
            if predictor != "transformer" or zero is None:
                continue
            if tag in zero_ref and not np.array_equal(zero_ref[tag], zero, equal_nan=True):
                raise ValueError(f"{job} was scored on other {tag} prompts than its float job: re-evaluate it with "
                                 "the same eval.seed / eval.n_prompts")
            zero_ref.setdefault(tag, zero)
            strategy = tag.split("/", 1)[0]
            for name, (ks, sums) in window_sums(model, win, strategy).items():
                arrays[f"{quant}/{tag}/transformer/{name}"] = sums
                arrays[f"ks/{tag}/{name}"] = np.asarray(ks, np.int16)
            for name, (_, sums) in window_sums(zero, win, strategy).items():
                arrays.setdefault(f"none/{tag}/zero/{name}", sums)
        eval_csv = read_eval_csv(JobDir(job).eval_csv)
        if eval_csv is None:
            raise ValueError(f"{job}: no readable eval.csv")
        metrics = JobDir(job).status().get("metrics") or {}
        summary[quant] = {"means": _means(eval_csv), "train_seconds": metrics.get("train_seconds"),
                          "eval_seconds": metrics.get("eval_seconds")}
    config = resolved_config(float_job)
    fingerprint = config_fingerprint(config)
    for quant, job, _ in members:  # a cell is one training: every quant mode's job must be of the float job's config
        if quant != "none" and config_fingerprint(resolved_config(job)) != fingerprint:
            raise ValueError(f"cell {task}/{attn}/seed {seed}: {job} was run with another config than the float job "
                             f"{float_job} (an older job folder?): move it away and rerun the cell")
    out = cells / cell_name(arm, task, attn, seed)
    if out.exists():
        shutil.rmtree(out)
    (out / QUANT_DIR).mkdir(parents=True)
    versions = _versions(float_job)
    trainer = trained_by(float_job)
    by = (JobDir(float_job).status().get("metrics") or {}).get("trained_by")
    # the publisher of a store model gone from this machine: who trained it, with what, is unknown (not this job)
    made = {} if by and not Path(by).is_dir() else _versions(trainer)
    cell = {
        "cell": out.name, "arm": arm, "task": task, "attn": attn, "seed": seed,
        "fingerprint": fingerprint, "n_dims": d, "k_train": k_train, "n_positions": n_pos,
        "steps": int(flat["trainer.max_steps"]), "model": str(flat.get("model.name", "")),
        "recipe": {"name": flat.get("recipe.name"), **{col: flat.get(key) for key, col in RECIPE_KEYS.items()},
                   "batch": flat.get("data.batch_size")},
        "n_prompts": int(next(iter(arrays.values())).shape[0]) if arrays else 0,
        "quants": summary, "versions": versions.get("versions", {}),
        "trained_by": None if trainer == float_job else "/".join(trainer.parts[-2:]),
        # a retraining is bit-identical only with the same torch threads (and host CPU): neither is in the fingerprint
        "training": {key: made.get(key) for key in ("threads", "git_commit")},
    }
    write_npz(out / ERRORS, arrays)
    write_csv(out / CURVE, _curve(trainer), index=False, float_format="%.5g")
    for quant, job, _ in members:
        if (job / contract.QUANT).is_file():
            write_text(out / QUANT_DIR / f"{quant}.json", (job / contract.QUANT).read_text())
    atomic_write(out / CELL_JSON, lambda tmp: tmp.write_text(json.dumps(cell, indent=1, sort_keys=True)))
    return out


@dataclass
class Cell:
    """A committed cell, read back."""

    dir: Path
    meta: dict[str, Any]
    _errors: dict[str, np.ndarray] | None = None

    @property
    def key(self) -> tuple[str, str, str, int]:
        return self.meta["arm"], self.meta["task"], self.meta["attn"], int(self.meta["seed"])

    def errors(self) -> dict[str, np.ndarray]:
        if self._errors is None:
            with np.load(self.dir / ERRORS) as z:
                self._errors = {k: z[k] for k in z.files}
        return self._errors

    def window(self, quant: str, strategy: str, param: float | None, ks: Sequence[int],
               predictor: str = "transformer") -> np.ndarray | None:
        """(P,) per-prompt sum over the window ``ks`` of a predictor's errors (float64), or None if not stored."""
        tag = f"{strategy}/{'' if param is None else repr(float(param))}"
        errors = self.errors()
        for key, stored in errors.items():
            if key.startswith(f"ks/{tag}/") and stored.tolist() == list(ks):
                name = key.rsplit("/", 1)[1]
                sums = errors.get(f"{'none' if predictor == 'zero' else quant}/{tag}/{predictor}/{name}")
                return None if sums is None else sums.astype(np.float64)
        return None

    def mean(self, quant: str, strategy: str, param: float | None, predictor: str, k: int) -> float:
        """Mean normalised error at k from eval.csv's means (NaN when absent)."""
        tag = f"{strategy}/{'' if param is None else repr(float(param))}"
        row = self.meta["quants"].get(quant, {}).get("means", {}).get(tag, {}).get(predictor)
        return math.nan if row is None or k >= len(row) or row[k] is None else float(row[k])

    def curve(self) -> pd.DataFrame:
        return pd.read_csv(self.dir / CURVE)

    def proof(self, quant: str) -> dict[str, Any] | None:
        path = self.dir / QUANT_DIR / f"{quant}.json"
        return json.loads(path.read_text()) if path.is_file() else None


def load_cells(root: Path) -> list[Cell]:
    return [Cell(p.parent, json.loads(p.read_text())) for p in sorted(Path(root).glob(f"*/{CELL_JSON}"))]


@dataclass
class Options:
    jobs: list[str] = field(default=MISSING, metadata={"help": "job folders or folders holding them"})
    cells: str = field(default=MISSING, metadata={"help": "where the cell folders go (docs/study/cells)"})
    arm: str = field(default=MISSING, metadata={"help": "the study arm these jobs belong to (tuned, shared)"})
    paper_d: int = field(default=20, metadata={"help": "the d the paper's k windows are given for (scaled by d / paper_d)"})


def main(argv: Iterable[str] | None = None) -> int:
    args = parse(Options, None if argv is None else list(argv), "python -m icl.lab.study.compact", __doc__)
    try:
        written = export(find_jobs([Path(j) for j in args.jobs]), Path(args.cells), args.arm, args.paper_d)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
