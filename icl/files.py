"""Atomic file writes: a job's result files are either absent or complete, never half-written.

Write to a temporary file beside the target, with a name unique to this write (``tempfile.mkstemp``: two processes
writing one file at once never share it), then rename (atomic on one filesystem), so a crash, a reader racing the
writer (``make figures`` during a sweep) or a second writer never leaves a truncated or mixed CSV, JSON or checkpoint:
the target is always one writer's whole file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0)  # read once (os.umask can only be read by setting it): mkstemp's files are 0600, ours follow it
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temporary file (``.<name>.<random>.tmp`` in the same folder), which then replaces
    ``path`` in one step; the temporary file is removed if ``write`` raises."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)  # writers open the path themselves (torch.save, DataFrame.to_csv, np.save ...)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temporary_files(folder: Path) -> Iterator[Path]:
    """Temporary files of unfinished writes under ``folder`` (``atomic_write``'s, and the ``<name>.tmp`` of older
    versions): what a killed writer leaves behind."""
    return (p for p in Path(folder).rglob(f"*{TMP_SUFFIX}") if p.is_file())


def filesystem_of(path: Path) -> str:
    """One phrase naming the filesystem ``path`` is on: its mount point and the space left there."""
    mount = Path(path).resolve()
    while not mount.exists() or not os.path.ismount(mount):
        mount = mount.parent
    stat = os.statvfs(mount)
    return f"the filesystem mounted at {mount} ({stat.f_bavail * stat.f_frsize / 2**20:.1f} MiB free)"


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks (checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_text(path: Path, text: str) -> None:
    """``text`` at ``path``, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(path: Path, frame: Any, **to_csv: Any) -> None:
    """A pandas DataFrame as CSV at ``path``, atomically."""
    atomic_write(path, lambda tmp: frame.to_csv(tmp, **to_csv))


def save_figure(path: Path, fig: Any, **savefig: Any) -> None:
    """A matplotlib figure at ``path`` (format from its suffix: the temporary name has none), atomically."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip("."), **savefig))


def write_npz(path: Path, arrays: dict[str, Any]) -> None:
    """Compressed numpy arrays at ``path``, atomically (a file object: np.savez would add .npz to the tmp name)."""

    def write(tmp: Path) -> None:
        import numpy as np

        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


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


def input_relative(path: str | Path, inputs: Iterable[str | Path]) -> str:
    """``path`` named from the input folder it lies under (``<folder name>/<rest>``), so a committed table carries no
    machine's absolute path; unchanged when it lies under none of ``inputs``."""
    resolved = Path(path).resolve()
    for root in (Path(r).resolve() for r in inputs):
        if resolved.is_relative_to(root):
            return str(root.name / resolved.relative_to(root))
    return str(path)
