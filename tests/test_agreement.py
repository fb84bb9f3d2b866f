"""icl.agreement and icl.readout: closed-form checks with models whose algorithm is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from icl import agreement, learners, readout, weight_shift
from icl.prompts import make_prompts
from icl.tasks import build_task
from icl.transformer import ICLTransformer, TransformerConfig


class LinearLearnerModel(nn.Module):
    """A 'model' that is a linear learner: the prediction at position i is w_L(prefix < i) · x_i, differentiable in
    the query (so its input sensitivity is exactly w_L)."""

    def __init__(self, weights) -> None:
        super().__init__()
        self.weights = weights
        self.dummy = nn.Parameter(torch.zeros(()))  # a parameter, so the model has a device

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        w = self.weights(xs.detach().double(), ys.detach().double()).to(xs.dtype)
        return (w * xs).sum(-1)


CFG = agreement.AlgorithmsConfig(n_prompts=24, learners=("least_squares", "ridge", "gd_1step_opt", "knn_3"),
                                 probes=12, readout=False)


def _prompts(n_prompts: int = 24, d: int = 5, n: int = 11):
    task = build_task("linear", d)
    return task, make_prompts("standard", task, n_prompts, n, seed=0)


def _metric(df, metric: str, learner: str) -> np.ndarray:
    rows = df[(df.metric == metric) & (df.learner == learner)].sort_values("k")
    return rows.value.to_numpy()


def test_least_squares_model_agrees_with_ols_exactly() -> None:
    task, p = _prompts()
    df = agreement.agreement(LinearLearnerModel(learners.ols_weights), task, p.xs, p.ys, p.targets, CFG, boot=20)
    assert np.nanmax(_metric(df, "pred_diff", "least_squares")) < 1e-10
    assert np.nanmax(_metric(df, "weight_dist", "least_squares")[1:]) < 1e-8  # implicit weights = OLS's
    np.testing.assert_allclose(_metric(df, "sensitivity_cos", "least_squares")[1:], 1.0, atol=1e-6)
    np.testing.assert_allclose(_metric(df, "implicit_fit_r2", "transformer")[1:], 1.0, atol=1e-8)
    np.testing.assert_allclose(_metric(df, "icl_regression_score", "least_squares"), 1.0, atol=1e-6)
    # and it disagrees with learners that are not least squares, at k where they differ
    assert _metric(df, "pred_diff", "gd_1step_opt")[3:].min() > 1e-3
    assert _metric(df, "weight_dist", "gd_1step_opt")[3:].min() > 1e-2
    assert _metric(df, "pred_diff", "knn_3")[3:].min() > 1e-3


def test_one_step_gd_model_is_closest_to_one_step_gd() -> None:
    task, p = _prompts()
    df = agreement.agreement(LinearLearnerModel(learners.one_step_gd_opt_weights), task, p.xs, p.ys, p.targets, CFG,
                             boot=20)
    assert np.nanmax(_metric(df, "pred_diff", "gd_1step_opt")) < 1e-10
    assert np.nanmax(_metric(df, "weight_dist", "gd_1step_opt")[1:]) < 1e-8
    score = _metric(df, "icl_regression_score", "least_squares")[0]
    assert 0 < score < 1  # one GD step is worse than least squares on noiseless linear prompts


def test_implicit_weights_need_enough_probes() -> None:
    task, p = _prompts()
    with pytest.raises(ValueError, match="probes must be >= d \\+ 1"):
        agreement.implicit_weights(LinearLearnerModel(learners.ols_weights), p.xs, p.ys,
                                   agreement.probe_queries(24, 11, 5, 3, 0))


def test_config_checks_names_and_keys() -> None:
    good = {"n_prompts": 8, "learners": ["least_squares"], "probes": 8, "readout": True}
    assert agreement.AlgorithmsConfig.from_config(good).learners == ("least_squares",)
    with pytest.raises(ValueError, match="unknown eval.algorithms"):
        agreement.AlgorithmsConfig.from_config({**good, "prob": 3})
    with pytest.raises(ValueError, match="baseline"):
        agreement.AlgorithmsConfig.from_config({**good, "learners": ["newton"]})


def _small_model() -> ICLTransformer:
    torch.manual_seed(0)
    model = ICLTransformer(TransformerConfig(n_dims=5, n_positions=11, n_embd=32, n_layer=2, n_head=2))
    for param in model.parameters():  # larger than GPT-2's init, so each block visibly changes the stream
        nn.init.normal_(param, std=0.2)
    return model.eval()


def test_last_layer_readout_is_the_model_output() -> None:
    _, p = _prompts(n_prompts=8)
    model = _small_model()
    layers = readout.layer_readouts(model, p.xs, p.ys)
    assert layers.shape == (3, 8, 11)
    with torch.no_grad():
        torch.testing.assert_close(layers[-1], model(p.xs, p.ys), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(layers[0], layers[-1])


def test_readout_recalibration_is_the_least_squares_affine_fit() -> None:
    g = torch.Generator().manual_seed(0)
    r = torch.randn(2, 50, 4, generator=g)
    t = 3 * r[1] - 2  # layer 1 is an affine map of the target; layer 0 is unrelated to it
    out = readout.recalibrate(r, t, r)
    torch.testing.assert_close(out[1], t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0].mean(0), t.mean(0), rtol=1e-4, atol=1e-4)  # no signal: predicts the mean


def test_evaluate_algorithms_writes_tidy_rows_with_readout() -> None:
    task = build_task("linear", 5)
    cfg = agreement.AlgorithmsConfig(n_prompts=8, learners=("least_squares", "gd_3"), probes=6, readout=True)
    df = agreement.evaluate_algorithms(_small_model(), task, cfg, 11, 0, {"task": "linear", "attn": "softmax",
                                       "quant": "none", "model": "tiny", "seed": 0}, boot=10)
    assert list(df.columns) == agreement.COLUMNS
    assert set(df.metric) == {"pred_diff", "weight_dist", "sensitivity_cos", "icl_regression_score",
                              "implicit_fit_r2", "readout_error", "readout_error_raw", "readout_gd_diff",
                              *weight_shift.METRICS}  # an ICLTransformer also gets the weight-shifting rows
    assert set(df[df.metric == "readout_gd_diff"].learner) == {"gd_1", "gd_2"}  # layer l vs l GD steps
    last = df[(df.metric == "readout_error_raw") & (df.layer == 2)].value.to_numpy()
    assert np.isfinite(last[1:]).all()


def test_dynamics_frame_scores_each_step_on_the_same_prompts() -> None:
    task, p = _prompts()
    models = [(100, LinearLearnerModel(learners.averaging_weights)), (200, LinearLearnerModel(learners.ols_weights))]
    df = agreement.dynamics_frame(iter(models), task, p.xs, p.ys, boot=10)
    late = df[(df.step == 200) & (df.k >= 6)].error.to_numpy()
    early = df[(df.step == 100) & (df.k >= 6)].error.to_numpy()
    assert (late < 1e-10).all() and (early > 0.1).all()  # least squares is exact at k > d = 5; averaging is not
    assert set(df.k) == set(range(11))


def _autograd_sensitivity(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """∂ŷ_i/∂x_i by autograd, one pass per position (later positions also see x_i and must not add to it)."""
    out = torch.empty(xs.shape)
    for i in range(xs.shape[1]):
        query = xs[:, i : i + 1].clone().requires_grad_(True)
        seq_y = torch.cat([ys[:, :i], torch.zeros_like(ys[:, :1])], 1)
        pred = model(torch.cat([xs[:, :i], query], 1), seq_y)[:, -1]
        out[:, i] = torch.autograd.grad(pred.sum(), query)[0][:, 0]
    return out


def test_difference_sensitivity_matches_autograd_on_a_float_model() -> None:
    _, p = _prompts(n_prompts=8)
    model = _small_model()
    fd, exact = agreement.input_sensitivity_fd(model, p.xs, p.ys), _autograd_sensitivity(model, p.xs, p.ys)
    cos = torch.nn.functional.cosine_similarity(fd[:, 1:], exact[:, 1:], dim=-1)
    assert cos.min() > 0.99, cos.min()


def test_classification_tasks_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="scalar regression task; task linear_classification"):
        agreement.check_task(build_task("linear_classification", 3))



def test_too_few_probes_for_the_dimension_are_refused_in_one_line() -> None:
    cfg = agreement.AlgorithmsConfig(n_prompts=8, learners=("least_squares",), probes=5, readout=False)
    with pytest.raises(ValueError, match="probes must be >= d \\+ 1 = 6"):
        agreement.check_task(build_task("linear", 5), cfg)
    agreement.check_task(build_task("linear", 4), cfg)


@pytest.mark.slow
def test_a_job_with_eval_algorithms_writes_algorithms_and_dynamics(tmp_path, tiny_overrides) -> None:
    from icl.run.train import train
    from tests.helpers import compose_train

    cfg = compose_train([*tiny_overrides, "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=2",
                         "task.num_tasks=4",
                         "eval.algorithms={n_prompts:4,learners:[least_squares,gd_3],probes:6,readout:true,"
                         "dynamics:true}"], tmp_path)
    train(cfg)
    algos = pd.read_csv(tmp_path / "algorithms.csv")
    assert {"pred_diff", "weight_dist", "readout_error", "error_pool_tasks"} <= set(algos.metric)
    assert sorted(pd.read_csv(tmp_path / "dynamics.csv").step.unique()) == [2, 4]
