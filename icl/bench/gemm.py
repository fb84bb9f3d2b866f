"""The matrix products of one call, recorded and replayed alone: how much of a training step is its GEMMs, and how
close those GEMMs run to the matmul peak (issue 32's profile of a missed %-of-peak target).

``record_gemms(call)`` runs ``call`` once under a ``TorchDispatchMode`` and counts every ``mm`` / ``addmm`` / ``bmm``
/ ``baddbmm`` it dispatches (forward and backward alike) by operand shapes and strides; ``GemmCall.replay()`` makes
the same product on fresh operands of those shapes and strides (a transposed operand stays transposed: its layout
decides the BLAS path). Timed in the benchmark's rounds beside the step and the peak's product, their medians times
their counts give the step's GEMM time, so the rest of the step (fused attention, elementwise ops, normalisation,
the optimiser) is measured by difference, and the GEMMs' own FLOP/s says whether the shapes or the other ops keep
the step below a fraction of the peak.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# op → the positions of its two matrix operands among its arguments (addmm / baddbmm take the added term first)
GEMM_OPS: dict[Any, tuple[int, int]] = {aten.mm.default: (0, 1), aten.bmm.default: (0, 1),
                                        aten.addmm.default: (1, 2), aten.baddbmm.default: (1, 2)}


@dataclass(frozen=True)
class GemmCall:
    """One product as dispatched: the op and each tensor argument's (shape, stride, dtype)."""

    op: Any
    operands: tuple[tuple[tuple[int, ...], tuple[int, ...], torch.dtype], ...]

    @property
    def flops(self) -> int:
        """2·M·N·K (times the batch for bmm / baddbmm); the added term of addmm / baddbmm is not counted."""
        a, b = (self.operands[i][0] for i in GEMM_OPS[self.op])
        batch = a[0] if len(a) == 3 else 1
        return 2 * batch * a[-2] * a[-1] * b[-1]

    def replay(self, device: torch.device) -> Callable[[], torch.Tensor]:
        """The same product on fresh random operands with the recorded shapes, strides and dtypes (a view of a
        filled buffer, so a broadcast (stride 0) or overlapping layout is reproduced too)."""
        args = []
        for shape, stride, dtype in self.operands:
            size = 1 + sum((n - 1) * st for n, st in zip(shape, stride)) if all(shape) else 0
            flat = torch.randn(size, device=device).to(dtype)
            args.append(flat.as_strided(shape, stride))
        return lambda: self.op(*args)

    @property
    def dtype(self) -> torch.dtype:
        return self.operands[GEMM_OPS[self.op][0]][2]

    def describe(self) -> str:
        return f"{self.op.__name__}({', '.join('×'.join(map(str, s)) for s, _, _ in self.operands)})"


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[GemmCall] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in GEMM_OPS:
            self.calls[GemmCall(func, tuple((tuple(a.shape), tuple(a.stride()), a.dtype)
                                            for a in args if isinstance(a, torch.Tensor)))] += 1
        return func(*args, **(kwargs or {}))


def record_gemms(call: Callable[[], object]) -> Counter[GemmCall]:
    """Every matrix product ``call`` dispatches (forward and autograd's backward), counted by shape and layout.
    Eager products: a ``torch.compile``d model is not compiled while a dispatch mode is active, so its recorded
    products are the eager model's. Each replay is timed as one call (with the device synchronised around it): on a
    CPU at these sizes the per-call cost is microseconds against milliseconds; on a GPU small products are
    launch-bound and the replayed time overstates them."""
    recorder = _Recorder()
    with recorder:
        call()
    return recorder.calls


def gemm_flops(calls: Counter[GemmCall]) -> int:
    return sum(c.flops * n for c, n in calls.items())
