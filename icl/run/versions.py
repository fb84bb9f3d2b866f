"""What produced a job: seed, threads, library versions and the git commit, in ``<job>/versions.json``.

Same config + seed + these versions give the same eval.csv on CPU (tested); this file says which ones a job used.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

from icl.files import write_json

LIBRARIES = ("torch", "lightning", "hydra-core", "omegaconf", "torchao", "torchmetrics", "numpy", "pandas",
             "scikit-learn", "xgboost", "xgboost-cpu")  # xgboost-cpu: the CPU-only build of the same module
REPO = Path(__file__).resolve().parents[1]


def git_commit(repo: Path = REPO) -> str | None:
    """HEAD of the source checkout (``+dirty`` with uncommitted changes), or None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_versions(path: Path, **extra: Any) -> None:
    write_json(path, {**extra, "versions": versions(), "git_commit": git_commit()})
