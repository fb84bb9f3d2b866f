"""Attention variants behind one signature, chosen by name (``attn=<name>``).

Notation: B batch, nh heads, T tokens, hs head size. Every variant maps
``(q, k, v)``, each (B, nh, T, hs), to an output (B, nh, T, hs) and must be strictly causal:
the output at position i depends only on tokens at positions <= i. The projections around the
kernel (qkv, output) live in ``icl.transformer`` so variants differ only where they really differ.
"""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make an attention kernel available as ``attn=<name>``."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        ATTENTION[name] = cls
        return cls

    return wrap


def build_attention(name: str, **kwargs: object) -> nn.Module:
    """Instantiate an attention kernel by name, with a one-line error listing the known names."""
    if name not in ATTENTION:
        raise ValueError(f"unknown attention '{name}'; choose one of: {', '.join(sorted(ATTENTION))}")
    try:
        return ATTENTION[name](**kwargs)
    except TypeError as err:  # an unknown or missing parameter in configs/attn/<name>.yaml
        raise ValueError(f"attention '{name}': {err} (check configs/attn/{name}.yaml)") from None


@register("softmax")
class SoftmaxAttention(nn.Module):
    """softmax(QKᵀ/√hs) V with a causal mask, via PyTorch's fused ``scaled_dot_product_attention``."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
