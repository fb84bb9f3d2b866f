"""Task diversity (Raventós et al. 2023): the Bayes-optimal predictor for a finite pool of tasks, and a model scored
on tasks from its training pool and on fresh tasks side by side.

A job trained with ``task.num_tasks = M`` saw only the M functions w_1 … w_M of its pool (``icl.tasks.PromptSampler``,
function m regenerated from ``seeded(POOL_FUNCTIONS, seed, 0, m)``). Under that training distribution the
Bayes-optimal prediction is the posterior mean over the pool (discrete MMSE):

    p(m | prefix) ∝ exp(−Σ_j (y_j − s·w_m·x_j)² / (2σ²)),     ŷ = Σ_m p(m | prefix) · s·w_m·x_query,

with s the task's scale and σ² its label-noise variance (σ² = 0: the pool tasks that fit the prefix exactly share
the mass). Under the task's Gaussian prior instead (a fresh w per prompt) it is ridge with λ = σ²/s² (least squares
when σ = 0): a model that leaves the pool's predictor for that one has learned the task class, not the pool.
Rows (``icl.agreement.COLUMNS``): metric ``error_pool_tasks`` / ``error_fresh_tasks``, learner transformer,
``pool_bayes`` or ``bayes``, column ``num_tasks``; normalised like eval.csv's error.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from icl import baselines
from icl.stats import bootstrap_ratio
from icl.tasks import EVAL_STREAM, POOL_FUNCTIONS, Task, seeded

POOL_PROMPTS = 6  # generator key of the pool-task evaluation prompts (beside the EVAL_STREAM ones)
_CHUNK_ELEMENTS = 1 << 22  # (prompts × points × pool) residuals held at once


def pool_weights(task: Task, num_tasks: int, pool_seed: int) -> Tensor:
    """The pool's functions (M, d), each regenerated from its index exactly as training drew it."""
    if task.name not in ("linear", "noisy_linear"):
        raise ValueError(f"the pool's Bayes predictor is implemented for linear tasks, not {task.name}")
    if num_tasks < 1:
        raise ValueError(f"task.num_tasks must be >= 1, got {num_tasks}")
    return torch.cat([task.sample_params(1, task.n_dims, seeded(POOL_FUNCTIONS, pool_seed, 0, m))["w"]
                      for m in range(num_tasks)])


def pool_bayes_predict(xs: Tensor, ys: Tensor, qs: Tensor, pool: Tensor, scale: float = 1.0,
                       noise_var: float = 0.0) -> Tensor:
    """Posterior-mean predictions (B, n) over the pool (M, d) from each prefix (module docstring); 0 at k = 0."""
    xs, ys, qs, pool = (t.double() for t in (xs, ys, qs, pool))
    B, n, _ = xs.shape
    out = torch.empty(B, n, dtype=torch.float64)
    rows = max(1, _CHUNK_ELEMENTS // max(1, n * pool.shape[0]))
    for start in range(0, B, rows):
        sl = slice(start, start + rows)
        fits = scale * xs[sl] @ pool.T  # (b, n, M): s·w_m·x_j
        sq = (ys[sl].unsqueeze(-1) - fits).pow(2)
        sse = torch.cat([torch.zeros_like(sq[:, :1]), sq[:, :-1]], 1).cumsum(1)  # prefix < i only
        if noise_var > 0:
            post = torch.softmax(-sse / (2 * noise_var), dim=-1)
        else:  # σ → 0: all mass on the best-fitting tasks (a tolerance for round-off in the sums)
            best = sse.min(-1, keepdim=True).values
            post = (sse <= best + 1e-9 * (1 + best)).double()
            post = post / post.sum(-1, keepdim=True)
        out[sl] = (post * (scale * qs[sl] @ pool.T)).sum(-1)
    out[:, 0] = 0.0
    return out.float()


def noise_var(task: Task) -> float:
    """The task's label-noise variance σ² (0 for noiseless tasks)."""
    return float(getattr(task, "noise_std", 0.0)) ** 2


def pool_prompts(task: Task, pool: Tensor, n_prompts: int, n_points: int, seed: int) -> tuple[Tensor, Tensor]:
    """Prompts whose functions are drawn uniformly from the pool, fresh inputs and noise: xs (P, n, d), ys (P, n)."""
    gen = seeded(EVAL_STREAM, seed, POOL_PROMPTS, 0)
    xs = task.sample_xs(n_prompts, n_points, task.n_dims, gen)
    ids = torch.randint(0, pool.shape[0], (n_prompts,), generator=gen)
    return xs, task.add_noise(task.evaluate({"w": pool[ids]}, xs), gen)


def pool_frame(model: Callable[[Tensor, Tensor], Tensor], task: Task, num_tasks: int, pool_seed: int,
               fresh: tuple[Tensor, Tensor], n_points: int, seed: int, boot: int, ci: float) -> pd.DataFrame:
    """Errors of the model, the pool's Bayes predictor and the prior's (``bayes``) on pool tasks and fresh ones.

    ``model(xs, ys)``: the model's predictions (B, n); ``fresh``: the job's standard evaluation prompts (xs, ys)."""
    pool = pool_weights(task, num_tasks, pool_seed)
    on_pool = pool_prompts(task, pool, fresh[0].shape[0], n_points, seed)
    frames = []
    for metric, (xs, ys) in (("error_pool_tasks", on_pool), ("error_fresh_tasks", fresh)):
        preds = {"transformer": model(xs, ys),
                 "pool_bayes": pool_bayes_predict(xs, ys, xs, pool, getattr(task, "scale", 1.0), noise_var(task)),
                 "bayes": baselines.predict("bayes", xs, ys, task=task)}
        zero = ys.double().pow(2).numpy()
        for learner, pred in preds.items():
            err = (pred.double() - ys.double()).pow(2).numpy()
            point, low, high, _, count = bootstrap_ratio(err, zero, boot, ci, seed)
            frames.append(pd.DataFrame({"k": np.arange(err.shape[1]), "value": point, "ci_low": low,
                                        "ci_high": high, "n_prompts": count, "metric": metric, "learner": learner}))
    return pd.concat(frames, ignore_index=True).assign(num_tasks=num_tasks)
