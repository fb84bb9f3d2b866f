"""Torch threads for one process of a run (``icl.train``, ``icl.evaluate``): ``threads=N``, else what the Hydra
launcher leaves each job, so jobs side by side never oversubscribe the cores."""

from __future__ import annotations

import os

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def launcher_threads() -> int | None:
    """Threads per job the Hydra launcher leaves room for: cores // joblib's ``n_jobs``, or submitit's
    ``cpus_per_task``; None for a single run or the basic launcher (one job at a time)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    launcher, cores = HydraConfig.get().launcher, os.cpu_count() or 1
    if launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    n_jobs = launcher.get("n_jobs")
    if not n_jobs:
        return None
    n_jobs = min(cores, n_jobs if n_jobs > 0 else cores + 1 + n_jobs)  # joblib: -1 = all cores
    return max(1, cores // n_jobs)


def set_threads(threads: int | None) -> int:
    """torch threads for this job: ``threads``, else what the launcher leaves each job (so a joblib sweep does
    not oversubscribe: two jobs of 2 threads on 2 cores run several times slower than 1 thread each)."""
    if threads is None:
        threads = launcher_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()
