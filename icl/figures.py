"""Figures and summary tables from finished jobs: `python -m icl.figures`.

Reads only the job-folder contract (`.hydra/config.yaml`, `eval.csv`,
`status.json`) through `icl.results`, so it works on any mix of single runs and
sweeps, e.g. `python -m icl.figures inputs=[multirun/2026-11-23]`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never open a window

import hydra  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from icl.configs import check_yaml  # noqa: E402
from icl.results import jobs_table, load_results, variant_label  # noqa: E402


# Baselines get greys and dashes so the coloured transformer curves stand out; plain
# dots are left to the zero-estimator line at 1.
BASELINE_DASHES: list[tuple[float, ...]] = [
    (4, 1.5), (7, 2, 1.5, 2), (2, 1.2), (10, 3), (4, 1, 1, 1, 1, 1), (1.5, 3), (8, 2, 2, 2, 2, 2),
]
Y_CAP = 2.0  # least squares spikes near k = d would otherwise flatten every other curve
YLABELS = {
    "squared_error": "squared error / zero estimator's (zero = 1)",
    "error_rate": "error rate / 0.5 (chance = 1)",
}
KEYS = ["task", "n_dims"]


def standard_rows(df: pd.DataFrame) -> pd.DataFrame:
    """In-distribution rows (strategy `standard`, scale 1): what error-vs-k compares."""
    keep = pd.Series(True, index=df.index)
    if "strategy" in df:
        keep &= df["strategy"].fillna("standard") == "standard"
    if "scale" in df:
        keep &= np.isclose(pd.to_numeric(df["scale"], errors="coerce").fillna(1.0), 1.0)
    return df[keep & df["error"].notna()]


def aggregate_transformers(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (task, n_dims, variant, k).

    The band is the mean of the seeds' own 95% bootstrap CI bounds, so one run
    and several seeds read the same way (a per-k uncertainty of the mean curve,
    not the spread between seeds); `n_runs` records how many seeds went in.
    """
    rows = df[df["kind"] == "transformer"]
    return (
        rows.groupby([*KEYS, "variant", "k"], as_index=False)
        .agg(error=("error", "mean"), ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean"),
             n_runs=("run_dir", "nunique"))
    )


def aggregate_baselines(df: pd.DataFrame) -> pd.DataFrame:
    """Baselines averaged over all jobs of a task/n_dims: same prompt distribution, so one curve each."""
    rows = df[df["kind"] == "baseline"]
    return (
        rows.groupby([*KEYS, "predictor", "k"], as_index=False)
        .agg(error=("error", "mean"), ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean"),
             n_runs=("run_dir", "nunique"))
        .rename(columns={"predictor": "variant"})
    )


def _baseline_styles(names: Sequence[str]) -> dict[str, tuple[str, tuple[float, ...]]]:
    greys = np.linspace(0.1, 0.6, max(len(names), 1))
    return {n: (str(round(g, 3)), BASELINE_DASHES[i % len(BASELINE_DASHES)]) for i, (n, g) in enumerate(zip(names, greys))}


def _plot_panel(ax: plt.Axes, tf: pd.DataFrame, bl: pd.DataFrame, palette: dict[str, tuple], styles: dict) -> None:
    """One (task, d) panel: coloured transformer variants with CI bands, grey dashed baselines."""
    for name, (grey, dashes) in styles.items():
        sub = bl[bl["variant"] == name]
        if len(sub):
            sns.lineplot(data=sub, x="k", y="error", color=grey, dashes=False, linewidth=1.3, errorbar=None,
                         ax=ax, legend=False).lines[-1].set_dashes(dashes)
    for name, sub in tf.groupby("variant"):
        sub = sub.sort_values("k")
        sns.lineplot(data=sub, x="k", y="error", color=palette[name], linewidth=2, marker="o",
                     markersize=3.5, errorbar=None, ax=ax, legend=False)
        ax.fill_between(sub["k"], sub["ci_low"], sub["ci_high"], color=palette[name], alpha=0.2, linewidth=0)
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1)


def _legend_handles(tf: pd.DataFrame, palette: dict, styles: dict) -> list[Line2D]:
    handles = []
    for name in palette:
        runs = tf.loc[tf["variant"] == name, "n_runs"].max()
        label = f"{name} (mean of {runs} seeds)" if runs > 1 else name
        handles.append(Line2D([], [], color=palette[name], linewidth=2, marker="o", markersize=3.5, label=label))
    handles += [Line2D([], [], color=g, dashes=d, linewidth=1.3, label=n) for n, (g, d) in styles.items()]
    handles.append(Line2D([], [], color="black", linestyle=":", linewidth=1, label="zero estimator (= 1)"))
    return handles


def plot_task(task: str, tf: pd.DataFrame, bl: pd.DataFrame, metric: str) -> plt.Figure:
    """Error vs number of in-context examples k for one task, one panel per n_dims."""
    dims = sorted(set(tf["n_dims"]) | set(bl["n_dims"]))
    bl = bl[bl["variant"] != "zero"]  # drawn as the dotted line at 1
    palette = dict(zip(sorted(tf["variant"].unique()), sns.color_palette("colorblind", tf["variant"].nunique())))
    styles = _baseline_styles(sorted(bl["variant"].unique()))
    fig, axes = plt.subplots(1, len(dims), figsize=(5.5 * len(dims), 4.2), squeeze=False, sharey=True)
    for ax, d in zip(axes[0], dims):
        _plot_panel(ax, tf[tf["n_dims"] == d], bl[bl["n_dims"] == d], palette, styles)
        ax.axvline(d, color="0.8", linewidth=0.8, zorder=0)
        ax.set_title(f"{task}, d = {d}")
        ax.set_xlabel("in-context examples k")
        ax.set_ylabel(YLABELS.get(metric, f"{metric} (normalised, zero = 1)"))
    top = max([1.2, *tf["ci_high"].dropna(), *bl["error"].dropna()])
    axes[0][0].set_ylim(-0.05, min(top * 1.05, Y_CAP))
    axes[0][-1].legend(handles=_legend_handles(tf, palette, styles), loc="upper left",
                       bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    return fig


def _nearest(curve: pd.DataFrame, target: float) -> pd.Series:
    """Row of `curve` whose k is nearest `target` (ties go to the smaller k)."""
    return curve.loc[(curve["k"] - target).abs().sort_values(kind="stable").index[0]]


def summarize(curves: pd.DataFrame) -> pd.DataFrame:
    """Error at k = d, k = 2d (nearest available k) and at the last k, per task/d/variant."""
    rows = []
    for (task, d, kind, name), curve in curves.groupby([*KEYS, "kind", "variant"], sort=True):
        curve = curve.sort_values("k").reset_index(drop=True)
        at_d, at_2d, last = _nearest(curve, d), _nearest(curve, 2 * d), curve.iloc[-1]
        rows.append({
            "task": task, "n_dims": d, "kind": kind, "variant": name, "n_runs": int(curve["n_runs"].max()),
            "k_d": at_d["k"], "error_at_d": at_d["error"], "k_2d": at_2d["k"], "error_at_2d": at_2d["error"],
            "k_last": last["k"], "error_at_last": last["error"],
        })
    return pd.DataFrame(rows)


def _save(fig: plt.Figure, stem: Path, formats: Sequence[str]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, bbox_inches="tight", dpi=150)
        paths.append(path)
    plt.close(fig)
    return paths


def _write_tables(summary: pd.DataFrame, roots: Sequence[str | Path], out_dir: Path) -> list[Path]:
    """summary.csv, summary.md (only when `tabulate` is installed) and jobs.csv."""
    paths = [out_dir / "summary.csv", out_dir / "jobs.csv"]
    summary.to_csv(paths[0], index=False)
    jobs_table(roots).to_csv(paths[1], index=False)
    if importlib.util.find_spec("tabulate") is not None:
        md = out_dir / "summary.md"
        md.write_text(summary.to_markdown(index=False, floatfmt=".3f") + "\n")
        paths.append(md)
    return paths


def make_figures(inputs: Sequence[str | Path], out_dir: str | Path,
                 formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write error-vs-k figures per task, summary tables and jobs.csv; return the files written.

    Transformer curves are the mean over seeds with the mean of the seeds' 95%
    bootstrap CI as a band; baselines are averaged over all jobs of the task/d.
    Raises SystemExit with a one-line hint when no usable eval.csv exists.
    """
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    df = load_results(inputs)
    if df.empty:
        where = ", ".join(str(p) for p in inputs)
        raise SystemExit(f"No finished eval.csv found under {where}: run `make demo` or `python -m icl.train` first.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = standard_rows(df.assign(variant=variant_label(df)))
    tf, bl = aggregate_transformers(df), aggregate_baselines(df)
    written: list[Path] = []
    for task in sorted(df["task"].unique()):
        metric = str(df.loc[df["task"] == task, "metric"].mode().iat[0])
        fig = plot_task(task, tf[tf["task"] == task], bl[bl["task"] == task], metric)
        written += _save(fig, out / f"error_vs_k_{task}", formats)
    curves = pd.concat([tf.assign(kind="transformer"), bl.assign(kind="baseline")], ignore_index=True)
    written += _write_tables(summarize(curves), inputs, out)
    for path in written:
        print(f"wrote {path}")
    print(f"{df['run_dir'].nunique()} jobs, {df['task'].nunique()} tasks -> {len(written)} files in {out}")
    return written


@hydra.main(version_base="1.3", config_path="../configs", config_name="figures")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; run dir is `.` so relative inputs/out_dir resolve against the cwd."""
    inputs = cfg.inputs if not isinstance(cfg.inputs, str) else [cfg.inputs]
    make_figures(list(inputs), cfg.out_dir, tuple(cfg.formats))


if __name__ == "__main__":
    check_yaml()
    main()
