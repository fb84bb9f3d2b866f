"""A CSV logger that survives resume.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts writing, so resuming a
job into its own folder would erase the curve up to the checkpoint. This one keeps those rows and
appends the new ones (rows logged after the checkpoint by the interrupted run are dropped on read
by ``load_metrics``, which keeps the last row per step).
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pandas as pd
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

from icl.files import write_text
from icl.run.job import JobDir


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/metrics.csv`` that appends to an earlier run's file."""

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = JobDir(self.log_dir).metrics_csv
        previous = path.read_text() if path.is_file() else None
        with warnings.catch_warnings():  # its "previous log files will be deleted" is not true here
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = super().experiment  # this deletes metrics.csv ...
        if previous:  # ... so put it back and continue with its columns
            write_text(path, previous)
            header = next(csv.reader(previous.splitlines()))
            writer.metrics_keys = sorted(header)
        return writer


def load_metrics(path: str | Path) -> pd.DataFrame:
    """A job's training metrics, one row per logged step (the latest write wins after a resume)."""
    df = pd.read_csv(path)
    return df.groupby("step", as_index=False).last() if "step" in df else df


def last_logged_step(path: str | Path) -> int | None:
    """The highest step in a metrics.csv, or None without a readable one (it only informs a resume message)."""
    try:
        steps = pd.read_csv(path, usecols=["step"])["step"]
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    return int(steps.max()) if steps.notna().any() else None
