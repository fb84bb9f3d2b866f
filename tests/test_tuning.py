"""Recipe selection (icl.lab.tuning): it reads validation prompts, never the prompts results are reported on."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from icl import prompts
from icl.lab.tuning import candidates, load_cells, main, recipe_yaml, rescale_warmup, select
from icl.tasks import build_task
from tests.helpers import compose_train


def cell_job(folder: Path, attn: str, lr: float, qk_norm: bool, eval_seed: int, error_at_10: float,
             warmup: int = 50, max_steps: int = 1500, seed: int = 0) -> Path:
    """A finished smoke job (d = 5) whose transformer scores ``error_at_10`` at k = 10 on eval.seed's prompts."""
    cfg = {"task": {"name": "linear", "n_dims": 5}, "model": {"name": "tiny", "qk_norm": qk_norm, "layer_scale": None},
           "attn": {"name": attn}, "quant": {"name": "none"}, "seed": seed, "eval": {"seed": eval_seed},
           "optim": {"lr": lr, "warmup_steps": warmup}, "trainer": {"max_steps": max_steps, "gradient_clip_val": 1.0}}
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(cfg), folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(cfg), folder / "config.yaml")
    ks = list(range(11))
    errors = [1.0 - (1.0 - error_at_10) * k / 10 for k in ks]
    pd.DataFrame({"task": "linear", "attn": attn, "quant": "none", "model": "tiny", "seed": 0, "strategy": "standard",
                  "param": None, "k": ks, "predictor": "transformer", "kind": "transformer", "metric": "squared_error",
                  "error": errors, "ci_low": [e - 0.01 for e in errors], "ci_high": [e + 0.01 for e in errors],
                  "error_raw": errors, "error_per_dim": errors, "diff_transformer": None, "diff_low": None,
                  "diff_high": None, "n_dims": 5, "n_prompts": 1000}).to_csv(folder / "eval.csv", index=False)
    (folder / "status.json").write_text(json.dumps({"status": "done"}))
    return folder


def sweeps(root: Path) -> tuple[Path, Path]:
    """Cell A wins on validation prompts (eval.seed 1000), cell B on the reporting prompts (eval.seed 0)."""
    for seed, (a, b) in ((1000, (0.05, 0.30)), (0, (0.20, 0.01))):
        cell_job(root / str(seed) / "a", "relu", 1e-4, True, seed, a)
        cell_job(root / str(seed) / "b", "relu", 1e-3, False, seed, b)
    cell_job(root / "1000" / "c", "softmax", 1e-3, False, 1000, 0.04, warmup=300)
    return root / "1000", root / "0"


def test_selection_uses_the_validation_sweep(tmp_path):
    validation, _ = sweeps(tmp_path)
    best = select(load_cells([validation]), reporting_seed=0)
    relu = best[best.attn == "relu"].iloc[0]
    assert (relu.lr, relu.qk_norm, relu.eval_seed, relu.error) == (1e-4, True, 1000, pytest.approx(0.05))
    assert list(best.attn) == ["relu", "softmax"] and list(best.cells) == [2, 1]


def test_selection_ranks_a_recipe_by_its_worst_seed_not_the_luckiest(tmp_path):
    validation, _ = sweeps(tmp_path)
    cell_job(validation / "b_seed1", "relu", 1e-3, False, 1000, 0.01, seed=1)  # cell b, another seed: luckier
    cell_job(validation / "a_seed1", "relu", 1e-4, True, 1000, 0.04, seed=1)
    best = select(load_cells([validation]), reporting_seed=0)
    relu = best[best.attn == "relu"].iloc[0]
    assert (relu.lr, relu.seed, relu.error, relu.cells) == (1e-4, 0, pytest.approx(0.05), 2)


def test_selection_refuses_jobs_scored_on_the_reporting_prompts(tmp_path):
    validation, reporting = sweeps(tmp_path)
    with pytest.raises(ValueError, match="evaluated with eval.seed=0, the reporting seed"):
        select(load_cells([validation, reporting]), reporting_seed=0)
    assert main([f"sweeps=[{reporting}]", "reporting_seed=0"]) == 1


def test_recipe_rows_rescale_the_warm_up_to_the_full_run(tmp_path, capsys):
    validation, _ = sweeps(tmp_path)
    best = rescale_warmup(select(load_cells([validation])), full_steps=15000)
    assert list(best.full_warmup_steps) == [500, 3000]
    assert "relu: {lr: 1.0e-04, warmup_steps: 500, qk_norm: true, gradient_clip_val: 1.0}" in recipe_yaml(best)
    assert main([f"sweeps=[{validation}]", f"out={tmp_path / 'out'}"]) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"cells.csv", "cells.md", "best.csv", "best.md",
                                                       "candidates.csv", "candidates.md"}
    assert "softmax: {lr: 1.0e-03, warmup_steps: 3000" in capsys.readouterr().out


def test_validation_prompts_are_not_the_evaluation_prompts():
    """Another eval.seed draws other prompts (functions and inputs), so selection never sees the reported ones."""
    task = build_task("linear", 5)
    draw = lambda seed: (lambda p: (p.xs, p.ys))(prompts.make_prompts("standard", task, 64, 11, seed))
    (xs0, ys0), (xs1, ys1) = (draw(seed) for seed in (0, 1000))
    assert not torch.allclose(xs0, xs1) and not torch.allclose(ys0, ys1)
    again, _ = draw(1000)
    assert torch.equal(again, xs1)


@pytest.mark.parametrize("attn", ["relu", "sigmoid", "softmax"])
def test_smoke_takes_the_variant_recipe_and_the_command_line_wins(attn):
    rows = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "recipe" / "smoke.yaml").recipe.variants
    cfg = compose_train(["experiment=smoke", f"attn={attn}"])
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.model.qk_norm, cfg.trainer.gradient_clip_val) == \
        (rows[attn].lr, rows[attn].warmup_steps, rows[attn].qk_norm, rows[attn].gradient_clip_val)
    assert compose_train(["experiment=smoke", f"attn={attn}", "optim.lr=0.0123"]).optim.lr == 0.0123
    shared = compose_train(["experiment=smoke", f"attn={attn}", "recipe=smoke_shared"])
    assert (shared.optim.lr, shared.optim.warmup_steps, shared.model.qk_norm) == (1e-3, 500, False)


def test_an_attention_option_in_a_recipe_row_reaches_the_variant():
    assert compose_train(["experiment=smoke", "attn=nystrom"]).attn.ridge == 0.1
    assert compose_train(["experiment=smoke", "attn=nystrom", "attn.ridge=0.5"]).attn.ridge == 0.5
    assert compose_train(["experiment=smoke", "attn=nystrom", "recipe=none"]).attn.ridge == 0.0
    assert compose_train(["attn=nystrom"]).attn.ridge == 0.0  # no recipe: the exact Nyström form
    assert "ridge" not in compose_train(["experiment=smoke", "attn=softmax"]).attn
    assert compose_train(["experiment=smoke", "attn=retnet"]).attn.d_conv == 4  # its row: RetNet with the short conv
    assert compose_train(["experiment=smoke", "attn=retnet", "attn.d_conv=null"]).attn.d_conv is None  # the published
    assert compose_train(["attn=retnet"]).attn.d_conv is None  # no recipe: the published RetNet
    assert compose_train(["attn=retnet", "attn.d_conv=4"]).attn.d_conv == 4


def test_a_row_sets_only_the_attention_options_its_variant_reads_from_the_recipe():
    """mamba's d_conv is its own file's constant, retnet's comes from its row: only retnet's row carries it."""
    best = pd.DataFrame([{"attn": a, "lr": 1e-3, "warmup_steps": 500, "qk_norm": False, "gradient_clip_val": 1.0,
                          "full_warmup_steps": 500, "d_conv": d, "ridge": None}
                         for a, d in (("mamba", 4), ("retnet", 4), ("softmax", None))])  # NaN: the column is float
    assert best["d_conv"].dtype == float
    rows = recipe_yaml(best)  # 4, not 4.0: the mixer takes a positive integer
    assert "retnet: {lr: 1.0e-03, warmup_steps: 500, qk_norm: false, gradient_clip_val: 1.0, d_conv: 4}" in rows
    assert "mamba: {lr: 1.0e-03, warmup_steps: 500, qk_norm: false, gradient_clip_val: 1.0}" in rows
    assert "softmax: {lr: 1.0e-03, warmup_steps: 500, qk_norm: false, gradient_clip_val: 1.0}" in rows


def test_an_old_retnet_job_without_d_conv_is_the_same_cell_and_fingerprint_as_one_composed_now():
    """attn.d_conv defaults to null: a retnet config written before the option has the same config fingerprint and
    tuning cell (the drive does not refuse its finished job as another cell's)."""
    from icl.lab.study.compact import config_fingerprint
    from icl.lab.tuning import CELL_KEYS

    attn = OmegaConf.to_container(compose_train(["attn=retnet"]).attn, resolve=True)
    now, before = {"seed": 0, "attn": attn}, {"seed": 0, "attn": {k: v for k, v in attn.items() if k != "d_conv"}}
    assert attn["d_conv"] is None and config_fingerprint(now) == config_fingerprint(before)
    assert "attn.d_conv" in CELL_KEYS


def test_every_variant_has_a_tuned_smoke_recipe():
    from icl.attention import ATTENTION
    from icl.mixers import mixer_names

    rows = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "recipe" / "smoke.yaml").recipe.variants
    assert set(ATTENTION) <= set(rows)  # every attention kernel tuned
    assert set(rows) <= set(mixer_names())  # a sequence mixer's row once tune_mixers chose it; no row for a typo


def test_verdict_is_computed_against_the_targets(tmp_path):
    from icl.lab.tuning import verdict

    for attn, error in [("relu", 0.12), ("linear", 0.12), ("sigmoid", 0.05), ("softmax", 0.05)]:
        cell_job(tmp_path / attn, attn, 1e-3, False, 0, error)
    judged = verdict(load_cells([tmp_path])).set_index("attn")
    # relu misses its 0.10, linear meets 0.15, sigmoid meets 0.10, softmax at 0.05 [0.04, 0.06] is worse than 0.030
    assert judged["met"].to_dict() == {"linear": True, "relu": False, "sigmoid": True, "softmax": False}
    with pytest.raises(ValueError, match="reporting prompts"):
        verdict(load_cells([tmp_path]), reporting_seed=1000)
    assert main([f"sweeps=[{tmp_path}]", "final=true", f"out={tmp_path / 'out'}"]) == 0
    assert (tmp_path / "out" / "final.md").read_text().count("|") > 20


def write_errors(job: Path, transformer: float, zero_seed: int = 0) -> None:
    import numpy as np

    zero = np.random.default_rng(zero_seed).uniform(0.5, 1.5, (50, 11)).astype(np.float32)
    np.savez(job / "errors.npz", **{"standard//zero": zero, "standard//transformer": transformer * zero})


@pytest.mark.parametrize("tuned,met", [(0.05, True), (0.2, False)])
def test_softmax_is_judged_paired_against_a_same_steps_reference(tmp_path, tuned, met):
    from icl.lab.tuning import verdict

    write_errors(cell_job(tmp_path / "final" / "softmax", "softmax", 1e-3, True, 0, tuned), tuned)
    write_errors(cell_job(tmp_path / "reference", "softmax", 1e-3, False, 0, 0.1), 0.1)
    judged = verdict(load_cells([tmp_path / "final"]), softmax_reference=tmp_path / "reference").iloc[0]
    assert bool(judged["met"]) is met and judged["diff"] == pytest.approx(tuned - 0.1, abs=1e-6)
    write_errors(tmp_path / "reference", 0.1, zero_seed=1)  # other prompts: no paired difference
    with pytest.raises(ValueError, match="not scored on the same prompts"):
        verdict(load_cells([tmp_path / "final"]), softmax_reference=tmp_path / "reference")


def test_median_rank_and_one_shared_recipe(tmp_path):
    validation = tmp_path / "v"
    for seed, (a, b) in enumerate(((0.05, 0.04), (0.06, 0.04), (0.90, 0.04))):  # recipe a strands seed 2
        cell_job(validation / f"a{seed}", "relu", 1e-4, True, 1000, a, seed=seed)
        cell_job(validation / f"b{seed}", "relu", 1e-3, False, 1000, b, seed=seed)
    cell_job(validation / "sa", "softmax", 1e-4, True, 1000, 0.03)
    cell_job(validation / "sb", "softmax", 1e-3, False, 1000, 0.50)   # recipe b fails softmax
    cells = load_cells([validation])
    relu = select(cells, by="median")
    assert relu[relu.attn == "relu"].iloc[0].lr == 1e-3
    shared = select(cells, by="worst", shared=True)
    assert len(shared) == 1 and shared.iloc[0].lr == 1e-3 and shared.iloc[0].error == pytest.approx(0.50)
    with pytest.raises(ValueError, match="worst or the median"):
        select(cells, by="best")


def test_only_a_complete_recipe_wins_and_a_dominated_partial_one_needs_no_more_jobs(tmp_path):
    v = tmp_path / "v"
    for seed in (0, 1, 2):  # recipe a: complete over relu and softmax, worst job 0.10
        cell_job(v / f"a_relu{seed}", "relu", 1e-4, True, 1000, 0.05 + 0.01 * seed, seed=seed)
        cell_job(v / f"a_soft{seed}", "softmax", 1e-4, True, 1000, 0.08 + 0.01 * seed, seed=seed)
    cell_job(v / "b_relu0", "relu", 1e-3, True, 1000, 0.90)    # recipe b: one job, already worse than a's worst
    cell_job(v / "c_relu0", "relu", 3e-4, True, 1000, 0.02)    # recipe c: one job, better so far: could still win
    ranked = candidates(load_cells([v]), shared=True).set_index("lr")
    assert ranked.loc[1e-4, "status"] == "chosen" and ranked.loc[1e-4, "jobs"] == 6
    assert (ranked.loc[1e-3, "status"], ranked.loc[3e-4, "status"]) == ("dominated", "incomplete")
    assert select(load_cells([v]), shared=True).iloc[0].lr == 1e-4
    assert main([f"sweeps=[{v}]", "shared=true", f"out={tmp_path / 'out'}"]) == 0
    assert "incomplete" in (tmp_path / "out" / "candidates.md").read_text()
    cell_job(tmp_path / "w" / "x", "relu", 1e-4, True, 1000, 0.05, seed=0)   # two recipes, each missing a seed
    cell_job(tmp_path / "w" / "y", "relu", 1e-3, True, 1000, 0.05, seed=1)
    with pytest.raises(ValueError, match="no recipe has a job for every training seed"):
        select(load_cells([tmp_path / "w"]), shared=True)


def test_a_sweep_with_no_complete_recipe_yet_exits_2_and_writes_its_tables(tmp_path):
    """2 (nothing chosen yet) is what `make study-tuning` tolerates; 1 (an error, as above) stops it."""
    cell_job(tmp_path / "sweep" / "a", "relu", 1e-4, True, 1000, 0.05, seed=0)
    cell_job(tmp_path / "sweep" / "b", "relu", 1e-3, True, 1000, 0.04, seed=1)  # each recipe lacks the other's seed
    assert main([f"sweeps=[{tmp_path / 'sweep'}]", f"out={tmp_path / 'out'}"]) == 2
    assert (tmp_path / "out" / "candidates.md").is_file() and not (tmp_path / "out" / "best.md").exists()
