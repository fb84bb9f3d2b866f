"""What the arithmetic allows: matmul FLOPs of one prompt through the model, and the device's measured matmul peak.

A timing that implies more FLOP/s than the device's own large-matmul rate is a measurement error (the seed study's
≈5 µs for a 12-layer, 256-wide model on 82 tokens implies > 300 TFLOP/s: it timed kernel launches). Counted: every
matrix multiply, 2 FLOPs per multiply-add (LayerNorm, GELU, softmax and additions are ignored, so the count is a
lower bound). Notation: n points, T = 2n tokens, d input dims, C width, L layers.
"""

from __future__ import annotations

import time

import torch

from icl.attention import ATTENTION
from icl.transformer import TransformerConfig


def dense_flops(config: TransformerConfig, n_points: int, every_token: bool = False) -> int:
    """Linear layers of one prompt: read-in 2·T·d·C, per layer 24·T·C² (qkv 6, proj 2, MLP 16) except the last,
    whose projection and MLP run at the n x positions only (6·T·C² + 18·n·C²), read-out 2·n·C.

    ``every_token``: the count for a model that runs the last block and the read-out at every token (the reference).
    """
    T, C, L = 2 * n_points, config.n_embd, config.n_layer
    if every_token:
        return 2 * T * config.n_dims * C + L * 24 * T * C * C + 2 * T * C
    last = 6 * T * C * C + 18 * n_points * C * C if L else 0
    return 2 * T * config.n_dims * C + max(L - 1, 0) * 24 * T * C * C + last + 2 * n_points * C


def attention_pairs(T: int, causal: bool = True, x_queries: bool = False) -> int:
    """(i, j) pairs scored: T(T+1)/2 with the causal mask skipped, T² when the full matrix is computed; with
    ``x_queries`` (a last block that scores the even queries only) (T/2)² causal, T²/2 full."""
    if x_queries:
        n = (T + 1) // 2
        return n * n if causal else n * T
    return T * (T + 1) // 2 if causal else T * T


def forward_flops(config: TransformerConfig, n_points: int, causal: bool = True, every_token: bool = False) -> int:
    """Matmul FLOPs of one prompt's forward pass: dense layers + 4·C per scored pair and layer (QKᵀ and AV) for the
    pairwise kernels (softmax, relu, relu_causal, sigmoid); the linear-cost kernels' own FLOPs are not counted.

    ``causal=False`` counts the full T×T matrix, as ``torch.utils.flop_counter`` does for fused attention. The last
    block of a kernel with ``x_queries`` (softmax) scores the x queries only, unless ``every_token``.
    """
    kernel, T = ATTENTION[config.attn], 2 * n_points
    if not getattr(kernel, "pairwise", False) or not config.n_layer:
        return dense_flops(config, n_points, every_token)
    x_queries = getattr(kernel, "x_queries", False) and config.pos != "alibi" and not every_token
    pairs = attention_pairs(T, causal) * (config.n_layer - 1) + attention_pairs(T, causal, x_queries)
    return dense_flops(config, n_points, every_token) + 4 * config.n_embd * pairs


def train_flops(config: TransformerConfig, n_points: int, every_token: bool = False) -> int:
    """One prompt's forward + backward: 3× the forward (the backward computes two matmuls per forward one)."""
    return 3 * forward_flops(config, n_points, every_token=every_token)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the fastest of ``repeats`` (size × size) @ (size × size) products (after one warm-up): the rate
    no model FLOP count may beat. int8 goes through ``torch._int_mm`` (int32 accumulation), as int8 kernels do."""
    mm = torch._int_mm if dtype == torch.int8 else torch.matmul
    a, b = (torch.randn(size, size, device=device).mul(20).to(dtype) for _ in range(2))
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best
