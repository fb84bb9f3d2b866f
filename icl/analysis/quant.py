"""The quantisation table: per job, its quant.json proof beside the transformer's error at k = d, 2d; and the
breaking points, sensitivity tables and figures of ``icl.bench.quant_sweep``'s quant_sweep.csv.

``python -m icl.analysis.quant folders=[<sweep or job folder>,…]`` prints the table as markdown (docs/quantization.md's table).

The figures (``quant_sweep_figures``, drawn by ``make figures``) read every sweep CSV under the inputs — a sweep's
``quant_sweep.csv`` and the copies docs/quantization keeps (``sweep_*.csv``; ``make quant-figures`` redraws those) —
through one reader (``read_sweep``), take each variant × arm from one file (``combine_sweeps``) and draw, per task,
every variant's paired error − float against the width (``quant_sweep_<task>``) and one panel per variant of the
blocks quantised one at a time (``quant_sensitivity_<task>``). Bars: the t-interval over the learned seeds, the one
the breaking point is read from, or each seed's CI over prompts where fewer than ``MIN_SEEDS`` learned (``seed_bars``).
"""

from __future__ import annotations

import logging
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from omegaconf import MISSING

from icl.analysis.results import find_jobs
from icl.analysis.styles import QUANT_STYLES, attn_color
from icl.contract import STANDARD, read_eval_csv
from icl.files import atomic_write, save_figure
from icl.quantize_modes import MODES
from icl.run.cli import parse
from icl.run.job import JobDir
from icl.stats import below_margin, error_at, seed_interval
from icl.tables import markdown_table

log = logging.getLogger(__name__)


REPORT_KEYS = ("quant", "bytes", "bytes_float")  # what every reader of a quant.json needs from it


def stored_as(report: dict[str, Any]) -> str:
    """How a job's model is stored — float32 (not quantised), simulated (a fake-quantised width: float32 storage),
    unpacked (intN held one per int8 byte: its bit-packed size only computed) or real — from its quant.json: the
    mode's facts (``icl.quantize_modes``) and the packed size."""
    mode = MODES[report["quant"]]
    if mode.stage == "none":
        return "float32"
    if mode.kind == "simulated":
        return "simulated"
    if report.get("bytes_packed", report["bytes"]) < report["bytes"]:
        return "unpacked"
    return "real"


def read_quant(job: Path | str) -> dict[str, Any] | None:
    """The one reader of a job's quant.json (None without one), for the quant table and the cost chart: the report
    with what reports from before a field existed lack filled in (``label`` = ``quant``, ``bytes_packed`` = ``bytes``,
    ``storage`` = '') and ``stored_as`` (``stored_as``); a report without ``REPORT_KEYS`` is one ValueError line."""
    folder = JobDir(job)
    report = folder.read_quant()
    if report is None:
        return None
    if missing := [key for key in REPORT_KEYS if key not in report]:
        raise ValueError(f"{folder.quant_json} lacks {missing}: evaluate the job again to rewrite it (python -m "
                         f"icl.evaluate run_dir={folder.path})")
    if report["quant"] not in MODES:  # a mode renamed or dropped since the job ran
        raise ValueError(f"{folder.quant_json}: quant mode {report['quant']!r} is not one of {sorted(MODES)}: "
                         f"evaluate the job again (python -m icl.evaluate run_dir={folder.path}) or move it away")
    report = {"label": report["quant"], "bytes_packed": report["bytes"], "storage": "", **report}
    return {**report, "stored_as": stored_as(report)}


def table(jobs: list[Path]) -> pd.DataFrame:
    """One row per job: the quant.json figures (``read_quant``) and the transformer's normalised error at k = d and
    2d (eval.csv)."""
    rows = []
    for path in jobs:
        job = JobDir(path)
        report = read_quant(path)
        if report is None or not job.eval_csv.is_file():
            continue
        df = read_eval_csv(job.eval_csv)
        if df is None:
            continue
        tf = df[(df.predictor == "transformer") & (df.strategy == STANDARD)].set_index("k")
        d = int(tf.n_dims.iloc[0])
        at = error_at(df, (d, 2 * d))
        rows.append({"quant": report["label"], "bytes": report["bytes"],
                     "bytes_packed": report["bytes_packed"], "bytes_float": report["bytes_float"],
                     "storage": report["storage"],
                     "quantized_linears": f"{report['quantized_linears']}/{report['linear_layers']}",
                     "layer_bytes": report["layer_bytes"], "layer_bytes_float": report["layer_bytes_float"],
                     "rel_diff_max": report["rel_diff_max"], "rel_diff_mean": report["rel_diff_mean"],
                     f"error_k{d}": at.get(d), f"error_k{2 * d}": at.get(2 * d),
                     f"ci_k{2 * d}": f"[{tf.ci_low.get(2 * d):.3f}, {tf.ci_high.get(2 * d):.3f}]",
                     "job": str(job)})
    order = {name: i for i, name in enumerate(QUANT_STYLES)}  # the quant modes in their registry order
    return pd.DataFrame(rows).sort_values("quant", key=lambda s: s.map(order)) if rows else pd.DataFrame()


# ---------------------------------------------------------------------------------------------------------------------
# icl.bench.quant_sweep's output: breaking points, sensitivity, figures

JOB_KEYS = ["task", "attn", "seed", "run_dir"]
WIDTH_KINDS = ("weights", "attention", "state")  # probes swept over widths (state: linear-cost mixers only)


def breaking_point(bits: np.ndarray, inside: np.ndarray) -> int | None:
    """The breaking point's one rule: the smallest width that is inside the margin with every wider width inside
    too (``bits`` in any order); None when even the widest is outside."""
    bits = np.asarray(bits)
    order = np.argsort(-bits, kind="stable")
    ok = np.logical_and.accumulate(np.asarray(inside, dtype=bool)[order])  # inside here and at every wider width
    return int(bits[order][ok][-1]) if ok.any() else None


def breaking_points(df: pd.DataFrame) -> pd.DataFrame:
    """Per job and kind (``WIDTH_KINDS``): the smallest width whose paired difference to float, and every wider
    width's, has its CI's upper end inside the margin (``inside_margin``); NaN when even the widest is outside."""
    rows = []
    widths = df[df.kind.isin(WIDTH_KINDS)]
    for (task, attn, seed, run_dir, kind), g in widths.groupby([*JOB_KEYS, "kind"], sort=True):
        g = g.sort_values("bits", ascending=False)
        point = breaking_point(g.bits.to_numpy(), g.inside_margin.astype(bool).to_numpy())
        best = None if point is None else g[g.bits == point].iloc[0]
        rows.append({"task": task, "attn": attn, "seed": seed, "kind": kind, "margin": g.margin.iat[0],
                     "float_error": g.float_error.iat[0],
                     "smallest_bits_inside": int(best.bits) if best is not None else float("nan"),
                     "diff_there": best["diff"] if best is not None else float("nan"),
                     "widths": " ".join(map(str, g.bits)), "run_dir": run_dir})
    return pd.DataFrame(rows)


def sweep_markdown(df: pd.DataFrame) -> str:
    """quant_sweep.md: breaking points, the paired difference per width, and per-layer sensitivity."""
    cell = lambda r: f"{r['diff']:+.3f} [{r.diff_low:+.3f}, {r.diff_high:+.3f}]{'' if r.inside_margin else ' ✗'}"
    parts = [f"# Quantisation sweep (k = 2d, margin {df.margin.iat[0]:g}; ✗ = CI upper end outside the margin)",
             "## Breaking points\n\n" + markdown(breaking_points(df).drop(columns=["run_dir", "widths"]))]
    for kind, g in df[df.kind.isin(WIDTH_KINDS)].groupby("kind", sort=False):
        wide = g.assign(c=g.apply(cell, axis=1)).pivot_table(index=["task", "attn", "seed"], columns="bits",
                                                             values="c", aggfunc="first")
        wide = wide[sorted(wide.columns, reverse=True)].reset_index()
        parts.append(f"## {kind}: error − float by width (paired, 95% CI)\n\n" + markdown(wide))
    backends = df[df.kind == "int8"]
    if not backends.empty:
        wide = backends.assign(c=backends.apply(cell, axis=1)).pivot_table(
            index=["task", "attn", "seed"], columns="label", values="c", aggfunc="first").reset_index()
        parts.append("## int8 backends: error − float\n\n" + markdown(wide))
    sens = df[df.kind == "sensitivity"]
    if not sens.empty:
        wide = sens.assign(c=sens.apply(cell, axis=1), col=sens.branch + "@" + sens.bits.astype(str)).pivot_table(
            index=["task", "attn", "seed", "block"], columns="col", values="c", aggfunc="first").reset_index()
        parts.append("## Sensitivity: one block, one branch quantised (error − float)\n\n" + markdown(wide))
    timing = df.groupby("kind").seconds.agg(["count", "sum"]).reset_index()
    parts.append("## Cost (evaluation only, seconds)\n\n" + markdown(timing))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Reading sweeps: the one reader of the sweep's rows, and every sweep found under some folders combined

ARM_KEYS = ["source", "recipe", "task", "attn"]  # one variant of one arm: the seeds pooled at the seed level
SWEEP_COLUMNS = {"task", "attn", "seed", "kind", "bits", "block", "branch", "margin", "float_error", "diff", "diff_low",
                 "diff_high"}  # the rows per job × probe; the seed-level rows (quant_sweep_seeds.csv) have no block, branch
MIN_SEEDS = 3  # fewest learned seeds for a seed-level interval (and verdict)


def read_sweep(csv: Path) -> pd.DataFrame:
    """The rows of a quant_sweep.csv (or a copy of it in docs/), strings as the sweep wrote them (not NaN)."""
    df = pd.read_csv(csv, dtype={"branch": str, "source": str, "recipe": str, "run_dir": str, "fingerprint": str})
    for column in {"branch", "source", "recipe"} & set(df.columns):
        df[column] = df[column].fillna("")
    return df


def with_guard_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Rows from before the guard, the source and the recipe existed: every model learned, one source, one recipe."""
    return df.assign(**{c: v for c, v in (("learned", True), ("source", ""), ("recipe", "")) if c not in df.columns})


def is_sweep_csv(path: Path) -> bool:
    """A CSV of the sweep's rows (one per job × probe), told by its header (``SWEEP_COLUMNS``)."""
    with open(path, encoding="utf-8") as f:
        return SWEEP_COLUMNS <= set(f.readline().strip().split(","))


def find_sweeps(inputs: list[Path]) -> list[Path]:
    """Every sweep CSV (``*sweep*.csv`` with the sweep's header) under the inputs, or an input that is one."""
    found = {p for root in map(Path, inputs) for p in ([root] if root.is_file() else root.rglob("*sweep*.csv"))}
    copies = {p for p in found if p.name == "quant_sweep_compact.csv" and p.with_name("quant_sweep.csv") in found}
    return sorted(p for p in found - copies if p.suffix == ".csv" and is_sweep_csv(p))  # a sweep's rounded copy: once


def combine_sweeps(files: list[Path]) -> pd.DataFrame:
    """Every file's rows, each arm (``ARM_KEYS``) taken from ONE file (column ``file``), so none is drawn twice:

    1. rows without a recipe (sweeps from before the study's arms) give way to a file that sweeps the same
       source × task × variant with a recipe (a later pass over the same root);
    2. of several files holding one arm, the one with the most learned seeds of it wins, then the most rows, then
       the last file name — a ``reuse=`` pass carries the earlier pass's rows unchanged and adds the new seeds.
    Rows of a losing file that differ from the winner's on the same seed and probe are logged (two sets of models
    under one arm name), never drawn."""
    df = pd.concat([with_guard_columns(read_sweep(f)).assign(file=str(f)) for f in files], ignore_index=True)
    margins = df.groupby(ARM_KEYS).margin.nunique()
    if (margins > 1).any():  # a rescore= copy at another margin would silently move the breaking points
        arm = " ".join(map(str, margins[margins > 1].index[0]))
        raise ValueError(f"quant sweep {arm}: its files were scored at margins {sorted(set(df.margin))}: pass the "
                         f"files of one margin only")
    arms = (df.assign(learned_seed=df.seed.where(df.learned.astype(bool)))
            .groupby([*ARM_KEYS, "file"], sort=False)
            .agg(n_learned=("learned_seed", "nunique"), n_rows=("seed", "size")).reset_index())
    arms = arms[~_superseded(arms)]
    winners = (arms.sort_values(["n_learned", "n_rows", "file"]).groupby(ARM_KEYS, sort=False).tail(1)
               .set_index(ARM_KEYS).file)
    for key, g in arms.groupby(ARM_KEYS, sort=True):
        for loser in set(g.file) - {winners[key]}:
            _log_disagreement(df, key, winners[key], loser)
    chosen = pd.MultiIndex.from_frame(df[[*ARM_KEYS, "file"]]).isin(
        pd.MultiIndex.from_frame(winners.reset_index()[[*ARM_KEYS, "file"]]))
    return df[chosen].reset_index(drop=True)


def _superseded(arms: pd.DataFrame) -> pd.Series:
    """Per arm of a file: recipe-less, with another file sweeping its source × task × variant with a recipe."""
    with_recipe = arms[arms.recipe != ""].groupby(["source", "task", "attn"]).file.agg(set)
    out = pd.Series([r.recipe == "" and bool(with_recipe.get((r.source, r.task, r.attn), set()) - {r.file})
                     for r in arms.itertuples()], index=arms.index, dtype=bool)
    for r in arms[out].itertuples():
        log.info("quant sweep %s %s (%s, no recipe): %s gives way to a file with recipes", r.task, r.attn, r.source, r.file)
    return out


PROBE_KEYS = ["seed", "kind", "bits", "label", "block", "branch"]


def _log_disagreement(df: pd.DataFrame, arm: tuple, winner: str, loser: str) -> None:
    """Log when ``loser``'s rows of ``arm`` are not the winner's (4 significant digits: docs/ keeps that many)."""
    rows = df[(df[ARM_KEYS] == list(arm)).all(axis=1)]
    keys = [k for k in PROBE_KEYS if k in rows.columns]
    both = (rows[rows.file == winner].merge(rows[rows.file == loser], on=keys, suffixes=("", "_other")))
    same = np.isclose(both["diff"], both["diff_other"], rtol=1e-3, atol=0, equal_nan=True)
    if len(both) and not same.all():
        log.warning("quant sweep %s: %d of %d shared probes differ between %s (drawn) and %s", " ".join(map(str, arm)),
                    int((~same).sum()), len(both), winner, loser)


# ---------------------------------------------------------------------------------------------------------------------
# Figures: the breaking point per task (every variant and arm), and per-block sensitivity (one panel per variant)

ARM_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
ARM_MARKERS = ("o", "s", "^", "D", "v", "P")  # with the style: the mark of one arm in every panel
BRANCHES = {"attn": "attention projections", "mlp": "MLP", "internals": "attention internals", "state": "recurrent state"}


def variant_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Per row: the line it belongs to (``variant``: the attention, with its source and recipe when the rows hold
    several arms, e.g. the study's two) and that arm's line style and marker (``style``, ``marker``)."""
    arms = df[["source", "recipe"]].astype(object).fillna("").astype(str) if {"source", "recipe"} <= set(df.columns) else None
    if arms is None or len(arms.drop_duplicates()) < 2:
        return pd.DataFrame({"variant": df.attn.astype(str), "style": [ARM_STYLES[0]] * len(df),
                             "marker": ARM_MARKERS[0]}, index=df.index)
    arm = arms.source.where(arms.recipe == "", arms.source + " " + arms.recipe).str.strip()
    order = {name: i for i, name in enumerate(sorted(arm.unique()))}
    return pd.DataFrame({"variant": df.attn.astype(str).where(arm == "", df.attn.astype(str) + " (" + arm + ")"),
                         "style": arm.map(lambda a: ARM_STYLES[order[a] % len(ARM_STYLES)]),
                         "marker": arm.map(lambda a: ARM_MARKERS[order[a] % len(ARM_MARKERS)])}, index=df.index)


def labelled(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` beside their ``variant_labels``, or as they are when already labelled: labelled once, over every
    row of a task, a line drawn and a variant left out are named by the same call."""
    return rows if "variant" in rows.columns else pd.concat([rows, variant_labels(rows)], axis=1)


def seed_bars(rows: pd.DataFrame, by: list[str], min_seeds: int = MIN_SEEDS, ci: float = 0.95) -> pd.DataFrame:
    """What a figure draws for one arm's learned rows, per group of ``by`` (e.g. a width): with ``min_seeds`` or
    more seeds, the mean of their paired differences and its t-interval over seeds (``icl.stats.seed_interval``,
    the interval the breaking point is read from: ``quant_sweep_seeds.csv``); with fewer, each seed on its own with
    its paired CI over prompts. Columns: ``by``, ``series`` (``"N seeds"`` or ``"seed S"``), ``n``, ``diff``,
    ``low``, ``high``; a non-finite difference (a quantised model predicting inf/nan) is inf throughout."""
    out = []
    for key, g in rows.groupby(by, sort=True):
        at = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        n = g.seed.nunique()
        if n >= min_seeds:
            iv = seed_interval(g["diff"].tolist(), ci)
            finite = bool(np.isfinite(g["diff"]).all())
            out.append({**at, "series": f"{n} seeds", "n": n, **({"diff": iv.mean, "low": iv.low, "high": iv.high}
                        if finite else dict.fromkeys(("diff", "low", "high"), math.inf))})
            continue
        for seed, r in g.groupby("seed", sort=True):
            r = r.iloc[0]
            finite = bool(np.isfinite([r["diff"], r.diff_low, r.diff_high]).all())
            out.append({**at, "series": f"seed {seed}", "n": n, **({"diff": r["diff"], "low": r.diff_low,
                        "high": r.diff_high} if finite else dict.fromkeys(("diff", "low", "high"), math.inf))})
    return pd.DataFrame(out, columns=[*by, "series", "n", "diff", "low", "high"])


def _arms(rows: pd.DataFrame) -> list[tuple[str, str, Any, str, pd.DataFrame]]:
    """(variant, attn, style, marker, rows) per arm, in the variants' order."""
    rows = labelled(rows)
    return [(v, str(g.attn.iat[0]), g["style"].iat[0], g.marker.iat[0], g) for v, g in rows.groupby("variant", sort=True)]


def _what_bars(min_seeds: int, ci: float) -> str:
    return (f"bars: {ci:.0%} t-interval over the learned seeds (≥ {min_seeds}: the interval the breaking point is "
            f"read from); with fewer, each seed's own paired {ci:.0%} CI over prompts")


def _series_label(variant: str, series: str, float_error: float) -> str:
    return (f"{variant}: {series} (t-interval), float {float_error:.3f}" if series.endswith("seeds")
            else f"{variant}: {series} (CI over prompts), float {float_error:.3f}")


def _mark_not_finite(ax: plt.Axes, xs: list[float], color: Any, marker: str) -> None:
    """A quantised model whose predictions were not finite: an open mark at the panel's top."""
    if xs:
        ax.scatter(xs, [0.97] * len(xs), transform=ax.get_xaxis_transform(), marker=marker, facecolors="none",
                   edgecolors=[color], zorder=3)


def plot_sweep(df: pd.DataFrame, task: str, min_seeds: int = MIN_SEEDS, ci: float = 0.95,
               left_out: tuple[str, ...] = ()) -> plt.Figure:
    """One task's breaking point: error − float vs width, one panel per swept kind (weights, attention internals,
    recurrent state), one line per variant × arm (``seed_bars``), the margin; ``df``: learned rows only."""
    sub = df[(df.task == task) & df.kind.isin(WIDTH_KINDS)]
    kinds = [k for k in WIDTH_KINDS if (sub.kind == k).any()] or list(WIDTH_KINDS[:1])
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4.6), squeeze=False, constrained_layout=True)
    arms = _arms(sub)
    handles: dict[str, Any] = {}
    for ax, kind in zip(axes[0], kinds):
        for i, (variant, attn, style, marker, g) in enumerate(arms):
            rows = g[g.kind == kind]
            bars = seed_bars(rows, ["bits"], min_seeds, ci)
            shift = 0.07 * (i - (len(arms) - 1) / 2)  # dodged, so that arms' bars at one width stay apart
            for j, (series, b) in enumerate(bars.groupby("series", sort=True)):
                x = b.bits + shift + 0.02 * j
                ok = np.isfinite(b["diff"]).to_numpy()
                line = ax.errorbar(x[ok], b["diff"][ok], yerr=[(b["diff"] - b.low)[ok], (b.high - b["diff"])[ok]],
                                   color=attn_color(attn), ls=style, marker=marker, ms=4, capsize=2, lw=1.2)
                _mark_not_finite(ax, list(x[~ok]), attn_color(attn), marker)
                handles.setdefault(_series_label(variant, series, float(rows.float_error.mean())), line)
        for margin in sorted(sub.margin.unique()):
            ax.axhline(margin, color="grey", ls="--", lw=1)
        ax.axhline(0, color="black", lw=0.5)
        ax.set(xlabel="bits", ylabel="error − float at k = 2d (paired)", title=f"{task}: {kind}")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xticks(sorted(sub[sub.kind == kind].bits.unique()))  # the widths swept, not a float scale
        ax.invert_xaxis()
    margins = ", ".join(f"{m:g}" for m in sorted(sub.margin.unique()))
    note = f"grey dashes: the margin ({margins}); open marks at the top: predictions not finite. {_what_bars(min_seeds, ci)}"
    if left_out:
        note += "\nnot drawn (no seed passed the study's guard): " + ", ".join(left_out)
    fig.suptitle(f"{task}: error − float at k = 2d by width, every variant swept", fontsize=10)
    fig.supxlabel(textwrap.fill(note, 40 * len(kinds)), fontsize=8)
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=7)
    return fig


def plot_sensitivity(df: pd.DataFrame, task: str, min_seeds: int = MIN_SEEDS, ci: float = 0.95) -> plt.Figure | None:
    """One task's per-layer sensitivity: one panel per variant × arm, per block one bar per branch quantised alone
    (its attention projections, MLP, attention internals, recurrent state; ``seed_bars``); ``df``: learned rows."""
    sens = df[(df.task == task) & (df.kind == "sensitivity")]
    if sens.empty:
        return None
    arms = _arms(sens)
    branches = [b for b in BRANCHES if (sens.branch == b).any()]
    bits = sens.groupby("branch").bits.agg(lambda b: "/".join(map(str, sorted(set(b)))))
    colors = dict(zip(branches, sns.color_palette("colorblind", len(branches))))
    cols = min(4, len(arms))
    rows_n = math.ceil(len(arms) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.8 * cols, 3.1 * rows_n), squeeze=False, sharey=True,
                             constrained_layout=True)
    for ax, (variant, attn, _, _, g) in zip(axes.flat, arms):
        bars = seed_bars(g, ["block", "branch"], min_seeds, ci)
        series = sorted(bars.series.unique())
        width = 0.8 / (len(branches) * len(series))
        for j, branch in enumerate(branches):
            for si, name in enumerate(series):
                b = bars[(bars.branch == branch) & (bars.series == name)]
                x = b.block - 0.4 + (j * len(series) + si + 0.5) * width
                ok = np.isfinite(b["diff"]).to_numpy()
                ax.bar(x[ok], b["diff"][ok], width=0.9 * width, color=colors[branch],
                       yerr=[(b["diff"] - b.low)[ok], (b.high - b["diff"])[ok]], capsize=2, error_kw={"lw": 0.8})
                _mark_not_finite(ax, list(x[~ok]), colors[branch], "x")
        n = g.seed.nunique()
        what = f"{n} seeds, t-interval" if n >= min_seeds else f"{' '.join(series)}: CI over prompts"
        ax.set_title(f"{variant}\n{what}", fontsize=9, color=attn_color(attn))
        ax.set_xticks(sorted(g.block.dropna().unique().astype(int)))
        ax.set(xlabel="block")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_yscale("symlog", linthresh=1e-3)
    for ax in axes.flat[len(arms):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("error − float at k = 2d (paired)")
    legend = [plt.Rectangle((0, 0), 1, 1, color=colors[b]) for b in branches]
    fig.legend(legend, [f"{BRANCHES[b]} at {bits[b]} bits" for b in branches], loc="outside right center", fontsize=8)
    fig.suptitle(f"{task}: one block and one branch quantised at a time", fontsize=10)
    fig.supxlabel(textwrap.fill(_what_bars(min_seeds, ci), 45 * cols), fontsize=8)
    return fig


def quant_sweep_figures(inputs: list[Path], out_dir: Path, formats: tuple[str, ...] = ("png",),
                        min_seeds: int = MIN_SEEDS, ci: float = 0.95) -> list[Path]:
    """For ``make figures``: every sweep CSV under ``inputs`` (``find_sweeps``; each arm from one file:
    ``combine_sweeps``) → per task ``quant_sweep_<task>`` (breaking point, every variant) and
    ``quant_sensitivity_<task>`` (one panel per variant); seeds that did not learn (the study's guard, column
    ``learned``) are left out, as in the tables."""
    if min_seeds < 2:
        raise ValueError(f"min_seeds={min_seeds}: a seed-level t-interval needs at least 2 seeds")
    files = find_sweeps(inputs)
    if not files:
        return []
    df = combine_sweeps(files)
    written = []
    for task in sorted(df[df.learned.astype(bool)].task.unique()):
        figures = task_figures(df, task, min_seeds, ci)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for stem, fig in figures.items():
            if fig is None:
                continue
            for fmt in formats:
                path = Path(out_dir) / f"{stem}.{fmt}"
                save_figure(path, fig, dpi=120)
                written.append(path)
            plt.close(fig)
    if written:  # beside the figures: the breaking points they show, one row per arm × kind
        summary = breaking_point_summary(df, min_seeds, ci)
        tables = [Path(out_dir) / f"{BREAKING_POINTS}.csv", Path(out_dir) / f"{BREAKING_POINTS}.md"]
        atomic_write(tables[0], lambda tmp: summary.to_csv(tmp, index=False))
        atomic_write(tables[1], lambda tmp: tmp.write_text(markdown(summary) + "\n", encoding="utf-8"))
        written += tables
    return written


def task_figures(df: pd.DataFrame, task: str, min_seeds: int = MIN_SEEDS,
                 ci: float = 0.95) -> dict[str, plt.Figure | None]:
    """One task's ``quant_sweep_<task>`` and ``quant_sensitivity_<task>`` from ``combine_sweeps``' rows: the learned
    rows drawn, the variants none of whose seeds learned named in the caption — both labelled in one call."""
    rows = labelled(df[df.task == task])
    learned = rows[rows.learned.astype(bool)]
    left_out = tuple(sorted(set(rows.variant) - set(learned.variant)))
    return {f"quant_sweep_{task}": plot_sweep(learned, task, min_seeds, ci, left_out),
            f"quant_sensitivity_{task}": plot_sensitivity(learned, task, min_seeds, ci)}


BREAKING_POINTS = "quant_breaking_points"  # the summary table quant_sweep_figures writes beside the figures


@dataclass(frozen=True)
class Reading:
    """One arm × width kind's breaking point as the figure's bars give it (``read_breaking_point``)."""

    read: str  # how: "t-interval over N seeds" or "per seed (paired CI over prompts)"
    points: tuple[int | None, ...]  # the seed-level one, or one per seed; None: even the widest width is outside

    @property
    def text(self) -> str:
        """``"4 bits"``, ``"4 – 8 bits"`` (per seed), or ``"–"`` when no series has one."""
        if all(p is None for p in self.points):
            return "–"
        return " ".join("–" if p is None else str(p) for p in self.points) + " bits"


def _seed_of(series: str) -> int:
    """A ``seed_bars`` series' seed (``"seed S"``); -1 for the seed-level series (``"N seeds"``)."""
    return int(series.split()[1]) if series.startswith("seed ") else -1


def read_breaking_point(rows: pd.DataFrame, min_seeds: int = MIN_SEEDS, ci: float = 0.95,
                        per_seed: bool = False) -> Reading:
    """The breaking point of one arm × width kind from its learned rows, read from the bars the figure draws
    (``seed_bars``): the t-interval over the seeds where every width has ``min_seeds`` or more, else (or with
    ``per_seed``) each seed's own paired CI over prompts, one breaking point per seed (``breaking_point`` on
    ``below_margin`` of the upper ends). The one reading of the figures' summary and of ``icl.bench.quant_sweep``."""
    pooled = not per_seed and rows.groupby("bits").seed.nunique().min() >= min_seeds  # every width at the seed level
    needed = rows[["bits", "seed", "diff", "diff_low", "diff_high"]]  # a narrow frame: seed_bars' groups slice fast
    bars = seed_bars(needed, ["bits"], min_seeds if pooled else rows.seed.nunique() + 1, ci)  # else every width per seed
    margin = rows.margin.iat[0]
    series = sorted(bars.groupby("series", sort=False), key=lambda kv: _seed_of(kv[0]))  # in seed order: a seed
    points = tuple(breaking_point(b.bits.to_numpy(), below_margin(b.high.to_numpy(), margin))  # missing at the
                   for _, b in series)  # narrowest width would otherwise come last
    return Reading(f"t-interval over {rows.seed.nunique()} seeds" if pooled else "per seed (paired CI over prompts)",
                   points)


def breaking_point_summary(df: pd.DataFrame, min_seeds: int = MIN_SEEDS, ci: float = 0.95) -> pd.DataFrame:
    """Per arm (``ARM_KEYS``) × width kind of ``combine_sweeps``' rows: the breaking point of its learned rows
    (``read_breaking_point``). ``–``: even the widest width is outside."""
    rows = []
    learned = df[df.learned.astype(bool) & df.kind.isin(WIDTH_KINDS)]
    for (source, recipe, task, attn, kind), g in learned.groupby([*ARM_KEYS, "kind"], sort=True):
        reading = read_breaking_point(g, min_seeds, ci)
        rows.append({"task": task, "attn": attn, "arm": f"{source} {recipe}".strip(), "kind": kind,
                     "seeds": " ".join(map(str, sorted(g.seed.unique()))), "margin": g.margin.iat[0],
                     "breaking_point": reading.text, "read": reading.read,
                     "file": Path(g.file.iat[0]).name if "file" in g.columns else ""})
    columns = ["task", "attn", "arm", "kind", "seeds", "margin", "breaking_point", "read", "file"]
    return pd.DataFrame(rows, columns=columns).sort_values(["task", "attn", "arm", "kind"], ignore_index=True)


@dataclass
class Options:
    folders: list[str] = field(default=MISSING, metadata={"help": "sweep or job folders (searched for jobs)"})


def main(argv: list[str] | None = None) -> None:
    """``python -m icl.analysis.quant folders=[…]``: the quant.json table of every job under the folders (markdown)."""
    args = parse(Options, argv, "python -m icl.analysis.quant", __doc__)
    df = table(find_jobs(args.folders))
    if df.empty:
        raise SystemExit(f"error: no job with quant.json and eval.csv under {' '.join(args.folders)}")
    print(markdown(df.drop(columns="job")))


def markdown(df: pd.DataFrame) -> str:
    """A DataFrame as a markdown table (numbers to 4 significant digits)."""
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    return markdown_table([str(c) for c in df.columns], ([cell(v) for v in row] for row in df.itertuples(index=False)))


def cli() -> None:
    """Console script ``icl-quant-table``."""
    main()


if __name__ == "__main__":
    cli()
