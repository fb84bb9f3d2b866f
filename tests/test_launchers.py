"""Sweeps through the real Hydra launcher plugins (configs/hydra/launcher/): a deliberately broken job fails
alone, leaves its error in status.json, and the figures are drawn for the others. The SLURM launcher is
exercised through submitit_local (same plugin, local processes instead of sbatch)."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from icl.analysis.figures import make_figures
from tests.helpers import REPO, TINY

pytestmark = pytest.mark.slow
FAST = [*TINY, "trainer.max_steps=20", "callbacks.model_checkpoint.every_n_train_steps=10"]
BROKEN = "task.params.scale=nan,1.0"  # scale=nan: NaN loss at step 0, the job fails; 1.0 trains


def sweep(tmp_path, launcher, *args, env=None):
    cmd = [sys.executable, "-m", "icl.train", "-m", f"hydra/launcher={launcher}", *FAST, *args,
           f"hydra.sweep.dir={tmp_path / 'multirun'}", f"paths.store={tmp_path / 'store'}"]
    env = env or {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    jobs = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "multirun").glob("*/status.json")}
    return proc, jobs


def assert_figures_for_the_rest(tmp_path, failed):
    written = make_figures([tmp_path / "multirun"], tmp_path / "figures", formats=["png"])
    assert (tmp_path / "figures" / "error_vs_k_linear.png") in written
    assert (tmp_path / "figures" / "error_vs_k_linear.png").stat().st_size > 1000
    listed = pd.read_csv(tmp_path / "figures" / "jobs.csv")
    assert listed.status.value_counts().to_dict() == {"done": len(listed) - failed, "failed": failed}


def test_joblib_sweep_survives_a_broken_job_and_trains_each_model_once(tmp_path):
    """4 jobs, 2 at a time, OMP_NUM_THREADS unset: each job runs cores // 2 torch threads; the two NaN jobs
    fail with their error; of the two finite jobs (quant none / int8_weight, one training config) one trains and
    the other reuses its model, whichever order the parallel workers took them in."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc, jobs = sweep(tmp_path, "joblib", BROKEN, "quant=none,int8_weight",
                       env={**env, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 1 and "2 job(s) failed" in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert sorted(j["status"] for j in jobs.values()) == ["done", "done", "failed", "failed"]
    assert all("FloatingPointError: training loss is nan at step 0" in j["error"]
               for j in jobs.values() if j["status"] == "failed")
    done = [j["metrics"] for j in jobs.values() if j["status"] == "done"]
    assert sorted(m["train_seconds"] > 0 for m in done) == [False, True]  # trained once, reused once
    assert len({m["fingerprint"] for m in done}) == 1
    threads = {json.loads((tmp_path / "multirun" / n / "versions.json").read_text())["threads"] for n in jobs}
    assert threads == {max(1, (os.cpu_count() or 1) // 2)}  # no oversubscription
    assert_figures_for_the_rest(tmp_path, failed=2)


def test_submitit_local_sweep_survives_a_broken_job(tmp_path):
    proc, jobs = sweep(tmp_path, "submitit_local", BROKEN)
    assert sorted(j["status"] for j in jobs.values()) == ["done", "failed"], proc.stderr[-3000:]
    assert "1 job(s) failed" in proc.stderr + proc.stdout and proc.returncode == 1
    failed = next(j for j in jobs.values() if j["status"] == "failed")
    assert failed["error"].startswith("FloatingPointError: training loss is nan at step 0")
    assert list((tmp_path / "multirun" / ".submitit").iterdir())  # submitit's own job folders and logs
    assert_figures_for_the_rest(tmp_path, failed=1)


def test_local_multirun_with_ddp_is_refused_in_one_line(tmp_path):
    """Lightning would start each extra rank by re-running the command line: with -m, the whole sweep."""
    proc, jobs = sweep(tmp_path, "basic", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert proc.returncode == 1 and list(jobs.values()) == [{"status": "failed", "error": (
        "ValueError: trainer.strategy=ddp in a local multirun (-m) would re-run the whole sweep per rank: run DDP "
        "jobs one per command, or use hydra/launcher=submitit_slurm, or trainer.strategy=ddp_spawn")}]
