"""A ``-m`` sweep with a failed job exits non-zero, names the failed job folders and keeps the finished ones,
including jobs that fail before they write a status of their own (a busy folder, a folder done with another
config under ``skip_done``)."""

import json

import pytest

from icl.run.job import JobDir
from icl.run.train import train
from tests.helpers import FAST, compose_train, run


@pytest.mark.slow
def test_a_sweep_with_jobs_that_failed_before_writing_a_status_exits_1_and_keeps_the_good_job(tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [*FAST, "trainer.max_steps=3", "skip_done=true", f"paths.store={tmp_path / 'store'}",
            f"eval.cache={tmp_path / 'cache'}"]
    # job 2's folder holds a finished job of another config: skip_done refuses it, its status.json still says done
    train(compose_train([*tiny, "seed=2", "trainer.max_steps=2"], sweep / "2"))
    before = (sweep / "2" / "eval.csv").read_bytes()
    with JobDir(sweep / "1").lock("the test"):  # job 1's folder is busy: refused before it writes anything
        proc = run(["-m", "icl.train", "-m", *tiny, f"hydra.sweep.dir={sweep}", "seed=0,1,2"], tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "2 job(s) failed" in out, out[-3000:]
    failed = out[out.index("2 job(s) failed"):]
    assert f"{sweep / '1'}:" in failed and f"{sweep / '2'}:" in failed and f"{sweep / '0'}:" not in failed
    assert json.loads((sweep / "0" / "status.json").read_text())["status"] == "done"  # the good job is complete
    assert (sweep / "0" / "eval.csv").is_file() and (sweep / "0" / "checkpoints" / "last.ckpt").is_file()
    assert (sweep / "2" / "eval.csv").read_bytes() == before  # the other config's finished job left as it was
    assert not (sweep / "1" / "status.json").exists()


def end_of_multirun(sweep, jobs: dict[int, str]) -> None:
    """FailOnFailedJobs at the end of a multirun whose jobs (number -> folder) noted themselves as they started."""
    from omegaconf import OmegaConf

    from icl.run.train import MULTIRUN_JOBS, FailOnFailedJobs

    (sweep / MULTIRUN_JOBS).mkdir(parents=True, exist_ok=True)
    for number, folder in jobs.items():
        (sweep / MULTIRUN_JOBS / f"{number}.job").write_text(str(sweep / folder))
    FailOnFailedJobs().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))


def test_a_failed_job_of_an_earlier_sweep_in_the_same_folder_does_not_fail_a_later_sweep(tmp_path, caplog):
    JobDir(tmp_path / "old").write_status("failed", error="boom")  # an earlier sweep's job, not in this one
    for n in range(11):
        JobDir(tmp_path / f"new{n}").write_status("done")
    end_of_multirun(tmp_path, {n: f"new{n}" for n in range(11)})  # no SystemExit: this sweep's jobs are done
    JobDir(tmp_path / "new10").write_status("failed", error="nan loss")
    with pytest.raises(SystemExit):
        end_of_multirun(tmp_path, {n: f"new{n}" for n in range(11)})
    assert f"1 job(s) failed: {tmp_path / 'new10'}" in caplog.text and "old" not in caplog.text
