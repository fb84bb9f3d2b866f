"""``icl.lab.learned``: the study's guard on a sweep's job folders (the demo config over training seeds)."""

import math

from icl.lab.learned import failures, guard_of, job_row, main
from icl.run.configs import CONFIG_DIR
from tests.test_tuning import cell_job


def test_each_job_is_judged_by_the_studys_guard_and_failures_are_counted_with_an_interval(tmp_path, capsys):
    for seed, error in enumerate([0.04, 0.03, 0.92, 0.05]):   # seed 2 sits on the zero estimator's plateau
        cell_job(tmp_path / "sweep" / f"seed{seed}", "softmax", 1e-3, True, 0, error, seed=seed)
    guard, block = guard_of(CONFIG_DIR / "study.yaml")
    rows = [job_row(j, guard, block) for j in sorted((tmp_path / "sweep").iterdir())]
    assert [r["learned"] for r in rows] == [True, True, False, True]
    assert {r["k"] for r in rows} == {10} and abs(rows[0]["error"] - 0.04) < 1e-9 and rows[0]["bar"] == guard.zero_fraction
    (row,) = failures(rows, 0.95)
    assert (row["failed"], row["seeds"], row["did not learn"]) == (1, 4, "seed 2")
    assert 0 < row["ci_low"] < 0.25 < 0.8 < row["ci_high"] < 1 and not math.isnan(row["ci_low"])
    out = tmp_path / "learned.md"
    assert main([f"sweeps=[{tmp_path / 'sweep'}]", f"out={out}"]) == 0
    assert "| seed2 | linear | softmax | none | 2 | 10 | 0.920 |" in out.read_text() and "**no**" in out.read_text()
    assert main([f"sweeps=[{tmp_path / 'none'}]"]) == 1
    assert "no job folders under" in capsys.readouterr().err
