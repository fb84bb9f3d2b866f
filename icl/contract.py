"""The job-folder contract: file names, eval.csv's columns, errors.npz's keys, and the one eval.csv reader.

Below both the writers (``icl.run.job.JobDir``, ``icl.evaluation``) and the readers (``icl.analysis``), so the two
cannot drift apart. Imports nothing of the project and no torch (``tests/test_layers.py`` checks both).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# Files of a job folder (docs/jobs.md describes each).
CONFIG = "config.yaml"
HYDRA_CONFIG = ".hydra/config.yaml"
STATUS = "status.json"
VERSIONS = "versions.json"
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"
METRICS = "metrics.csv"
QUANT = "quant.json"
EVAL = "eval.csv"
ERRORS = "errors.npz"
ALGORITHMS = "algorithms.csv"  # agreement with reference learners, per-layer read-out (eval.algorithms; opt-in)
DYNAMICS = "dynamics.csv"  # error per k of every periodic checkpoint (eval.algorithms.dynamics; opt-in)
LOCK = ".lock"
BENCH = "bench.csv"

# eval.csv's columns, in order; n_prompts last: never empty, so a row cut short shows (``read_eval_csv``).
EVAL_COLUMNS: list[str] = [
    "task", "attn", "quant", "model", "seed", "strategy", "param", "k", "predictor", "kind", "metric",
    "error", "ci_low", "ci_high", "error_raw", "error_per_dim", "diff_transformer", "diff_low", "diff_high",
    "n_dims", "failure", "n_prompts",
]
REQUIRED_COLUMNS = ("k", "predictor", "kind", "error")
STANDARD = "standard"  # the strategy of plain prompts; empty in eval.csv files older than strategies


def param_key(param: Any) -> str:
    """A strategy parameter as written in errors.npz keys: '' for none, else repr of the float (2 and 2.0 agree)."""
    return "" if param is None else repr(float(param))


def errors_key(strategy: str, param: Any, predictor: str) -> str:
    """The errors.npz key of one predictor's per-prompt errors: ``<strategy>/<param>/<predictor>``."""
    return f"{strategy}/{param_key(param)}/{predictor}"


def strategies(df: pd.DataFrame) -> pd.Series:
    """eval.csv rows' strategy, an empty one (older files) read as standard."""
    return df["strategy"].fillna(STANDARD) if "strategy" in df else pd.Series(STANDARD, index=df.index)


def cap_k(df: pd.DataFrame, k: int) -> int:
    """``k`` capped at the largest k the rows hold (e.g. "the error at k = 2d", where prompts are shorter)."""
    return min(int(k), int(df["k"].max()))


def read_eval_csv(path: Path) -> pd.DataFrame | None:
    """An eval.csv in today's columns, or None with one warning line if it is corrupt or half-written."""
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        log.warning("skipping %s: unreadable CSV (%s)", path, (str(err).splitlines() or [type(err).__name__])[0])
        return None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame]
    k = pd.to_numeric(frame["k"], errors="coerce") if "k" in frame else None
    # a row cut short leaves its trailing fields empty: the last column (n_prompts) is never empty otherwise
    truncated = not missing and (k.isna().any() or frame.iloc[:, -1].isna().any())
    if missing or truncated or pd.to_numeric(frame["error"], errors="coerce").isna().all():
        what = f"missing columns {missing}" if missing else "truncated or non-numeric rows"
        log.warning("skipping %s: unreadable CSV (%s)", path, what)
        return None
    return upgrade_columns(frame)


def upgrade_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Older eval.csv files: `scale` (1 for standard) becomes `param`; `error_per_dim` is derived; an empty
    strategy is standard."""
    frame["strategy"] = strategies(frame)
    if "param" not in frame:
        scale = pd.to_numeric(frame["scale"], errors="coerce") if "scale" in frame else np.nan
        frame["param"] = pd.Series(scale, index=frame.index).where(frame["strategy"] != STANDARD)
    frame = frame.drop(columns=["scale"], errors="ignore")
    if "error_per_dim" not in frame and {"error_raw", "n_dims"} <= set(frame):
        frame["error_per_dim"] = frame["error_raw"] / frame["n_dims"]
    if "failure" not in frame:  # files written before failed cells were recorded had none
        frame["failure"] = np.nan
    return frame


def failures(df: pd.DataFrame) -> list[dict[str, Any]]:
    """One entry per failed cell of an evaluation (what status.json records): strategy, param, predictor, error."""
    if "failure" not in df:
        return []
    rows = df[df["failure"].notna()].drop_duplicates(["strategy", "param", "predictor"])
    return [{"strategy": r.strategy, "param": None if pd.isna(r.param) else r.param, "predictor": r.predictor,
             "error": r.failure} for r in rows.itertuples()]
