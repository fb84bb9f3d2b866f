"""Figures and summary tables from finished jobs: `python -m icl.figures` (`make figures`).

Reads only the job-folder contract (`.hydra/config.yaml`, `eval.csv`, `errors.npz`, `status.json`)
through `icl.analysis.results`, so it works on any mix of single runs and sweeps, e.g.
`python -m icl.figures inputs=[multirun/2026-11-23]`. Writes to `out_dir`:

1. `error_vs_k_<task>.{png,pdf}` (standard prompts) and `error_vs_k_<task>_<strategy>.{png,pdf}`: error vs
   k, one panel per d × strategy parameter;
2. `error_vs_scale_<task>_<strategy>.{png,pdf}` for scale_x, scale_y and shift_x: error vs the factor
   (log axis; shift distance linear), one panel per k in `scale_ks` that exists;
3. `summary.{csv,md}`: per task × d × variant, error at k = d/2, d, 2d with CIs and the paired difference to
   the reference; `paired.csv` (every paired difference); `jobs.csv` (every job and its status);
4. `quant_sweep_<task>` and `quant_sensitivity_<task>` from every quant sweep's rows found under the inputs
   (`icl.analysis.quant.quant_sweep_figures`; `make quant-figures` redraws docs/quantization's from its CSVs).

Every figure uses one fixed colour per attention variant and one line style per quant mode (`ATTN_COLORS`,
`QUANT_STYLES`), baselines in grey dashes, the zero estimator as the dotted line at 1, 95% CI bands.
Files are written atomically, so an interrupted run never leaves a truncated figure.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never open a window

import hydra
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from omegaconf import DictConfig, OmegaConf

from icl.analysis.algorithms import algorithm_files
from icl.analysis.bench_figures import bench_figures
from icl.analysis.curves import curve_figures
from icl.analysis.extrapolation import extended_context_files
from icl.analysis.pareto import error_vs_cost_files
from icl.analysis.quant import quant_sweep_figures
from icl.analysis.results import (
    DEFAULT_REFERENCE,
    jobs_table,
    load_results,
    paired_differences,
    variant_label,
)
from icl.analysis.styles import attn_color, quant_style
from icl.contract import strategies
from icl.files import atomic_write
from icl.run.configs import HYDRA_CONFIGS, run_cli
from icl.run.job import JobDir
from icl.tables import markdown_table

log = logging.getLogger(__name__)

BASELINE_DASHES: list[tuple[float, ...]] = [
    (4, 1.5), (7, 2, 1.5, 2), (2, 1.2), (10, 3), (4, 1, 1, 1, 1, 1), (1.5, 3), (8, 2, 2, 2, 2, 2),
]
LOG_SPAN = 30.0  # errors spanning more than this ratio get a log y axis (e.g. the mujoco tasks)
Y_CAP = 2.0  # least squares spikes near k = d (and averaging under scale_x) would otherwise flatten every curve
YLABELS = {
    "squared_error": "squared error / zero estimator's (zero = 1)",
    "error_rate": "error rate / 0.5 (chance = 1)",
}
PARAM_NAMES = {"scale_x": "input scale c", "scale_y": "output scale c", "shift_x": "shift distance r",
               "noisy_y": "label noise σ", "long_context": "points n"}
SCALE_STRATEGIES = ("scale_x", "scale_y", "shift_x")
KEYS = ["task", "n_dims", "strategy", "param"]


def _group(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return (rows.groupby(by, as_index=False, dropna=False)
            .agg(error=("error", "mean"), ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean"),
                 n_runs=("run_dir", "nunique")))


def aggregate_transformers(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (task, d, strategy, param, variant, k).

    ``ci_low``/``ci_high`` are the mean of the seeds' own 95% bootstrap CI bounds (a per-k uncertainty of the mean
    curve, what the tables report); ``band_low``/``band_high``, what the figures shade, are the spread between the
    seeds (lowest and highest seed) where there are several, else that one job's CI; `n_runs` counts the seeds.
    """
    rows = df[df["kind"] == "transformer"]
    by = [*KEYS, "variant", "attn", "quant", "k"]
    out = _group(rows, by)
    spread = rows.groupby(by, as_index=False, dropna=False).agg(seed_low=("error", "min"), seed_high=("error", "max"))
    out = out.merge(spread, on=by, how="left")
    several = out["n_runs"] > 1
    return out.assign(band_low=out["seed_low"].where(several, out["ci_low"]),
                      band_high=out["seed_high"].where(several, out["ci_high"])).drop(columns=["seed_low", "seed_high"])


def seed_curves(df: pd.DataFrame) -> pd.DataFrame:
    """One transformer curve per job (seed): what the figures draw faintly under the mean."""
    return df.loc[df["kind"] == "transformer", [*KEYS, "variant", "run_dir", "k", "error"]]


def aggregate_baselines(df: pd.DataFrame) -> pd.DataFrame:
    """Baselines averaged over all jobs of a task/d/strategy/param: same prompts, so one curve each."""
    out = _group(df[df["kind"] == "baseline"], [*KEYS, "predictor", "k"]).rename(columns={"predictor": "variant"})
    return out.assign(attn="", quant="")


def _baseline_styles(names: Sequence[str]) -> dict[str, tuple[str, tuple[float, ...]]]:
    greys = np.linspace(0.15, 0.6, max(len(names), 1))
    return {n: (str(round(g, 3)), BASELINE_DASHES[i % len(BASELINE_DASHES)])
            for i, (n, g) in enumerate(zip(names, greys))}


def _variant_styles(tf: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Colour from attn, dashes from quant; a different marker when variants share both (e.g. two lrs)."""
    styles: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[str, str], int] = {}
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for (name, attn, quant), _ in tf.groupby(["variant", "attn", "quant"], sort=True):
        dashes, marker = quant_style(str(quant))
        n = seen.get((attn, quant), 0)
        seen[(attn, quant)] = n + 1
        styles[name] = {"color": attn_color(str(attn)), "dashes": dashes,
                        "marker": marker if n == 0 else markers[n % len(markers)]}
    return styles


def _line(ax: plt.Axes, x: pd.Series, y: pd.Series, style: dict[str, Any], **kw: Any) -> None:
    (line,) = ax.plot(x, y, color=style["color"], marker=style.get("marker"), **kw)
    if style.get("dashes"):
        line.set_dashes(style["dashes"])


def _draw(ax: plt.Axes, tf: pd.DataFrame, bl: pd.DataFrame, x: str, styles: dict, greys: dict,
          seeds: pd.DataFrame | None = None) -> None:
    """Grey dashed baselines, then coloured transformer variants (each seed faint, the mean bold, the band: the
    seeds' spread, or one job's CI), and the zero line at 1."""
    for name, (grey, dashes) in greys.items():
        sub = bl[bl["variant"] == name].sort_values(x)
        if len(sub):
            _line(ax, sub[x], sub["error"], {"color": grey, "dashes": dashes}, linewidth=1.2)
    for name, sub in tf.groupby("variant"):
        sub = sub.sort_values(x)
        if seeds is not None and sub["n_runs"].max() > 1:
            for _, run in seeds[seeds["variant"] == name].groupby("run_dir"):
                run = run.sort_values(x)
                ax.plot(run[x], run["error"], color=styles[name]["color"], linewidth=0.7, alpha=0.35)
        _line(ax, sub[x], sub["error"], styles[name], linewidth=2, markersize=3.5)
        low, high = ("band_low", "band_high") if "band_low" in sub else ("ci_low", "ci_high")
        ax.fill_between(sub[x], sub[low], sub[high], color=styles[name]["color"], alpha=0.15,
                        linewidth=0)
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1)


def _legend(fig: plt.Figure, tf: pd.DataFrame, styles: dict, greys: dict) -> None:
    handles = []
    for name, style in styles.items():
        runs = tf.loc[tf["variant"] == name, "n_runs"].max()
        label = f"{name} (mean of {runs} seeds; faint: each seed)" if runs > 1 else name
        handle = Line2D([], [], color=style["color"], linewidth=2, marker=style["marker"], markersize=4, label=label)
        if style["dashes"]:
            handle.set_dashes(style["dashes"])
        handles.append(handle)
    for name, (grey, dashes) in greys.items():
        handles.append(Line2D([], [], color=grey, dashes=dashes, linewidth=1.2, label=name))
    handles.append(Line2D([], [], color="black", linestyle=":", linewidth=1, label="zero estimator (= 1)"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8, frameon=False)


def _ylim(axes: np.ndarray, tf: pd.DataFrame, bl: pd.DataFrame) -> None:
    """One y range for every panel: linear from 0, or log where the errors span more than LOG_SPAN (ratio)."""
    top = max([1.2, *tf["ci_high"].dropna(), *bl["error"].dropna()])
    values = pd.concat([tf["error"], tf.get("band_low", tf["ci_low"]), bl["error"]]).dropna()
    values = values[values < Y_CAP]
    if len(values) and values.min() > 0 and values.max() / values.min() > LOG_SPAN:
        for ax in axes.flat:
            ax.set_yscale("log")
            ax.set_ylim(values.min() / 1.5, min(top * 1.2, Y_CAP))
        return
    for ax in axes.flat:
        ax.set_ylim(-0.05, min(top * 1.05, Y_CAP))


def _param_text(strategy: str, param: Any) -> str:
    if param is None or (isinstance(param, float) and math.isnan(param)):
        return strategy
    return f"{strategy}, {PARAM_NAMES.get(strategy, 'parameter').split()[-1]} = {param:.3g}"


def _grid(n: int, ncols_max: int = 3, size: tuple[float, float] = (3.6, 2.9)) -> tuple[plt.Figure, np.ndarray]:
    ncols = min(n, ncols_max)
    nrows = math.ceil(n / ncols)
    # no sharey: shared axes make matplotlib's autoscaling quadratic in panels; _ylim sets one range for all
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def plot_error_vs_k(task: str, strategy: str, tf: pd.DataFrame, bl: pd.DataFrame, metric: str,
                    seeds: pd.DataFrame | None = None) -> plt.Figure:
    """Error vs number of in-context examples k: one panel per (d, strategy parameter)."""
    bl = bl[bl["variant"] != "zero"]  # drawn as the dotted line at 1
    both = pd.concat([tf, bl])[["n_dims", "param"]].drop_duplicates()  # drop_duplicates treats NaN as equal
    panels = sorted(both.itertuples(index=False, name=None), key=lambda t: (t[0], -np.inf if pd.isna(t[1]) else t[1]))
    styles, greys = _variant_styles(tf), _baseline_styles(sorted(bl["variant"].unique()))
    fig, axes = _grid(len(panels))
    for ax, (d, param) in zip(axes.flat, panels):
        sel = lambda f, d=d, param=param: f[(f["n_dims"] == d) & ((f["param"] == param) | (pd.isna(param) & f["param"].isna()))]
        _draw(ax, sel(tf), sel(bl), "k", styles, greys, None if seeds is None else sel(seeds))
        ax.axvline(d, color="0.85", linewidth=0.8, zorder=0)
        ax.set_title(f"{task}, d = {d}: {_param_text(strategy, param)}", fontsize=9)
        ax.set_xlabel("in-context examples k")
    return _finish(fig, axes, metric, tf, bl, styles, greys)


def _finish(fig: plt.Figure, axes: np.ndarray, metric: str, tf: pd.DataFrame, bl: pd.DataFrame, styles: dict,
            greys: dict) -> plt.Figure:
    """What every error figure ends with: y labels on the first column, shared limits, the legend, the layout."""
    for ax in axes[:, 0]:
        ax.set_ylabel(YLABELS.get(metric, f"{metric} (normalised, zero = 1)"), fontsize=8)
    _ylim(axes, tf, bl)
    _legend(fig, tf, styles, greys)
    fig.tight_layout()
    return fig

def plot_error_vs_scale(task: str, strategy: str, tf: pd.DataFrame, bl: pd.DataFrame, metric: str,
                        ks: Sequence[int], seeds: pd.DataFrame | None = None) -> plt.Figure | None:
    """Error vs the strategy's factor (log x for scale_*), one panel per (d, k in ``ks`` that exists)."""
    bl = bl[bl["variant"] != "zero"]
    panels = [(d, k) for d in sorted(tf["n_dims"].unique()) for k in ks if k in set(tf.loc[tf["n_dims"] == d, "k"])]
    if not panels:
        return None
    styles, greys = _variant_styles(tf), _baseline_styles(sorted(bl["variant"].unique()))
    fig, axes = _grid(len(panels))
    for ax, (d, k) in zip(axes.flat, panels):
        sel = lambda f, d=d, k=k: f[(f["n_dims"] == d) & (f["k"] == k)]
        _draw(ax, sel(tf), sel(bl), "param", styles, greys, None if seeds is None else sel(seeds))
        if strategy != "shift_x":
            ax.set_xscale("log", base=2)
            ax.axvline(1.0, color="0.85", linewidth=0.8, zorder=0)
        ax.set_title(f"{task}, d = {d}: {strategy}, k = {k}", fontsize=9)
        ax.set_xlabel(PARAM_NAMES[strategy] + (" (log scale)" if strategy != "shift_x" else ""))
    return _finish(fig, axes, metric, tf, bl, styles, greys)


def _nearest(curve: pd.DataFrame, target: float) -> pd.Series:
    """Row of `curve` whose k is nearest `target` (ties go to the smaller k)."""
    return curve.loc[(curve["k"] - target).abs().sort_values(kind="stable").index[0]]


def summarize(curves: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """Standard prompts: error [CI] at k = d/2, d, 2d (nearest k) and the last k, per task/d/variant, with the
    paired difference to the reference where one exists (mean over seeds)."""
    curves = curves[curves["strategy"] == "standard"]
    paired = paired[paired["strategy"] == "standard"]
    rows = []
    for (task, d, kind, name), curve in curves.groupby(["task", "n_dims", "kind", "variant"], sort=True):
        curve = curve.sort_values("k").reset_index(drop=True)
        attn, quant = curve["attn"].iat[0], curve["quant"].iat[0]
        row = {"task": task, "n_dims": d, "kind": kind, "variant": name, "attn": attn, "quant": quant,
               "n_runs": int(curve["n_runs"].max())}
        same = paired[(paired["task"] == task) & (paired["n_dims"] == d)]
        if kind == "transformer":  # this variant's transformer minus the reference job's
            mine = same[(same["predictor"] == "transformer") & (same["attn"] == attn) & (same["quant"] == quant)]
        else:  # this baseline minus the reference job's transformer, on the same prompts
            mine = same[same["predictor"] == name]
        for tag, target in (("half", d / 2), ("d", d), ("2d", 2 * d)):
            at = _nearest(curve, target)
            row.update({f"k_{tag}": int(at["k"]), f"error_at_{tag}": at["error"],
                        f"ci_low_at_{tag}": at["ci_low"], f"ci_high_at_{tag}": at["ci_high"]})
            diff = mine[mine["k"] == at["k"]]
            row.update({f"diff_at_{tag}": diff["diff"].mean() if len(diff) else np.nan,
                        f"diff_low_at_{tag}": diff["diff_low"].mean() if len(diff) else np.nan,
                        f"diff_high_at_{tag}": diff["diff_high"].mean() if len(diff) else np.nan})
        last = curve.iloc[-1]
        row.update({"k_last": int(last["k"]), "error_at_last": last["error"]})
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame, reference: dict[str, str]) -> str:
    """The summary as a Markdown table: error [95% CI] and paired difference [CI] at k = d/2, d, 2d."""
    def cell(row: pd.Series, tag: str) -> str:
        text = f"{row[f'error_at_{tag}']:.3f} [{row[f'ci_low_at_{tag}']:.3f}, {row[f'ci_high_at_{tag}']:.3f}]"
        if not pd.isna(row[f"diff_at_{tag}"]):
            text += (f"; Δ {row[f'diff_at_{tag}']:+.3f} "
                     f"[{row[f'diff_low_at_{tag}']:+.3f}, {row[f'diff_high_at_{tag}']:+.3f}]")
        return text

    ref = ", ".join(f"{k} {v}" for k, v in reference.items())
    lines = [f"Normalised error [95% CI] on standard prompts; Δ = paired difference to the reference job's transformer "
             f"({ref}) on the same prompts (a variant: same task, d, model and seed; a baseline: scored in the "
             "reference job), negative: better.", ""]
    order = summary.sort_values(["task", "n_dims", "kind", "variant"], ascending=[True, True, False, True])
    rows = ([row["task"], row["n_dims"], row["variant"], *(f"({row[f'k_{t}']}) {cell(row, t)}" for t in ("half", "d", "2d"))]
            for _, row in order.iterrows())
    lines.append(markdown_table(["task", "d", "predictor", "k = d/2", "k = d", "k = 2d"], rows))
    return "\n".join(lines) + "\n"


def _atomic(path: Path, write: Any) -> Path:
    atomic_write(path, write)
    return path


def _save(fig: plt.Figure, stem: Path, formats: Sequence[str]) -> list[Path]:
    paths = [_atomic(stem.with_name(f"{stem.name}.{fmt}"),
                     lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, bbox_inches="tight", dpi=150))
             for fmt in formats]
    plt.close(fig)
    return paths


def _write_tables(summary: pd.DataFrame, paired: pd.DataFrame, jobs: pd.DataFrame, out: Path,
                  reference: dict[str, str]) -> list[Path]:
    """summary.csv, summary.md, paired.csv and jobs.csv."""
    return [_atomic(out / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False)),
            _atomic(out / "summary.md", lambda tmp: tmp.write_text(markdown(summary, reference))),
            _atomic(out / "paired.csv", lambda tmp: paired.to_csv(tmp, index=False)),
            _atomic(out / "jobs.csv", lambda tmp: jobs.to_csv(tmp, index=False))]


def report_jobs(jobs: pd.DataFrame) -> None:
    """Print the jobs that were not aggregated (failed, running, no eval.csv, unreadable) and why."""
    skipped = jobs[~jobs["aggregated"]]
    for _, row in skipped.iterrows():
        csv = JobDir(row["run_dir"]).eval_csv
        why = row["status"] if row["status"] != "done" else \
            f"done, but its eval.csv is {'unreadable' if csv.exists() else 'missing'}"
        error = f": {row['error']}" if isinstance(row.get("error"), str) and row["error"] else ""
        print(f"not aggregated: {row['run_dir']} ({why}{error})")
    print(f"{len(jobs) - len(skipped)} of {len(jobs)} jobs aggregated" + (", the others listed above" if len(skipped) else ""))


def make_figures(inputs: Sequence[str | Path], out_dir: str | Path, formats: Sequence[str] = ("png", "pdf"),
                 scale_ks: Sequence[int] = (5, 10, 15, 20, 25), reference: dict[str, str] | None = None,
                 bootstrap: int = 1000, ci: float = 0.95) -> list[Path]:
    """Write every figure and table (module doc); return the files written.

    Transformer curves are the mean over seeds, each seed drawn faintly and their spread shaded (one job: its CI);
    baselines are averaged over all jobs of the task/d. Raises SystemExit with a one-line hint when no
    usable eval.csv exists; jobs that are not usable are listed and skipped.
    """
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    reference = dict(reference or DEFAULT_REFERENCE)
    df = load_results(inputs, cfg_columns="varying")  # constant cfg.* keys label nothing
    jobs = jobs_table(inputs)
    jobs["aggregated"] = jobs["run_dir"].isin(df["run_dir"].unique())  # set(column) iterates every row
    report_jobs(jobs)
    out = Path(out_dir)
    bench = bench_figures(inputs, out, tuple(formats))  # latency vs length from any `make bench` output found
    bench += quant_sweep_figures(inputs, out, tuple(formats), ci=ci)  # every quant sweep's rows found (docs/ too)
    bench += curve_files(inputs, out, formats)  # training curves + diagnostics from every metrics.csv (curves)
    bench += algorithm_files(inputs, out, tuple(formats))  # closest learner vs k, read-out vs depth (algorithms.csv)
    bench += error_vs_cost_files(inputs, out, tuple(formats))  # error at k = 2d vs inference cost (pareto)
    bench += extended_context_files(inputs, out, bootstrap, ci)  # error past the training length per model.pos
    if df.empty:
        if bench:
            return _report(bench, out, "no eval.csv; benchmark and training-curve figures only")
        where = ", ".join(str(p) for p in inputs)
        raise SystemExit(f"No finished eval.csv found under {where}: run `make demo` or `python -m icl.train` first.")
    out.mkdir(parents=True, exist_ok=True)
    df = df[df["error"].notna()]
    df = df.assign(variant=variant_label(df), strategy=strategies(df),
                   param=pd.to_numeric(df["param"], errors="coerce"))
    tf, bl, seeds = aggregate_transformers(df), aggregate_baselines(df), seed_curves(df)
    # one metric per figure: the most frequent; not a copy of each group's rows
    metrics = df.groupby(["task", "strategy"], sort=True)["metric"].agg(lambda m: m.mode().iat[0])
    items = [(str(task), str(strategy), str(metric)) for (task, strategy), metric in metrics.items()]
    paired = paired_differences(df, reference, bootstrap, ci)
    what = f"{df['run_dir'].nunique()} jobs, {df['task'].nunique()} tasks"
    del df  # the per-row results (most of the memory) are done with: drawing workers then fork a small process
    release_memory()
    _SHARED.update(tf=tf, bl=bl, seeds=seeds, out=out, formats=tuple(formats), scale_ks=tuple(scale_ks))
    try:
        written = draw_in_processes(items, drawing_workers())
    finally:
        _SHARED.clear()
    curves = pd.concat([tf.assign(kind="transformer"), bl.assign(kind="baseline")], ignore_index=True)
    written += _write_tables(summarize(curves, paired), paired, jobs, out, reference)
    return _report(written + bench, out, what)


# What forked drawing workers read: set by make_figures just before the fork, so the curves are inherited by the
# workers, never pickled; empty otherwise.
_SHARED: dict[str, Any] = {}
MAX_DRAWING_WORKERS = 4


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc's malloc_trim; a no-op elsewhere): after
    the per-row results are dropped this process holds ~110 MB of free heap on a 192-job sweep, which every
    forked drawing worker would otherwise map as well."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def drawing_workers() -> int:
    """Processes for drawing: the cores this process may use (a launcher's CPU binding included), at most 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_DRAWING_WORKERS))


def _draw_item(item: tuple[str, str, str]) -> list[Path]:
    """The error_vs_k (and error_vs_scale) figures of one (task, strategy, metric): the files written."""
    task, strategy, metric = item
    tf, bl, out, formats, scale_ks = (_SHARED[k] for k in ("tf", "bl", "out", "formats", "scale_ks"))
    t, b, sd = (f[(f["task"] == task) & (f["strategy"] == strategy)] for f in (tf, bl, _SHARED["seeds"]))
    stem = f"error_vs_k_{task}" if strategy == "standard" else f"error_vs_k_{task}_{strategy}"
    written = _save(plot_error_vs_k(task, strategy, t, b, metric, sd), out / stem, formats)
    if strategy in SCALE_STRATEGIES and len(t):
        fig = plot_error_vs_scale(task, strategy, t, b, metric, scale_ks, sd)
        if fig is not None:
            written += _save(fig, out / f"error_vs_scale_{task}_{strategy}", formats)
    return written


def _one_blas_thread() -> None:
    """In a drawing worker: one BLAS thread (the workers already use every core; BLAS pools would oversubscribe)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


def draw_in_processes(items: Sequence[tuple[str, str, str]], workers: int) -> list[Path]:
    """Draw the items in up to ``workers`` forked processes, files listed in the items' order.

    Drawing and saving is ~60% of `make figures` on a sweep and runs on one core (matplotlib's layout is
    Python); the figures are independent, so they go to processes that inherit the curves by fork
    (copy-on-write, nothing pickled but the items going out and the file names coming back). One worker, one item, or a platform
    without fork: drawn here, in order.
    """
    workers = min(workers, len(items))
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        per_item = [_draw_item(item) for item in items]
    else:  # one figure per task: the pool hands them out as workers free up, and map keeps the items' order
        with multiprocessing.get_context("fork").Pool(workers, initializer=_one_blas_thread) as pool:
            per_item = pool.map(_draw_item, items, chunksize=1)
    return [path for written in per_item for path in written]


def curve_files(inputs: Sequence[str | Path], out: Path, formats: Sequence[str]) -> list[Path]:
    """Save ``icl.analysis.curves``' training-curve figures (none without a metrics.csv)."""
    figures = curve_figures(inputs)
    if figures:
        out.mkdir(parents=True, exist_ok=True)
    return [path for stem, fig in figures.items() for path in _save(fig, out / stem, formats)]


def _report(written: list[Path], out: Path, what: str) -> list[Path]:
    for path in written:
        print(f"wrote {path}")
    print(f"{what} -> {len(written)} files in {out}")
    return written


@hydra.main(version_base="1.3", config_path=HYDRA_CONFIGS, config_name="figures")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; run dir is `.` so relative inputs/out_dir resolve against the cwd."""
    inputs = cfg.inputs if not isinstance(cfg.inputs, str) else [cfg.inputs]
    make_figures(list(inputs), cfg.out_dir, tuple(cfg.formats), tuple(cfg.scale_ks),
                 OmegaConf.to_container(cfg.reference), int(cfg.bootstrap), float(cfg.ci))


def cli() -> None:
    """Console script ``icl-figures`` (and ``python -m icl.figures``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
