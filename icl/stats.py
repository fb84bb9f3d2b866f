"""The statistics every table and figure rests on: bootstrap CIs of ratios of means, paired differences, medians.

Numpy and scipy only (no torch), so the analysis layer uses the very functions the evaluation used.

- ``bootstrap_ratio``: Σ err / Σ ref per column (k), a percentile bootstrap over prompts (rows) — the normalised
  error of eval.csv and its CI.
- ``paired_bootstrap``: (Σ err − Σ ref) / Σ zero on the same prompts, resampled together — a paired difference.
- ``bootstrap_median_ci``, ``ratio_ci``, ``mann_whitney_p``: timing samples (medians, ratios of medians, a rank test).
- ``error_at``: the transformer's error at chosen k (e.g. d and 2d) from eval.csv rows, the one summary helper.
- ``seed_interval``: the t-interval over training seeds of seed-level values (the study's claims, the quant sweep's
  breaking points and its figures; why a t-interval: ``icl.lab.study.inference``).

Resampling uses multinomial counts (n_boot, P) @ values (P, n), drawn once per (P, n_boot, seed) and shared by every
predictor, strategy and job scored on P prompts; this never materialises n_boot copies of the data.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from icl.contract import strategies


@lru_cache(maxsize=8)
def resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) multinomial resampling counts (read-only, cached)."""
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=n_boot).astype(np.float64)
    counts.flags.writeable = False
    return counts


def ratio_replicates(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Σ num / Σ den over rows (per column) and its (n_boot, …) bootstrap replicates. The resampled rows are the
    same for every call with the same (rows, n_boot, seed): that is what pairs two models scored on the same
    prompts (the study differences their replicates)."""
    counts = resample_counts(len(num), n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num.sum(0) / den.sum(0), (counts @ num) / (counts @ den)


def bootstrap_ratio(err: np.ndarray, ref: np.ndarray, n_boot: int, ci: float, seed: int) -> tuple[np.ndarray, ...]:
    """Mean of ``err`` over mean of ``ref`` per column, with a percentile bootstrap CI over rows.

    err, ref: (P, n); NaN in ``err`` drops that prompt from that column. Returns point, low, high, the raw mean of
    ``err`` and the number of valid prompts per column.
    """
    valid = ~np.isnan(err)
    e, r = np.where(valid, err, 0.0), np.where(valid, ref, 0.0)
    point, boots = ratio_replicates(e, r, n_boot, seed)
    with np.errstate(invalid="ignore"):
        low, high = percentile_interval(boots, ci) if n_boot else (point, point)
    raw = np.where(valid.any(0), e.sum(0) / np.maximum(valid.sum(0), 1), np.nan)
    return point, low, high, raw, valid.sum(0)


def percentile_interval(boots: np.ndarray, ci: float) -> tuple[Any, Any]:
    """The ``ci`` percentile interval of bootstrap replicates along axis 0: per column of (n_boot, m), floats for
    (n_boot,). NaN replicates are skipped (a column with none valid stays NaN); nanquantile only where a NaN is,
    since it is slower."""
    if boots.ndim == 1:
        low, high = percentile_interval(boots[:, None], ci)
        return float(low[0]), float(high[0])
    alpha = (1 - ci) / 2
    low, high = np.empty(boots.shape[1]), np.empty(boots.shape[1])
    bad = np.isnan(boots).any(0)
    if (~bad).any():
        low[~bad], high[~bad] = np.quantile(boots[:, ~bad], [alpha, 1 - alpha], axis=0)
    if bad.any():
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            low[bad], high[bad] = np.nanquantile(boots[:, bad], [alpha, 1 - alpha], axis=0)
    return low, high


_ZERO_BOOTS: dict[tuple[int, int, int, str], np.ndarray] = {}  # content of z -> counts @ z (the last few)


def _resampled_zero(counts: np.ndarray, z: np.ndarray, seed: int) -> np.ndarray:
    """``counts @ z``, remembered by the content of z: at aggregation every job of a study pairs against the
    same zero-estimator errors, so half of each job's resampling is the same product (the same numbers)."""
    key = (*counts.shape, seed, hashlib.blake2b(np.ascontiguousarray(z).view(np.uint8), digest_size=16).hexdigest())
    if key not in _ZERO_BOOTS:
        if len(_ZERO_BOOTS) >= 8:
            _ZERO_BOOTS.pop(next(iter(_ZERO_BOOTS)))
        _ZERO_BOOTS[key] = counts @ z
    return _ZERO_BOOTS[key]


def paired_bootstrap_many(triples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], n_boot: int, ci: float,
                          seed: int) -> list[tuple[np.ndarray, ...]]:
    """``paired_bootstrap`` of several (err, ref, zero) at once: one matrix product per prompt count.

    Stacking the columns of many pairs (a job's every strategy × param at aggregation) makes the resampling one
    BLAS call instead of one per pair; each column's sums are the same dot products either way.
    """
    out: list[tuple[np.ndarray, ...] | None] = [None] * len(triples)
    by_size: dict[int, list[int]] = {}
    for i, (err, _, _) in enumerate(triples):
        by_size.setdefault(len(err), []).append(i)
    for n, members in by_size.items():
        deltas, zs, valids = [], [], []
        for i in members:
            err, ref, zero = triples[i]
            valid = ~(np.isnan(err) | np.isnan(ref))
            deltas.append(np.where(valid, err.astype(np.float64) - ref, 0.0))
            zs.append(np.where(valid, zero.astype(np.float64), 0.0))
            valids.append(valid)
        delta, z = np.concatenate(deltas, axis=1), np.concatenate(zs, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            point = delta.sum(0) / z.sum(0)
            if n_boot:
                counts = resample_counts(n, n_boot, seed)
                low, high = percentile_interval((counts @ delta) / _resampled_zero(counts, z, seed), ci)
            else:
                low, high = point, point
        count = np.concatenate([v.sum(0) for v in valids])
        start = 0
        for i, v in zip(members, valids):
            cols = slice(start, start + v.shape[1])
            out[i] = (point[cols], low[cols], high[cols], count[cols])
            start += v.shape[1]
    return out  # type: ignore[return-value]


def paired_bootstrap(err: np.ndarray, ref: np.ndarray, zero: np.ndarray, n_boot: int, ci: float,
                     seed: int) -> tuple[np.ndarray, ...]:
    """Per column: (Σ err − Σ ref) / Σ zero over prompts valid in both, with a paired percentile bootstrap CI."""
    return paired_bootstrap_many([(err, ref, zero)], n_boot, ci, seed)[0]


def bootstrap_median_ci(samples: np.ndarray | list[float], n_boot: int = 2000, ci: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median: how far the reported median could move between runs."""
    t = np.asarray(samples, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(t[rng.integers(0, len(t), (n_boot, len(t)))], axis=1)
    lo, hi = np.quantile(medians, [(1 - ci) / 2, (1 + ci) / 2])
    return float(lo), float(hi)


def ratio_ci(a: np.ndarray | list[float], b: np.ndarray | list[float], n_boot: int = 2000, ci: float = 0.95,
             seed: int = 0) -> tuple[float, float, float]:
    """median(a) / median(b) with a percentile bootstrap interval (a and b resampled independently)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    ratios = (np.median(a[rng.integers(0, len(a), (n_boot, len(a)))], axis=1)
              / np.median(b[rng.integers(0, len(b), (n_boot, len(b)))], axis=1))
    lo, hi = np.quantile(ratios, [(1 - ci) / 2, (1 + ci) / 2])
    return float(np.median(a) / np.median(b)), float(lo), float(hi)


def mann_whitney_p(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    """Two-sided Mann–Whitney U p-value: do the two samples come from the same distribution?

    Rank-based, so it needs no normality and is not moved by a few outliers; NaN with fewer than 2 values a side.
    """
    from scipy.stats import mannwhitneyu

    if min(len(a), len(b)) < 2:
        return float("nan")
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def error_at(df: pd.DataFrame, ks: Iterable[int], predictor: str = "transformer",
             strategy: str = "standard") -> dict[int, float]:
    """``predictor``'s error at each k of ``ks`` present in eval.csv rows (standard prompts by default)."""
    rows = df[(df["predictor"] == predictor) & (strategies(df) == strategy)].set_index("k")["error"]
    return {int(k): float(rows[k]) for k in ks if k in rows.index}


@dataclass(frozen=True)
class SeedInterval:
    """A statistic over training seeds: mean, t-interval, how many seeds."""

    mean: float
    low: float
    high: float
    n: int


def below_margin(high: float | np.ndarray, margin: float) -> bool | np.ndarray:
    """Non-inferiority's one test, for a seed-level t-interval and a job's prompt CI alike (icl.bench.quant_sweep,
    the study, the sweep's figures): the interval's upper end is strictly below the margin; an interval reaching the
    margin has not excluded it."""
    return np.less(high, margin)


def seed_interval(points: Sequence[float], ci: float = 0.95) -> SeedInterval:
    """The t-interval of the seed-level values (NaNs dropped); fewer than 2 seeds give an unbounded interval."""
    from scipy import stats as sps

    x = np.asarray([p for p in points if not math.isnan(p)], float)
    if len(x) == 0:
        return SeedInterval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if len(x) < 2:
        return SeedInterval(mean, -math.inf, math.inf, 1)
    half = float(sps.t.ppf(0.5 + ci / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return SeedInterval(mean, mean - half, mean + half, len(x))
