"""The study's figures from committed cells: every seed faint, a seed-level band (mean and t-interval over the
seeds that learned), failed seeds dashed and marked, and each model's training curve. Sized for README width.
Each figure comes with a one-line caption computed from the same cells (what is drawn, the guard's k, which seeds
did not learn, are not committed or have no curve, and what a compressed band means)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from icl.analysis.styles import attn_color
from icl.lab.study.claims import PROPOSED_FIX, REFERENCE, SEED_MODEL, Study
from icl.lab.study.inference import convergence_flags, seed_interval

ATTNS = (REFERENCE, SEED_MODEL, PROPOSED_FIX)
WIDTH = 7.0  # inches at dpi 100: 700 px, the README's column
Y_TOP = 1.4  # error_vs_k's linear range: learning happens below the zero estimator (1)
ABOVE = 0.6  # axis units (on the linear range's scale) that means above Y_TOP get, however high they go


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str  # one line under the figure on the page
    short: str    # the README's line: what is drawn and which seeds did not learn


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from icl.files import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)
    return path


def _band(ax, x: Sequence[float], curves: list[tuple[np.ndarray, bool]], color, label: str,
          ci: float) -> list[float]:
    """Draws the seeds and the seed-level band; returns the plotted mean (empty when no seed learned)."""
    for y, ok in curves:
        ax.plot(x, y, color=color, alpha=0.35 if ok else 0.6, linewidth=0.8, linestyle="-" if ok else "--",
                marker=None if ok else "x", markersize=3)
    good = np.array([y for y, ok in curves if ok])
    if len(good):
        bounds = [seed_interval(list(col), ci) for col in good.T]
        mean = [b.mean for b in bounds]
        ax.plot(x, mean, color=color, linewidth=1.8, label=f"{label} ({len(good)}/{len(curves)} learned)")
        if len(good) > 1:
            ax.fill_between(x, [b.low for b in bounds], [b.high for b in bounds], color=color, alpha=0.18)
        return mean
    ax.plot([], [], color=color, linestyle="--", label=f"{label} (0/{len(curves)} learned)")
    return []


def _squeeze(y, factor: float):
    """The y scale: identity up to Y_TOP, ``factor`` times compressed above it."""
    y = np.asarray(y, float)
    return np.where(y <= Y_TOP, y, Y_TOP + (y - Y_TOP) / factor)


def _unsqueeze(t, factor: float):
    t = np.asarray(t, float)
    return np.where(t <= Y_TOP, t, Y_TOP + (t - Y_TOP) * factor)


def _fit_y(ax, means: Sequence[float]) -> float:
    """0..Y_TOP linear; a mean above it (claim d's long_context curves) gets a compressed band on top, so every
    plotted mean is on the axis and 0..Y_TOP keeps most of the height. Returns the band's factor (1: none)."""
    from matplotlib.ticker import MaxNLocator

    high = max([Y_TOP, *(m for m in means if math.isfinite(m))])
    if high <= Y_TOP:
        ax.set_ylim(0, Y_TOP)
        return 1.0
    top = Y_TOP + 1.05 * (high - Y_TOP)
    factor = max(1.0, (top - Y_TOP) / ABOVE)
    ax.set_yscale("function", functions=(partial(_squeeze, factor=factor), partial(_unsqueeze, factor=factor)))
    ax.set_ylim(0, top)
    above = [t for t in MaxNLocator(nbins=3).tick_values(Y_TOP, top) if Y_TOP + 0.15 * factor < t <= top]
    ax.set_yticks([*np.arange(0, Y_TOP + 1e-9, 0.2), *above])  # no tick crowding Y_TOP's label
    if factor > 1:  # a break only where the scale changes
        ax.axhline(Y_TOP, color="grey", linewidth=0.6, linestyle=(0, (1, 2)))
        ax.text(0.995, Y_TOP, f"scale above: ÷{factor:.2g}", transform=ax.get_yaxis_transform(), ha="right",
                va="bottom", fontsize=6, color="grey")
    return factor


def _in_and_past_training(cell: Any, ks: Sequence[int]) -> np.ndarray:
    """The standard prompts' error where they reach, then long_context's past the training length (claim d): a
    long prompt changes a ÷ L kernel's output at every k, so long_context is not drawn where standard exists."""
    standard = np.array([cell.mean("none", "standard", None, "transformer", k) for k in ks])
    if "long_context/" not in cell.meta["quants"]["none"]["means"]:
        return standard
    long = np.array([cell.mean("none", "long_context", None, "transformer", k) for k in ks])
    return np.where(np.isnan(standard), long, standard)


def _attns(study: Study) -> list[str]:
    """The variants drawn: the grid's (the seed study's three kernels, a preset's mixers)."""
    return list(study.cfg["grid"].get("attns") or ATTNS)


def _seed_list(by_attn: dict[str, list[int]]) -> str:
    """{variant: [seed, …]} → "relu seed 1, 2; relu_causal seed 0", or "none"."""
    return "; ".join(f"{attn} seed {', '.join(map(str, seeds))}" for attn, seeds in by_attn.items() if seeds) or "none"


def _expected_seeds(study: Study, arm: str, task: str) -> list[int]:
    spec = (study.cfg["grid"].get("tasks") or {}).get(task) or {}
    return list(range(int(spec["seeds"]))) if "seeds" in spec else study.seeds(arm, task)


def _seed_notes(study: Study, arm: str, task: str) -> tuple[str, str]:
    """(the seeds that did not learn, the grid's seeds not committed), per variant, as caption phrases."""
    failed, missing = {}, {}
    for attn in _attns(study):
        cells = {sd: study.cell(arm, task, attn, sd) for sd in _expected_seeds(study, arm, task)}
        failed[attn] = [sd for sd, c in cells.items() if c is not None and not study.learned(c)[0]]
        missing[attn] = [sd for sd, c in cells.items() if c is None]
    return _seed_list(failed), _seed_list(missing)


def error_vs_k(study: Study, arm: str, task: str, out: Path) -> Figure | None:
    drawn = _draw_error_vs_k(study, arm, task)
    if drawn is None:
        return None
    fig, factor, baselines, long_context = drawn
    path = _save(fig, out / f"error_vs_k_{arm}_{task}.png")
    failed, missing = _seed_notes(study, arm, task)
    band = (f"Above {Y_TOP:g} (dotted line) the y scale is compressed ÷{factor:.2g}: a unit of height there is "
            f"{factor:.2g} units of error, so every plotted mean fits.")
    ks = sorted({study.guard_k(c) for c in study.cells.values() if c.meta["arm"] == arm and c.meta["task"] == task})
    what = (f"{task}, {arm} arm: normalised squared error (÷ the zero estimator's, dash-dot at 1) vs k, per variant "
            f"each seed faint and the mean with its {study.ci:.0%} t-interval band over the seeds that learned")
    caption = (f"*{what}; dotted grey: {', '.join(baselines) or 'no baseline'}; vertical line: the last training k"
               + (" (right of it: long_context prompts)" if long_context else "")
               + f". The guard reads k = {', '.join(map(str, ks))}. Did not learn (dashed ×, outside the band): "
               f"{failed}. Not committed: {missing}." + (f" {band}" if factor > 1 else "") + "*")
    return Figure(path, caption, f"*{what}. Did not learn: {failed}." + (f" {band}" if factor > 1 else "") + "*")


def draw_error_vs_k(study: Study, arm: str, task: str):
    """The error-vs-k figure of one arm × task (None when it has no cell), not yet saved."""
    drawn = _draw_error_vs_k(study, arm, task)
    return None if drawn is None else drawn[0]


def _draw_error_vs_k(study: Study, arm: str, task: str):
    """(figure, its compressed band's factor, the baselines drawn, whether long_context prompts are drawn), or None
    when the arm × task has no cell."""
    import matplotlib.pyplot as plt

    seeds = study.seeds(arm, task)
    cells = [c for sd in seeds for a in _attns(study) if (c := study.cell(arm, task, a, sd)) is not None]
    if not cells:
        return None
    k_max = max(int(c.meta["n_positions"]) - 1 for c in cells)
    ks = list(range(k_max + 1))
    fig, ax = plt.subplots(figsize=(WIDTH, 3.2))
    plotted: list[float] = []
    for attn in _attns(study):
        curves = []
        for sd in seeds:
            c = study.cell(arm, task, attn, sd)
            if c is not None:
                curves.append((_in_and_past_training(c, ks), study.learned(c)[0]))
        if curves:
            plotted += _band(ax, ks, curves, attn_color(attn), attn, study.ci)
    ref, baselines = cells[0], []
    for name in study.guard.baselines.get(task, ()):
        y = [ref.mean("none", "standard", None, name, k) for k in ks]
        if not all(math.isnan(v) for v in y):
            ax.plot(ks, y, color="grey", linewidth=1, linestyle=":", label=name)
            plotted += y
            baselines.append(name)
    ax.axhline(1.0, color="black", linewidth=0.7, linestyle="-.", label="zero estimator")
    ax.axvline(int(ref.meta["k_train"]) + 0.5, color="black", linewidth=0.6)
    factor = _fit_y(ax, plotted)
    long_context = k_max > int(ref.meta["k_train"])
    ax.set(xlabel="k (in-context examples)", ylabel="normalised squared error",
           title=f"{task}, {arm} arm: each seed faint (dashed ×: did not learn), band: {study.ci:.0%} t-interval"
                 + ("; right of the line: long_context prompts" if long_context else ""))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, frameon=False, ncol=2)
    return fig, factor, baselines, long_context


def _marks(study: Study, cell: Any) -> str:
    """A seed's legend marks: × did not learn, ↘ still improving, ↗ loss rose, (no curve) or (curve too short):
    convergence unknown."""
    conv = study.convergence(cell)
    return ("" if study.learned(cell)[0] else " ×") + (" ↘" if conv.improving else "") + \
        (" ↗" if conv.rose else "") + ("" if conv.known else f" ({conv.flags[0]})")


def _flags(study: Study, arm: str, task: str, attn: str) -> list[str]:
    """One variant's convergence flags by seed, e.g. ["loss rose: seed 0, 2"]."""
    cells = [c for sd in study.seeds(arm, task) if (c := study.cell(arm, task, attn, sd)) is not None]
    return convergence_flags([(int(c.meta["seed"]), study.convergence(c).flags) for c in cells])


def training_curves(study: Study, arm: str, task: str, out: Path) -> Figure | None:
    import matplotlib.pyplot as plt

    seeds = study.seeds(arm, task)
    if not seeds:
        return None
    attns = _attns(study)
    fig, axes = plt.subplots(1, len(attns), figsize=(WIDTH, 2.4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, attn in zip(axes, attns):
        for sd in seeds:
            c = study.cell(arm, task, attn, sd)
            if c is None:
                continue
            curve = c.curve()
            ax.plot(curve["step"], curve["loss_rel_zero"], color=attn_color(attn), linewidth=0.9,
                    linestyle="-" if study.learned(c)[0] else "--", alpha=0.8, label=f"s{sd}{_marks(study, c)}")
        ax.set_title(attn, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, frameon=False)
    axes[0].set_ylabel("train loss ÷ zero (log)", fontsize=7)
    for ax in axes:
        ax.set_yscale("log")  # the last factor of 2 in the loss is where models differ
    fig.suptitle(f"training curves, {task}, {arm} arm (×: did not learn, ↘: still improving, ↗: loss rose)",
                 fontsize=8, y=1.02)
    fig.tight_layout()
    path = _save(fig, out / f"curves_{arm}_{task}.png")
    failed, missing = _seed_notes(study, arm, task)
    flags = "; ".join(f"{attn}, {phrase}" for attn in attns for phrase in _flags(study, arm, task, attn))
    what = f"{task}, {arm} arm: training loss ÷ the zero estimator's (log scale) vs step, one panel per variant"
    caption = (f"*{what}, one line per seed. Did not learn (dashed, ×): {failed}. Convergence flags (↘ still "
               f"improving, ↗ loss rose after its minimum; no curve or curve too short: convergence unknown): "
               f"{flags or 'none, every seed converged'}. Not committed: {missing}.*")
    return Figure(path, caption, f"*{what}.*")


def figures(study: Study, out: Path) -> list[Figure]:
    out.mkdir(parents=True, exist_ok=True)
    tasks = sorted({c.meta["task"] for c in study.cells.values()})
    written = []
    for arm in study.arms:
        for task in tasks:
            written += [p for p in (error_vs_k(study, arm, task, out), training_curves(study, arm, task, out)) if p]
    return written
