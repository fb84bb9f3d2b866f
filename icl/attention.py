"""Attention variants behind one signature, chosen by name (``attn=<name>``).

Notation: B batch, nh heads, T tokens, hs head size, s = 1/√hs. Every kernel is built as
``cls(head_dim=hs, **params)`` (params from ``configs/attn/<name>.yaml``) and maps ``(q, k, v)``,
each (B, nh, T, hs), to an output (B, nh, T, hs). Every kernel is **strictly causal**: the output at
position i depends only on q, k, v at positions <= i (tests/test_attention.py checks the whole
registry). The projections around the kernel (qkv, output) live in ``icl.transformer`` so variants
differ only where they really differ.

Kernels that accumulate over many tokens (linear, performer, nystrom, combiner) compute in float32
whatever the input dtype, and return the input dtype: prefix sums and triangular solves in bfloat16
lose the small terms that carry the signal.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icl.registry import Registry
from icl.routing import recurrence

ATTENTION: Registry[type[nn.Module]] = Registry("attention", "attn")
register = ATTENTION.register  # class decorator: make a kernel available as ``attn=<name>``


def build_attention(name: str, head_dim: int, **params: object) -> nn.Module:
    """Instantiate an attention kernel by name, with a one-line error listing the known names."""
    kernel = ATTENTION[name]
    try:
        return kernel(head_dim=head_dim, **params)
    except TypeError as err:  # an unknown or missing parameter in configs/attn/<name>.yaml
        raise ValueError(f"attention '{name}': {err} (check configs/attn/{name}.yaml)") from None


def in_float32(forward: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run a kernel's forward in at least float32 (autocast off); return the input dtype."""

    @functools.wraps(forward)
    def wrapper(self: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dtype = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(q.device.type, enabled=False):
            return forward(self, q.to(dtype), k.to(dtype), v.to(dtype)).to(q.dtype)

    return wrapper


def scores(q: Tensor, k: Tensor) -> Tensor:
    """QKᵀ/√hs: (B, nh, T, hs) × (B, nh, S, hs) → (B, nh, T, S)."""
    return (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5


def positive(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class Kernel(nn.Module):
    """Base: remembers the head size (feature maps need it at construction).

    ``pairwise``: the kernel computes a score for every causal pair j <= i (the quadratic ones), so its FLOPs
    include 4·hs per pair and head (``icl.bench.flops``); the others' kernel FLOPs are not counted (a lower bound).
    """

    pairwise = False

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}"


# ----------------------------------------------------------------------------------------------------------------------
# Quadratic kernels: an explicit (T, T) weight matrix with a causal mask.


@register("softmax")
class SoftmaxAttention(Kernel):
    """softmax(s·QKᵀ + causal mask) V via PyTorch's fused ``scaled_dot_product_attention``.

    Cost O(T²·hs) time; O(T) extra memory with the fused CPU/flash kernels. Vaswani et al. 2017.
    """

    pairwise = True
    x_queries = True  # forward takes x_only: the even queries only (the last block's)

    def __init__(self, head_dim: int) -> None:
        super().__init__(head_dim)
        self._x_masks: dict[torch.device, Tensor] = {}  # per device, the mask of the longest prompt seen so far

    def forward(self, q: Tensor, k: Tensor, v: Tensor, x_only: bool = False) -> Tensor:
        """(B, nh, T, hs) → (B, nh, T, hs), or with ``x_only`` the outputs at the even positions (B, nh, T/2, hs),
        computed for those queries only (the same values as slicing the full output)."""
        if not x_only:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q[:, :, ::2], k, v, attn_mask=self.x_mask(q.shape[-2], q.device))

    def x_mask(self, T: int, device: torch.device) -> Tensor:
        """(⌈T/2⌉, T) bool: the query at position 2i reads keys j <= 2i. It does not depend on T, so one mask per
        device serves every shorter length as its top-left corner (evaluation runs many lengths)."""
        mask = self._x_masks.get(device)
        if mask is None or mask.shape[1] < T:
            mask = torch.arange(T, device=device)[None, :] <= torch.arange(0, T, 2, device=device)[:, None]
            self._x_masks[device] = mask
        return mask[: (T + 1) // 2, :T]


def causal_weighted_sum(q: Tensor, k: Tensor, v: Tensor, weight: Callable[[Tensor], Tensor],
                        chunk: int = 256) -> Tensor:
    """Σ_{j≤i} weight(s·q_i·k_j) v_j for every i, one block of ``chunk`` queries at a time.

    ``weight`` is elementwise with weight(−inf) = 0 (ReLU, sigmoid), so the causal mask is a −inf fill of
    the diagonal block only. Blocks skip the keys after them (half the work of the full masked matrix)
    and keep the (chunk × T) intermediates small. Cost O(T²·hs) time, O(chunk·T) memory per block.
    """
    T = q.shape[-2]
    outs = []
    for start in range(0, T, chunk):
        stop = min(start + chunk, T)
        logits = scores(q[..., start:stop, :], k[..., :stop, :])  # (B, nh, c, stop)
        diagonal = torch.ones(stop - start, stop - start, dtype=torch.bool, device=q.device).tril()
        logits[..., start:].masked_fill_(~diagonal, float("-inf"))  # fresh tensor: safe to fill in place
        outs.append(weight(logits) @ v[..., :stop, :])
    return torch.cat(outs, dim=-2)


@register("relu")
class ReLUAttention(Kernel):
    """ReLU(s·QKᵀ) / L, causal mask, L = number of tokens of the whole sequence (Wortsman et al. 2023).

    L is the length of the sequence actually fed in: a model trained on short prompts and evaluated on
    longer ones sees every row divided by the longer L (no renormalisation). Cost O(T²·hs).
    """

    pairwise = True

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return causal_weighted_sum(q, k, v, torch.relu) / q.shape[-2]


@register("relu_causal")
class CausalReLUAttention(Kernel):
    """ReLU(s·QKᵀ) with row i divided by i + 1, the number of tokens it can see (0-based i).

    The seed study's "causal" variant divided by i + 2; this one averages over exactly the visible
    tokens, so its scale does not depend on the sequence length. Cost O(T²·hs).
    """

    pairwise = True

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        seen = torch.arange(1, q.shape[-2] + 1, device=q.device, dtype=q.dtype)[:, None]
        return causal_weighted_sum(q, k, v, torch.relu) / seen


@register("sigmoid")
class SigmoidAttention(Kernel):
    """sigmoid(s·QKᵀ + b), causal mask, b = −log(L) by default (Ramapuram et al. 2024, "sigmoid attention").

    ``bias`` fixes b; null uses −log of the sequence length fed in. Cost O(T²·hs).
    """

    pairwise = True

    def __init__(self, head_dim: int, bias: float | None = None) -> None:
        super().__init__(head_dim)
        self.bias = None if bias is None else float(bias)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b = -math.log(q.shape[-2]) if self.bias is None else self.bias
        return causal_weighted_sum(q, k, v, lambda logits: torch.sigmoid(logits + b))


# ----------------------------------------------------------------------------------------------------------------------
# Kernelised (linear-cost) attention: out_i = Σ_{j≤i} φ(q_i)·φ(k_j) v_j / Σ_{j≤i} φ(q_i)·φ(k_j).


@recurrence("causal_linear_attention")  # a hook for quant=state_fq (icl.routing)
def causal_linear_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, chunk: int = 64) -> Tensor:
    """The causal kernelised attention above, by prefix sums over chunks of ``chunk`` tokens.

    Inside a chunk the (chunk × chunk) masked product is formed directly; across chunks the running
    state Σ_j φ(k_j) v_jᵀ (m × hs) is an exclusive prefix sum. A ones column appended to v carries the
    normaliser. Cost O(T·(chunk·m + m·hs)) time and O(T·m + (T/chunk)·m·hs) memory: linear in T.
    phi_q, phi_k (B, nh, T, m) must be non-negative; v (B, nh, T, hs).
    """
    B, H, T, m = phi_q.shape
    hs = v.shape[-1]
    n = -(-T // chunk)
    pad = n * chunk - T  # zero features on padding: padded keys add nothing
    v1 = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)
    Q, K, V = (F.pad(t, (0, 0, 0, pad)).view(B, H, n, chunk, t.shape[-1]) for t in (phi_q, phi_k, v1))
    kv = K.transpose(-2, -1) @ V  # (B, H, n, m, hs+1): each chunk's Σ φ(k) [v, 1]ᵀ
    state = torch.cat((torch.zeros_like(kv[:, :, :1]), kv[:, :, :-1].cumsum(dim=2)), dim=2)  # earlier chunks only
    num = Q @ state + (Q @ K.transpose(-2, -1)).tril() @ V  # (B, H, n, chunk, hs+1)
    num = num.view(B, H, n * chunk, hs + 1)[:, :, :T]
    return num[..., :hs] / num[..., hs:].clamp_min(torch.finfo(num.dtype).tiny)


@register("linear")
class LinearAttention(Kernel):
    """Linear attention with feature map φ(x) = elu(x) + 1 (Katharopoulos et al. 2020), causal via prefix sums.

    Cost O(T·hs·(chunk + hs)) time, O(T·hs) memory (``causal_linear_attention``).
    """

    def __init__(self, head_dim: int, chunk_size: int = 64) -> None:
        super().__init__(head_dim)
        self.chunk_size = positive("attn.chunk_size", chunk_size)

    @in_float32
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return causal_linear_attention(F.elu(q) + 1, F.elu(k) + 1, v, self.chunk_size)


def orthogonal_gaussian(m: int, d: int, generator: torch.Generator) -> Tensor:
    """m × d random features: stacked blocks of random orthogonal rows, each row rescaled to a χ_d norm.

    Rows are exactly orthogonal within a block and marginally N(0, I_d), which lowers the variance of
    the FAVOR+ estimate (Choromanski et al. 2021, section 2.4).
    """
    blocks = []
    for _ in range(-(-m // d)):
        Q, R = torch.linalg.qr(torch.randn(d, d, generator=generator))
        blocks.append((Q * torch.sign(torch.diagonal(R))).T)  # sign fix: Haar-uniform rows, else biased
    norms = torch.randn(m, d, generator=generator).norm(dim=1, keepdim=True)
    return torch.cat(blocks)[:m] * norms


@register("performer")
class PerformerAttention(Kernel):
    """FAVOR+ (Choromanski et al. 2021): softmax attention estimated with positive orthogonal random features.

    φ(x) = exp(ωᵀx − |x|²/2 − c) / √m with x = q·hs^(−1/4) (or k), so E[φ(q)·φ(k)] ∝ exp(s·q·k).
    The stabiliser c is per query for queries (its own max, cancels in the ratio) and the data-independent
    max_r |ω_r|²/2 for keys (bounds every key feature by 1 without looking at other tokens, so no
    future token can leak in through it). The features are drawn once (``seed``, or torch's RNG) and
    stored in the state dict. Cost O(T·m·(chunk + hs)) time, O(T·m) memory: linear in T.
    """

    def __init__(self, head_dim: int, num_features: int = 64, chunk_size: int = 64, seed: int | None = None) -> None:
        super().__init__(head_dim)
        self.num_features = positive("attn.num_features", num_features)
        self.chunk_size = positive("attn.chunk_size", chunk_size)
        generator = torch.Generator()
        generator.manual_seed(int(torch.randint(2**62, ()).item()) if seed is None else int(seed))
        omega = orthogonal_gaussian(self.num_features, head_dim, generator)
        self.register_buffer("omega", omega)
        self.register_buffer("key_shift", omega.pow(2).sum(1).max() / 2)

    def features(self, x: Tensor, is_query: bool) -> Tensor:
        x = x * self.head_dim ** -0.25
        logits = x @ self.omega.to(x.dtype).T - x.pow(2).sum(-1, keepdim=True) / 2  # (B, nh, T, m)
        shift = logits.amax(-1, keepdim=True).detach() if is_query else self.key_shift.to(x.dtype)
        return torch.exp(logits - shift) * self.num_features ** -0.5

    @in_float32
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return causal_linear_attention(self.features(q, True), self.features(k, False), v, self.chunk_size)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, num_features={self.num_features}"


# ----------------------------------------------------------------------------------------------------------------------
# Local block + summaries of earlier blocks (nystrom, combiner), one softmax normalisation over both.


def block_size(T: int, size: int | None) -> int:
    """Tokens per block: the configured size, or ⌈√T⌉ (balances the local and the summary cost)."""
    return min(T, size if size is not None else math.ceil(math.sqrt(T)))


def local_plus_summaries(q: Tensor, k: Tensor, v: Tensor, c: int,
                         summarise: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]) -> Tensor:
    """Exact softmax inside each query's own block, plus one summary per *earlier* block, one normaliser.

    Blocks are c consecutive tokens. Query i (block t) gets weights exp(s·q_i·k_j) for j ≤ i in block t and
    c·exp(s·q_i·k̄_r) for each block r < t (k̄_r = mean key of block r, standing for its c tokens), with
    value ``U_r = summarise(...)[r]``; every weight is divided by their common sum. Block r < t ends before
    i, so nothing from after i is read: strictly causal. Returns (B, nh, T, hs).
    """
    B, H, T, hs = q.shape
    n = -(-T // c)
    q, k, v = (F.pad(t, (0, 0, 0, n * c - T)) for t in (q, k, v))
    qb, kb, vb = (t.view(B, H, n, c, hs) for t in (q, k, v))
    k_mean, q_mean = kb.mean(3), qb.mean(3)  # (B, H, n, hs); only blocks before the query's own are used
    summaries = summarise(q_mean, k_mean, k, v, kb)  # (B, H, n, hs)
    tril = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    local = scores(qb, kb).masked_fill(~tril, float("-inf"))  # (B, H, n, c, c)
    earlier = torch.arange(n, device=q.device)
    earlier = earlier[None, :] < earlier[:, None]  # (block t, block r): r < t
    past = (scores(q, k_mean) + math.log(c)).view(B, H, n, c, n).masked_fill(~earlier[:, None], float("-inf"))
    top = torch.maximum(local.amax(-1), past.amax(-1)).unsqueeze(-1).detach()  # finite: the diagonal is local
    w_local, w_past = torch.exp(local - top), torch.exp(past - top)
    num = w_local @ vb + w_past @ summaries.unsqueeze(2)  # (B, H, n, c, hs)
    out = num / (w_local.sum(-1) + w_past.sum(-1)).unsqueeze(-1)
    return out.reshape(B, H, n * c, hs)[:, :, :T]


def block_causal_mask(n: int, c: int, device: torch.device) -> Tensor:
    """(n, n·c) bool: summary r may read tokens j of blocks ≤ r (j < (r + 1)·c)."""
    return torch.arange(n * c, device=device)[None, :] < (torch.arange(n, device=device)[:, None] + 1) * c


@register("nystrom")
class NystromAttention(Kernel):
    """Causal Nyström attention (Xiong et al. 2021, "Nyströmformer"), landmarks from completed blocks only.

    The published variant takes segment means over the whole prompt as landmarks, so x_i could read y_i.
    Here the sequence is cut into blocks of c = ⌈T / num_landmarks⌉ tokens (default num_landmarks = ⌈√T⌉);
    landmark r = (mean query, mean key) of block r. Query i attends exactly to its own block (j ≤ i), and
    to landmarks of earlier blocks through Nyström's three factors, each causally masked:
    F = exp(s·q_i·k̄_r) (r < own block, one normaliser with the local part),
    A = softmax_{r' ≤ r}(s·q̄_r·k̄_r') (lower triangular with a positive diagonal: solved exactly, no
    pseudo-inverse iterations), Bᵣ = softmax_{j in blocks ≤ r}(s·q̄_r·k_j); summaries U = A⁻¹ B V.
    Exact softmax when num_landmarks ≥ T (one token per block: U = V) or = 1 (one block).
    Cost O(T·(c + T/c)·hs + (T/c)²·hs): O(T^1.5) at the default, O(T²/m) for a fixed m.

    ``ridge`` > 0 (an option, off by default) solves (A + ridge·I) U = B V instead: a landmark whose query
    attends mostly to earlier landmarks has a tiny diagonal A_rr, and A⁻¹ then multiplies its summary by up to
    1/A_rr per level (the attention branch reached 8·10⁷ times the residual stream in a diverging training run,
    docs/variants.md); the ridge bounds that factor by 1/ridge, keeps A triangular (still causal), and is the
    exact Nyström form at 0.
    """

    def __init__(self, head_dim: int, num_landmarks: int | None = None, ridge: float = 0.0) -> None:
        super().__init__(head_dim)
        self.num_landmarks = None if num_landmarks is None else positive("attn.num_landmarks", num_landmarks)
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
            raise ValueError(f"attn.ridge must be a number >= 0 (0 = exact Nyström), got {ridge!r}")
        self.ridge = float(ridge)

    def landmark_summaries(self, q_mean: Tensor, k_mean: Tensor, k: Tensor, v: Tensor, kb: Tensor) -> Tensor:
        n, c = kb.shape[2], kb.shape[3]
        tril = torch.ones(n, n, dtype=torch.bool, device=k.device).tril()
        kernel = torch.softmax(scores(q_mean, k_mean).masked_fill(~tril, float("-inf")), dim=-1)  # A
        reads = scores(q_mean, k).masked_fill(~block_causal_mask(n, c, k.device), float("-inf"))
        bv = torch.softmax(reads, dim=-1) @ v  # B V: (B, H, n, hs)
        # float64: A is always invertible but its condition grows with the number of landmarks and the
        # score scale (≈10–10⁴ at the default ⌈√T⌉ landmarks in our measurements; 10⁵+ at one per token).
        kernel = kernel.double()
        if self.ridge:
            kernel = kernel + self.ridge * torch.eye(n, dtype=kernel.dtype, device=kernel.device)
        return torch.linalg.solve_triangular(kernel, bv.double(), upper=False).to(bv.dtype)

    @in_float32
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        T = q.shape[-2]
        m = self.num_landmarks or math.ceil(math.sqrt(T))
        return local_plus_summaries(q, k, v, math.ceil(T / min(m, T)), self.landmark_summaries)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, num_landmarks={self.num_landmarks or 'ceil(sqrt(T))'}, ridge={self.ridge}"


@register("combiner")
class CombinerAttention(Kernel):
    """Causal Combiner-Fixed (Ren et al. 2021): direct attention in the local block, plus each earlier block
    through one abstraction, normalised together (the conditional-expectation factorisation
    p(j | i) = p(block r | i) · q(j | block r)).

    Blocks of c tokens (``block_size``, default ⌈√T⌉). p(block r | i) ∝ c·exp(s·q_i·k̄_r) with k̄_r the
    block's mean key, sharing one normaliser with the local weights exp(s·q_i·k_j); the block's local
    expectation is v̂_r = Σ_j softmax_j(s·q̄_r·k_j) v_j with its mean query q̄_r. Exact softmax when c = 1 or
    c ≥ T. Cost O(T·(c + T/c)·hs) = O(T·√T) at the default.
    """

    def __init__(self, head_dim: int, block_size: int | None = None) -> None:
        super().__init__(head_dim)
        self.block_size = None if block_size is None else positive("attn.block_size", block_size)

    @staticmethod
    def block_summaries(q_mean: Tensor, k_mean: Tensor, k: Tensor, v: Tensor, kb: Tensor) -> Tensor:
        B, H, n, c, hs = kb.shape
        within = torch.softmax(scores(q_mean.unsqueeze(3), kb), dim=-1)  # (B, H, n, 1, c): q(j | block r)
        return (within @ v.view(B, H, n, c, hs)).squeeze(3)

    @in_float32
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return local_plus_summaries(q, k, v, block_size(q.shape[-2], self.block_size), self.block_summaries)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, block_size={self.block_size or 'ceil(sqrt(T))'}"
