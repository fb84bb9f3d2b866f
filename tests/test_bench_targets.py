"""Speed targets: verdicts computed from a benchmark's rows, one-line errors for bad targets."""

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from icl.bench.targets import check, markdown, verdicts
from icl.run.configs import CONFIG_DIR

TARGETS = {"job_over_bare": 1.10, "train": {"tiny": {"ratio": 1.5, "frac_of_peak": 0.45},
                                            "standard": {"ratio": 1.22, "frac_of_peak": 0.70}}}


def rows(job_over_bare=(1.05, 1.02, 1.12), tiny=(1.55, 1.51, 1.60, 0.44), standard=(1.20, 1.10, 1.30, 0.71)):
    def train(model, r):
        return {"part": "train", "impl": "ours", "model": model, "median_ms": 10.0, "ratio": r[0],
                "ratio_ci_low": r[1], "ratio_ci_high": r[2], "frac_of_peak": r[3]}
    overhead = {"part": "overhead", "impl": "job", "model": "tiny", "median_ms": 20.0, "ratio": job_over_bare[0],
                "ratio_ci_low": job_over_bare[1], "ratio_ci_high": job_over_bare[2]}
    return pd.DataFrame([overhead, train("tiny", tiny), train("standard", standard)])


def test_verdicts_are_computed_from_the_rows():
    found = {r["what"]: (r["met"], r["ci_clear"]) for r in verdicts(rows(), TARGETS)}
    assert found == {"smoke job / bare loop": (True, False),  # 1.05 <= 1.10, but the CI reaches 1.12
                     "tiny train step, reference / ours": (True, True),
                     "tiny train step, fraction of the matmul peak": (False, None),
                     "standard train step, reference / ours": (False, False),
                     "standard train step, fraction of the matmul peak": (True, None)}
    text = markdown(verdicts(rows(), TARGETS))
    assert "| tiny train step, fraction of the matmul peak | 44.0% | ≥ 45% | no | — |" in text
    assert "| smoke job / bare loop | 1.05 [1.02, 1.12] | ≤ 1.1 | yes | no |" in text


def test_only_measured_targets_get_a_verdict():
    only_tiny = rows().query("model == 'tiny'")
    assert [r["what"] for r in verdicts(only_tiny, TARGETS)] == [
        "smoke job / bare loop", "tiny train step, reference / ours", "tiny train step, fraction of the matmul peak"]
    assert markdown(verdicts(rows()[:0], TARGETS)) == ""


@pytest.mark.parametrize("targets, message", [
    ({"speed": 2}, r"unknown targets \['speed'\]"),
    ({"train": {"tiny": {"peak": 0.4}}}, r"unknown targets.train.tiny key\(s\) \['peak'\]"),
    ({"job_over_bare": -1}, "targets.job_over_bare must be a positive number or null, got -1"),
    ({"train": {"tiny": {"ratio": "fast"}}}, "targets.train.tiny.ratio must be a positive number"),
    ({"train": {"tiny": 1.5}}, r"targets.train.tiny must be a mapping \{ratio: X, frac_of_peak: X\}, got 1.5")])
def test_bad_targets_are_one_line(targets, message):
    with pytest.raises(ValueError, match=message):
        check(targets)


def test_overhead_preset_sets_the_issue_targets():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        assert compose("bench").targets is None
        preset = compose("bench", overrides=["bench=overhead"]).targets
    check(OmegaConf.to_container(preset))
    assert preset.job_over_bare == 1.10 and preset.train.tiny.ratio == 1.5 and preset.train.standard.frac_of_peak == 0.7
