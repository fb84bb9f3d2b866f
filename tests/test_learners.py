"""icl.learners: every linear reference learner against its closed form or a naive loop."""

from __future__ import annotations

import pytest
import torch

from icl import baselines, learners


def _prompts(batch: int = 6, n: int = 12, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(batch, n, d, generator=g, dtype=torch.float64)
    w = torch.randn(batch, d, generator=g, dtype=torch.float64)
    return xs, torch.einsum("bnd,bd->bn", xs, w) + 0.1 * torch.randn(batch, n, generator=g, dtype=torch.float64)


def _gd_loop(X: torch.Tensor, y: torch.Tensor, steps: int, precondition: str, lam: float) -> torch.Tensor:
    """Plain GD on one prefix, step by step: w ← w − η P (Σ̂w − b + λw), η = 1/λ_max(P^½(Σ̂+λI)P^½)."""
    i, d = X.shape
    sigma = X.T @ X / i + lam * torch.eye(d, dtype=X.dtype)
    b = X.T @ y / i
    p = torch.diag(1 / torch.diagonal(sigma)) if precondition == "jacobi" else torch.eye(d, dtype=X.dtype)
    eta = 1 / torch.linalg.eigvalsh(p.sqrt() @ sigma @ p.sqrt()).max()
    w = torch.zeros(d, dtype=X.dtype)
    for _ in range(steps):
        w = w - eta * p @ (sigma @ w - b)
    return w


@pytest.mark.parametrize("precondition,lam", [("none", 0.0), ("jacobi", 0.0), ("none", 0.5), ("jacobi", 0.3)])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_gd_equals_the_step_by_step_loop(steps: int, precondition: str, lam: float) -> None:
    xs, ys = _prompts()
    fast = learners.gd_weights(xs, ys, steps, precondition, lam)
    assert torch.equal(fast[:, 0], torch.zeros_like(fast[:, 0]))
    for b in range(xs.shape[0]):
        for i in range(1, xs.shape[1]):
            ref = _gd_loop(xs[b, :i], ys[b, :i], steps, precondition, lam)
            torch.testing.assert_close(fast[b, i], ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("precondition", ["none", "jacobi"])
def test_gd_to_convergence_is_least_squares_on_full_rank_prefixes(precondition: str) -> None:
    xs, ys = _prompts(n=16, d=4)
    w = learners.gd_weights(xs, ys, 10**6, precondition)
    torch.testing.assert_close(w[:, 5:], learners.ols_weights(xs, ys)[:, 5:], rtol=1e-7, atol=1e-7)


def test_plain_gd_from_zero_converges_to_the_minimum_norm_solution_when_k_below_d() -> None:
    xs, ys = _prompts(n=6, d=8)
    torch.testing.assert_close(learners.gd_weights(xs, ys, 10**7), learners.ols_weights(xs, ys), rtol=1e-6, atol=1e-6)


def test_gd_on_the_ridge_loss_converges_to_ridge() -> None:
    xs, ys = _prompts()
    lam = 0.2
    w = learners.gd_weights(xs, ys, 10**5, lam=lam)
    for i in range(1, xs.shape[1]):  # ‖Xw − y‖²/(2i) + λ‖w‖²/2 is ridge with λ·i on XᵀX
        torch.testing.assert_close(w[:, i], learners.ridge_weights(xs, ys, lam * i)[:, i], rtol=1e-8, atol=1e-8)


def test_one_gd_step_from_zero_is_eta_times_xty_over_i() -> None:
    xs, ys = _prompts()
    d = xs.shape[-1]
    for i in range(1, xs.shape[1]):
        xty = torch.einsum("bnd,bn->bd", xs[:, :i], ys[:, :i])
        torch.testing.assert_close(learners.one_step_gd_opt_weights(xs, ys)[:, i], xty / (i + d + 1))
        torch.testing.assert_close(learners.averaging_weights(xs, ys)[:, i], xty / i)
        torch.testing.assert_close(learners.one_step_gd_weights(xs, ys, 0.3)[:, i], 0.3 * xty)


def test_the_prior_optimal_step_beats_smaller_and_larger_steps() -> None:
    g = torch.Generator().manual_seed(1)
    B, n, d = 20000, 9, 5
    xs = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    w = torch.randn(B, d, generator=g, dtype=torch.float64)
    ys = torch.einsum("bnd,bd->bn", xs, w)
    w_opt = learners.one_step_gd_opt_weights(xs, ys)
    risk = lambda c: ((c * w_opt[:, 1:] - w.unsqueeze(1)) ** 2).sum(-1).mean(0)  # E‖ŵ − w‖² per k = test MSE
    assert (risk(1.0) < risk(0.8)).all() and (risk(1.0) < risk(1.25)).all()


def test_linear_learner_baselines_predict_w_dot_query() -> None:
    xs, ys = _prompts()
    for name, weights in learners.linear_learners().items():
        expected = (weights(xs, ys) * xs).sum(-1).float()
        expected[:, 0] = 0.0
        torch.testing.assert_close(baselines.predict(name, xs, ys), expected, rtol=1e-5, atol=1e-5, msg=name)


def test_bad_options_fail_in_one_line() -> None:
    xs, ys = _prompts()
    with pytest.raises(ValueError, match="preconditioner"):
        learners.gd_weights(xs, ys, 1, "newton")
    with pytest.raises(ValueError, match="ridge"):
        learners.ridge_weights(xs, ys, 0.0)
