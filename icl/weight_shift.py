"""How far is a trained attention-only model from one step of gradient descent? The weight-shifting view.

von Oswald et al. 2023: a linear self-attention layer Σ_j (q·k_j) v_j with the right weights *is* one GD step on the
in-context least-squares loss (tests/test_gd_construction.py builds it here), and softmax attention is close to it when
its scores are small. Li et al. 2023 bound that closeness through the Lipschitz constant of softmax. This module
computes, on a model's own prompts:

  the softmax linearisation gap of every softmax head at every x position: with scores s_j (j ≤ t, T = t + 1 of
  them), u_j = s_j − mean(s), a = max_j |u_j| (the score spread) and values v_j, the head's output o = Σ_j p_j v_j
  against its first-order expansion o_lin = Σ_j (1 + u_j)/T · v_j — linear attention on centred scores, the
  GD-implementing kernel. Bound (``linearisation_bound``, proved in docs/algorithms.md):
      ‖o − o_lin‖ ≤ (2 + a)(e^a − 1 − a) · max_j ‖v_j − v̄‖,
  O(a²) as the scores (the step size of the construction) shrink, while the GD-like term o_lin − v̄ is O(a);
  Li et al.'s own constant M = n^1.5 exp(10 R²) (‖A‖, ‖x‖ ≤ R) for the same head, as log10 M;

  the fitted one-step-GD predictor: per k the step η̂_k minimising Σ_p (ŷ_p − η̂ g_p)² with g = (Xᵀy)·x_query over
  the prefix, and the remaining gap Σ_p (ŷ − η̂ g)² / Σ_p y² (normalised like eval.csv's error); η̂_k (k + d + 1)
  is 1 where the model runs ``gd_1step_opt``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from icl.attention import SoftmaxAttention
from icl.transformer import ICLTransformer

METRICS = ("step_fit", "step_fit_gap", "pred_power", "linearisation_gap", "linearisation_bound",
           "linearisation_violations", "score_spread", "gd_like_term", "linearisation_explains", "li_log10_m")


def linearisation_bound(spread: Tensor, value_radius: Tensor) -> Tensor:
    """(2 + a)(e^a − 1 − a) · r: the bound on ‖softmax attention − its first-order expansion‖ (module docstring)."""
    return (2 + spread) * torch.special.expm1(spread).sub(spread) * value_radius


@dataclass(frozen=True)
class HeadGap:
    """Per (batch, head, query position) of one softmax head: gap, bound, score spread a, the GD-like term's
    size ‖o_lin − v̄‖, and Li et al.'s log10 M."""

    gap: Tensor
    bound: Tensor
    spread: Tensor
    linear_term: Tensor
    li_log10_m: Tensor


def softmax_linearisation(scores: Tensor, values: Tensor) -> HeadGap:
    """Causal softmax attention vs its first-order expansion: scores (B, nh, T, T), values (B, nh, T, hs)."""
    s, v = scores.double(), values.double()
    T = s.shape[-1]
    mask = torch.ones(T, T, dtype=torch.bool, device=s.device).tril()
    count = mask.sum(-1).to(s.dtype)  # (T,) keys each query sees
    mean = torch.where(mask, s, 0).sum(-1, keepdim=True) / count[:, None]
    u = torch.where(mask, s - mean, 0)
    spread = u.abs().amax(-1)
    p = torch.softmax(s.masked_fill(~mask, -math.inf), -1)
    lin = torch.where(mask, (1 + u) / count[:, None], 0)
    gap = ((p - lin) @ v).norm(dim=-1)
    v_bar = (mask.to(s.dtype) / count[:, None]) @ v  # (B, nh, T, hs): mean value over the prefix
    radius = torch.where(mask[..., None], v.unsqueeze(-3) - v_bar.unsqueeze(-2), 0).norm(dim=-1).amax(-1)
    linear_term = (lin @ v - v_bar).norm(dim=-1)
    return HeadGap(gap, linearisation_bound(spread, radius), spread, linear_term, li_log10_m(scores))


def li_log10_m(scores: Tensor) -> Tensor:
    """log10 of Li et al.'s M = n^1.5 exp(10 R²) with n the keys seen and R² = max(‖K‖², ‖q‖²) estimated from the
    score matrix: ‖K q‖ ≤ ‖K‖‖q‖, so R² ≥ max_t ‖s_t‖ (scores of query t against its prefix) — a lower bound on M."""
    T = scores.shape[-1]
    mask = torch.ones(T, T, dtype=torch.bool, device=scores.device).tril()
    r2 = torch.where(mask, scores.double(), 0).norm(dim=-1)
    n = mask.sum(-1).double()
    return 1.5 * torch.log10(n) + 10 * r2 / math.log(10)


def softmax_heads(model: ICLTransformer, xs: Tensor, ys: Tensor) -> list[HeadGap]:
    """``softmax_linearisation`` of every block whose kernel is softmax, at the x positions, one entry per block
    (other blocks: skipped). The kernel's own inputs are captured, so qk-norm and positions are included."""
    captured: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
    hooks = []
    for index, block in enumerate(model.blocks):
        kernel = getattr(block.attn, "kernel", None)
        if type(kernel) is SoftmaxAttention:
            hooks.append(kernel.register_forward_pre_hook(
                lambda _mod, args, index=index: captured.__setitem__(index, tuple(a.detach() for a in args))))
    try:
        with torch.inference_mode():
            model.eval()(xs, ys)
    finally:
        for hook in hooks:
            hook.remove()
    out = []
    for index in sorted(captured):
        q, k, v = captured[index]
        gap = softmax_linearisation((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, v)
        out.append(HeadGap(*(t[..., ::2] for t in (gap.gap, gap.bound, gap.spread, gap.linear_term,
                                                    gap.li_log10_m))))  # x positions: where predictions are read
    return out


def one_step_direction(xs: Tensor, ys: Tensor) -> Tensor:
    """g (B, n): (Σ_{j<i} y_j x_j) · x_i, the one-step-GD prediction from zero with step 1 at every position i."""
    xs, ys = xs.double(), ys.double()
    grad = torch.cumsum(ys.unsqueeze(-1) * xs, 1) - ys.unsqueeze(-1) * xs  # prefix j < i only
    return (grad * xs).sum(-1)


def fit_step(preds: Tensor, direction: Tensor, targets: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per k: the least-squares step η̂_k of preds ≈ η̂ · direction over prompts, and the normalised remaining gap
    Σ_p (ŷ − η̂ g)² / Σ_p y²."""
    preds, direction, targets = preds.double(), direction.double(), targets.double()
    norm = direction.pow(2).sum(0)
    eta = torch.where(norm > 0, (preds * direction).sum(0) / norm.clamp(min=1e-300), 0.0)
    gap = (preds - eta * direction).pow(2).sum(0) / targets.pow(2).sum(0).clamp(min=1e-300)
    return eta.numpy(), gap.numpy()


def weight_shift_frame(model: ICLTransformer, xs: Tensor, ys: Tensor, preds: Tensor) -> pd.DataFrame:
    """Tidy rows (k, metric, learner, layer, value, n_prompts): ``step_fit`` η̂_k (k + d + 1) and ``step_fit_gap``
    (learner gd_1step_fit), ``pred_power`` Σ_p ŷ² / Σ_p y² (1 − step_fit_gap / pred_power: the share of the model's
    prediction one fitted GD step explains), and per softmax block (layer = block index + 1) the linearisation rows:
    mean gap, median bound, the fraction of (prompt, head) pairs where the bound fails (0 by the theorem), the median
    score spread, the mean GD-like term, the fraction where the bound is below the GD-like term (the expansion
    *explains* the head), and Li et al.'s median log10 M."""
    n, d = xs.shape[1], xs.shape[-1]
    eta, gap = fit_step(preds, one_step_direction(xs, ys), ys)
    ks = np.arange(n)
    power = (preds.double().pow(2).sum(0) / ys.double().pow(2).sum(0).clamp(min=1e-300)).numpy()
    frames = [pd.DataFrame({"k": ks, "metric": "step_fit", "value": eta * (ks + d + 1), "learner": "gd_1step_fit"}),
              pd.DataFrame({"k": ks, "metric": "step_fit_gap", "value": gap, "learner": "gd_1step_fit"}),
              pd.DataFrame({"k": ks, "metric": "pred_power", "value": power, "learner": "transformer"})]
    frames = [f.assign(layer=pd.NA) for f in frames]
    for index, head in enumerate(softmax_heads(model, xs, ys)):
        tolerance = 1e-9 * (1 + head.bound)
        per_k = {"linearisation_gap": head.gap.mean((0, 1)),
                 "linearisation_bound": head.bound.flatten(0, 1).median(0).values,  # exponential in a: a median
                 "linearisation_violations": (head.gap > head.bound + tolerance).double().mean((0, 1)),
                 "score_spread": head.spread.flatten(0, 1).median(0).values,
                 "gd_like_term": head.linear_term.mean((0, 1)),
                 "linearisation_explains": (head.bound < head.linear_term).double().mean((0, 1)),
                 "li_log10_m": head.li_log10_m.flatten(0, 1).median(0).values}
        for metric, values in per_k.items():
            frames.append(pd.DataFrame({"k": ks, "metric": metric, "value": values.cpu().numpy(),
                                        "learner": "transformer", "layer": index + 1}))
    return pd.concat(frames, ignore_index=True).assign(n_prompts=xs.shape[0])
