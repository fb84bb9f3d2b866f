"""Atomic file writes: a job's result files are either absent or complete, never half-written.

Write to ``<name>.tmp`` beside the target, then rename (atomic on one filesystem), so a crash or a
reader racing the writer (``make figures`` during a sweep) never sees a truncated CSV or JSON.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temporary file, which then replaces ``path`` in one step."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON at ``path``, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=str) + "\n"))


def source_hash(modules: tuple[str, ...]) -> str:
    """16 hex digits of the source of ``modules`` (dotted names, found without importing them).

    Keyed by module name, not file path, so moving a file under the same module name changes nothing, while a
    module that no longer exists fails loudly here instead of silently dropping out of the hash.
    """
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            raise ModuleNotFoundError(f"source_hash: no module {name} (update the list that names it)")
        digest.update(name.encode() + b"\0" + Path(spec.origin).read_bytes())
    return digest.hexdigest()[:16]
