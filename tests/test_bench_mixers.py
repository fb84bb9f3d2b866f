"""The sequence-mixer benchmark (icl.bench.mixers): cost rows with state memory and FLOPs, training-step ratios."""


import pytest
from omegaconf import OmegaConf

from icl.bench.mixers import run
from icl.quantize import QuantSpec
from tests.helpers import CONFIGS

CFG = {"parts": ["cost", "train_step"], "variants": ["softmax", "sliding_window", "mamba"], "lengths": [16, 32],
       "modes": ["forward", "forward_backward"], "batch": 1, "n_embd": 16, "n_head": 2, "dtype": "float32",
       "device": "cpu", "threads": None, "warmup": 0, "repeats": 2, "train_repeats": 2, "seed": 0}


def test_mixer_bench_rows_state_memory_and_train_step_ratios(tmp_path):
    out = run(OmegaConf.create({**CFG, "out_dir": str(tmp_path)}))
    cost, steps = out["cost"], out["train_step"]
    assert len(cost) == 3 * 2 * 2 and cost.median_ms.notna().all()
    state = cost.drop_duplicates(["variant", "T"]).set_index(["variant", "T"]).state_floats
    assert state["softmax", 32] == 2 * state["softmax", 16] == 2 * 16 * 32  # the KV cache grows with T
    assert state["mamba", 16] == state["mamba", 32]  # a recurrent state does not
    flops = cost.drop_duplicates(["variant", "T"]).set_index(["variant", "T"]).kernel_flops
    assert flops["softmax", 16] == 4 * 16 * 16 * 17 // 2
    assert flops["mamba", 32] == 2 * flops["mamba", 16] == 2 * 16 * (6 * 32 * 16 + 3 * 32)  # D = 2·16, N = 16
    assert flops["sliding_window", 32] < flops["softmax", 32]
    assert list(steps.mixer) == ["softmax", "sliding_window", "mamba"] and steps.ratio_to_softmax.iloc[0] == 1.0
    assert {"mixers.csv", "mixers_slopes.csv", "mixers.md", "train_step.csv"} <= {p.name for p in tmp_path.iterdir()}


def test_unknown_mixer_or_part_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="unknown sequence mixer 'nope'"):
        run(OmegaConf.create({**CFG, "variants": ["nope"], "out_dir": str(tmp_path)}))
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['speed'\]"):
        run(OmegaConf.create({**CFG, "parts": ["speed"], "out_dir": str(tmp_path)}))
    inference = {**CFG, "parts": ["inference"], "quant": ["none"], "inference_batch": 0, "inference_repeats": 2,
                 "out_dir": str(tmp_path)}
    with pytest.raises(ValueError, match="inference_batch must be a positive integer, got 0"):
        run(OmegaConf.create(inference))
    with pytest.raises(ValueError, match="unknown quant mode 'int3'"):
        run(OmegaConf.create({**inference, "inference_batch": 2, "quant": ["int3"]}))


def test_inference_cost_rows_per_mixer_and_quant_mode():
    """CPU time per prompt at k = 2d and the whole model's state floats: the rows the error-vs-cost chart joins."""
    from icl.bench.mixers import inference_costs

    quants = list(OmegaConf.load(CONFIGS / "bench_mixers.yaml").quant)  # the shipped list
    assert {"int8_fbgemm", "intx_weight"} <= set(quants)
    rows = inference_costs(["softmax", "mamba"], quants, batch=4, warmup=0, repeats=2)
    # each row carries the label a job's eval.csv has for the mode at its defaults: what the chart joins on
    labels = [QuantSpec.from_config({"name": q}).label for q in quants]
    assert "intx_weight_w4_pc" in labels and set(rows.note.fillna("")) == {""}
    assert list(zip(rows.attn, rows.quant)) == [(attn, q) for attn in ("softmax", "mamba") for q in labels]
    assert (rows.latency_ms > 0).all() and (rows.latency_low_ms <= rows.latency_high_ms).all()
    state = rows.set_index("attn").state_floats
    assert state["softmax"].iloc[0] == 3 * 2 * 64 * 22  # 3 layers' KV caches of 22 tokens
    assert state["mamba"].iloc[0] == 3 * 128 * (16 + 3)  # 3 layers' SSM states and conv buffers
    assert set(rows.n_dims) == {5} and set(rows.k) == {10} and set(rows.model) == {"tiny"}


def test_the_mixers_bench_costs_the_model_its_smoke_recipe_row_trains():
    """variant_params(name, recipe): an option the recipe row sets reaches the benchmarked model (nystrom's ridge
    here; retnet's d_conv once its row sets one), without a recipe the file's default."""
    from icl.bench.attention import variant_params
    from icl.bench.mixers import smoke_model

    rows = OmegaConf.load(CONFIGS / "recipe" / "smoke.yaml").recipe.variants
    assert variant_params("nystrom")["ridge"] == 0.0 and variant_params("nystrom", "smoke")["ridge"] == rows.nystrom.ridge
    want = rows.get("retnet", {}).get("d_conv")
    assert variant_params("retnet", "smoke")["d_conv"] == want and variant_params("retnet")["d_conv"] is None
    assert (smoke_model("retnet").blocks[0].attn.conv is None) == (want is None or want == 1)
