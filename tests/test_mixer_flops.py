"""Kernel FLOPs of the recurrent mixers (``kernel_flops``, the ``kernel_flops`` column of ``make bench-attn``)
against hand counts for one small shape, and their matrix products against torch's own FLOP counter run over the
token-by-token recurrence."""

import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from icl.bench.mixers import kernel_flops
from icl.mixers import build_mixer


def test_hand_counts_for_one_small_shape():
    # mamba, D = expand·C = 4, N = 2, T = 3; per token: Δ·A 8, Δ·u 4, (Δu)·B 8, a⊙h + b 16, C·h 16, + D·u 8 = 60
    mamba = build_mixer("mamba", 4, 1, {"d_state": 2, "expand": 1})
    assert kernel_flops(mamba, 3) == 3 * 60
    # mamba2, D = 8, N = 2, H = 2 heads of 4, T = 3; per token: Δ·A 2, Δ·u 8, a·S 16, + (Δu)Bᵀ 32, S·C 32, + D·u 16
    mamba2 = build_mixer("mamba2", 4, 1, {"d_state": 2, "expand": 2, "head_dim": 4})
    assert kernel_flops(mamba2, 3) == 3 * 106
    # retnet, 2 heads of 2, T = 3; per token and head: q/√hs 2, γ·S 4, + k·vᵀ 8, Sᵀ·q 8 = 22
    assert kernel_flops(build_mixer("retnet", 4, 2), 3) == 3 * 2 * 22
    # deltanet, 2 heads of 2, T = 3; per token and head: S·k 8, v − Sk 2, β·(…) 2, S += u·kᵀ 8, S·q 8 = 28
    assert kernel_flops(build_mixer("deltanet", 4, 2), 3) == 3 * 2 * 28
    # a linear-cost attention kernel is not counted; softmax is 4·C per causal pair
    assert math.isnan(kernel_flops(build_mixer("performer", 4, 2), 3))
    assert kernel_flops(build_mixer("softmax", 4, 2), 3) == 4 * 4 * 6


def _products_of_recurrences(hs: int, T: int) -> dict[str, int]:
    """torch's FLOP count (matrix products only) of one head's delta rule and retention, token by token."""
    counts = {}
    q, k, v = (torch.randn(T, 1, hs) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        S = torch.zeros(hs, hs)
        for t in range(T):
            u = 0.5 * (v[t] - k[t] @ S)  # (1, hs): β (v − S k)
            S = S + k[t].T @ u
            q[t] @ S
    counts["deltanet"] = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        S = torch.zeros(hs, hs)
        for t in range(T):
            S = 0.9 * S + k[t].T @ v[t]
            q[t] @ S
    counts["retnet"] = counter.get_total_flops()
    return counts


def test_the_counts_hold_the_recurrences_matrix_products():
    """The products torch counts (2 per multiply-add) are the counted FLOPs minus the elementwise ones."""
    hs, T = 4, 5
    products = _products_of_recurrences(hs, T)
    assert kernel_flops(build_mixer("deltanet", hs, 1), T) - T * (2 * hs) == products["deltanet"]
    assert kernel_flops(build_mixer("retnet", hs, 1), T) - T * (hs + hs * hs) == products["retnet"]
