"""Error against inference cost: every trained mixer × quant mode on one chart, with the Pareto front marked.

The error is the job's normalised error at k = 2d on standard prompts (eval.csv, 95% bootstrap CI; several seeds of
one cell: their mean, with a normal interval over the seeds). The cost comes from the rows ``python -m
icl.bench.mixers parts=[inference]`` writes (``inference_cost.csv``: CPU ms per prompt at k = 2d and the state / KV
floats one sequence keeps), joined on (model, attn, quant, n_dims). A point is on the front when no other point
is at most as costly and at most as wrong, and better in one of the two. ``make figures`` draws
``error_vs_cost.{png,pdf}`` and writes ``error_vs_cost.csv`` wherever both kinds of file are found. Pandas and
matplotlib only: the analysis layer never imports torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never open a window

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from icl.analysis.results import load_results
from icl.analysis.styles import attn_color, quant_style
from icl.contract import strategies
from icl.files import atomic_write

log = logging.getLogger(__name__)
COST_FILE = "inference_cost.csv"  # written by icl.bench.mixers (part inference)
JOIN = ["model", "attn", "quant", "n_dims"]
COSTS = {"latency_ms": "CPU time per prompt at k = 2d (ms)", "state_floats": "state / KV floats per sequence"}


def load_costs(inputs: Sequence[str | Path]) -> pd.DataFrame:
    """Every ``inference_cost.csv`` under ``inputs``; a (model, attn, quant, n_dims) measured twice keeps the newest
    file's row."""
    files = sorted({p for root in inputs if Path(root).exists() for p in Path(root).rglob(COST_FILE)},
                   key=lambda p: p.stat().st_mtime)
    if not files:
        return pd.DataFrame(columns=[*JOIN, *COSTS])
    df = pd.concat([pd.read_csv(f).assign(cost_file=str(f)) for f in files], ignore_index=True)
    return df[df["note"].isna() | (df["note"] == "")].drop_duplicates(JOIN, keep="last")


def error_at_2d(results: pd.DataFrame) -> pd.DataFrame:
    """Per (model, attn, quant, n_dims): the transformer's error at k = 2d on standard prompts and its interval
    (one job: its bootstrap CI; several seeds: mean ± 1.96 standard errors over the seeds)."""
    rows = results[(results["predictor"] == "transformer") & (strategies(results) == "standard")]
    rows = rows[rows["k"] == 2 * rows["n_dims"].astype(int)]
    out = []
    for key, cell in rows.groupby(JOIN, sort=True):
        n = cell["run_dir"].nunique()
        if n == 1:
            error, low, high = (float(cell[c].iloc[0]) for c in ("error", "ci_low", "ci_high"))
        else:
            error, half = float(cell["error"].mean()), 1.96 * float(cell["error"].std(ddof=1)) / math.sqrt(n)
            low, high = error - half, error + half
        out.append({**dict(zip(JOIN, key)), "error": error, "error_low": low, "error_high": high, "jobs": n})
    return pd.DataFrame(out, columns=[*JOIN, "error", "error_low", "error_high", "jobs"])


def pareto_front(cost: Sequence[float], error: Sequence[float]) -> np.ndarray:
    """True where no other point has cost <= and error <= with one of them strictly smaller."""
    c, e = np.asarray(cost, dtype=float), np.asarray(error, dtype=float)
    dominated = ((c[None, :] <= c[:, None]) & (e[None, :] <= e[:, None])
                 & ((c[None, :] < c[:, None]) | (e[None, :] < e[:, None])))
    return ~dominated.any(axis=1)


def error_vs_cost(results: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, attn, quant, n_dims) that has both an error and a cost, with ``front_<cost>`` flags."""
    errors = error_at_2d(results)
    if errors.empty or costs.empty:
        return pd.DataFrame()
    costs = costs.astype({"n_dims": int})
    points = errors.astype({"n_dims": int}).merge(costs.drop(columns=["k"], errors="ignore"), on=JOIN, how="left")
    missing = points[points["latency_ms"].isna()]
    for row in missing.itertuples():
        log.warning("error-vs-cost: no cost row for model=%s attn=%s quant=%s n_dims=%s (run python -m "
                    "icl.bench.mixers parts=[inference])", row.model, row.attn, row.quant, row.n_dims)
    points = points.dropna(subset=["latency_ms"]).reset_index(drop=True)
    for cost in COSTS:
        points[f"front_{cost}"] = pareto_front(points[cost], points["error"])
    return points


def plot_error_vs_cost(points: pd.DataFrame) -> plt.Figure:
    """Two panels (latency, state memory): error at k = 2d with its CI per mixer × quant mode, the front joined."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    for ax, (cost, label) in zip(axes, COSTS.items()):
        for row in points.itertuples():
            dashes, marker = quant_style(str(row.quant))
            x = getattr(row, cost)
            xerr = ([[x - row.latency_low_ms], [row.latency_high_ms - x]]
                    if cost == "latency_ms" and pd.notna(row.latency_low_ms) else None)
            ax.errorbar(x, row.error, yerr=[[row.error - row.error_low], [row.error_high - row.error]], xerr=xerr,
                        fmt=marker or "o", color=attn_color(str(row.attn)), ms=7, capsize=2, lw=1,
                        mfc="none" if row.quant != "none" else attn_color(str(row.attn)))
            on_front = getattr(row, f"front_{cost}")
            if cost == "state_floats" and row.quant != "none":  # a quant mode keeps the float state: same x, no label
                continue
            ax.annotate(f"{row.attn}" + ("" if row.quant == "none" else f" / {row.quant}") + (" *" if on_front else ""),
                        (x, row.error), fontsize=6.5, xytext=(4, 3), textcoords="offset points")
        front = points[points[f"front_{cost}"]].sort_values(cost)
        ax.step(front[cost], front["error"], where="post", color="k", lw=1.2, alpha=0.6, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(label + " (log)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper right")
    axes[0].set_ylabel("normalised error at k = 2d (95% CI)")
    axes[0].axhline(1.0, color="grey", ls=":", lw=1)
    axes[1].axhline(1.0, color="grey", ls=":", lw=1)
    fig.suptitle("error vs inference cost per mixer × quant mode (filled: float, hollow: quantized; * on the front)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def error_vs_cost_files(inputs: Sequence[str | Path], out_dir: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """For ``make figures``: the chart and its table when the inputs hold both job errors and cost rows."""
    costs = load_costs(inputs)
    if costs.empty:
        return []
    points = error_vs_cost(load_results(inputs, cfg_columns="varying"), costs)
    if points.empty:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "error_vs_cost.csv"]
    atomic_write(written[0], lambda tmp: points.to_csv(tmp, index=False))
    fig = plot_error_vs_cost(points)
    for fmt in formats:
        path = out_dir / f"error_vs_cost.{fmt}"
        atomic_write(path, lambda tmp, f=fmt: fig.savefig(tmp, dpi=150, format=f))
        written.append(path)
    plt.close(fig)
    return written
