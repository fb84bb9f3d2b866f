"""Figures of benchmark output: median latency per prompt vs k from any ``bench.csv`` (``make bench``).

Drawn by ``make figures`` for every bench.csv under its inputs, and by the benchmark itself after a run. Pandas and
matplotlib only: the analysis layer never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never open a window

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from icl.analysis.styles import attn_color, quant_style
from icl.files import atomic_write


def plot_latency(df: pd.DataFrame, path: Path) -> Path | None:
    """Log–log median latency per prompt vs k: hue = attention, style = quant mode."""
    lat = df[(df.part == "latency")].dropna(subset=["median_ms"]) if "median_ms" in df else df.iloc[:0]
    if lat.empty:
        return None
    attns, quants = sorted(lat["attn"].unique()), sorted(lat["quant"].unique())
    fig, ax = plt.subplots(figsize=(7, 4.8))
    sns.lineplot(lat, x="k", y="median_ms", hue="attn", style="quant", ax=ax,
                 palette={a: attn_color(a) for a in attns}, dashes={q: quant_style(q)[0] or "" for q in quants},
                 markers={q: quant_style(q)[1] for q in quants})
    ax.set(xscale="log", yscale="log", xlabel="in-context examples k (prompt of k + 1 points)",
           ylabel="median latency per prompt (ms)", title=f"inference latency, model={lat.model.iloc[0]}")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, format=Path(path).suffix[1:]))
    plt.close(fig)
    return path


def bench_figures(inputs: list[Path], out_dir: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """For ``make figures``: a latency figure per ``bench.csv`` found under ``inputs`` (named by its folder)."""
    written = []
    for csv in sorted({p for root in inputs for p in Path(root).rglob("bench.csv")}):
        df = pd.read_csv(csv)
        Path(out_dir).mkdir(parents=True, exist_ok=True)  # only when there is something to draw
        for fmt in formats:
            path = plot_latency(df, Path(out_dir) / f"bench_latency_{csv.parent.name}.{fmt}")
            if path:
                written.append(path)
    return written
