"""Collect finished training jobs into tidy tables.

Every job folder is self-describing (`.hydra/config.yaml`, `eval.csv`,
`status.json`), so this module never parses folder names: the settings of a
job always come from its resolved config. That keeps figures correct when
Hydra's directory layout or a sweep's override names change.

Jobs that cannot be used — failed, still running, without `eval.csv`, or with an
unreadable (corrupt, half-written) CSV or config — are skipped with one warning
line each, never a crash. Older `eval.csv` files (a `scale` column instead of
`param`, no `error_per_dim`, no `failure`) are read into the current columns. Rows of a failed evaluation cell
(NaN numbers, the error line in `failure`) are kept: figures skip NaN, tables show the gap.

Paired differences (`paired_differences`): for every job with `errors.npz`, the
mean difference of its transformer's per-prompt errors to those of a reference
job (default attn softmax, quant none) with the same task, d, model and seed,
on the very same prompts (checked: the zero estimator's errors must be equal),
normalised like `error` (÷ the zero estimator's mean error), with a paired
percentile bootstrap over prompts. Negative: better than the reference.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf._utils import get_yaml_loader

from icl import contract
from icl.contract import EVAL_COLUMNS, read_eval_csv, upgrade_columns  # noqa: F401 - re-exported
from icl.errors import first_line
from icl.run.job import JobDir
from icl.stats import paired_bootstrap, paired_bootstrap_many  # noqa: F401 - paired_bootstrap re-exported

log = logging.getLogger(__name__)

PAIRED_COLUMNS: list[str] = [
    "task", "n_dims", "model", "seed", "attn", "quant", "predictor", "strategy", "param", "k", "diff", "diff_low",
    "diff_high", "n_prompts", "reference_attn", "reference_quant", "run_dir", "reference_run",
]
DEFAULT_REFERENCE: dict[str, str] = {"attn": "softmax", "quant": "none"}
# eval.csv column -> config key it must agree with; used to fill a CSV that lacks one.
IDENTITY_KEYS: dict[str, str] = {
    "task": "task.name", "n_dims": "task.n_dims", "model": "model.name",
    "attn": "attn.name", "quant": "quant.name", "seed": "seed",
}
JOB_COLUMNS: list[str] = [
    "run_dir", "status", "error", "failures", "task", "model", "attn", "quant", "seed",
    "experiment", "n_dims",
]  # failures: evaluation cells of a done job that could not be computed (status.json's list; NaN rows in eval.csv)
SKIP_STATUSES = frozenset({"failed", "running", "interrupted"})
# Config keys that differ between replicates or runs without defining a variant.
_NUISANCE_SUFFIXES = ("seed", "dir", "path", "root", "ckpt", "checkpoint")


def find_jobs(roots: Iterable[str | Path]) -> list[Path]:
    """Every folder under `roots` holding `.hydra/config.yaml`, sorted.

    Searched recursively because single runs and multirun jobs nest at
    different depths; missing roots are skipped so `inputs=[outputs, multirun]`
    works when only one of them exists.
    """
    jobs: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for cfg_file in root.rglob(Path(contract.HYDRA_CONFIG).name):
            if JobDir(cfg_file.parent.parent).is_job():
                jobs.add(cfg_file.parent.parent.resolve())
    return sorted(jobs)


def load_config(job: str | Path) -> DictConfig:
    """The job's config, the single source of truth for its settings (``JobDir.load_config``)."""
    return JobDir(job).load_config()


def _to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain dict, resolving interpolations when possible (hydra: resolvers are gone offline)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - an unresolvable key must not hide the job
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _flatten(node: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, f"{name}.", out)
        elif isinstance(value, (list, tuple)):
            out[name] = str(list(value))
        else:
            out[name] = value


def flatten_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys (`task.n_dims`, `trainer.max_steps`) so configs fit DataFrame columns.

    Lists become strings so every value is hashable and comparable across jobs.
    """
    container = _to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    out: dict[str, Any] = {}
    _flatten(container, "", out)
    return out


class _FastLoader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """libyaml parsing with OmegaConf's scalar rules (its float pattern, e.g. 1e-3 is a float): ~10x faster."""


_FastLoader.yaml_implicit_resolvers = {k: list(v) for k, v in get_yaml_loader().yaml_implicit_resolvers.items()}


def _has_interpolation(node: Any) -> bool:
    if isinstance(node, Mapping):
        return any(_has_interpolation(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_interpolation(v) for v in node)
    return isinstance(node, str) and "${" in node


@lru_cache(maxsize=4096)
def _flat_config_cached(job: str, mtime_ns: int) -> dict[str, Any]:
    resolved = Path(job) / contract.CONFIG
    if resolved.is_file():
        plain = yaml.load(resolved.read_text(), Loader=_FastLoader)
        if isinstance(plain, Mapping) and not _has_interpolation(plain):
            return flatten_config(plain)
    return flatten_config(load_config(job))


def flat_config(job: str | Path) -> dict[str, Any]:
    """``flatten_config(load_config(job))``, read once per job and file version: aggregation reads every job's
    config twice (results and the jobs table), and OmegaConf's pure-Python YAML costs ~20 ms a file. The
    resolved config.yaml has no interpolations, so plain YAML (OmegaConf's scalar rules) gives the same dict;
    anything else takes the OmegaConf path."""
    job = Path(job)
    cfg = job / contract.CONFIG if (job / contract.CONFIG).is_file() else job / contract.HYDRA_CONFIG
    return dict(_flat_config_cached(str(job), cfg.stat().st_mtime_ns))


def read_status(job: str | Path) -> dict[str, Any]:
    """`status` and `error` of a job's status.json (``JobDir.status``)."""
    status = JobDir(job).status()
    return {"status": status["status"], "error": status["error"]}


def _empty_results() -> pd.DataFrame:
    return pd.DataFrame(columns=[*EVAL_COLUMNS, "run_dir", "status"])


def _load_job(job: Path, filename: str) -> pd.DataFrame | None:
    """One job's CSV annotated with its config, or None (with a warning) if unusable."""
    status = read_status(job)
    if status["status"] in SKIP_STATUSES:
        log.warning("skipping %s: status is %s", job, status["status"])
        return None
    path = job / filename
    if not path.exists():
        log.warning("skipping %s: no %s", job, filename)
        return None
    frame = read_eval_csv(path)
    if frame is None:
        return None
    try:
        flat = flat_config(job)
    except Exception as err:  # noqa: BLE001 - a broken config hides one job, never the sweep
        log.warning("skipping %s: unreadable config (%s)", job, first_line(err))
        return None
    for column, key in IDENTITY_KEYS.items():
        if key in flat and (column not in frame or frame[column].isna().all()):
            frame[column] = flat[key]
    frame["run_dir"] = str(job)
    frame["status"] = status["status"]
    frame.attrs["cfg"] = flat  # expanded into cfg.* columns by load_results
    return frame


def load_results(roots: Iterable[str | Path], filename: str = contract.EVAL, cfg_columns: str = "all") -> pd.DataFrame:
    """All jobs' `filename` rows with `run_dir`, `status` and `cfg.*` columns added.

    Failed or still-running jobs are skipped (with a warning) so a half-finished
    sweep can still be plotted. ``cfg_columns="varying"`` keeps only the cfg.* keys
    that differ between the jobs loaded (all that ``variant_label`` can use): at
    sweep scale the ~150 constant keys repeated on every row were most of the memory.
    """
    frames = [f for job in find_jobs(roots) if (f := _load_job(job, filename)) is not None]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return _empty_results()
    configs = [f.attrs.pop("cfg") for f in frames]
    keys = list(dict.fromkeys(k for flat in configs for k in flat))
    if cfg_columns == "varying":
        keys = [k for k in keys if len({_fmt(flat.get(k, math.nan)) for flat in configs}) > 1]
    elif cfg_columns != "all":
        raise ValueError(f"cfg_columns must be 'all' or 'varying', got {cfg_columns!r}")
    for frame in frames:
        frame.attrs.clear()
    lengths = [len(f) for f in frames]
    out = pd.concat(frames, ignore_index=True)
    frames.clear()  # the per-job copies: at sweep scale a third of the peak memory
    cfg = pd.DataFrame({f"cfg.{k}": np.repeat(np.array([flat.get(k, np.nan) for flat in configs], dtype=object), lengths)
                        for k in keys}, index=out.index)
    return pd.concat([out, cfg.infer_objects()], axis=1)


def _is_nuisance(key: str) -> bool:
    """Keys that vary between replicates (seeds, output paths) rather than between variants."""
    leaf = key.rsplit(".", 1)[-1].lower()
    return key.startswith("cfg.hydra.") or leaf.endswith(_NUISANCE_SUFFIXES)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "None" if math.isnan(value) else f"{value:g}"
    return str(value)


def _differing_keys(jobs: pd.DataFrame) -> list[str]:
    """cfg.* keys that take more than one value among `jobs` (one row per run)."""
    keys = []
    for column in jobs.columns:
        if column.startswith("cfg.") and not _is_nuisance(column):
            if jobs[column].map(_fmt).nunique() > 1:
                keys.append(column)
    return keys


def variant_label(df: pd.DataFrame) -> pd.Series:
    """Legend label per row: `model · attn · quant` plus any config keys that tell variants apart.

    Jobs sharing task/n_dims/model/attn/quant but differing in, say, `module.lr`
    get `module.lr=0.001` appended so they get distinct hues; seeds never enter
    the label because several seeds are replicates of one variant. Baseline rows
    are labelled with their predictor name.
    """
    # the label depends on these columns only: built once per distinct combination (a job's few predictors),
    # not once per row (string arithmetic over every row of a sweep cost seconds)
    cols = [c for c in ("model", "attn", "quant", "run_dir", "kind", "predictor") if c in df]
    if not len(df):
        return _labels(df, {}).rename("variant")
    uniq = df[cols].drop_duplicates()
    which = df.groupby(cols, dropna=False, sort=False).ngroup().to_numpy()  # first-seen order, as drop_duplicates
    suffix: dict[str, str] = {}
    if "run_dir" in df:
        group_cols = [c for c in ("task", "n_dims", "model", "attn", "quant") if c in df]
        runs = df.drop_duplicates("run_dir")
        for _, group in runs.groupby(group_cols, dropna=False):
            keys = _differing_keys(group)
            for _, row in group.iterrows():
                parts = [f"{k.removeprefix('cfg.')}={_fmt(row[k])}" for k in keys]
                suffix[row["run_dir"]] = "".join(f" · {p}" for p in parts)
    labels = _labels(uniq, suffix)
    return pd.Series(labels.to_numpy()[which], index=df.index, dtype=labels.dtype, name="variant")


def _labels(df: pd.DataFrame, suffix: dict[str, str]) -> pd.Series:
    base = df["model"].astype(str) + " · " + df["attn"].astype(str) + " · " + df["quant"].astype(str)
    labels = base.copy()
    if "run_dir" in df and len(df):
        labels = base + df["run_dir"].map(suffix).fillna("")
    if "kind" in df:
        is_baseline = df["kind"] == "baseline"
        labels = labels.where(~is_baseline, df["predictor"].astype(str))
    return labels.rename("variant")


def jobs_table(roots: Iterable[str | Path]) -> pd.DataFrame:
    """One row per job (any status) so a sweep's progress and failures are visible at a glance."""
    rows = []
    for job in find_jobs(roots):
        try:
            flat = flat_config(job)
        except Exception as err:  # noqa: BLE001 - listed as broken rather than crashing the table
            rows.append({"run_dir": str(job), "status": "unknown", "error": f"unreadable config: {first_line(err)}"})
            continue
        rows.append({
            "run_dir": str(job),
            **read_status(job),
            "failures": len(JobDir(job).status().get("failures") or []),
            "task": flat.get("task.name"),
            "model": flat.get("model.name"),
            "attn": flat.get("attn.name"),
            "quant": flat.get("quant.name"),
            "seed": flat.get("seed"),
            "experiment": flat.get("experiment"),
            "n_dims": flat.get("task.n_dims"),
        })
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def _param_value(key: str) -> float:
    return np.nan if key in ("", "None") else float(key)


def load_errors(job: str | Path) -> dict[str, np.ndarray] | None:
    """A job's per-prompt errors (``<strategy>/<param>/<predictor>`` → (P, n)), or None if absent/unreadable."""
    try:
        return JobDir(job).read_errors()
    except Exception as err:  # noqa: BLE001 - a corrupt file costs its paired rows only
        log.warning("skipping paired differences of %s: unreadable %s (%s)", job, contract.ERRORS, first_line(err))
        return None


def paired_differences(results: pd.DataFrame, reference: Mapping[str, str] | None = None, n_boot: int = 1000,
                       ci: float = 0.95, seed: int = 0, match: Sequence[str] = ()) -> pd.DataFrame:
    """Each non-reference job's transformer minus the reference job's, per strategy × param × k (see module doc).

    ``match``: columns the pair must share besides task, d, model and seed, e.g. ``("attn",)`` with reference
    ``{"quant": "none"}`` pairs every quant mode with the float model of its own attention."""
    reference = dict(reference or DEFAULT_REFERENCE)
    if results.empty or "run_dir" not in results:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    keys = ["task", "n_dims", "model", "seed", *(c for c in match if c not in reference)]
    jobs = results.drop_duplicates("run_dir")[list(dict.fromkeys(["run_dir", "attn", "quant", *keys, *reference]))]
    is_ref = np.logical_and.reduce([jobs[c].astype(str) == str(v) for c, v in reference.items()])
    refs = {tuple(r[keys]): r["run_dir"] for _, r in jobs[is_ref].iterrows()}
    rows: list[pd.DataFrame] = []
    loaded: dict[str, dict[str, np.ndarray] | None] = {}  # reference jobs' errors, read once for all their partners
    for _, job in jobs[~is_ref].iterrows():
        ref_dir = refs.get(tuple(job[keys]))
        if ref_dir is None:
            continue
        if ref_dir not in loaded:
            loaded[ref_dir] = load_errors(ref_dir)
        mine, theirs = load_errors(job["run_dir"]), loaded[ref_dir]
        if mine is None or theirs is None:
            continue
        pairs: list[tuple[str, str, str]] = []
        for key in sorted(mine):
            strategy, param, predictor = key.rsplit("/", 2)
            zero_key = f"{strategy}/{param}/zero"
            if predictor != "transformer" or key not in theirs or zero_key not in mine or zero_key not in theirs:
                continue
            if mine[zero_key].shape != theirs[zero_key].shape or not np.array_equal(mine[zero_key], theirs[zero_key]):
                log.warning("no paired difference %s vs %s for %s: not the same prompts", job["run_dir"], ref_dir, key)
                continue
            pairs.append((key, strategy, param))
        stats = paired_bootstrap_many([(mine[key], theirs[key], mine[f"{key.rsplit('/', 1)[0]}/zero"])
                                       for key, _, _ in pairs], n_boot, ci, seed)
        if not pairs:
            continue
        widths = [len(st[0]) for st in stats]  # one frame per job: building one per key was a third of the time
        rows.append(pd.DataFrame({
            **{c: job[c] for c in keys[:4]}, "attn": job["attn"], "quant": job["quant"], "predictor": "transformer",
            "strategy": np.repeat([strategy for _, strategy, _ in pairs], widths),
            "param": np.repeat([_param_value(param) for _, _, param in pairs], widths),
            "k": np.concatenate([np.arange(w) for w in widths]),
            **{name: np.concatenate([st[i] for st in stats]) for i, name in enumerate(("diff", "diff_low", "diff_high",
                                                                                        "n_prompts"))},
            "reference_attn": reference.get("attn"), "reference_quant": reference.get("quant"),
            "run_dir": job["run_dir"], "reference_run": ref_dir}))
    rows += baseline_differences(results, set(refs.values()), reference)
    return pd.concat(rows, ignore_index=True).reindex(columns=PAIRED_COLUMNS) if rows else \
        pd.DataFrame(columns=PAIRED_COLUMNS)


def baseline_differences(results: pd.DataFrame, ref_dirs: set[str], reference: Mapping[str, str]) -> list[pd.DataFrame]:
    """Each baseline minus the reference job's transformer: the reference job's own eval.csv carries it
    (``diff_transformer``, paired on the same prompts when the job was evaluated)."""
    if "diff_transformer" not in results:
        return []
    rows = results[results["run_dir"].isin(ref_dirs) & (results["kind"] == "baseline")
                   & results["diff_transformer"].notna()]
    if rows.empty:
        return []
    out = rows[["task", "n_dims", "model", "seed", "attn", "quant", "predictor", "strategy", "param", "k",
                "diff_transformer", "diff_low", "diff_high", "n_prompts", "run_dir"]]
    out = out.rename(columns={"diff_transformer": "diff"}).assign(
        reference_attn=reference.get("attn"), reference_quant=reference.get("quant"), reference_run=out["run_dir"])
    return [out]
