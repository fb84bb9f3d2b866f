"""Symmetric fake quantisation of the attention computation itself (``quant=attn_fq``).

torchao quantises linear layers; the computation where in-context examples meet (q, k, v and what the kernel
returns) never passes through one. ``QuantizedKernel`` wraps any registered attention kernel and rounds its inputs
q, k, v and its output to ``bits``-bit symmetric integers (one scale per token and head, or per token over all
heads) and back to float: it simulates the accuracy of a low-precision kernel, it stores nothing smaller. Scales
are taken per token, never over the sequence, so position i's rounding depends on position i only and every
kernel stays causal.
"""

from __future__ import annotations

from torch import Tensor, nn

GRANULARITIES = ("head", "token")  # one scale per (token, head) over the head dim | per token over every head
TENSORS = ("q", "k", "v", "out")  # what the wrapper rounds: the kernel's three inputs and its output


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
        out = self.inner(self._fq("q", q), self._fq("k", k), self._fq("v", v))
        return self._fq("out", out)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, granularity={self.granularity}, tensors={list(self.tensors)}"


def wrap_kernels(model: nn.Module, bits: int, granularity: str, tensors: tuple[str, ...],
                 blocks: tuple[int, ...] | None = None) -> int:
    """Wrap the attention kernel of every block (or of ``blocks``) of ``model`` in place; returns how many."""
    wrapped = 0
    for i, block in enumerate(getattr(model, "blocks", ())):
        if blocks is None or i in blocks:
            block.attn.kernel = QuantizedKernel(block.attn.kernel, bits, granularity, tensors)
            wrapped += 1
    return wrapped
