"""The decoder: shapes, x/y interleaving, strict causality, clear errors."""

import pytest
import torch

from icl.transformer import ICLTransformer, TransformerConfig, interleave


def test_interleave_layout():
    xs = torch.arange(2 * 3 * 4, dtype=torch.float).reshape(2, 3, 4)
    ys = torch.tensor([[10.0, 11, 12], [20, 21, 22]])
    z = interleave(xs, ys)
    assert z.shape == (2, 6, 4)
    torch.testing.assert_close(z[:, 0::2], xs)
    torch.testing.assert_close(z[:, 1::2, 0], ys)
    assert torch.all(z[:, 1::2, 1:] == 0)


@pytest.mark.parametrize("size", [(64, 3, 2), (128, 2, 4)])
def test_shapes(size):
    n_embd, n_layer, n_head = size
    model = ICLTransformer(TransformerConfig(n_dims=5, n_positions=11, n_embd=n_embd, n_layer=n_layer, n_head=n_head))
    assert model(torch.randn(3, 11, 5), torch.randn(3, 11)).shape == (3, 11)
    assert model(torch.randn(2, 4, 5), torch.randn(2, 4)).shape == (2, 4)  # shorter prompts are fine


def test_prediction_i_ignores_later_tokens():
    """Perturbing y_i, and every x_j, y_j with j > i, leaves predictions at positions <= i unchanged."""
    torch.manual_seed(0)
    model = ICLTransformer(TransformerConfig(n_dims=4, n_positions=10)).eval()
    xs, ys = torch.randn(2, 10, 4), torch.randn(2, 10)
    base = model(xs, ys)
    for i in range(10):
        xs2, ys2 = xs.clone(), ys.clone()
        ys2[:, i:] += torch.randn(2, 10 - i) * 5
        xs2[:, i + 1:] += torch.randn(2, 9 - i, 4) * 5
        out = model(xs2, ys2)
        torch.testing.assert_close(out[:, : i + 1], base[:, : i + 1])
        if i < 9:
            assert not torch.allclose(out[:, i + 1:], base[:, i + 1:])  # later positions do see them


def test_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        ICLTransformer(TransformerConfig(n_dims=4, n_embd=64, n_head=3))
    with pytest.raises(ValueError, match="unknown sequence mixer 'nope'"):
        ICLTransformer(TransformerConfig(n_dims=4, attn="nope"))
    with pytest.raises(ValueError, match="attention 'softmax': .*'window'"):
        ICLTransformer(TransformerConfig(n_dims=4, attn_params={"window": 3}))
    model = ICLTransformer(TransformerConfig(n_dims=4, n_positions=5))
    with pytest.raises(ValueError, match="n_positions"):
        model(torch.randn(1, 6, 4), torch.randn(1, 6))
    with pytest.raises(ValueError, match="3 dims"):
        model(torch.randn(1, 2, 3), torch.randn(1, 2))
    with pytest.raises(ValueError, match="unknown model.activation 'relu'; choose from: gelu, gelu_tanh"):
        ICLTransformer(TransformerConfig(n_dims=4, activation="relu"))


def test_read_out_at_x_positions_equals_reading_every_token():
    """LayerNorm and read-out run on the x positions only: the same as running them on all tokens and slicing."""
    torch.manual_seed(0)
    model = ICLTransformer(TransformerConfig(n_dims=3, n_positions=7, n_embd=32, n_layer=2, n_head=2)).eval()
    xs, ys = torch.randn(4, 7, 3), torch.randn(4, 7)
    with torch.no_grad():
        h = model.read_in(interleave(xs, ys)) + model.wpe(torch.arange(14))
        for block in model.blocks:
            h = block(h)
        full = model.read_out(model.ln_f(h))[:, ::2, 0]
        torch.testing.assert_close(model(xs, ys), full)


# --- vector outputs (task.y_dim > 1; issue 18) ----------------------------------------------------------------------
def _old_forward(model: ICLTransformer, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The forward pass as it was before y_dim existed: y in coordinate 0 of its token, one read-out value."""
    tokens = torch.zeros(*xs.shape[:2], 2, xs.shape[2])
    tokens[:, :, 0], tokens[:, :, 1, 0] = xs, ys
    h = model.read_in(tokens.reshape(xs.shape[0], -1, xs.shape[2])) + model.wpe(torch.arange(2 * xs.shape[1]))
    for i, block in enumerate(model.blocks):
        h = block(h, x_only=i == len(model.blocks) - 1)
    return model.read_out(model.ln_f(h))[..., 0]


def test_scalar_y_is_the_old_model_bit_for_bit():
    """y_dim = 1 (the default, every existing task): same parameters, same shapes, identical outputs."""
    torch.manual_seed(0)
    model = ICLTransformer(TransformerConfig(n_dims=4, n_positions=8, n_layer=2)).eval()
    assert model.config.y_dim == 1 and model.read_out.weight.shape == (1, 64)
    torch.manual_seed(0)  # the same init draws as a model built before the field existed
    old = ICLTransformer(TransformerConfig(**{k: v for k, v in vars(model.config).items() if k != "y_dim"}))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), old.state_dict().values()))
    xs, ys = torch.randn(3, 8, 4), torch.randn(3, 8)
    assert torch.equal(model(xs, ys), _old_forward(model, xs, ys))


def test_vector_y_tokens_and_read_out():
    xs, ys = torch.randn(2, 3, 5), torch.randn(2, 3, 2)
    z = interleave(xs, ys)
    assert torch.equal(z[:, 1::2, :2], ys) and torch.all(z[:, 1::2, 2:] == 0) and torch.equal(z[:, 0::2], xs)
    model = ICLTransformer(TransformerConfig(n_dims=5, n_positions=3, y_dim=2))
    assert model(xs, ys).shape == (2, 3, 2) and model.read_out.weight.shape == (2, 64)
    with pytest.raises(ValueError, match="do not match the model's y_dim = 2"):
        model(xs, ys[..., 0])
    with pytest.raises(ValueError, match=r"y_dim \(6\) must be in 1..n_dims \(5\)"):
        ICLTransformer(TransformerConfig(n_dims=5, y_dim=6))


def test_vector_prediction_i_ignores_later_tokens():
    """The causality test with vector y: changing y_i.. and x_{i+1}.. leaves predictions <= i unchanged."""
    torch.manual_seed(0)
    model = ICLTransformer(TransformerConfig(n_dims=4, n_positions=8, y_dim=3)).eval()
    xs, ys = torch.randn(2, 8, 4), torch.randn(2, 8, 3)
    base = model(xs, ys)
    for i in range(8):
        xs2, ys2 = xs.clone(), ys.clone()
        ys2[:, i:] += torch.randn(2, 8 - i, 3) * 5
        xs2[:, i + 1:] += torch.randn(2, 7 - i, 4) * 5
        out = model(xs2, ys2)
        torch.testing.assert_close(out[:, : i + 1], base[:, : i + 1])
        if i < 7:
            assert not torch.allclose(out[:, i + 1:], base[:, i + 1:])
