"""The tuning driver (icl.lab.tuning_drive): a sweep's jobs seed-major, a dominated recipe's jobs never trained,
a rerun trains nothing again; and the exact bar it relies on (``candidates(grid=…)``)."""

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from hydra import initialize_config_dir

from icl.lab.tuning import candidates, load_cells
from icl.lab.tuning_drive import Job, main, plan, seed_major
from icl.run.configs import CONFIG_DIR
from icl.run.job import JobDir
from icl.run.train import train
from tests.helpers import compose_train
from tests.test_tuning import cell_job


def test_a_recipe_complete_only_over_the_seeds_seen_so_far_is_no_bar(tmp_path):
    """A (0.05, 0.06) and B (0.07) after two seeds of three: B is dominated only if A is taken as complete, but A's
    third seed may strand it (then B could win), so with the whole grid known B is merely incomplete."""
    for lr, seed, error in ((1e-4, 0, 0.05), (1e-4, 1, 0.06), (1e-3, 0, 0.07)):
        cell_job(tmp_path / f"{lr}-{seed}", "relu", lr, True, 1000, error, seed=seed)
    cells = load_cells([tmp_path])
    grid = pd.DataFrame([{**cells.iloc[0].to_dict(), "lr": lr, "seed": seed} for lr in (1e-4, 1e-3) for seed in (0, 1, 2)])
    assert dict(zip(candidates(cells)["lr"], candidates(cells)["status"])) == {1e-4: "chosen", 1e-3: "dominated"}
    exact = candidates(cells, grid=grid)
    assert dict(zip(exact["lr"], exact["status"])) == {1e-4: "incomplete", 1e-3: "incomplete"}
    cell_job(tmp_path / "1e-4-2", "relu", 1e-4, True, 1000, 0.065, seed=2)  # A complete over the grid: now a bar
    exact = candidates(load_cells([tmp_path]), grid=grid)
    assert dict(zip(exact["lr"], exact["status"])) == {1e-4: "chosen", 1e-3: "dominated"}


def test_seed_major_order_gives_every_recipe_its_first_seed_first():
    base = {"task": "linear", "n_dims": 5, "attn": "relu", "qk_norm": True, "warmup_steps": 0}
    jobs = [Job(n, [], f"{lr}-{seed}", Path(str(n)), {**base, "lr": lr, "seed": seed})
            for n, (lr, seed) in enumerate((lr, seed) for lr in (1e-4, 1e-3, 3e-4) for seed in (0, 1))]
    assert [j.subdir for j in seed_major(jobs, shared=False)] == [
        "0.0001-0", "0.001-0", "0.0003-0", "0.0001-1", "0.001-1", "0.0003-1"]
    shared = [Job(n, [], f"{attn}-{seed}", Path(str(n)), {**base, "attn": attn, "lr": 1e-4, "seed": seed})
              for n, (attn, seed) in enumerate((a, s) for a in ("softmax", "relu") for s in (0, 1))]
    assert [j.subdir for j in seed_major(shared, shared=True)] == ["softmax-0", "relu-0", "softmax-1", "relu-1"]


def test_a_later_seed_goes_to_the_best_recipe_so_far_first(tmp_path):
    """After seed 0 (lr 1e-3 best, then 3e-4, then 1e-4), seed 1 trains in that order, not the sweep's; and once
    the leader is complete over the grid, a runner-up whose seed 0 is worse than the leader's worst is dominated."""
    from icl.lab.tuning_drive import best_first

    for lr, error in ((1e-4, 0.09), (1e-3, 0.03), (3e-4, 0.05)):
        cell_job(tmp_path / f"{lr}-0", "relu", lr, True, 1000, error, seed=0)
    base = load_cells([tmp_path]).iloc[0].to_dict()  # a job's cell as cell_row reads it
    jobs = [Job(n, [], f"{lr}-{seed}", Path(str(n)), {**base, "lr": lr, "seed": seed})
            for n, (lr, seed) in enumerate((lr, seed) for lr in (1e-4, 1e-3, 3e-4) for seed in (0, 1))]
    pending = seed_major(jobs, shared=False)
    assert [j.subdir for j in best_first(pending, None, False)][:3] == ["0.0001-0", "0.001-0", "0.0003-0"]
    grid = pd.DataFrame([j.cell for j in jobs])
    ranked = candidates(load_cells([tmp_path]), grid=grid)
    later = [j for j in pending if j.cell["seed"] == 1]
    assert [j.subdir for j in best_first(later, ranked, False)] == ["0.001-1", "0.0003-1", "0.0001-1"]
    cell_job(tmp_path / "1e-3-1", "relu", 1e-3, True, 1000, 0.06, seed=1)  # the leader's worst is now 0.06
    status = dict(zip(*(lambda r: (r["lr"], r["status"]))(candidates(load_cells([tmp_path]), grid=grid))))
    assert status == {1e-3: "chosen", 3e-4: "incomplete", 1e-4: "dominated"}  # 0.05 < 0.06 < 0.09


SMALL = ["model.n_layer=1", "trainer.max_steps=5", "optim.warmup_steps=0", "optim.schedule=constant",
         "regime.linear={n_dims: 2, dims: [2, 2, 1, 2000], points: [5, 5, 1, 2000], n_positions: 5}",
         "eval.n_prompts=64", "eval.bootstrap=20", "eval.baselines=[zero,least_squares]",
         "eval.strategies={standard:[null]}", "callbacks.model_checkpoint.every_n_train_steps=1000"]


@pytest.mark.slow
def test_the_driver_never_trains_a_dominated_recipe_s_other_jobs_and_a_rerun_trains_nothing(tmp_path, caplog, capsys):
    """tune_shared's grid narrowed on the command line to 2 recipes × 2 seeds: lr 1 for 5 steps scores thousands
    (lr 1e-9: the zero estimator's ≈ 1). lr 1e-9's two jobs are done already (trained here, in this process): the
    driver trains lr 1's seed 0 only, which dominates it, so lr 1's seed 1 is never started."""
    sweep = tmp_path / "tune"
    args = ["experiment=seed_study/tune_shared", "hydra/launcher=basic", "attn=softmax", "optim.lr=1e-9,1.0",
            "seed=0,1", f"hydra.sweep.dir={sweep}", f"paths.store={tmp_path / 'store'}",
            f"eval.cache={tmp_path / 'cache'}", *SMALL]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        planned_sweep, jobs = plan(args)
    assert planned_sweep == sweep and [j.cell["lr"] for j in jobs] == [1e-9, 1e-9, 1.0, 1.0]  # Hydra's job order
    for job in jobs[:2]:  # the recipe lr 1e-9, finished as a sweep would have left it
        cfg = compose_train(job.overrides, job.folder)
        train(cfg)
        JobDir(job.folder).write_config(cfg, hydra_copy=True)
    caplog.set_level(logging.INFO, logger="icl.lab.tuning_drive")
    assert main([*args, "rank=worst"]) == 0
    assert "2 done, 1 trained, 1 dominated, 0 failed" in capsys.readouterr().out
    assert "training job 2" in caplog.text and f"skipping job 3 ({jobs[3].subdir})" in caplog.text
    errors = load_cells([sweep]).set_index(["lr", "seed"])["error"]
    assert len(errors) == 3 and errors[(1.0, 0)] > max(errors[(1e-9, 0)], errors[(1e-9, 1)])  # why it is dominated
    assert json.loads((jobs[2].folder / "status.json").read_text())["status"] == "done"
    assert not jobs[3].folder.exists()  # never started
    stamps = {p: p.stat().st_mtime_ns for p in sweep.glob("*/status.json")}
    caplog.clear()
    assert main(args) == 0  # idempotent: nothing is trained again, the dominated job is still skipped
    assert "3 done, 0 trained, 1 dominated, 0 failed" in capsys.readouterr().out
    assert "training job" not in caplog.text
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/status.json")} == stamps


def test_a_recipe_with_seeds_beyond_the_grid_is_complete_and_one_missing_a_planned_seed_is_not(tmp_path):
    """The folder holds seeds the grid does not plan (an earlier, wider sweep): A has seeds 0-2 of the grid and 3
    besides, B seeds 0, 1 and 3 (its planned seed 2 missing). Without ``grid`` A is the choice (4 of 4 seeds); with
    it A must still be, and B must not count as complete because it has as many jobs as the grid has seeds."""
    for lr, seeds, error in ((1e-4, (0, 1, 2, 3), 0.05), (1e-3, (0, 1, 3), 0.04)):
        for seed in seeds:
            cell_job(tmp_path / f"{lr}-{seed}", "relu", lr, True, 1000, error, seed=seed)
    cells = load_cells([tmp_path])
    grid = pd.DataFrame([{**cells.iloc[0].to_dict(), "lr": lr, "seed": seed} for lr in (1e-4, 1e-3) for seed in (0, 1, 2)])
    plain = candidates(cells)
    assert dict(zip(plain["lr"], plain["status"])) == {1e-4: "chosen", 1e-3: "incomplete"}
    exact = candidates(cells, grid=grid)
    assert dict(zip(exact["lr"], exact["status"])) == {1e-4: "chosen", 1e-3: "incomplete"}


def test_two_jobs_of_the_sweep_in_one_folder_are_refused_before_anything_runs(tmp_path):
    """tune_shared's subdir names no quant mode: swept on the command line, both modes' jobs would share a folder
    and the driver would count the second as done once the first finished."""
    args = ["experiment=seed_study/tune_shared", "attn=softmax", "optim.lr=1e-4", "seed=0", "quant=none,int8_weight",
            f"hydra.sweep.dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        with pytest.raises(ValueError, match="jobs 0 and 1 of the sweep share the folder .*softmax-lr0.0001"):
            plan(args)


def test_a_folder_done_with_another_cell_is_refused_not_counted_done(tmp_path):
    """An older grid left a finished 1500-step job where this grid's 15k-step job goes (same folder name)."""
    from icl.analysis.results import flatten_config, load_config
    from icl.lab.tuning import cell_row
    from icl.lab.tuning_drive import check_done_folders

    folder = cell_job(tmp_path / "relu-lr0.0001-seed0", "relu", 1e-4, True, 1000, 0.05, max_steps=1500)
    cell = cell_row(flatten_config(load_config(folder)))
    check_done_folders([Job(0, [], folder.name, folder, cell)])  # the same cell: done, nothing to say
    with pytest.raises(ValueError, match=r"holds a finished job of another cell \(max_steps: 1500 -> 15000\)"):
        check_done_folders([Job(0, [], folder.name, folder, {**cell, "max_steps": 15000})])


def test_the_summary_says_why_a_job_is_not_done_when_no_error_was_recorded(tmp_path):
    """A job refused because another process holds its folder leaves that holder's status: the summary says so."""
    from icl.lab.tuning_drive import Options, summary

    folder = tmp_path / "busy"
    with JobDir(folder).lock("another driver"):
        JobDir(folder).write_status("running")
        text = summary(tmp_path, {"done": [], "failed": [Job(0, [], "busy", folder, {})]}, Options())
    assert f"1 job(s) failed: {folder} (running)" in text


@pytest.mark.parametrize("tool", ["icl.lab.tuning", "icl.lab.tuning_drive"])
def test_a_rank_other_than_worst_or_median_is_refused_in_one_line_by_both_tools(tool, capsys):
    """One type (``Rank``) checks ``rank=`` for both tools, before any sweep is read or planned."""
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(tool).main(["rank=best", "sweeps=[nowhere]", "experiment=nowhere"])
    message = str(exit_.value)
    assert "\n" not in message and message.startswith(f"error: python -m {tool}: rank: ")
    assert "'best'" in message and "worst, median" in message
