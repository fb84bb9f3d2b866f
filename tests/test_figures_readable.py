"""Figures a reader can read: seed spread drawn (each seed faint, the band between seeds), log y where errors span
decades, widths that fit a README."""

import numpy as np
import pandas as pd
import pytest

from icl.analysis import figures as F


def rows(errors_by_seed: dict[int, list[float]], ks=(1, 2, 3, 4), baseline: list[float] | None = None) -> pd.DataFrame:
    out = []
    for seed, errors in errors_by_seed.items():
        for k, e in zip(ks, errors):
            out.append({"task": "linear", "n_dims": 2, "strategy": "standard", "param": np.nan, "variant": "tiny · softmax",
                        "attn": "softmax", "quant": "none", "k": k, "kind": "transformer", "predictor": "transformer",
                        "error": e, "ci_low": e * 0.9, "ci_high": e * 1.1, "run_dir": f"job{seed}", "metric": "squared_error"})
    for k, e in zip(ks, baseline or []):
        out.append({"task": "linear", "n_dims": 2, "strategy": "standard", "param": np.nan, "variant": "least_squares",
                    "attn": "", "quant": "", "k": k, "kind": "baseline", "predictor": "least_squares", "error": e,
                    "ci_low": e, "ci_high": e, "run_dir": "job0", "metric": "squared_error"})
    return pd.DataFrame(out)


def draw(df: pd.DataFrame):
    tf, bl, seeds = F.aggregate_transformers(df), F.aggregate_baselines(df), F.seed_curves(df)
    return F.plot_error_vs_k("linear", "standard", tf, bl, "squared_error", seeds), tf


def test_several_seeds_band_is_their_spread_and_each_seed_is_drawn():
    df = rows({0: [0.9, 0.5, 0.3, 0.2], 1: [0.8, 0.6, 0.2, 0.1], 2: [1.0, 0.4, 0.4, 0.3]})
    fig, tf = draw(df)
    tf = tf.sort_values("k")
    assert tf["error"].tolist() == pytest.approx([0.9, 0.5, 0.3, 0.2])
    assert tf["band_low"].tolist() == pytest.approx([0.8, 0.4, 0.2, 0.1])  # the lowest seed, not a mean CI
    assert tf["band_high"].tolist() == pytest.approx([1.0, 0.6, 0.4, 0.3])
    assert tf["ci_low"].tolist() == pytest.approx([0.81, 0.45, 0.27, 0.18])  # tables keep the mean of the seeds' CIs
    ax = fig.axes[0]
    faint = [line for line in ax.lines if line.get_alpha() is not None and line.get_alpha() < 1]
    assert len(faint) == 3 and sorted(tuple(line.get_ydata()) for line in faint) == sorted(
        tuple(df[df.run_dir == r].sort_values("k")["error"]) for r in ("job0", "job1", "job2"))
    assert ax.get_yscale() == "linear"


def test_one_seed_band_is_its_ci_and_errors_spanning_decades_get_a_log_axis():
    fig, tf = draw(rows({0: [1.0, 0.1, 0.01, 0.001]}, baseline=[1.0, 0.5, 0.2, 0.1]))
    assert tf.sort_values("k")["band_low"].tolist() == pytest.approx([0.9, 0.09, 0.009, 0.0009])
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] < 0.001
    assert not [line for line in ax.lines if line.get_alpha() is not None and line.get_alpha() < 1]


def test_a_wide_grid_wraps_to_three_panels_a_row():
    df = pd.concat([rows({0: [0.9, 0.5, 0.3, 0.2]}).assign(param=p, strategy="scale_x") for p in (0.5, 1, 2, 4, 8)])
    tf, bl = F.aggregate_transformers(df), F.aggregate_baselines(df)
    fig = F.plot_error_vs_scale("linear", "scale_x", tf, bl, "squared_error", ks=(1, 2, 3, 4, 5))
    width_px = fig.get_size_inches()[0] * 150  # _save's dpi
    assert width_px <= 1700 and len([a for a in fig.axes if a.get_visible()]) == 4
