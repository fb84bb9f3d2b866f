"""Attention variants: strict causality over the whole registry, naive references, gradients, training."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from icl.attention import (
    ATTENTION,
    Kernel,
    build_attention,
    causal_linear_attention,
    causal_weighted_sum,
)
from icl.run.configs import CONFIG_DIR
from icl.run.train import train
from icl.transformer import ICLTransformer, TransformerConfig
from tests.helpers import assert_model_causal, compose_train
from tests.reference import quadratic_linear_attention

VARIANTS = sorted(ATTENTION)
HS = 8


def qkv(T: int, scale: float = 1.0, seed: int = 0, dtype=torch.float32, batch: int = 2, heads: int = 2):
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(batch, heads, T, HS, generator=gen, dtype=dtype) for _ in range(3)]


def naive(q, k, v, weight) -> torch.Tensor:
    """out_i = Σ_{j≤i} weight(i, j, s·q_i·k_j) v_j, one (i, j) at a time: the definition, nothing fused."""
    T = q.shape[-2]
    out = torch.zeros_like(v)
    for i in range(T):
        for j in range(i + 1):
            score = (q[..., i, :] * k[..., j, :]).sum(-1) / math.sqrt(q.shape[-1])
            out[..., i, :] += weight(i, j, score)[..., None] * v[..., j, :]
    return out


def masked_softmax(q, k, v) -> torch.Tensor:
    T = q.shape[-2]
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1) @ v


def leak(kernel, T: int = 29, scale: float = 2.0) -> float:
    """Largest change at positions <= t when every q, k, v after t is replaced, over all t."""
    q, k, v = qkv(T, scale)
    base = kernel(q, k, v)
    worst = 0.0
    for t in range(T - 1):
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[..., t + 1:, :] = scale * torch.randn_like(x[..., t + 1:, :]) + 3.0
        out = kernel(q2, k2, v2)
        worst = max(worst, (out[..., : t + 1, :] - base[..., : t + 1, :]).abs().max().item())
        assert not torch.allclose(out[..., t + 1:, :], base[..., t + 1:, :])  # later positions do see them
    return worst


@pytest.mark.parametrize("name", VARIANTS)
def test_kernel_is_strictly_causal(name):
    torch.manual_seed(0)
    assert leak(build_attention(name, head_dim=HS)) < 1e-5


class LeakyAttention(Kernel):
    """Softmax without the causal mask: the mistake the causality test must catch (not registered)."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_causality_check_catches_a_leak():
    assert leak(LeakyAttention(HS)) > 1e-2


@pytest.mark.parametrize("name", VARIANTS)
def test_model_prediction_i_ignores_y_i_and_later_tokens(name):
    """Through the whole model: perturbing y_i and every later x, y leaves predictions <= i unchanged."""
    torch.manual_seed(0)
    assert_model_causal(ICLTransformer(TransformerConfig(n_dims=4, n_positions=12, n_layer=2, attn=name)).eval())


# --- references -------------------------------------------------------------------------------------------------------


def test_softmax_matches_naive_masked_softmax():
    q, k, v = qkv(23, 2.0)
    torch.testing.assert_close(build_attention("softmax", head_dim=HS)(q, k, v), masked_softmax(q, k, v))


@pytest.mark.parametrize("T", [1, 7, 16])
def test_relu_variants_and_sigmoid_match_their_formulas(T):
    q, k, v = qkv(T, 1.5, dtype=torch.float64)

    def run(name, **params):
        return build_attention(name, head_dim=HS, **params)(q, k, v)

    torch.testing.assert_close(run("relu"), naive(q, k, v, lambda i, j, s: torch.relu(s) / T))
    torch.testing.assert_close(run("relu_causal"), naive(q, k, v, lambda i, j, s: torch.relu(s) / (i + 1)))
    torch.testing.assert_close(run("sigmoid"), naive(q, k, v, lambda i, j, s: torch.sigmoid(s - math.log(T))))
    torch.testing.assert_close(run("sigmoid", bias=0.5), naive(q, k, v, lambda i, j, s: torch.sigmoid(s + 0.5)))


def test_relu_normalises_by_the_length_fed_in():
    """Extended context is evaluated honestly: a longer prompt divides every row by the longer L."""
    q, k, v = qkv(30)
    relu = build_attention("relu", head_dim=HS)
    short, long = relu(q[..., :10, :], k[..., :10, :], v[..., :10, :]), relu(q, k, v)
    torch.testing.assert_close(long[..., :10, :] * 30, short * 10)
    causal = build_attention("relu_causal", head_dim=HS)  # its row scale does not depend on the length
    torch.testing.assert_close(causal(q, k, v)[..., :10, :], causal(q[..., :10, :], k[..., :10, :], v[..., :10, :]))


@pytest.mark.parametrize("T,chunk", [(1, 4), (13, 1), (13, 4), (64, 16), (50, 64)])
def test_prefix_sum_form_matches_quadratic_form(T, chunk):
    q, k, v = qkv(T, dtype=torch.float64)
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    torch.testing.assert_close(causal_linear_attention(phi_q, phi_k, v, chunk), quadratic_linear_attention(phi_q, phi_k, v))


def test_linear_attention_is_the_elu_kernel():
    q, k, v = qkv(40)
    expected = quadratic_linear_attention(F.elu(q) + 1, F.elu(k) + 1, v)
    torch.testing.assert_close(build_attention("linear", head_dim=HS, chunk_size=16)(q, k, v), expected)


def test_performer_prefix_sums_match_its_quadratic_form():
    q, k, v = qkv(40, dtype=torch.float64)
    performer = build_attention("performer", head_dim=HS, num_features=32, chunk_size=8, seed=3).double()
    expected = quadratic_linear_attention(performer.features(q, True), performer.features(k, False), v)
    torch.testing.assert_close(performer(q, k, v), expected)


def test_performer_features_are_orthogonal_and_reloadable():
    performer = build_attention("performer", head_dim=HS, num_features=20, seed=0)
    block = performer.omega[:HS] / performer.omega[:HS].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(HS), atol=1e-5, rtol=0)
    other = build_attention("performer", head_dim=HS, num_features=20, seed=1)
    assert not torch.allclose(other.omega, performer.omega)
    other.load_state_dict(performer.state_dict())  # the features travel with a checkpoint
    torch.testing.assert_close(other.omega, performer.omega)


def test_performer_approaches_softmax_as_features_grow():
    q, k, v = qkv(24, 0.4, batch=4)
    exact = masked_softmax(q, k, v)
    errors = []
    for m in (8, 128, 2048):
        runs = [build_attention("performer", head_dim=HS, num_features=m, seed=s)(q, k, v) for s in range(3)]
        errors.append(sum((r - exact).pow(2).mean().item() for r in runs) / 3)
    assert errors[0] > 3 * errors[1] > 9 * errors[2], errors
    assert errors[2] < 0.01 * exact.pow(2).mean().item(), errors  # m = 2048: within 1% (mean square)


@pytest.mark.parametrize("name,param", [("nystrom", "num_landmarks"), ("combiner", "block_size")])
def test_block_variants_are_exact_softmax_at_their_limits(name, param):
    T = 21
    q, k, v = qkv(T, dtype=torch.float64)
    exact = masked_softmax(q, k, v)
    one_block = {"nystrom": 1, "combiner": T}[name]  # a single block: all attention is direct
    one_per_token = {"nystrom": T, "combiner": 1}[name]  # landmarks/summaries = the tokens themselves
    for value in (one_block, one_per_token):
        torch.testing.assert_close(build_attention(name, head_dim=HS, **{param: value})(q, k, v), exact)
    approx = build_attention(name, head_dim=HS)(q, k, v)  # default ⌈√T⌉ blocks: an approximation, not exact
    assert 1e-6 < (approx - exact).abs().max() < 10


def test_block_variants_approximate_softmax_better_than_ignoring_the_past():
    """Summaries carry information: with them the error is lower than with local attention alone."""
    q, k, v = qkv(64, 0.5, batch=4)
    exact = masked_softmax(q, k, v)
    blocks = torch.arange(64) // 8
    local = (blocks[:, None] == blocks[None, :]).tril()
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(HS)
    local_only = torch.softmax(logits.masked_fill(~local, float("-inf")), -1) @ v
    base = (local_only - exact).pow(2).mean()
    for name, params in (("nystrom", {"num_landmarks": 8}), ("combiner", {"block_size": 8})):
        err = (build_attention(name, head_dim=HS, **params)(q, k, v) - exact).pow(2).mean()
        assert err < 0.5 * base, (name, err, base)


# --- gradients, configs, training -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_are_finite_at_the_longest_training_length(name, dtype):
    """101 points (trees and nets end their curriculum there) = 202 tokens."""
    torch.manual_seed(0)
    model = ICLTransformer(TransformerConfig(n_dims=20, n_positions=101, n_layer=2, attn=name)).to(dtype)
    xs, ys = torch.randn(4, 101, 20, dtype=dtype), torch.randn(4, 101, dtype=dtype)
    loss = (model(xs, ys) - ys).pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_every_variant_has_a_config_and_back():
    from icl.mixers import mixer_names  # the attn group also names the sequence mixers (tests/test_mixers.py)

    names = {p.stem for p in (CONFIG_DIR / "attn").glob("*.yaml")}
    assert names == set(mixer_names()) and set(VARIANTS) <= names


def test_bad_variant_parameters_are_one_clear_line():
    with pytest.raises(ValueError, match="attention 'performer': .*'features'.*configs/attn/performer.yaml"):
        build_attention("performer", head_dim=HS, features=3)
    with pytest.raises(ValueError, match="num_features must be a positive integer, got 0"):
        build_attention("performer", head_dim=HS, num_features=0)
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        build_attention("combiner", head_dim=HS, block_size=-2)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_trains_and_evaluates(name, tmp_path, tiny_overrides):
    cfg = compose_train([*tiny_overrides, f"attn={name}", "trainer.max_steps=40"], tmp_path)
    metrics = train(cfg)
    df = pd.read_csv(tmp_path / "eval.csv")
    assert set(df.attn) == {name}
    assert df[df.predictor == "transformer"].error.notna().all()
    assert math.isfinite(metrics["train/loss"])


@pytest.mark.parametrize("name", ["relu", "softmax"])
def test_extended_context_evaluates_beyond_the_training_length(name, tmp_path, tiny_overrides):
    """Trained on 6-point prompts, evaluated on 12 (the model's position limit), as the seed study's Fig. 9."""
    cfg = compose_train([*tiny_overrides, f"attn={name}", "trainer.max_steps=20", "model.n_positions=12",
                         "eval.n_points=12"], tmp_path)
    train(cfg)
    df = pd.read_csv(tmp_path / "eval.csv")
    transformer = df[df.predictor == "transformer"]
    assert sorted(transformer.k) == list(range(12)) and transformer.error.notna().all()


@pytest.mark.parametrize("T,chunk", [(13, 1), (13, 4), (40, 16), (40, 64)])
def test_blocked_quadratic_kernels_match_the_full_masked_matrix(T, chunk):
    q, k, v = qkv(T, 1.5, dtype=torch.float64)
    full = (q @ k.transpose(-2, -1)) / math.sqrt(HS)
    for weight in (torch.relu, lambda x: torch.sigmoid(x - 1.0)):
        torch.testing.assert_close(causal_weighted_sum(q, k, v, weight, chunk), weight(full).tril() @ v)


# --- nystrom's ridge option ------------------------------------------------------------------------------------------


def nystrom_reference(q, k, v, m: int, ridge: float) -> torch.Tensor:
    """Causal Nyström written out one query at a time (the class docstring's F, A, B), float64, a dense solve."""
    B, H, T, hs = q.shape
    c = math.ceil(T / m)
    n = math.ceil(T / c)
    s = 1 / math.sqrt(hs)
    qm = torch.stack([q[..., r * c:(r + 1) * c, :].mean(-2) for r in range(n)], -2)
    km = torch.stack([k[..., r * c:(r + 1) * c, :].mean(-2) for r in range(n)], -2)
    A = torch.zeros(B, H, n, n, dtype=q.dtype)
    bv = torch.zeros(B, H, n, hs, dtype=q.dtype)
    for r in range(n):
        A[..., r, : r + 1] = torch.softmax(s * qm[..., r: r + 1, :] @ km[..., : r + 1, :].transpose(-1, -2), -1)[..., 0, :]
        end = min(T, (r + 1) * c)
        w = torch.softmax(s * qm[..., r: r + 1, :] @ k[..., :end, :].transpose(-1, -2), -1)
        bv[..., r, :] = (w @ v[..., :end, :])[..., 0, :]
    U = torch.linalg.solve(A + ridge * torch.eye(n, dtype=q.dtype), bv)
    out = torch.zeros_like(q)
    for i in range(T):
        t = i // c
        logits = [s * (q[..., i, :] * k[..., j, :]).sum(-1, keepdim=True) for j in range(t * c, i + 1)]
        logits += [s * (q[..., i, :] * km[..., r, :]).sum(-1, keepdim=True) + math.log(c) for r in range(t)]
        w = torch.softmax(torch.cat(logits, -1), -1)
        vals = torch.stack([v[..., j, :] for j in range(t * c, i + 1)] + [U[..., r, :] for r in range(t)], -2)
        out[..., i, :] = (w.unsqueeze(-2) @ vals)[..., 0, :]
    return out


@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_nystrom_matches_its_definition_with_and_without_ridge(ridge):
    q, k, v = qkv(22, 1.5, dtype=torch.float64)
    got = build_attention("nystrom", head_dim=HS, ridge=ridge)(q, k, v)
    torch.testing.assert_close(got, nystrom_reference(q, k, v, m=5, ridge=ridge))


def test_nystrom_ridge_is_causal_and_bounds_the_summaries():
    torch.manual_seed(0)
    assert leak(build_attention("nystrom", head_dim=HS, ridge=0.5)) < 1e-5
    # Landmark queries that attend away from their own key make A's diagonal tiny: A^-1 amplifies, ridge does not.
    q, k, v = qkv(25, 6.0, seed=3)
    exact, ridged = (build_attention("nystrom", head_dim=HS, ridge=r)(q, k, v).abs().max() for r in (0.0, 1.0))
    assert ridged < exact and ridged <= 3 * v.abs().max()
    with pytest.raises(ValueError, match="attn.ridge must be a number >= 0"):
        build_attention("nystrom", head_dim=HS, ridge=-1)


def test_model_with_nystrom_ridge_is_causal():
    torch.manual_seed(0)
    cfg = TransformerConfig(n_dims=4, n_positions=12, n_layer=2, attn="nystrom", attn_params={"ridge": 0.2})
    assert_model_causal(ICLTransformer(cfg).eval())


# --- the last block's x queries (the training step's fast path) ---------------------------------------------------


@pytest.mark.parametrize("T", [7, 22, 82, 202])
def test_softmax_x_queries_are_the_full_output_at_the_x_positions(T):
    """The last block asks softmax for the even queries only: the same outputs bit for bit as slicing the full
    output; the gradients differ from the full output's by round-off only (flash backward sums over fewer rows)."""
    q, k, v = (t.requires_grad_() for t in qkv(T, 2.0, batch=3))
    kernel = build_attention("softmax", head_dim=HS)
    full, part = kernel(q, k, v)[:, :, ::2], kernel(q, k, v, x_only=True)
    assert torch.equal(full, part)
    grad = torch.randn_like(full)
    for a, b in zip(torch.autograd.grad(full, (q, k, v), grad), torch.autograd.grad(part, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_model_with_x_queries_matches_the_full_last_block():
    """The whole model: predictions bit for bit, one step's gradients at round-off, and the kernel's forward hooks
    (the diagnostics callback's) still see every layer's full q and k."""
    torch.manual_seed(0)
    model = ICLTransformer(TransformerConfig(n_dims=5, n_positions=11, n_layer=2))
    old = ICLTransformer(TransformerConfig(n_dims=5, n_positions=11, n_layer=2))
    old.load_state_dict(model.state_dict())
    for block in old.blocks:
        block.attn.kernel.x_queries = False  # the path every other kernel takes: full output, then sliced
    seen = []
    model.blocks[-1].attn.kernel.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[2]))
    xs, ys = torch.randn(8, 11, 5), torch.randn(8, 11)
    out, ref = model(xs, ys), old(xs, ys)
    assert torch.equal(out, ref) and seen == [22]
    (out - ys).square().mean().backward()
    (ref - ys).square().mean().backward()
    for a, b in zip(model.parameters(), old.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_x_mask_is_one_tensor_per_device_serving_every_shorter_length():
    kernel = build_attention("softmax", head_dim=HS)
    for T in (30, 10, 7, 44, 12):
        i, j = torch.arange(0, T, 2)[:, None], torch.arange(T)[None, :]
        assert torch.equal(kernel.x_mask(T, torch.device("cpu")), j <= i)
    assert [tuple(m.shape) for m in kernel._x_masks.values()] == [(22, 44)]
