"""The study's error-vs-k figure: its y axis covers every plotted mean (claim d's long_context curves reach far above
the zero estimator) while the range where models learn keeps most of the height."""

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from icl.lab.study.claims import Study
from icl.lab.study.compact import CELL_JSON, CURVE, ERRORS, load_cells
from icl.lab.study.figures import Y_TOP, draw_error_vs_k
from icl.run.configs import CONFIG_DIR

K_TRAIN, N_POSITIONS = 10, 28


def write_cell(root: Path, attn: str, seed: int, past_training: float) -> None:
    """A linear float cell that learned (0.05 at k = 2d) and scores ``past_training`` on long prompts past k_train."""
    out = root / f"tuned-linear-{attn}-seed{seed}"
    out.mkdir(parents=True)
    learning = list(np.linspace(1.0, 0.05, K_TRAIN + 1))
    long = learning + [past_training + 0.1 * seed] * (N_POSITIONS - K_TRAIN - 1)
    means = {"standard/": {"transformer": learning, "least_squares": [1.0] * 5 + [0.0] * (K_TRAIN - 4)},
             "long_context/": {"transformer": long}}
    np.savez_compressed(out / ERRORS, **{"none/standard//transformer/k10": np.ones(4)})
    (out / CURVE).write_text("step,loss_rel_zero\n0,1.0\n100,0.1\n")
    (out / CELL_JSON).write_text(json.dumps({
        "cell": out.name, "arm": "tuned", "task": "linear", "attn": attn, "seed": seed, "fingerprint": "x",
        "n_dims": 5, "k_train": K_TRAIN, "n_positions": N_POSITIONS, "steps": 100, "model": "tiny",
        "recipe": {"lr": 1e-3, "qk_norm": False, "gradient_clip_val": None, "warmup_steps": 10, "batch": 64},
        "n_prompts": 4, "quants": {"none": {"means": means}}, "versions": {}}))


def study_of(root: Path, past: dict[str, float]) -> Study:
    for attn, level in past.items():
        for seed in range(3):
            write_cell(root, attn, seed, level)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("study", overrides=[f"cells={root}"]), resolve=True)
    return Study(load_cells(root), cfg)


def plotted_means(ax) -> np.ndarray:
    """The y values of every seed-level mean line (the bands' centres, labelled 'n/m learned')."""
    lines = [line for line in ax.lines if "learned)" in str(line.get_label()) and len(line.get_ydata())]
    assert lines
    return np.concatenate([np.asarray(line.get_ydata(), float) for line in lines])


@pytest.mark.parametrize("relu_past", [2.5, 12.0])
def test_the_axis_covers_every_plotted_mean_and_keeps_the_learning_range_readable(tmp_path, relu_past):
    study = study_of(tmp_path / "cells", {"softmax": 0.8, "relu": relu_past, "relu_causal": 0.3})
    ax = draw_error_vs_k(study, "tuned", "linear").axes[0]
    low, high = ax.get_ylim()
    means = plotted_means(ax)
    assert means.max() >= relu_past and low <= means.min() and means.max() <= high
    # where models learn (0 … Y_TOP) keeps most of the height, however far the long prompts go
    y_top = ax.transAxes.inverted().transform(ax.transData.transform((0, Y_TOP)))[1]
    assert y_top >= 0.65


def test_an_axis_whose_means_fit_keeps_the_fixed_range(tmp_path):
    study = study_of(tmp_path / "cells", {"softmax": 0.8, "relu": 1.2, "relu_causal": 0.3})
    ax = draw_error_vs_k(study, "tuned", "linear").axes[0]
    assert ax.get_ylim() == (0, Y_TOP) and ax.get_yscale() == "linear"
    assert plotted_means(ax).max() <= Y_TOP


def test_captions_say_what_a_compressed_band_means_and_which_seeds_lack_a_curve(tmp_path):
    from icl.lab.study.figures import figures
    from icl.lab.study.report import update_readme

    study = study_of(tmp_path / "cells", {"softmax": 0.8, "relu": 12.0, "relu_causal": 0.3})
    drawn = {f.path.name: f for f in figures(study, tmp_path / "out")}
    vs_k, curves = drawn["error_vs_k_tuned_linear.png"], drawn["curves_tuned_linear.png"]
    # the factor the caption names is the one written on the axis
    (label,) = [t.get_text() for t in draw_error_vs_k(study, "tuned", "linear").axes[0].texts]
    factor = label.split("÷", 1)[1]
    assert f"Above {Y_TOP:g} (dotted line) the y scale is compressed ÷{factor}: a unit of height there is {factor} " \
           "units of error" in vs_k.caption
    assert "The guard reads k = 10." in vs_k.caption and "dotted grey: least_squares" in vs_k.caption
    assert "Not committed: softmax seed 3, 4; relu seed 3, 4; relu_causal seed 3, 4." in vs_k.caption  # 5 in the grid
    # two points per curve: too few for the rules, so every seed's convergence is unknown, never "converged"
    assert all(f"{attn}, no curve: seed 0, 1, 2" in curves.caption for attn in ("softmax", "relu", "relu_causal"))
    # the README block: the figure and its short caption, with the band
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- study:begin -->\n<!-- study:end -->\n")
    update_readme(readme, tmp_path / "out" / "page.md", list(drawn.values()), complete=False)
    block = readme.read_text().split("<!-- study:begin -->", 1)[1]
    assert "![error_vs_k_tuned_linear](out/error_vs_k_tuned_linear.png)\n\n*linear, tuned arm:" in block
    assert f"compressed ÷{factor}" in block and "Did not learn: none." in block
