"""Baseline predictions computed once per (task, strategy, parameter, prompts) and reused across jobs.

Baselines do not depend on the trained model, so every job of a study (attention variants, quant modes,
seeds) would otherwise refit them on the very same prompts. An entry is ``<root>/<key>.npz``: the (P, n)
float32 predictions with their size and sha256, checked on every read; the key hashes everything the
predictions depend on: the task (name, d, params), strategy, parameter, eval seed, number of prompts drawn
and fitted, points, baseline name, and the source of the modules that compute them (``SOURCES``: ``icl.tasks``,
``icl.physics``, ``icl.prompts``, ``icl.baselines``, ``icl.solvers``, ``icl.learners``), so changed code
recomputes.
Writes are atomic (``icl.files.atomic_write``: a temporary file unique to the write, then a rename): two jobs
computing the same entry at once each write their own file and the last rename wins. An entry that cannot be read or
does not match its checksum (a disk error, a partial copy) is renamed ``<key>.npz.damaged-<time>-<pid>`` with one
warning line and recomputed. ``root=None`` disables the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from icl.errors import first_line
from icl.files import atomic_write, source_hash

log = logging.getLogger(__name__)

# every module a baseline's numbers come from
SOURCES = ("icl.tasks", "icl.physics", "icl.prompts", "icl.baselines", "icl.solvers", "icl.learners")


@cache
def code_version() -> str:
    """Hash of the source the cached predictions depend on."""
    return source_hash(SOURCES)


def cache_key(**parts: Any) -> str:
    """A stable hash of ``parts`` (JSON, sorted keys) plus the code version."""
    blob = json.dumps({**parts, "code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _checksum(preds: np.ndarray) -> str:
    return hashlib.sha256(preds.tobytes()).hexdigest()


def _save(path: Path, preds: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
        np.savez(f, preds=preds, nbytes=np.int64(preds.nbytes), sha256=np.array(_checksum(preds)))


def _load(f: Any) -> np.ndarray:
    """The predictions of an open entry; ValueError when they do not match the size and checksum stored with them."""
    with np.load(f, allow_pickle=False) as data:
        preds, nbytes, sha = data["preds"], int(data["nbytes"]), str(data["sha256"])
    if preds.nbytes != nbytes or _checksum(preds) != sha:
        raise ValueError(f"{preds.nbytes} bytes with sha256 {_checksum(preds)[:12]}…, stored as {nbytes} bytes, "
                         f"{sha[:12]}…")
    return preds


def _move_aside(path: Path, fd: int, why: str) -> None:
    """Rename the damaged entry open as ``fd`` aside, unless another job has already (``path`` is then missing or a
    new file), so a concurrent writer's good entry is never the one moved."""
    try:
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            return
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}")
        path.replace(aside)
    except FileNotFoundError:
        return
    log.warning("baseline cache entry %s is damaged (%s): moved aside as %s, recomputing", path, why, aside.name)


class BaselineCache:
    """Get-or-compute for baseline predictions; ``root=None`` always computes."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root else None
        self.hits = self.misses = 0

    def get(self, parts: dict[str, Any], compute: Callable[[], Tensor]) -> Tensor:
        """The cached predictions for ``parts``, or ``compute()`` stored under them."""
        if self.root is None:
            return compute()
        path = self.root / f"{cache_key(**parts)}.npz"
        if (cached := self._read(path)) is not None:
            self.hits += 1
            return torch.from_numpy(cached)
        preds = compute()
        self.misses += 1
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: _save(tmp, preds.float().numpy()))
        return preds

    @staticmethod
    def _read(path: Path) -> np.ndarray | None:
        """The verified entry at ``path``; None when there is none or it was damaged (then moved aside)."""
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return None
        with f:
            try:
                return _load(f)
            except Exception as err:  # noqa: BLE001 - whatever the zip reader says, the entry is recomputed
                _move_aside(path, f.fileno(), first_line(err))
                return None
