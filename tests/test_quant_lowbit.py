"""Low-bit weights (intx_weight at 8..2 bits, qat_intx), PyTorch's FBGEMM int8 (int8_fbgemm) and fake-quantised
attention internals (attn_fq), each against a closed form or a naive reference; bad widths fail in one line."""

import copy
import math

import pytest
import torch

from icl import quantize as qz
from icl.attention import ATTENTION, build_attention
from icl.bench.attention import variant_params
from icl.fakequant import QuantizedKernel, fake_quant, mixing_matrix
from icl.quantize import QuantSpec, check, linears, packed_bytes, prepare_qat, quantize, quantize_with_proof, storage_dtype
from icl.run.train import build
from icl.transformer import ICLTransformer, TransformerConfig
from tests.helpers import compose_train
from tests.test_quantize import N_DIMS, chosen, prompts, tiny_model


@pytest.mark.parametrize("bits", [8, 6, 5, 4, 3, 2])
@pytest.mark.parametrize("group", [None, 32])
def test_intx_weight_stores_bits_wide_values_within_half_a_step(bits, group):
    model = tiny_model()
    spec = QuantSpec.from_config({"name": "intx_weight", "bits": bits, "group_size": group})
    xs, ys = prompts()
    q, report = quantize_with_proof(model, spec, xs, ys)
    picked = chosen(q, spec)
    assert len(picked) == 8 and {storage_dtype(m.weight) for m in picked.values()} == {f"int{bits}"}
    for name, layer in picked.items():
        w, ref = layer.weight, chosen(model, spec)[name].weight
        assert -(2 ** (bits - 1)) <= int(w.qdata.min()) and int(w.qdata.max()) <= 2 ** (bits - 1) - 1
        assert w.scale.shape[-1] == (1 if group is None else ref.shape[1] // group)
        # round to nearest: every weight within half a step of its group's scale
        step = w.scale.repeat_interleave(ref.shape[1] // w.scale.shape[-1], dim=-1)
        assert ((w.dequantize() - ref).abs() <= step / 2 + 1e-6).all()
        expected = math.ceil(ref.numel() * bits / 8) + w.scale.numel() * 4
        assert packed_bytes(w) == (None if bits == 8 else expected)
    assert report["quantized_linears"] == 8 and report["label"] == f"intx_weight_w{bits}_{'g32' if group else 'pc'}"
    assert report["bytes"] < 0.5 * report["bytes_float"] and report["bytes_packed"] <= report["bytes"]
    assert (report["bytes_packed"] < report["bytes"]) == (bits < 8)
    assert 0 < report["rel_diff_mean"] <= report["rel_diff_max"] < 1.0


def test_fewer_bits_move_predictions_further():
    model, (xs, ys) = tiny_model(), prompts()
    moved = [quantize_with_proof(model, s, xs, ys)[1]["rel_diff_mean"]
             for s in (QuantSpec.from_config({"name": "intx_weight", "bits": b, "group_size": 32}) for b in (8, 4, 2))]
    assert moved[0] < moved[1] < moved[2]


def test_blocks_option_quantises_one_block_only():
    model = tiny_model()
    spec = QuantSpec.from_config({"name": "intx_weight", "bits": 4, "blocks": [1], "layers": ["mlp"]})
    dtypes = {n: storage_dtype(m.weight) for n, m in linears(quantize(model, spec)).items()}
    assert {n for n, d in dtypes.items() if d == "int4"} == {"blocks.1.mlp.net.0", "blocks.1.mlp.net.2"}


def test_qat_intx_trains_through_int4_fake_quantisation_and_converts_to_it():
    spec = QuantSpec.from_config({"name": "qat_intx"})
    model = tiny_model()
    prepare_qat(model, spec)
    fq = [m for m in model.modules() if type(m).__name__ == "FakeQuantizedLinear"]
    assert len(fq) == 8 and all(m.weight_fake_quantizer.config.dtype == torch.int4 for m in fq)
    xs, ys = prompts(32)
    model.train()
    (model(xs, ys) - ys).pow(2).mean().backward()
    assert all(m.weight.grad.abs().sum() > 0 for m in fq)  # straight-through gradients reach the float weights
    model.eval()
    converted = quantize(model, spec)
    stored = [m.weight for n, m in linears(converted).items() if spec.selects(m, n)]
    assert len(stored) == 8 and {storage_dtype(w) for w in stored} == {"int4"}
    with torch.inference_mode():
        torch.testing.assert_close(converted(xs, ys), model(xs, ys), rtol=1e-4, atol=1e-5)  # what QAT simulated
        assert (converted(xs, ys) - qz.float_model(model)(xs, ys)).abs().max() > 0


def test_int8_fbgemm_packs_int8_and_matches_its_dequantised_reference():
    model, spec = tiny_model(), QuantSpec.from_config({"name": "int8_fbgemm"})
    xs, ys = prompts()
    q, report = quantize_with_proof(model, spec, xs, ys)
    layers = {n: m for n, m in linears(q).items() if qz.is_fbgemm_linear(m)}
    assert sorted(layers) == sorted(n for n in linears(model) if n.startswith("blocks."))
    x = torch.randn(16, 64)
    for layer in layers.values():
        if layer.in_features != 64:
            continue
        w = layer.weight()
        assert w.dtype == torch.qint8 and w.qscheme() == torch.per_channel_affine
        ref = torch.nn.functional.linear(x, w.dequantize(), layer.bias())  # int8 weights, float activations
        out = layer(x)
        assert (out - ref).abs().max() < 0.02 * ref.abs().max()  # only the activation rounding differs
    assert report["quantized_linears"] == 8 and report["linear_layers"] == 10
    assert report["bytes"] < 0.5 * report["bytes_float"]
    assert 1e-4 < report["rel_diff_mean"] < 0.05


def test_fake_quant_matches_torchs_per_channel_fake_quantize():
    x = torch.randn(2, 3, 7, 16)
    for bits in (2, 4, 8):
        qmax = 2 ** (bits - 1) - 1
        scale = x.abs().amax(-1).reshape(-1) / qmax
        ref = torch.fake_quantize_per_channel_affine(x.reshape(-1, 16), scale, torch.zeros_like(scale, dtype=torch.int32),
                                                     0, -qmax, qmax).reshape(x.shape)
        torch.testing.assert_close(fake_quant(x, bits, (-1,)), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_every_kernel_is_its_causal_mixing_matrix_times_v(name):
    """What lets the wrapper quantise attention weights of any kernel: kernel(q, k, v) = A v, A lower triangular."""
    torch.manual_seed(0)
    kernel = build_attention(name, head_dim=8, **variant_params(name)).eval()
    q, k, v = (torch.randn(2, 2, 21, 8) for _ in range(3))
    with torch.no_grad():
        A = mixing_matrix(kernel, q, k)
        torch.testing.assert_close(A @ v, kernel(q, k, v), rtol=1e-4, atol=1e-5)
    assert A.shape == (2, 2, 21, 21) and A.triu(1).abs().max() == 0


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_attention_fake_quant_equals_float_at_16_bits_and_stays_causal(name):
    torch.manual_seed(0)
    kernel = build_attention(name, head_dim=16, **variant_params(name)).eval()
    q, k, v = (torch.randn(2, 2, 24, 16) for _ in range(3))
    with torch.no_grad():
        ref = kernel(q, k, v)
        for granularity in ("head", "token"):
            high = QuantizedKernel(kernel, 16, granularity)(q, k, v)
            torch.testing.assert_close(high, ref, rtol=1e-3, atol=2e-4)
        low = QuantizedKernel(kernel, 8)
        moved = ((low(q, k, v) - ref).norm() / ref.norm()).item()
        assert 1e-4 < moved < 0.1, moved
        weights_only = QuantizedKernel(kernel, 4, tensors=("weights",))(q, k, v)  # the weights alone move it too
        assert (weights_only - ref).abs().max() > 1e-4
        later = [t.clone() for t in (q, k, v)]
        for t in later:
            t[:, :, 12:] += 3.0  # change only the tokens from 12 on
        torch.testing.assert_close(low(*later)[:, :, :12], low(q, k, v)[:, :, :12], rtol=0, atol=0)


def test_attn_fq_mode_wraps_every_block_and_reports_simulated():
    model, (xs, ys) = tiny_model(), prompts()
    spec = QuantSpec.from_config({"name": "attn_fq", "bits": 8})
    q, report = quantize_with_proof(model, spec, xs, ys)
    assert all(type(b.attn.kernel) is QuantizedKernel for b in q.blocks)
    assert all(type(b.attn.kernel) is not QuantizedKernel for b in model.blocks)  # the float model is untouched
    assert report["attention_kernels_quantized"] == 2 and report["quantized_linears"] == 0
    assert report["storage"].startswith("simulated") and 1e-5 < report["rel_diff_mean"] < 0.05
    assert report["label"] == "attn_fq_a8_head"
    assert QuantSpec.from_config({"name": "attn_fq", "tensors": ["weights"]}).label == "attn_fq_a8_head_weights"


@pytest.mark.parametrize("node, message", [
    ({"name": "intx_weight", "bits": 1}, r"quant.bits=1 is impossible for quant=intx_weight: use an integer in 2..8"),
    ({"name": "intx_weight", "bits": 9}, r"quant.bits=9 is impossible"),
    ({"name": "qat_intx", "bits": 4.5}, r"quant.bits=4.5 is impossible"),
    ({"name": "intx_weight", "group_size": 0}, r"quant.group_size=0 must be a positive integer"),
    ({"name": "attn_fq", "granularity": "tensor"}, r"quant.granularity='tensor' is unknown"),
    ({"name": "attn_fq", "tensors": ["w"]}, r"quant.tensors=\['w'\]"),
    ({"name": "intx_weight", "blocks": []}, r"quant.blocks=\[\] must be a non-empty list"),
    ({"name": "int8_fbgemm", "bits": 4}, r"unknown quant option\(s\) \['bits'\] for quant=int8_fbgemm"),
])
def test_impossible_widths_and_granularities_are_one_line(node, message):
    with pytest.raises(ValueError, match=message) as err:
        QuantSpec.from_config(node)
    assert "\n" not in str(err.value)


def test_bad_settings_fail_before_training(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"quant.group_size=48 does not divide the input width"):
        build(compose_train(["quant=intx_weight", "quant.group_size=48"], tmp_path))
    with pytest.raises(ValueError, match=r"quant.blocks=\[7\] names a block the model lacks \(it has 3"):
        build(compose_train(["quant=intx_weight", "quant.blocks=[7]"], tmp_path))
    monkeypatch.setattr(qz, "fbgemm_engine", lambda: None)  # a build without the x86 engine
    with pytest.raises(ValueError, match=r"quant=int8_fbgemm needs PyTorch's x86/FBGEMM quantized engine"):
        build(compose_train(["quant=int8_fbgemm"], tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_check_runs_every_new_mode_on_the_untrained_model():
    model = ICLTransformer(TransformerConfig(n_dims=N_DIMS, n_positions=11, n_layer=2))
    for node in ({"name": "intx_weight", "bits": 3, "group_size": 32}, {"name": "int8_fbgemm"},
                 {"name": "attn_fq", "bits": 4, "granularity": "token"}):
        check(QuantSpec.from_config(node), model, on_gpu=False)
    qat = copy.deepcopy(model)
    prepare_qat(qat, QuantSpec.from_config({"name": "qat_intx"}))
    check(QuantSpec.from_config({"name": "qat_intx"}), qat, on_gpu=False)


@pytest.mark.slow
def test_qat_intx_and_intx_jobs_through_the_pipeline(tmp_path, tiny_overrides):
    """Real jobs: QAT at int4 reloads fake-quantised and reports int4 layers; a post-training width is labelled by
    its width in eval.csv and quant.json (so widths stay apart in tables)."""
    import json

    import pandas as pd

    from icl.module import ICLModule
    from icl.run.train import train

    train(compose_train([*tiny_overrides, "quant=qat_intx", "trainer.max_steps=6"], tmp_path / "qat"))
    module = ICLModule.load_from_checkpoint(tmp_path / "qat" / "checkpoints" / "last.ckpt")
    assert sum(type(m).__name__ == "FakeQuantizedLinear" for m in module.model.modules()) == 4
    report = json.loads((tmp_path / "qat" / "quant.json").read_text())
    assert report["quantized_linears"] == 4 and report["quantized_dtype"] == "int4"
    assert report["bytes_packed"] < report["bytes"] < report["bytes_float"]
    train(compose_train([*tiny_overrides, "quant=intx_weight", "quant.bits=3", "trainer.max_steps=6"], tmp_path / "w3"))
    report = json.loads((tmp_path / "w3" / "quant.json").read_text())
    assert report["label"] == "intx_weight_w3_pc" and report["quantized_dtype"] == "int3"
    assert set(pd.read_csv(tmp_path / "w3" / "eval.csv").quant) == {"intx_weight_w3_pc"}
