"""The post-training sweep: breaking points computed from paired CIs, and the CLI end to end on a trained job."""

import math

import pandas as pd
import pytest

from icl.analysis.quant import breaking_points, sweep_markdown
from icl.bench.quant_sweep import probes


def frame(inside: dict[int, bool], kind: str = "weights") -> pd.DataFrame:
    return pd.DataFrame([{"task": "linear", "attn": "softmax", "seed": 0, "run_dir": "a", "kind": kind, "bits": b,
                          "margin": 0.05, "float_error": 0.1, "diff": 0.0 if ok else 0.2, "diff_low": -0.01,
                          "diff_high": 0.01 if ok else 0.3, "inside_margin": ok, "block": None, "branch": "",
                          "seconds": 0.1} for b, ok in inside.items()])


def test_breaking_point_is_the_smallest_width_with_every_wider_one_inside():
    assert breaking_points(frame({8: True, 6: True, 4: False, 3: True, 2: False})).smallest_bits_inside.item() == 6
    assert breaking_points(frame({2: True, 8: True, 4: True})).smallest_bits_inside.item() == 2  # order-free
    assert math.isnan(breaking_points(frame({8: False, 4: True})).smallest_bits_inside.item())
    text = sweep_markdown(pd.concat([frame({8: True, 4: False}), frame({16: True, 8: True}, "attention")]))
    assert "## Breaking points" in text and "✗" in text


def test_probes_cover_widths_and_every_block_and_branch():
    got = probes(3, (8, 4), (16, 8), 3, 4, 32)
    assert [p.bits for p in got if p.kind == "weights"] == [8, 4]
    assert [p.bits for p in got if p.kind == "attention"] == [16, 8]
    assert [p.node["name"] for p in got if p.kind == "int8"] == ["int8_weight", "int8_dynamic", "int8_fbgemm"]
    sens = {(p.block, p.branch) for p in got if p.kind == "sensitivity"}
    assert sens == {(b, br) for b in range(3) for br in ("attn", "mlp", "internals")}


@pytest.mark.parametrize("args, message", [
    (["bits=[8,1]"], "quant.bits=1 is impossible for quant=intx_weight"),
    (["attn_bits=[40]"], "quant.bits=40 is impossible for quant=attn_fq"),
    (["group_size=-4"], "quant.group_size=-4 must be a positive integer"),
    (["n_prompts=0"], "n_prompts=0 must be a positive number"),
])
def test_cli_refuses_impossible_settings_before_loading_anything(tmp_path, args, message):
    from icl.bench.quant_sweep import main

    with pytest.raises(ValueError, match=message):
        main([f"inputs=[{tmp_path / 'nowhere'}]", *args])


def test_cli_without_trained_jobs_says_so(tmp_path):
    from icl.bench.quant_sweep import main

    with pytest.raises(SystemExit, match="no trained job"):
        main([f"inputs=[{tmp_path}]"])


@pytest.mark.slow
def test_cli_sweeps_a_trained_job_without_retraining(tmp_path, tiny_overrides):
    from icl.analysis.quant import quant_sweep_figures
    from icl.bench.quant_sweep import main
    from icl.run.train import train
    from tests.helpers import compose_train

    job = tmp_path / "job"
    train(compose_train([*tiny_overrides, "trainer.max_steps=20"], job))
    ckpt = job / "checkpoints" / "last.ckpt"
    before = ckpt.stat().st_mtime_ns
    df = main([f"inputs=[{tmp_path}]", f"out={tmp_path / 'sweep'}", "bits=[8,2]", "attn_bits=[16,2]",
               "n_prompts=128"])
    assert ckpt.stat().st_mtime_ns == before  # the trained model is read, never retrained
    assert len(df) == 2 + 2 + 3 + 3  # 2 weight widths, 2 attention widths, 3 int8 backends, 1 block x 3 branches
    assert (df.k == 5).all() and df.n_prompts.eq(128).all()  # k = 2d = 6 past the 6-point prompts: the last k
    w = df[df.kind == "weights"].set_index("bits")
    assert abs(w.loc[8, "diff"]) < abs(w.loc[2, "diff"])  # fewer bits move the error further
    assert (df.diff_low <= df["diff"]).all() and (df["diff"] <= df.diff_high).all()
    a = df[df.kind == "attention"].set_index("bits")
    assert abs(a.loc[16, "diff"]) < 1e-3
    assert (tmp_path / "sweep" / "quant_sweep.md").read_text().startswith("# Quantisation sweep")
    assert [p.name for p in quant_sweep_figures([tmp_path / "sweep"], tmp_path / "fig")] == ["quant_sweep_sweep_linear.png"]
