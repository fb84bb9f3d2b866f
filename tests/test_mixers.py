"""Sequence mixers (icl.mixers, icl.scans): each fast form against its step-by-step recurrence, the masked softmax
patterns against their definition, strict causality through the whole model for every name, positions, errors."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from icl.mixers import (
    MIXERS,
    BigBird,
    SlidingWindow,
    alibi_bias,
    alibi_slopes,
    build_mixer,
    mixer_names,
    rope,
)
from icl.run.configs import CONFIG_DIR
from icl.run.train import train
from icl.scans import decay_linear_attention, delta_rule, selective_scan, selective_scan_fused, selective_scan_loop
from icl.transformer import ICLTransformer, TransformerConfig
from tests.helpers import assert_model_causal, compose_train

NEW = sorted(MIXERS)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- step-by-step references (the recurrences, one token at a time) -------------------------------------------------


def selective_scan_reference(x, delta, A, B, C):
    h = torch.zeros(x.shape[0], x.shape[2], A.shape[1])
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1)


def decay_reference(q, k, v, log_a):
    S = torch.zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    outs = []
    for t in range(q.shape[2]):
        S = torch.exp(log_a[:, :, t])[..., None, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append((q[:, :, t, :, None] * S).sum(-2))
    return torch.stack(outs, dim=2)


def delta_reference(q, k, v, beta):
    S = torch.zeros(*q.shape[:2], v.shape[-1], q.shape[-1])  # maps a key to a value
    outs = []
    for t in range(q.shape[2]):
        k_t, v_t, b_t = k[:, :, t], v[:, :, t], beta[:, :, t, None]
        S = S + (b_t * (v_t - (S @ k_t[..., None])[..., 0]))[..., None] * k_t[:, :, None, :]
        outs.append((S @ q[:, :, t, :, None])[..., 0])
    return torch.stack(outs, dim=2)


def mamba_reference(m, x):
    """The Mamba block token by token: a rolling conv buffer and the state h (batch, D, N)."""
    u_all, z_all = m.in_proj(x).chunk(2, dim=-1)
    K, D = m.d_conv, m.d_inner
    buffer, h, ys = torch.zeros(x.shape[0], D, K), torch.zeros(x.shape[0], D, m.d_state), []
    A = -torch.exp(m.A_log)
    for t in range(x.shape[1]):
        buffer = torch.cat((buffer[..., 1:], u_all[:, t, :, None]), dim=-1)
        u = F.silu((buffer * m.conv.weight[:, 0]).sum(-1) + m.conv.bias)
        dt, B, C = m.x_proj(u).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
        delta = F.softplus(m.dt_proj(dt) + m.dt_bias)
        h = torch.exp(delta[..., None] * A) * h + (delta * u)[..., None] * B[:, None, :]
        ys.append(((h * C[:, None, :]).sum(-1) + m.D * u) * F.silu(z_all[:, t]))
    return m.proj(torch.stack(ys, dim=1))


def mamba2_reference(m, x):
    """The SSD block token by token: a rolling conv buffer and one (P × N) state per head."""
    D, N, H, P, K = m.d_inner, m.d_state, m.n_heads, m.head_dim, m.d_conv
    z_all, ubc_all, dt_all = m.in_proj(x).split([D, D + 2 * N, H], dim=-1)
    buffer, S, ys = torch.zeros(x.shape[0], D + 2 * N, K), torch.zeros(x.shape[0], H, P, N), []
    for t in range(x.shape[1]):
        buffer = torch.cat((buffer[..., 1:], ubc_all[:, t, :, None]), dim=-1)
        u, B, C = F.silu((buffer * m.conv.weight[:, 0]).sum(-1) + m.conv.bias).split([D, N, N], dim=-1)
        dt = F.softplus(dt_all[:, t] + m.dt_bias)  # (batch, H)
        u = u.view(-1, H, P)
        a = torch.exp(dt * -torch.exp(m.A_log))[..., None, None]
        S = a * S + (dt[..., None] * u)[..., None] * B[:, None, None, :]
        y = (S * C[:, None, None, :]).sum(-1) + m.D[:, None] * u
        ys.append(m.norm(y.reshape(-1, D) * F.silu(z_all[:, t])))
    return m.proj(torch.stack(ys, dim=1))


# --- fast forms vs references ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 13])
@pytest.mark.parametrize("scan", [selective_scan, selective_scan_fused, selective_scan_loop],
                         ids=["parallel", "fused", "loop"])
def test_selective_scan_matches_its_recurrence(scan, T):
    x, delta, B, C = randn(2, T, 6, seed=1), F.softplus(randn(2, T, 6, seed=2)), randn(2, T, 4, seed=3), \
        randn(2, T, 4, seed=4)
    A = -torch.rand(6, 4, generator=torch.Generator().manual_seed(5)) * 3
    torch.testing.assert_close(scan(x, delta, A, B, C), selective_scan_reference(x, delta, A, B, C))


@pytest.mark.parametrize("T", [1, 2, 9])
def test_fused_selective_scan_values_and_gradients_match_the_parallel_scan(T):
    """The hand-written backward against autograd through the log-depth scan (float64, every input; T = 1 and 2:
    the first and last token's special cases meet)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, T, 5), (2, T, 5), (5, 3), (2, T, 3), (2, T, 3)]
    inputs = [torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes]
    inputs[1], inputs[2] = F.softplus(inputs[1]), -inputs[2].abs() * 2
    grads = []
    for scan in (selective_scan, selective_scan_fused):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = scan(*(t.double() for t in leaves)) if scan is selective_scan else _fused64(leaves)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        # at T = 1 no decay multiplies a state: autograd leaves A's gradient None, the hand-written one is 0
        grads.append([out.detach(), *(torch.zeros_like(t) if t.grad is None else t.grad for t in leaves)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def _fused64(leaves):
    from icl.scans import _FusedSelectiveScan

    x, delta, A, B, C = leaves
    return _FusedSelectiveScan.apply(*(t.transpose(0, 1).contiguous() for t in (x, delta)), A,
                                     *(t.transpose(0, 1).contiguous() for t in (B, C))).transpose(0, 1)


@pytest.mark.parametrize("chunk", [1, 4, 5, 64])
def test_decay_linear_attention_matches_its_recurrence_for_every_chunk(chunk):
    q, k, v = randn(2, 3, 13, 4, seed=1), randn(2, 3, 13, 4, seed=2), randn(2, 3, 13, 5, seed=3)
    log_a = -F.softplus(randn(2, 3, 13, seed=4)) * 2
    torch.testing.assert_close(decay_linear_attention(q, k, v, log_a, chunk), decay_reference(q, k, v, log_a))
    per_head = torch.log(torch.tensor([0.5, 0.9, 0.99]))  # retention's fixed decays
    torch.testing.assert_close(decay_linear_attention(q, k, v, per_head, chunk),
                               decay_reference(q, k, v, per_head[None, :, None].expand(2, 3, 13)))


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_delta_rule_chunks_match_its_recurrence(chunk):
    q, k = F.normalize(randn(2, 3, 13, 4, seed=1), dim=-1), F.normalize(randn(2, 3, 13, 4, seed=2), dim=-1)
    v, beta = randn(2, 3, 13, 5, seed=3), torch.sigmoid(randn(2, 3, 13, seed=4))
    torch.testing.assert_close(delta_rule(q, k, v, beta, chunk), delta_reference(q, k, v, beta), atol=1e-5,
                               rtol=1e-4)


def test_delta_rule_is_online_regression():
    """β = 1 with orthonormal keys stores each (k, v) exactly: the state then maps every key to its value."""
    k = torch.eye(4).expand(1, 1, 4, 4)
    v = randn(1, 1, 4, 3)
    out = delta_rule(k, k, v, torch.ones(1, 1, 4), chunk=2)
    torch.testing.assert_close(out, v)


@pytest.mark.parametrize("name, reference, params", [
    ("mamba", mamba_reference, {"scan": "fused"}), ("mamba", mamba_reference, {"scan": "parallel"}),
    ("mamba2", mamba2_reference, {"chunk_size": 4})])
def test_state_space_blocks_match_their_token_by_token_recurrence(name, reference, params):
    torch.manual_seed(0)
    mixer = build_mixer(name, 16, 2, {"d_state": 4, **params})
    x = randn(2, 11, 16)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), reference(mixer, x), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mixer(x, x_only=True), reference(mixer, x)[:, ::2], atol=1e-5, rtol=1e-4)


# --- masked softmax patterns -----------------------------------------------------------------------------------------


def softmax_over(q, k, v, allowed):
    """out_i = softmax over the allowed j of s·q_i·k_j: one query at a time."""
    out = torch.zeros_like(v)
    for i in range(q.shape[-2]):
        j = torch.tensor(sorted(allowed(i)))
        w = torch.softmax((q[..., i:i + 1, :] @ k[..., j, :].transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
        out[..., i, :] = (w @ v[..., j, :])[..., 0, :]
    return out


def test_sliding_window_is_softmax_over_the_last_w_tokens():
    q, k, v = (randn(2, 2, 17, 8, seed=s) for s in range(3))
    out = SlidingWindow(8, window=5)(q, k, v)
    torch.testing.assert_close(out, softmax_over(q, k, v, lambda i: range(max(0, i - 4), i + 1)))
    torch.testing.assert_close(SlidingWindow(8, window=99)(q, k, v), build_mixer("softmax", 16, 2).kernel(q, k, v))


@pytest.mark.parametrize("T, window", [(17, 5), (24, 4), (9, 4), (40, 3)])
def test_sliding_window_blocked_form_matches_the_masked_one_with_and_without_alibi(T, window):
    q, k, v = (randn(2, 2, T, 8, seed=s) for s in range(3))
    kernel = SlidingWindow(8, window=window)
    mask = kernel.allowed(T, torch.device("cpu"))
    torch.testing.assert_close(kernel(q, k, v), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    bias = alibi_bias(alibi_slopes(2), T, torch.float32)
    torch.testing.assert_close(kernel(q, k, v, bias=bias), F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias.masked_fill(~mask, float("-inf"))))


def test_bigbird_pattern_window_globals_and_seeded_randoms():
    kernel = BigBird(8, window=3, n_global=2, n_random=2, seed=7)
    mask = kernel.allowed(20, torch.device("cpu"))
    assert not mask.triu(1).any() and mask.diagonal().all()  # causal, the token itself always read
    for i in range(20):
        fixed = set(range(max(0, i - 2), i + 1)) | set(range(min(2, i + 1)))
        extra = set(mask[i].nonzero().flatten().tolist()) - fixed
        assert len(extra) == min(2, max(0, i - 2 - 2)), (i, extra)  # r randoms among 2 … i − window
    assert torch.equal(kernel.allowed(30, torch.device("cpu"))[:20, :20], mask)  # the same picks at every length
    assert not torch.equal(BigBird(8, 3, 2, 2, seed=8).allowed(20, torch.device("cpu")), mask)
    q, k, v = (randn(2, 2, 20, 8, seed=s) for s in range(3))
    torch.testing.assert_close(kernel(q, k, v), softmax_over(q, k, v, lambda i: mask[i].nonzero().flatten().tolist()))


# --- positions -------------------------------------------------------------------------------------------------------


def test_rope_scores_depend_on_the_offset_only():
    q, k = randn(1, 1, 1, 8, seed=1).expand(1, 1, 12, 8), randn(1, 1, 1, 8, seed=2).expand(1, 1, 12, 8)
    s = rope(q) @ rope(k).transpose(-2, -1)  # the same q and k at every position
    for offset in range(-3, 4):
        diag = torch.diagonal(s[0, 0], offset)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag))
    torch.testing.assert_close(rope(q)[..., 0, :], q[..., 0, :])  # position 0 is not rotated


def test_alibi_softmax_matches_its_definition():
    torch.manual_seed(0)
    mixer = build_mixer("softmax", 16, 2, pos="alibi")
    x = randn(2, 9, 16)
    q, k, v = mixer.qkv(x).split(16, dim=2)
    q, k, v = (t.view(2, 9, 2, 8).transpose(1, 2) for t in (q, k, v))
    slopes = alibi_slopes(2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(8) + alibi_bias(slopes, 9, torch.float32)
    i = torch.arange(9)
    torch.testing.assert_close(alibi_bias(slopes, 9, torch.float32)[1, 5, 2], -slopes[1] * 3)
    y = torch.softmax(scores.masked_fill(i[None, :] > i[:, None], float("-inf")), dim=-1) @ v
    expected = mixer.proj(y.transpose(1, 2).reshape(2, 9, 16))
    torch.testing.assert_close(mixer(x), expected)


# --- every name through the whole model ------------------------------------------------------------------------------

MODELS = [{"attn": name} for name in NEW] + [
    {"attn": a, "pos": p} for a in ("softmax", "relu", "bigbird") for p in ("rope", "none")] + [
    {"attn": a, "pos": "alibi"} for a in ("softmax", "sliding_window", "bigbird")] + [
    {"attn": "softmax", "pattern": ["mamba", "softmax"]}, {"attn": "deltanet", "pattern": ["deltanet", "retnet"]},
    {"attn": "retnet", "attn_params": {"rotate": False}}, {"attn": "retnet", "attn_params": {"d_conv": 4}}]


@pytest.mark.parametrize("options", MODELS, ids=lambda o: "-".join(map(str, o.values())))
def test_model_prediction_i_ignores_y_i_and_later_tokens(options):
    """The registry-wide causality check (tests/test_attention.py covers the kernels) for the mixers, positions and
    hybrids: perturbing y_i and every later x, y leaves predictions <= i unchanged."""
    torch.manual_seed(0)
    assert_model_causal(ICLTransformer(TransformerConfig(n_dims=4, n_positions=12, n_layer=2, **options)).eval())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NEW)
def test_gradients_are_finite_at_the_longest_training_length(name, dtype):
    torch.manual_seed(0)
    model = ICLTransformer(TransformerConfig(n_dims=8, n_positions=101, n_layer=2, attn=name)).to(dtype)
    xs, ys = torch.randn(2, 101, 8, dtype=dtype), torch.randn(2, 101, dtype=dtype)
    loss = (model(xs, ys) - ys).pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_positions_default_by_family_and_old_checkpoints_load_as_learned():
    old = ICLTransformer(TransformerConfig(n_dims=4))  # a config written before model.pos existed
    assert old.pos == "learned" and "wpe.weight" in old.state_dict()
    assert ICLTransformer(TransformerConfig(n_dims=4, attn="mamba")).pos == "none"
    assert ICLTransformer(TransformerConfig(n_dims=4, attn="softmax", pattern=["mamba", "softmax", "softmax"])).pos \
        == "learned"
    none = ICLTransformer(TransformerConfig(n_dims=4, pos="none"))
    assert "wpe.weight" not in none.state_dict()
    assert [k for k in old.state_dict() if k.startswith("blocks.0.attn")] == [
        "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias"]


def test_state_floats_per_sequence():
    C, T = 16, 40
    assert build_mixer("softmax", C, 2).state_floats(T) == 2 * C * T
    assert build_mixer("sliding_window", C, 2, {"window": 8}).state_floats(T) == 2 * C * 8
    assert build_mixer("mamba", C, 2, {"d_state": 4}).state_floats(T) == 2 * C * (4 + 3)
    deltanet = build_mixer("deltanet", C, 2, {"d_conv": 4})
    assert deltanet.state_floats(T) == deltanet.state_floats(4 * T) == 2 * 8 * 8 + 3 * C * 3
    assert build_mixer("retnet", C, 2).state_floats(T) == 2 * 8 * 8
    assert build_mixer("retnet", C, 2, {"d_conv": 4}).state_floats(T) == 2 * 8 * 8 + 3 * C * 3


def test_retnet_short_conv_is_deltanets_and_off_by_default():
    """d_conv = 1 is the published RetNet (no conv weights: its checkpoints load as before); d_conv > 1 puts the
    same short conv + SiLU as DeltaNet's before the retention: the mixer equals retention on those q, k, v."""
    import torch.nn.functional as F

    from icl.mixers import _causal_conv
    from icl.scans import decay_linear_attention

    for published in (build_mixer("retnet", 16, 2), build_mixer("retnet", 16, 2, {"d_conv": 1})):
        assert published.conv is None and not any("conv" in k for k in published.state_dict())
    torch.manual_seed(0)
    m, x = build_mixer("retnet", 16, 2, {"d_conv": 3, "rotate": False}), torch.randn(2, 7, 16)
    qkv = F.silu(_causal_conv(m.conv, m.qkv(x)))
    q, k, v = (t.view(2, 7, 2, 8).transpose(1, 2) for t in qkv.split(16, dim=2))
    o = decay_linear_attention(q * 8 ** -0.5, k, v, m.log_decay, 64)
    expected = m.proj(m.norm(o.transpose(1, 2).reshape(14, 16)).view(2, 7, 16) * F.silu(m.gate(x)))
    torch.testing.assert_close(m(x), expected)


@pytest.mark.parametrize("make, message", [
    (lambda: build_mixer("mamba_", 16, 2), "unknown sequence mixer 'mamba_'; choose one of: softmax, .*mamba"),
    (lambda: build_mixer("mamba", 16, 2, {"d_state": 0}), "attn.d_state must be a positive integer, got 0"),
    (lambda: build_mixer("mamba", 16, 2, {"state": 4}), "sequence mixer 'mamba': .*'state'.*configs/attn/mamba"),
    (lambda: build_mixer("mamba", 16, 2, {"scan": "serial"}), "unknown attn.scan 'serial'; choose one of: fused"),
    (lambda: build_mixer("mamba2", 16, 2, {"head_dim": 5}), r"attn.head_dim \(5\) must divide expand·n_embd \(32\)"),
    (lambda: build_mixer("bigbird", 16, 2, {"n_random": -1}), "attn.n_random must be an integer >= 0, got -1"),
    (lambda: build_mixer("retnet", 16, 2, {"rotate": "yes"}), "attn.rotate must be true or false, got 'yes'"),
    (lambda: build_mixer("retnet", 16, 2, {"d_conv": 0}), "attn.d_conv must be a positive integer, got 0"),
    (lambda: build_mixer("relu", 16, 2, pos="alibi"), "model.pos=alibi needs a softmax kernel"),
    (lambda: TransformerConfig(n_dims=4, pos="sinusoid"), None),
    (lambda: ICLTransformer(TransformerConfig(n_dims=4, pos="sinusoid")), "unknown model.pos 'sinusoid'; choose"),
    (lambda: ICLTransformer(TransformerConfig(n_dims=4, attn="mamba", pos="rope")), "model.pos=rope acts inside"),
    (lambda: ICLTransformer(TransformerConfig(n_dims=4, attn="mamba", qk_norm=True)), "model.qk_norm applies to"),
    (lambda: ICLTransformer(TransformerConfig(n_dims=4, n_layer=3, pattern=["mamba", "softmax"])),
     r"model.pattern \['mamba', 'softmax'\] must divide model.n_layer \(3\)"),
    (lambda: ICLTransformer(TransformerConfig(n_dims=4, n_layer=2, pattern=["mamba", "retnet"])),
     "contain attn=softmax"),
])
def test_bad_options_are_one_clear_line(make, message):
    if message is None:  # building the config alone checks nothing (the model does)
        make()
        return
    with pytest.raises(ValueError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_every_mixer_has_a_config():
    assert {p.stem for p in (CONFIG_DIR / "attn").glob("*.yaml")} == set(mixer_names())


@pytest.mark.parametrize("overrides", [["attn=mamba"], ["model=hybrid", "model.n_layer=3"]], ids=["mamba", "hybrid"])
def test_mixers_train_and_evaluate_from_the_configs(overrides, tmp_path, tiny_overrides):
    cfg = compose_train([*tiny_overrides, *overrides, "trainer.max_steps=20"], tmp_path)
    metrics = train(cfg)
    df = pd.read_csv(tmp_path / "eval.csv")
    assert df[df.predictor == "transformer"].error.notna().all()
    assert math.isfinite(metrics["train/loss"])


def test_a_checkpoint_from_before_model_pos_loads_with_learned_positions(tmp_path):
    from icl.module import ICLModule

    task = {"name": "linear", "n_dims": 3, "params": {"scale": 1.0}}
    old_model = {"n_positions": 6, "n_embd": 16, "n_layer": 1, "n_head": 2, "dropout": 0.0, "activation": "gelu"}
    module = ICLModule(task=task, model=old_model, attn="softmax")
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.5.0"}, path)
    loaded = ICLModule.load_from_checkpoint(path, map_location="cpu")
    assert loaded.model.pos == "learned" and loaded.model.config.pattern is None
    xs, ys = torch.randn(2, 6, 3), torch.randn(2, 6)
    torch.testing.assert_close(loaded(xs, ys), module(xs, ys))


@pytest.mark.parametrize("attn", ["mamba", "softmax"])
def test_per_layer_readout_uses_the_models_own_embedding(attn):
    """icl.readout reads the residual stream through ICLTransformer.embed: no learned positions to look up for a
    recurrent mixer, and the last layer's read-out is the model's prediction."""
    from icl.readout import layer_readouts

    torch.manual_seed(0)
    model = ICLTransformer(TransformerConfig(n_dims=4, n_positions=6, n_layer=2, attn=attn))
    xs, ys = torch.randn(3, 6, 4), torch.randn(3, 6)
    out = layer_readouts(model, xs, ys)
    assert out.shape == (3, 3, 6)
    torch.testing.assert_close(out[-1], model(xs, ys).detach())


@pytest.mark.parametrize("options", [{"attn": "mamba"}, {"attn": "softmax", "pos": "alibi"}], ids=["mamba", "alibi"])
def test_attention_internal_fake_quant_refuses_mixers_without_a_plain_kernel(options):
    from icl.fakequant import wrap_kernels

    model = ICLTransformer(TransformerConfig(n_dims=4, n_positions=6, n_layer=1, **options))
    with pytest.raises(ValueError, match="attention-internal fake-quant needs a \\(q, k, v\\) kernel without ALiBi"):
        wrap_kernels(model, 8, "head", ("q", "k"))
