"""Which algorithm does a model run in context? Agreement of its predictions with reference learners.

On the first ``n_prompts`` of a job's standard evaluation prompts (the same for every job of a study), per
number of in-context examples k and reference learner L (a baseline of ``icl.baselines``):

  pred_diff        Σ_p (ŷ_model − ŷ_L)² / Σ_p y²: the squared prediction difference, normalised like eval.csv's
                   error (0: the model predicts what L predicts; the zero estimator's error is 1).
  weight_dist      Σ_p ‖ŵ − w_L‖² / Σ_p ‖w_L‖²: distance of the model's implicit weights ŵ to L's weights (linear
                   learners only, ``icl.learners``). ŵ is the least-squares fit ŷ(q) ≈ ŵ·q + c of the model's
                   predictions at ``probes`` fresh queries q ~ N(0, I_d) after the same prefix (Akyürek et al. 2023).
  sensitivity_cos  mean over prompts of cos(∂ŷ/∂x_query, ∂ŷ_L/∂x_query) at the prompt's own query; for a linear
                   learner ∂ŷ_L/∂x_query = w_L (von Oswald et al. 2023). The model's by central differences
                   (``input_sensitivity_fd``, step ``SENSITIVITY_STEP``), which also serves quantised activations.
  icl_regression_score  (one row per learner, k empty) Σ_k (e_zero − e_model) / Σ_k (e_zero − e_L) over every k, with
                   per-prompt squared errors e (Campbell et al. 2024): 1 = as good as L, 0 = no better than predicting 0.
and for the model alone (``learner`` = transformer): implicit_fit_r2, how much of the model's response to the
probe queries a linear function explains (1: exactly linear in the query, so ŵ is its whole story).

Every value is a ratio of means over prompts with a percentile bootstrap CI (``icl.stats.bootstrap_ratio``).
Rows: ``COLUMNS``; the job writes them to ``algorithms.csv`` when ``eval.algorithms`` is set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from icl import baselines, learners, prompts
from icl.stats import bootstrap_ratio
from icl.tasks import Task, seeded

log = logging.getLogger(__name__)

COLUMNS = ["task", "attn", "quant", "model", "seed", "n_dims", "num_tasks", "k", "learner", "metric", "layer", "value",
           "ci_low", "ci_high", "n_prompts", "failure"]
PROBE_STREAM = 5  # generator key space of the probe queries (icl.tasks.seeded), apart from the eval prompts'
VALIDATION_SEED_OFFSET = 10_007  # the read-out's recalibration prompts: eval.seed + this, never the test prompts


@dataclass(frozen=True)
class AlgorithmsConfig:
    """``eval.algorithms``: which learners, on how many prompts, how many probe queries, per-layer read-out."""

    n_prompts: int
    learners: tuple[str, ...]
    probes: int
    readout: bool
    dynamics: bool = False  # also score every periodic checkpoint (dynamics.csv; icl.run.evaluate)
    enabled: bool = True  # False: eval.algorithms=null, no algorithms.csv (``off()``)

    @classmethod
    def off(cls) -> "AlgorithmsConfig":
        """``eval.algorithms: null``: nothing to score (the other fields are unused)."""
        return cls(n_prompts=0, learners=(), probes=0, readout=False, enabled=False)

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> "AlgorithmsConfig":
        if cfg is None:
            return cls.off()
        known = [f.name for f in fields(cls) if f.name != "enabled"]
        if unknown := sorted(set(cfg) - set(known)):
            raise ValueError(f"unknown eval.algorithms option(s) {unknown}; known: {known}")
        if missing := [k for k in known if k not in cfg and k != "dynamics"]:
            raise ValueError(f"eval.algorithms needs {missing} (e.g. configs/eval/algorithms.yaml)")
        out = cls(int(cfg["n_prompts"]), tuple(cfg["learners"]), int(cfg["probes"]), bool(cfg["readout"]),
                  bool(cfg.get("dynamics", False)))
        for name in out.learners:
            baselines.BASELINES.check(name)
        if out.n_prompts < 2 or out.probes < 1:
            raise ValueError(f"eval.algorithms needs n_prompts >= 2 and probes >= 1, got {out.n_prompts}, {out.probes}")
        return out


def check_task(task: Task, cfg: AlgorithmsConfig | None = None) -> None:
    """A scalar regression task (the metrics compare real-valued predictions) and, for implicit weights, at least
    d + 1 probes; else one clear error."""
    if task.y_dim != 1 or task.metric != "squared_error":
        raise ValueError(f"eval.algorithms needs a scalar regression task; task {task.name} is not one: set "
                         "eval.algorithms=null")
    if cfg is not None and cfg.probes < task.n_dims + 1 and set(cfg.learners) & set(learners.linear_learners()):
        raise ValueError(f"eval.algorithms.probes must be >= d + 1 = {task.n_dims + 1} to fit implicit weights, "
                         f"got {cfg.probes}")


Model = Callable[[Tensor, Tensor], Tensor]  # (xs (B, n, d), ys (B, n)) -> predictions (B, n)


def _chunked(model: Model, xs: Tensor, ys: Tensor, batch_size: int) -> Tensor:
    with torch.inference_mode():
        return torch.cat([model(x, y).float().cpu() for x, y in zip(xs.split(batch_size), ys.split(batch_size))])


def model_predictions(model: Model, xs: Tensor, ys: Tensor, batch_size: int = 1024) -> Tensor:
    """The model's predictions (B, n) on CPU, in batches on the model's device."""
    device = _device(model)
    return _chunked(model, xs.to(device), ys.to(device), batch_size)


def _device(model: Model) -> torch.device:
    params = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    return torch.device("cpu") if params is None else params.device


def predictions_at(model: Model, xs: Tensor, ys: Tensor, queries: Tensor, batch_size: int = 1024) -> Tensor:
    """The model's prediction at each of P queries after each prefix: queries (B, n, P, d) -> (B, n, P).

    Entry [b, i, p] is the model's output on (x_0, y_0, …, x_{i−1}, y_{i−1}, queries[b, i, p])."""
    B, n, P, d = queries.shape
    device = _device(model)
    out = torch.empty(B, n, P)
    for i in range(n):
        prefix_x = xs[:, :i].repeat_interleave(P, 0)
        seq_x = torch.cat([prefix_x, queries[:, i].reshape(B * P, 1, d)], 1).to(device)
        seq_y = torch.cat([ys[:, :i].repeat_interleave(P, 0), torch.zeros(B * P, 1)], 1).to(device)
        out[:, i] = _chunked(model, seq_x, seq_y, batch_size)[:, -1].reshape(B, P)
    return out


def probe_queries(batch: int, n: int, d: int, probes: int, seed: int) -> Tensor:
    """Probe queries q ~ N(0, I_d), (B, n, P, d), from their own generator (the prompts' input distribution)."""
    return torch.randn(batch, n, probes, d, generator=seeded(PROBE_STREAM, seed, 0, 0))


def implicit_weights(model: Model, xs: Tensor, ys: Tensor, probes: Tensor,
                     batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """ŵ (B, n, d) from the fit ŷ(q) ≈ ŵ·q + c over the probe queries (B, n, P, d), and its R² (B, n)."""
    d, P = xs.shape[-1], probes.shape[2]
    if P < d + 1:
        raise ValueError(f"eval.algorithms.probes must be >= d + 1 = {d + 1} to fit d weights and an intercept, got {P}")
    preds = predictions_at(model, xs, ys, probes, batch_size).double()  # (B, n, P)
    design = torch.cat([probes.double(), torch.ones(*probes.shape[:3], 1, dtype=torch.float64)], -1)
    coef = torch.linalg.lstsq(design, preds.unsqueeze(-1)).solution.squeeze(-1)  # (B, n, d + 1)
    resid = preds - (design @ coef.unsqueeze(-1)).squeeze(-1)
    spread = (preds - preds.mean(-1, keepdim=True)).pow(2).sum(-1)
    r2 = 1 - resid.pow(2).sum(-1) / spread.clamp(min=1e-300)
    return coef[..., :d], torch.where(spread > 0, r2, torch.nan)


SENSITIVITY_STEP = 0.1  # central-difference step along each input axis (inputs are ~N(0, 1))


def input_sensitivity_fd(model: Model, xs: Tensor, ys: Tensor, step: float = SENSITIVITY_STEP,
                         batch_size: int = 1024) -> Tensor:
    """∂ŷ_i/∂x_i (B, n, d) by central differences of the prediction at position i along each axis of its query.

    What ``agreement`` reports: it needs no autograd, and for models whose activations are quantised (int8_dynamic),
    where autograd differentiates a rounding step, it measures the response to a perturbation of a set size."""
    B, n, d = xs.shape
    eye = torch.eye(d) * step
    queries = torch.cat([xs.unsqueeze(2) + eye, xs.unsqueeze(2) - eye], 2)  # (B, n, 2d, d)
    out = predictions_at(model, xs, ys, queries, batch_size)
    return (out[..., :d] - out[..., d:]) / (2 * step)


def _rows(metric: str, learner: str, num: np.ndarray, den: np.ndarray, boot: int, ci: float, seed: int,
          k: np.ndarray | None = None) -> pd.DataFrame:
    point, low, high, _, count = bootstrap_ratio(num, den, boot, ci, seed)
    ks = np.arange(num.shape[1]) if k is None else k
    frame = pd.DataFrame({"k": ks, "value": point, "ci_low": low, "ci_high": high, "n_prompts": count})
    return frame.assign(metric=metric, learner=learner)


def _cosine(a: Tensor, b: Tensor) -> np.ndarray:
    num = (a * b).sum(-1)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.nan).numpy()


def agreement(model: Model, task: Task, xs: Tensor, ys: Tensor, targets: Tensor, cfg: AlgorithmsConfig,
              boot: int = 200, ci: float = 0.95, seed: int = 0, batch_size: int = 1024) -> pd.DataFrame:
    """Every metric of the module docstring on these prompts (xs (P, n, d), ys and targets (P, n)), tidy rows."""
    check_task(task)
    x64, y64 = xs.double(), ys.double()
    stats = dict(boot=boot, ci=ci, seed=seed)
    zero = targets.double().pow(2).numpy()
    model_preds = model_predictions(model, xs, ys, batch_size).double()
    model_err = (model_preds - targets.double()).pow(2).numpy()
    linear = learners.linear_learners()
    frames = []
    w_hat = sens = None  # linear learners only
    if any(name in linear for name in cfg.learners):
        probes = probe_queries(*xs.shape[:2], xs.shape[-1], cfg.probes, seed)
        w_hat, r2 = implicit_weights(model, xs, ys, probes, batch_size)
        frames.append(_rows("implicit_fit_r2", "transformer", r2.numpy(), np.ones(r2.shape), **stats))
        sens = input_sensitivity_fd(model, xs, ys, batch_size=batch_size)
    for name in cfg.learners:
        preds = baselines.predict(name, xs, ys, task=task).double()
        frames.append(_rows("pred_diff", name, (model_preds - preds).pow(2).numpy(), zero, **stats))
        learner_err = (preds - targets.double()).pow(2).numpy()
        frames.append(_rows("icl_regression_score", name, (zero - model_err).sum(1, keepdims=True),
                            (zero - learner_err).sum(1, keepdims=True), **stats, k=np.array([np.nan])))
        if name in linear and w_hat is not None:
            w = linear[name](x64, y64)
            frames.append(_rows("weight_dist", name, (w_hat - w).pow(2).sum(-1).numpy(), w.pow(2).sum(-1).numpy(),
                                **stats))
            cos = _cosine(sens.double(), w)
            frames.append(_rows("sensitivity_cos", name, cos, np.ones(cos.shape), **stats))
    return pd.concat(frames, ignore_index=True).assign(layer=pd.NA)


def evaluate_algorithms(model: Model, task: Task, cfg: AlgorithmsConfig, n_points: int, eval_seed: int,
                        labels: dict[str, Any], boot: int = 200, ci: float = 0.95, batch_size: int = 1024,
                        pool: tuple[int, int] | None = None) -> pd.DataFrame:
    """``agreement`` (and the per-layer read-out, ``cfg.readout``) on the job's standard evaluation prompts; with
    ``pool`` = (num_tasks, pool seed) of a job trained on a finite pool, also pool tasks vs fresh ones (icl.pool)."""
    check_task(task, cfg)
    if isinstance(model, torch.nn.Module):
        model.eval()
    p = prompts.make_prompts("standard", task, cfg.n_prompts, n_points, eval_seed)
    frames = [agreement(model, task, p.xs, p.ys, p.targets, cfg, boot, ci, eval_seed, batch_size)]
    from icl.transformer import ICLTransformer

    if isinstance(model, ICLTransformer):  # the weight-shifting view: one fitted GD step, softmax linearisation
        from icl.weight_shift import weight_shift_frame

        frames.append(weight_shift_frame(model, p.xs, p.ys, model_predictions(model, p.xs, p.ys, batch_size)))
    if cfg.readout:
        from icl import readout

        val = prompts.make_prompts("standard", task, cfg.n_prompts, n_points, eval_seed + VALIDATION_SEED_OFFSET)
        frames.append(readout.readout_frame(model, p, val, boot, ci, eval_seed))
    if pool is not None:
        from icl.pool import pool_frame

        frames.append(pool_frame(partial(model_predictions, model, batch_size=batch_size), task, pool[0], pool[1],
                                 (p.xs, p.ys), n_points, eval_seed, boot, ci))
    df = pd.concat(frames, ignore_index=True).assign(n_dims=task.n_dims, **labels)
    # k empty: one score over all k; layer: read-out rows only; num_tasks: pool rows only
    return df.reindex(columns=COLUMNS).astype({"k": "Int64", "layer": "Int64", "num_tasks": "Int64"})


DYNAMICS_COLUMNS = ["task", "attn", "quant", "model", "seed", "n_dims", "step", "k", "error", "ci_low", "ci_high",
                    "n_prompts"]


def dynamics_frame(models: Iterable[tuple[int, Model]], task: Task, xs: Tensor, ys: Tensor, boot: int = 200,
                   ci: float = 0.95, seed: int = 0, batch_size: int = 1024) -> pd.DataFrame:
    """Normalised error per k of each (training step, model) on the same prompts: how in-context learning emerges."""
    zero = ys.double().pow(2).numpy()
    frames = []
    for step, model in models:
        err = (model_predictions(model, xs, ys, batch_size).double() - ys.double()).pow(2).numpy()
        point, low, high, _, count = bootstrap_ratio(err, zero, boot, ci, seed)
        frames.append(pd.DataFrame({"step": step, "k": np.arange(err.shape[1]), "error": point, "ci_low": low,
                                    "ci_high": high, "n_prompts": count}))
    if not frames:
        return pd.DataFrame(columns=DYNAMICS_COLUMNS)
    return pd.concat(frames, ignore_index=True).assign(n_dims=task.n_dims)
