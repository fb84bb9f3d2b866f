"""Baseline predictions computed once per (task, strategy, parameter, prompts) and reused across jobs.

Baselines do not depend on the trained model, so every job of a study (attention variants, quant modes,
seeds) would otherwise refit them on the very same prompts. An entry is ``<root>/<key>.npy``, the (P, n)
float32 predictions; the key hashes everything the predictions depend on: the task (name, d, params),
strategy, parameter, eval seed, number of prompts drawn and fitted, points, baseline name, and the source of the modules
that compute them (``SOURCES``: ``icl.tasks``, ``icl.physics``, ``icl.prompts``, ``icl.baselines``,
``icl.solvers``, ``icl.learners``), so changed code recomputes.
Writes are atomic (a temporary file named after the process, then a rename, as ``icl.files.atomic_write``
does, but with a per-process name): two jobs computing the same entry at once each write their own file and
the last rename wins. ``root=None`` disables the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from icl.files import source_hash

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


class BaselineCache:
    """Get-or-compute for baseline predictions; ``root=None`` always computes."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root else None
        self.hits = self.misses = 0

    def get(self, parts: dict[str, Any], compute: Callable[[], Tensor]) -> Tensor:
        """The cached predictions for ``parts``, or ``compute()`` stored under them."""
        if self.root is None:
            return compute()
        path = self.root / f"{cache_key(**parts)}.npy"
        if path.is_file():
            try:
                preds = torch.from_numpy(np.load(path))
                self.hits += 1
                return preds
            except (OSError, ValueError) as err:  # a corrupt entry is recomputed, not fatal
                log.warning("recomputing unreadable cache entry %s (%s)", path, err)
        preds = compute()
        self.misses += 1
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the tmp name
            np.save(f, preds.float().numpy())
        tmp.replace(path)
        return preds
