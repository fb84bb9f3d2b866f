"""icl.analysis.weight_shift: the per-job table and its computed verdicts, from synthetic job folders."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from icl.analysis.algorithms import algorithm_files, load_algorithms
from icl.analysis.weight_shift import weight_shift_markdown, weight_shift_table

D = 2


def _job(root: Path, name: str, attn: str, gd_gap: float, explains: float, violations: float = 0.0) -> None:
    """A job whose prediction power is 0.5 and one fitted GD step leaves ``gd_gap`` of it; softmax layers 1-2."""
    rows = []
    base = {"task": "linear", "attn": attn, "quant": "none", "model": "attn_only", "seed": 0, "n_dims": D}
    for k in range(2 * D + 1):
        rows += [{**base, "k": k, "learner": "gd_1step_fit", "metric": "step_fit", "value": 0.8},
                 {**base, "k": k, "learner": "gd_1step_fit", "metric": "step_fit_gap", "value": gd_gap},
                 {**base, "k": k, "learner": "transformer", "metric": "pred_power", "value": 0.5},
                 {**base, "k": k, "learner": "gd_1step_opt", "metric": "pred_diff", "value": 0.03}]
        if attn == "softmax":
            for layer in (1, 2):
                for metric, value in [("linearisation_violations", violations), ("linearisation_explains", explains),
                                      ("score_spread", 0.1 * layer), ("linearisation_gap", 0.01),
                                      ("linearisation_bound", 0.02), ("li_log10_m", 3.0)]:
                    rows.append({**base, "k": k, "learner": "transformer", "metric": metric, "value": value,
                                 "layer": layer})
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(f"attn: {{name: {attn}}}\nmodel: {{layer_norm: false}}\n")
    pd.DataFrame(rows).to_csv(job / "algorithms.csv", index=False)
    ev = pd.DataFrame({"strategy": "standard", "predictor": "transformer", "k": range(2 * D + 1), "error": 0.2})
    ev.to_csv(job / "eval.csv", index=False)


def test_verdicts_are_computed_from_the_rows(tmp_path: Path) -> None:
    _job(tmp_path, "near", "softmax", gd_gap=0.01, explains=0.9)  # in the regime, 98% explained by one step
    _job(tmp_path, "far", "softmax", gd_gap=0.2, explains=0.9)  # in the regime, 60%: the prediction fails
    _job(tmp_path, "sharp", "softmax", gd_gap=0.2, explains=0.1)  # outside the regime: nothing predicted
    _job(tmp_path, "broken", "softmax", gd_gap=0.01, explains=0.9, violations=0.01)
    _job(tmp_path, "linear", "linear", gd_gap=0.01, explains=0.0)
    table = weight_shift_table(load_algorithms([tmp_path])).set_index(["run_dir", "k"])
    at = {Path(run).name: table.loc[(run, 2 * D)] for run in table.index.get_level_values(0)}
    assert at["near"].gd_share == pytest.approx(0.98) and at["near"].one_step_gd and at["near"].prediction_met
    assert at["far"].linear_regime and not at["far"].one_step_gd and at["far"].prediction_met is False
    assert not at["sharp"].linear_regime and pd.isna(at["sharp"].prediction_met)
    assert at["near"].bound_holds and not at["broken"].bound_holds
    assert pd.isna(at["linear"].bound_holds) and at["linear"].one_step_gd and at["linear"].error == 0.2
    assert not at["near"].layer_norm and at["near"].score_spread_max == pytest.approx(0.2)
    doc = weight_shift_markdown(weight_shift_table(load_algorithms([tmp_path])))
    assert doc.count("\n") == 2 + 2 * 5 - 1 and "| softmax | False | 4 | 0.2 |" in doc
    written = algorithm_files([tmp_path], tmp_path / "fig", ("png",))
    assert tmp_path / "fig" / "weight_shift.csv" in written
