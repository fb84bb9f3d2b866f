"""``JobDir``: the one owner of a job folder — its file names, and how each file is read and written.

A job folder is self-describing; aggregation needs nothing else::

    <job>/.hydra/config.yaml   Hydra's composed config (interpolations such as ${hydra:…} unresolved)
    <job>/config.yaml          the same, resolved (written by training; what every reader prefers)
    <job>/status.json          running → done (metrics) | failed (the error line); read as interrupted when it
                               says running but no process holds <job>/.lock (``JobDir.status``)
    <job>/versions.json        seed, threads, library versions, git commit
    <job>/checkpoints/         last.ckpt + periodic step_*.ckpt (not when the model came from the store)
    <job>/metrics.csv          training curve (icl.run.loggers)
    <job>/quant.json           the proof of quantisation (icl.quantize.quantize_with_proof)
    <job>/eval.csv             tidy evaluation rows (icl.contract.EVAL_COLUMNS)
    <job>/errors.npz           per-prompt errors for paired differences
    <job>/.lock                held (``fcntl.flock``) by the one process working in the folder; its holder's pid/host

One writer per folder: ``JobDir.lock`` is held for a job's whole life (train → quantise → evaluate) and by
``icl.evaluate``; a second process finds it held and stops before doing anything (``JobLocked``).

Every write is atomic (``icl.files``): a reader racing a writer sees the old file or the new one, never half of
one. No torch here: the analysis layer reads job folders through this class too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from icl import contract
from icl.files import atomic_write, filesystem_of, temporary_files, write_json
from icl.run.versions import write_versions

INTERRUPTED = "interrupted: rerun with hydra.run.dir=<this job> to resume"
STALE = "interrupted"  # what a reader reports for a `running` status whose process is gone


class JobLocked(RuntimeError):
    """Another live process holds the job folder's lock: nothing was done (the message names it and says what to do)."""


def failure_message(err: BaseException) -> str:
    """What status.json records of an exception (Ctrl-C and SystemExit say how to resume)."""
    if isinstance(err, (KeyboardInterrupt, SystemExit)):
        return INTERRUPTED
    return f"{type(err).__name__}: {err}"


_HELD: set[int] = set()  # descriptors of the job locks this process holds


def _close_in_child() -> None:
    """After a fork, the child drops its copies of the parent's lock descriptors: the lock stays the parent's and
    goes when the parent goes, not when its last data-loader worker does."""
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def _try_lock(fd: int, tries: int = 5) -> bool:
    """Take the exclusive lock without waiting on a holder; a few quick retries ride out a reader's probe
    (``JobDir.held``), which holds a shared lock for an instant."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.02)
    return False


@dataclass(frozen=True)
class JobDir:
    """A job folder (it need not exist yet)."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- paths ---------------------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / contract.CONFIG

    @property
    def hydra_config_file(self) -> Path:
        return self.path / contract.HYDRA_CONFIG

    @property
    def status_file(self) -> Path:
        return self.path / contract.STATUS

    @property
    def checkpoints(self) -> Path:
        return self.path / contract.CHECKPOINTS

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / contract.LAST_CKPT

    @property
    def metrics_csv(self) -> Path:
        return self.path / contract.METRICS

    @property
    def quant_json(self) -> Path:
        return self.path / contract.QUANT

    @property
    def eval_csv(self) -> Path:
        return self.path / contract.EVAL

    @property
    def errors_npz(self) -> Path:
        return self.path / contract.ERRORS

    @property
    def algorithms_csv(self) -> Path:
        return self.path / contract.ALGORITHMS

    @property
    def lock_file(self) -> Path:
        return self.path / contract.LOCK

    def is_job(self) -> bool:
        """A folder written by a job: it has Hydra's config (what ``find_jobs`` looks for)."""
        return self.hydra_config_file.is_file()

    # -- config --------------------------------------------------------------------------------------------------
    def write_config(self, cfg: DictConfig, hydra_copy: bool = False) -> None:
        """The resolved config (for every reader); ``hydra_copy`` also writes ``.hydra/config.yaml`` (a job
        folder made without Hydra, e.g. an imported checkpoint)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if hydra_copy:
            self.hydra_config_file.parent.mkdir(parents=True, exist_ok=True)
            text = OmegaConf.to_yaml(cfg)
            atomic_write(self.hydra_config_file, lambda tmp: tmp.write_text(text))
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
        atomic_write(self.config_file, lambda tmp: tmp.write_text(resolved))

    def load_config(self) -> DictConfig:
        """The job's config: the resolved copy when present (Hydra's keeps ``${hydra:…}`` interpolations, which
        cannot be resolved outside the run), else Hydra's own."""
        path = self.config_file if self.config_file.is_file() else self.hydra_config_file
        if not path.is_file():
            raise FileNotFoundError(f"no job config at {self.hydra_config_file}: not a folder written by icl.train")
        cfg = OmegaConf.load(path)
        if not isinstance(cfg, DictConfig):
            raise ValueError(f"{path}: config is not a mapping")
        return cfg

    def write_versions(self, **extra: Any) -> None:
        write_versions(self.path / contract.VERSIONS, **extra)

    # -- status --------------------------------------------------------------------------------------------------
    def write_status(self, status: str, **extra: Any) -> None:
        """status.json, atomically. On a full disk it is tried once more after removing this job's temporary files
        (a killed writer's leftovers); failing again raises ENOSPC in one line naming the filesystem."""
        self.path.mkdir(parents=True, exist_ok=True)
        data = {"status": status, **extra}
        try:
            write_json(self.status_file, data)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            freed = 0
            for tmp in temporary_files(self.path):
                tmp.unlink(missing_ok=True)
                freed += 1
            try:
                write_json(self.status_file, data)
            except OSError as again:
                if again.errno != errno.ENOSPC:
                    raise
                raise OSError(errno.ENOSPC, f"no space left to write {self.status_file} (status {status}) on "
                              f"{filesystem_of(self.path)}, even after removing {freed} temporary file(s) of this job: "
                              "free space there, then rerun to resume") from None

    def status(self) -> dict[str, Any]:
        """status.json as a dict; a folder without one counts as done once eval.csv exists (older jobs). The one
        reader of status every reader calls: ``running`` while no process holds the folder's lock (the job was
        killed, or died unable to write its failure) is reported as ``interrupted``, with how to resume."""
        if not self.status_file.exists():
            return {"status": "done" if self.eval_csv.exists() else "incomplete", "error": None}
        try:
            data = json.loads(self.status_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            return {"status": "unknown", "error": f"unreadable {contract.STATUS}: {exc}"}
        if data.get("status") == "running" and not self.held():
            return {**data, "status": STALE, "error": f"status.json says running but no process holds {self.lock_file} "
                    f"(killed, out of memory, node lost or disk full): rerun with hydra.run.dir={self.path} to resume"}
        return {**data, "status": data.get("status", "unknown"), "error": data.get("error")}

    def held(self) -> bool:
        """Whether a live process holds the folder's lock. Probed with a shared lock taken and dropped at once (a
        job starting at that instant retries, see ``lock``); no lock file means no holder."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError:  # cannot probe (permissions): say what status.json says, as before
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the probe's shared lock
        return False

    @contextmanager
    def lifecycle(self, write: bool = True) -> Iterator[dict[str, Any]]:
        """status.json says ``running`` while the body runs, then ``done`` with the metrics the body put into the
        yielded dict, or ``failed`` with the error line if it raised (Ctrl-C included), so it never stays
        ``running``. ``write=False`` (an extra DDP rank) leaves the folder alone. A ``failures`` list the body puts
        into the dict (evaluation cells that failed, ``icl.evaluation.failures``) goes to status.json's top level:
        the job is still ``done``, with what it could not compute said beside it."""
        metrics: dict[str, Any] = {}
        if write:
            self.write_status("running")
        try:
            yield metrics
        except BaseException as err:
            if write:
                self.write_status("failed", error=failure_message(err))
            raise
        if write:
            failures = metrics.get("failures")
            rest = {k: v for k, v in metrics.items() if k != "failures"}
            self.write_status("done", metrics=rest, **({"failures": failures} if failures else {}))

    # -- one writer -----------------------------------------------------------------------------------------------
    @contextmanager
    def lock(self, purpose: str) -> Iterator[None]:
        """Hold ``<job>/.lock`` for the body, or raise ``JobLocked`` at once (never wait on a holder: only ~0.1 s of
        retries that ride out a reader's probe, ``held``) if a live process holds it.

        ``fcntl.flock`` belongs to the open file, so the OS drops it when its holder exits or dies (SIGKILL, OOM,
        a SLURM timeout): a requeued or rerun job takes it again, and a stale ``.lock`` file means nothing. Forked
        children (data-loader workers) close their copy at once (``_close_in_child``), so a holder's death frees
        the folder even while they linger. While held the file names the holder (pid, host, ``purpose``, since
        when) for the refusal message; it is emptied on release. Not re-entrant: a second ``lock`` of the same
        folder in one process is refused too.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                raise JobLocked(self._locked_message(os.pread(fd, 4096, 0))) from None
            _HELD.add(fd)
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose, "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
            try:
                yield
            finally:
                _HELD.discard(fd)
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor of the open file releases the lock

    def _locked_message(self, content: bytes) -> str:
        """One line: who holds the folder and what to do."""
        try:
            info = json.loads(content)
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info["since"])))
            who = f"{info['purpose']} (pid {info['pid']} on {info['host']}, since {since})"
            stop = f"stop it (kill {info['pid']} on {info['host']})"
        except (ValueError, KeyError, TypeError):  # taken an instant ago, not yet written
            who, stop = "another process (just started)", "stop it"
        return (f"job folder {self.path} is in use by {who}: wait for it to finish or {stop}, then rerun "
                f"to resume; to run another job at the same time, give it its own folder (hydra.run.dir=…)")

    # -- model ---------------------------------------------------------------------------------------------------
    def model_ckpt(self, ckpt: str = "last") -> Path:
        """The checkpoint to load: ``ckpt`` as a path, or this job's last.ckpt, or the shared trained model
        (``icl.run.store``) its status.json names."""
        if ckpt != "last":
            return Path(ckpt)
        if not self.last_ckpt.is_file():
            shared = self.status().get("metrics", {}) or {}
            if shared.get("model"):
                return Path(shared["model"])
        return self.last_ckpt

    # -- results -------------------------------------------------------------------------------------------------
    def write_eval(self, df: pd.DataFrame, errors: dict[str, np.ndarray]) -> None:
        """eval.csv and errors.npz, each atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.eval_csv, lambda tmp: df.to_csv(tmp, index=False))
        atomic_write(self.errors_npz, lambda tmp: _save_npz(tmp, errors))

    def write_algorithms(self, df: pd.DataFrame) -> None:
        """algorithms.csv (``icl.agreement.COLUMNS``), atomically."""
        atomic_write(self.algorithms_csv, lambda tmp: df.to_csv(tmp, index=False))

    def write_dynamics(self, df: pd.DataFrame) -> None:
        """dynamics.csv (``icl.agreement.DYNAMICS_COLUMNS``), atomically."""
        atomic_write(self.path / contract.DYNAMICS, lambda tmp: df.to_csv(tmp, index=False))

    def read_errors(self) -> dict[str, np.ndarray] | None:
        """Per-prompt errors (``<strategy>/<param>/<predictor>`` → (P, n)), or None when absent. Raises on a
        corrupt file (the caller decides what that costs)."""
        if not self.errors_npz.is_file():
            return None
        with np.load(self.errors_npz) as data:
            return {key: data[key] for key in data.files}

    def write_quant(self, report: dict[str, Any]) -> None:
        write_json(self.quant_json, report)

    def read_quant(self) -> dict[str, Any] | None:
        return json.loads(self.quant_json.read_text()) if self.quant_json.is_file() else None


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to the tmp name
        np.savez_compressed(f, **arrays)
