"""The CLI end to end in a temporary folder: a single run, a 2-job multirun, re-evaluation,
`make figures` on what they produced, and one-line errors for bad input."""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf

from tests.helpers import ENV, FAST, REPO, TINY, jobs, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One single run and one 2-job multirun, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("cli")
    run(["-m", "icl.train", *FAST], tmp)
    run(["-m", "icl.train", "-m", "task=linear,sparse_linear", *FAST], tmp)
    return tmp


def test_single_run_writes_a_self_describing_job(workdir):
    (job,) = jobs(workdir / "outputs")
    assert json.loads((job / "status.json").read_text())["status"] == "done"
    assert (job / "checkpoints" / "last.ckpt").is_file() and (job / "metrics.csv").is_file()
    df = pd.read_csv(job / "eval.csv")
    assert set(df.task) == {"linear"} and df.n_prompts.max() == 64


def test_multirun_gives_one_folder_per_job(workdir):
    found = jobs(workdir / "multirun")
    assert len(found) == 2
    tasks = {pd.read_csv(j / "eval.csv").task.iloc[0] for j in found}
    assert tasks == {"linear", "sparse_linear"}


def test_standalone_evaluation_of_a_checkpoint(workdir, tmp_path):
    (job,) = jobs(workdir / "outputs")
    run(["-m", "icl.evaluate", f"run_dir={job}", f"out_dir={tmp_path}", "eval.n_prompts=40", "threads=1"], workdir)
    df = pd.read_csv(tmp_path / "eval.csv")
    assert df.n_prompts.max() == 40 and "transformer" in set(df.predictor)
    assert not (workdir / "outputs" / "evaluate").exists()
    # the new folder describes itself like a job (config + status), so make figures and icl.lab.tuning read it
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "done" and status["metrics"]["evaluated_from"] == str(job)
    assert status["metrics"]["threads"] == 1  # threads=1: one torch thread (the default is every core)
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert OmegaConf.load(tmp_path / "config.yaml").eval.n_prompts == 40


def test_reevaluation_strategies_replace_or_add_as_written(workdir, tmp_path):
    """'eval.strategies={…}' is the whole set (it was merged into configs/eval/default.yaml's 35 settings by Hydra);
    'eval.strategies.NAME=[…]' adds one strategy to the job's own set and '~eval.strategies.NAME' removes one (both
    were dropped)."""
    (job,) = jobs(workdir / "outputs")
    assert set(pd.read_csv(job / "eval.csv").strategy) == {"standard"}  # the job's own set (eval=quick)
    run(["-m", "icl.evaluate", f"run_dir={job}", f"out_dir={tmp_path / 'only'}", "eval.strategies={scale_x:[2]}",
         "threads=1"], workdir)
    assert set(pd.read_csv(tmp_path / "only" / "eval.csv").strategy) == {"scale_x"}
    run(["-m", "icl.evaluate", f"run_dir={job}", f"out_dir={tmp_path / 'added'}", "eval.strategies.scale_x=[2]",
         "eval.n_prompts=40", "threads=1"], workdir)
    df = pd.read_csv(tmp_path / "added" / "eval.csv")
    assert set(df.strategy) == {"standard", "scale_x"} and set(df[df.strategy == "scale_x"].param) == {2}
    assert df.n_prompts.max() == 40
    run(["-m", "icl.evaluate", f"run_dir={job}", f"out_dir={tmp_path / 'swapped'}", "eval.strategies.scale_x=[2]",
         "~eval.strategies.standard", "threads=1"], workdir)
    assert set(pd.read_csv(tmp_path / "swapped" / "eval.csv").strategy) == {"scale_x"}
    # other prompts than the job's: not its fingerprint (a sweep must not drop it as the same evaluation)
    assert "fingerprint" not in json.loads((tmp_path / "swapped" / "status.json").read_text())["metrics"]
    run(["-m", "icl.evaluate", f"run_dir={job}", f"out_dir={tmp_path / 'ckpt'}", f"ckpt={job}/checkpoints/last.ckpt",
         "threads=1"], workdir)  # a checkpoint named by path may be another model than the one trained: no fingerprint
    assert "fingerprint" not in json.loads((tmp_path / "ckpt" / "status.json").read_text())["metrics"]
    for bad, says in (("~eval.strategies", "must name at least one strategy"), ("eval=quick", "not eval=NAME")):
        proc = run(["-m", "icl.evaluate", f"run_dir={job}", f"out_dir={tmp_path / 'bad'}", bad], workdir, check=False)
        assert proc.returncode == 1 and says in proc.stderr + proc.stdout, proc.stderr[-400:]
        assert not (tmp_path / "bad").exists()  # refused before the folder is made


def test_evaluation_under_another_quant_mode_is_a_job_of_its_own(workdir, tmp_path):
    """`quant=MODE out_dir=…`: the trained float model under a post-training mode, self-described by its new folder;
    a mode it cannot apply is refused before any folder is made (the other refusals: tests/test_evaluate.py)."""
    (job,) = jobs(workdir / "outputs")
    before = (job / "eval.csv").read_bytes()
    run(["-m", "icl.evaluate", f"run_dir={job}", f"out_dir={tmp_path / 'w4'}", "quant=intx_weight", "quant.bits=4",
         "quant.group_size=16"], workdir)
    assert set(pd.read_csv(tmp_path / "w4" / "eval.csv").quant) == {"intx_weight_w4_g16"}
    report = json.loads((tmp_path / "w4" / "quant.json").read_text())
    assert report["quant"] == "intx_weight" and report["quantized_linears"] > 0
    assert report["bytes_packed"] < report["bytes"] < report["bytes_float"]
    assert OmegaConf.load(tmp_path / "w4" / "config.yaml").quant.bits == 4
    metrics = json.loads((tmp_path / "w4" / "status.json").read_text())["metrics"]
    assert metrics["evaluated_from"] == str(job)
    # the same model on the same prompts: the job's training fingerprint, so a sweep over both folders takes it once
    assert metrics["fingerprint"] == json.loads((job / "status.json").read_text())["metrics"]["fingerprint"]
    shutil.copytree(job, tmp_path / "other")  # another finished job as out_dir: refused, its results untouched
    proc = run(["-m", "icl.evaluate", f"run_dir={job}", f"out_dir={tmp_path / 'other'}", "quant=int8_weight"], workdir,
               check=False)
    assert proc.returncode == 1 and "holds another job: pick a new folder" in proc.stderr + proc.stdout
    assert (tmp_path / "other" / "eval.csv").read_bytes() == before
    proc = run(["-m", "icl.evaluate", f"run_dir={job}", f"out_dir={tmp_path / 'qat'}", "quant=qat_int8"], workdir,
               check=False)
    assert proc.returncode == 1 and "icl.evaluate applies post-training modes only" in proc.stderr + proc.stdout
    assert not (tmp_path / "qat").exists() and (job / "eval.csv").read_bytes() == before


def test_reevaluation_does_not_check_the_jobs_loggers(workdir, tmp_path):
    """Re-evaluation logs to no tracker, so a job trained with one that this machine lacks is still re-scored."""
    (job,) = jobs(workdir / "outputs")
    shutil.copytree(job, tmp_path / "job")
    cfg = OmegaConf.load(tmp_path / "job" / "config.yaml")
    cfg.logger = {"wandb": {"_target_": "icl.run.tracking.wandb_logger", "mode": "not-a-mode"}}  # refused by a parse
    OmegaConf.save(cfg, tmp_path / "job" / "config.yaml")
    run(["-m", "icl.evaluate", f"run_dir={tmp_path / 'job'}", "eval.n_prompts=40"], workdir)
    assert pd.read_csv(tmp_path / "job" / "eval.csv").n_prompts.max() == 40


def test_make_figures_on_the_produced_folders(workdir):
    # ARGS= : under `make test ARGS=...` the outer make's ARGS reaches this make through MAKEFLAGS
    proc = subprocess.run(["make", "-f", str(REPO / "Makefile"), "figures", f"PY={sys.executable}", "ARGS="],
                          cwd=workdir, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for task in ("linear", "sparse_linear"):
        for ext in ("png", "pdf"):
            assert (workdir / "figures" / f"error_vs_k_{task}.{ext}").stat().st_size > 1000
    summary = pd.read_csv(workdir / "figures" / "summary.csv")
    assert {"linear", "sparse_linear"} <= set(summary.task)


@pytest.mark.parametrize("args, expected", [
    (["task=lineer"], "Could not find 'task/lineer'"),
    (["task.n_dims=3", "task.curriculum.dims.end=8"], "set task.curriculum.dims.end <= task.n_dims"),
    (["eval.n_points=500"], "raise model.n_positions"),
    (["ckpt_path=missing.ckpt"], "ckpt_path=missing.ckpt does not exist"),
])
def test_bad_input_gives_one_clear_line(tmp_path, args, expected):
    proc = run(["-m", "icl.train", *TINY, "trainer.max_steps=2", *args], tmp_path, check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_multirun_goes_on_after_a_failed_job(tmp_path):
    proc = run(["-m", "icl.train", "-m", "task.params.scale=nan,1.0", *FAST], tmp_path, check=False)
    statuses = {json.loads((j / "status.json").read_text())["status"] for j in jobs(tmp_path / "multirun")}
    assert statuses == {"failed", "done"}, proc.stderr[-2000:]
    assert "FloatingPointError" in proc.stderr + proc.stdout
    assert proc.returncode == 1 and "1 job(s) failed" in proc.stderr + proc.stdout


def test_evaluate_without_checkpoint(tmp_path):
    proc = run(["-m", "icl.evaluate", f"run_dir={tmp_path}"], tmp_path, check=False)
    assert proc.returncode != 0 and "no job config" in proc.stderr + proc.stdout
    proc = run(["-m", "icl.evaluate"], tmp_path, check=False)
    assert proc.returncode != 0 and "pass the job folder" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr and not list(tmp_path.glob("*.log"))


def test_a_second_process_in_a_busy_job_folder_refuses_and_the_first_is_intact(tmp_path):
    """While a job trains (in this process), the same command into its folder and a re-evaluation of it both stop
    at once naming this process; the job then finishes as if alone: done, no -v1 files, each step logged once."""
    import os

    from lightning.pytorch import Callback

    from icl.run.train import train
    from tests.helpers import compose_train

    job = tmp_path / "job"
    overrides = [*TINY, "trainer.max_steps=30", "callbacks.model_checkpoint.every_n_train_steps=10",
                 f"paths.store={tmp_path / 'store'}", f"eval.cache={tmp_path / 'cache'}"]
    seen = {}

    class SecondProcessesAt(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 15 and not seen:  # holds training here while they run
                seen["train"] = run(["-m", "icl.train", *overrides, f"hydra.run.dir={job}"], tmp_path, check=False)
                seen["evaluate"] = run(["-m", "icl.evaluate", f"run_dir={job}"], tmp_path, check=False)
                seen["status"] = json.loads((job / "status.json").read_text())["status"]

    train(compose_train(overrides, job), callbacks=[SecondProcessesAt()])
    holder = f"is in use by training (pid {os.getpid()} on "
    for name in ("train", "evaluate"):
        proc = seen[name]
        assert proc.returncode == 1 and holder in proc.stderr + proc.stdout, (name, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and "job failed" not in proc.stderr + proc.stdout
    assert seen["status"] == "running"  # the refused process left the holder's status alone
    assert json.loads((job / "status.json").read_text())["status"] == "done"
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == [
        "last.ckpt", "step_10.ckpt", "step_20.ckpt", "step_30.ckpt"]
    assert not [p for p in job.rglob("*") if "-v1" in p.name]
    metrics = pd.read_csv(job / "metrics.csv")
    for column in metrics.columns.drop(["step", "epoch"], errors="ignore"):
        assert metrics.dropna(subset=[column]).step.is_unique, column
    df = pd.read_csv(job / "eval.csv")
    assert df[df.predictor == "transformer"].error.notna().all() and df.failure.isna().all()



def test_a_reordered_sweep_into_a_fixed_sweep_dir_resumes_no_other_cell(tmp_path):
    """The same 2-job sweep rerun into its hydra.sweep.dir with its values in another order: job n is now another
    cell, so each job stops in one line instead of resuming (and relabelling) the other cell's model."""
    from icl.run.train import train
    from tests.helpers import compose_train

    sweep, tiny = tmp_path / "sweep", [*TINY, "trainer.max_steps=3", "paths.store=null"]
    for n, seed in enumerate((0, 1)):  # the first sweep, `seed=0,1`: job n trained in-process (one CLI start less)
        train(compose_train([*tiny, f"seed={seed}"], sweep / str(n)))
    before = {sweep / str(n): (sweep / str(n) / "eval.csv").read_bytes() for n in (0, 1)}
    proc = run(["-m", "icl.train", "-m", *tiny, f"hydra.sweep.dir={sweep}", "seed=1,0"], tmp_path, check=False)
    out = proc.stdout + proc.stderr
    for job in before:
        assert f"{job} holds the checkpoints of another training config (seed:" in out, out[-3000:]
    assert proc.returncode == 1 and "2 job(s) failed" in out  # the sweep says so at its end
    assert {j: (j / "eval.csv").read_bytes() for j in before} == before
    assert [OmegaConf.load(j / "config.yaml").seed for j in sorted(before)] == [0, 1]
