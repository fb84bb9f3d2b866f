"""icl.bench.gemm: the step's matrix products recorded by shape and layout, counted as torch counts them, replayed
alone; and the benchmark's "where the step goes" columns (tiny sizes; speed is not asserted)."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from icl.bench.gemm import GEMM_OPS, GemmCall, gemm_flops, record_gemms
from icl.bench.latency import build_model, prompts, run, train_call


def tiny_step():
    model = build_model("tiny", 5, 11)
    xs, ys = prompts(8, 11, 5, torch.device("cpu"), 0)
    return train_call(model, xs, ys, torch.device("cpu"), None, False, False)


def test_recorded_gemm_flops_are_torchs_count_of_the_same_ops():
    """Forward and backward products are all caught: their FLOPs equal torch's flop counter restricted to them."""
    step = tiny_step()
    step()  # the optimiser's state exists: the recorded step is a steady one
    calls = record_gemms(step)
    with FlopCounterMode(display=False) as counter:
        step()
    packets = {op.overloadpacket for op in GEMM_OPS}
    torch_gemm = sum(n for op, n in counter.get_flop_counts()["Global"].items() if op in packets)
    assert gemm_flops(calls) == torch_gemm > 0
    assert any(len(c.operands[0][0]) == 2 and c.operands[0][1][0] == 1 for c in calls)  # a transposed operand (backward)


def test_a_replay_is_the_same_product_on_fresh_operands_of_the_same_layout():
    a = torch.randn(6, 4).t()  # (4, 6), transposed layout
    b, bias = torch.randn(6, 3), torch.randn(3)
    calls = record_gemms(lambda: (torch.addmm(bias, a, b), torch.bmm(torch.randn(2, 4, 5), torch.randn(2, 5, 7))))
    assert sorted(c.op.__name__ for c in calls) == ["addmm.default", "bmm.default"]
    for call in calls:
        out = call.replay(torch.device("cpu"))()
        assert out.shape == {"addmm.default": (4, 3), "bmm.default": (2, 4, 7)}[call.op.__name__]
    addmm = next(c for c in calls if c.op.__name__ == "addmm.default")
    assert addmm.flops == 2 * 4 * 6 * 3 and addmm.operands[1][1] == (1, 4)  # the transposed stride is kept
    assert next(c for c in calls if c.op.__name__ == "bmm.default").flops == 2 * 2 * 4 * 5 * 7
    assert isinstance(addmm, GemmCall) and "addmm" in addmm.describe()


def test_the_benchmark_reports_where_the_train_step_goes(tmp_path):
    from tests.test_bench import bench_cfg

    df = run(bench_cfg(tmp_path, "parts=[throughput]", "throughput.modes=[train]", "throughput.gemm=true"))
    ours = df[(df.part == "train") & (df.impl == "ours")].iloc[0]
    assert ours.gemm_ms > 0 and ours.gemm_calls >= ours.gemm_shapes > 0 and 0 < ours.gemm_flops <= ours.work_flops
    assert ours.gemm_dtype == "float32"
    assert abs(ours.gemm_share - ours.gemm_ms / ours.median_ms) < 1e-12
    assert abs(ours.bound_frac_of_peak - ours.frac_of_peak / ours.gemm_share) < 1e-9  # counted FLOPs ÷ GEMM time alone
    assert df[df.impl == "reference"].gemm_ms.isna().all()
    text = (tmp_path / "bench.md").read_text()
    assert "Where ours' training step goes" in text
    assert "float32" in text.splitlines()[0] and "bfloat16" not in text.splitlines()[0]  # no latency grid: no bf16 peak


def test_a_broadcast_operand_replays_and_a_peak_not_measured_leaves_the_fraction_unknown():
    import numpy as np
    import pandas as pd

    from icl.bench.latency import add_gemm_bound

    row = torch.randn(1, 5).expand(4, 5)  # stride 0 in the first dimension
    (call,) = record_gemms(lambda: torch.mm(row, torch.randn(5, 3)))
    assert call.operands[0][1][0] == 0 and call.replay(torch.device("cpu"))().shape == (4, 3)
    df = pd.DataFrame({"gemm_ms": [1.0, 1.0], "gemm_flops": [1e9, 1e9], "work_flops": [2e9, 2e9],
                       "gemm_dtype": ["float32", "bfloat16"]})
    out = add_gemm_bound(df, {"float32": 2e12})  # a bf16 step's GEMMs are not judged against float32's peak
    assert out.gemm_frac_of_peak.iloc[0] == 0.5 and out.bound_frac_of_peak.iloc[0] == 1.0
    assert np.isnan(out.gemm_frac_of_peak.iloc[1]) and np.isnan(out.bound_frac_of_peak.iloc[1])
