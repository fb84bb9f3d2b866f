"""The study's "still improving" rule (icl.lab.study.inference.still_improving): the tail's fall measured against
the whole run's fall, and only when it stands out of the curve's noise; the "loss rose" rule (a rise after the
curve's lowest window) and the three-valued convergence (a curve too short for the rules is unknown, never
converged)."""

import numpy as np
import pytest

from icl.lab.study.inference import NO_CURVE, ROSE, convergence, convergence_flags, loss_rose, still_improving

STEPS = np.arange(75, 15001, 75)  # curve.csv's grid: 200 rows over 15k steps
TAIL, TOLERANCE = 0.2, 0.05       # configs/study.yaml's convergence:


def curve(floor: float, slow: float, noise: float, seed: int = 0) -> np.ndarray:
    """A loss ÷ zero curve: a fast fall from 1 to an unlearnable ``floor`` (k < d), a ``slow`` linear part still
    falling to the end, and per-point noise."""
    rng = np.random.default_rng(seed)
    return (floor + (1 - floor - slow) * np.exp(-STEPS / 1500) + slow * (1 - STEPS / STEPS.max())
            + rng.normal(0, noise, len(STEPS)))


def test_a_curve_still_falling_above_a_floor_is_flagged_whatever_the_floor():
    y = curve(floor=0.3, slow=0.2, noise=0.005)  # the last 20 % of steps still fall by 0.04, ~10 % of the run's fall
    assert still_improving(STEPS, y, TAIL, TOLERANCE)
    # scale-free: a higher unlearnable floor or another loss unit changes nothing (a rule relative to the tail's mean
    # loss would stop flagging it once the floor is high enough)
    assert still_improving(STEPS, y + 2.0, TAIL, TOLERANCE) and still_improving(STEPS, 10 * y, TAIL, TOLERANCE)


def test_a_flat_tail_after_a_big_drop_is_not_flagged():
    assert not still_improving(STEPS, curve(floor=0.3, slow=0.0, noise=0.005), TAIL, TOLERANCE)
    assert not still_improving(STEPS, curve(floor=0.3, slow=0.0, noise=0.0), TAIL, TOLERANCE)


def test_a_noisy_flat_curve_is_not_flagged():
    rng = np.random.default_rng(1)
    flagged = [still_improving(STEPS, 0.9 + rng.normal(0, 0.02, len(STEPS)), TAIL, TOLERANCE) for _ in range(200)]
    assert sum(flagged) <= 10  # only the t-interval's one-sided 2.5 % of chance tilts, not half of them
    rising = 0.3 + 0.001 * STEPS / 1000
    assert not still_improving(STEPS, rising, TAIL, TOLERANCE) and not still_improving(STEPS[:2], rising[:2], 0.2, 0.05)


def test_noise_decides_only_when_the_fall_is_within_it():
    assert still_improving(STEPS, curve(floor=0.3, slow=0.2, noise=0.0), TAIL, TOLERANCE)
    assert not still_improving(STEPS, curve(floor=0.3, slow=0.2, noise=0.2), TAIL, TOLERANCE)  # lost in the noise
    assert not still_improving(STEPS, curve(floor=0.3, slow=0.02, noise=0.0), TAIL, TOLERANCE)  # 1 % of the fall


def rises_after(low_at: float, end: float, noise: float, seed: int = 0) -> np.ndarray:
    """The tuned sparse_linear relu_causal seed-0 shape: a fall from 1 to 0.52 by step ``low_at``, then a linear rise
    to ``end`` at the last step, with per-point noise."""
    rng = np.random.default_rng(seed)
    fall = 0.52 + 0.48 * np.exp(-STEPS / (low_at / 5))
    return fall + (end - 0.52) * np.clip((STEPS - low_at) / (STEPS.max() - low_at), 0, None) \
        + rng.normal(0, noise, len(STEPS))


def test_a_loss_that_rises_after_its_minimum_is_flagged_and_the_falling_rule_alone_misses_it():
    y = rises_after(low_at=3300, end=0.6, noise=0.01)
    assert loss_rose(STEPS, y, TAIL, TOLERANCE) and not still_improving(STEPS, y, TAIL, TOLERANCE)
    assert convergence(STEPS, y, TAIL, TOLERANCE).flags == (ROSE,)
    # ending above its first 20 %'s mean, its fall to the end (the falling rule's "whole fall") is negative: the rise
    # is measured against the fall to the lowest window, so it is still flagged
    high = rises_after(low_at=3300, end=0.75, noise=0.01)
    span = STEPS.max() - STEPS.min()
    assert high[STEPS >= STEPS.max() - TAIL * span].mean() > high[STEPS <= STEPS.min() + TAIL * span].mean()
    assert loss_rose(STEPS, high, TAIL, TOLERANCE)


def test_a_converged_or_still_falling_curve_has_not_risen():
    for y in (curve(floor=0.3, slow=0.0, noise=0.005), curve(floor=0.3, slow=0.2, noise=0.005)):
        assert not loss_rose(STEPS, y, TAIL, TOLERANCE)
    # a rise below 5 % of the fall to the lowest window: within the tolerance
    assert not loss_rose(STEPS, rises_after(low_at=3300, end=0.524, noise=0.0), TAIL, TOLERANCE)
    assert loss_rose(STEPS, rises_after(low_at=3300, end=0.6, noise=0.0), TAIL, TOLERANCE)
    assert not loss_rose(STEPS, np.full(len(STEPS), 0.9), TAIL, TOLERANCE)  # constant: no rise, whatever the rounding


def test_a_noisy_plateau_does_not_read_as_a_rise():
    """The lowest of ~160 overlapping windows is biased low by the choice: the noise clause keeps chance from
    flagging a flat curve after its fall."""
    flagged = [loss_rose(STEPS, curve(floor=0.3, slow=0.0, noise=0.02, seed=s), TAIL, TOLERANCE) for s in range(200)]
    assert sum(flagged) <= 10


def test_a_curve_too_short_for_the_rules_is_unknown_not_converged():
    empty = convergence([], [], TAIL, TOLERANCE)
    assert (empty.known, empty.flags, empty.state) == (False, (NO_CURVE,), "unknown")
    assert not convergence(STEPS[:2], [1.0, 0.5], TAIL, TOLERANCE).known
    assert not convergence(STEPS, np.full(len(STEPS), np.nan), TAIL, TOLERANCE).known  # no finite loss
    flat = convergence(STEPS, curve(floor=0.3, slow=0.0, noise=0.0), TAIL, TOLERANCE)
    assert (flat.known, flat.flags, flat.state) == (True, (), "converged")
    with pytest.raises(ValueError, match="convergence: tail must be in"):
        convergence(STEPS, curve(0.3, 0.0, 0.0), 0.0, TOLERANCE)


def test_flags_are_listed_per_word_with_their_seeds():
    seeds = [(0, (ROSE,)), (1, ()), (2, (NO_CURVE,)), (3, (ROSE,))]
    assert convergence_flags(seeds) == ["loss rose: seed 0, 3", "no curve: seed 2"]
    assert convergence_flags([(0, ())]) == []
    # a flag naming its model sorts by its word, in the report's order
    assert convergence_flags([(0, ("no curve (softmax)",)), (1, ("loss rose (relu)", "no curve (softmax)"))]) == [
        "loss rose (relu): seed 1", "no curve (softmax): seed 0, 1"]
