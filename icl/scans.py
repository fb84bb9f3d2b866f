"""Parallel and chunked forms of the linear recurrences behind the state-space and linear-recurrent mixers.

Each function is the fast form of a recurrence over tokens t = 0 … T−1 whose step-by-step reference lives in
tests/test_mixers.py; all are strictly causal (the output at t reads inputs at positions <= t only) and compute in at
least float32 whatever the input dtype (long products of decays and sums in bfloat16 lose the small terms).

- ``selective_scan``: Mamba's diagonal recurrence h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t (per channel and state),
  by a log-depth (Hillis–Steele) scan of the affine maps (a, b): h ↦ a·h + b; ``selective_scan_fused`` is the same
  recurrence token by token: on a CPU the compiled kernel of ``icl.scan_kernel``, else ``selective_scan_loop``, a
  PyTorch loop with a hand-written backward (one (batch, D, N) state in cache per step instead of
  (batch, T, D, N) tensors per pass, the states the only such tensor it keeps: the faster one on a CPU at short
  lengths).
- ``decay_linear_attention``: S_t = a_t S_{t−1} + k_t v_tᵀ, o_t = S_tᵀ q_t with one scalar decay a_t per head and
  token (Mamba-2's SSD, retention): exact inside a chunk through the (L × L) decay-weighted product, chunk states
  carried across chunks.
- ``delta_rule``: S_t = S_{t−1} + β_t (v_t − S_{t−1} k_t) k_tᵀ, o_t = S_t q_t (DeltaNet): inside a chunk the updates
  solve one unit lower-triangular system (the WY form), chunk states carried across chunks.
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F
from torch import Tensor

from icl import scan_kernel
from icl.routing import recurrence


def _wide(t: Tensor) -> Tensor:
    """At least float32 (float64 stays: the references and gradient checks use it)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@recurrence("selective_scan")
def selective_scan(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """y_t = Σ_n h_t[:, n] C_t[n] with h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t, h_{−1} = 0.

    x, delta (batch, T, D); A (D, N) (negative: decays); B, C (batch, T, N) → y (batch, T, D), float32.
    Cost O(T log T · D · N) time and O(T · D · N) memory per layer (the states are materialised: no fused kernel).
    """
    x, delta, A, B, C = (_wide(t) for t in (x, delta, A, B, C))
    a = torch.exp(delta.unsqueeze(-1) * A)  # (batch, T, D, N), in (0, 1]
    b = (delta * x).unsqueeze(-1) * B.unsqueeze(2)  # (batch, T, D, N)
    T, offset = x.shape[1], 1
    while offset < T:  # after the pass with offset s, (a_t, b_t) composes the maps of tokens t−2s+1 … t
        b = torch.cat((b[:, :offset], a[:, offset:] * b[:, :-offset] + b[:, offset:]), dim=1)
        a = torch.cat((a[:, :offset], a[:, offset:] * a[:, :-offset]), dim=1)
        offset *= 2
    return (b * C.unsqueeze(2)).sum(-1)  # b_t is now h_t


class _Workspace(threading.local):
    """Per thread, the fused scan's CPU state and scratch buffers once a pass is done with them, reused by the next
    passes of the same shapes: on a CPU a fresh buffer this large costs its page faults at every step (the C
    allocator hands memory that large back to the system when it is freed). A GPU's caching allocator already
    keeps its memory; at most ``MAX_BYTES`` are held."""

    MAX_BYTES = 1 << 28

    def __init__(self) -> None:
        self.free: dict[tuple, list[Tensor]] = {}

    def take(self, like: Tensor, shape: tuple[int, ...]) -> Tensor:
        free = self.free.get((tuple(shape), like.dtype, like.device, torch.is_inference_mode_enabled()))
        return free.pop() if free else like.new_empty(shape)

    def give_back(self, *buffers: Tensor) -> None:
        for buffer in buffers:  # an inference tensor stays one: it is only ever handed out in inference mode
            if buffer.device.type != "cpu":
                continue
            key = (tuple(buffer.shape), buffer.dtype, buffer.device, buffer.is_inference())
            if key not in self.free and len(self.free) >= 4:  # a run uses few shapes: drop the others' buffers
                self.free.clear()
            held = sum(b.nbytes for free in self.free.values() for b in free)
            if held + buffer.nbytes <= self.MAX_BYTES:
                self.free.setdefault(key, []).append(buffer)


_workspace = _Workspace()


class _FusedSelectiveScan(torch.autograd.Function):
    """Forward: token by token, b_t = Δ_t x_t B_t written into the state buffer, the decay a_t = exp(Δ_t A) into
    one (batch, D, N) scratch, then h_t = a_t ⊙ h_{t−1} + b_t in place; only the states h_t are kept. Backward: the
    reverse recurrence g_t = C_t dy_t + a_{t+1} ⊙ g_{t+1} (g = ∂loss/∂h_t) token by token, a_t recomputed into the
    scratch, each token's gradients taken while its (batch, D, N) slices are in cache. Why: every fresh
    (T, batch, D, N) tensor costs its page faults and a pass through memory, more than recomputing the exps.
    Inputs are time-major (T, batch, …), so each step reads contiguous memory. The decays are taken as
    2^(Δ_t A log₂e): the same values, and torch's exp2 kernel is the cheaper one on a CPU."""

    @staticmethod
    def forward(ctx, x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
        T, batch, D = x.shape
        dx_col, B_row = (delta * x).unsqueeze(-1), B.unsqueeze(2)
        hs = _workspace.take(x, (T, batch, D, A.shape[1]))
        decay, A2 = _workspace.take(x, hs.shape[1:]), A * _LOG2_E
        for t in range(T):
            torch.mul(dx_col[t], B_row[t], out=hs[t])
            if t:
                hs[t].addcmul_(_decay(delta[t], A2, decay), hs[t - 1])
        _workspace.give_back(decay)
        ctx.save_for_backward(x, delta, A, B, C, hs)
        return (C.unsqueeze(-2) @ hs.transpose(-1, -2))[..., 0, :]  # row vector × matrix: BLAS's fast layout

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, ...]:
        if getattr(ctx, "done", False):  # its states went back to the workspace after the first backward
            raise RuntimeError("attn.scan=fused runs backward once per forward (no retain_graph): use attn.scan=parallel")
        x, delta, A, B, C, hs = ctx.saved_tensors
        dy = dy.contiguous()
        dy_col, C_row, B_row, dx_row = dy.unsqueeze(-1), C.unsqueeze(2), B.unsqueeze(2), (delta * x).unsqueeze(2)
        dB, grad_dx, ddelta_decay = torch.empty_like(B), torch.empty_like(x), torch.empty_like(x)
        ddelta_decay[0] = 0  # h_{−1} = 0: the first decay multiplies nothing
        g, dA, decay, grad_log_a = (_workspace.take(x, hs.shape[1:]) for _ in range(4))
        torch.mul(dy_col[-1], C_row[-1], out=g)  # ∂loss/∂h_t once C_t dy_t is added
        dA.zero_()
        A2 = A * _LOG2_E
        for t in reversed(range(x.shape[0])):
            if t < x.shape[0] - 1:
                g.addcmul_(dy_col[t], C_row[t])
            torch.bmm(B_row[t], g.transpose(1, 2), out=grad_dx[t].unsqueeze(1))  # ∂loss/∂(Δ_t x_t)
            torch.bmm(dx_row[t], g, out=dB[t].unsqueeze(1))
            if t:
                g.mul_(_decay(delta[t], A2, decay))
                torch.mul(g, hs[t - 1], out=grad_log_a)  # ∂loss/∂(Δ_t A) = ∂loss/∂h_t ⊙ a_t ⊙ h_{t−1}
                dA.addcmul_(grad_log_a, delta[t].unsqueeze(-1))
                torch.sum(grad_log_a.mul_(A), -1, out=ddelta_decay[t])
        ctx.done = True
        dA_sum = dA.sum(0)
        dC = (dy.unsqueeze(-2) @ hs)[..., 0, :]  # ∂loss/∂C_t = h_tᵀ dy_t, every token in one product
        _workspace.give_back(hs, g, dA, decay, grad_log_a)
        return grad_dx * delta, grad_dx * x + ddelta_decay, dA_sum, dB, dC


_LOG2_E = 1.4426950408889634


def _decay(delta_t: Tensor, A2: Tensor, out: Tensor) -> Tensor:
    """a_t = exp(Δ_t A) = 2^(Δ_t A2) with A2 = A log₂e, for one token: (batch, D) × (D, N) → ``out``."""
    return torch.mul(delta_t.unsqueeze(-1), A2, out=out).exp2_()


@recurrence("selective_scan")
def selective_scan_fused(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """``selective_scan`` token by token with a hand-written backward: O(T · D · N) time, one state in flight. On a
    CPU the compiled kernel of ``icl.scan_kernel`` where it builds, else (and on other devices) the PyTorch loop."""
    if scan_kernel.runs(x):  # one dtype for all five (Mamba passes A and Δ in float32 whatever x is)
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in (x, delta, A, B, C)), torch.float32)
        return scan_kernel.KernelSelectiveScan.apply(*(t.to(dtype).contiguous() for t in (x, delta, A, B, C)))
    return selective_scan_loop(x, delta, A, B, C)


def selective_scan_loop(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """The fused scan's PyTorch form: ``_FusedSelectiveScan`` on time-major copies of the inputs."""
    x, delta, B, C = (_wide(t).transpose(0, 1).contiguous() for t in (x, delta, B, C))
    return _FusedSelectiveScan.apply(x, delta, _wide(A), B, C).transpose(0, 1)


def _chunks(t: Tensor, n: int, L: int) -> Tensor:
    """(batch, H, T, f) → (batch, H, n, L, f), or (batch, H, T) → (batch, H, n, L); zero-padded at the end."""
    if t.ndim == 4:
        return F.pad(t, (0, 0, 0, n * L - t.shape[-2])).unflatten(-2, (n, L))
    return F.pad(t, (0, n * L - t.shape[-1])).unflatten(-1, (n, L))


@recurrence("decay_linear_attention")
def decay_linear_attention(q: Tensor, k: Tensor, v: Tensor, log_a: Tensor, chunk: int = 64) -> Tensor:
    """o_t = Σ_{j≤t} (q_t · k_j) · exp(Σ_{j<s≤t} log a_s) · v_j: the recurrence S_t = a_t S_{t−1} + k_t v_tᵀ.

    q, k (batch, H, T, dk); v (batch, H, T, dv); log_a (batch, H, T) or (H,) per head (<= 0) → (batch, H, T, dv).
    Inside a chunk of ``chunk`` tokens the weights exp(cum_i − cum_j) (i >= j, a difference of two cumulative sums
    inside one chunk, so never above 1) form a masked (L × L) matrix; across chunks the state (dk × dv) is carried.
    Cost O(T · (L + dk) · dv) time.
    """
    q, k, v = _wide(q), _wide(k), _wide(v)
    batch, H, T, dk = q.shape
    log_a = _wide(log_a)
    if log_a.ndim == 1:
        log_a = log_a[None, :, None].expand(batch, H, T)
    L = min(chunk, T)
    n = -(-T // L)
    qc, kc, vc = (_chunks(t, n, L) for t in (q, k, v))  # (batch, H, n, L, ·); padded keys are zero
    cum = _chunks(log_a, n, L).cumsum(-1)  # (batch, H, n, L): padded tokens do not decay
    tril = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    decay = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~tril, float("-inf")).exp()  # (…, L, L)
    out = ((qc @ kc.transpose(-2, -1)) * decay) @ vc  # within each chunk
    to_end = torch.exp(cum[..., -1:] - cum).unsqueeze(-1)  # decay from token j to its chunk's end
    local = (kc * to_end).transpose(-2, -1) @ vc  # (batch, H, n, dk, dv): each chunk's own contribution
    state = q.new_zeros(batch, H, dk, v.shape[-1])
    carried = []
    for c in range(n):  # the state before chunk c, then after it
        carried.append(state)
        state = torch.exp(cum[:, :, c, -1])[..., None, None] * state + local[:, :, c]
    carried = torch.stack(carried, dim=2)  # (batch, H, n, dk, dv)
    out = out + (qc * cum.exp().unsqueeze(-1)) @ carried
    return out.flatten(2, 3)[:, :, :T]


@recurrence("delta_rule")
def delta_rule(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, chunk: int = 64) -> Tensor:
    """o_t = S_t q_t with S_t = S_{t−1} + β_t (v_t − S_{t−1} k_t) k_tᵀ, S_{−1} = 0 (one step of online regression).

    q, k (batch, H, T, dk); v (batch, H, T, dv); beta (batch, H, T) in [0, 1] → (batch, H, T, dv).
    In a chunk starting from state S, the updates u_t = β_t (v_t − S_{t−1} k_t) satisfy
    (I + diag(β) tril(K Kᵀ, −1)) U = diag(β) (V − K Sᵀ): one unit lower-triangular solve per chunk, done for all
    chunks at once for the S-free parts (W = A⁻¹ diag(β) K, U₀ = A⁻¹ diag(β) V, U = U₀ − W Sᵀ); then
    O = Q Sᵀ + tril(Q Kᵀ) U and S ← S + Uᵀ K. Cost O(T · L · (dk + dv) + T · dk · dv) time plus the solves.
    """
    q, k, v, beta = (_wide(t) for t in (q, k, v, beta))
    batch, H, T, dk = q.shape
    L = min(chunk, T)
    n = -(-T // L)
    qc, kc, vc = (_chunks(t, n, L) for t in (q, k, v))
    bc = _chunks(beta, n, L).unsqueeze(-1)  # (batch, H, n, L, 1); padded tokens: β = 0, no update
    eye = torch.eye(L, device=q.device)
    system = eye + torch.tril(bc * (kc @ kc.transpose(-2, -1)), diagonal=-1)
    W = torch.linalg.solve_triangular(system, bc * kc, upper=False, unitriangular=True)
    U0 = torch.linalg.solve_triangular(system, bc * vc, upper=False, unitriangular=True)
    inner = (qc @ kc.transpose(-2, -1)).tril()  # (batch, H, n, L, L), j <= i
    state = q.new_zeros(batch, H, v.shape[-1], dk)
    outs = []
    for c in range(n):
        U = U0[:, :, c] - W[:, :, c] @ state.transpose(-2, -1)  # (batch, H, L, dv)
        outs.append(qc[:, :, c] @ state.transpose(-2, -1) + inner[:, :, c] @ U)
        state = state + U.transpose(-2, -1) @ kc[:, :, c]
    return torch.stack(outs, dim=2).flatten(2, 3)[:, :, :T]
