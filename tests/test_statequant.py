"""Feature-map and recurrent-state fake quantisation of the linear-cost mixers (quant=state_fq, icl/statequant.py):
the token-by-token references equal the fast primitives, ≥ 16 bits equals float, 8 bits moves outputs by a measured
amount, causality holds, and the routing is undone after every call."""

import pytest
import torch

from icl import attention, mixers, scans
from icl.attention import causal_linear_attention
from icl.bench.attention import variant_params
from icl.mixers import build_mixer
from icl.quantize import QuantSpec, check, quantize, quantize_with_proof
from icl.scans import decay_linear_attention, delta_rule, selective_scan
from icl.statequant import (
    RECURRENT_MIXERS,
    QuantizedMixer,
    decay_steps,
    delta_steps,
    linear_attention_steps,
    recurrent_blocks,
    selective_steps,
    uses_recurrence,
)
from icl.transformer import ICLTransformer, TransformerConfig
from tests.test_quantize import N_DIMS, N_POINTS, prompts, tiny_model

EMBD, T = 32, 24
same = lambda x: x  # no rounding: the step forms must then be the fast forms


def test_step_references_equal_the_fast_primitives():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 21, 8) for _ in range(3))
    phi_q, phi_k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    torch.testing.assert_close(linear_attention_steps(phi_q, phi_k, v, same),
                               causal_linear_attention(phi_q, phi_k, v, 8), rtol=1e-4, atol=1e-5)
    log_a = -torch.rand(2, 2, 21)
    torch.testing.assert_close(decay_steps(q, k, v, log_a, same), decay_linear_attention(q, k, v, log_a, 8),
                               rtol=1e-4, atol=1e-4)
    per_head = -torch.rand(2)
    torch.testing.assert_close(decay_steps(q, k, v, per_head, same), decay_linear_attention(q, k, v, per_head, 8),
                               rtol=1e-4, atol=1e-4)
    qn, kn, beta = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1), torch.rand(2, 2, 21)
    torch.testing.assert_close(delta_steps(qn, kn, v, beta, same), delta_rule(qn, kn, v, beta, 8), rtol=1e-4, atol=1e-4)
    x, dt = torch.randn(2, 21, 6), torch.rand(2, 21, 6)
    A, B, C = -torch.rand(6, 4), torch.randn(2, 21, 4), torch.randn(2, 21, 4)
    torch.testing.assert_close(selective_steps(x, dt, A, B, C, same), selective_scan(x, dt, A, B, C),
                               rtol=1e-4, atol=1e-4)


def mixer(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_mixer(name, EMBD, 2, variant_params(name) if name in attention.ATTENTION else None,
                    pos="none").eval()
    # wider than the init, like trained weights; performer's exp features span decades at 0.3 (16-bit absmax
    # rounding then zeroes the small ones: docs/quantization.md), so it gets a narrower spread
    for p in m.parameters():
        p.data.normal_(0, 0.1 if name == "performer" else 0.3)
    return m


@pytest.mark.parametrize("name", RECURRENT_MIXERS)
def test_state_fake_quant_equals_float_at_16_bits_moves_at_8_and_stays_causal(name):
    inner = mixer(name)
    x = torch.randn(2, T, EMBD)
    with torch.no_grad():
        ref = inner(x)
        rel = lambda out: ((out - ref).norm() / ref.norm()).item()
        assert rel(QuantizedMixer(inner, 16)(x)) < 2e-4  # float to 16-bit rounding (mamba's outputs reach ~100)
        torch.testing.assert_close(QuantizedMixer(inner, 24)(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
        low = QuantizedMixer(inner, 8)
        moved = rel(low(x))
        assert 1e-3 < moved < 0.05, moved
        for part in ("features", "state"):  # each part alone moves the output too
            assert (QuantizedMixer(inner, 4, (part,))(x) - ref).abs().max() > 1e-4, part
        later = x.clone()
        later[:, 12:] += 3.0  # change only the tokens from 12 on
        torch.testing.assert_close(low(later)[:, :12], low(x)[:, :12], rtol=0, atol=0)
        torch.testing.assert_close(inner(x), ref, rtol=0, atol=0)  # the routing is undone after the call
    assert scans.delta_rule is delta_rule and mixers.Mamba.SCANS["fused"] is scans.selective_scan_fused
    assert attention.causal_linear_attention is causal_linear_attention


def test_attention_kernels_without_a_recurrence_are_told_apart_and_refused():
    assert not uses_recurrence(mixer("softmax"), EMBD) and uses_recurrence(mixer("linear"), EMBD)
    with pytest.raises(ValueError, match="ran no recurrence"):
        QuantizedMixer(mixer("relu"), 8)(torch.randn(1, 4, EMBD))
    with pytest.raises(ValueError, match=r"layer 0 is SoftmaxAttention: use quant=attn_fq"):
        quantize(tiny_model(), QuantSpec.from_config({"name": "state_fq"}))
    with pytest.raises(ValueError, match=r"^quant=state_fq does not run on this model here \(ValueError: state fake-quant needs"):
        check(QuantSpec.from_config({"name": "state_fq"}), tiny_model(), on_gpu=False)  # the pre-training check


def linear_model(pattern: list[str] | None = None) -> ICLTransformer:
    torch.manual_seed(0)
    model = ICLTransformer(TransformerConfig(n_dims=N_DIMS, n_positions=N_POINTS, n_embd=EMBD, n_layer=2, n_head=2,
                                             attn="linear", pattern=pattern))
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    return model.eval()


def test_state_fq_mode_wraps_every_block_and_reports_simulated():
    model, (xs, ys) = linear_model(), prompts()
    spec = QuantSpec.from_config({"name": "state_fq", "bits": 8})
    q, report = quantize_with_proof(model, spec, xs, ys)
    assert all(type(b.attn) is QuantizedMixer for b in q.blocks)
    assert all(type(b.attn) is not QuantizedMixer for b in model.blocks)
    assert report["recurrent_mixers_quantized"] == 2 and report["quantized_linears"] == 0
    assert report["storage"].startswith("simulated") and 1e-5 < report["rel_diff_mean"] < 0.05
    assert report["label"] == "state_fq_s8"
    assert QuantSpec.from_config({"name": "state_fq", "tensors": ["state"]}).label == "state_fq_s8_state"
    hybrid = linear_model(["linear", "softmax"])
    assert recurrent_blocks(hybrid) == [0]
    assert type(quantize(hybrid, QuantSpec.from_config({"name": "state_fq", "blocks": [0]})).blocks[0].attn) \
        is QuantizedMixer


@pytest.mark.parametrize("node, message", [
    ({"name": "state_fq", "bits": 1}, r"quant.bits=1 is impossible for quant=state_fq"),
    ({"name": "state_fq", "tensors": ["q"]}, r"quant.tensors=\['q'\]: list some of \['features', 'state'\]"),
    ({"name": "state_fq", "granularity": "head"}, r"unknown quant option\(s\) \['granularity'\]"),
])
def test_bad_state_fq_settings_are_one_line(node, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec.from_config(node)


def test_state_fq_job_through_the_pipeline(tmp_path, tiny_overrides):
    """A real job: a linear-attention model trained a few steps, evaluated with its state at 6 bits."""
    import json

    import pandas as pd

    from icl.run.train import train
    from tests.helpers import compose_train

    train(compose_train([*tiny_overrides, "attn=linear", "quant=state_fq", "quant.bits=6", "trainer.max_steps=4"],
                        tmp_path))
    report = json.loads((tmp_path / "quant.json").read_text())
    assert report["label"] == "state_fq_s6" and report["recurrent_mixers_quantized"] >= 1
    assert report["storage"].startswith("simulated") and report["rel_diff_max"] > 0
    assert set(pd.read_csv(tmp_path / "eval.csv").quant) == {"state_fq_s6"}


def test_differently_quantised_mixers_in_two_threads_each_give_their_single_thread_output():
    """The routing is per thread: a 4-bit and an 8-bit Mamba (the same primitive) and a float one, run over and
    over at once in three threads, each give what they give alone."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    inner, x = mixer("mamba"), torch.randn(2, T, EMBD)
    models = {"float": inner, 8: QuantizedMixer(inner, 8), 4: QuantizedMixer(inner, 4)}
    with torch.no_grad():
        alone = {key: m(x) for key, m in models.items()}
    assert (alone[4] - alone[8]).abs().max() > 1e-3 and (alone[8] - alone["float"]).abs().max() > 1e-4
    start = threading.Barrier(len(models))

    def run(key):
        start.wait()
        with torch.no_grad():
            return max((models[key](x) - alone[key]).abs().max().item() for _ in range(15))

    with ThreadPoolExecutor(len(models)) as pool:
        worst = dict(zip(models, pool.map(run, models)))  # a thread's exception is raised here
    assert all(value <= 1e-5 for value in worst.values()), worst
