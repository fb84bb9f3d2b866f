"""Which algorithm does each model run? Figures and a table from every job's algorithms.csv (``icl.agreement``).

``make figures`` calls ``algorithm_files``, which writes, per task:
  closest_learner_<task>.png   the reference learner whose predictions are closest to the model's (smallest
                               pred_diff) at each k, one line per attention variant × quant mode (mean over seeds);
  readout_<task>.png           per-layer read-out error vs depth at k = d and k = 2d (where the prediction forms);
and ``closest_learner.csv``: the same choice as a table, with the distance to the closest and the runner-up.
Never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from icl.analysis.results import find_jobs, read_status
from icl.analysis.styles import attn_color, quant_style
from icl.errors import first_line
from icl.run.job import JobDir

log = logging.getLogger(__name__)
KEYS = ["task", "attn", "quant", "model"]


def load_algorithms(roots: Iterable[str | Path]) -> pd.DataFrame:
    """Every finished job's algorithms.csv rows, with ``run_dir``; jobs without one are skipped silently (opt-in)."""
    frames = []
    for job in find_jobs(roots):
        path = Path(job) / JobDir.ALGORITHMS
        if not path.is_file() or read_status(job)["status"] in ("failed", "running"):
            continue
        try:
            frames.append(pd.read_csv(path).assign(run_dir=str(job)))
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            log.warning("skipping %s: unreadable CSV (%s)", path, first_line(err))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def closest_learner(df: pd.DataFrame) -> pd.DataFrame:
    """Per task × attn × quant × model × k: the learner with the smallest pred_diff (mean over seeds), its value,
    and the runner-up's (how decisive the choice is)."""
    diff = df[(df.metric == "pred_diff") & (df.k > 0)]  # k = 0: every learner predicts 0, a tie
    mean = diff.groupby([*KEYS, "k", "learner"], as_index=False)["value"].mean().dropna(subset=["value"])

    def pick(group: pd.DataFrame) -> pd.Series:
        ranked = group.sort_values("value")
        second = ranked.iloc[1] if len(ranked) > 1 else None
        return pd.Series({"closest": ranked.iloc[0].learner, "pred_diff": ranked.iloc[0].value,
                          "runner_up": None if second is None else second.learner,
                          "runner_up_pred_diff": None if second is None else second.value})

    if mean.empty:
        return pd.DataFrame(columns=[*KEYS, "k", "closest", "pred_diff", "runner_up", "runner_up_pred_diff"])
    return mean.groupby([*KEYS, "k"]).apply(pick, include_groups=False).reset_index()


def plot_closest(task: str, table: pd.DataFrame, order: Sequence[str]) -> plt.Figure:
    """Closest learner (y, in ``order``) vs k, one line per attn × quant × model."""
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(order) + 2))
    rank = {name: i for i, name in enumerate(order)}
    for (attn, quant, model), rows in table.groupby(["attn", "quant", "model"]):
        dashes, marker = quant_style(str(quant))
        rows = rows.sort_values("k")
        ax.plot(rows.k, rows.closest.map(rank), color=attn_color(str(attn)), dashes=dashes, marker=marker,
                label=f"{attn} / {quant} / {model}", alpha=0.85)
    ax.set_yticks(range(len(order)), order)
    ax.set_xlabel("in-context examples k")
    ax.set_ylabel("closest reference learner (smallest pred_diff)")
    ax.set_title(f"{task}: which learner does the model agree with?")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_readout(task: str, rows: pd.DataFrame) -> plt.Figure:
    """Recalibrated read-out error vs layer at k = d and 2d (mean over seeds), one line per attn × quant × model."""
    ks = sorted(rows.k.dropna().unique())
    d = int(rows.n_dims.iloc[0]) if "n_dims" in rows else max(1, (len(ks) - 1) // 2)
    chosen = [k for k in (d, 2 * d) if k in ks] or ks[-1:]
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.5 * len(chosen), 3.6), squeeze=False)
    for ax, k in zip(axes[0], chosen):
        at_k = rows[rows.k == k].groupby(["attn", "quant", "model", "layer"], as_index=False)["value"].mean()
        for (attn, quant, model), line in at_k.groupby(["attn", "quant", "model"]):
            dashes, marker = quant_style(str(quant))
            ax.plot(line.layer, line.value, color=attn_color(str(attn)), dashes=dashes, marker=marker,
                    label=f"{attn} / {quant} / {model}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer (0 = read-in)")
        ax.set_ylabel("read-out error (recalibrated)")
        ax.set_title(f"{task}, k = {int(k)}")
        ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def algorithm_files(inputs: Sequence[str | Path], out: Path, formats: Sequence[str]) -> list[Path]:
    """Write the figures and table of the module doc (nothing when no job has an algorithms.csv)."""
    df = load_algorithms(inputs)
    if df.empty:
        return []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    table = closest_learner(df)
    path = out / "closest_learner.csv"
    table.to_csv(path, index=False)
    written.append(path)
    order = list(dict.fromkeys(df[df.metric == "pred_diff"].learner))
    for task, rows in table.groupby("task"):
        written += _save(plot_closest(str(task), rows, order), out / f"closest_learner_{task}", formats)
    readout = df[df.metric == "readout_error"]
    for task, rows in readout.groupby("task"):
        written += _save(plot_readout(str(task), rows), out / f"readout_{task}", formats)
    return written


def _save(fig: plt.Figure, stem: Path, formats: Sequence[str]) -> list[Path]:
    paths = [stem.with_suffix(f".{fmt}") for fmt in formats]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths
