"""Checkpoints that survive a kill at any moment, and carry everything a resume needs.

- ``AtomicCheckpointIO``: Lightning's default writes through an fsspec transaction whose temporary file lives in
  the system temp folder; when that is another filesystem the final step is a copy, and a SIGKILL during the copy
  leaves a truncated ``last.ckpt``. Here the file is written beside its target and renamed (``icl.files``).
  Weights that are NaN/inf are never saved (the run stops instead, keeping the last good checkpoint).
- ``RngState``: the global torch/numpy/Python RNG states go into each checkpoint and come back on resume (the
  prompt stream is keyed by step and needs none; dropout and anything else drawing from the global RNG does).
- ``CheckpointOnSigterm``: on SIGTERM (pre-emption) Lightning stops after the current step; this saves
  ``last.ckpt`` at that step first, so a pre-empted job redoes nothing.
- ``choose_resume``: which checkpoint a rerun resumes from. ``last.ckpt``, or — when it is unreadable (a copy cut
  short, a file-system hiccup) — the newest readable ``step_<N>.ckpt``, with one warning line; none readable is one
  error line naming what to delete. Never a silent restart from step 0 over existing checkpoints.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from icl import contract
from icl.errors import first_line
from icl.files import atomic_write

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file in the same folder, then ``os.replace``: never a half-written checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        check_finite(checkpoint)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def check_finite(checkpoint: dict[str, Any]) -> None:
    """Refuse to save NaN/inf weights: the last good checkpoint stays the one a resume starts from."""
    for name, value in checkpoint.get("state_dict", {}).items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise FloatingPointError(f"weight {name} is not finite at step {checkpoint.get('global_step')}: "
                                     "checkpoint not saved (lower optim.lr or set trainer.gradient_clip_val)")


class RngState(L.Callback):
    """Saves the global RNG states with every checkpoint and restores them on resume (rank 0's, on every rank).

    Restored at the first training batch, not when the checkpoint is read: building the data-loader iterator
    in between draws from the global RNG, which an uninterrupted run did before step 0.
    """

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        kind, keys, pos, has_gauss, gauss = states.pop("numpy")  # plain types: checkpoints load with weights_only
        return {**states, "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
            self.pending = {**state_dict, "numpy": (kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)}

    def on_train_batch_start(self, *args: Any) -> None:
        if self.pending is not None:
            _set_rng_states(self.pending)
            self.pending = None


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM, write ``last.ckpt`` at the step just finished before Lightning stops the run."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        callback = trainer.checkpoint_callback
        if isinstance(exception, SIGTERMException) and callback is not None and callback.dirpath:
            path = Path(callback.dirpath) / contract.LAST_CKPT
            trainer.save_checkpoint(path)
            log.info("SIGTERM: saved %s at step %d", path, trainer.global_step)


UNREADABLE = ".unreadable"  # suffix an unreadable checkpoint is renamed with when an older one is resumed from
_STEP_NAME = re.compile(r"step_(\d+)(?:-v\d+)?\.ckpt$")  # configs/callbacks/default.yaml: filename step_{step}


class CheckpointsUnreadable(RuntimeError):
    """A job folder has checkpoints but none can be read: resuming is impossible and restarting would discard them."""


def probe(path: Path) -> tuple[int | None, str | None]:
    """(global_step, None) for a checkpoint that loads, else (None, why not — one line).

    Loaded the way Lightning's resume loads it (``weights_only``, on the CPU) but memory-mapped, so probing a large
    checkpoint reads its zip directory rather than all of its tensors.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - whatever the zip reader or unpickler says, the file cannot be resumed
        return None, first_line(err).split(". ")[0][:160]  # torch's zip reader goes on for five sentences
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return None, "not a Lightning training checkpoint (no global_step)"
    return state["global_step"], None


def step_checkpoints(folder: Path) -> list[Path]:
    """The periodic ``step_<N>.ckpt`` files of ``folder``, newest (highest N) first."""
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.ckpt") if (m := _STEP_NAME.match(p.name))]
    return [p for _, p in sorted(found, key=lambda item: (-item[0], item[1].name))]


def choose_resume(folder: Path, logged_step: int | None = None, main: bool = True,
                  afresh: Sequence[Path] = ()) -> Path | None:
    """The checkpoint a rerun into this job resumes from: ``last.ckpt``, else the newest readable ``step_<N>.ckpt``.

    None only when ``folder`` holds no checkpoint at all (a fresh job). Unreadable files newer than the one chosen
    are renamed ``<name>.unreadable`` by the main process (``main``; other DDP ranks only choose): Lightning would
    otherwise write ``-v1`` copies beside them when the resumed run reaches their step again. ``logged_step`` (the
    last step in metrics.csv) says how many steps are redone. Raises ``CheckpointsUnreadable`` when none can be read,
    naming ``folder`` and ``afresh`` (e.g. metrics.csv) as what to delete to start afresh.
    """
    last = folder / contract.LAST_CKPT
    candidates = ([last] if last.is_file() else []) + step_checkpoints(folder)
    bad: list[tuple[Path, str]] = []
    for path in candidates:
        step, reason = probe(path)
        if reason is None:
            break
        bad.append((path, reason))
    else:
        if bad:
            raise CheckpointsUnreadable(_none_readable(folder, bad, afresh))
        return None
    if main and (bad or path != last):
        log.warning(_fallback_line(folder, path, int(step or 0), bad, logged_step))
        for unreadable, _ in bad:
            unreadable.replace(unreadable.with_name(unreadable.name + UNREADABLE))
    return path


def _fallback_line(folder: Path, path: Path, step: int, bad: list[tuple[Path, str]], logged: int | None) -> str:
    why = f"{bad[0][0].name} is unreadable ({bad[0][1]})" if bad else f"no {contract.LAST_CKPT}"
    if len(bad) > 1:
        why += f", and so are {', '.join(p.name for p, _ in bad[1:])}"
    lost = None if logged is None else logged + 1 - step  # metrics.csv's step counts from 0: step s is batch s + 1
    redone = f"about {lost} step{'s' if lost > 1 else ''} redone (metrics.csv reached step {logged})" \
        if lost is not None and lost > 0 else f"the steps after {step} are redone"
    kept = f"; moved aside as {', '.join(p.name + UNREADABLE for p, _ in bad)}" if bad else ""
    return f"{folder}: {why}: resuming from {path.name} (step {step}); {redone}{kept}"


def _none_readable(folder: Path, bad: list[tuple[Path, str]], afresh: Sequence[Path]) -> str:
    names = ", ".join(p.name for p, _ in bad)
    delete = " ".join(str(p) for p in (folder, *afresh))
    return (f"no readable checkpoint in {folder} ({names}; {bad[0][0].name}: {bad[0][1]}): to start this job afresh "
            f"delete them (rm -r {delete}), or pass ckpt_path=<a readable .ckpt>")
