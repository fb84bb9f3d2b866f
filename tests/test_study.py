"""The seed study v2 (issue 25): the seed-level rule and the guard on synthetic data, the study configs, a miniature
study end to end (train → compact cells → report from the cells alone), and that every image README.md and docs/
show is tracked in git."""

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from scipy import stats as sps

from icl.lab.study.claims import Row, SeedValue, Study, claim_rows, claim_verdicts, failure_table
from icl.lab.study.compact import CELL_JSON, CURVE, ERRORS, Windows, load_cells, window_sums
from icl.lab.study.inference import (
    CONFIRMED,
    REFUTED,
    UNRESOLVED,
    Guard,
    failure_rate,
    seed_interval,
    still_improving,
    verdict,
)
from icl.run.configs import CONFIG_DIR
from tests.helpers import REPO, compose_train, run


# -- the seed-level rule -------------------------------------------------------------------------------------------
def seed_points(effect: float, seed_sd: float, n: int = 5, rng_seed: int = 0) -> list[float]:
    return list(effect + seed_sd * np.random.default_rng(rng_seed).standard_normal(n))


def test_t_interval_matches_scipy():
    points = [0.1, 0.3, 0.2, 0.25, 0.15]
    iv = seed_interval(points, 0.95)
    low, high = sps.t.interval(0.95, 4, loc=np.mean(points), scale=sps.sem(points))
    assert (iv.n, iv.low, iv.high) == (5, pytest.approx(low), pytest.approx(high))


@pytest.mark.parametrize("rng_seed", range(5))
def test_seed_noise_larger_than_the_effect_does_not_resolve(rng_seed):
    iv = seed_interval(seed_points(0.02, 0.2, rng_seed=rng_seed))
    assert verdict("greater", iv.low, iv.high, n=iv.n)[0] == UNRESOLVED


@pytest.mark.parametrize("rng_seed", range(5))
def test_a_consistent_effect_resolves(rng_seed):
    iv = seed_interval(seed_points(0.05, 0.005, rng_seed=rng_seed))
    assert verdict("greater", iv.low, iv.high, n=iv.n)[0] == CONFIRMED
    assert verdict("less", iv.low, iv.high, n=iv.n)[0] == REFUTED


def test_noninferiority_equivalence_and_too_few_seeds():
    assert verdict("noninferior", -0.01, 0.015, 0.02)[0] == CONFIRMED   # worse by at most less than the margin
    assert verdict("noninferior", 0.03, 0.05, 0.02)[0] == REFUTED
    assert verdict("noninferior", 0.0, 0.03, 0.02)[0] == UNRESOLVED
    assert verdict("equal", -0.01, 0.01, 0.02)[0] == CONFIRMED
    assert verdict("equal", 0.03, 0.05, 0.02)[0] == REFUTED
    assert verdict("greater", 0.1, 0.2, min_seeds=3, n=2)[0] == UNRESOLVED
    with pytest.raises(ValueError, match="claim kind"):
        verdict("worse", 0.0, 1.0)


def test_failure_rate_is_clopper_pearson():
    low, high = failure_rate(1, 5)
    ci = sps.binomtest(1, 5).proportion_ci(method="exact")
    assert (low, high) == (pytest.approx(ci.low), pytest.approx(ci.high)) and low < 0.2 < high


def test_still_improving_rule():
    steps = np.arange(0, 15000, 100)
    assert still_improving(steps, 1.0 - steps / 15000, 0.2, 0.05)             # a falling line
    assert not still_improving(steps, 0.05 + 0 * steps, 0.2, 0.05)            # a plateau
    assert not still_improving(steps, np.exp(-steps / 1000) + 0.05, 0.2, 0.05)  # converged long ago


def test_guard_rule():
    guard = Guard(0.5, 0.1)
    assert guard.learned(0.1, 0.05) and guard.learned(0.45, 0.0) and not guard.learned(0.6, 0.2)
    assert guard.learned(0.75, 0.69) and not guard.learned(0.8, 0.69)  # trees: as good as the fitters = learned
    assert not guard.learned(math.nan, 0.0) and guard.bar(math.nan) == 0.5
    with pytest.raises(ValueError, match="zero_fraction"):
        Guard(1.5, 0.1)
    assert "0.1" in guard.describe() and "higher" in guard.describe()


def test_the_guards_k_and_baselines_are_one_rule_for_the_study_sweeps_and_job_folders():
    """Guard.k_for / best_baseline serve Study, icl.lab.learned and the quant sweep alike (one place for the rule)."""
    guard = Guard.from_config({"zero_fraction": 0.5, "baseline_margin": 0.1, "k": {"decision_tree": 40},
                               "baselines": {"linear": ["least_squares", "averaging"], "decision_tree": ["xgboost"]}})
    assert guard.k_for("decision_tree", 5, 10) == 40  # the config's k wins, even past the trained k
    assert guard.k_for("linear", 5, 40) == 10 and guard.k_for("linear", 20, 12) == 12  # min(2d, last trained k)
    errors = {"least_squares": 0.2, "averaging": 0.1}
    assert guard.best_baseline("linear", errors.__getitem__) == ("averaging", 0.1)
    assert guard.best_baseline("linear", {"least_squares": 0.2, "averaging": math.nan}.__getitem__) == ("least_squares", 0.2)
    name, value = guard.best_baseline("relu_2nn", errors.__getitem__)  # no fitting baseline listed
    assert name == "—" and math.isnan(value) and guard.bar(value) == 0.5


def test_the_study_guard_asks_whether_a_model_left_the_plateau_not_how_well_it_learned():
    """A model far better than the zero estimator learned however far it is from least squares (sparse relu at 0.33
    where least squares is exact): the baseline margin only widens the bar, never narrows it."""
    guard = Guard.from_config({"zero_fraction": 0.5, "baseline_margin": 0.1})
    assert guard.learned(0.328, 0.0) and guard.learned(0.5, 0.0)
    assert not guard.learned(0.51, 0.0) and not guard.learned(0.97, 0.85) and not guard.learned(math.nan, 0.0)
    plateau = Guard.from_config({"zero_fraction": 0.5})
    assert plateau.baseline_margin is None and "baseline" not in plateau.describe()
    assert not plateau.learned(0.75, 0.69) and plateau == Guard.from_config({"zero_fraction": 0.5, "baseline_margin": None})
    with pytest.raises(ValueError, match="baseline_margin"):
        Guard.from_config({"zero_fraction": 0.5, "baseline_margin": -0.1})


# -- the guard treats both sides alike (synthetic cells) --------------------------------------------------------
def study_cfg(cells: Path) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(compose("study", overrides=[f"cells={cells}"]), resolve=True)
    cfg["bootstrap"] = 200
    return cfg


def synthetic_errors(seed: int, level: float, n_prompts: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(transformer, zero) per-prompt, per-k errors: the transformer at about ``level`` × the zero estimator."""
    rng = np.random.default_rng(100 + seed)
    zero = rng.chisquare(1, (n_prompts, 28)) * 5
    return zero * level * rng.uniform(0.9, 1.1, zero.shape), zero


def write_cell(root: Path, attn: str, seed: int, level: float, n_prompts: int = 200, quants: tuple = (),
               means: dict[str, list[float]] | None = None) -> None:
    """A linear float cell whose transformer error is ``level`` × the zero estimator's on every prompt and k; each
    of ``quants`` 0.1 % above it. ``means``: cell.json's per-k standard means by predictor (the guard reads them),
    in place of ``level`` for the transformer and 0 for least squares."""
    model, zero = synthetic_errors(seed, level, n_prompts)
    out = root / f"tuned-linear-{attn}-seed{seed}"
    out.mkdir(parents=True)
    arrays = {}
    win = Windows.of(5, 10, 28, 20)
    for strategy, params in {"standard": [""], "scale_x": ["0.125", "0.5", "1.0", "2.0", "8.0"],
                             "long_context": [""]}.items():
        for p in params:
            for predictor, errors in (("transformer", model), ("zero", zero)):
                for name, (ks, sums) in window_sums(errors, win, strategy).items():
                    arrays[f"none/{strategy}/{p}/{predictor}/{name}"] = sums
                    arrays[f"ks/{strategy}/{p}/{name}"] = np.asarray(ks)
                    if predictor == "transformer":
                        arrays.update({f"{q}/{strategy}/{p}/transformer/{name}": sums * 1.001 for q in quants})
    np.savez_compressed(out / ERRORS, **arrays)
    means = {"standard/": {"transformer": [level] * 11, "least_squares": [0.0] * 11, **(means or {})}}
    (out / CURVE).write_text("step,loss_rel_zero\n" + "".join(f"{s},{level}\n" for s in range(0, 1000, 20)))
    (out / CELL_JSON).write_text(json.dumps({
        "cell": out.name, "arm": "tuned", "task": "linear", "attn": attn, "seed": seed, "fingerprint": "x",
        "n_dims": 5, "k_train": 10, "n_positions": 28, "steps": 1000, "model": "tiny",
        "recipe": {"lr": 1e-3, "qk_norm": False, "gradient_clip_val": None, "warmup_steps": 10, "batch": 64},
        "n_prompts": n_prompts, "quants": {q: {"means": means} for q in ("none", *quants)}, "versions": {}}))


def pair_cells(root: Path, seeds: int, failed: dict[str, int] | None = None) -> Path:
    """softmax (0.05 × the zero estimator) and relu (0.08 ×) linear float cells for ``seeds`` seeds; ``failed``:
    variant → the seed where it did not learn (0.9 ×)."""
    for seed in range(seeds):
        for attn, level in (("softmax", 0.05), ("relu", 0.08)):
            write_cell(root, attn, seed, 0.9 if (failed or {}).get(attn) == seed else level)
    return root


def relu_rows(source: Path | Study) -> list:
    """Claim (a)'s rows for relu vs softmax, of a Study or of the cells under a folder."""
    study = source if isinstance(source, Study) else Study(load_cells(source), study_cfg(source))
    return [r for r in claim_rows(study) if r.claim == "a" and r.subject.startswith("relu ")]


def rows_of(tmp_path: Path, failed: dict[str, int]) -> list:
    """(a)'s rows for relu vs softmax, 5 seeds; ``failed``: variant → the seed where it did not learn."""
    root = tmp_path / "cells"
    shutil.rmtree(root, ignore_errors=True)
    study = Study(load_cells(pair_cells(root, 5, failed)), study_cfg(root))
    return relu_rows(study), study


def test_the_guard_drops_a_seed_whichever_side_failed(tmp_path):
    (ref_failed,), _ = rows_of(tmp_path, {"softmax": 2})
    (cmp_failed,), study = rows_of(tmp_path, {"relu": 2})
    for row in (ref_failed, cmp_failed):
        assert [s.seed for s in row.seeds if not s.learned] == [2]
        assert row.interval.n == 4                                   # the verdict uses the 4 seeds where both learned
    assert ref_failed.interval.mean == pytest.approx(cmp_failed.interval.mean)
    # counting the failed seed moves the point by ±0.8: the row says the verdict would change
    assert ref_failed.with_failed and cmp_failed.with_failed and "counting failed seeds" in ref_failed.flags
    table = {(r["attn"], r["quant"]): (r["failed"], r["seeds"]) for r in failure_table(study)}
    assert table[("relu", "none")] == (1, 5) and table[("softmax", "none")] == (0, 5)


def test_report_from_synthetic_cells_is_reproducible_and_lists_missing_cells(tmp_path):
    from icl.lab.study.report import report

    rows_of(tmp_path, {"relu": 2})
    bench = tmp_path / "bench.csv"
    bench_rows("cpu (x86_64)", {"int8_fbgemm": 0.7, "int8_dynamic": 2.0}).to_csv(bench, index=False)
    cfg = study_cfg(tmp_path / "cells") | {"out_dir": str(tmp_path / "docs"), "readme": None, "bench_csv": str(bench)}
    first = report(cfg).read_text()
    assert report(cfg).read_text() == first                          # same committed cells, same page
    # (f)'s fastest int8 line, from the CSV
    assert "- cpu (x86_64), model tiny, batch 256, 1 thread(s): **int8_fbgemm** at every k" in first
    assert "10 of 66 cells committed; missing: tuned-linear-relu_causal-seed0" in first
    assert "relu (÷ L: the seed's model)" in first and "did not learn: seed 2" in first
    assert (tmp_path / "docs" / "study" / "error_vs_k_tuned_linear.png").is_file()


def test_seed_statistic_from_window_sums_matches_the_per_k_errors(tmp_path):
    (row,), _ = rows_of(tmp_path, {})
    for value in row.seeds:
        relu, zero = synthetic_errors(value.seed, 0.08)
        softmax, _ = synthetic_errors(value.seed, 0.05)
        fit = list(range(5, 11))
        naive = (relu[:, fit].sum() - softmax[:, fit].sum()) / zero[:, fit].sum()
        assert value.point == pytest.approx(naive, abs=1e-3) and value.low < value.point < value.high


# -- configs -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,d,points,n_positions", [("linear", 5, 11, 28), ("sparse_linear", 10, 21, 21),
                                                       ("decision_tree", 5, 41, 41)])
def test_cell_configs_put_each_task_in_its_regime(task, d, points, n_positions, tmp_path):
    cfg = compose_train(["experiment=seed_study/cpu_cell", f"task={task}"], tmp_path)
    assert (cfg.task.n_dims, cfg.task.curriculum.points.end, cfg.model.n_positions) == (d, points, n_positions)
    assert cfg.trainer.max_steps == 15000 and cfg.skip_done is True
    assert points - 1 >= 2 * d                                      # k = 2d is inside the trained range
    if task == "sparse_linear":
        assert cfg.task.params.sparsity == 3
    if task == "decision_tree":
        assert points >= 41 and cfg.task.params.depth == 4


def test_shared_arm_trains_every_variant_with_one_recipe(tmp_path):
    def keys(c):
        return c.optim.lr, c.optim.warmup_steps, c.model.qk_norm, c.trainer.gradient_clip_val
    recipes = {attn: keys(compose_train(["experiment=seed_study/cpu_cell", "recipe=study_shared", f"attn={attn}"],
                                        tmp_path)) for attn in ("softmax", "relu", "relu_causal")}
    assert len(set(recipes.values())) == 1
    tuned = {attn: keys(compose_train(["experiment=seed_study/cpu_cell", f"attn={attn}"], tmp_path))
             for attn in ("softmax", "relu", "relu_causal")}
    assert len(set(tuned.values())) > 1  # the tuned arm: each variant's own row
    assert tuned != recipes


def test_tuning_grids_have_enough_seeds():
    for name, least in (("tune_shared", 3), ("tune_smoke_softmax", 5)):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment=seed_study/{name}"], return_hydra_config=True)
        params = dict(cfg.hydra.sweeper.params)
        assert len(str(params["seed"]).split(",")) >= least, name
        assert int(cfg.eval.seed) != 0, name                        # validation prompts, never the reporting ones


def test_a_claims_verdict_is_combined_per_task():
    """A task where no float model learned leaves (e) open there, not on the task where it was tested."""
    def row(task: str, points: list[float], learned: bool) -> Row:
        seeds = [SeedValue(i, p, p - 0.001, p + 0.001, learned, False) for i, p in enumerate(points)]
        return Row("e", "part", "tuned", "int8_weight", "stat", "equal", 0.05, seeds, task=task).decide(0.95, 3)

    rows = [row("linear", [0.001, -0.002, 0.0], True), row("linear", [0.003, 0.0, 0.001], True),
            row("sparse_linear", [0.2, 0.1, 0.3], False)]
    verdicts = {v["task"]: (v["verdict"], v["rows"]) for v in claim_verdicts(rows)}
    assert verdicts == {"linear": ("confirmed", 2), "sparse_linear": ("not resolved at this scale", 1)}


def test_verdicts_say_when_failed_seeds_would_change_them_and_which_arm_holds_the_same_models(tmp_path):
    rows, study = rows_of(tmp_path, {"relu": 2})
    (verdict,) = [v for v in claim_verdicts(rows, study) if v["claim"] == "a"]
    assert verdict["with_failed"] == rows[0].with_failed != "" and verdict["same_models"] == ""  # one arm only
    root = tmp_path / "cells"
    for cell in sorted(root.iterdir()):  # the shared arm: the very same models (the same fingerprints)
        twin = root / cell.name.replace("tuned-", "shared-")
        shutil.copytree(cell, twin)
        meta = json.loads((twin / CELL_JSON).read_text()) | {"cell": twin.name, "arm": "shared"}
        (twin / CELL_JSON).write_text(json.dumps(meta))

    def verdicts() -> dict:
        both = Study(load_cells(root), study_cfg(root))
        return {(v["claim"], v["arm"], v["subject"]): v["same_models"] for v in claim_verdicts(claim_rows(both), both)}
    subject = rows[0].subject
    assert verdicts()[("a", "shared", subject)] == "tuned" and verdicts()[("a", "tuned", subject)] == "shared"
    meta = json.loads((root / "shared-linear-relu-seed3" / CELL_JSON).read_text()) | {"fingerprint": "y"}
    (root / "shared-linear-relu-seed3" / CELL_JSON).write_text(json.dumps(meta))  # one seed retrained otherwise
    now = verdicts()
    assert now[("a", "shared", subject)] == "" and now[("b-U", "shared", "softmax")] == "tuned"


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


def test_every_image_readme_and_docs_show_is_tracked_by_git():
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.splitlines())
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    missing = [f"{page.name}: {img}" for page in pages for img in shown_images(page) if img.as_posix() not in tracked]
    assert not missing, f"images shown but not in git: {missing}"


# -- a miniature study end to end ----------------------------------------------------------------------------------
TINY = ["trainer.max_steps=30", "callbacks.model_checkpoint.every_n_train_steps=30", "model.n_layer=1",
        "eval.n_prompts=64", "eval.bootstrap=20", "eval.baselines=[zero,least_squares]",
        "eval.strategies.scale_x=[0.125,0.5,1,2,8]"]
GRID = ["~grid.arms.shared", "~grid.tasks.sparse_linear", "~grid.tasks.decision_tree", "grid.tasks.linear.seeds=3",
        "grid.attns=[softmax,relu]", "grid.quants=[none]"]


@pytest.mark.slow
def test_miniature_study_trains_exports_and_reports_from_cells_alone(tmp_path):
    """2 variants × 1 task × 3 seeds: one training sweep, compact cells, job folders deleted, the report from the
    cells alone; the committed cell matches its config's fingerprint and a changed config does not."""
    from icl.lab.study.make import cell_overrides, committed_fingerprint, expected_fingerprint

    jobs, cells = tmp_path / "jobs", tmp_path / "cells"
    common = [f"paths.store={tmp_path / 'store'}", f"eval.cache={tmp_path / 'cache'}"]
    run(["-m", "icl.train", "-m", "experiment=seed_study/cpu_cell", "recipe=smoke", "task=linear",
         "attn=softmax,relu", "seed=0,1,2", "quant=none", "hydra/launcher=basic", f"hydra.sweep.dir={jobs}",
         "hydra.sweep.subdir=${attn.name}-${seed}", *TINY, *common], tmp_path)
    run(["-m", "icl.lab.study.compact", f"jobs=[{jobs}]", f"cells={cells}", "arm=tuned"], tmp_path)
    assert len(list(cells.glob(f"*/{CELL_JSON}"))) == 6
    meta = json.loads((cells / "tuned-linear-relu-seed1" / CELL_JSON).read_text())
    assert meta["training"]["threads"] >= 1 and re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", meta["training"]["git_commit"]
                                                             or "0" * 40)
    means = meta["quants"]["none"]["means"]
    assert {"standard/", "long_context/", "scale_x/0.5"} <= set(means) and len(means["standard/"]["transformer"]) == 11
    with np.load(cells / "tuned-linear-relu-seed1" / ERRORS) as z:
        assert z["none/standard//transformer/fit"].dtype == np.float16 and z["none/standard//transformer/fit"].shape == (64,)
        assert list(z["ks/standard//fit"]) == list(range(5, 11)) and list(z["ks/long_context//late"]) == list(range(20, 28))
    assert sum(p.stat().st_size for p in cells.rglob("*") if p.is_file()) < 1_000_000
    # a cell's export is refused when a job of another config sits in its sweep, or when it is not the config asked for
    from icl.lab.study.make import checked_export

    want = json.loads((cells / "tuned-linear-relu-seed1" / CELL_JSON).read_text())["fingerprint"]
    one = tmp_path / "one"
    shutil.copytree(jobs / "relu-1", one / "none")
    assert checked_export(one, tmp_path / "ok", "tuned", 20, want).name == "tuned-linear-relu-seed1"
    with pytest.raises(ValueError, match="of another config"):
        checked_export(one, tmp_path / "ok", "tuned", 20, "0" * 16)
    assert (tmp_path / "ok" / "tuned-linear-relu-seed1" / CELL_JSON).is_file()  # the refused export left it as it was
    shutil.copytree(jobs / "relu-1", one / "int8_weight")
    stale = (one / "int8_weight" / "config.yaml").read_text()
    assert "quant:\n  name: none" in stale and "  max_steps: " in stale
    (one / "int8_weight" / "config.yaml").write_text(stale.replace("quant:\n  name: none", "quant:\n  name: int8_weight")
                                                     .replace("  max_steps: ", "  max_steps: 9", 1))
    with pytest.raises(ValueError, match="another config than the float job"):
        checked_export(one, tmp_path / "ok", "tuned", 20, want)
    shutil.rmtree(jobs)
    shutil.rmtree(tmp_path / "store")
    out, readme = tmp_path / "docs", tmp_path / "README.md"
    readme.write_text("# x\n<!-- study:begin -->\n<!-- study:end -->\n")
    start = time.perf_counter()
    run(["-m", "icl.study", f"cells={cells}", f"out_dir={out}", f"readme={readme}", "bench_csv=null", *GRID],
        tmp_path)
    assert time.perf_counter() - start < 60
    text = (out / "RESULTS_STUDY.md").read_text()
    assert "All 6 cells of the grid are committed" in text and "$" not in text.split("## Status")[1][:200]
    for claim in ("(a)", "(b)", "(b-U)", "(b-zero)", "(d)"):
        assert f"### {claim}" in text, claim
    assert (out / "study" / "error_vs_k_tuned_linear.png").is_file()
    assert (out / "study" / "curves_tuned_linear.png").is_file()
    assert "error_vs_k_tuned_linear.png" in readme.read_text() and "is complete" in readme.read_text()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        grid = compose("study").grid
        same = cell_overrides(grid, "tuned", "linear", "relu", 1, [*TINY, *common])
        assert expected_fingerprint(same) == committed_fingerprint(cells, "tuned-linear-relu-seed1")
        seed0 = cell_overrides(grid, "tuned", "linear", "relu", 0, [*TINY, *common])
        assert expected_fingerprint(seed0, seed=1) == committed_fingerprint(cells, "tuned-linear-relu-seed1")
        changed = [*same, "trainer.max_steps=31"]
        assert expected_fingerprint(changed) != committed_fingerprint(cells, "tuned-linear-relu-seed1")


def test_a_cell_whose_model_came_from_the_store_takes_its_curve_from_the_job_that_trained_it(tmp_path):
    from icl.lab.study.compact import _curve, trained_by

    trainer, cell_job = tmp_path / "tune" / "softmax-seed0", tmp_path / "cell" / "none"
    for job in (trainer, cell_job):
        job.mkdir(parents=True)
    (trainer / "metrics.csv").write_text("step,train/loss_rel_zero\n10,0.9\n20,0.5\n")
    (trainer / "status.json").write_text(json.dumps({"status": "done", "metrics": {"train_seconds": 60.0}}))
    (cell_job / "status.json").write_text(json.dumps({"status": "done", "metrics": {"trained_by": str(trainer)}}))
    assert trained_by(cell_job) == trainer and trained_by(trainer) == trainer
    assert list(_curve(trained_by(cell_job))["loss_rel_zero"]) == [0.9, 0.5]
    (cell_job / "status.json").write_text(json.dumps({"status": "done", "metrics": {"trained_by": "/gone/job"}}))
    assert trained_by(cell_job) == cell_job  # the publisher is not on this machine: nothing to follow


def test_export_refuses_a_cell_without_its_float_job(tmp_path):
    from icl.lab.study.compact import write_cell

    with pytest.raises(ValueError, match="exactly one float job"):
        write_cell(tmp_path, "tuned", "linear", "relu", 0, [("int8_weight", tmp_path, {})], 20)


def test_timing_rows_name_the_machine_and_kernel_and_judge_the_ratio():
    import pandas as pd

    from icl.lab.study.timing import timing_rows

    bench = pd.DataFrame([{"device": "cpu (x86_64)", "threads": 1, "part": "latency", "model": "tiny", "batch": 256,
                           "attn": attn, "quant": "none", "k": 10, "ratio": ratio, "ratio_ci_low": low,
                           "ratio_ci_high": high} for attn, ratio, low, high in
                          (("softmax", 1.0, 1.0, 1.0), ("relu", 1.02, 0.99, 1.05), ("relu_causal", 1.5, 1.4, 1.6))])
    rows = {r.subject: r for r in timing_rows(bench, 0.10)}
    assert set(rows) == {"relu/none", "relu_causal/none"}                 # softmax/none is the reference
    assert rows["relu/none"].verdict == CONFIRMED and rows["relu_causal/none"].verdict == REFUTED
    assert all(w in rows["relu/none"].statistic for w in ("cpu (x86_64)", "batch 256", "model tiny", "kernel"))
    assert timing_rows(None, 0.10)[0].verdict == UNRESOLVED


def bench_rows(device: str, ratios: dict[str, float], ks: tuple[int, ...] = (10, 27), attn: str = "softmax",
               half: float = 0.05) -> pd.DataFrame:
    """Latency rows as icl.bench writes them: ``ratios`` (quant -> ratio to softmax/none) at every k, CI ± ``half``."""
    rows = [{"device": device, "threads": 1, "part": "latency", "model": "tiny", "batch": 256, "attn": attn,
             "quant": quant, "k": k, "ratio": ratio, "ratio_ci_low": ratio - half, "ratio_ci_high": ratio + half}
            for k in ks for quant, ratio in {"none": 1.0, **ratios}.items()]
    return pd.DataFrame(rows)


def test_fastest_int8_backend_per_device_is_computed_from_the_bench_rows():
    from icl.lab.study.timing import fastest_int8, fastest_int8_text

    x86 = bench_rows("x86", {"int8_weight": 0.95, "int8_dynamic": 2.0, "int8_fbgemm": 0.70,
                             "bf16": 0.5, "qat_int8": 0.1})                     # not int8 inference backends
    other = pd.concat([bench_rows("arm", {"int8_weight": 0.90, "int8_dynamic": 1.3}, ks=(10,)),
                       bench_rows("arm", {"int8_weight": 1.1, "int8_dynamic": 1.02}, ks=(27,), half=0.1)])
    relu = bench_rows("x86", {"int8_dynamic": 0.1}, attn="relu")             # the ratio to float is softmax's
    standard = bench_rows("x86", {"int8_weight": 0.5}).assign(model="standard")  # another model: ranked apart
    fastest = fastest_int8(pd.concat([x86, other, relu, standard], ignore_index=True))
    assert list(fastest[fastest.model == "standard"].quant) == ["int8_weight", "int8_weight"]
    fastest = fastest[fastest.model == "tiny"]
    assert list(zip(fastest.device, fastest.k, fastest.quant)) == [
        ("arm", 10, "int8_weight"), ("arm", 27, "int8_dynamic"), ("x86", 10, "int8_fbgemm"), ("x86", 27, "int8_fbgemm")]
    x86_best = fastest[fastest.device == "x86"].iloc[0]
    assert (x86_best.ratio, x86_best.runner_up) == (0.70, "int8_weight") and x86_best.runner_up_low == pytest.approx(0.9)
    text = fastest_int8_text(fastest).splitlines()
    assert text[1].startswith("- x86, model tiny, batch 256, 1 thread(s): **int8_fbgemm** at every k")
    assert text[1].count("(faster than float; next int8_weight") == 2
    assert "intervals apart" in text[1]                                          # 0.75 < 0.90
    assert text[0].startswith("- arm, model tiny, batch 256, 1 thread(s): by k") and "k = 10: **int8_weight** 0.900" in text[0]
    assert "k = 27: **int8_dynamic** 1.020 [0.920, 1.120] (not apart from float" in text[0]
    assert "next int8_weight [1.000, 1.200], intervals overlap" in text[0]       # 1.12 > 1.00 at k = 27
    assert fastest_int8_text(fastest_int8(None)) == "no int8 latency rows of softmax in the timing CSV"


def test_an_option_added_later_at_null_keeps_a_cells_fingerprint():
    from icl.lab.study.compact import config_fingerprint

    before = {"seed": 0, "model": {"n_embd": 64, "n_layer": 3}, "optim": {"lr": 1e-3}}
    added = {"seed": 0, "model": {"n_embd": 64, "n_layer": 3, "pos": None, "pattern": None}, "optim": {"lr": 1e-3}}
    assert config_fingerprint(added) == config_fingerprint(before)
    assert config_fingerprint({**added, "model": {**added["model"], "pos": "rope"}}) != config_fingerprint(before)
    assert config_fingerprint({**before, "optim": {"lr": 3e-4}}) != config_fingerprint(before)


def test_recipe_selection_section_checks_the_arm_against_its_chosen_recipe(tmp_path):
    from icl.lab.study.recipes import arm_check, section
    from icl.lab.study.report import table

    base = {"task": "linear", "n_dims": 5, "qk_norm": True, "gradient_clip_val": 1.0, "warmup_steps": 500,
            "eval_seed": 1000, "train_seconds": 600.0}
    cells = pd.DataFrame([{**base, "attn": a, "seed": s, "lr": lr, "error": e}
                          for a, s, lr, e in (("relu", 0, 1e-4, 0.05), ("softmax", 0, 1e-4, 0.07),
                                              ("relu", 0, 1e-3, 0.90))])
    cands = pd.DataFrame([{**base, "attn": "softmax", "seed": 0, "lr": 1e-4, "error": 0.07, "jobs": 2,
                           "status": "chosen"},
                          {**base, "attn": "relu", "seed": 0, "lr": 1e-3, "error": 0.90, "jobs": 1,
                           "status": "dominated"}])
    (tmp_path / "shared").mkdir()
    cells.to_csv(tmp_path / "shared" / "cells.csv", index=False)
    cands.assign(selection="shared").to_csv(tmp_path / "shared" / "candidates.csv", index=False)
    same = {"lr": 1e-4, "qk_norm": True, "gradient_clip_val": 1.0, "warmup_steps": 500}
    cands["selection"] = "shared"
    assert "all 2 committed cells trained with it" in arm_check(cands, [("relu", same), ("softmax", same)])
    assert "does not use its selection" in arm_check(cands, [("relu", same), ("softmax", {**same, "lr": 3e-4})])
    per_variant = cands.assign(selection="per variant", status=["chosen", "chosen"])  # softmax 1e-4, relu 1e-3
    assert "all 2 committed" in arm_check(per_variant, [("softmax", same), ("relu", {**same, "lr": 1e-3})])
    assert "does not use" in arm_check(per_variant, [("relu", same)])
    assert "did not learn on every seed**: relu seed 0 at 0.900" in arm_check(per_variant, [], learn_bound=0.5)
    assert "did not learn" not in arm_check(per_variant.iloc[:1], [], learn_bound=0.5)
    text = section(tmp_path, {"shared": {"tuning": "shared"}}, {"shared": [("relu", same)]}, table)
    assert "### shared (arm **shared**)" in text and "dominated" in text and "30 min of training" in text
    assert "| lr 0.001, qk_norm True, clip 1.0, warm-up 500 | 0.900 | — | 0.900 |" in text  # softmax: not trained


def test_an_equivalence_whose_interval_excludes_zero_is_confirmed_and_flagged_as_a_measurable_change():
    def row(points: list[float]) -> Row:
        seeds = [SeedValue(i, p, p - 0.001, p + 0.001, True, False) for i, p in enumerate(points)]
        return Row("e", "part", "tuned", "int8_weight", "stat", "equal", 0.05, seeds, task="linear").decide(0.95, 3)

    shifted, centred = row([0.010, 0.011, 0.009, 0.010]), row([0.002, -0.003, 0.001, 0.0])
    assert shifted.verdict == centred.verdict == "confirmed"
    assert "measurable change" in shifted.flags and "measurable" not in centred.flags


def test_a_row_with_no_seed_where_both_learned_still_shows_the_models_absolute_errors(tmp_path):
    root = tmp_path / "cells"
    for seed in range(3):
        write_cell(root, "softmax", seed, 0.05)  # softmax learned on every seed, relu on none
        write_cell(root, "relu", seed, 0.9)
    study = Study(load_cells(root), study_cfg(root))
    (row,) = relu_rows(study)
    assert row.interval.n == 0
    assert row.absolute["relu (every seed: none where all learned)"] == pytest.approx(0.9, abs=0.02)
    assert row.absolute["softmax (every seed: none where all learned)"] == pytest.approx(0.05, abs=0.01)


def test_e_verdicts_are_per_variant_and_long_context_is_scored_past_training_with_the_fit_windows_margin(tmp_path):
    """(e) combines per quant mode × variant (one variant's open row does not hide another's); long_context gets a
    second row past the training length whose margin is the fit window's."""
    root = tmp_path / "cells"
    for seed in range(3):
        for attn, level in (("softmax", 0.05), ("relu", 0.08)):
            write_cell(root, attn, seed, level + 0.01 * seed, quants=("int8_weight",))
    study = Study(load_cells(root), study_cfg(root))
    rows = [r for r in claim_rows(study) if r.claim == "e"]
    long = [r for r in rows if "long_context" in r.part and r.attns == ("relu",)]
    assert len(long) == 2 and any("beyond training" in r.part for r in long)
    fit, late = sorted(long, key=lambda r: "beyond" in r.part)
    assert late.margin == pytest.approx(fit.margin) and "k = 20…27" in late.statistic
    subjects = {v["subject"] for v in claim_verdicts(rows, study) if v["claim"] == "e"}
    assert subjects == {"int8_weight, relu", "int8_weight, softmax"}
