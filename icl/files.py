"""Atomic file writes: a job's result files are either absent or complete, never half-written.

Write to ``<name>.tmp`` beside the target, then rename (atomic on one filesystem), so a crash or a
reader racing the writer (``make figures`` during a sweep) never sees a truncated CSV or JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temporary file, which then replaces ``path`` in one step."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON at ``path``, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=str) + "\n"))
