"""``icl.lab.learned``: the study's guard on a sweep's job folders (the demo config over training seeds)."""

import math

import numpy as np
import pandas as pd
import pytest

from icl.lab.learned import failures, guard_of, job_row, main
from tests.test_tuning import cell_job


def job(folder, seed, error, lr=1e-3, least_squares=None, shifted=None):
    """A finished linear job scoring ``error`` at k = 10; optional least-squares rows and a scale_x row at k = 10."""
    path = cell_job(folder, "softmax", lr, True, 0, error, seed=seed)
    cfg = (path / "config.yaml").read_text()
    (path / "config.yaml").write_text(cfg.replace("task:\n", "task:\n  curriculum:\n    points:\n      end: 11\n", 1))
    frame = pd.read_csv(path / "eval.csv")
    extra = []
    if least_squares is not None:
        extra.append(frame.assign(predictor="least_squares", kind="baseline", error=least_squares))
    if shifted is not None:   # another strategy's row at the guard's k must not be read as the standard one
        extra.append(frame[frame.k == 10].assign(strategy="scale_x", param=0.5, error=shifted))
    pd.concat([frame, *extra]).to_csv(path / "eval.csv", index=False)
    return path


def test_each_job_is_judged_by_the_studys_guard_and_failures_are_counted_with_an_interval(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for seed, error in enumerate([0.04, 0.03, 0.92, 0.05]):   # seed 2 sits on the zero estimator's plateau
        job(sweep / f"seed{seed}", seed, error, least_squares=0.0, shifted=0.01)
    guard = guard_of()
    rows = [job_row(j, guard) for j in sorted(sweep.iterdir())]
    assert [r["learned"] for r in rows] == [True, True, False, True]
    assert {r["k"] for r in rows} == {10} and abs(rows[0]["error"] - 0.04) < 1e-9
    assert (rows[0]["baseline"], rows[0]["baseline_error"], rows[0]["bar"]) == ("least_squares", 0.0, guard.zero_fraction)
    assert len({r["config"] for r in rows}) == 1                        # only the seed differs: one config
    assert guard_of("paper").k["decision_tree"] == 100 and guard.k["decision_tree"] == 40  # the preset's k
    (row,) = failures(rows, 0.95)
    assert (row["failed"], row["seeds"], row["did not learn"]) == (1, 4, "seed 2")
    assert 0 < row["ci_low"] < 0.25 < 0.8 < row["ci_high"] < 1 and not math.isnan(row["ci_low"])
    out = tmp_path / "learned.md"
    assert main([f"sweeps=[{sweep}]", f"out={out}"]) == 0
    assert "| 2 | 10 | 0.920 | least_squares 0.000 | 0.500 | **no** |" in out.read_text()
    assert main([f"sweeps=[{tmp_path / 'none'}]"]) == 1
    assert "no job folders under" in capsys.readouterr().err


def test_a_non_finite_prompt_fails_the_model_and_other_configs_are_counted_apart(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in range(2):
        job(sweep / f"a{seed}", seed, 0.05)
        job(sweep / f"b{seed}", seed, 0.05, lr=3e-4)
    np.savez(sweep / "a1" / "errors.npz", **{"standard//transformer": np.array([[0.1, np.nan]])})
    guard = guard_of()
    rows = [job_row(j, guard) for j in sorted(sweep.iterdir())]
    assert [r["learned"] for r in rows] == [True, False, True, True]   # a1: eval.csv's mean skipped the NaN prompt
    fails = failures(rows, 0.95)
    assert sorted((f["seeds"], f["failed"]) for f in fails) == [(2, 0), (2, 1)]   # lr 1e-3 and 3e-4 apart
    job(tmp_path / "twice" / "x", 0, 0.05)
    job(tmp_path / "twice" / "y", 0, 0.06)
    with pytest.raises(ValueError, match="seed 0 in more than one job"):
        failures([job_row(j, guard) for j in sorted((tmp_path / "twice").iterdir())], 0.95)


def test_a_guard_k_the_job_never_scored_is_an_error_not_a_failed_model(tmp_path, capsys):
    path = job(tmp_path / "sweep" / "short", 0, 0.05)
    frame = pd.read_csv(path / "eval.csv")
    frame[frame.k <= 6].to_csv(path / "eval.csv", index=False)
    assert main([f"sweeps=[{tmp_path / 'sweep'}]"]) == 1
    err = capsys.readouterr().err
    assert "no transformer error at k = 10" in err and "scored: k = 0…6" in err and "\n" == err[-1] and err.count("\n") == 1
