"""icl-status on a sweep with a done, a failed, an interrupted and a running job; the rerun plan and its refusal."""

import os
from pathlib import Path

import pytest
import yaml

from icl.run.job import JobDir
from icl.run.status import job_state, lock_held, main, rerun_command
from tests.helpers import TINY, compose_train

CELL = [*TINY, "trainer.max_steps=100"]


def make_job(root: Path, name: str, status: dict | None, step: int | None, overrides: list[str] = CELL,
             config: list[str] = CELL) -> JobDir:
    """A job folder as icl.train leaves it: configs, the overrides it was launched with, status.json, metrics.csv."""
    job = JobDir(root / name)
    job.write_config(compose_train(config, job.path), hydra_copy=True)
    (job.path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status is not None:
        job.write_status(**status)
    if step is not None:
        job.metrics_csv.write_text("train/loss,step\n" + "".join(f"0.5,{s}\n" for s in range(0, step + 1, 10)))
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    make_job(tmp_path, "0", {"status": "done", "metrics": {"error_at_2d": 0.1}}, 100)
    make_job(tmp_path, "1", {"status": "failed", "error": "RuntimeError: simulated crash at step 40"}, 40)
    interrupted = make_job(tmp_path, "2", {"status": "running"}, 30)
    interrupted.lock_file.write_text('{"pid": 1, "host": "gone", "purpose": "training", "since": 0}\n')  # a stale file
    running = make_job(tmp_path, "3", {"status": "running"}, 50)
    now = running.metrics_csv.stat().st_mtime
    os.utime(running.config_file, (now - 100, now - 100))  # 50 steps in 100 s since it started
    return tmp_path


def test_each_job_gets_its_state_steps_and_eta(sweep):
    running = JobDir(sweep / "3")
    with running.lock("training"):
        assert lock_held(running) and not lock_held(JobDir(sweep / "2"))
        states = {s.path.name: s for s in (job_state(JobDir(sweep / n), now=running.metrics_csv.stat().st_mtime)
                                           for n in "0123")}
    assert {n: s.state for n, s in states.items()} == {"0": "done", "1": "failed", "2": "interrupted", "3": "running"}
    assert states["1"].error == "RuntimeError: simulated crash at step 40"
    assert (states["2"].step, states["2"].total) == (30, 100)
    assert states["3"].eta_s == pytest.approx(100.0, rel=0.01)  # 50 steps left at 0.5 steps/s
    assert states["2"].eta_s is None and not lock_held(running)  # the lock went with its holder


def test_the_cli_prints_one_line_per_job_and_a_count(sweep, capsys):
    assert main([f"sweep={sweep}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:2] == ["1", "failed"] and "simulated crash at step 40" in out[1]
    assert out[2].split()[:3] == ["2", "interrupted", "30/100"]
    assert out[-1] == "1 done, 1 failed, 2 interrupted"  # nothing holds job 3's lock here


def test_rerun_resumes_each_cell_in_its_folder_and_refuses_a_folder_with_another_config(sweep, capsys):
    command = rerun_command(JobDir(sweep / "2"))
    assert command[-1] == f"hydra.run.dir={sweep / '2'}" and command[3:-1] == CELL
    make_job(sweep, "4", {"status": "failed", "error": "x"}, 10, config=[*TINY, "trainer.max_steps=99"])
    with pytest.raises(ValueError, match="holds another config"):
        rerun_command(JobDir(sweep / "4"))
    assert main([f"sweep={sweep}", "dry_run=true"]) == 1  # the refused cell makes it non-zero; the others are listed
    captured = capsys.readouterr()
    assert "refused:" in captured.err and str(sweep / "4") in captured.err
    planned = [line for line in captured.out.splitlines() if "-m icl.train" in line]
    assert [line.rsplit("hydra.run.dir=", 1)[1] for line in planned] == [str(sweep / n) for n in "123"]
