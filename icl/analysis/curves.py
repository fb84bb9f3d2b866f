"""Training curves from every job's metrics.csv: which runs of a sweep learned, and why the others did not.

Reads only the job-folder contract (``config.yaml`` for task/d/attention, ``metrics.csv`` for the curves) through
``icl.results``; never imports torch. ``make figures`` calls ``curve_figures`` (``icl.figures``), which writes:

1. ``training_curves.{png,pdf}``: ``train/loss_rel_zero`` (training loss ÷ the zero estimator's, 1 = learned
   nothing) vs step, log y, one panel per task × d, one line per job coloured by attention variant;
2. ``training_diagnostics.{png,pdf}``: the ``diag/*`` columns ``icl.diagnostics`` logs (attention branch/residual
   norm ratio, score spread, ReLU pass fraction, sigmoid mean weight per layer; the gradient norm), vs step, one
   row per statistic and one column per layer, same colours. Absent when no job logged diagnostics.

Jobs without a metrics.csv (a model reused from the store) or with an unreadable one are skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from icl import contract
from icl.analysis.results import find_jobs, flatten_config, load_config
from icl.analysis.styles import attn_color

log = logging.getLogger(__name__)

LOSS = "train/loss_rel_zero"
DIAG = "diag/"
SMOOTH = 5  # logged points per rolling mean (the per-step loss is noisy)
STAT_LABELS = {
    "attn_ratio": "‖attention branch‖ / ‖residual‖",
    "score_std": "std of s·q·k (causal pairs)",
    "frac_positive": "fraction of scores > 0 (ReLU)",
    "mean_weight": "mean sigmoid weight",
    "grad_norm": "gradient norm (before clipping)",
}


def read_metrics(path: Path) -> pd.DataFrame | None:
    """One row per logged step (the latest write wins after a resume, as icl.loggers.load_metrics), or None."""
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        log.warning("skipping %s: unreadable (%s)", path, str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None
    return df.groupby("step", as_index=False).last() if "step" in df else None


def load_curves(roots: Iterable[str | Path]) -> pd.DataFrame:
    """Every job's metrics.csv rows with ``run_dir``, ``task``, ``n_dims``, ``attn`` columns (empty if none)."""
    frames = []
    for job in find_jobs(roots):
        path = job / contract.METRICS
        if not path.is_file():
            continue
        try:
            flat = flatten_config(load_config(job))
        except Exception as err:  # noqa: BLE001 - a broken job must not hide the others
            log.warning("skipping %s: unreadable config (%s)", job, err)
            continue
        df = read_metrics(path)
        if df is None or df.empty:
            continue
        frames.append(df.assign(run_dir=str(job), task=flat.get("task.name"), n_dims=flat.get("task.n_dims"),
                                attn=flat.get("attn.name")))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _color(attn: str) -> tuple[float, float, float]:

    return attn_color(attn)


def _lines(ax: plt.Axes, df: pd.DataFrame, column: str, smooth: int) -> None:
    """One line per job, coloured by its attention variant."""
    for (attn, _), job in df.dropna(subset=[column]).groupby(["attn", "run_dir"], sort=True):
        job = job.sort_values("step")
        y = job[column].rolling(smooth, min_periods=1).mean() if smooth > 1 else job[column]
        ax.plot(job["step"], y, color=_color(str(attn)), linewidth=1.2, alpha=0.8)


def _legend(fig: plt.Figure, attns: Sequence[str]) -> None:
    handles = [Line2D([], [], color=_color(a), linewidth=2, label=a) for a in attns]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8, frameon=False,
               title="attention")


def plot_training_curves(df: pd.DataFrame) -> plt.Figure:
    """Loss relative to the zero estimator vs step: one panel per (task, d), one line per job."""
    panels = sorted(df[["task", "n_dims"]].drop_duplicates().itertuples(index=False, name=None), key=str)
    ncols = min(len(panels), 4)
    fig, axes = plt.subplots(math.ceil(len(panels) / ncols), ncols, figsize=(4.4 * ncols, 3.4 * math.ceil(len(panels) / ncols)),
                             squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (task, d) in zip(axes.flat, panels):
        _lines(ax, df[(df["task"] == task) & (df["n_dims"] == d)], LOSS, SMOOTH)
        ax.axhline(1.0, color="black", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(f"{task}, d = {d}", fontsize=9)
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("training loss / zero estimator's", fontsize=8)
    _legend(fig, sorted(df["attn"].dropna().unique()))
    fig.tight_layout()
    return fig


def diagnostic_columns(df: pd.DataFrame) -> dict[str, list[str]]:
    """Statistic → its columns, per layer in order (``diag/<stat>/l<layer>``, or ``diag/grad_norm``)."""
    stats: dict[str, list[str]] = {}
    for column in sorted(c for c in df.columns if c.startswith(DIAG) and df[c].notna().any()):
        stats.setdefault(column[len(DIAG):].split("/")[0], []).append(column)
    order = list(STAT_LABELS)
    return dict(sorted(stats.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _layer(column: str) -> str:
    """``diag/attn_ratio/l1`` → "layer 1"; ``diag/grad_norm`` → "whole model"."""
    parts = column[len(DIAG):].split("/")
    return f"layer {parts[1].removeprefix('l')}" if len(parts) > 1 else "whole model"


def plot_diagnostics(df: pd.DataFrame) -> plt.Figure | None:
    """One row per diagnostic statistic, one column per layer; None when no job logged diagnostics."""
    stats = diagnostic_columns(df)
    if not stats:
        return None
    ncols = max(len(cols) for cols in stats.values())
    fig, axes = plt.subplots(len(stats), ncols, figsize=(3.8 * ncols, 2.8 * len(stats)), squeeze=False)
    for row, (stat, columns) in enumerate(stats.items()):
        for col in range(ncols):
            ax = axes[row, col]
            if col >= len(columns):
                ax.set_visible(False)
                continue
            _lines(ax, df, columns[col], 1)
            if stat in ("attn_ratio", "grad_norm", "score_std"):
                ax.set_yscale("log")
            ax.set_title(f"{stat}, {_layer(columns[col])}", fontsize=9)
            ax.set_xlabel("step")
        axes[row, 0].set_ylabel(STAT_LABELS.get(stat, stat), fontsize=8)
    _legend(fig, sorted(df["attn"].dropna().unique()))
    fig.tight_layout()
    return fig


def curve_figures(roots: Iterable[str | Path]) -> dict[str, plt.Figure]:
    """The figures above by file stem (none without any metrics.csv); ``icl.figures`` saves them."""
    df = load_curves(roots)
    if df.empty or LOSS not in df:
        return {}
    figures = {"training_curves": plot_training_curves(df)}
    diagnostics = plot_diagnostics(df)
    if diagnostics is not None:
        figures["training_diagnostics"] = diagnostics
    return figures
