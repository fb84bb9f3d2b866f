"""The quantisation table: per job, its quant.json proof beside the transformer's error at k = d, 2d; and the
breaking points, sensitivity tables and figures of ``icl.bench.quant_sweep``'s quant_sweep.csv.

``python -m icl.analysis.quant folders=[<sweep or job folder>,…]`` prints the table as markdown (docs/quantization.md's table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from omegaconf import MISSING

from icl.analysis.results import find_jobs
from icl.analysis.styles import QUANT_STYLES, attn_color
from icl.contract import STANDARD, read_eval_csv
from icl.files import save_figure
from icl.run.cli import parse
from icl.run.job import JobDir
from icl.stats import error_at
from icl.tables import markdown_table


def table(jobs: list[Path]) -> pd.DataFrame:
    """One row per job: the quant.json figures and the transformer's normalised error at k = d and 2d (eval.csv)."""
    rows = []
    for path in jobs:
        job = JobDir(path)
        report = job.read_quant()
        if report is None or not job.eval_csv.is_file():
            continue
        df = read_eval_csv(job.eval_csv)
        if df is None:
            continue
        tf = df[(df.predictor == "transformer") & (df.strategy == STANDARD)].set_index("k")
        d = int(tf.n_dims.iloc[0])
        at = error_at(df, (d, 2 * d))
        rows.append({"quant": report.get("label", report["quant"]), "bytes": report["bytes"],
                     "bytes_packed": report.get("bytes_packed", report["bytes"]), "bytes_float": report["bytes_float"],
                     "storage": report.get("storage", ""),
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


def breaking_points(df: pd.DataFrame) -> pd.DataFrame:
    """Per job and kind (``WIDTH_KINDS``): the smallest width whose paired difference to float, and every wider
    width's, has its CI's upper end inside the margin (``inside_margin``); NaN when even the widest is outside."""
    rows = []
    widths = df[df.kind.isin(WIDTH_KINDS)]
    for (task, attn, seed, run_dir, kind), g in widths.groupby([*JOB_KEYS, "kind"], sort=True):
        g = g.sort_values("bits", ascending=False)
        inside = g.inside_margin.astype(bool).cummin()  # inside at this width and every wider one
        ok = g[inside.to_numpy()]
        best = ok.iloc[-1] if len(ok) else None
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


ARM_STYLES = ("-", "--", ":", "-.")
ARM_HATCHES = ("", "//", "..", "xx")  # the bars' mark of the same arm


def variant_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Per row: the line it belongs to (``variant``: the attention, with its source and recipe when a sweep holds
    several, e.g. two arms of the study) and that arm's line style (``style``)."""
    arms = df[["source", "recipe"]].astype(object).fillna("").astype(str) if {"source", "recipe"} <= set(df.columns) else None
    if arms is None or len(arms.drop_duplicates()) < 2:
        return pd.DataFrame({"variant": df.attn.astype(str), "style": ARM_STYLES[0]}, index=df.index)
    arm = arms.source.where(arms.recipe == "", arms.source + " " + arms.recipe).str.strip()
    order = {name: i for i, name in enumerate(sorted(arm.unique()))}
    return pd.DataFrame({"variant": df.attn.astype(str) + " (" + arm + ")",
                         "style": arm.map(lambda a: ARM_STYLES[order[a] % len(ARM_STYLES)])}, index=df.index)


def plot_sweep(df: pd.DataFrame, task: str) -> plt.Figure:
    """One task: error − float vs width per swept kind (weights, attention internals, recurrent state; mean over
    seeds, CI bars of each seed's paired difference averaged), margin line; and per-block sensitivity per branch."""
    sub = df[df.task == task]
    sub = pd.concat([sub, variant_labels(sub)], axis=1)
    kinds = [k for k in WIDTH_KINDS if (sub.kind == k).any()] or list(WIDTH_KINDS[:2])
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(4.4 * (len(kinds) + 1), 3.6), constrained_layout=True)
    for ax, kind in zip(axes[:-1], kinds):
        for (variant, attn, style), g in sub[sub.kind == kind].groupby(["variant", "attn", "style"], sort=True):
            m = g.groupby("bits")[["diff", "diff_low", "diff_high"]].mean().sort_index()
            ax.errorbar(m.index, m["diff"], yerr=[m["diff"] - m.diff_low, m.diff_high - m["diff"]], marker="o",
                        capsize=3, color=attn_color(str(attn)), ls=style, label=variant)
        ax.axhline(sub.margin.iat[0], color="grey", ls="--", lw=1, label="margin")
        ax.axhline(0, color="black", lw=0.5)
        ax.set(xlabel="bits", ylabel="error − float at k = 2d", title=f"{task}: {kind}", yscale="symlog")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xticks(sorted(sub[sub.kind == kind].bits.unique()))  # the widths swept, not a float scale
        ax.invert_xaxis()
    ax = axes[-1]
    sens = sub[sub.kind == "sensitivity"]
    branches = sorted(sens.branch.unique())
    groups = list(sens.groupby(["variant", "attn", "style"], sort=True))
    width = 0.8 / max(len(groups) * len(branches), 1)  # one slot per variant × branch inside each block
    for i, ((variant, attn, style), g) in enumerate(groups):
        m = g.groupby(["block", "branch"])["diff"].mean()
        blocks = sorted(g.block.unique())
        for j, branch in enumerate(branches):
            slot = i * len(branches) + j
            xs = [b - 0.4 + (slot + 0.5) * width for b in blocks]
            ax.bar(xs, [m.get((b, branch), float("nan")) for b in blocks], width=0.9 * width,
                   color=attn_color(str(attn)), alpha=0.4 + 0.6 * j / max(len(branches) - 1, 1),
                   hatch=ARM_HATCHES[ARM_STYLES.index(style)], label=f"{variant} {branch}")
    ax.set_xticks(sorted(sens.block.dropna().unique().astype(int)))
    ax.set(xlabel="block (bars: " + ", ".join(branches) + ")", ylabel="error − float", title=f"{task}: one block at a time",
           yscale="symlog")
    ax.set_yscale("symlog", linthresh=1e-3)
    for a in axes[:-1]:
        a.legend(fontsize=7)
    outside = {"loc": "upper left", "bbox_to_anchor": (1.0, 1.0)} if len(groups) > 3 else {}  # many bars: no cover
    axes[-1].legend(fontsize=6, **outside)
    return fig


def quant_sweep_figures(inputs: list[Path], out_dir: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """For ``make figures``: one sweep figure per task per ``quant_sweep.csv`` found under ``inputs``."""
    written = []
    for csv in sorted({p for root in inputs for p in Path(root).rglob("quant_sweep.csv")}):
        df = pd.read_csv(csv)
        if "learned" in df:  # the study guard's verdict per model: seeds that did not learn are left out, as in the tables
            df = df[df.learned.astype(bool)]
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for task in sorted(df.task.unique()):
            fig = plot_sweep(df, task)
            for fmt in formats:
                path = Path(out_dir) / f"quant_sweep_{csv.parent.name}_{task}.{fmt}"
                save_figure(path, fig, dpi=120)
                written.append(path)
            plt.close(fig)
    return written


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
