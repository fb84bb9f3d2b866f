"""A GPT-2-style decoder for in-context regression, as in Garg et al. (2022).

Reads top to bottom: interleaving → attention block → MLP → block → config → model.
A prompt (x1, y1, …, xn, yn) becomes 2n tokens: x's as they are, each y as (y, 0, …, 0); a linear
read-in maps tokens to the model width, a linear read-out maps the hidden state at every x
position to a scalar prediction of that x's y. Notation: B batch, n points, d input dims,
T = 2n tokens, C width, nh heads, hs = C / nh.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from icl.mixers import POSITIONS, SelfAttention, build_mixer, check_mixer, default_pos, family
from icl.spec import known_keys, require, typed_fields

__all__ = ["ICLTransformer", "SelfAttention", "TransformerConfig", "interleave"]


def interleave(xs: Tensor, ys: Tensor) -> Tensor:
    """(B, n, d), (B, n) → (B, 2n, d) tokens x1, y1, x2, y2, … with y zero-padded to d.

    Vector outputs: ys (B, n, m), m <= d, fill the first m coordinates of each y token."""
    batch, n, d = xs.shape
    y_tokens = torch.zeros_like(xs)
    if ys.ndim == 3:
        y_tokens[..., : ys.shape[-1]] = ys
    else:
        y_tokens[..., 0] = ys
    return torch.stack((xs, y_tokens), dim=2).reshape(batch, 2 * n, d)


# model.activation -> the GELU it builds: exact erf (ours) or GPT-2's tanh approximation ("gelu_new"), which
# Garg et al.'s checkpoints were trained with (icl.run.garg converts them).
ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float, activation: str = "gelu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown model.activation '{activation}'; choose from: {', '.join(ACTIVATIONS)}")
        self.net = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(approximate=ACTIVATIONS[activation]),
                                 nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LayerScale(nn.Module):
    """x · γ with a learned per-channel γ starting at ``init`` (Touvron et al. 2021): scales a residual branch."""

    def __init__(self, n_embd: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((n_embd,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + mixer(ln(x)), then x + mlp(ln(x)).

    The mixer (``icl.mixers``: attention = projections + kernel, or a recurrent mixer) sits in ``self.attn``, the
    name every checkpoint's keys use. ``qk_norm`` and ``layer_scale`` (the mixer branch's LayerScale init; null =
    none) are training options that leave the kernel itself unchanged; ``pos`` is the positional encoding."""

    def __init__(self, n_embd: int, n_head: int, attn: str, attn_params: dict[str, Any] | None,
                 dropout: float, activation: str = "gelu", qk_norm: bool = False,
                 layer_scale: float | None = None, mlp: bool = True, layer_norm: bool = True,
                 pos: str = "learned") -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, n_embd) if layer_norm else nn.Identity
        self.ln_1, self.ln_2 = norm(), norm() if mlp else nn.Identity()  # no parameter goes unused (DDP)
        self.attn = build_mixer(attn, n_embd, n_head, attn_params, qk_norm, pos)
        self.attn_scale = nn.Identity() if layer_scale is None else LayerScale(n_embd, layer_scale)
        self.mlp = MLP(n_embd, dropout, activation) if mlp else None  # None: an attention-only block
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, x_only: bool = False) -> Tensor:
        """``x_only``: return the x positions only, skipping the output projection and MLP at the y positions (the
        last block: nothing reads them)."""
        a = self.drop(self.attn_scale(self.attn(self.ln_1(x), x_only)))
        x = (x[:, ::2] if x_only else x) + a
        return x if self.mlp is None else x + self.mlp(self.ln_2(x))


@dataclass
class TransformerConfig:
    """Sizes as names and numbers only, so a checkpoint reloads without Hydra."""

    n_dims: int
    n_positions: int = 101  # max points per prompt; the model holds 2 · n_positions token positions
    n_embd: int = 64
    n_layer: int = 3
    n_head: int = 2
    attn: str = "softmax"
    attn_params: dict[str, Any] = field(default_factory=dict)  # the variant's own settings (configs/attn/*.yaml)
    dropout: float = 0.0
    activation: str = "gelu"  # gelu (exact erf) | gelu_tanh (GPT-2's, for converted Garg et al. checkpoints)
    y_dim: int = 1  # outputs per point, set from the task (1: scalar y, predictions (B, n); else (B, n, y_dim))
    qk_norm: bool = False  # LayerNorm over the head dim on q and k before the kernel (training option)
    layer_scale: float | None = None  # LayerScale on the attention branch, γ's initial value; None = off
    mlp: bool = True  # False: attention-only blocks (von Oswald et al. 2023; docs/algorithms.md)
    layer_norm: bool = True  # False: no LayerNorm in the blocks nor before the read-out
    pos: str | None = None  # learned | none | rope | alibi; None = the mixers' default (learned if any layer attends)
    pattern: list[str] | None = None  # mixer names per layer, repeated to n_layer (a hybrid); None = attn everywhere


def layer_mixers(attn: str, pattern: list[str] | None, n_layer: int) -> list[str]:
    """The mixer of every layer: ``pattern`` repeated to n_layer (it must contain ``attn``), or ``attn`` everywhere."""
    check_mixer(attn)
    if not pattern:
        return [attn] * n_layer
    names = [check_mixer(n) for n in pattern]
    if n_layer % len(names) or attn not in names:
        raise ValueError(f"model.pattern {names} must divide model.n_layer ({n_layer}) and contain attn={attn} "
                         "(whose options it takes; the other names use their defaults)")
    return names * (n_layer // len(names))


def resolve_pos(pos: str | None, names: list[str]) -> str:
    """``pos``, or the default of the layers' mixers; rope and alibi need an attention layer to act on."""
    pos = pos if pos is not None else default_pos(names)
    if pos not in POSITIONS:
        raise ValueError(f"unknown model.pos '{pos}'; choose one of: {', '.join(POSITIONS)}")
    if pos in ("rope", "alibi") and not any(family(n) == "attention" for n in names):
        raise ValueError(f"model.pos={pos} acts inside attention, and {sorted(set(names))} has none: "
                         "use model.pos=none or learned")
    return pos


class ICLTransformer(nn.Module):
    """read-in → blocks → LayerNorm → read-out; predicts y_i at every x_i from tokens before it."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        if not 1 <= c.y_dim <= c.n_dims:
            raise ValueError(f"y_dim ({c.y_dim}) must be in 1..n_dims ({c.n_dims}): a y token is as wide as an x token")
        names = layer_mixers(c.attn, c.pattern, c.n_layer)
        self.pos = resolve_pos(c.pos, names)
        if c.qk_norm and not any(family(n) == "attention" for n in names):
            raise ValueError(f"model.qk_norm applies to attention layers; {sorted(set(names))} has none: "
                             "set model.qk_norm=false")
        self.read_in = nn.Linear(c.n_dims, c.n_embd)
        if self.pos == "learned":  # the only positions with parameters (old checkpoints: always these)
            self.wpe = nn.Embedding(2 * c.n_positions, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.n_embd, c.n_head, name, c.attn_params if name == c.attn else None,
                                          c.dropout, c.activation, c.qk_norm and family(name) == "attention",
                                          c.layer_scale, c.mlp, c.layer_norm, self.pos)
                                    for name in names)
        self.ln_f = nn.LayerNorm(c.n_embd) if c.layer_norm else nn.Identity()
        self.read_out = nn.Linear(c.n_embd, c.y_dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2's N(0, 0.02) init: small weights keep early residual streams near the identity.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(self, xs: Tensor, ys: Tensor) -> Tensor:
        """The residual stream before the first block: read-in of the interleaved tokens (+ learned positions)."""
        h = self.read_in(interleave(xs, ys))  # (B, T, C)
        if self.pos == "learned":
            h = h + self.wpe.weight[: h.shape[1]]  # = wpe(arange(T)), without building the indices every step
        return self.drop(h)

    def forward(self, xs: Tensor, ys: Tensor) -> Tensor:
        """xs (B, n, d), ys (B, n) → predictions (B, n) read at the x positions ((B, n, y_dim) for vector y)."""
        B, n, d = xs.shape
        if d != self.config.n_dims:
            raise ValueError(f"prompts have {d} dims but the model was built for {self.config.n_dims}")
        if n > self.config.n_positions:
            raise ValueError(f"prompts have {n} points but model.n_positions is {self.config.n_positions}")
        if (ys.shape[-1] if ys.ndim == 3 else 1) != self.config.y_dim:
            raise ValueError(f"ys {tuple(ys.shape)} do not match the model's y_dim = {self.config.y_dim}")
        h = self.embed(xs, ys)  # (B, T, C)
        # Only the x positions are read out, and after the last attention every op is per token: the last block
        # returns the x positions only, and LayerNorm and read-out run on those (half the tokens).
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            h = block(h, x_only=i == last)  # (B, T, C); (B, n, C) after the last block
        if last < 0:
            h = h[:, ::2]
        out = self.read_out(self.ln_f(h))  # predictions at x positions: (B, n, y_dim)
        return out[..., 0] if self.config.y_dim == 1 else out


# TransformerConfig fields a job fills in from other groups (task, attn), not from ``model``.
FROM_TASK = ("n_dims", "attn", "attn_params", "y_dim")
MODEL_KEYS = tuple(f.name for f in fields(TransformerConfig) if f.name not in FROM_TASK)


@dataclass(frozen=True)
class ModelSpec:
    """A ``configs/model/*.yaml`` node, checked: the keys every model file sets, and ``options`` for the other
    ``TransformerConfig`` fields a file may set (e.g. ``activation``)."""

    name: str
    n_embd: int
    n_layer: int
    n_head: int
    n_positions: int
    dropout: float
    qk_norm: bool
    layer_scale: float | None
    options: dict[str, Any]

    @classmethod
    def from_config(cls, node: dict[str, Any]) -> "ModelSpec":
        node = dict(node)
        known_keys(node, ["name", *MODEL_KEYS], "model")
        for key in ("n_layer", "n_head", "n_embd", "n_positions"):
            value = node.get(key)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            require(ok, f"model.{key}", "must be an integer >= 1", value)
        require(node["n_embd"] % node["n_head"] == 0, "model.n_embd",
                f"must be a multiple of model.n_head={node['n_head']}", node["n_embd"])
        named = [f.name for f in fields(cls) if f.name != "options"]
        options = {k: v for k, v in node.items() if k not in named}
        spec = cls(**typed_fields(cls, {**{k: node.get(k) for k in named if k in node}, "options": options},
                                  "model", skip=("options",)))
        require(0 <= spec.dropout < 1, "model.dropout", "must be in [0, 1)", spec.dropout)
        return spec

    def transformer_keys(self) -> dict[str, Any]:
        """The ``TransformerConfig`` keyword arguments this spec sets."""
        return {**{k: getattr(self, k) for k in MODEL_KEYS if hasattr(self, k)}, **self.options}


@torch.inference_mode()
def predict_model(model: nn.Module, xs: Tensor, ys: Tensor, batch_size: int) -> Tensor:
    """Model predictions (P, n) in batches, on the model's device, returned on CPU."""
    device = next(model.parameters()).device
    model.eval()
    out = [model(x.to(device), y.to(device)).float().cpu() for x, y in zip(xs.split(batch_size), ys.split(batch_size))]
    return torch.cat(out)
