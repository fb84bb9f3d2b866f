"""ICLModule: the LightningModule that trains an ``ICLTransformer`` on one task.

Built from plain hyper-parameters (task, model and optimiser as dicts, attention as a name, ``quant`` only for
quantisation-aware training, whose fake quantisers it then builds), so
``ICLModule.load_from_checkpoint(path)`` rebuilds it without Hydra or the config files; a job's come from its
spec (``icl.run.spec.JobSpec.module_hparams``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import lightning as L
import torch
from torch import Tensor

from icl.spec import require, typed_fields
from icl.tasks import Task, build_task
from icl.transformer import FROM_TASK, MODEL_KEYS, ICLTransformer, TransformerConfig  # noqa: F401 - re-exported

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class OptimSpec:
    """``optim`` (configs/train.yaml holds the defaults): Adam with a linear warm-up, then constant or cosine."""

    lr: float
    weight_decay: float
    schedule: str
    warmup_steps: int

    @classmethod
    def from_config(cls, node: dict[str, Any]) -> "OptimSpec":
        spec = cls(**typed_fields(cls, node, "optim"))
        require(spec.lr > 0, "optim.lr", "the learning rate must be > 0", spec.lr)
        require(spec.weight_decay >= 0, "optim.weight_decay", "must be >= 0", spec.weight_decay)
        require(spec.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0", spec.warmup_steps)
        require(spec.schedule in SCHEDULES, "optim.schedule", f"choose one of {', '.join(SCHEDULES)}", spec.schedule)
        return spec


OPTIM_KEYS = tuple(f.name for f in fields(OptimSpec))


class ICLModule(L.LightningModule):
    """Loss = the task's objective over every prediction position (MSE, or cross-entropy for classification).

    Logs ``train/loss``, ``train/loss_rel_zero`` (loss divided by the zero estimator's loss on the same
    batch, Garg et al.'s normalisation, 1 = no better than predicting 0) and the curriculum state, on the steps
    the loggers write (every ``trainer.log_every_n_steps``) and the last one.
    """

    def __init__(self, task: dict[str, Any], model: dict[str, Any], attn: dict[str, Any] | str | None = None,
                 optim: dict[str, Any] | None = None, quant: dict[str, Any] | None = None,
                 built_task: Task | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["built_task"])  # a checkpoint rebuilds the task from the plain node
        self.task: Task = built_task or build_task(task["name"], task["n_dims"], task.get("params"))
        # The attn config node: its name plus the variant's own settings (a bare name also works).
        attn_params = {"name": attn} if isinstance(attn, str) else dict(attn or {"name": "softmax"})
        config = TransformerConfig(n_dims=task["n_dims"], attn=attn_params.pop("name"), attn_params=attn_params,
                                   y_dim=self.task.y_dim, **{k: model[k] for k in MODEL_KEYS if k in model})
        self.model = ICLTransformer(config)
        if quant:  # quantisation-aware training: fake-quantised layers from the start (and on reload/resume)
            from icl.quantize import QuantSpec, prepare_qat

            prepare_qat(self.model, QuantSpec.from_config(quant))
        if optim is not None:  # None: a module for inference only (configure_optimizers refuses)
            unknown, missing = sorted(set(optim) - set(OPTIM_KEYS)), sorted(set(OPTIM_KEYS) - set(optim))
            if unknown or missing:
                raise ValueError(f"optim options: unknown {unknown}, missing {missing}; known: {list(OPTIM_KEYS)}")
        self.optim = optim
        self.last_batch: tuple[Tensor, Tensor, int, int] | None = None  # what on_train_batch_end logs
        self.nonfinite = NonFinite()

    def forward(self, xs: Tensor, ys: Tensor) -> Tensor:
        return self.model(xs, ys)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        xs, ys = batch["xs"], batch["ys"]
        loss = self.task.loss(self(xs, ys), ys)
        self.nonfinite.record(loss.detach(), self.global_step)
        self.last_batch = (loss.detach(), ys, batch["n_dims"], xs.shape[1])
        return loss

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # The stream's batches are flat dicts: moving their tensors directly skips Lightning's generic collection walk.
        if not isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Only on the steps whose metrics the loggers write (and the last, for the final metrics): each self.log call
        # walks Lightning's result collection, and what it records on the other steps is never written.
        if not (logs_this_step(self.trainer) or self.global_step >= self.trainer.max_steps > 0):
            return
        self.nonfinite.check(self.global_step - 1)
        loss, ys, n_dims, n_points = self.last_batch
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/loss_rel_zero", loss / self.task.zero_loss(ys).to(loss), prog_bar=True)
        self.log("curriculum/n_dims", float(n_dims))
        self.log("curriculum/n_points", float(n_points))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite.check(self.global_step - 1)  # no checkpoint of a run whose loss went non-finite

    def on_train_end(self) -> None:
        self.nonfinite.check(self.global_step - 1)

    def configure_optimizers(self) -> dict[str, Any]:
        if self.optim is None:
            raise ValueError("this ICLModule was built without optim settings (inference only): pass optim=…")
        opt = make_optimizer(self.parameters(), lr=self.optim["lr"], weight_decay=self.optim["weight_decay"])
        total = int(self.trainer.max_steps)
        if self.optim["schedule"] == "cosine" and total <= 0:
            raise ValueError("optim.schedule=cosine needs trainer.max_steps > 0 (it decays to 0 at max_steps)")
        schedule = lr_lambda(self.optim["schedule"], int(self.optim["warmup_steps"]), max(total, 1))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class NonFinite:
    """The training loss's NaN/inf check without a host sync per step: ``record`` keeps, on the loss's device, the
    first non-finite loss and its step; ``check`` reads them (the one sync) on the steps the loggers write, before a
    checkpoint and at the end, and raises naming that step and the steps checked. (On a CPU nothing is asynchronous,
    so there the saving is only the per-step branch.)"""

    def __init__(self) -> None:
        self.step: Tensor | None = None  # first non-finite step, -1: none yet
        self.loss: Tensor | None = None
        self.checked = 0  # the first step the next check covers

    def record(self, loss: Tensor, step: int) -> None:
        if self.step is None:  # the first step of this run (a resumed run starts past 0)
            self.checked = step
            self.step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self.loss = torch.zeros((), dtype=loss.dtype, device=loss.device)
        first = ~torch.isfinite(loss) & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.loss = torch.where(first, loss, self.loss)

    def check(self, last_step: int) -> None:
        """Raise if a loss up to ``last_step`` was not finite."""
        if self.step is None or last_step < self.checked:
            return
        first = int(self.step)
        if first >= 0:
            raise FloatingPointError(
                f"training loss is {self.loss.item()} at step {first} (found by the check of steps {self.checked}–"
                f"{last_step}): lower optim.lr or add trainer.gradient_clip_val (finished checkpoints are kept)")
        self.checked = last_step + 1


def logs_this_step(trainer: L.Trainer) -> bool:
    """Whether the trainer's loggers write this step's metrics (``trainer.log_every_n_steps``, or a stop): Lightning's
    own test, as its LearningRateMonitor reads it (the one use of this private attribute; tests/test_bench_overhead.py)."""
    return bool(trainer._logger_connector.should_update_logs)


def make_optimizer(params: Iterable[Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The training optimiser: Adam. ``foreach``: one multi-tensor kernel per update op instead of one small op per
    parameter, the same arithmetic (tests/test_bench_overhead.py); torch picks it by default on GPUs only. (``fused``
    would be faster still on a CPU but rounds differently.)"""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier on the base lr: linear warm-up, then constant or cosine decay to 0 at ``total``."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got '{schedule}'")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
