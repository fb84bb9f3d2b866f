"""Scale-out end to end through the CLI: DDP on 2 CPU processes, resume after SIGKILL/SIGTERM.

The launcher sweeps (joblib, submitit_local) are in tests/test_launchers.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from icl.data import PromptStream
from icl.run.job import JobDir
from icl.run.train import build, train
from tests.helpers import REPO, TINY, compose_train

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}


class RecordBatches(Callback):
    """Write ``<dir>/rank<k>.json``: the step and the sum of xs of every batch this rank trained on."""

    def __init__(self, dir: str) -> None:
        self.dir, self.seen = Path(dir), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append([trainer.global_step, float(batch["xs"].double().sum())])
        self.dir.mkdir(parents=True, exist_ok=True)  # written every step: the process may be killed
        path = self.dir / f"rank{trainer.global_rank}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.seen))
        os.replace(tmp, path)  # a kill between truncate and write must not leave an empty file


class SleepEachStep(Callback):
    """Slow training down so a test can kill it mid-run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args) -> None:
        time.sleep(self.seconds)


def record(path: Path) -> str:
    return f"+callbacks.record={{_target_: tests.test_scale.RecordBatches, dir: '{path}'}}"


def cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "icl.train", *args], cwd=kw.pop("cwd"), env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def status(job: Path) -> dict:
    return json.loads((job / "status.json").read_text())


DDP = [*TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=12",
       "callbacks.model_checkpoint.every_n_train_steps=6"]


def test_ddp_on_two_cpu_processes(tmp_path):
    """Two gloo ranks: distinct per-rank streams, each exactly its seeded (seed, rank, step) batch; rank 0 alone
    writes the job folder and evaluates once."""
    job, batches = tmp_path / "job", tmp_path / "batches"
    code, out = finish(cli([*DDP, record(batches), f"hydra.run.dir={job}"], cwd=tmp_path))
    assert code == 0, out[-3000:]
    assert "Starting with 2 processes" in out and out.count("wrote ") == 1  # eval.csv written once
    assert status(job)["status"] == "done" and (job / "eval.csv").is_file()
    assert json.loads((job / "versions.json").read_text())["world_size"] == 2
    seen = {r: json.loads((batches / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert [s for s, _ in seen[0]] == [s for s, _ in seen[1]] == list(range(12))
    datamodule, _ = build(compose_train(DDP, tmp_path / "check"))
    for rank in (0, 1):
        stream = PromptStream(datamodule.sampler, datamodule.curriculum, 32, seed=0, rank=rank)
        expected = [float(stream.batch_at(s)["xs"].double().sum()) for s in range(12)]
        assert [x for _, x in seen[rank]] == pytest.approx(expected, rel=1e-12)
    assert all(a != b for (_, a), (_, b) in zip(seen[0], seen[1]))  # the ranks never train on the same prompts
    ckpt = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 12


RESUME = [*TINY, "trainer.max_steps=24", "callbacks.model_checkpoint.every_n_train_steps=6",
          "task.n_dims=5", "task.curriculum.dims.start=2", "task.curriculum.dims.interval=5",
          "optim.schedule=cosine", "optim.warmup_steps=3", "model.dropout=0.1",
          "threads=1"]  # in-process and CLI runs alike: a bitwise comparison needs the same reduction order


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The final weights of the same job run without interruption (in-process)."""
    out = tmp_path_factory.mktemp("straight")
    train(compose_train(RESUME, out))
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_job_resumes_with_the_same_command(tmp_path, sig, straight):
    """Kill a CLI training mid-run, run the same command again: it continues from last.ckpt (SIGKILL: at most
    one checkpoint interval redone; SIGTERM: a checkpoint at the stop step, nothing redone), the curriculum
    and step are right, evaluation completes, and the final weights equal an uninterrupted run's (dropout on:
    the RNG state comes back too)."""
    job, first, second = tmp_path / "job", tmp_path / "first", tmp_path / "second"
    slow = "+callbacks.slow={_target_: tests.test_scale.SleepEachStep, seconds: 0.1}"
    args = [*RESUME, slow, f"hydra.run.dir={job}"]
    proc = cli([*args, record(first)], cwd=tmp_path)
    ckpt = job / "checkpoints" / "step_12.ckpt"
    deadline = time.monotonic() + 120
    while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    time.sleep(0.35)  # a few steps past the checkpoint
    proc.send_signal(sig)
    code, out = finish(proc)
    assert code != 0
    stopped = json.loads((first / "rank0.json").read_text())[-1][0]  # the step it was on
    saved = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    if sig == signal.SIGTERM:
        assert status(job) == {"status": "failed", "error": "interrupted: rerun with hydra.run.dir=<this job> to resume"}
        assert saved == stopped + 1 or saved == stopped, (saved, stopped)
    else:
        assert status(job)["status"] == "running"  # SIGKILL leaves no chance to write: the rerun fixes it
        assert JobDir(job).status()["status"] == "interrupted"  # and every reader says what happened
        assert 12 <= saved <= stopped and stopped - saved <= 6
        # the folder's lock went with the process (a SLURM/submitit requeue is this rerun): its .lock file still
        # names the dead holder, and means nothing
        assert json.loads((job / ".lock").read_text())["pid"] == proc.pid
    code, out = finish(cli([*args, record(second)], cwd=tmp_path))
    assert code == 0, out[-3000:]
    assert (job / ".lock").read_text() == ""  # emptied on release
    assert json.loads((second / "rank0.json").read_text())[0][0] == saved  # continues where the checkpoint is
    assert status(job)["status"] == "done" and (job / "eval.csv").is_file()
    final = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 24
    assert final["PromptDataModule"]["curriculum"]["step"] == 24
    assert final["PromptDataModule"]["curriculum"]["n_dims"] == 5
    for key, value in straight["state_dict"].items():  # bitwise equal on CPU
        assert torch.equal(value, final["state_dict"][key]), key
