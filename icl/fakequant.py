"""Symmetric fake quantisation of the attention computation itself (``quant=attn_fq``).

torchao quantises linear layers; the computation where in-context examples meet (q, k, v and what the kernel
returns) never passes through one. ``QuantizedKernel`` wraps any registered attention kernel and rounds its inputs
q, k, v and its output to ``bits``-bit symmetric integers (one scale per token and head, or per token over all
heads) and back to float: it simulates the accuracy of a low-precision kernel, it stores nothing smaller. Scales
are taken per token, never over the sequence, so position i's rounding depends on position i only and every
kernel stays causal.

The attention weights are reached without any kernel's code: every registered kernel is linear in v for fixed
q, k (softmax, ReLU and sigmoid weights, kernelised features and their normaliser, Nyström and Combiner summaries
all multiply v), so its effective (T × T) mixing matrix is ``kernel(q, k, I)``; with ``weights`` in ``tensors`` the
wrapper computes that matrix, rounds each query's row, and applies it to v. That costs O(T²) memory per head: a
simulation for short prompts, not a fast path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

GRANULARITIES = ("head", "token")  # one scale per (token, head) over the head dim | per token over every head
TENSORS = ("q", "k", "v", "weights", "out")  # what the wrapper rounds: inputs, attention weights, output


def fake_quant(x: Tensor, bits: int, dims: tuple[int, ...]) -> Tensor:
    """Round ``x`` to symmetric ``bits``-bit integers, one scale per slice over ``dims`` (absmax / qmax), and back."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / qmax
    return (x / scale).round().clamp(-qmax, qmax) * scale


class QuantizedKernel(nn.Module):
    """An attention kernel with fake-quantised q, k, v (B, nh, T, hs) in and output out, same signature."""

    def __init__(self, inner: nn.Module, bits: int, granularity: str = "head",
                 tensors: tuple[str, ...] = TENSORS) -> None:
        super().__init__()
        self.inner, self.bits, self.granularity, self.tensors = inner, bits, granularity, tuple(tensors)
        self.dims = (-1,) if granularity == "head" else (1, 3)  # (B, nh, T, hs): over hs, or over nh and hs

    def _fq(self, name: str, x: Tensor) -> Tensor:
        return fake_quant(x, self.bits, self.dims) if name in self.tensors else x

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = self._fq("q", q), self._fq("k", k), self._fq("v", v)
        if "weights" in self.tensors:
            out = fake_quant(mixing_matrix(self.inner, q, k), self.bits, (-1,)) @ v  # one scale per query row
        else:
            out = self.inner(q, k, v)
        return self._fq("out", out)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, granularity={self.granularity}, tensors={list(self.tensors)}"


def mixing_matrix(kernel: nn.Module, q: Tensor, k: Tensor) -> Tensor:
    """The kernel's attention weights (B, nh, T, T): its output for v = the identity (it is linear in v), fed
    hs columns of the identity at a time (kernels may assume v is as wide as q)."""
    B, H, T, hs = q.shape
    eye = torch.eye(T, dtype=q.dtype, device=q.device)
    columns = []
    for start in range(0, T, hs):
        block = eye[:, start:start + hs]  # (T, w), w <= hs
        v = torch.zeros(B, H, T, hs, dtype=q.dtype, device=q.device)
        v[..., : block.shape[1]] = block
        columns.append(kernel(q, k, v)[..., : block.shape[1]])
    return torch.cat(columns, dim=-1)


def wrap_kernels(model: nn.Module, bits: int, granularity: str, tensors: tuple[str, ...],
                 blocks: tuple[int, ...] | None = None) -> int:
    """Wrap the attention kernel of every block (or of ``blocks``) of ``model`` in place; returns how many."""
    wrapped = 0
    for i, block in enumerate(getattr(model, "blocks", ())):
        if blocks is None or i in blocks:
            block.attn.kernel = QuantizedKernel(block.attn.kernel, bits, granularity, tensors)
            wrapped += 1
    return wrapped
