"""JobDir's lock: one process per job folder, its holder named, released by the OS when the holder dies."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from icl.run.job import JobDir, JobLocked
from tests.helpers import ENV

HOLD = """
import os, sys, time
from icl.run.job import JobDir
with JobDir(sys.argv[1]).lock("a test holder"):
    child = os.fork()  # like a data-loader worker: outlives a SIGKILLed parent for a while
    if child == 0:
        time.sleep(120)
        os._exit(0)
    print("locked", child, flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A subprocess holding ``tmp_path``'s lock (killed at the end, whatever the test did)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], env=ENV, stdout=subprocess.PIPE, text=True)
    child = None
    try:
        word, child = proc.stdout.readline().split()
        assert word == "locked"
        proc.child = int(child)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if child:
            os.kill(int(child), signal.SIGKILL)


def test_a_held_folder_is_refused_naming_the_holder(tmp_path, holder):
    with pytest.raises(JobLocked) as info:
        with JobDir(tmp_path).lock("training"):
            pytest.fail("the body must not run while another process holds the lock")
    message = str(info.value)
    assert f"pid {holder.pid} on {socket.gethostname()}" in message and "a test holder" in message
    assert "since 20" in message and "UTC" in message and "hydra.run.dir" in message
    assert "\n" not in message


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)  # no cleanup runs: the OS drops the flock with the process
    holder.wait(timeout=30)
    os.kill(holder.child, 0)  # its forked child still lives, and holds no copy of the lock
    with JobDir(tmp_path).lock("training"):
        info = json.loads((tmp_path / JobDir.LOCK).read_text())
        assert info["pid"] == os.getpid() and info["purpose"] == "training"
    assert (tmp_path / JobDir.LOCK).read_text() == ""  # emptied on release


def test_the_lock_is_free_again_after_the_body_and_after_an_error(tmp_path):
    job = JobDir(tmp_path / "new")  # created by lock()
    with job.lock("first"):
        with pytest.raises(JobLocked, match=f"pid {os.getpid()}"):  # not re-entrant, even in one process
            with job.lock("second"):
                pass
    with pytest.raises(RuntimeError, match="boom"):
        with job.lock("third"):
            raise RuntimeError("boom")
    with job.lock("fourth"):
        pass


def test_extra_ddp_ranks_take_no_lock(tmp_path, monkeypatch):
    """Lightning starts ranks 1… with the same command in rank 0's folder, which rank 0 holds."""
    from lightning.pytorch.utilities import rank_zero_only

    from icl.run.train import job_lock

    job = JobDir(tmp_path)
    with job_lock(job):  # rank 0 (this process)
        monkeypatch.setattr(rank_zero_only, "rank", 1)
        with job_lock(job):  # an extra rank: no lock, so no refusal
            pass
        monkeypatch.setattr(rank_zero_only, "rank", 0)
        with pytest.raises(JobLocked):
            with job_lock(job):
                pass
