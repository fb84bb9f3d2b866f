"""icl.analysis.algorithms: the closest-learner table and figures from synthetic algorithms.csv files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from icl.analysis.algorithms import (
    GAIN_SHARE,
    algorithm_files,
    closest_learner,
    diversity_threshold,
    dynamics_curves,
    first_below,
    load_algorithms,
    plot_dynamics,
    plot_task_diversity,
    pool_curves,
    pool_gain,
)


def _rows(attn: str, seed: int, closest_at_small_k: str) -> pd.DataFrame:
    rows = []
    for k in range(0, 6):
        for learner in ("least_squares", "gd_1step_opt"):
            near = learner == closest_at_small_k if k < 3 else learner == "least_squares"
            rows.append({"task": "linear", "attn": attn, "quant": "none", "model": "tiny", "seed": seed, "n_dims": 2,
                         "k": k, "learner": learner, "metric": "pred_diff", "value": 0.01 if near else 0.2})
        for layer in range(3):
            rows.append({"task": "linear", "attn": attn, "quant": "none", "model": "tiny", "seed": seed, "n_dims": 2,
                         "k": k, "learner": "transformer", "metric": "readout_error", "layer": layer,
                         "value": 1.0 / (layer + 1)})
    return pd.DataFrame(rows)


def test_closest_learner_per_k_averages_seeds() -> None:
    df = pd.concat([_rows("softmax", 0, "gd_1step_opt"), _rows("softmax", 1, "gd_1step_opt"),
                    _rows("relu", 0, "least_squares")])
    table = closest_learner(df).set_index(["attn", "k"])
    assert table.loc[("softmax", 1), "closest"] == "gd_1step_opt"
    assert table.loc[("softmax", 4), "closest"] == "least_squares"
    assert table.loc[("relu", 1), "closest"] == "least_squares"
    assert table.loc[("softmax", 1), "runner_up_pred_diff"] == 0.2
    assert 0 not in table.index.get_level_values("k")  # every learner predicts 0 at k = 0


def test_algorithm_files_from_job_folders(tmp_path: Path) -> None:
    for i, attn in enumerate(("softmax", "relu")):
        job = tmp_path / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text(f"attn: {{name: {attn}}}\n")
        _rows(attn, 0, "gd_1step_opt").to_csv(job / "algorithms.csv", index=False)
    assert len(load_algorithms([tmp_path])) == 2 * len(_rows("softmax", 0, "x"))
    written = algorithm_files([tmp_path], tmp_path / "fig", ("png",))
    assert {p.name for p in written} == {"closest_learner.csv", "closest_learner_linear.png", "readout_linear.png"}
    assert set(pd.read_csv(tmp_path / "fig" / "closest_learner.csv").attn) == {"softmax", "relu"}


def _pool_rows(attn: str, num_tasks: int, model_error: float) -> pd.DataFrame:
    rows = []
    for metric in ("error_pool_tasks", "error_fresh_tasks"):
        fresh = metric == "error_fresh_tasks"
        for learner, value in (("transformer", model_error if fresh else 0.1), ("pool_bayes", 1.0 if fresh else 0.01),
                               ("bayes", 0.2)):
            rows.append({"task": "noisy_linear", "attn": attn, "quant": "none", "model": "tiny", "seed": 0,
                         "n_dims": 2, "num_tasks": num_tasks, "k": 4, "learner": learner, "metric": metric,
                         "value": value, "run_dir": f"{attn}/{num_tasks}"})
    return pd.DataFrame(rows)


def test_diversity_threshold_is_where_the_model_stays_with_the_prior() -> None:
    # softmax: like the pool's predictor (1.0) up to 8 tasks, then like the prior's (0.2); relu never leaves the pool
    errors = {1: 0.95, 2: 0.9, 4: 0.3, 8: 0.7, 16: 0.25, 32: 0.21}  # back towards the pool at 8
    df = pd.concat([_pool_rows("softmax", m, e) for m, e in errors.items()]
                   + [_pool_rows("relu", m, 0.9) for m in errors])
    table = diversity_threshold(pool_curves(df)).set_index("attn")
    assert table.loc["softmax", "threshold_num_tasks"] == 16
    assert pd.isna(table.loc["relu", "threshold_num_tasks"])
    # pool_gain: (fresh − pool error) of the model over that of the pool's predictor (1.0 − 0.01), model pool error 0.1
    gains = pool_gain(pool_curves(df)).set_index(["attn", "num_tasks"]).pool_gain
    assert gains[("softmax", 8)] == pytest.approx((0.7 - 0.1) / 0.99) and gains[("relu", 1)] > GAIN_SHARE
    assert table.loc["softmax", "threshold_by_pool_gain"] == 16 and pd.isna(table.loc["relu", "threshold_by_pool_gain"])
    fig = plot_task_diversity("noisy_linear", pool_curves(df))
    assert len(fig.axes) == 2


def test_first_below_is_the_first_step_under_each_level() -> None:
    rows = []
    for step, error in ((100, 0.9), (200, 0.4), (300, 0.6), (400, 0.05)):
        for k, factor in ((2, 1.0), (4, 2.0)):  # d = 2: k = d and 2d
            rows.append({"task": "linear", "attn": "softmax", "quant": "none", "model": "tiny", "seed": 0,
                         "n_dims": 2, "step": step, "k": k, "error": error * factor})
    rows.append({**rows[0], "k": 3, "error": 0.0})  # k = 3 is neither d nor 2d: ignored
    table = first_below(dynamics_curves(pd.DataFrame(rows))).set_index(["k", "level"])
    assert table.loc[(2, 0.5), "first_step"] == 200 and table.loc[(2, 0.1), "first_step"] == 400
    assert table.loc[(4, 0.5), "first_step"] == 400 and pd.isna(table.loc[(4, 0.1), "first_step"])
    assert len(plot_dynamics("linear", dynamics_curves(pd.DataFrame(rows))).axes) == 2


def test_task_diversity_files_include_the_figures_points(tmp_path: Path) -> None:
    for m in (1, 4):
        job = tmp_path / f"softmax{m}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text("attn: {name: softmax}\n")
        _pool_rows("softmax", m, 0.3).drop(columns="run_dir").to_csv(job / "algorithms.csv", index=False)
    written = {p.name for p in algorithm_files([tmp_path], tmp_path / "fig", ("png",))}
    assert {"task_diversity.csv", "task_diversity_curves.csv", "task_diversity_noisy_linear.png"} <= written
    curves = pd.read_csv(tmp_path / "fig" / "task_diversity_curves.csv")
    assert sorted(curves[curves.learner == "transformer"].num_tasks.unique()) == [1, 4]
