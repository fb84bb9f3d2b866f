"""Checkpoints that survive a kill at any moment, and carry everything a resume needs.

- ``AtomicCheckpointIO``: Lightning's default writes through an fsspec transaction whose temporary file lives in
  the system temp folder; when that is another filesystem the final step is a copy, and a SIGKILL during the copy
  leaves a truncated ``last.ckpt``. Here the file is written beside its target and renamed (``icl.files``).
  Weights that are NaN/inf are never saved (the run stops instead, keeping the last good checkpoint).
- ``RngState``: the global torch/numpy/Python RNG states go into each checkpoint and come back on resume (the
  prompt stream is keyed by step and needs none; dropout and anything else drawing from the global RNG does).
- ``CheckpointOnSigterm``: on SIGTERM (pre-emption) Lightning stops after the current step; this saves
  ``last.ckpt`` at that step first, so a pre-empted job redoes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from icl.files import atomic_write

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into ``<path>.tmp`` in the same folder, then ``os.replace``: never a half-written checkpoint."""

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
            path = Path(callback.dirpath) / "last.ckpt"
            trainer.save_checkpoint(path)
            log.info("SIGTERM: saved %s at step %d", path, trainer.global_step)
