""""Inside the margin" is one rule: a job's prompt CI (icl.bench.quant_sweep) and a seed-level interval
(icl.lab.study.inference.verdict) are tested by the same function, and an interval that reaches the margin is out."""

import numpy as np
import pandas as pd

from icl.bench.quant_sweep import rescored, seed_level
from icl.lab.study.inference import CONFIRMED, UNRESOLVED, below_margin, verdict

MARGIN = 0.25  # binary-exact, so "equal to the margin" is exact


def sweep_rows(diff_high: dict[int, float]) -> pd.DataFrame:
    """One job per seed (3 seeds, identical values): its prompt CI's upper end per width."""
    return pd.DataFrame([{"task": "linear", "attn": "softmax", "seed": s, "run_dir": f"r{s}", "kind": "weights",
                          "bits": b, "margin": MARGIN, "float_error": 0.1, "diff": high, "diff_low": high - 0.5,
                          "diff_high": high, "inside_margin": None, "block": None, "branch": "", "seconds": 0.1,
                          "source": "", "recipe": "", "learned": True}
                         for s in range(3) for b, high in diff_high.items()])


def test_at_the_margin_is_outside_just_below_is_inside():
    assert not below_margin(MARGIN, MARGIN) and below_margin(np.nextafter(MARGIN, 0), MARGIN)
    assert list(below_margin(np.array([MARGIN, 0.125, 0.5]), MARGIN)) == [False, True, False]
    assert verdict("noninferior", -0.5, MARGIN, MARGIN, 3, 3)[0] == UNRESOLVED  # touches the margin: not excluded
    assert verdict("noninferior", -0.5, np.nextafter(MARGIN, 0), MARGIN, 3, 3)[0] == CONFIRMED


def test_job_level_and_seed_level_agree_at_the_boundary(tmp_path):
    rows = sweep_rows({8: 0.125, 4: MARGIN})  # 4 bits: every seed's CI ends exactly at the margin
    rows.to_csv(tmp_path / "quant_sweep.csv", index=False)
    jobs = rescored(tmp_path / "quant_sweep.csv", MARGIN)
    assert jobs.groupby("bits").inside_margin.all().to_dict() == {4: False, 8: True}
    # equal seed values: the t-interval is [mean, mean] exactly, its upper end the margin at 4 bits
    seeds = seed_level(rows).set_index("bits")
    assert seeds.loc[4, "diff_high"] == MARGIN and seeds.inside_margin.to_dict() == {4: False, 8: True}
