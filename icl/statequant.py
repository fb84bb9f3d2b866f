"""Fake quantisation of the feature maps and the recurrent state of linear-cost mixers (``quant=state_fq``).

A linear-cost mixer never forms attention weights: its queries and keys go through feature maps into a recurrence
whose state (d_k × d_v per head, or d_state per channel) carries everything the context has said. That state is
what a low-precision inference kernel would store between tokens, and it is where the in-context examples meet.

The boundary is the recurrence, not the mixer: six mixers share four primitives, and this module has one quantised
form of each —

=========================  =====================================  ======================  =======================
primitive                  mixers                                 features (per token)    state (per row, each t)
=========================  =====================================  ======================  =======================
causal_linear_attention    linear, performer (kernels)            φ(q), φ(k)              Σ φ(k) vᵀ and Σ φ(k)
decay_linear_attention     mamba2, retnet                         q, k (C, B in mamba2)   S_t = a_t S_{t−1} + k vᵀ
delta_rule                 deltanet                               q, k                    S_t (delta-rule update)
selective_scan(_fused)     mamba                                  B_t, C_t                h_t (D × d_state)
=========================  =====================================  ======================  =======================

``QuantizedMixer`` wraps a block's mixer and runs it inside ``icl.routing.routed``: each primitive carries a hook
that, for the calls made inside that block and in that thread only, runs its quantised form from here instead; no
global is rebound, so differently quantised models can run in parallel threads. No mixer holds quantisation code and
a new mixer built on a primitive is covered. Features are rounded once
per token (one scale per token and head over the feature dimension); with ``state`` the recurrence runs token by
token and its state is rounded after every update (one scale per state row), the precision a state stored in
``bits``-bit integers between tokens would have. Every scale reads one token's values or the state at that token,
so causality is unchanged. A simulation (float32 storage, O(T) Python steps): for evaluation, not training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from icl.fakequant import fake_quant
from icl.routing import routed

STATE_TENSORS = ("features", "state")  # what the wrapper rounds: the recurrence's q/k-like inputs, its state
RECURRENT_MIXERS = ("linear", "performer", "mamba", "mamba2", "deltanet", "retnet")  # for messages and docs


def _wide(t: Tensor) -> Tensor:
    """At least float32, as the fast forms compute."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _rows(bits: int) -> Callable[[Tensor], Tensor]:
    return lambda x: fake_quant(x, bits, (-1,))


def linear_attention_steps(phi_q: Tensor, phi_k: Tensor, v: Tensor, fq: Callable[[Tensor], Tensor]) -> Tensor:
    """``causal_linear_attention`` token by token, the state S = Σ φ(k) vᵀ (m × hs) and normaliser z = Σ φ(k) (m)
    passed through ``fq`` after every update."""
    B, H, T, m = phi_q.shape
    S, z = phi_q.new_zeros(B, H, m, v.shape[-1]), phi_q.new_zeros(B, H, m)
    outs = []
    for t in range(T):
        S = fq(S + phi_k[:, :, t, :, None] * v[:, :, t, None, :])
        z = fq(z + phi_k[:, :, t])
        den = (phi_q[:, :, t] * z).sum(-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
        outs.append((phi_q[:, :, t, None, :] @ S)[:, :, 0] / den)
    return torch.stack(outs, dim=2)


def decay_steps(q: Tensor, k: Tensor, v: Tensor, log_a: Tensor, fq: Callable[[Tensor], Tensor]) -> Tensor:
    """``decay_linear_attention`` token by token: S_t = fq(a_t S_{t−1} + k_t v_tᵀ) (dk × dv), o_t = S_tᵀ q_t."""
    q, k, v, log_a = (_wide(t) for t in (q, k, v, log_a))
    batch, H, T, dk = q.shape
    decay = (log_a[None, :, None].expand(batch, H, T) if log_a.ndim == 1 else log_a).exp()
    S = q.new_zeros(batch, H, dk, v.shape[-1])
    outs = []
    for t in range(T):
        S = fq(decay[:, :, t, None, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :])
        outs.append((q[:, :, t, None, :] @ S)[:, :, 0])
    return torch.stack(outs, dim=2)


def delta_steps(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, fq: Callable[[Tensor], Tensor]) -> Tensor:
    """``delta_rule`` token by token: S_t = fq(S_{t−1} + β_t (v_t − S_{t−1} k_t) k_tᵀ) (dv × dk), o_t = S_t q_t."""
    q, k, v, beta = (_wide(t) for t in (q, k, v, beta))
    batch, H, T, dk = q.shape
    S = q.new_zeros(batch, H, v.shape[-1], dk)
    outs = []
    for t in range(T):
        kt = k[:, :, t]
        u = beta[:, :, t, None] * (v[:, :, t] - (S @ kt[..., None])[..., 0])
        S = fq(S + u[..., :, None] * kt[..., None, :])
        outs.append((S @ q[:, :, t, :, None])[..., 0])
    return torch.stack(outs, dim=2)


def selective_steps(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                    fq: Callable[[Tensor], Tensor]) -> Tensor:
    """``selective_scan`` token by token: h_t = fq(exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t) (D × N), y_t = h_t C_t."""
    x, delta, A, B, C = (_wide(t) for t in (x, delta, A, B, C))
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    outs = []
    for t in range(x.shape[1]):
        h = fq(torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * x[:, t])[..., None] * B[:, t, None, :])
        outs.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(outs, dim=1)


def quantized_primitives(bits: int, tensors: tuple[str, ...], calls: list[int]) -> dict[str, Callable]:
    """Each primitive's route (``icl.routing``) to its quantised form at ``bits`` (features and/or state); each call
    counts in ``calls[0]``. With the state in float, the primitive itself (``plain``) runs on the rounded features."""
    feat = _rows(bits) if "features" in tensors else (lambda x: x)
    state = _rows(bits) if "state" in tensors else None

    def linear(plain: Callable, phi_q: Tensor, phi_k: Tensor, v: Tensor, chunk: int = 64) -> Tensor:
        calls[0] += 1
        phi_q, phi_k = feat(phi_q), feat(phi_k)
        return linear_attention_steps(phi_q, phi_k, v, state) if state else plain(phi_q, phi_k, v, chunk)

    def decay(plain: Callable, q: Tensor, k: Tensor, v: Tensor, log_a: Tensor, chunk: int = 64) -> Tensor:
        calls[0] += 1
        q, k = feat(q), feat(k)
        return decay_steps(q, k, v, log_a, state) if state else plain(q, k, v, log_a, chunk)

    def delta(plain: Callable, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, chunk: int = 64) -> Tensor:
        calls[0] += 1
        q, k = feat(q), feat(k)
        return delta_steps(q, k, v, beta, state) if state else plain(q, k, v, beta, chunk)

    def scan(plain: Callable, x: Tensor, delta_t: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
        calls[0] += 1
        B, C = feat(B), feat(C)
        return selective_steps(x, delta_t, A, B, C, state) if state else plain(x, delta_t, A, B, C)

    return {"causal_linear_attention": linear, "decay_linear_attention": decay, "delta_rule": delta,
            "selective_scan": scan}


def uses_recurrence(mixer: nn.Module, n_embd: int) -> bool:
    """Whether ``mixer`` computes through one of the primitives (a dry run on two zero tokens)."""
    calls = [0]
    with torch.no_grad(), routed(quantized_primitives(32, (), calls)):
        mixer(torch.zeros(1, 2, n_embd))
    return calls[0] > 0


class QuantizedMixer(nn.Module):
    """A sequence mixer whose recurrence runs with ``bits``-bit feature maps and/or state (module doc)."""

    def __init__(self, inner: nn.Module, bits: int, tensors: tuple[str, ...] = STATE_TENSORS) -> None:
        super().__init__()
        self.inner, self.bits, self.tensors = inner, bits, tuple(tensors)
        self._calls = [0]
        self._replacements = quantized_primitives(bits, self.tensors, self._calls)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        before = self._calls[0]
        with routed(self._replacements):
            out = self.inner(*args, **kwargs)
        if self._calls[0] == before:  # the mixer bypassed every primitive: nothing was quantised
            raise ValueError(f"{type(self.inner).__name__} ran no recurrence this wrapper quantises "
                             f"({', '.join(RECURRENT_MIXERS)} do)")
        return out

    def state_floats(self, T: int) -> int:
        return self.inner.state_floats(T)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, tensors={list(self.tensors)}"


def recurrent_blocks(model: nn.Module) -> list[int]:
    """The blocks whose mixer runs through a quantisable recurrence."""
    n_embd = model.config.n_embd
    return [i for i, block in enumerate(getattr(model, "blocks", ())) if uses_recurrence(block.attn, n_embd)]


def wrap_mixers(model: nn.Module, bits: int, tensors: tuple[str, ...], blocks: tuple[int, ...] | None = None) -> int:
    """Wrap the mixer of every block (or of ``blocks``) of ``model`` in place; returns how many."""
    ok = set(recurrent_blocks(model))
    wrapped = 0
    for i, block in enumerate(getattr(model, "blocks", ())):
        if blocks is None or i in blocks:
            if i not in ok:
                kernel = getattr(block.attn, "kernel", None)
                name = type(kernel if kernel is not None else block.attn).__name__
                raise ValueError(f"state fake-quant needs a linear-cost mixer ({', '.join(RECURRENT_MIXERS)}); layer "
                                 f"{i} is {name}: use quant=attn_fq for attention kernels")
            block.attn = QuantizedMixer(block.attn, bits, tensors)
            wrapped += 1
    return wrapped
