"""The study's inference rules, pure and unit-tested: seed-level intervals, verdict words, the guard, the
training-failure table and the convergence rules (still improving, loss rose, or unknown without a curve).

Training seeds are the unit of inference. Each seed s gives one paired statistic Δ_s (pooled over prompts and a
k window, with its own bootstrap CI over prompts: that seed's precision). A claim's interval is the t-interval
of the seed-level values: mean(Δ_s) ± t_{n−1} · sd(Δ_s) / √n. Why a t-interval and not a hierarchical
bootstrap: with 3–5 seeds a bootstrap over seeds sees at most 5 distinct values, and its percentile interval is
known to be too narrow at that n (it ignores the n − 1 degrees of freedom); the t-interval widens with few seeds
as it should, and each Δ_s already carries its prompt noise, so the seed-level spread contains both sources.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

from icl.stats import SeedInterval as SeedInterval  # re-exported: the study's modules read them here
from icl.stats import below_margin as below_margin
from icl.stats import seed_interval as seed_interval

CONFIRMED, REFUTED, UNRESOLVED = "confirmed", "refuted", "not resolved at this scale"
VERDICTS = (CONFIRMED, REFUTED, UNRESOLVED)
KINDS = ("less", "greater", "equal", "noninferior")


def verdict(kind: str, low: float, high: float, margin: float = 0.0, min_seeds: int = 2,
            n: int = 2) -> tuple[str, str]:
    """(verdict, why) from a seed-level interval [low, high].

    ``less``/``greater``: Δ claimed below/above 0 — confirmed when the interval is on that side of 0, refuted when
    it is on the other side. ``equal``: |Δ| < margin — confirmed inside ±margin, refuted entirely outside.
    ``noninferior``: Δ < margin (A not worse than B by more than the margin) — confirmed when
    ``below_margin(high, margin)``, refuted when low > margin. Anything else, or fewer than ``min_seeds`` seeds: not resolved."""
    if kind not in KINDS:
        raise ValueError(f"claim kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if n < min_seeds or math.isnan(low) or math.isnan(high):
        return UNRESOLVED, f"{n} usable seed(s), {min_seeds} needed"
    if math.isnan(margin):
        return UNRESOLVED, "no margin"
    shown = f"[{low:+.3f}, {high:+.3f}]"
    if kind == "equal":
        if -margin < low and high < margin:
            return CONFIRMED, f"seed-level CI {shown} inside ±{margin:.3g}"
        if low > margin or high < -margin:
            return REFUTED, f"seed-level CI {shown} outside ±{margin:.3g}"
        return UNRESOLVED, f"seed-level CI {shown} crosses ±{margin:.3g}"
    if kind == "noninferior":
        if below_margin(high, margin):
            return CONFIRMED, f"seed-level CI {shown} below the margin {margin:+.3g}"
        if low > margin:
            return REFUTED, f"seed-level CI {shown} above the margin {margin:+.3g}"
        return UNRESOLVED, f"seed-level CI {shown} contains the margin {margin:+.3g}"
    below, above = high < 0, low > 0
    yes, no = (below, above) if kind == "less" else (above, below)
    if yes:
        return CONFIRMED, f"seed-level CI {shown} on the claimed side of 0"
    if no:
        return REFUTED, f"seed-level CI {shown} on the other side of 0"
    return UNRESOLVED, f"seed-level CI {shown} contains 0"


def combine(verdicts: Sequence[str]) -> str:
    """A claim with several rows: confirmed when every row is, refuted when any is, else not resolved."""
    if verdicts and all(v == CONFIRMED for v in verdicts):
        return CONFIRMED
    return REFUTED if REFUTED in verdicts else UNRESOLVED


@dataclass(frozen=True)
class Guard:
    """"Did this model learn?", one rule for every model: its normalised error at the guard's k is at most
    ``zero_fraction`` of the zero estimator's (= 1), i.e. it left the zero estimator's plateau, or, where the best
    baseline that can fit the task (the baselines the config lists for it) plus ``baseline_margin`` is higher, at
    most that: on a task no fitter gets below ``zero_fraction`` (trees), a model as good as the fitters learned. The
    margin only ever widens the bar: an absolute margin that narrowed it would count a model that learned worse as one
    that did not learn (docs/study.md, Guard)."""

    zero_fraction: float
    baseline_margin: float | None = None
    # the guard's k per task (unlisted: min(2d, last trained k)) and the baselines that can fit each task; left out
    # of the hash (a dict is unhashable), so a Guard stays hashable as a frozen dataclass
    k: Mapping[str, int] = field(default_factory=dict, hash=False)
    baselines: Mapping[str, Sequence[str]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not 0 < self.zero_fraction <= 1 or (self.baseline_margin is not None and self.baseline_margin < 0):
            raise ValueError(f"guard: zero_fraction must be in (0, 1] and baseline_margin >= 0 or null, got "
                             f"{self.zero_fraction}, {self.baseline_margin}")

    @classmethod
    def from_config(cls, guard: Mapping[str, Any]) -> Guard:
        """From a study config's ``guard:`` block (``baseline_margin`` absent or null: the plateau test alone)."""
        margin = guard.get("baseline_margin")
        return cls(float(guard["zero_fraction"]), None if margin is None else float(margin),
                   {str(task): int(k) for task, k in (guard.get("k") or {}).items()},
                   {str(task): tuple(names) for task, names in (guard.get("baselines") or {}).items()})

    def k_for(self, task: str, n_dims: int, k_train: int) -> int:
        """The k a model of ``task`` is judged at: the config's, else min(2d, the last trained k)."""
        chosen = self.k.get(task)
        return int(chosen) if chosen is not None else min(2 * int(n_dims), int(k_train))

    def best_baseline(self, task: str, error_of: Callable[[str], float]) -> tuple[str, float]:
        """The lowest error among the baselines that can fit ``task`` (``error_of(name)``, NaN: not scored);
        ("—", NaN) when none was scored."""
        values = [(name, float(error_of(name))) for name in self.baselines.get(task, ())]
        values = [(name, v) for name, v in values if not math.isnan(v)]
        return min(values, key=lambda nv: nv[1]) if values else ("—", math.nan)

    def bar(self, best_baseline: float) -> float:
        """The largest normalised error that still counts as learned."""
        if self.baseline_margin is None or math.isnan(best_baseline):
            return self.zero_fraction
        return max(self.zero_fraction, best_baseline + self.baseline_margin)

    def learned(self, error: float, best_baseline: float) -> bool:
        return not math.isnan(error) and error <= self.bar(best_baseline)

    def describe(self) -> str:
        """The rule in words, for the report."""
        rule = f"its normalised error at the guard's k is ≤ {self.zero_fraction:g} of the zero estimator's"
        if self.baseline_margin is not None:
            rule += (f" (off its plateau), or ≤ the best baseline that can fit the task + {self.baseline_margin:g} "
                     "where that is higher (a task no fitter gets below it)")
        return rule


def failure_rate(failed: int, n: int, ci: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) CI of the failure probability from ``failed`` of ``n`` seeds."""
    if n == 0:
        return math.nan, math.nan
    out = sps.binomtest(failed, n).proportion_ci(confidence_level=ci, method="exact")
    return float(out.low), float(out.high)


def _curve_shares(steps: Sequence[float], losses: Sequence[float],
                  tail: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The curve's finite points (steps, losses) and the masks of its last and first ``tail`` share of the steps;
    None when the curve or its last share has fewer than 3 points (no line can be fitted there)."""
    s, y = np.asarray(steps, float), np.asarray(losses, float)
    keep = np.isfinite(y)
    s, y = s[keep], y[keep]
    if len(s) < 3:
        return None
    span = s.max() - s.min()
    tail_mask, first_mask = s >= s.max() - tail * span, s <= s.min() + tail * span
    return (s, y, tail_mask, first_mask) if tail_mask.sum() >= 3 else None


def still_improving(steps: Sequence[float], losses: Sequence[float], tail: float, tolerance: float,
                    ci: float = 0.95) -> bool:
    """The plateau rule, scale-free: over the last ``tail`` share of training a least-squares line through the loss
    falls by more than ``tolerance`` × the whole run's fall (the mean over the first ``tail`` share minus the mean
    over the last), and that fall is beyond the curve's noise (the slope's ``ci`` t-interval is below 0).

    Relative to the run's fall, not to the loss: the loss includes an unlearnable floor (k < d) that would hide a
    tail still falling; the noise clause keeps a flat curve's random tilt from being read as progress."""
    shares = _curve_shares(steps, losses, tail)
    if shares is None:
        return False
    s, y, tail_mask, first_mask = shares
    fit = sps.linregress(s[tail_mask], y[tail_mask])
    fall = -fit.slope * (s[tail_mask].max() - s[tail_mask].min())
    whole = y[first_mask].mean() - y[tail_mask].mean()
    slope_high = fit.slope + sps.t.ppf(0.5 + ci / 2, tail_mask.sum() - 2) * fit.stderr
    return bool(whole > 0 and fall > tolerance * whole and slope_high < 0)


def loss_rose(steps: Sequence[float], losses: Sequence[float], tail: float, tolerance: float,
              ci: float = 0.95) -> bool:
    """The overfitting / divergence rule: the last ``tail`` share of training's mean loss is above the lowest mean of
    any window of as many points by more than ``tolerance`` × the run's fall to that lowest window (the mean over the
    first ``tail`` share minus it), and by more than the noise (the ``ci`` t-quantile × √2 × the tail's standard
    error about its fitted line).

    The fall is measured to the lowest window, not to the end: a curve that rises back above its first share's mean
    has no fall to the end, yet is exactly the curve this rule is for. The noise clause keeps the lowest of many
    windows of a flat, noisy curve (biased low by the choice) from reading as a rise."""
    shares = _curve_shares(steps, losses, tail)
    if shares is None:
        return False
    s, y, tail_mask, first_mask = shares
    width = int(tail_mask.sum())
    lowest = np.convolve(y, np.ones(width) / width, "valid").min()
    rise, fall = y[tail_mask].mean() - lowest, y[first_mask].mean() - lowest
    fit = sps.linregress(s[tail_mask], y[tail_mask])
    residual_sd = np.std(y[tail_mask] - (fit.intercept + fit.slope * s[tail_mask]), ddof=2)
    noise = sps.t.ppf(0.5 + ci / 2, width - 2) * math.sqrt(2) * residual_sd / math.sqrt(width)
    rounding = 1e-9 * float(np.abs(y).mean())  # a constant curve's window means differ by float rounding only
    return bool(rise > max(tolerance * fall, noise, rounding))


IMPROVING, ROSE, NO_CURVE, SHORT = "still improving", "loss rose", "no curve", "curve too short"
CONVERGENCE_FLAGS = (IMPROVING, ROSE, NO_CURVE, SHORT)  # the order the report lists them in


@dataclass(frozen=True)
class Convergence:
    """How a model's training ended, read off its curve: ``known`` False when the curve has too few points for the
    rules (unknown, never "converged": no curve below 3 finite points, else too short); else converged unless still
    improving and/or its loss rose."""

    known: bool
    improving: bool = False
    rose: bool = False
    points: int = 0   # the curve's finite points

    @property
    def flags(self) -> tuple[str, ...]:
        if not self.known:
            return (NO_CURVE if self.points < 3 else SHORT,)
        return tuple(word for word, on in ((IMPROVING, self.improving), (ROSE, self.rose)) if on)

    @property
    def state(self) -> str:
        """One word for a table cell or a CSV: converged, unknown, or the flags joined."""
        if not self.known:
            return "unknown"
        return ", ".join(self.flags) or "converged"


def convergence(steps: Sequence[float], losses: Sequence[float], tail: float, tolerance: float,
                ci: float = 0.95) -> Convergence:
    """Both rules on one curve (configs/study.yaml ``convergence:``); a curve whose last ``tail`` share holds fewer
    than 3 finite points (a header-only curve.csv) is unknown: the rules fit a line to that share."""
    if not 0 < tail <= 0.5 or tolerance < 0:
        raise ValueError(f"convergence: tail must be in (0, 0.5] and tolerance >= 0, got {tail}, {tolerance}")
    if _curve_shares(steps, losses, tail) is None:
        return Convergence(known=False, points=int(np.isfinite(np.asarray(losses, float)).sum()))
    return Convergence(True, still_improving(steps, losses, tail, tolerance, ci),
                       loss_rose(steps, losses, tail, tolerance, ci), int(np.isfinite(np.asarray(losses, float)).sum()))


def convergence_flags(seeds: Sequence[tuple[int, Sequence[str]]]) -> list[str]:
    """``[(seed, flags)]`` → one phrase per flag any seed carries, e.g. "loss rose: seed 0, 2", in the report's order
    (a flag may name its model after the word: "no curve (softmax)")."""
    labels = dict.fromkeys(flag for _, flags in seeds for flag in flags)
    order = sorted(labels, key=lambda flag: CONVERGENCE_FLAGS.index(flag.split(" (")[0]))
    return [f"{label}: seed {', '.join(str(sd) for sd, flags in seeds if label in flags)}" for label in order]
