"""icl.analysis.pareto: the error-vs-cost chart from synthetic job folders and cost rows, and its Pareto front."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from icl.analysis.figures import make_figures
from icl.analysis.pareto import COST_FILE, error_vs_cost_files, load_costs, pareto_front
from tests.test_figures import make_job


def test_pareto_front_keeps_exactly_the_undominated_points():
    cost = [1.0, 2.0, 3.0, 2.0, 1.0, 4.0]
    error = [0.5, 0.3, 0.1, 0.4, 0.6, 0.1]  # (2, .4) is dominated by (2, .3); (1, .6) by (1, .5); (4, .1) by (3, .1)
    assert pareto_front(cost, error).tolist() == [True, True, True, False, False, False]
    assert pareto_front([1.0, 1.0], [0.2, 0.2]).tolist() == [True, True]  # equal points do not dominate each other


def _costs(folder: Path, rows: list[tuple[str, str, float, int]], note: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"model": "tiny", "attn": a, "quant": q, "n_dims": 3, "k": 6, "latency_ms": ms,
                   "latency_low_ms": 0.9 * ms, "latency_high_ms": 1.1 * ms, "state_floats": state, "note": note}
                  for a, q, ms, state in rows]).to_csv(folder / COST_FILE, index=False)


def test_error_vs_cost_from_job_folders(tmp_path, caplog):
    root = tmp_path / "outputs"
    for seed in (0, 1):  # make_job's transformer error at k = 2d = 6: exp(-2) + 0.02·seed (+ 0.1 off softmax)
        make_job(root / f"softmax{seed}", "linear", 3, seed=seed)
    make_job(root / "relu", "linear", 3, attn="relu")
    make_job(root / "int8", "linear", 3, quant="int8_weight")
    make_job(root / "nocost", "linear", 3, attn="sigmoid")
    _costs(root / "bench_old", [("softmax", "none", 9.0, 999)])
    _costs(root / "bench", [("softmax", "none", 2.0, 300), ("relu", "none", 1.0, 300),
                            ("softmax", "int8_weight", 3.0, 300)])
    _costs(root / "bench_failed", [("sigmoid", "none", math.nan, 300)], note="quant mode cannot run here")
    (root / "bench" / COST_FILE).touch()  # the newer file wins a repeated (model, attn, quant, n_dims)
    assert len(load_costs([root])) == 3
    with caplog.at_level(logging.WARNING):
        written = error_vs_cost_files([root], tmp_path / "figures", ("png",))
    assert {p.name for p in written} == {"error_vs_cost.csv", "error_vs_cost.png"}
    assert "no cost row for model=tiny attn=sigmoid" in caplog.text
    points = pd.read_csv(tmp_path / "figures" / "error_vs_cost.csv").set_index(["attn", "quant"])
    assert len(points) == 3
    soft = points.loc[("softmax", "none")]
    assert soft.jobs == 2 and soft.latency_ms == 2.0
    assert np.isclose(soft.error, np.exp(-2) + 0.01)
    assert np.isclose(soft.error_high - soft.error, 1.96 * np.std([0.0, 0.02], ddof=1) / np.sqrt(2))
    relu = points.loc[("relu", "none")]
    assert np.isclose(relu.error, np.exp(-2) + 0.1) and (relu.error_low, relu.error_high) == (
        0.9 * relu.error, 1.1 * relu.error)  # one job: its own bootstrap interval
    # latency: relu cheapest, softmax in between, int8 (seed 0 only) the most accurate: none dominates another
    assert points.front_latency_ms.all()
    # state: all equal, so only the lowest error is on the front
    assert points.front_state_floats.to_dict() == {("softmax", "none"): False, ("relu", "none"): False,
                                                   ("softmax", "int8_weight"): True}


def test_make_figures_draws_the_chart_when_cost_rows_exist(tmp_path):
    make_job(tmp_path / "outputs" / "a", "linear", 3)
    assert not list(Path(tmp_path / "fig0").glob("error_vs_cost*"))
    _costs(tmp_path / "outputs" / "bench", [("softmax", "none", 2.0, 300)])
    make_figures([tmp_path / "outputs"], tmp_path / "fig", formats=("png",))
    assert (tmp_path / "fig" / "error_vs_cost.png").stat().st_size > 0
