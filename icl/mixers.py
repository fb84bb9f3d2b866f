"""Sequence mixers: the block-level slot (B, T, C) → (B, T, C), chosen by name (``attn=<name>``).

A block is x + mixer(ln(x)), then x + mlp(ln(x)) (``icl.transformer``). A mixer maps (B, T, C) to (B, T, C), or
with ``x_only`` to the x positions (even tokens) only, (B, T/2, C). Two families:

- **attention**: ``SelfAttention`` = q, k, v projections + a kernel + the output projection. Every kernel of
  ``icl.attention.ATTENTION`` (softmax, relu, …) is one, and so are the masked softmax patterns registered here
  (``sliding_window``, ``bigbird``). Positions: learned (default), none, rope (rotates q and k) or alibi (a linear
  distance bias on the scores; the softmax-based kernels only).
- **recurrent**: a state of fixed size per sequence, read and written token by token (``mamba``, ``mamba2``,
  ``deltanet``, ``retnet``): the order is in the recurrence, so they default to no positions.

One name space: ``build_mixer(name, …)`` looks ``name`` up in ``ATTENTION`` and then in ``MIXERS`` (this module's
registry), and an unknown name is one line listing both. Every mixer is strictly causal (tests/test_mixers.py runs
the whole name space through the model) and reports ``state_floats(T)``: the floats one sequence keeps to generate
the next token after T tokens (the KV cache of attention, the recurrent state of the others).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icl.attention import ATTENTION, Kernel, SoftmaxAttention, build_attention, positive
from icl.registry import Registry
from icl.scans import decay_linear_attention, delta_rule, selective_scan, selective_scan_fused

MIXERS: Registry[Any] = Registry("sequence mixer", "attn")
POSITIONS = ("learned", "none", "rope", "alibi")


def mixer_names() -> list[str]:
    """Every name ``attn=`` accepts: the attention kernels, then this module's mixers."""
    return [*ATTENTION, *MIXERS]


def check_mixer(name: str) -> str:
    if name not in ATTENTION and name not in MIXERS:
        raise ValueError(f"unknown sequence mixer '{name}'; choose one of: {', '.join(mixer_names())} (config key: attn)")
    return name


def family(name: str) -> str:
    """'attention' (q, k, v and a kernel; positions apply) or 'recurrent' (a fixed-size state; no positions)."""
    return "attention" if check_mixer(name) in ATTENTION else MIXERS.meta(name, "family")


def default_pos(names: list[str]) -> str:
    """learned when any layer attends (its kernel cannot tell positions apart otherwise), else none."""
    return "learned" if any(family(n) == "attention" for n in names) else "none"


# ----------------------------------------------------------------------------------------------------------------------
# Positions inside attention: RoPE (Su et al. 2021) and ALiBi (Press et al. 2022).


def rope(x: Tensor) -> Tensor:
    """Rotate (B, nh, T, hs) pairs (x_i, x_{i+hs/2}) by angle t·10000^(−2i/hs) at position t (rotate-half form)."""
    T, hs = x.shape[-2], x.shape[-1]
    freq = 10000.0 ** (-torch.arange(0, hs // 2, device=x.device, dtype=torch.float32) * 2 / hs)
    angle = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * freq  # (T, hs/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., : hs // 2], x[..., hs // 2:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def alibi_slopes(n_head: int) -> Tensor:
    """The geometric head slopes 2^(−8h/nh), h = 1 … nh."""
    return torch.tensor([2.0 ** (-8.0 * h / n_head) for h in range(1, n_head + 1)])


def alibi_bias(slopes: Tensor, T: int, dtype: torch.dtype) -> Tensor:
    """(nh, T, T) additive score bias −m_h·(i − j): a query prefers recent keys (j > i is masked anyway)."""
    pos = torch.arange(T, device=slopes.device)
    return (-slopes[:, None, None] * (pos[:, None] - pos[None, :]).clamp_min(0)).to(dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Masked softmax kernels: softmax over an allowed set of earlier tokens (always including the token itself).


class MaskedSoftmax(Kernel):
    """softmax over the keys ``allowed(T)[i]`` (a subset of j <= i) via ``scaled_dot_product_attention``.

    ``bias`` (nh, T, T), optional, is added to the scores (ALiBi). Cost O(T²·hs) (the masked pairs are computed).
    """

    pairwise = True

    def allowed(self, T: int, device: torch.device) -> Tensor:
        return torch.ones(T, T, dtype=torch.bool, device=device).tril()

    def forward(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
        mask = self.allowed(q.shape[-2], q.device)
        if bias is not None:
            mask = bias.to(q.dtype).masked_fill(~mask, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class SlidingWindow(MaskedSoftmax):
    """Softmax over the last ``window`` tokens (i − window < j <= i): Longformer's local band, causal.

    Beyond T = 2·window, in blocks of w = window queries that read their own and the previous block of keys (the
    band, masked inside the (w × 2w) tile): O(T·w·hs) time and memory instead of the full masked (T × T)."""

    def __init__(self, head_dim: int, window: int = 8) -> None:
        super().__init__(head_dim)
        self.window = positive("attn.window", window)

    def allowed(self, T: int, device: torch.device) -> Tensor:
        i, j = torch.arange(T, device=device)[:, None], torch.arange(T, device=device)[None, :]
        return (j <= i) & (j > i - self.window)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
        T, w = q.shape[-2], self.window
        if type(self) is not SlidingWindow or T <= 2 * w:
            return super().forward(q, k, v, bias)
        n = -(-T // w)
        pad = n * w - T
        qb = F.pad(q, (0, 0, 0, pad)).unflatten(-2, (n, w))  # (B, nh, n, w, hs)
        kp, vp = (F.pad(t, (0, 0, w, pad)) for t in (k, v))  # one block of zeros in front: block b reads b−1, b
        kb, vb = (torch.cat((t[..., :-w, :].unflatten(-2, (n, w)), t[..., w:, :].unflatten(-2, (n, w))), dim=-2)
                  for t in (kp, vp))  # (B, nh, n, 2w, hs)
        r, c = torch.arange(w, device=q.device)[:, None], torch.arange(2 * w, device=q.device)[None, :]
        band = (c <= w + r) & (c > r)  # key (b−1)·w + c for query b·w + r: j <= i and j > i − w
        mask = band.expand(n, w, 2 * w).clone()
        mask[0, :, :w] = False  # the zero block in front of the first
        if bias is not None:
            rows = (torch.arange(n, device=q.device)[:, None, None] * w + r).clamp_max(T - 1)
            cols = (torch.arange(n, device=q.device)[:, None, None] * w + c - w).clamp(0, T - 1)
            mask = bias[:, rows, cols].to(q.dtype).masked_fill(~mask, float("-inf"))  # (nh, n, w, 2w)
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)
        return out.flatten(-3, -2)[..., :T, :]

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, window={self.window}"


class BigBird(SlidingWindow):
    """Causal BigBird pattern (Zaheer et al. 2020): the window, the first ``n_global`` tokens for every query, and
    ``n_random`` random earlier tokens per query outside both, drawn from (``seed``, query index) so that query i
    reads the same tokens at every sequence length. Global tokens read only what is before them (causal)."""

    def __init__(self, head_dim: int, window: int = 8, n_global: int = 1, n_random: int = 2, seed: int = 0) -> None:
        super().__init__(head_dim, window)
        if isinstance(n_global, bool) or not isinstance(n_global, int) or n_global < 0:
            raise ValueError(f"attn.n_global must be an integer >= 0, got {n_global!r}")
        if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
            raise ValueError(f"attn.n_random must be an integer >= 0, got {n_random!r}")
        self.n_global, self.n_random, self.seed = n_global, n_random, int(seed)
        self._masks: dict[int, Tensor] = {}  # T -> mask on the CPU (a pure function of T and the options)

    def allowed(self, T: int, device: torch.device) -> Tensor:
        if T not in self._masks:
            mask = super().allowed(T, torch.device("cpu"))
            mask[:, : self.n_global] |= torch.ones(T, self.n_global, dtype=torch.bool).tril()
            generator = torch.Generator()
            for i in range(T):
                lo, hi = self.n_global, i - self.window + 1  # candidates: neither global nor in the window
                if hi > lo and self.n_random:
                    generator.manual_seed(self.seed * 1_000_003 + i)
                    mask[i, lo + torch.randperm(hi - lo, generator=generator)[: self.n_random]] = True
            self._masks[T] = mask
        return self._masks[T].to(device)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, window={self.window}, n_global={self.n_global}, "
                f"n_random={self.n_random}, seed={self.seed}")


# ----------------------------------------------------------------------------------------------------------------------
# The attention mixer.


class SelfAttention(nn.Module):
    """Multi-head projections around a pluggable attention kernel (``icl.attention``, or a kernel instance).

    ``pos``: 'rope' rotates q and k after qk-norm; 'alibi' adds −m_h·(i − j) to the scores (softmax-based kernels).
    """

    def __init__(self, n_embd: int, n_head: int, attn: str | Kernel, attn_params: dict[str, Any] | None = None,
                 qk_norm: bool = False, pos: str = "learned") -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"model.n_embd ({n_embd}) must be divisible by model.n_head ({n_head})")
        self.n_head, self.pos = n_head, pos
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        hs = n_embd // n_head
        kernel = build_attention(attn, head_dim=hs, **(attn_params or {})) if isinstance(attn, str) else attn
        if pos == "alibi":
            if type(kernel) is SoftmaxAttention:  # the same softmax, through the masked form that takes a bias
                kernel = MaskedSoftmax(hs)
            if not isinstance(kernel, MaskedSoftmax):
                raise ValueError(f"model.pos=alibi needs a softmax kernel (softmax, sliding_window, bigbird), "
                                 f"not {type(kernel).__name__}: use model.pos=rope, learned or none")
            self.register_buffer("slopes", alibi_slopes(n_head), persistent=False)
        if pos == "rope" and hs % 2:
            raise ValueError(f"model.pos=rope needs an even head size, got n_embd/n_head = {hs}")
        self.kernel = kernel
        # qk-norm (ViT-22B, Wortsman et al. 2023, Ramapuram et al. 2024): LayerNorm over the head dim of q and k,
        # shared by the heads, before the kernel; per-token, so causality is untouched. Off: plain identity.
        self.q_norm = nn.LayerNorm(hs) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(hs) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, x_only: bool = False) -> Tensor:
        """(B, T, C) → (B, T, C), or (B, T/2, C) at the x positions (even tokens) only with ``x_only``."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.pos == "rope":
            q, k = rope(q), rope(k)
        x_queries = x_only and getattr(self.kernel, "x_queries", False)  # the kernel computes the x queries only
        if self.pos == "alibi":
            y = self.kernel(q, k, v, bias=alibi_bias(self.slopes, T, q.dtype))
        elif x_queries:
            y = self.kernel(q, k, v, x_only=True)  # (B, nh, T/2, hs)
        else:
            y = self.kernel(q, k, v)  # (B, nh, T, hs)
        if x_only and not x_queries:
            y = y[:, :, ::2]  # (B, nh, T/2, hs)
        return self.proj(y.transpose(1, 2).reshape(B, y.shape[2], C))

    def state_floats(self, T: int) -> int:
        """The KV cache: keys and values of the tokens a query can read (a window caps it)."""
        window = getattr(self.kernel, "window", None)
        seen = T if window is None or isinstance(self.kernel, BigBird) else min(T, window)
        return 2 * self.qkv.in_features * seen


def _attention_pattern(kernel: type[MaskedSoftmax]) -> Any:
    def build(n_embd: int, n_head: int, qk_norm: bool = False, pos: str = "learned", **params: Any) -> SelfAttention:
        return SelfAttention(n_embd, n_head, kernel(head_dim=n_embd // n_head, **params), qk_norm=qk_norm, pos=pos)

    build.__doc__ = kernel.__doc__
    return build


MIXERS.add("sliding_window", _attention_pattern(SlidingWindow), family="attention")
MIXERS.add("bigbird", _attention_pattern(BigBird), family="attention")


# ----------------------------------------------------------------------------------------------------------------------
# Recurrent mixers.


def _inverse_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


def _initial_dt(size: int, dt_min: float, dt_max: float) -> Tensor:
    """Δ at init log-uniform in [dt_min, dt_max], stored as softplus⁻¹ (Gu & Dao 2023's initialisation)."""
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return _inverse_softplus(dt.clamp_min(1e-4))


def _causal_conv(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """Depthwise conv over time, left-padded (kernel − 1 zeros), so token t reads tokens t − k + 1 … t: (B, T, D).

    As k shifted multiply-adds on (B, T, D) (the conv module holds the weights): a CPU's depthwise conv backward
    is several times slower at these sizes."""
    T, K = x.shape[1], conv.kernel_size[0]
    padded = F.pad(x, (0, 0, K - 1, 0))
    w = conv.weight[:, 0].t()  # (K, D)
    out = conv.bias + padded[:, :T] * w[0]
    for k in range(1, K):
        out = torch.addcmul(out, padded[:, k:k + T], w[k])
    return out


def _check_dt(dt_min: float, dt_max: float) -> None:
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"attn.dt_min and attn.dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")


@MIXERS.register("mamba", family="recurrent")
class Mamba(nn.Module):
    """The selective SSM block (Gu & Dao 2023): in-projection to (u, z), causal depthwise conv + SiLU on u,
    input-dependent Δ (softplus, low rank), B and C; h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t u_t per channel
    (d_state states each, A = −exp(A_log) diagonal), y = C_t·h_t + D·u, gated by SiLU(z), out-projection.
    State per sequence: D·(d_state + d_conv − 1) floats, D = expand·C. ``scan``: 'fused' (token by token: a compiled
    kernel on a CPU, else a PyTorch loop with a hand-written backward; the fastest) or 'parallel' (log-depth)."""

    SCANS = {"fused": selective_scan_fused, "parallel": selective_scan}

    def __init__(self, n_embd: int, n_head: int, d_state: int = 16, expand: int = 2, d_conv: int = 4,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 0.1, scan: str = "fused",
                 qk_norm: bool = False, pos: str = "none") -> None:
        super().__init__()
        if scan not in self.SCANS:
            raise ValueError(f"unknown attn.scan '{scan}'; choose one of: {', '.join(self.SCANS)}")
        self.scan = scan
        self.d_state = positive("attn.d_state", d_state)
        self.d_conv = positive("attn.d_conv", d_conv)
        self.d_inner = D = positive("attn.expand", expand) * n_embd
        self.dt_rank = positive("attn.dt_rank", dt_rank) if dt_rank is not None else math.ceil(n_embd / 16)
        _check_dt(dt_min, dt_max)
        self.in_proj = nn.Linear(n_embd, 2 * D)
        self.conv = nn.Conv1d(D, D, d_conv, groups=D, padding=d_conv - 1)
        self.x_proj = nn.Linear(D, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, D, bias=False)
        self.dt_bias = nn.Parameter(_initial_dt(D, dt_min, dt_max))  # a Parameter: the model's Linear init keeps it
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(D, 1))
        self.D = nn.Parameter(torch.ones(D))
        self.proj = nn.Linear(D, n_embd)

    def forward(self, x: Tensor, x_only: bool = False) -> Tensor:
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(_causal_conv(self.conv, u))
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt).float() + self.dt_bias.float())
        y = self.SCANS[self.scan](u, delta, -torch.exp(self.A_log.float()), B, C).to(u.dtype) + u * self.D
        y = y * F.silu(z)
        return self.proj(y[:, ::2] if x_only else y)

    def state_floats(self, T: int) -> int:
        return self.d_inner * (self.d_state + self.d_conv - 1)

    def kernel_flops(self, T: int) -> int:
        """The scan, as its recurrence runs per token: Δ·A (DN), Δ·u (D), (Δu)·B (DN), a⊙h + b (2DN), C·h (2DN),
        + D·u (2D); exp, softplus and the projections not counted."""
        D, N = self.d_inner, self.d_state
        return T * (6 * D * N + 3 * D)


@MIXERS.register("mamba2", family="recurrent")
class Mamba2(nn.Module):
    """The SSD block (Dao & Gu 2024): one in-projection to (z, u, B, C, Δ), causal conv + SiLU on (u, B, C), a
    scalar decay a_t = exp(Δ_t A_h) per head, S_t = a_t S_{t−1} + Δ_t u_t B_tᵀ, y_t = S_t C_t + D_h u_t (chunked:
    ``decay_linear_attention``), RMSNorm(y · SiLU(z)), out-projection. Heads of ``head_dim`` channels share B, C.
    State per sequence: D·d_state + (D + 2·d_state)·(d_conv − 1) floats."""

    def __init__(self, n_embd: int, n_head: int, d_state: int = 16, expand: int = 2, d_conv: int = 4,
                 head_dim: int = 16, chunk_size: int = 64, dt_min: float = 1e-3, dt_max: float = 0.1,
                 qk_norm: bool = False, pos: str = "none") -> None:
        super().__init__()
        self.d_state = positive("attn.d_state", d_state)
        self.d_conv = positive("attn.d_conv", d_conv)
        self.d_inner = D = positive("attn.expand", expand) * n_embd
        self.head_dim = positive("attn.head_dim", head_dim)
        self.chunk_size = positive("attn.chunk_size", chunk_size)
        if D % head_dim:
            raise ValueError(f"attn.head_dim ({head_dim}) must divide expand·n_embd ({D})")
        _check_dt(dt_min, dt_max)
        self.n_heads = H = D // head_dim
        self.in_proj = nn.Linear(n_embd, 2 * D + 2 * d_state + H)
        self.conv = nn.Conv1d(D + 2 * d_state, D + 2 * d_state, d_conv, groups=D + 2 * d_state, padding=d_conv - 1)
        self.dt_bias = nn.Parameter(_initial_dt(H, dt_min, dt_max))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = nn.RMSNorm(D)
        self.proj = nn.Linear(D, n_embd)

    def forward(self, x: Tensor, x_only: bool = False) -> Tensor:
        batch, T, _ = x.shape
        D, N, H, P = self.d_inner, self.d_state, self.n_heads, self.head_dim
        z, ubc, dt = self.in_proj(x).split([D, D + 2 * N, H], dim=-1)
        u, B, C = F.silu(_causal_conv(self.conv, ubc)).split([D, N, N], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float()).transpose(1, 2)  # (batch, H, T)
        u = u.view(batch, T, H, P).transpose(1, 2)  # (batch, H, T, P)
        B, C = (t.unsqueeze(1).expand(batch, H, T, N) for t in (B, C))
        y = decay_linear_attention(C, B, u * dt.unsqueeze(-1), dt * -torch.exp(self.A_log.float())[:, None],
                                   self.chunk_size).to(u.dtype)
        y = (y + u * self.D[:, None, None]).transpose(1, 2).reshape(batch, T, D)
        y = self.norm(y * F.silu(z))
        return self.proj(y[:, ::2] if x_only else y)

    def state_floats(self, T: int) -> int:
        return self.d_inner * self.d_state + (self.d_inner + 2 * self.d_state) * (self.d_conv - 1)

    def kernel_flops(self, T: int) -> int:
        """The SSD recurrence per token: Δ·A_h (H), Δ·u (D), a·S (DN), + (Δu)Bᵀ (2DN), S·C (2DN), + D_h·u (2D)."""
        D, N = self.d_inner, self.d_state
        return T * (5 * D * N + 3 * D + self.n_heads)


class _HeadsMixer(nn.Module):
    """q, k, v projections split into heads, an output projection; subclasses mix (B, nh, T, hs) in ``forward``.
    ``d_conv``: a short causal depthwise conv of that width, then SiLU, on q, k, v (Yang et al.'s ShortConvolution);
    None: neither."""

    def __init__(self, n_embd: int, n_head: int, d_conv: int | None = None) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"model.n_embd ({n_embd}) must be divisible by model.n_head ({n_head})")
        self.n_head, self.head_size = n_head, n_embd // n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.d_conv = d_conv or 1
        self.conv = (nn.Conv1d(3 * n_embd, 3 * n_embd, d_conv, groups=3 * n_embd, padding=d_conv - 1)
                     if d_conv is not None else None)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, C = x.shape
        qkv = self.qkv(x) if self.conv is None else F.silu(_causal_conv(self.conv, self.qkv(x)))
        return tuple(t.view(B, T, self.n_head, self.head_size).transpose(1, 2) for t in qkv.split(C, dim=2))

    def state_floats(self, T: int) -> int:
        return self.n_head * self.head_size * self.head_size + 3 * self.qkv.in_features * (self.d_conv - 1)


@MIXERS.register("deltanet", family="recurrent")
class DeltaNet(_HeadsMixer):
    """The delta rule (Schlag et al. 2021; Yang et al. 2024): per head, S_t = S_{t−1} + β_t (v_t − S_{t−1} k_t) k_tᵀ
    (one gradient step of ½|S k_t − v_t|² with step β_t = sigmoid(w·x_t)), o_t = S_t q_t; q, k = L2-normalised
    SiLU features after a short causal depthwise conv on q, k, v (width ``d_conv``; Yang et al.'s ShortConvolution,
    which lets a token's key and value see the tokens just before it: an x and its y are adjacent tokens; 1 = none);
    per-head RMSNorm on o, out-projection. Chunked (``delta_rule``). State: nh·hs² + 3·C·(d_conv − 1) floats."""

    def __init__(self, n_embd: int, n_head: int, chunk_size: int = 64, d_conv: int = 4, qk_norm: bool = False,
                 pos: str = "none") -> None:
        super().__init__(n_embd, n_head, positive("attn.d_conv", d_conv))  # a conv even at width 1 (then a scale)
        self.chunk_size = positive("attn.chunk_size", chunk_size)
        self.beta = nn.Linear(n_embd, n_head)
        self.norm = nn.RMSNorm(self.head_size)

    def kernel_flops(self, T: int) -> int:
        """The delta rule per token and head: S·k (2hs²), v − Sk (hs), β·(…) (hs), S += u·kᵀ (2hs²), S·q (2hs²)."""
        return T * self.n_head * (6 * self.head_size ** 2 + 2 * self.head_size)

    def forward(self, x: Tensor, x_only: bool = False) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.heads(x)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = torch.sigmoid(self.beta(x)).transpose(1, 2)  # (B, nh, T)
        o = self.norm(delta_rule(q, k, v, beta, self.chunk_size).to(x.dtype))
        o = o[:, :, ::2] if x_only else o
        return self.proj(o.transpose(1, 2).reshape(B, o.shape[2], C))


@MIXERS.register("retnet", family="recurrent")
class RetNet(_HeadsMixer):
    """Multi-scale retention (Sun et al. 2023): per head a fixed decay γ_h = 1 − 2^(−5−h),
    o_t = Σ_{j≤t} γ_h^(t−j) (q_t·k_j/√hs) v_j (the recurrence S_t = γ_h S_{t−1} + k_t v_tᵀ, chunked:
    ``decay_linear_attention``), GroupNorm per head, gated by SiLU(W_g x), out-projection. ``rotate``: q and k
    rotated by position as in xPos (its rotation, RoPE, without xPos's length scaling), so a head can single out the
    previous token (an x and its y are adjacent); the decay alone cannot. ``d_conv`` > 1: DeltaNet's short causal
    conv (and SiLU) on q, k, v first, so a y token's key and value carry its x (not part of RetNet as published;
    None or 1 = none, the published form; None is the default, so a config written before the option keeps its
    fingerprint). State: nh·hs² + 3·C·(d_conv − 1) floats."""

    def __init__(self, n_embd: int, n_head: int, chunk_size: int = 64, rotate: bool = True,
                 d_conv: int | None = None, qk_norm: bool = False, pos: str = "none") -> None:
        # no conv at d_conv = 1: a checkpoint of the published form has no conv weights
        conv = d_conv is not None and positive("attn.d_conv", d_conv) > 1
        super().__init__(n_embd, n_head, d_conv if conv else None)
        self.chunk_size = positive("attn.chunk_size", chunk_size)
        if not isinstance(rotate, bool):
            raise ValueError(f"attn.rotate must be true or false, got {rotate!r}")
        if rotate and self.head_size % 2:
            raise ValueError(f"attn.rotate needs an even head size, got n_embd/n_head = {self.head_size}")
        self.rotate = rotate
        self.gate = nn.Linear(n_embd, n_embd)
        self.norm = nn.GroupNorm(n_head, n_embd)
        self.register_buffer("log_decay", torch.log1p(-(2.0 ** (-5.0 - torch.arange(n_head, dtype=torch.float32)))))

    def kernel_flops(self, T: int) -> int:
        """Retention per token and head: q/√hs (hs), γ·S (hs²), + k·vᵀ (2hs²), Sᵀ·q (2hs²); the rotation not counted."""
        return T * self.n_head * (5 * self.head_size ** 2 + self.head_size)

    def forward(self, x: Tensor, x_only: bool = False) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.heads(x)
        if self.rotate:
            q, k = rope(q), rope(k)
        o = decay_linear_attention(q * self.head_size ** -0.5, k, v, self.log_decay, self.chunk_size).to(x.dtype)
        o = self.norm(o.transpose(1, 2).reshape(B * T, C)).view(B, T, C) * F.silu(self.gate(x))
        return self.proj(o[:, ::2] if x_only else o)


# ----------------------------------------------------------------------------------------------------------------------


def build_mixer(name: str, n_embd: int, n_head: int, params: dict[str, Any] | None = None, qk_norm: bool = False,
                pos: str = "learned") -> nn.Module:
    """The mixer ``name`` with its options (``configs/attn/<name>.yaml``); errors are one line."""
    if check_mixer(name) in ATTENTION:
        return SelfAttention(n_embd, n_head, name, params, qk_norm, pos)
    if qk_norm and family(name) != "attention":
        raise ValueError(f"model.qk_norm applies to attention mixers; {name} has none: set model.qk_norm=false")
    try:  # every entry takes qk_norm and pos; the recurrent ones have no q·k scores or positions to act on
        return MIXERS[name](n_embd, n_head, qk_norm=qk_norm, pos=pos, **(params or {}))
    except TypeError as err:  # an unknown or missing option in configs/attn/<name>.yaml
        raise ValueError(f"sequence mixer '{name}': {err} (check configs/attn/{name}.yaml)") from None
