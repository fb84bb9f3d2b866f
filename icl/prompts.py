"""Evaluation prompt strategies: the training distribution and out-of-distribution variants of it.

A strategy maps (task, number of prompts, points, eval seed, parameter) to ``Prompts``, which the transformer and
every baseline are scored on. Every strategy starts from the very same draw as ``standard`` and takes its own
randomness from a separate generator, so ``scale_x`` at c = 1 is ``standard`` prompt for prompt. The strategies
and their parameters: docs/evaluation.md.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from icl.registry import Registry
from icl.tasks import EVAL_STREAM, Params, Task, seeded


@dataclass
class Prompts:
    """One evaluation batch. Position i predicts ``targets[:, i]`` from the prefix and its query."""

    xs: Tensor  # (P, n, d) in-context inputs
    ys: Tensor  # (P, n) in-context labels, as shown to the predictors
    targets: Tensor  # (P, n) the true label of the query at each position
    queries: Tensor | None = None  # (P, n, d) the query at position i when it is not xs[:, i]


Strategy = Callable[[Task, int, int, int, Any], Prompts]
# Metadata per strategy: ``param`` — "positive" (scale factors, > 0), "non_negative" (distance, noise), "points"
# (long_context: a point count or null), None (no parameter); ``regression_only`` — labels ±1 cannot be scaled or
# made Gaussian-noisy; ``queries`` — the query of position i is not xs[:, i].
STRATEGIES: Registry[Strategy] = Registry("eval strategy", "eval.strategies")
register = STRATEGIES.register  # function decorator: make a strategy available as ``eval.strategies.<name>``
SKEW_POWER = 2.0  # skewed eigenvalues λ_i ∝ i^-2


def _base(task: Task, n_prompts: int, n_points: int, seed: int) -> tuple[Tensor, Params, torch.Generator]:
    """The standard draw: inputs, then functions; the returned generator goes on to the task's noise."""
    gen = seeded(EVAL_STREAM, seed, 0, 0)
    xs = task.sample_xs(n_prompts, n_points, task.n_dims, gen)
    return xs, task.sample_params(n_prompts, task.n_dims, gen), gen


def _aux(seed: int, name: str) -> torch.Generator:
    """The strategy's own randomness, separate from the shared draw (so it never shifts the functions)."""
    return seeded(EVAL_STREAM, seed, 1, zlib.crc32(name.encode()))


def _label(task: Task, params: Params, xs: Tensor, gen: torch.Generator) -> Tensor:
    return task.add_noise(task.evaluate(params, xs), gen)


def _inputs_only(task: Task, n_prompts: int, n_points: int, seed: int,
                 transform: Callable[[Tensor], Tensor]) -> Prompts:
    """Prompts whose inputs are ``transform(x)``; labels are the functions evaluated there."""
    xs, params, gen = _base(task, n_prompts, n_points, seed)
    xs = transform(xs)
    ys = _label(task, params, xs, gen)
    return Prompts(xs, ys, ys)


def _with_queries(task: Task, n_prompts: int, n_points: int, seed: int,
                  make: Callable[[Tensor], tuple[Tensor, Tensor]]) -> Prompts:
    """``make(xs) -> (in-context inputs, queries)``; targets are the functions at the queries."""
    xs, params, gen = _base(task, n_prompts, n_points, seed)
    xs, queries = make(xs)
    ys = _label(task, params, xs, gen)
    return Prompts(xs, ys, _label(task, params, queries, gen), queries)


def _check_param(name: str, param: Any, positive: bool = True) -> float:
    if param is None or isinstance(param, bool) or not isinstance(param, (int, float)):
        raise ValueError(f"eval.strategies.{name} takes numbers, got {param!r}")
    if param < 0 or (positive and param == 0):
        raise ValueError(f"eval.strategies.{name} values must be {'> 0' if positive else '>= 0'}, got {param}")
    return float(param)


def _no_param(name: str, param: Any) -> None:
    if param is not None:
        raise ValueError(f"eval.strategies.{name} takes no parameter: write [null], got {param!r}")


@register("standard")
def standard(task: Task, n_prompts: int, n_points: int, seed: int, param: Any = None) -> Prompts:
    _no_param("standard", param)
    return _inputs_only(task, n_prompts, n_points, seed, lambda xs: xs)


@register("scale_x", param="positive")
def scale_x(task: Task, n_prompts: int, n_points: int, seed: int, param: Any) -> Prompts:
    c = _check_param("scale_x", param)
    return _inputs_only(task, n_prompts, n_points, seed, lambda xs: c * xs)


@register("scale_y", param="positive", regression_only=True)
def scale_y(task: Task, n_prompts: int, n_points: int, seed: int, param: Any) -> Prompts:
    c = _check_param("scale_y", param)
    p = standard(task, n_prompts, n_points, seed)
    return Prompts(p.xs, c * p.ys, c * p.targets)


@register("shift_x", param="non_negative")
def shift_x(task: Task, n_prompts: int, n_points: int, seed: int, param: Any) -> Prompts:
    r = _check_param("shift_x", param, positive=False)
    u = torch.randn(n_prompts, 1, task.n_dims, generator=_aux(seed, "shift_x"))
    return _inputs_only(task, n_prompts, n_points, seed, lambda xs: xs + r * u / u.norm(dim=-1, keepdim=True))


@register("noisy_y", param="non_negative", regression_only=True)
def noisy_y(task: Task, n_prompts: int, n_points: int, seed: int, param: Any) -> Prompts:
    sigma = _check_param("noisy_y", param, positive=False)
    p = standard(task, n_prompts, n_points, seed)
    noise = torch.randn(p.ys.shape, generator=_aux(seed, "noisy_y"))
    return Prompts(p.xs, p.ys + sigma * noise, p.targets)


def subspace_dim(n_dims: int) -> int:
    """The half-subspace dimension ⌊d/2⌋."""
    return n_dims // 2


@register("half_subspace")
def half_subspace(task: Task, n_prompts: int, n_points: int, seed: int, param: Any = None) -> Prompts:
    _no_param("half_subspace", param)
    m = subspace_dim(task.n_dims)
    basis, _ = torch.linalg.qr(torch.randn(n_prompts, task.n_dims, m, generator=_aux(seed, "half_subspace")))
    return _inputs_only(task, n_prompts, n_points, seed, lambda xs: xs @ basis @ basis.transpose(1, 2))


def skewed_covariance(n_dims: int, seed: int) -> Tensor:
    """Σ = U diag(λ) Uᵀ with λ_i ∝ i^-2 summing to d (the trace of I_d) and a random rotation U."""
    lam = torch.arange(1, n_dims + 1, dtype=torch.float64) ** -SKEW_POWER
    lam = lam * n_dims / lam.sum()
    u, _ = torch.linalg.qr(torch.randn(n_dims, n_dims, generator=_aux(seed, "skewed"), dtype=torch.float64))
    return (u * lam) @ u.T


@register("skewed")
def skewed(task: Task, n_prompts: int, n_points: int, seed: int, param: Any = None) -> Prompts:
    _no_param("skewed", param)
    root = torch.linalg.cholesky(skewed_covariance(task.n_dims, seed)).float()  # x = L z has covariance L Lᵀ = Σ
    return _inputs_only(task, n_prompts, n_points, seed, lambda xs: xs @ root.T)


def _orthogonal_queries(xs: Tensor) -> tuple[Tensor, Tensor]:
    """Query i = x_i with its projection on span(x_0 … x_{i−1}) removed, at x_i's norm (Garg et al.)."""
    queries = xs.clone()
    for i in range(1, xs.shape[1]):
        _, _, vt = torch.linalg.svd(xs[:, :i].double(), full_matrices=False)  # rows of vt span the prefix
        q = xs[:, i].double()
        q = q - ((q.unsqueeze(1) @ vt.transpose(1, 2)) @ vt).squeeze(1)
        queries[:, i] = (q * xs[:, i].double().norm(dim=-1, keepdim=True) / q.norm(dim=-1, keepdim=True)).float()
    return xs, queries


@register("orthogonal_query", queries=True)
def orthogonal_query(task: Task, n_prompts: int, n_points: int, seed: int, param: Any = None) -> Prompts:
    _no_param("orthogonal_query", param)
    n = min(n_points, task.n_dims)  # with k >= d examples the prefix spans R^d: no orthogonal query exists
    return _with_queries(task, n_prompts, n, seed, _orthogonal_queries)


@register("overlapping_query", queries=True)
def overlapping_query(task: Task, n_prompts: int, n_points: int, seed: int, param: Any = None) -> Prompts:
    _no_param("overlapping_query", param)
    gen = _aux(seed, "overlapping_query")

    def make(xs: Tensor) -> tuple[Tensor, Tensor]:
        queries = xs.clone()
        for i in range(1, xs.shape[1]):
            j = torch.randint(0, i, (xs.shape[0],), generator=gen)
            queries[:, i] = xs[torch.arange(xs.shape[0]), j]
        return xs, queries

    return _with_queries(task, n_prompts, n_points, seed, make)


@register("opposite_quadrants", queries=True)
def opposite_quadrants(task: Task, n_prompts: int, n_points: int, seed: int, param: Any = None) -> Prompts:
    _no_param("opposite_quadrants", param)
    signs = torch.randint(0, 2, (n_prompts, 1, task.n_dims), generator=_aux(seed, "opposite_quadrants")) * 2.0 - 1

    def make(xs: Tensor) -> tuple[Tensor, Tensor]:
        inside = xs.abs() * signs
        return inside, -inside

    return _with_queries(task, n_prompts, n_points, seed, make)


@register("long_context", param="points")
def long_context(task: Task, n_prompts: int, n_points: int, seed: int, param: Any = None) -> Prompts:
    """``n_points`` here is already the long length (see ``points_for``)."""
    return standard(task, n_prompts, n_points, seed)


def check(strategies: dict[str, list[Any]]) -> None:
    """Unknown strategy names or malformed parameter lists fail with one line, before any training."""
    for name, params in strategies.items():
        kind = STRATEGIES.meta(name, "param")
        if not isinstance(params, (list, tuple)) or not params:
            raise ValueError(f"eval.strategies.{name} must be a non-empty list of parameters, e.g. [null]")
        for p in params:  # every value checked here, before training, not when the strategy first runs
            if kind == "points":
                if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 2):
                    raise ValueError(f"eval.strategies.long_context takes point counts >= 2 or null, got {p!r}")
            elif kind is not None:
                _check_param(name, p, positive=kind == "positive")
            else:
                _no_param(name, p)


def skip_reason(name: str, task: Task, n_points: int, n_positions: int | None, param: Any = None) -> str | None:
    """Why ``name`` does not apply to this task/model (None: it does)."""
    if STRATEGIES.meta(name, "regression_only") and task.metric != "squared_error":
        return f"{name} is defined for regression tasks only ({task.name} is scored by {task.metric})"
    if name == "half_subspace" and subspace_dim(task.n_dims) < 1:
        return "half_subspace needs n_dims >= 2"
    if STRATEGIES.meta(name, "param") == "points":
        n = points_for(name, param, n_points, n_positions)
        if n <= n_points:
            return (f"{n} points is not beyond the evaluation length {n_points} "
                    "(train with a larger model.n_positions)")
        if n_positions is not None and n > n_positions:
            return f"{n} points exceed model.n_positions = {n_positions}"
    return None


def points_for(name: str, param: Any, n_points: int, n_positions: int | None) -> int:
    """Points per prompt for a strategy: the evaluation length, or the long length for long_context."""
    if STRATEGIES.meta(name, "param") != "points":
        return n_points
    return int(param) if param is not None else int(n_positions or n_points)


def make_prompts(name: str, task: Task, n_prompts: int, n_points: int, seed: int, param: Any = None) -> Prompts:
    """The prompts of strategy ``name`` at ``param`` (``n_points`` already from ``points_for``)."""
    return STRATEGIES[name](task, n_prompts, n_points, seed, param)
