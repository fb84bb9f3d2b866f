"""The study's "still improving" rule (icl.lab.study.inference.still_improving): the tail's fall measured against
the whole run's fall, and only when it stands out of the curve's noise."""

import numpy as np

from icl.lab.study.inference import still_improving

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
