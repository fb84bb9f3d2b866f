"""The sweep over the study's two arms in one root (told apart by the job's recipe), and a sweep that carries the
rows of jobs an earlier sweep already scored (``reuse=``)."""

import json

import pandas as pd
import pytest

from icl.analysis.quant import plot_sweep, variant_labels
from icl.bench.quant_sweep import main, seed_level, seed_markdown, sensitivity_over_seeds, variant_breaking_points
from icl.quantize import QuantSpec


def arm_rows(recipe: str, diffs: dict[int, list[float]], learned: tuple[bool, ...] = ()) -> pd.DataFrame:
    """One arm's rows of one variant: weights at each width, one row per seed (``diffs[bits][seed]``)."""
    n = len(next(iter(diffs.values())))
    learned = learned or (True,) * n
    return pd.DataFrame([{"source": "cpu", "recipe": recipe, "task": "linear", "attn": "relu", "seed": s,
                          "run_dir": f"/jobs/{recipe}-seed{s}", "kind": "weights", "bits": b,
                          "label": f"intx_weight_w{b}_g32", "margin": 0.05, "float_error": 0.04,
                          "error": 0.04 + d[s], "diff": d[s], "diff_low": d[s] - 0.003, "diff_high": d[s] + 0.003,
                          "inside_margin": d[s] + 0.003 <= 0.05, "block": None, "branch": "", "seconds": 0.1,
                          "learned": learned[s], "n_prompts": 64} for b, d in diffs.items() for s in range(n)])


def two_arms() -> pd.DataFrame:
    tuned = arm_rows("smoke", {8: [0.0, 0.001, 0.0], 4: [0.01, 0.02, 0.015], 2: [0.3, 0.4, 0.5]})
    shared = arm_rows("study_shared", {8: [0.0, 0.0, 0.001, 0.0], 4: [0.2, 0.3, 0.25, 0.9], 2: [1.0, 1.1, 1.2, 0.9]},
                      learned=(True, True, True, False))
    return pd.concat([tuned, shared], ignore_index=True)


def test_two_recipes_in_one_root_are_two_arms_with_their_own_seeds_and_breaking_points():
    df = two_arms()
    seeds = seed_level(df)
    assert set(zip(seeds.recipe, seeds.seeds)) == {("smoke", "0 1 2"), ("study_shared", "0 1 2")}
    assert seeds.set_index(["recipe", "bits"]).loc[("study_shared", 4), "diff"] == pytest.approx(0.25)  # seed 3 out
    points = variant_breaking_points(df).set_index("recipe")
    assert points.loc["smoke", "breaking_point"] == "4 bits" and points.loc["study_shared", "breaking_point"] == "8 bits"
    assert points.loc["study_shared", "did_not_learn"] == "3 (0.040)" and points.loc["smoke", "did_not_learn"] == ""
    pooled_together = variant_breaking_points(df.assign(recipe="x"))
    assert pooled_together.breaking_point.item() == "8 bits" and pooled_together.n_seeds.item() == 6  # the bug kept out
    sens = sensitivity_over_seeds(df.assign(kind="sensitivity", block=0, branch="mlp"))
    assert list(sens.recipe) == ["smoke", "study_shared"] and list(sens.n_seeds) == [3, 3]
    text = seed_markdown(df, seeds)
    assert "| cpu | smoke | linear | relu | weights | 3 |" in text
    assert "| cpu | study_shared | linear | relu | weights | 3 |" in text


def test_a_variant_left_out_of_the_figure_is_named_as_it_would_be_drawn():
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from icl.analysis.quant import task_figures

    never = arm_rows("study_shared", {8: [0.0, 0.0], 4: [0.2, 0.3]}, learned=(False, False))  # no seed learned
    df = pd.concat([arm_rows("smoke", {8: [0.0, 0.001, 0.0], 4: [0.01, 0.02, 0.015]}), never], ignore_index=True)
    fig = task_figures(df, "linear")["quant_sweep_linear"]
    drawn = {t.get_text().split(":")[0] for t in fig.legends[0].get_texts()}
    note = next(" ".join(t.get_text().split()) for t in fig.findobj(Text) if "not drawn" in t.get_text())
    left_out = note.split("not drawn (no seed passed the study's guard): ")[1].split(", ")
    assert drawn == {"relu (cpu smoke)"} and left_out == ["relu (cpu study_shared)"]
    assert drawn | set(left_out) == set(variant_labels(df).variant)  # one naming for both
    plt.close("all")


def test_the_figure_draws_each_arm_as_its_own_line():
    df = two_arms()
    labels = variant_labels(df)
    assert set(labels.variant) == {"relu (cpu smoke)", "relu (cpu study_shared)"}
    assert labels.groupby("variant").style.nunique().eq(1).all() and labels["style"].nunique() == 2
    one_arm = variant_labels(df[df.recipe == "smoke"])
    assert set(one_arm.variant) == {"relu"}  # one arm: the attention alone, as before
    assert set(variant_labels(df.drop(columns=["source", "recipe"])).variant) == {"relu"}  # rows from before recipes
    fig = plot_sweep(df[df.learned], "linear")
    legend = {t.get_text().split(":")[0] for t in fig.legends[0].get_texts()}
    assert legend == {"relu (cpu smoke)", "relu (cpu study_shared)"}


def fake_jobs(root) -> list:
    """Finished job folders with a (never loaded) model: a sweep that carries their rows must not open it."""
    jobs = []
    for name in ("a", "b"):
        job = root / name
        (job / "checkpoints").mkdir(parents=True)
        (job / "config.yaml").write_text("seed: 0\n")
        (job / "checkpoints" / "last.ckpt").write_bytes(b"")
        (job / "status.json").write_text(json.dumps({"status": "done"}))
        jobs.append(job.resolve())
    return jobs


def test_reuse_carries_the_rows_of_jobs_already_swept_and_refuses_other_probes(tmp_path):
    jobs = fake_jobs(tmp_path / "runs")
    rows = pd.concat([arm_rows("smoke", {8: [0.0], 4: [0.02]}).assign(run_dir=str(job), seed=i)
                      for i, job in enumerate(jobs)], ignore_index=True)
    attention = rows[rows.bits == 8].assign(kind="attention", bits=16,
                                            label=QuantSpec.from_config({"name": "attn_fq", "bits": 16}).label)
    gone = rows.iloc[:1].assign(run_dir=str(tmp_path / "deleted"))  # a job no longer under the inputs: dropped
    csv = tmp_path / "earlier.csv"
    pd.concat([rows, attention, gone], ignore_index=True).to_csv(csv, index=False)
    assert QuantSpec.from_config({"name": "intx_weight", "bits": 8, "group_size": 32}).label == "intx_weight_w8_g32"
    probe = ["bits=[8,4]", "attn_bits=[16]"]
    df = main([f"inputs=[{tmp_path / 'runs'}]", f"out={tmp_path / 'out'}", f"reuse={csv}", "margin=0.01", *probe])
    assert sorted(set(df.run_dir)) == sorted(map(str, jobs)) and len(df) == 6  # nothing evaluated, nothing lost
    assert (df.margin == 0.01).all() and list(df[df.bits == 4].inside_margin) == [False, False]  # read at the margin
    assert (tmp_path / "out" / "quant_sweep.csv").is_file()
    with pytest.raises(ValueError, match=r"reuse=.* swept weights as \['intx_weight_w4_g32', 'intx_weight_w8_g32'\]"):
        main([f"inputs=[{tmp_path / 'runs'}]", f"out={tmp_path / 'x'}", f"reuse={csv}", "bits=[8,2]", "attn_bits=[16]"])
    with pytest.raises(ValueError, match="reuse=.* swept attention as"):
        main([f"inputs=[{tmp_path / 'runs'}]", f"out={tmp_path / 'x'}", f"reuse={csv}", "bits=[8,4]", "attn_bits=[8]"])
    with pytest.raises(ValueError, match=r"reuse=.* scored \[64\] prompts per job, not n_prompts=128"):
        main([f"inputs=[{tmp_path / 'runs'}]", f"out={tmp_path / 'x'}", f"reuse={csv}", "n_prompts=128", *probe])


def test_a_store_model_shared_by_a_cells_quant_jobs_is_swept_once_as_its_float_job(tmp_path):
    from icl.bench.quant_sweep import find_jobs

    cell = tmp_path / "cpu" / "shared-linear-relu-seed0"
    for quant in ("int8_dynamic", "int8_weight", "none"):  # sorted: the float job comes last
        job = cell / quant
        job.mkdir(parents=True)
        (job / "config.yaml").write_text(f"seed: 0\nquant:\n  name: {quant}\n")
        (job / "status.json").write_text(json.dumps({"status": "done", "metrics": {
            "fingerprint": "f1", "model": str(tmp_path / "store" / "f1.ckpt")}}))
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "f1.ckpt").write_bytes(b"")
    assert find_jobs([str(tmp_path / "cpu")]) == [(cell / "none").resolve()]
    (cell / "int8_weight" / "checkpoints").mkdir()  # the quant job trained it (the store's other jobs waited)
    (cell / "int8_weight" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert find_jobs([str(tmp_path / "cpu")]) == [(cell / "none").resolve()]  # still swept as the float job


def test_a_folder_retrained_since_the_earlier_sweep_is_evaluated_again(tmp_path):
    from icl.bench.quant_sweep import split_reused

    a, b = fake_jobs(tmp_path)
    (b / "status.json").write_text(json.dumps({"status": "done", "metrics": {"fingerprint": "new"}}))
    earlier = pd.DataFrame({"run_dir": [str(a), str(a), str(b)], "fingerprint": ["", "", "old"], "bits": [8, 4, 8]})
    kept, fresh = split_reused(earlier, [a, b])
    assert list(kept.run_dir) == [str(a), str(a)] and fresh == [b]  # b holds another model now
    assert split_reused(earlier.iloc[:0], [a, b])[1] == [a, b]


def test_a_store_model_served_to_both_arms_is_swept_in_each(tmp_path):
    from icl.bench.quant_sweep import find_jobs

    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "f1.ckpt").write_bytes(b"")
    jobs = []
    for arm, recipe in (("shared", "study_shared"), ("tuned", "smoke")):
        job = tmp_path / "cpu" / f"{arm}-linear-softmax-seed0" / "none"
        job.mkdir(parents=True)
        (job / "config.yaml").write_text(f"seed: 0\nrecipe:\n  name: {recipe}\n")
        (job / "status.json").write_text(json.dumps({"status": "done", "metrics": {
            "fingerprint": "f1", "model": str(tmp_path / "store" / "f1.ckpt")}}))
        jobs.append(job.resolve())
    assert find_jobs([str(tmp_path / "cpu")]) == jobs


def test_a_width_whose_quantised_model_predicts_nan_is_outside_at_the_seed_level():
    df = arm_rows("smoke", {8: [0.0, 0.001, 0.0], 2: [0.3, float("nan"), 0.5]})
    seeds = seed_level(df).set_index("bits")
    assert seeds.loc[2, "seed"] == "3 seeds" and seeds.loc[2, "verdict"] == "refuted"  # one table row per variant
    assert not seeds.loc[2, "inside_margin"] and seeds.loc[2, "diff_high"] == float("inf")
    assert seeds.loc[8, "verdict"] == "confirmed"
