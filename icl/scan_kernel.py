"""Mamba's selective scan as a compiled CPU kernel (icl/csrc/selective_scan.cpp), built once on first use with
``torch.utils.cpp_extension`` (a C++ compiler with OpenMP and ninja on the PATH; about 30–40 s, then cached in
torch's extensions folder, ``~/.cache/torch_extensions``, under ``icl-<python>-torch-<version>/<name>-<checkout>``)
and called through ``KernelSelectiveScan``. Where it cannot be built, or with ``ICL_SCAN_KERNEL=0`` (or
false/no/off) in the environment when a process first needs it, ``load()`` returns None and
``icl.scans.selective_scan_fused`` runs its PyTorch token loop instead (one warning says why). Why a kernel: the
token loop's elementwise ops each pass the (batch, D, N) states through memory; the kernel keeps one sequence's
state in cache and passes over it once per token (docs/mixers.md)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

try:
    import fcntl
except ImportError:  # not POSIX: builds are serialised by torch's lock file alone
    fcntl = None

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("csrc") / "selective_scan.cpp"
OFF = ("0", "false", "no", "off")
_lock = threading.Lock()
_state: dict[str, ModuleType | None] = {}


def _build_options() -> tuple[str, list[str], list[str]]:
    """The extension's name, compiler flags and linker flags for this CPU: OpenMP (``at::parallel_for`` is serial
    without it: it is compiled from headers), AVX2 + FMA where PyTorch itself uses them (the name carries the
    choice, so machines of other kinds sharing one cache folder build their own)."""
    capability = re.sub(r"\W", "_", torch.backends.cpu.get_cpu_capability().lower())  # "Z VECTOR", "NO AVX"
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
    if capability.startswith(("avx2", "avx512")):
        flags += ["-mavx2", "-mfma"]
    return f"icl_selective_scan_{capability}", flags, ["-fopenmp"]


def build_folder(name: str) -> Path:
    """Where the kernel is built: torch's extensions folder (``TORCH_EXTENSIONS_DIR``, else under
    ``XDG_CACHE_HOME`` or ``~/.cache``), one subfolder per Python and torch version (torch rebuilds when the
    source or flags change, not when Python or torch do, and an old build would not load) and per checkout and
    environment (its build file names both: two checkouts sharing one folder would rebuild each other's)."""
    from torch.utils.cpp_extension import get_default_build_root

    base = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    where = hashlib.sha256(f"{SOURCE.resolve()}\0{sys.prefix}".encode()).hexdigest()[:10]
    folder = base / f"icl-{sys.implementation.cache_tag}-torch-{torch.__version__}" / f"{name}-{where}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """One build at a time per folder, through a lock the system releases when its process dies (``flock``). Whoever
    holds it may remove torch's own lock file: only a build killed mid-way (a timeout, SIGKILL) leaves that behind,
    and torch would wait on it forever."""
    if fcntl is None:
        yield
        return
    with open(folder / "icl.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process builds (or holds the lock while stopped): say why this waits
            log.warning("waiting for another process's build of the selective-scan kernel in %s", folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = folder / "lock"
            if stale.exists():
                warnings.warn(f"removing {stale}, left by a build that did not finish", RuntimeWarning, stacklevel=4)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load() -> ModuleType | None:
    """The built kernel, or None (switched off by ``ICL_SCAN_KERNEL``, or the build failed: warned once). Decided
    once per process."""
    with _lock:
        if "module" not in _state:
            _state["module"] = _build()
        return _state["module"]


def _build() -> ModuleType | None:
    if os.environ.get("ICL_SCAN_KERNEL", "1").strip().lower() in OFF:
        return None
    from torch.utils.cpp_extension import load as build_extension

    name, flags, link = _build_options()
    log.info("loading the selective-scan CPU kernel %s (built once, about 30 s)", name)
    try:
        folder = build_folder(name)
        with build_lock(folder):
            return build_extension(name, [str(SOURCE)], extra_cflags=flags, extra_ldflags=link,
                                   build_directory=str(folder), verbose=False)
    # no compiler, no ninja, a read-only cache: the PyTorch token loop still runs
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as err:
        warnings.warn(f"the selective-scan CPU kernel did not build ({type(err).__name__}: {str(err)[:200]}); "
                      "attn.scan=fused runs its PyTorch token loop (slower); set ICL_SCAN_KERNEL=0 to skip the build",
                      RuntimeWarning, stacklevel=3)
        return None


class KernelSelectiveScan(torch.autograd.Function):
    """Forward and backward in the kernel; only the inputs are kept (the backward recomputes the states). Inputs of
    one floating dtype (float32 or float64), contiguous, on the CPU."""

    @staticmethod
    def forward(ctx, x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
        ctx.save_for_backward(x, delta, A, B, C)
        return _module().forward(x, delta, A, B, C)

    @staticmethod
    @once_differentiable  # the kernel's gradients carry no graph: a second-order use is refused, not silently wrong
    def backward(ctx, dy: Tensor) -> tuple[Tensor, ...]:
        return tuple(_module().backward(dy.contiguous(), *ctx.saved_tensors))


def _module() -> ModuleType:
    module = load()
    if module is None:
        raise RuntimeError("the selective-scan CPU kernel is not available (see the warning above)")
    return module


def runs(x: Tensor) -> bool:
    """Whether the fused scan runs ``x`` in the kernel: on a CPU, where it is built."""
    return x.device.type == "cpu" and load() is not None


