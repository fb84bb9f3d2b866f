"""Which algorithm does each model run? Figures and a table from every job's algorithms.csv (``icl.agreement``).

``make figures`` calls ``algorithm_files``, which writes, per task:
  closest_learner_<task>.png   the reference learner whose predictions are closest to the model's (smallest
                               pred_diff) at each k, one line per attention variant × quant mode (mean over seeds);
  readout_<task>.png           per-layer read-out error vs depth at k = d and k = 2d (where the prediction forms);
  task_diversity_<task>.png    error at k = 2d on pool tasks and on fresh tasks vs the training pool's size, the model
                               beside the pool's Bayes predictor and the prior's (jobs trained with task.num_tasks);
  dynamics_<task>.png          error at k = d and 2d vs training step, from every job's dynamics.csv (its periodic checkpoints);
and ``closest_learner.csv`` (the choice as a table, with the runner-up), ``weight_shift.csv`` (per job: how close to
one step of GD, with computed verdicts; ``icl.analysis.weight_shift``) and ``task_diversity.csv`` (per variant, the
pool size from which on the model's fresh-task error is closer to the prior's predictor than to the pool's; the
figure's points in ``task_diversity_curves.csv``), and
``first_below.csv`` (per variant and k: the first checkpoint step whose error is below each of ``LEVELS``).
Never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from icl import contract
from icl.analysis.results import find_jobs, read_status
from icl.analysis.styles import attn_color, quant_style
from icl.analysis.weight_shift import weight_shift_table
from icl.errors import first_line
from icl.files import save_figure, write_csv

log = logging.getLogger(__name__)
KEYS = ["task", "attn", "quant", "model"]


def load_algorithms(roots: Iterable[str | Path]) -> pd.DataFrame:
    """Every finished job's algorithms.csv rows, with ``run_dir``; jobs without one are skipped silently (opt-in)."""
    frames = []
    for job in find_jobs(roots):
        path = Path(job) / contract.ALGORITHMS
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


POOL_METRICS = ("error_pool_tasks", "error_fresh_tasks")


def _at_2d(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows at k = 2d (or the largest k evaluated, if smaller), per job."""
    d = rows.n_dims.astype(int)
    k_max = rows.groupby("run_dir").k.transform("max")
    return rows[rows.k == (2 * d).clip(upper=k_max)]


def pool_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Error at k = 2d per task × metric × learner × attn × quant × model × num_tasks (mean over seeds; the
    reference predictors pool_bayes and bayes are averaged over every job of the pool size)."""
    rows = _at_2d(df[df.metric.isin(POOL_METRICS)])
    model = rows[rows.learner == "transformer"]
    refs = rows[rows.learner != "transformer"].assign(attn="", quant="", model="")
    keys = ["task", "metric", "learner", "attn", "quant", "model", "num_tasks"]
    return pd.concat([model, refs]).groupby(keys, as_index=False)["value"].mean()


GAIN_SHARE = 0.5  # pool_gain below this: the model no longer favours its pool (threshold_by_pool_gain)


def pool_gain(curves: pd.DataFrame) -> pd.DataFrame:
    """Per task × attn × quant × model × num_tasks: the model's advantage on its pool's tasks over fresh ones
    (fresh − pool error) as a share of the pool's Bayes predictor's advantage: 1 = favours the pool as much as the
    pool's posterior does, 0 = not at all (the prior's predictor has none). Differences of the same model's errors, so
    a model that is uniformly worse than both references (under-trained) still reads right."""
    wide = curves.pivot_table(index=["task", "attn", "quant", "model", "learner", "num_tasks"], columns="metric",
                              values="value").reset_index()
    wide["gain"] = wide["error_fresh_tasks"] - wide["error_pool_tasks"]
    ref = wide[wide.learner == "pool_bayes"][["task", "num_tasks", "gain"]].rename(columns={"gain": "ref_gain"})
    model = wide[wide.learner == "transformer"].merge(ref, on=["task", "num_tasks"])
    model["pool_gain"] = model["gain"] / model["ref_gain"]
    return model[[*KEYS, "num_tasks", "pool_gain"]]


def diversity_threshold(curves: pd.DataFrame) -> pd.DataFrame:
    """Per task × attn × quant × model: the smallest pool size from which on (every larger one as well) the model's
    fresh-task error is closer to the prior's Bayes predictor than to the pool's (empty when it never is), and
    ``threshold_by_pool_gain``: the smallest from which on its ``pool_gain`` stays below ``GAIN_SHARE``."""
    gains = pool_gain(curves).set_index([*KEYS, "num_tasks"]).pool_gain
    fresh = curves[curves.metric == "error_fresh_tasks"]
    refs = fresh[fresh.learner != "transformer"].pivot_table(index=["task", "num_tasks"], columns="learner",
                                                             values="value")
    out = []
    for (task, attn, quant, model), rows in fresh[fresh.learner == "transformer"].groupby(KEYS):
        ref = refs.loc[task].reindex(rows.num_tasks)
        to_prior = np.abs(rows.value.to_numpy() - ref["bayes"].to_numpy())
        to_pool = np.abs(rows.value.to_numpy() - ref["pool_bayes"].to_numpy())
        sizes = rows.num_tasks.to_numpy()
        prior_side = to_prior < to_pool
        tail = [i for i in range(len(sizes)) if prior_side[i:].all()]
        shares = gains.reindex([(task, attn, quant, model, m) for m in sizes]).to_numpy()
        low = [i for i in range(len(sizes)) if (shares[i:] < GAIN_SHARE).all()]
        out.append({"task": task, "attn": attn, "quant": quant, "model": model,
                    "threshold_num_tasks": int(sizes[tail[0]]) if tail else None,
                    "threshold_by_pool_gain": int(sizes[low[0]]) if low else None,
                    "largest_pool": int(sizes.max())})
    return pd.DataFrame(out)


def plot_task_diversity(task: str, curves: pd.DataFrame) -> plt.Figure:
    """Error at k = 2d vs pool size, on pool tasks (left) and fresh tasks (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    greys = {"pool_bayes": ("0.35", (4, 2), "pool's Bayes (discrete MMSE)"), "bayes": ("0.6", (1, 1), "prior's Bayes")}
    for ax, metric in zip(axes, POOL_METRICS):
        rows = curves[curves.metric == metric]
        for learner, (colour, dashes, label) in greys.items():
            line = rows[rows.learner == learner].sort_values("num_tasks")
            ax.plot(line.num_tasks, line.value, color=colour, dashes=dashes, label=label)
        for (attn, quant, model), line in rows[rows.learner == "transformer"].groupby(["attn", "quant", "model"]):
            dashes, marker = quant_style(str(quant))
            line = line.sort_values("num_tasks")
            ax.plot(line.num_tasks, line.value, color=attn_color(str(attn)), dashes=dashes, marker=marker,
                    label=f"{attn} / {quant} / {model}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("pretraining tasks (task.num_tasks)")
        ax.set_title(f"{task}: {'pool tasks' if metric == 'error_pool_tasks' else 'fresh tasks'}, k = 2d")
    axes[0].set_ylabel("normalised error")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


LEVELS = (0.5, 0.1)  # normalised-error levels of first_below.csv


def load_dynamics(roots: Iterable[str | Path]) -> pd.DataFrame:
    """Every finished job's dynamics.csv rows, with ``run_dir``."""
    frames = []
    for job in find_jobs(roots):
        path = Path(job) / contract.DYNAMICS
        if path.is_file() and read_status(job)["status"] not in ("failed", "running"):
            frames.append(pd.read_csv(path).assign(run_dir=str(job)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def dynamics_curves(dyn: pd.DataFrame) -> pd.DataFrame:
    """Error at k = d and k = 2d (where evaluated) per task × attn × quant × model × step, mean over seeds."""
    d = dyn.n_dims.astype(int)
    rows = dyn[(dyn.k == d) | (dyn.k == 2 * d)]
    return rows.groupby([*KEYS, "k", "step"], as_index=False)["error"].mean()


def first_below(curves: pd.DataFrame, levels: Sequence[float] = LEVELS) -> pd.DataFrame:
    """Per task × attn × quant × model × k and level: the first step whose mean error is below the level (empty:
    never, within the checkpoints evaluated)."""
    out = []
    for (task, attn, quant, model, k), rows in curves.groupby([*KEYS, "k"]):
        rows = rows.sort_values("step")
        for level in levels:
            below = rows[rows.error < level]
            out.append({"task": task, "attn": attn, "quant": quant, "model": model, "k": int(k), "level": level,
                        "first_step": int(below.step.iloc[0]) if len(below) else None,
                        "last_step": int(rows.step.iloc[-1])})
    return pd.DataFrame(out)


def plot_dynamics(task: str, curves: pd.DataFrame) -> plt.Figure:
    """Error at k = d (left) and 2d (right) vs training step, one line per attn × quant × model."""
    ks = sorted(curves.k.unique())
    fig, axes = plt.subplots(1, len(ks), figsize=(4.8 * len(ks), 3.6), squeeze=False, sharey=True)
    for ax, k in zip(axes[0], ks):
        for (attn, quant, model), line in curves[curves.k == k].groupby(["attn", "quant", "model"]):
            dashes, marker = quant_style(str(quant))
            ax.plot(line.step, line.error, color=attn_color(str(attn)), dashes=dashes, marker=marker,
                    label=f"{attn} / {quant} / {model}")
        for level in LEVELS:
            ax.axhline(level, color="0.7", lw=0.8)
        ax.set_xlabel("training step")
        ax.set_title(f"{task}, k = {int(k)}")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("normalised error")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def algorithm_files(inputs: Sequence[str | Path], out: Path, formats: Sequence[str]) -> list[Path]:
    """Write the figures and table of the module doc (nothing when no job has an algorithms.csv)."""
    df, dyn = load_algorithms(inputs), load_dynamics(inputs)
    if df.empty and dyn.empty:
        return []
    out.mkdir(parents=True, exist_ok=True)
    written = _dynamics_files(dyn, out, formats) if not dyn.empty else []
    if df.empty:
        return written
    table = closest_learner(df)
    if not table.empty:
        path = out / "closest_learner.csv"
        write_csv(path, table, index=False)
        written.append(path)
    order = list(dict.fromkeys(df[df.metric == "pred_diff"].learner))
    for task, rows in table.groupby("task"):
        written += _save(plot_closest(str(task), rows, order), out / f"closest_learner_{task}", formats)
    if df.metric.isin(POOL_METRICS).any():
        curves = pool_curves(df)
        path = out / "task_diversity.csv"
        write_csv(path, diversity_threshold(curves), index=False)
        gains = pool_gain(curves).rename(columns={"pool_gain": "value"}).assign(metric="pool_gain",
                                                                                learner="transformer")
        write_csv(out / "task_diversity_curves.csv", pd.concat([curves, gains]), index=False)  # the figure's points
        written += [path, out / "task_diversity_curves.csv"]
        for task, rows in curves.groupby("task"):
            written += _save(plot_task_diversity(str(task), rows), out / f"task_diversity_{task}", formats)
    shifts = weight_shift_table(df)
    if not shifts.empty:
        path = out / "weight_shift.csv"
        write_csv(path, shifts, index=False)
        written.append(path)
    readout = df[df.metric == "readout_error"]
    for task, rows in readout.groupby("task"):
        written += _save(plot_readout(str(task), rows), out / f"readout_{task}", formats)
    return written


def _dynamics_files(dyn: pd.DataFrame, out: Path, formats: Sequence[str]) -> list[Path]:
    curves = dynamics_curves(dyn)
    path = out / "first_below.csv"
    write_csv(path, first_below(curves), index=False)
    written = [path]
    for task, rows in curves.groupby("task"):
        written += _save(plot_dynamics(str(task), rows), out / f"dynamics_{task}", formats)
    return written


def _save(fig: plt.Figure, stem: Path, formats: Sequence[str]) -> list[Path]:
    paths = [stem.with_suffix(f".{fmt}") for fmt in formats]
    for path in paths:
        save_figure(path, fig, dpi=120)
    plt.close(fig)
    return paths
