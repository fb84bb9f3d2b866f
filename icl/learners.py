"""Linear reference learners as weights: what a model that runs least squares, ridge or gradient descent in
context would predict, batched over prompts and prefixes.

Every function maps prompts ``xs`` (B, n, d), ``ys`` (B, n) (float64) to weights (B, n, d): row i is fitted on the
prefix ``(xs[:, :i], ys[:, :i])`` only (row 0, the empty prefix, is zero), so the prediction at position i is
``weights[:, i] · x_query`` and its input sensitivity ∂ŷ/∂x_query is the weight vector itself
(``icl.agreement`` compares models with these learners on both).

Gradient descent runs on the empirical loss L(w) = ‖Xw − y‖² / (2i) (+ λ‖w‖²/2), from w = 0, with a
preconditioner P (identity or Jacobi, diag(Σ̂)⁻¹): w ← w − η P ∇L. With Σ̂ = XᵀX / i, b = Xᵀy / i, and
u = P^{-1/2} w this is plain GD on Ĝ = P^{1/2}(Σ̂ + λI)P^{1/2}, so T steps are, in Ĝ's eigenbasis (λ_j),
u_T = Σ_j (1 − (1 − ηλ_j)^T) / λ_j · (v_j · P^{1/2} b) v_j — every T at the cost of one eigendecomposition.
Step size η = 1/λ_max(Ĝ) per prompt and prefix (the largest step that never overshoots an eigendirection), so
GD converges to the (P⁻¹-weighted minimum-norm) least-squares solution as T → ∞, or to ridge with λ.

One step from zero with the step size that is optimal under the prior (x ~ N(0, I_d), w ~ N(0, I_d), label noise
σ²): E‖(I − ηΣ̂)w‖² + η²σ² tr Σ̂ / i is minimised by η* = i / (i + d + 1 + σ²) (E tr Σ̂² = d(i + d + 1)/i for a
Wishart Σ̂), giving w = Xᵀy / (i + d + 1 + σ²) — the predictor one linear-attention layer can implement
(von Oswald et al. 2023; Ahn et al. 2023).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from icl.solvers import prefix_grams


def _moments(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Σ̂ = XᵀX / i, b = Xᵀy / i of every prefix and the prefix sizes i (B, n, d, d), (B, n, d), (n,)."""
    gram, b, _ = prefix_grams(xs, ys)
    count = torch.arange(xs.shape[1], dtype=xs.dtype)
    scale = 1.0 / count.clamp(min=1)
    return gram * scale[:, None, None], b * scale[:, None], count


def ols_weights(xs: Tensor, ys: Tensor) -> Tensor:
    """Minimum-norm least squares pinv(X) y of every prefix."""
    gram, b, _ = prefix_grams(xs, ys)
    return (torch.linalg.pinv(gram, hermitian=True) @ b.unsqueeze(-1)).squeeze(-1)


def ridge_weights(xs: Tensor, ys: Tensor, lam: float) -> Tensor:
    """(XᵀX + λI)⁻¹ Xᵀy of every prefix (λ > 0: the posterior mean for w ~ N(0, I) and noise variance λ)."""
    if lam <= 0:
        raise ValueError(f"ridge λ must be > 0, got {lam} (λ = 0 is ols_weights)")
    gram, b, _ = prefix_grams(xs, ys)
    eye = torch.eye(xs.shape[-1], dtype=xs.dtype)
    return torch.linalg.solve(gram + lam * eye, b.unsqueeze(-1)).squeeze(-1)


def one_step_gd_opt_weights(xs: Tensor, ys: Tensor, noise_var: float = 0.0) -> Tensor:
    """One GD step from zero with the prior-optimal step: Xᵀy / (i + d + 1 + σ²) (module docstring)."""
    _, b, count = _moments(xs, ys)
    eta = count / (count + xs.shape[-1] + 1 + noise_var)
    return b * eta[:, None]


def one_step_gd_weights(xs: Tensor, ys: Tensor, eta: float) -> Tensor:
    """One GD step from zero with a fixed step η on the summed loss ½Σ_j (w·x_j − y_j)²: η Xᵀy — the update of von
    Oswald et al.'s linear self-attention construction (``averaging`` is η = 1/k, ``gd_1step_opt`` η = 1/(k+d+1))."""
    return eta * prefix_grams(xs, ys)[1]


def gd_weights(xs: Tensor, ys: Tensor, steps: int, precondition: str = "none", lam: float = 0.0) -> Tensor:
    """``steps`` GD steps from zero on ‖Xw − y‖²/(2i) + λ‖w‖²/2 with η = 1/λ_max, ``precondition``: none | jacobi."""
    if steps < 0:
        raise ValueError(f"GD steps must be >= 0, got {steps}")
    sigma, b, _ = _moments(xs, ys)
    d = xs.shape[-1]
    sigma = sigma + lam * torch.eye(d, dtype=xs.dtype)
    if precondition == "none":
        root = torch.ones_like(b)
    elif precondition == "jacobi":  # P = diag(Σ̂)⁻¹; an all-zero input coordinate keeps P = 1 there
        diag = torch.diagonal(sigma, dim1=-2, dim2=-1)
        root = torch.where(diag > 0, diag.clamp(min=1e-300).rsqrt(), torch.ones_like(diag))
    else:
        raise ValueError(f"unknown GD preconditioner {precondition!r}; choose from: none, jacobi")
    g_hat = root.unsqueeze(-1) * sigma * root.unsqueeze(-2)  # P^{1/2} Σ̂ P^{1/2}
    evals, evecs = torch.linalg.eigh(g_hat)
    evals = evals.clamp(min=0.0)
    top = evals[..., -1:]
    eta = torch.where(top > 0, 1.0 / top.clamp(min=1e-300), torch.zeros_like(top))
    decay = (1.0 - eta * evals).clamp(min=0.0, max=1.0) ** steps
    tiny = evals <= 1e-12 * top.clamp(min=1e-300)
    gain = torch.where(tiny, steps * eta, (1.0 - decay) / evals.clamp(min=1e-300))  # λ → 0 limit: T·η
    coef = gain * (evecs.transpose(-1, -2) @ (root * b).unsqueeze(-1)).squeeze(-1)
    return root * (evecs @ coef.unsqueeze(-1)).squeeze(-1)


def averaging_weights(xs: Tensor, ys: Tensor) -> Tensor:
    """(1/i) Σ y_j x_j: one GD step from zero with η = 1 (the ``averaging`` baseline)."""
    return _moments(xs, ys)[1]


# learner name -> weights function (float64 xs, ys -> (B, n, d)); the baselines of the same name predict w · x_query
GD_STEPS = (1, 2, 3, 5, 10, 100)
RIDGE_LAMBDAS = ("0.01", "0.1", "10")


def linear_learners() -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """Every linear learner by its baseline name (``icl.baselines``): name -> (xs, ys) -> weights (B, n, d)."""
    out: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "least_squares": ols_weights,
        "ridge": lambda xs, ys: ridge_weights(xs, ys, 1.0),
        "averaging": averaging_weights,
        "gd_1step_opt": one_step_gd_opt_weights,
    }
    for lam in RIDGE_LAMBDAS:
        out[f"ridge_{lam}"] = lambda xs, ys, lam=float(lam): ridge_weights(xs, ys, lam)
    for steps in GD_STEPS:
        out[f"gd_{steps}"] = lambda xs, ys, steps=steps: gd_weights(xs, ys, steps)
        out[f"pgd_{steps}"] = lambda xs, ys, steps=steps: gd_weights(xs, ys, steps, "jacobi")
    return out


def predict_linear(weights: Callable[[Tensor, Tensor], Tensor], xs: Tensor, ys: Tensor, qs: Tensor) -> Tensor:
    """Predictions (B, n) of a linear learner at the queries ``qs`` (B, n, d)."""
    return (weights(xs, ys) * qs).sum(-1)
