"""JobDir's lock: one process per job folder, its holder named, released by the OS when the holder dies."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from icl import contract
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
        info = json.loads((tmp_path / contract.LOCK).read_text())
        assert info["pid"] == os.getpid() and info["purpose"] == "training"
    assert (tmp_path / contract.LOCK).read_text() == ""  # emptied on release


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


def test_a_running_status_without_a_lock_holder_reads_as_interrupted(tmp_path, holder):
    """While a live process holds the folder, `running` is read as running; once it is gone (SIGKILL: nothing could
    write the failure), every reader — JobDir.status and the analysis layer — says interrupted and how to resume."""
    from icl.analysis.results import SKIP_STATUSES, read_status

    job = JobDir(tmp_path)
    job.write_status("running")
    assert job.status()["status"] == "running" and read_status(tmp_path)["status"] == "running"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    status = read_status(tmp_path)
    assert status["status"] == "interrupted" and "interrupted" in SKIP_STATUSES
    assert str(tmp_path) in status["error"] and "resume" in status["error"]
    assert job.status()["status"] == "interrupted"
    with job.lock("training"):  # and the reader's probe left the lock free
        assert job.status()["status"] == "running"  # held by this process


FULL_DISK = """
import errno, json, sys
from pathlib import Path
from icl.run.job import JobDir

def fill(path):
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC

disk = Path(sys.argv[1])
job = JobDir(disk / "job")
job.write_status("running")
(job.checkpoints).mkdir()
leftover = job.checkpoints / ".last.ckpt.k1ll3d.tmp"  # a killed writer's temporary file fills the disk
fill(leftover)
job.write_status("failed", error="boom")
print(json.loads(job.status_file.read_text())["status"], leftover.exists(), flush=True)
fill(job.metrics_csv)  # now full of the job's own results: nothing to free
try:
    job.write_status("done")
except OSError as err:
    print("ERROR", err, flush=True)
"""


def test_a_status_write_on_a_full_disk_frees_temporary_files_then_names_the_filesystem(tmp_path):
    """On a real 256 KiB tmpfs (mounted in a user+mount namespace): status.json is written after removing the job's
    leftover temporary files; when nothing can be freed the error line names the filesystem."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=256k tmpfs "$0" && exec "$@"', str(disk)]
    try:
        probe = subprocess.run([*mount, "true"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    proc = subprocess.run([*mount, sys.executable, "-c", FULL_DISK, str(disk)], env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == "failed False"  # written, after the leftover temporary file was removed
    assert second.startswith("ERROR [Errno 28]") and f"mounted at {disk}" in second and "status.json" in second
