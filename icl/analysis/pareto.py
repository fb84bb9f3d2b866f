"""Error against inference cost: every trained mixer × quant mode on one chart, with the Pareto front marked.

The error is the job's normalised error at k = 2d on standard prompts (eval.csv, 95% bootstrap CI; several seeds of
one cell: their mean, with a normal interval over the seeds). The cost comes from the rows ``python -m
icl.bench.mixers parts=[inference]`` writes (``inference_cost.csv``: CPU ms per prompt at k = 2d and the state / KV
floats one sequence keeps), joined on (model, attn, quant, n_dims). The model's size as stored comes from each job's
quant.json, read by ``icl.analysis.quant.read_quant`` (``bytes``: ``torch.save`` of the quantised state dict), with
how it is stored (``stored_as``, marked by ``STORAGE``): a fake-quant width only simulates accuracy and is stored,
and drawn, at the float size; it has no time or state of its own (its
cost row would time float kernels plus the rounding), so it is drawn in the size panel only, and on no front (its
error is no deployable model's). A point is on the front when no other point is at most as costly and at most as
wrong, and better in one of the two. ``make figures`` draws
``error_vs_cost.{png,pdf}`` and writes ``error_vs_cost.csv`` wherever both kinds of file are found. Pandas and
matplotlib only: the analysis layer never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never open a window

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
import pandas as pd

from icl.analysis.quant import read_quant
from icl.analysis.results import load_results
from icl.analysis.styles import attn_color, quant_style
from icl.contract import strategies
from icl.files import atomic_write, input_relative
from icl.stats import seed_interval

log = logging.getLogger(__name__)
COST_FILE = "inference_cost.csv"  # written by icl.bench.mixers (part inference)
JOIN = ["model", "attn", "quant", "n_dims"]
COSTS = {"latency_ms": "CPU time per prompt at k = 2d (ms)", "state_floats": "state / KV floats per sequence",
         "bytes_stored": "model size as stored (bytes, torch.save of the state dict)"}
SIZE_COLUMNS = ["bytes_stored", "bytes_packed", "bytes_float"]
STORAGE = {  # the ``storage`` column (``stored_as``): how a point's model is stored -> (marker, legend text)
    "float32": ("o", "float32, not quantised"),
    "real": ("s", "real: weights stored at the mode's width"),
    "unpacked": ("D", "real: intN held one per int8 byte (hollow: bit-packed size, computed)"),
    "simulated": ("X", "simulated width (fake quant, accuracy only): stored as float32"),
}
SIMULATED_UNKNOWN = ["latency_ms", "latency_low_ms", "latency_high_ms", "state_floats"]  # blank for simulated widths


def load_costs(inputs: Sequence[str | Path]) -> pd.DataFrame:
    """Every ``inference_cost.csv`` under ``inputs``; a (model, attn, quant, n_dims) measured twice keeps the newest
    file's row."""
    files = sorted({p for root in inputs if Path(root).exists() for p in Path(root).rglob(COST_FILE)},
                   key=lambda p: p.stat().st_mtime)
    if not files:
        return pd.DataFrame(columns=[*JOIN, "latency_ms", "state_floats"])
    df = pd.concat([pd.read_csv(f).assign(cost_file=input_relative(f, inputs)) for f in files], ignore_index=True)
    return df[df["note"].isna() | (df["note"] == "")].drop_duplicates(JOIN, keep="last")


def error_at_2d(results: pd.DataFrame) -> pd.DataFrame:
    """Per (model, attn, quant, n_dims): the transformer's error at k = 2d on standard prompts and its interval
    (one job: its bootstrap CI; several seeds: their mean with the seed-level 95% t-interval, ``seed_interval``: the
    training seed is the unit of replication, and with 3 seeds a normal interval would be half as wide as it should)."""
    rows = results[(results["predictor"] == "transformer") & (strategies(results) == "standard")]
    rows = rows[rows["k"] == 2 * rows["n_dims"].astype(int)]
    out = []
    for key, cell in rows.groupby(JOIN, sort=True):
        if "seed" in cell.columns:  # a seed evaluated twice (a re-evaluation folder beside its job) is one seed
            cell = cell.drop_duplicates("seed")
        n = cell["run_dir"].nunique()
        if n == 1:
            error, low, high = (float(cell[c].iloc[0]) for c in ("error", "ci_low", "ci_high"))
        else:
            seeds = seed_interval(cell["error"].astype(float).tolist())
            error, low, high = seeds.mean, seeds.low, seeds.high
        out.append({**dict(zip(JOIN, key)), "error": error, "error_low": low, "error_high": high, "jobs": n})
    return pd.DataFrame(out, columns=[*JOIN, "error", "error_low", "error_high", "jobs"])


def size_of(report: dict) -> dict:
    """A job's bytes as stored, bit-packed and in float32 and how it is stored, from its quant.json (as
    ``icl.analysis.quant.read_quant`` reads it)."""
    storage = report["stored_as"]
    if storage == "simulated":  # the float model is what deploys: quant.json's bytes add only the wrappers' metadata
        stored = packed = report["bytes_float"]
    else:
        stored, packed = report["bytes"], report["bytes_packed"]
    return {"bytes_stored": stored, "bytes_packed": packed, "bytes_float": report["bytes_float"], "storage": storage,
            "stored_dtype": report.get("quantized_dtype", ""), "bytes_source": "quant.json"}


def job_sizes(results: pd.DataFrame) -> pd.DataFrame:
    """Per job (``run_dir``) of ``results``: ``size_of`` its quant.json. A float job without one takes the
    ``bytes_float`` of a job with the same (model, attn, n_dims) that has one (``bytes_source`` says so); any other
    job without one has no size."""
    columns = ["run_dir", *JOIN, *SIZE_COLUMNS, "storage", "stored_dtype", "bytes_source"]
    jobs = results.drop_duplicates("run_dir")[["run_dir", *JOIN]] if len(results) else pd.DataFrame(columns=["run_dir"])
    rows = [{**job._asdict(), **(size_of(report) if (report := read_quant(job.run_dir)) else {})}
            for job in jobs.itertuples(index=False)]
    sizes = pd.DataFrame(rows, columns=columns).astype({"storage": object, "stored_dtype": object,
                                                        "bytes_source": object})
    if sizes.empty:
        return sizes
    sizes["n_dims"] = sizes["n_dims"].astype(int)
    known = sizes.dropna(subset=["bytes_float"]).groupby(["model", "attn", "n_dims"])["bytes_float"].first()
    for i in sizes.index[sizes["bytes_stored"].isna() & (sizes["quant"] == "none")]:
        float_bytes = known.get((sizes.at[i, "model"], sizes.at[i, "attn"], sizes.at[i, "n_dims"]))
        if float_bytes is not None:
            sizes.loc[i, [*SIZE_COLUMNS, "storage", "stored_dtype", "bytes_source"]] = [
                float_bytes, float_bytes, float_bytes, "float32", "float32", "bytes_float of a sibling job"]
    return sizes


def _sources(values: pd.Series) -> str:
    return "; ".join(sorted(set(values)))


def cell_sizes(sizes: pd.DataFrame) -> pd.DataFrame:
    """``job_sizes`` per (model, attn, quant, n_dims): the seeds of a cell share one architecture and mode, so one
    size (their median, should a setting outside the key differ)."""
    sizes = sizes.dropna(subset=["bytes_stored"])
    if sizes.empty:
        return pd.DataFrame(columns=[*JOIN, *SIZE_COLUMNS, "storage", "stored_dtype", "bytes_source"])
    return sizes.groupby(JOIN, sort=True).agg(
        **{c: (c, "median") for c in SIZE_COLUMNS}, storage=("storage", "first"),
        stored_dtype=("stored_dtype", "first"), bytes_source=("bytes_source", _sources)).reset_index()


def pareto_front(cost: Sequence[float], error: Sequence[float]) -> np.ndarray:
    """True where no other point has cost <= and error <= with one of them strictly smaller."""
    c, e = np.asarray(cost, dtype=float), np.asarray(error, dtype=float)
    dominated = ((c[None, :] <= c[:, None]) & (e[None, :] <= e[:, None])
                 & ((c[None, :] < c[:, None]) | (e[None, :] < e[:, None])))
    return ~dominated.any(axis=1)


def error_vs_cost(results: pd.DataFrame, costs: pd.DataFrame, sizes: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (model, attn, quant, n_dims) that has an error and a cost row or a size (``job_sizes``), with
    ``front_<cost>`` flags (the front among the points that have that cost)."""
    errors = error_at_2d(results)
    if errors.empty or costs.empty:
        return pd.DataFrame()
    costs = costs.astype({"n_dims": int})
    points = errors.astype({"n_dims": int}).merge(costs.drop(columns=["k"], errors="ignore"), on=JOIN, how="left")
    points = points.merge(cell_sizes(sizes if sizes is not None else pd.DataFrame(columns=["bytes_stored"])),
                          on=JOIN, how="left")
    simulated = points["storage"] == "simulated"
    points.loc[simulated, SIMULATED_UNKNOWN] = np.nan  # float kernels plus rounding: no deployment's time or state
    for row in points[points["latency_ms"].isna() & ~simulated].itertuples():
        log.warning("error-vs-cost: no cost row for model=%s attn=%s quant=%s n_dims=%s (run python -m "
                    "icl.bench.mixers parts=[inference])", row.model, row.attn, row.quant, row.n_dims)
    for row in points[points["bytes_stored"].isna()].itertuples():
        log.warning("error-vs-cost: no size for model=%s attn=%s quant=%s n_dims=%s (no quant.json in its job "
                    "folders)", row.model, row.attn, row.quant, row.n_dims)
    points = points.dropna(subset=["latency_ms", "bytes_stored"], how="all").reset_index(drop=True)
    points[SIZE_COLUMNS] = points[SIZE_COLUMNS].round().astype("Int64")  # whole bytes; none where no quant.json
    simulated = (points["storage"] == "simulated").to_numpy()
    for cost in COSTS:
        has = points[cost].notna().to_numpy() & ~simulated  # a simulated width's error is no deployable model's
        points[f"front_{cost}"] = False
        points.loc[has, f"front_{cost}"] = pareto_front(points.loc[has, cost], points.loc[has, "error"])
    return points


def _error_bar(row: object) -> list[list[float]]:
    return [[row.error - row.error_low], [row.error_high - row.error]]


def _draw_size_point(ax: plt.Axes, row: object) -> None:
    """One point at its size as stored, marked by how it is stored; an unpacked intN point's bit-packed size as a
    hollow marker joined to it."""
    marker, _ = STORAGE[row.storage]
    color = attn_color(str(row.attn))
    ax.errorbar(row.bytes_stored, row.error, yerr=_error_bar(row), fmt=marker, color=color, ms=7, capsize=2, lw=1)
    if row.bytes_packed < row.bytes_stored:
        ax.plot([row.bytes_packed, row.bytes_stored], [row.error, row.error], ls=":", color=color, lw=1)
        ax.plot(row.bytes_packed, row.error, marker=marker, mfc="none", color=color, ms=7, ls="none", gid="packed")
    _annotate(ax, row, row.bytes_stored, row.front_bytes_stored)


def _annotate(ax: plt.Axes, row: object, x: float, on_front: bool) -> None:
    """A float point by its mixer, a quantised one on the front by its mode; * on the front. Labelling every
    quantised point buried the chart of seven mixers × five modes: the colour says the mixer, the marker the mode
    (the size panel's marker says how a point is stored), error_vs_cost.csv names every point."""
    if row.quant != "none" and not on_front:
        return
    text = (str(row.attn) if row.quant == "none" else str(row.quant)) + (" *" if on_front else "")
    ax.annotate(text, (x, row.error), fontsize=6, xytext=(4, 3), textcoords="offset points")


def _log_ticks(ax: plt.Axes) -> None:
    """Plain numbers at 1, 2 and 5 × 10^k: matplotlib's minor labels on a log axis spanning under two decades
    overlapped."""
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.10g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _mixer_legend(fig: plt.Figure, mixers: Sequence[str]) -> None:
    handles = [plt.Line2D([], [], marker="o", color=attn_color(m), ls="none", label=m) for m in mixers]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.95), ncol=len(handles), fontsize=7.5,
               frameon=False, title="colour = mixer", title_fontsize=7.5)


def _legend_below(ax: plt.Axes, handles: list) -> None:
    ax.legend(handles=[*handles, *ax.get_legend_handles_labels()[0]], fontsize=6.5, loc="upper center",
              bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def _storage_legend(ax: plt.Axes, kinds: Sequence[str]) -> None:
    _legend_below(ax, [plt.Line2D([], [], marker=STORAGE[k][0], color="grey", ls="none", label=STORAGE[k][1])
                       for k in STORAGE if k in set(kinds)])


def _quant_legend(ax: plt.Axes, quants: Sequence[str]) -> None:
    ordered = sorted(set(quants), key=lambda q: (q != "none", q))  # float first
    _legend_below(ax, [plt.Line2D([], [], marker=quant_style(q)[1] or "o", color="grey", ls="none",
                                  mfc="grey" if q == "none" else "none", label=q) for q in ordered])


def plot_error_vs_cost(points: pd.DataFrame) -> plt.Figure:
    """Three panels (latency, state memory, size as stored): error at k = 2d with its CI per mixer × quant mode, the
    front joined."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6), sharey=True)
    for ax, (cost, label) in zip(axes, COSTS.items()):
        drawn = points[points[cost].notna()]
        for row in drawn.itertuples():
            if cost == "bytes_stored":
                _draw_size_point(ax, row)
                continue
            dashes, marker = quant_style(str(row.quant))
            x = getattr(row, cost)
            xerr = ([[x - row.latency_low_ms], [row.latency_high_ms - x]]
                    if cost == "latency_ms" and pd.notna(row.latency_low_ms) else None)
            ax.errorbar(x, row.error, yerr=_error_bar(row), xerr=xerr,
                        fmt=marker or "o", color=attn_color(str(row.attn)), ms=7, capsize=2, lw=1,
                        mfc="none" if row.quant != "none" else attn_color(str(row.attn)))
            if cost == "state_floats" and row.quant != "none":  # a quant mode keeps the float state: same x, no label
                continue
            _annotate(ax, row, x, getattr(row, f"front_{cost}"))
        front = drawn[drawn[f"front_{cost}"]].sort_values(cost)
        ax.step(front[cost], front["error"], where="post", color="k", lw=1.2, alpha=0.6, label="Pareto front")
        ax.set_xscale("log")
        _log_ticks(ax)
        ax.set_xlabel(label + " (log)")
        ax.grid(alpha=0.3, which="both")
        if points["error_high"].max() > 0.5:  # the zero estimator's line where errors come near it, not a fixed 0–1
            ax.axhline(1.0, color="grey", ls=":", lw=1)
        if cost == "bytes_stored":
            _storage_legend(ax, drawn["storage"])
        else:
            _quant_legend(ax, drawn["quant"])
    axes[0].set_ylabel("normalised error at k = 2d (95% CI)")
    fig.suptitle("error vs inference cost per mixer × quant mode (time, state: filled float, hollow quantized, "
                 "marker = mode; size: marker = how it is stored, real or simulated; simulated widths in the size "
                 "panel only; * on the front)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    _mixer_legend(fig, list(dict.fromkeys(points.sort_values("error")["attn"].astype(str))))
    return fig


def error_vs_cost_files(inputs: Sequence[str | Path], out_dir: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """For ``make figures``: the chart and its table when the inputs hold both job errors and cost rows."""
    costs = load_costs(inputs)
    if costs.empty:
        return []
    results = load_results(inputs, cfg_columns="varying")
    points = error_vs_cost(results, costs, job_sizes(results))
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
