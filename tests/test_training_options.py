"""Training options (model.qk_norm, model.layer_scale): shapes, causality over the registry, references, gradients,
and checkpoints written before the options existed still load."""

import pytest
import torch
import torch.nn.functional as F
import yaml

from icl.attention import ATTENTION
from icl.module import ICLModule
from icl.transformer import ICLTransformer, SelfAttention, TransformerConfig
from tests.helpers import assert_model_causal

VARIANTS = sorted(ATTENTION)
OPTIONS = [{"qk_norm": True}, {"layer_scale": 0.1}, {"qk_norm": True, "layer_scale": 1e-2}]


def model_with(name: str, n_layer: int = 2, **options) -> ICLTransformer:
    return ICLTransformer(TransformerConfig(n_dims=4, n_positions=12, n_layer=n_layer, attn=name, **options))


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_shapes_and_parameters(options):
    model = model_with("relu", **options)
    xs, ys = torch.randn(3, 12, 4), torch.randn(3, 12)
    assert model(xs, ys).shape == (3, 12)
    names = {n for n, _ in model.named_parameters()}
    assert ("blocks.0.attn.q_norm.weight" in names) == bool(options.get("qk_norm"))
    assert ("blocks.0.attn_scale.gamma" in names) == (options.get("layer_scale") is not None)


def test_options_off_is_the_original_model():
    """Off by default: same parameters (names and values) as a model built without the keys."""
    torch.manual_seed(0)
    plain = model_with("softmax")
    torch.manual_seed(0)
    off = model_with("softmax", qk_norm=False, layer_scale=None)
    assert plain.state_dict().keys() == off.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), off.state_dict().values()))


@pytest.mark.parametrize("name", VARIANTS)
def test_qk_norm_normalises_q_and_k_before_the_unchanged_kernel(name):
    torch.manual_seed(0)
    attn = SelfAttention(16, 2, name, qk_norm=True)
    with torch.no_grad():  # non-trivial affine parameters, so the check is not just "LayerNorm without affine"
        for norm in (attn.q_norm, attn.k_norm):
            norm.weight.normal_()
            norm.bias.normal_()
    x = torch.randn(2, 10, 16)
    q, k, v = (t.view(2, 10, 2, 8).transpose(1, 2) for t in attn.qkv(x).split(16, dim=2))
    q = F.layer_norm(q, (8,), attn.q_norm.weight, attn.q_norm.bias)
    k = F.layer_norm(k, (8,), attn.k_norm.weight, attn.k_norm.bias)
    expected = attn.proj(attn.kernel(q, k, v).transpose(1, 2).reshape(2, 10, 16))
    torch.testing.assert_close(attn(x), expected)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("name", VARIANTS)
def test_whole_model_stays_causal_with_the_options(name, options):
    """As tests/test_attention.py's whole-model check: perturbing y_i and everything later leaves predictions <= i."""
    torch.manual_seed(0)
    assert_model_causal(model_with(name, **options).eval())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_are_finite_with_the_options(name, dtype):
    torch.manual_seed(0)
    model = ICLTransformer(TransformerConfig(n_dims=20, n_positions=101, n_layer=2, attn=name, qk_norm=True,
                                             layer_scale=0.1)).to(dtype)
    xs, ys = torch.randn(4, 101, 20, dtype=dtype), torch.randn(4, 101, dtype=dtype)
    loss = (model(xs, ys) - ys).pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["blocks.0.attn.q_norm.weight"].abs().sum() > 0 and grads["blocks.0.attn_scale.gamma"].abs().sum() > 0


def test_checkpoint_without_the_new_keys_loads(tmp_path):
    """A checkpoint whose hparams predate qk_norm / layer_scale (model dict without them) loads with both off."""
    task = {"name": "linear", "n_dims": 3, "params": {"scale": 1.0}}
    old_model = {"n_positions": 6, "n_embd": 16, "n_layer": 1, "n_head": 2, "dropout": 0.0, "activation": "gelu"}
    module = ICLModule(task=task, model=old_model, attn="relu")
    path = tmp_path / "old.ckpt"
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": "2.5.0"}
    torch.save(checkpoint, path)
    assert "qk_norm" not in yaml.safe_dump(checkpoint["hyper_parameters"])
    loaded = ICLModule.load_from_checkpoint(path, map_location="cpu")
    assert loaded.model.config.qk_norm is False and loaded.model.config.layer_scale is None
    xs, ys = torch.randn(2, 6, 3), torch.randn(2, 6)
    torch.testing.assert_close(loaded(xs, ys), module(xs, ys))
