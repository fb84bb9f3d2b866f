"""The whole-model benchmark: statistics, FLOP count, protocol and outputs (tiny sizes; speed is not asserted)."""

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from icl.analysis.bench_figures import bench_figures
from icl.attention import ATTENTION
from icl.bench.flops import dense_flops, forward_flops, train_flops
from icl.bench.latency import latency_batch, run, sanity
from icl.run.configs import CONFIG_DIR
from icl.stats import bootstrap_median_ci, mann_whitney_p, ratio_ci
from icl.transformer import ICLTransformer, TransformerConfig

FAST = ["latency.model=tiny", "latency.ks=[2,5]", "latency.batch=8", "latency.warmup=1", "latency.repeats=3",
        "throughput.models=[tiny]", "throughput.batch=4", "throughput.n_points=6", "throughput.warmup=1",
        "throughput.repeats.tiny=3", "peak_size=256", "n_boot=200"]


def bench_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("bench", overrides=[f"out_dir={tmp_path}", *FAST, *overrides])


def test_bootstrap_ci_of_median_and_ratio():
    rng = np.random.default_rng(0)
    a, b = rng.normal(10, 1, 200), rng.normal(20, 1, 200)
    lo, hi = bootstrap_median_ci(a)
    assert lo < np.median(a) < hi and hi - lo < 1
    ratio, lo, hi = ratio_ci(a, b)
    assert lo < ratio < hi and lo < 0.5 < hi
    assert mann_whitney_p(a, b) < 1e-6
    assert mann_whitney_p(a, rng.permutation(a)) == pytest.approx(1.0)
    assert np.isnan(mann_whitney_p([1.0], [2.0, 3.0]))


def counted(model: ICLTransformer, n: int) -> float:
    xs, ys = torch.randn(2, n, model.config.n_dims), torch.randn(2, n)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(xs, ys)
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("attn", ["softmax", "relu"])
def test_flop_count_matches_torch_flop_counter(attn):
    """softmax (SDPA's math path) and relu compute the full T×T matrices at these lengths: causal=False counts them."""
    config = TransformerConfig(n_dims=5, n_positions=11, n_embd=64, n_layer=2, n_head=2, attn=attn)
    assert counted(ICLTransformer(config), 11) == forward_flops(config, 11, causal=False)
    assert forward_flops(config, 11) < forward_flops(config, 11, causal=False)  # the causal half is less
    assert train_flops(config, 11) == 3 * forward_flops(config, 11)


def test_reference_flop_count_matches_torch_flop_counter():
    """Garg et al.'s model runs every block and its read-out at every token: ``every_token=True`` counts it."""
    from icl.run.garg import GargTransformer

    config = TransformerConfig(n_dims=5, n_positions=11, n_embd=64, n_layer=2, n_head=2)
    ref = GargTransformer(n_dims=5, n_positions=11, n_embd=64, n_layer=2, n_head=2).eval()
    xs, ys = torch.randn(2, 11, 5), torch.randn(2, 11)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        ref(xs, ys)
    assert counter.get_total_flops() / 2 == forward_flops(config, 11, causal=False, every_token=True)


def test_dense_flops_match_the_linear_layers():
    """Kernels without pairwise scores count only the linear layers (a lower bound): exactly torch's addmm count."""
    config = TransformerConfig(n_dims=5, n_positions=11, n_embd=32, n_layer=3, n_head=2, attn="linear")
    xs, ys = torch.randn(2, 11, 5), torch.randn(2, 11)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        ICLTransformer(config)(xs, ys)
    addmm = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "addmm" in str(k))
    assert addmm / 2 == dense_flops(config, 11) == forward_flops(config, 11)


def test_impossible_speed_is_flagged():
    assert sanity(1e9, 1.0, 1e12)["flag"] == ""  # 1 GFLOP in 1 ms = 1 TFLOP/s = the peak: fine
    assert sanity(1e9, 0.5, 1e12)["flag"].startswith("ERROR")  # twice the peak


def test_batch_is_reduced_and_says_why(tmp_path):
    cfg = bench_cfg(tmp_path, "latency.batch=2048", "latency.max_call_seconds=0.1").latency
    assert latency_batch(cfg, 11, flops=1e6, peak=1e12) == (2048, "")
    batch, reason = latency_batch(cfg, 11, flops=1e9, peak=1e11)
    assert batch == 4 and reason == "time"  # 4 prompts × 1 GFLOP / 100 GFLOP/s × 2 = 0.08 s
    cfg = bench_cfg(tmp_path, "latency.max_memory_gb=0.001").latency
    assert latency_batch(cfg, 501, flops=1.0, peak=1e12)[1] == "memory"


def test_latency_grid_and_reference_comparison(tmp_path):
    df = run(bench_cfg(tmp_path, "latency.variants=[softmax,linear]", "latency.quant=[none,int8_weight,int4_weight]",
                       "throughput.profile=true"))
    assert "aten::" in (tmp_path / "profile_train_tiny_reference.txt").read_text()
    lat = df[df.part == "latency"]
    assert len(lat) == 2 * 3 * 2 and set(lat.k) == {2, 5} and set(lat.tokens) == {6, 12}
    skipped = lat[lat.quant == "int4_weight"]
    assert skipped.median_ms.isna().all() and skipped.note.str.contains("CUDA").all()
    timed = lat[lat.quant != "int4_weight"]
    assert (timed.n == 3).all() and (timed.median_ci_low_ms <= timed.median_ci_high_ms).all()
    assert (timed.flops_per_prompt > 0).all() and (timed.frac_of_peak > 0).all()
    np.testing.assert_allclose(timed.frac_of_peak, timed.achieved_gflops / timed.peak_gflops)
    float_peak = timed[timed["quant"] == "none"].peak_gflops
    assert float_peak.nunique() == 1 and (timed.peak_gflops >= float_peak.iloc[0]).all()  # one bound per run
    ref = timed[(timed.attn == "softmax") & (timed["quant"] == "none")]
    assert (ref.ratio == 1).all() and (ref.p_value == 1).all()
    assert timed.ratio.notna().all() and (timed.ratio_ci_low <= timed.ratio_ci_high).all()
    vs = df[df.part.isin(["train", "inference"])]
    assert set(zip(vs.part, vs.impl)) == {(p, i) for p in ("train", "inference") for i in ("ours", "reference")}
    assert (vs.steps_per_s > 0).all() and (vs.prompts_per_s == 4 * vs.steps_per_s).all()
    assert pd.read_csv(tmp_path / "bench.csv").shape == df.shape
    table = (tmp_path / "bench.md").read_text()
    assert "| softmax | none | 2 |" in table and "reference / ours" in table
    assert (tmp_path / "bench_latency.png").stat().st_size > 0
    figs = bench_figures([tmp_path], tmp_path / "figs", ("png", "pdf"))
    assert [p.name for p in figs] == [f"bench_latency_{tmp_path.name}.png", f"bench_latency_{tmp_path.name}.pdf"]
    from icl.analysis.figures import make_figures  # `make figures` picks the benchmark up, even with no eval.csv around

    assert {p.name for p in make_figures([tmp_path], tmp_path / "all", ("png",))} == {f"bench_latency_{tmp_path.name}.png"}


def test_every_variant_and_cpu_quant_mode_runs(tmp_path):
    df = run(bench_cfg(tmp_path, "parts=[latency]", "latency.ks=[1]", "latency.batch=2", "latency.repeats=1",
                       "latency.warmup=0", "latency.quant=[none,int8_weight,int8_dynamic,int8_fbgemm,qat_int8,bf16]"))
    assert set(df.attn) == set(ATTENTION) and len(df) == len(ATTENTION) * 6
    assert df.note.fillna("").eq("").all(), df[df.note.fillna("") != ""][["attn", "quant", "note"]]


def test_bad_settings_are_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="unknown attention variant.*'nope'"):
        run(bench_cfg(tmp_path, "latency.variants=[nope]"))
    with pytest.raises(ValueError, match="unknown quant mode.*'int2'"):
        run(bench_cfg(tmp_path, "latency.quant=[int2]"))
    sizes = ", ".join(sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml")))
    with pytest.raises(ValueError, match=f"unknown model 'huge'; choose from: {sizes}$"):
        run(bench_cfg(tmp_path, "latency.model=huge"))
    with pytest.raises(ValueError, match="unknown part"):
        run(bench_cfg(tmp_path, "parts=[speed]"))
    with pytest.raises(ValueError, match=r"add throughput.repeats.small=N"):
        run(bench_cfg(tmp_path, "throughput.models=[small]", "~throughput.repeats.small"))


def test_quick_preset_composes_and_passes_the_checks(tmp_path):
    from icl.bench.latency import check

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=["bench=quick"])
    assert cfg.latency.model == "tiny" and max(cfg.latency.ks) <= 100 and list(cfg.throughput.models) == ["tiny"]
    check(cfg)


@pytest.mark.slow
def test_cli_error_is_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "icl.bench", f"out_dir={tmp_path}", "latency.variants=[nope]"],
                          capture_output=True, text=True, cwd=CONFIG_DIR.parent, timeout=300)
    assert proc.returncode == 1
    assert "unknown attention variant(s) ['nope']" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
