"""How to time torch code honestly: warm-up, device synchronisation, robust statistics.

Shared by the benchmarks (``icl.bench.attention``, ``icl.bench.latency``). CUDA work is asynchronous, so a host clock read
without ``torch.cuda.synchronize()`` measures kernel launches, not compute (the seed study's ~5 µs
per sequence). Timings are summarised by order statistics, which a few slow outliers (another
process, a page fault) do not drag.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def sync(device: torch.device) -> None:
    """Wait until all queued work on ``device`` is done (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds for one call of ``fn``, with the device drained before and after. ``clock`` is wall time by
    default; ``time.process_time`` (this process's CPU seconds) is the fair one on a CPU shared with other jobs."""
    sync(device)
    start = clock()
    fn()
    sync(device)
    return clock() - start


def interleaved(calls: dict[Any, Callable[[], object]], device: torch.device, warmup: int, repeats: int,
                clock: Callable[[], float] = time.perf_counter) -> tuple[dict[Any, list[float]], dict[Any, str]]:
    """Seconds per call for every entry of ``calls``, ``repeats`` times after ``warmup`` untimed rounds.

    Every round runs each call once, rotating who goes first, so a drift of a shared machine hits all alike.
    A call that runs out of memory is dropped and reported in the second dict instead of stopping the others.
    """
    keys = list(calls)
    times: dict[Any, list[float]] = {key: [] for key in keys}
    failed: dict[Any, str] = {}
    for r in range(warmup + repeats):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            if key in failed:
                continue
            try:
                seconds = time_call(calls[key], device, clock)
            except torch.OutOfMemoryError:
                failed[key] = "out of memory"
                continue
            if r >= warmup:
                times[key].append(seconds)
    return times, failed


def summarise(seconds: np.ndarray | list[float]) -> dict[str, float]:
    """Median, quartiles, IQR and the seed study's trimmed mean (runs above Q3 + 1.5·IQR dropped)."""
    t = np.asarray(seconds, dtype=float)
    q1, median, q3 = np.quantile(t, [0.25, 0.5, 0.75])
    kept = t[t <= q3 + 1.5 * (q3 - q1)]
    return {"median": median, "q1": q1, "q3": q3, "iqr": q3 - q1, "trimmed_mean": kept.mean(),
            "n": len(t), "n_kept": len(kept)}


def loglog_slope(sizes: np.ndarray | list[float], seconds: np.ndarray | list[float]) -> float:
    """Least-squares slope of log(time) against log(size): 1 for linear cost, 2 for quadratic."""
    x, y = np.log(np.asarray(sizes, dtype=float)), np.log(np.asarray(seconds, dtype=float))
    if len(x) < 2:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])
