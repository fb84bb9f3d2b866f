"""The seed study (issue 15): verdict rules on synthetic paired differences, the study configs, a miniature study
end to end (train → skip on rerun → report), and that every image README.md / docs/RESULTS.md shows is in git."""

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from icl.analysis.study import (
    CLAIMS,
    CONFIRMED,
    REFUTED,
    UNRESOLVED,
    VERDICTS,
    combine,
    interval,
    needed,
    verdict,
)
from icl.run.configs import CONFIG_DIR
from icl.stats import ratio_replicates
from tests.helpers import REPO, compose_train, run

EXPERIMENTS = ["seed_study/cpu_core", "seed_study/cpu_overview", "seed_study/paper_core", "seed_study/paper_overview"]


# -- verdict rules -------------------------------------------------------------------------------------------------
def synthetic_cis(mean: float, n_seeds: int = 3, n_prompts: int = 400, noise: float = 0.2) -> tuple[list, list]:
    """Per seed: a paired difference with true mean ``mean`` over prompts, its bootstrap CI (the study's code)."""
    lows, highs = [], []
    for seed in range(n_seeds):
        rng = np.random.default_rng(seed)
        delta = mean + noise * rng.standard_normal(n_prompts)
        zero = np.ones(n_prompts)
        point, boots = ratio_replicates(delta, zero, 500, 0)
        _, low, high = interval(point, boots, 0.95)
        lows.append(low)
        highs.append(high)
    return lows, highs


def test_needed_is_two_thirds():
    assert [needed(n) for n in (1, 2, 3, 4, 6)] == [1, 2, 2, 3, 4]


def test_clear_win_confirms_a_direction_claim():
    lows, highs = synthetic_cis(-0.2)  # A clearly lower in every seed
    word, why = verdict("less", lows, highs)
    assert word == CONFIRMED and "3 of 3" in why
    assert verdict("greater", lows, highs)[0] == REFUTED


def test_clear_loss_refutes_it():
    lows, highs = synthetic_cis(0.2)
    assert verdict("less", lows, highs)[0] == REFUTED
    assert verdict("greater", lows, highs)[0] == CONFIRMED


def test_overlap_is_not_resolved():
    lows, highs = synthetic_cis(0.0)
    word, why = verdict("less", lows, highs)
    assert word == UNRESOLVED and "need 2" in why


def test_two_of_three_seeds_decide():
    assert verdict("less", [-0.3, -0.3, -0.1], [-0.1, -0.1, 0.1])[0] == CONFIRMED
    assert verdict("less", [-0.3, -0.1, -0.1], [-0.1, 0.1, 0.1])[0] == UNRESOLVED


def test_equivalence_inside_outside_and_straddling_the_margin():
    lows, highs = synthetic_cis(0.0, noise=0.05)
    assert verdict("equal", lows, highs, margin=0.05)[0] == CONFIRMED
    lows, highs = synthetic_cis(0.3)
    assert verdict("equal", lows, highs, margin=0.05)[0] == REFUTED
    assert verdict("equal", [0.0] * 3, [0.1] * 3, margin=0.05)[0] == UNRESOLVED  # straddles +0.05


def test_guard_a_model_that_did_not_learn_resolves_nothing():
    lows, highs = synthetic_cis(-0.2)
    word, why = verdict("less", lows, highs, learned=[True, False, False], who=["s0", "s1 (relu: 0.9)", "s2"])
    assert word == UNRESOLVED and "guard" in why and "s1 (relu: 0.9)" in why
    assert verdict("less", lows, highs, learned=[True, True, False])[0] == CONFIRMED


def test_combine_and_bad_kind():
    assert combine([CONFIRMED, CONFIRMED]) == CONFIRMED
    assert combine([CONFIRMED, UNRESOLVED]) == UNRESOLVED
    assert combine([CONFIRMED, REFUTED, UNRESOLVED]) == REFUTED
    assert combine([]) == UNRESOLVED
    with pytest.raises(ValueError, match="less, greater or equal"):
        verdict("worse", [0.0], [1.0])


# -- configs -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("task", ["linear", "sparse_linear", "decision_tree"])
def test_study_experiments_compose_with_position_headroom(experiment, task, tmp_path):
    cfg = compose_train([f"experiment={experiment}", f"task={task}"], tmp_path)
    points = int(cfg.task.curriculum.points.end)
    assert cfg.skip_done is True
    # room for 2.5 x the training examples (k = points - 1) past the query: the paper's 100 after 40
    assert cfg.model.n_positions - 1 >= 2.5 * (points - 1), (cfg.model.n_positions, points)
    assert {"standard", "scale_x", "long_context"} <= set(cfg.eval.strategies)
    assert {0.5, 2} <= set(cfg.eval.strategies.scale_x)
    if task == "sparse_linear":
        assert cfg.task.params.sparsity < cfg.task.n_dims
    if task == "decision_tree":
        assert cfg.task.params.depth == 4
    scale = "paper" if "paper" in experiment else "cpu"
    assert cfg.task.n_dims == (20 if scale == "paper" else 5)


@pytest.mark.parametrize("experiment", ["seed_study/cpu_core", "seed_study/paper_core"])
def test_core_grid_sweeps_quant_outermost(experiment):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    assert list(params)[0] == "quant"  # Hydra's basic sweeper: the first key varies slowest
    assert set(params["quant"].split(",")) == {"none", "int8_weight", "int8_dynamic"}
    assert set(params["attn"].split(",")) == {"softmax", "relu", "relu_causal"}
    assert len(params["seed"].split(",")) >= 3
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


def test_garg_experiments_have_room_for_100_examples(tmp_path):
    for path in sorted((CONFIG_DIR / "experiment").glob("garg_*.yaml")):
        cfg = compose_train([f"experiment={path.stem}"], tmp_path)
        assert cfg.model.n_positions == 101, path.name


# -- images in git -------------------------------------------------------------------------------------------------
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|<img[^>]*src=\"([^\"]+)\"")


def shown_images(markdown: Path) -> list[Path]:
    """Every local image a markdown file shows, as a path relative to the repository."""
    out = []
    for m in IMAGE.finditer(markdown.read_text()):
        target = m.group(1) or m.group(2)
        if not re.match(r"[a-z]+://", target):
            out.append((markdown.parent / target).resolve().relative_to(REPO))
    return out


def test_every_image_readme_and_results_show_is_tracked_by_git():
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.splitlines())
    pages = [REPO / "README.md"] + [p for p in [REPO / "docs" / "RESULTS.md"] if p.is_file()]  # RESULTS.md: once run
    missing = [f"{page.name}: {img}" for page in pages for img in shown_images(page) if img.as_posix() not in tracked]
    assert not missing, f"images shown but not in git: {missing}"


# -- a miniature study end to end ----------------------------------------------------------------------------------
MINI = [
    "hydra/launcher=basic", "hydra.sweeper.params.task=linear", "hydra.sweeper.params.attn='softmax,relu'",
    "hydra.sweeper.params.seed='0,1'", "hydra.sweeper.params.quant='none,int8_weight'",
    "trainer.max_steps=30", "callbacks.model_checkpoint.every_n_train_steps=30", "model.n_layer=1",
    "eval.n_prompts=64", "eval.bootstrap=50", "eval.baselines=[zero,least_squares]", "eval.strategies.scale_x=[0.5,1,2,8]",
]


@pytest.mark.slow
def test_miniature_study_end_to_end_and_rerun_skips(tmp_path):
    """The entry points `make study` runs (icl.train with the study experiment, then icl.study), in tmp_path:
    2 variants x 1 task x 2 seeds x 2 quant modes; a rerun retrains and re-evaluates nothing."""
    study = tmp_path / "multirun" / "seed_study" / "cpu"
    common = [f"paths.store={tmp_path / 'store'}", f"eval.cache={tmp_path / 'cache'}", f"paths.root_dir={tmp_path}"]
    train = ["-m", "icl.train", "experiment=seed_study/cpu_core", f"hydra.sweep.dir={study / 'core'}", *MINI, *common]
    run(train, tmp_path)
    statuses = sorted((study / "core").glob("*/status.json"))
    assert len(statuses) == 8
    mtimes = {p: p.stat().st_mtime_ns for p in [*statuses, *(study / "core").glob("*/eval.csv")]}
    start = time.perf_counter()
    rerun = run(train, tmp_path)
    assert "skipping" in rerun.stdout + rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes, "a rerun rewrote a finished job's files"
    assert time.perf_counter() - start < 60
    run(["-m", "icl.bench", "bench=study", "latency.repeats=3", "latency.warmup=1", "latency.ks=[10]",
         "latency.batch=16", f"out_dir={study / 'bench'}"], tmp_path)  # claim (f), as make study runs it (shorter)
    (study / "timing.log").write_text(f"start {time.time() - 5:.0f}\nend {time.time():.0f}\n")
    out = tmp_path / "docs"
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- study:begin -->\n<!-- study:end -->\n")
    run(["-m", "icl.study", f"study_dir={study}", f"out_dir={out}", f"readme={readme}", "bootstrap=100"], tmp_path)
    text = (out / "RESULTS.md").read_text()
    for claim in CLAIMS:
        section = text.split(f"### ({claim})", 1)[1].split("###", 1)[0]
        rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| part")]
        assert rows, f"claim ({claim}) has no row"
        assert all(any(word in line for word in VERDICTS) for line in rows), section
    verdicts = (out / "study" / "verdicts.csv").read_text()
    assert set(re.findall(r"confirmed|refuted|not resolved at this scale", verdicts)) <= set(VERDICTS)
    assert (out / "study" / "error_vs_k_linear.png").is_file()
    assert "error_vs_k_linear.png" in readme.read_text()
    section_f = text.split("### (f)", 1)[1]
    assert "relu/none" in section_f and "latency ratio" in section_f  # (f) has rows from icl.bench


def test_finished_job_with_the_same_config_is_skipped_and_another_config_refused(tmp_path):
    from omegaconf import OmegaConf

    from icl.run.job import JobDir
    from icl.run.train import finished

    cfg = compose_train(["trainer.max_steps=5"], tmp_path)
    job = JobDir(tmp_path)
    assert finished(cfg, job) is None  # nothing there yet
    job.write_config(cfg)
    job.write_status("done", metrics={"train_seconds": 1.5})
    assert finished(cfg, job) == {"train_seconds": 1.5}
    other = compose_train(["trainer.max_steps=6"], tmp_path)
    with pytest.raises(ValueError, match="another config"):
        finished(other, job)
    moved = compose_train(["trainer.max_steps=5"], tmp_path / "elsewhere")  # the same job, its folder moved
    assert moved.paths.output_dir != cfg.paths.output_dir and finished(moved, job) == {"train_seconds": 1.5}
    job.write_status("failed", error="x")
    assert finished(cfg, job) is None  # a failed job is resumed, not skipped
    assert OmegaConf.to_yaml(cfg, resolve=True) == job.config_file.read_text()


def test_same_job_ignores_other_variants_recipe_rows_but_not_its_own(tmp_path):
    from icl.run.train import same_job

    base = compose_train(["experiment=smoke", "attn=relu"], tmp_path)
    other_row = compose_train(["experiment=smoke", "attn=relu", "recipe.variants.softmax.lr=0.5"], tmp_path)
    own_row = compose_train(["experiment=smoke", "attn=relu", "recipe.variants.relu.lr=0.5"], tmp_path)
    assert same_job(base, other_row)  # another variant's row changed: still this job
    assert not same_job(base, own_row) and own_row.optim.lr == 0.5  # its own row is its lr: another job
