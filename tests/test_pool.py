"""icl.pool: the discrete-MMSE predictor of a finite task pool against its limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icl import learners, pool
from icl.tasks import PromptSampler, build_task


def test_pool_weights_are_the_functions_training_drew() -> None:
    task = build_task("linear", 4)
    sampler = PromptSampler(task, num_tasks=8, pool_seed=3)
    xs, ys = sampler.sample(32, 6, 4, torch.Generator().manual_seed(0))
    w = pool.pool_weights(task, 8, 3)
    fits = torch.einsum("bnd,md->bmn", xs, w)  # every prompt against every pool function
    assert ((fits - ys.unsqueeze(1)).abs().amax(-1).min(-1).values < 1e-5).all()


def test_posterior_picks_the_right_task_when_the_pool_has_it() -> None:
    task = build_task("linear", 4)
    w = pool.pool_weights(task, 64, 0)
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(10, 8, 4, generator=g)
    ys = xs @ w[17]
    preds = pool.pool_bayes_predict(xs, ys, xs, w)  # noiseless: one example singles the task out
    torch.testing.assert_close(preds[:, 1:], ys[:, 1:], rtol=1e-5, atol=1e-5)
    noisy = ys + 0.5 * torch.randn(ys.shape, generator=g)
    preds = pool.pool_bayes_predict(xs, noisy, xs, w, noise_var=0.25)
    assert ((preds[:, 6:] - ys[:, 6:]) ** 2).mean() < 1e-3 * (ys[:, 6:] ** 2).mean()


def test_posterior_approaches_ridge_as_the_pool_grows() -> None:
    # w ~ N(0, I_2), noise σ² = 1: the Gaussian prior's posterior mean is ridge with λ = 1; a pool of M draws from
    # the prior is a Monte-Carlo version of it. Stated tolerance: normalised squared difference < 2e-3 at M = 2^12
    # (measured 2.9e-4 on these prompts; 0.22 at M = 4).
    task = build_task("noisy_linear", 2, {"noise_std": 1.0})
    g = torch.Generator().manual_seed(2)
    xs = torch.randn(128, 6, 2, generator=g, dtype=torch.float64)
    ys = xs @ torch.randn(2, generator=g, dtype=torch.float64) + torch.randn(128, 6, generator=g, dtype=torch.float64)
    ridge = (learners.ridge_weights(xs, ys, 1.0) * xs).sum(-1)

    def gap(m: int) -> float:
        preds = pool.pool_bayes_predict(xs, ys, xs, pool.pool_weights(task, m, 0).double(), noise_var=1.0)
        return float(((preds.double() - ridge)[:, 1:] ** 2).mean() / (ys[:, 1:] ** 2).mean())

    small, large = gap(4), gap(2**12)
    assert large < 2e-3 and small > 0.05


def test_pool_frame_rows() -> None:
    task = build_task("linear", 3)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(16, 7, 3, generator=g)
    ys = xs @ torch.randn(3, generator=g)
    def ols(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (learners.ols_weights(a.double(), b.double()) * a.double()).sum(-1).float()

    df = pool.pool_frame(ols, task, 4, 0, (xs, ys), 7, 0, boot=10, ci=0.95)
    assert set(df.metric) == {"error_pool_tasks", "error_fresh_tasks"}
    assert set(df.learner) == {"transformer", "pool_bayes", "bayes"}
    on_pool = df[(df.metric == "error_pool_tasks") & (df.k >= 1)].pivot(index="k", columns="learner", values="value")
    assert (on_pool["pool_bayes"] < 1e-8).all()  # noiseless pool of 4: one example identifies the task
    assert np.isclose(on_pool.loc[3:, "transformer"], on_pool.loc[3:, "bayes"], atol=1e-6).all()  # both OLS at k >= d


def test_only_linear_tasks() -> None:
    with pytest.raises(ValueError, match="linear tasks"):
        pool.pool_weights(build_task("relu_2nn", 3), 4, 0)
