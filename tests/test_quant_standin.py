"""The parse's quant check runs on a stand-in of the job's model (same layer types and widths, fewer blocks, 2 points),
never on a second full model, and refuses exactly what the full model would."""

import pytest
import torch

import icl.run.spec as spec_module
from icl.attention import ATTENTION
from icl.mixers import MIXERS
from icl.quantize import QuantSpec, check
from icl.run.spec import JobSpec
from icl.transformer import ICLTransformer, TransformerConfig, layer_mixers
from tests.helpers import compose_train


@pytest.fixture
def built(monkeypatch) -> list[TransformerConfig]:
    """The config of every ICLTransformer the parse builds."""
    configs: list[TransformerConfig] = []

    class Recording(ICLTransformer):
        def __init__(self, config: TransformerConfig) -> None:
            configs.append(config)
            super().__init__(config)

    monkeypatch.setattr(spec_module, "ICLTransformer", Recording)
    return configs


def test_the_parse_checks_the_mode_on_a_stand_in_not_a_full_model(tmp_path, built):
    spec = JobSpec.from_config(compose_train(["quant=int8_weight"], tmp_path))
    assert len(built) == 1
    assert (built[0].n_layer, built[0].n_positions) == (1, 2) and spec.model.n_layer == 3
    assert (built[0].n_embd, built[0].n_head) == (spec.model.n_embd, spec.model.n_head)  # widths: group sizes
    JobSpec.from_config(compose_train(["quant=none"], tmp_path))
    assert len(built) == 1  # no mode: nothing to try


def test_the_stand_in_keeps_a_hybrids_layer_types_and_the_blocks_the_mode_names(tmp_path):
    hybrid = compose_train(["model=hybrid", "model.n_layer=6", "quant=attn_fq", "quant.blocks=[1]"], tmp_path)
    spec = JobSpec.from_config(hybrid)  # pattern [mamba, softmax, softmax]: one period holds block 1
    small = spec.stand_in_config()
    full = layer_mixers(spec.attn["name"], spec.model.options["pattern"], spec.model.n_layer)
    assert small.n_layer == 3 and layer_mixers(small.attn, small.pattern, small.n_layer) == full[:3]
    assert JobSpec.from_config(compose_train(["model=hybrid", "model.n_layer=6", "quant=attn_fq", "quant.blocks=[4]"],
                                             tmp_path)).stand_in_config().n_layer == 6
    state = compose_train(["model=hybrid", "model.n_layer=6", "quant=state_fq", "quant.blocks=[1]"], tmp_path)
    with pytest.raises(ValueError, match="layer 1 is SoftmaxAttention"):  # the real index, as the full model says
        JobSpec.from_config(state)
    with pytest.raises(ValueError, match=r"quant.blocks=\[6\] names a block the model lacks \(it has 6"):
        JobSpec.from_config(compose_train(["model=hybrid", "model.n_layer=6", "quant=attn_fq", "quant.blocks=[6]"],
                                          tmp_path))


def outcome(mode: str, config: TransformerConfig) -> str:
    try:
        check(QuantSpec.from_config({"name": mode}), ICLTransformer(config), on_gpu=False, in_place=True)
    except ValueError as err:
        return str(err)
    return "ok"


@pytest.mark.parametrize("mixer", [*ATTENTION, *MIXERS])
def test_the_stand_in_refuses_what_the_full_model_refuses(mixer):
    torch.manual_seed(0)
    full = TransformerConfig(n_dims=5, attn=mixer, n_layer=2, n_positions=41)
    small = TransformerConfig(n_dims=5, attn=mixer, n_layer=1, n_positions=2)
    for mode in ("attn_fq", "state_fq", "int8_dynamic"):
        assert outcome(mode, small) == outcome(mode, full)
