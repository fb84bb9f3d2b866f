"""Mamba's selective scan as a compiled CPU kernel (icl/csrc/selective_scan.cpp), built once on first use with
``torch.utils.cpp_extension`` (a C++ compiler and ninja; about 30 s, then cached under ``~/.cache/torch_extensions``)
and called through ``KernelSelectiveScan``. Where it cannot be built, or with ``ICL_SCAN_KERNEL=0`` in the
environment, ``load()`` returns None and ``icl.scans.selective_scan_fused`` runs its PyTorch token loop instead (one
warning says why). Why a kernel: the token loop's elementwise ops each pass the (batch, D, N) states through memory;
the kernel keeps one sequence's state in cache and passes over it once per token (see docs/mixers.md)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("csrc") / "selective_scan.cpp"
_lock = threading.Lock()
_state: dict[str, ModuleType | None] = {}
STALE_LOCK_S = 600  # a build takes 30–40 s here


def _build_options() -> tuple[str, list[str]]:
    """The extension's name and compiler flags for this CPU: AVX2 + FMA where PyTorch itself uses them (the name
    carries the choice, so machines of other kinds sharing one cache folder build their own)."""
    capability = torch.backends.cpu.get_cpu_capability().lower()
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]
    if capability.startswith(("avx2", "avx512")):
        flags += ["-mavx2", "-mfma"]
    return f"icl_selective_scan_{capability}", flags


def build_folder(name: str) -> Path:
    """Where the kernel is built: torch's cache folder (``TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``),
    one subfolder per torch version (torch rebuilds when the source or flags change, not when torch itself does:
    an old build would not load). A build lock older than ``STALE_LOCK_S`` is removed: a build killed mid-way (a
    timeout, SIGKILL) leaves it behind, and torch would wait on it forever."""
    base = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    folder = base / f"icl-torch-{torch.__version__}" / name
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "lock"
    with contextlib.suppress(FileNotFoundError):
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            warnings.warn(f"removing the stale build lock {lock} (a build that did not finish)", RuntimeWarning,
                          stacklevel=4)
            lock.unlink(missing_ok=True)
    return folder


def load() -> ModuleType | None:
    """The built kernel, or None (switched off by ``ICL_SCAN_KERNEL=0``, or the build failed: warned once)."""
    with _lock:
        if "module" not in _state:
            _state["module"] = _build()
        return _state["module"]


def _build() -> ModuleType | None:
    if os.environ.get("ICL_SCAN_KERNEL", "1") == "0":
        return None
    from torch.utils.cpp_extension import load as build_extension

    name, flags = _build_options()
    log.info("loading the selective-scan CPU kernel %s (built once, about 30 s)", name)
    try:
        folder = build_folder(name)
        return build_extension(name, [str(SOURCE)], extra_cflags=flags, build_directory=str(folder), verbose=False)
    # no compiler, no ninja, a read-only cache: the PyTorch token loop still runs
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as err:
        warnings.warn(f"the selective-scan CPU kernel did not build ({type(err).__name__}: {str(err)[:200]}); "
                      "attn.scan=fused runs its PyTorch token loop (slower); set ICL_SCAN_KERNEL=0 to skip the build",
                      RuntimeWarning, stacklevel=3)
        return None


class KernelSelectiveScan(torch.autograd.Function):
    """Forward and backward in the kernel; only the inputs are kept (the backward recomputes the states)."""

    @staticmethod
    def forward(ctx, x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
        ctx.save_for_backward(x, delta, A, B, C)
        return _module().forward(x, delta, A, B, C)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, ...]:
        return tuple(_module().backward(dy.contiguous(), *ctx.saved_tensors))


def _module() -> ModuleType:
    module = load()
    if module is None:
        raise RuntimeError("the selective-scan CPU kernel is not available (see the warning above)")
    return module
