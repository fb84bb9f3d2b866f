"""The quant modes (``quant=NAME``) as facts, without torch: when each acts, what its quantised layers store and at
what width. ``icl.quantize`` applies them; the torch-free readers (the study's timing claim, the cost chart) ask
them here instead of reading a mode's name."""

from __future__ import annotations

from dataclasses import dataclass

from icl.registry import Registry

KINDS = ("float", "int8", "intN", "simulated")  # what a mode's width is (Mode.kind)
DTYPE_BITS = {"float32": 32, "bfloat16": 16, "int8": 8, "int4": 4}  # "intx": set by quant.bits


@dataclass(frozen=True)
class Mode:
    stage: str  # none | post (applied to the trained model) | qat (acts during training)
    dtype: str  # how a quantised layer stores its weights ("intx": int<bits>)
    kind: str  # float (no integer width) | int8 | intN (int4, int<quant.bits>) | simulated (fake quant, float32 storage)
    cuda_only: bool = False
    linears: bool = True  # False: the mode quantises no linear layer (attention internals only)
    options: frozenset[str] = frozenset()  # the mode's own settings besides name, layers and blocks

    @property
    def bits(self) -> int | None:
        """The width the mode stores; None for a simulated mode (``quant.bits`` sets its width) and for ``intx``."""
        return None if self.kind == "simulated" else DTYPE_BITS.get(self.dtype)


MODES: Registry[Mode] = Registry("quant mode", "quant")
MODES.add("none", Mode("none", "float32", "float"))
MODES.add("int8_weight", Mode("post", "int8", "int8"))
MODES.add("int8_dynamic", Mode("post", "int8", "int8"))
MODES.add("qat_int8", Mode("qat", "int8", "int8"))
MODES.add("bf16", Mode("post", "bfloat16", "float"))
MODES.add("int4_weight", Mode("post", "int4", "intN", cuda_only=True, options=frozenset({"group_size", "packing"})))
MODES.add("intx_weight", Mode("post", "intx", "intN", options=frozenset({"bits", "group_size"})))
MODES.add("qat_intx", Mode("qat", "intx", "intN", options=frozenset({"bits", "group_size"})))
MODES.add("int8_fbgemm", Mode("post", "int8", "int8"))
MODES.add("attn_fq", Mode("post", "float32", "simulated", linears=False,
                          options=frozenset({"bits", "granularity", "tensors"})))
MODES.add("state_fq", Mode("post", "float32", "simulated", linears=False, options=frozenset({"bits", "tensors"})))


def is_int8_backend(name: str) -> bool:
    """A post-training mode whose model stores int8 weights (an int8 inference backend; not the QAT training mode,
    not ``intx_weight`` at 8 bits, whose width is a setting); an unknown name is none."""
    return name in MODES and MODES[name].stage == "post" and MODES[name].kind == "int8"
