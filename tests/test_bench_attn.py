"""The attention benchmark's protocol and outputs (tiny lengths; speed itself is not asserted here)."""

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from icl.attention import ATTENTION
from icl.bench.attention import run
from icl.bench.timing import loglog_slope, summarise
from icl.run.configs import CONFIG_DIR


def bench_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("bench_attn", overrides=[f"out_dir={tmp_path}", "lengths=[16,64]", "repeats=3",
                                                "warmup=1", *overrides])


def test_summary_drops_outliers_beyond_q3_plus_1_5_iqr():
    stats = summarise([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 100.0])
    assert stats["median"] == pytest.approx(1.4)
    assert stats["n"] == 9 and stats["n_kept"] == 8
    assert stats["trimmed_mean"] == pytest.approx(np.mean([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]))


def test_loglog_slope_recovers_the_power():
    T = np.array([128, 512, 2048, 8192])
    assert loglog_slope(T, 3e-6 * T) == pytest.approx(1.0)
    assert loglog_slope(T, 5e-9 * T**2) == pytest.approx(2.0)


def test_every_variant_is_timed_in_both_modes(tmp_path):
    df = run(bench_cfg(tmp_path))
    assert len(df) == len(ATTENTION) * 2 * 2
    assert set(df.variant) == set(ATTENTION) and set(df["mode"]) == {"forward", "forward_backward"}
    assert (df.n == 3).all() and (df.median_ms > 0).all() and (df.q1_ms <= df.q3_ms).all()
    assert pd.read_csv(tmp_path / "bench_attn.csv").shape == df.shape
    slopes = pd.read_csv(tmp_path / "slopes.csv")
    assert len(slopes) == len(ATTENTION) * 2 and slopes.slope_all.notna().all()
    table = (tmp_path / "bench_attn.md").read_text()
    assert all(f"| {name} |" in table for name in ATTENTION)
    assert (tmp_path / "bench_attn.png").stat().st_size > 0


def test_bad_settings_are_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="unknown attention variant.*'nope'"):
        run(bench_cfg(tmp_path, "variants=[nope]"))
    with pytest.raises(ValueError, match="unknown mode"):
        run(bench_cfg(tmp_path, "modes=[backward]"))
