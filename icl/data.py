"""Streams of training prompts for Lightning.

The batch for global step s is a pure function of (seed, rank, s): each batch gets its own
generator ``seeded(TRAIN_STREAM, seed, rank, s)`` and the curriculum value at s. Resuming therefore needs only the
step (saved through ``PromptDataModule.state_dict``), prefetching cannot skew the stream, and
DataLoader workers split the steps round-robin without sharing RNG state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from icl.curriculum import Curriculum
from icl.spec import require, typed_fields
from icl.tasks import TRAIN_STREAM, PromptSampler, Task, build_task, seeded


@dataclass(frozen=True)
class DataSpec:
    """``data`` (configs/train.yaml holds the defaults)."""

    batch_size: int
    num_workers: int

    @classmethod
    def from_config(cls, node: dict[str, Any]) -> "DataSpec":
        spec = cls(**typed_fields(cls, node, "data"))
        require(spec.batch_size >= 1, "data.batch_size", "must be >= 1", spec.batch_size)
        require(spec.num_workers >= 0, "data.num_workers", "must be >= 0", spec.num_workers)
        return spec


class PromptStream(IterableDataset):
    """Infinite batches ``{"xs": (B, n, d), "ys": (B, n), "n_dims": int, "step": int}`` from ``start_step``."""

    def __init__(self, sampler: PromptSampler, curriculum: Curriculum, batch_size: int, seed: int,
                 rank: int = 0, start_step: int = 0) -> None:
        self.sampler, self.curriculum, self.batch_size = sampler, curriculum, batch_size
        self.seed, self.rank, self.start_step = seed, rank, start_step

    def batch_at(self, step: int) -> dict[str, Any]:
        schedule = Curriculum(self.curriculum.dims, self.curriculum.points, step)
        gen = seeded(TRAIN_STREAM, self.seed, self.rank, step)
        xs, ys = self.sampler.sample(self.batch_size, schedule.n_points, schedule.n_dims, gen)
        return {"xs": xs, "ys": ys, "n_dims": schedule.n_dims, "step": step}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        offset, stride = (0, 1) if worker is None else (worker.id, worker.num_workers)
        step = self.start_step + offset
        while True:
            yield self.batch_at(step)
            step += stride


def as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """The DataLoader's collate function: the stream's batches are complete already (its default would walk them)."""
    return batch


class PromptDataModule(L.LightningDataModule):
    """Fresh training prompts for one task, with the curriculum and optional finite pools.

    Takes the built task and curriculum (a job's ``TaskSpec`` holds them); ``from_config`` builds them from the
    plain ``task`` node, for tests and scripts.
    """

    def __init__(self, task: Task, curriculum: Curriculum, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 num_tasks: int | None = None, num_training_examples: int | None = None) -> None:
        super().__init__()
        self.task, self.curriculum = task, curriculum
        if self.curriculum.dims.end > self.task.n_dims:
            raise ValueError(
                f"curriculum dims end at {self.curriculum.dims.end} but task.n_dims is {self.task.n_dims}: "
                "set task.curriculum.dims.end <= task.n_dims")
        self.sampler = PromptSampler(self.task, num_tasks, num_training_examples,
                                     pool_seed=seed, max_points=self.curriculum.points.end)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    @classmethod
    def from_config(cls, task: dict[str, Any], batch_size: int = 64, num_workers: int = 0,
                    seed: int = 0) -> "PromptDataModule":
        """The data module of a plain ``task`` node (name, n_dims, params, curriculum, optional pool sizes)."""
        return cls(build_task(task["name"], task["n_dims"], task.get("params")),
                   Curriculum.from_config(task["curriculum"]), batch_size, num_workers, seed,
                   task.get("num_tasks"), task.get("num_training_examples"))

    @property
    def step(self) -> int:
        """Where the stream starts: the trainer's step (restored before the dataloader is built on resume)."""
        return self.trainer.global_step if self.trainer is not None else self.curriculum.step

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        stream = PromptStream(self.sampler, self.curriculum, self.batch_size, self.seed, rank, self.step)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers, collate_fn=as_is,
                          persistent_workers=False, pin_memory=torch.cuda.is_available())

    def state_dict(self) -> dict[str, Any]:
        self.curriculum.step = self.step
        return {"curriculum": self.curriculum.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curriculum.load_state_dict(state["curriculum"])
