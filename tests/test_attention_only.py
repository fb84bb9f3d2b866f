"""model.mlp / model.layer_norm: attention-only decoders (no MLP, optionally no LayerNorm)."""

from __future__ import annotations

import torch
from torch import nn

from icl import readout
from icl.transformer import ICLTransformer, TransformerConfig
from tests.helpers import assert_model_causal


def _model(**options: bool) -> ICLTransformer:
    torch.manual_seed(0)
    return ICLTransformer(TransformerConfig(n_dims=4, n_positions=12, n_embd=16, n_layer=2, n_head=2, **options)).eval()


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_attention_only_blocks_have_no_mlp_and_optionally_no_layernorm() -> None:
    full, attn_only, bare = _model(), _model(mlp=False), _model(mlp=False, layer_norm=False)
    assert all(block.mlp is None for block in attn_only.blocks)
    assert sum(isinstance(m, nn.LayerNorm) for m in attn_only.modules()) == 2 + 1  # ln_1 of each block + ln_f
    assert not any(isinstance(m, (nn.LayerNorm, nn.GELU)) for m in bare.modules())
    mlp_params = sum(p.numel() for b in full.blocks for p in b.mlp.parameters())
    assert _count(full) - _count(attn_only) == mlp_params + 2 * 2 * 16  # and ln_2 (weight + bias), which fed the MLP
    for model in (attn_only, bare):
        assert_model_causal(model)


def test_attention_only_readout_of_the_last_layer_is_the_output() -> None:
    model = _model(mlp=False, layer_norm=False)
    xs, ys = torch.randn(3, 9, 4), torch.randn(3, 9)
    with torch.no_grad():
        torch.testing.assert_close(readout.layer_readouts(model, xs, ys)[-1], model(xs, ys), rtol=1e-5, atol=1e-5)
