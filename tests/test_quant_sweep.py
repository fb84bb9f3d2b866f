"""The post-training sweep: breaking points computed from paired CIs, and the CLI end to end on a trained job."""

import json
import math

import pandas as pd
import pytest
from scipy import stats as sps

from icl.analysis.quant import breaking_points, sweep_markdown
from icl.bench.quant_sweep import find_jobs, probes, seed_level, sensitivity_over_seeds, variant_breaking_points


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
    hybrid = probes(3, (8,), (16, 8), 3, 4, 32, kernel_blocks=(2,), state_blocks=(0, 1))
    assert [p.node["blocks"] for p in hybrid if p.kind == "attention"] == [[2], [2]]
    assert [(p.bits, p.node["name"], p.node["blocks"]) for p in hybrid if p.kind == "state"] == [
        (16, "state_fq", [0, 1]), (8, "state_fq", [0, 1])]
    sens = {(p.block, p.branch) for p in hybrid if p.kind == "sensitivity"}
    assert sens == {(0, "attn"), (0, "mlp"), (0, "state"), (1, "attn"), (1, "mlp"), (1, "state"), (2, "attn"),
                    (2, "mlp"), (2, "internals")}
    recurrent = probes(2, (8,), (8,), 3, 4, 32, kernel_blocks=(), state_blocks=(0, 1))
    assert not [p for p in recurrent if p.kind == "attention" or p.branch == "internals"]
    assert [p.node["blocks"] for p in recurrent if p.kind == "state"] == [None]  # every block: no list


def seeds_frame(diffs: dict[int, list[float]]) -> pd.DataFrame:
    return pd.concat([frame({b: True for b in diffs}).assign(seed=s, run_dir=f"r{s}", diff=[diffs[b][s] for b in diffs])
                      for s in range(len(next(iter(diffs.values()))))], ignore_index=True)


def test_seed_level_verdict_is_the_studys_t_interval_over_seeds():
    diffs = {8: [0.001, 0.002, 0.0], 4: [0.01, 0.05, 0.03], 2: [0.2, 0.3, 0.25]}
    seeds = seed_level(seeds_frame(diffs)).set_index("bits")
    x = diffs[4]
    half = sps.t.ppf(0.975, 2) * pd.Series(x).std() / math.sqrt(3)
    assert seeds.loc[4, "diff_high"] == pytest.approx(sum(x) / 3 + half)
    assert seeds.loc[4, "seed"] == "3 seeds" and seeds.loc[4, "seeds"] == "0 1 2"
    assert list(seeds.verdict) == ["refuted", "not resolved at this scale", "confirmed"]  # 2, 4 (CI spans 0.05), 8
    assert breaking_points(seeds.reset_index()).smallest_bits_inside.item() == 8
    three = variant_breaking_points(seeds_frame(diffs))
    assert three.rule.item() == "t-interval over 3 seeds" and three.breaking_point.item() == "8 bits"
    assert three.per_seed.item() == "2 2 2"  # each seed alone: its prompt CI is inside at every width
    pair = seeds_frame({8: [0.0, 0.001], 4: [0.01, 0.01]})
    two = seed_level(pair)
    assert (two.verdict == "not resolved at this scale").all() and not two.inside_margin.any()  # < 3 seeds
    assert variant_breaking_points(pair).rule.item() == "per seed (paired CI over prompts)"


def test_the_sweeps_breaking_point_per_variant_is_the_figures_summary():
    """One reading of a breaking point: the sweep's table per variant and the figures' summary agree on every arm,
    where a width lacks a seed (read per seed) and on every committed sweep."""
    from icl.analysis.quant import breaking_point_summary, combine_sweeps, find_sweeps, with_guard_columns
    from tests.helpers import REPO

    uneven = seeds_frame({8: [0.0, 0.001, 0.002], 4: [0.01, 0.02, 0.03]})
    uneven = uneven[~((uneven.seed == 2) & (uneven.bits == 4))].assign(source="cpu", recipe="")  # 4 bits: 2 seeds
    committed = combine_sweeps(find_sweeps([REPO / "docs" / "quantization"]))
    for df in (uneven, committed):
        table = variant_breaking_points(df)
        table = table[table.n_seeds > 0]
        summary = breaking_point_summary(with_guard_columns(df))
        arm = (table.source + " " + table.recipe).str.strip()
        mine = sorted(zip(table.task, table.attn, arm, table.kind, table.breaking_point, table.rule))
        assert mine == sorted(zip(summary.task, summary.attn, summary.arm, summary.kind, summary.breaking_point,
                                  summary.read))
    assert variant_breaking_points(uneven).breaking_point.item() == "4 4 8 bits"  # seed 2 has no 4-bit row


def test_only_finished_jobs_are_swept(tmp_path):
    for name, status in (("done", "done"), ("running", "running"), ("failed", "failed")):
        job = tmp_path / name
        (job / "checkpoints").mkdir(parents=True)
        (job / ".hydra").mkdir()
        for config in (job / "config.yaml", job / ".hydra" / "config.yaml"):  # Hydra's copy is no second job
            config.write_text("seed: 0\n")
        (job / "checkpoints" / "last.ckpt").write_bytes(b"")
        (job / "status.json").write_text(json.dumps({"status": status}))
    assert find_jobs([str(tmp_path)]) == [(tmp_path / "done").resolve()]


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
    train(compose_train([*tiny_overrides, "trainer.max_steps=20", "attn=linear"], job))
    ckpt = job / "checkpoints" / "last.ckpt"
    before = ckpt.stat().st_mtime_ns
    df = main([f"inputs=[{tmp_path}]", f"out={tmp_path / 'sweep'}", "bits=[8,2]", "attn_bits=[16,2]",
               "n_prompts=128"])
    assert ckpt.stat().st_mtime_ns == before  # the trained model is read, never retrained
    assert len(df) == 2 + 2 + 2 + 3 + 4  # 2 weight, 2 attention, 2 state widths, 3 int8 backends, 1 block x 4 branches
    assert (df.k == 5).all() and df.n_prompts.eq(128).all()  # k = 2d = 6 past the 6-point prompts: the last k
    w = df[df.kind == "weights"].set_index("bits")
    assert abs(w.loc[8, "diff"]) < abs(w.loc[2, "diff"])  # fewer bits move the error further
    assert (df.diff_low <= df["diff"]).all() and (df["diff"] <= df.diff_high).all()
    a = df[df.kind == "attention"].set_index("bits")
    assert abs(a.loc[16, "diff"]) < 1e-3
    st = df[df.kind == "state"].set_index("bits")
    assert abs(st.loc[16, "diff"]) < 1e-3 and st.loc[16, "label"] == "state_fq_s16"
    assert set(df[df.kind == "sensitivity"].branch) == {"attn", "mlp", "internals", "state"}
    assert (df.guard_baseline == "least_squares").all()
    assert (tmp_path / "sweep" / "quant_sweep_seeds.csv").is_file()
    assert "run_dir" not in pd.read_csv(tmp_path / "sweep" / "quant_sweep_compact.csv").columns
    assert (tmp_path / "sweep" / "quant_sweep.md").read_text().startswith("# Quantisation sweep")
    assert not df.learned.any()  # 20 steps: the study's guard says it did not learn, so nothing is drawn
    assert quant_sweep_figures([tmp_path / "sweep"], tmp_path / "fig") == []
    main([f"inputs=[{tmp_path}]", f"out={tmp_path / 'all'}", "bits=[8,2]", "attn_bits=[16,2]", "n_prompts=128",
          "guard=false"])
    assert [p.name for p in quant_sweep_figures([tmp_path / "all"], tmp_path / "fig")] == [
        "quant_sweep_linear.png", "quant_sensitivity_linear.png", "quant_breaking_points.csv",
        "quant_breaking_points.md"]  # quant_sweep.csv and its compact copy: drawn once


def test_sensitivity_over_seeds_is_mean_and_range_per_block_and_branch():
    rows = frame({3: True}).assign(kind="sensitivity", block=0, branch="mlp")
    df = pd.concat([rows.assign(seed=s, diff=d) for s, d in enumerate([0.01, 0.03, 0.02])], ignore_index=True)
    out = sensitivity_over_seeds(df)
    assert out["mlp@3"].item() == "+0.020 (+0.010 … +0.030)" and out.n_seeds.item() == 3


def test_two_roots_keep_their_seeds_apart_and_the_guard_leaves_out_seeds_that_did_not_learn():
    diffs = {8: [0.001, 0.002, 0.0, 0.9], 4: [0.01, 0.02, 0.015, 0.9]}
    tuned = seeds_frame(diffs).assign(source="cpu", learned=lambda f: f.seed < 3)  # seed 3 did not learn
    shared = seeds_frame({8: [0.0, 0.0, 0.001], 4: [0.2, 0.3, 0.25]}).assign(
        source="tune_shared", run_dir=lambda f: "s" + f.run_dir, learned=True)
    df = pd.concat([tuned, shared], ignore_index=True)
    seeds = seed_level(df)
    assert set(zip(seeds.source, seeds.seeds)) == {("cpu", "0 1 2"), ("tune_shared", "0 1 2")}
    points = variant_breaking_points(df).set_index("source")
    assert points.loc["cpu", "breaking_point"] == "4 bits" and points.loc["cpu", "seeds"] == "0 1 2"
    assert points.loc["cpu", "did_not_learn"] == "3 (0.100)" and points.loc["tune_shared", "did_not_learn"] == ""
    assert points.loc["tune_shared", "breaking_point"] == "8 bits"
    nobody = variant_breaking_points(tuned.assign(learned=False))
    assert nobody.rule.item() == "no seed learned (study guard)" and nobody.n_seeds.item() == 0
    sens = sensitivity_over_seeds(df.assign(kind="sensitivity", block=0, branch="mlp"))
    assert list(sens.n_seeds) == [3, 3]  # the failed seed is not averaged in
    alone = seed_level(tuned.assign(learned=True))
    assert alone.set_index("bits").loc[4, "seeds"] == "0 1 2 3"  # without the guard it would count


def test_the_guard_is_the_studys_rule_on_the_sweeps_prompts():
    import numpy as np

    from icl import baselines, prompts
    from icl.bench.quant_sweep import GuardRule
    from icl.evaluation import prompt_errors
    from icl.tasks import build_task

    rule = GuardRule.from_study()
    assert list(rule.guard.baselines["linear"]) == ["least_squares"] and rule.guard.zero_fraction == 0.5
    task = build_task("linear", 5, None)
    p = prompts.make_prompts("standard", task, 64, 11, 0)
    ls, zero = prompt_errors(task, baselines.predict("least_squares", p.xs, p.ys), p.targets)
    good = rule.check("linear", task, p, ls + 0.05 * zero, zero, 10, 16)  # 0.05 above least squares: learned
    assert good["learned"] and good["guard_baseline"] == "least_squares" and good["guard_k"] == 10
    assert good["guard_error"] == pytest.approx(float(ls[:, 10].sum() / zero[:, 10].sum()) + 0.05)
    assert rule.check("linear", task, p, ls + 0.4 * zero, zero, 10, 16)["learned"]  # off the plateau: learned
    assert not rule.check("linear", task, p, ls + 0.6 * zero, zero, 10, 16)["learned"]  # > zero_fraction 0.5
    assert not rule.check("linear", task, p, np.full_like(zero, np.nan), zero, 10, 16)["learned"]


def test_carried_rows_are_judged_again_by_todays_guard_from_the_numbers_they_carry():
    from icl.bench.quant_sweep import GuardRule, rejudged
    from icl.lab.study.inference import Guard

    carried = pd.DataFrame({"guard_error": [0.05, 0.3, 0.9, float("nan")], "guard_baseline_error": [0.0, 0.0, 0.0, 0.0],
                            "learned": [True, False, False, True]})
    strict = GuardRule(Guard(0.2, None))
    plateau = GuardRule(Guard(0.5, 0.1))
    assert list(rejudged(carried, strict)) == [True, False, False, True]  # no number: kept as judged
    assert list(rejudged(carried, plateau)) == [True, True, False, True]
    assert list(rejudged(carried, None)) == [True] * 4  # guard=false: every model counts
    assert list(rejudged(carried.drop(columns=["guard_error", "guard_baseline_error"]), plateau)) == [True, False, False, True]


def test_jobs_of_two_roots_are_found_with_their_root_and_a_store_model_relative_to_their_project(tmp_path):
    """Another worktree's jobs: a store model and a re-evaluation's origin are named relative to that project."""
    from icl.bench.quant_sweep import source_of, trained_model

    project = tmp_path / "other_worktree"
    model = project / "outputs" / "store" / "abc" / "model.ckpt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"")
    (model.parent.parent / "f1.ckpt").write_bytes(b"")  # the store's copy of cpu/a's model (same fingerprint)
    cpu, shared = project / "multirun" / "cpu", project / "multirun" / "tune_shared"
    statuses = {cpu / "a": {"fingerprint": "f1"}, cpu / "a_int8": {"fingerprint": "f1", "model": "outputs/store/f1.ckpt"},
                cpu / "b": {"fingerprint": "f2", "model": "outputs/store/abc/model.ckpt"},
                shared / "a_again": {"evaluated_from": "multirun/cpu/a"},  # cpu/a's model on validation prompts
                shared / "trial": {}}  # keeps no model: skipped
    for job, metrics in statuses.items():
        job.mkdir(parents=True)
        (job / "config.yaml").write_text("seed: 0\n")
        (job / "status.json").write_text(json.dumps({"status": "done", "metrics": metrics}))
    (cpu / "a" / "checkpoints").mkdir()
    (cpu / "a" / "checkpoints" / "last.ckpt").write_bytes(b"")
    roots = [str(cpu), str(shared)]
    found = find_jobs(roots)
    assert found == [(cpu / "a").resolve(), (cpu / "b").resolve(), (shared / "a_again").resolve()]  # a_int8: a's model
    assert [source_of(j, roots) for j in found] == ["cpu", "cpu", "tune_shared"]
    assert trained_model(found[0])[1] == "last"
    assert trained_model(found[1]) == (model, str(model))  # not relative to this process's cwd
    own = (cpu / "a" / "checkpoints" / "last.ckpt").resolve()
    assert trained_model(found[2])[0].resolve() == own and trained_model(found[2])[1] != "last"


def test_rescore_reads_a_sweep_again_at_another_margin(tmp_path):
    from icl.bench.quant_sweep import main

    diffs = {8: [0.001, 0.002, 0.0], 4: [0.02, 0.03, 0.025], 2: [0.2, 0.3, 0.25]}
    df = seeds_frame(diffs).assign(source="cpu", learned=True, diff_high=lambda f: f["diff"] + 0.004)
    df.to_csv(tmp_path / "quant_sweep.csv", index=False)
    strict = main([f"inputs=[{tmp_path / 'unused'}]", f"rescore={tmp_path / 'quant_sweep.csv'}", "margin=0.01",
                   f"out={tmp_path / 'strict'}"])
    assert list(strict.groupby("bits").inside_margin.all().sort_index()) == [False, False, True]  # 2, 4, 8 bits
    assert (strict.margin == 0.01).all() and (strict.source == "cpu").all()
    assert "| cpu |  | linear | softmax | weights | 3 |" in (tmp_path / "strict" / "quant_sweep.md").read_text()
    with pytest.raises(ValueError, match="rescore=.*no such quant_sweep.csv"):
        main([f"inputs=[{tmp_path}]", f"rescore={tmp_path / 'nope.csv'}"])


def test_the_sweep_figure_leaves_out_seeds_that_did_not_learn(tmp_path):
    from icl.analysis.quant import quant_sweep_figures

    rows = seeds_frame({8: [0.0, 0.001, 0.9], 4: [0.01, 0.02, 0.9]}).assign(
        learned=lambda f: f.seed < 2, diff_low=lambda f: f["diff"] - 0.005, diff_high=lambda f: f["diff"] + 0.005)
    (tmp_path / "a").mkdir()
    rows.to_csv(tmp_path / "a" / "quant_sweep.csv", index=False)
    assert [p.name for p in quant_sweep_figures([tmp_path / "a"], tmp_path / "fig")] == [
        "quant_sweep_linear.png", "quant_breaking_points.csv", "quant_breaking_points.md"]
    rows.assign(learned=False).to_csv(tmp_path / "a" / "quant_sweep.csv", index=False)
    assert quant_sweep_figures([tmp_path / "a"], tmp_path / "none") == []  # no learned model: nothing to draw
