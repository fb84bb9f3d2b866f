"""Aggregation at sweep scale (icl.analysis.results, icl.stats): batched paired bootstrap, fast configs, cfg columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from icl import stats
from icl.analysis import results
from icl.bench.aggregate import reference_paired_bootstrap


def test_batched_paired_bootstrap_is_the_per_call_one_exactly():
    """Cached counts and stacked columns change nothing: same point, CI and counts, NaNs included."""
    rng = np.random.default_rng(0)
    triples = []
    for P in (300, 300, 120):
        err, ref = rng.exponential(size=(P, 7)), rng.exponential(size=(P, 7))
        err[rng.random(err.shape) < 0.05] = np.nan
        triples.append((err.astype(np.float32), ref.astype(np.float32), rng.exponential(size=(P, 7)) + 0.5))
    many = stats.paired_bootstrap_many(triples, 400, 0.9, 3)
    for triple, got in zip(triples, many):
        for a, b in zip(got, reference_paired_bootstrap(*triple, 400, 0.9, 3)):
            np.testing.assert_array_equal(a, b)
    assert not stats.resample_counts(300, 400, 3).flags.writeable


def _job(folder: Path, seed: int, lr: float) -> Path:
    cfg = {"task": {"name": "linear", "n_dims": 3}, "model": {"name": "tiny"}, "attn": {"name": "softmax"},
           "quant": {"name": "none"}, "seed": seed, "optim": {"lr": lr, "betas": [0.9, 0.99]}, "eps": 1e-8,
           "trainer": {"max_steps": 10}}
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(cfg), folder / "config.yaml", resolve=True)
    pd.DataFrame({"task": "linear", "k": [0, 1], "predictor": "transformer", "kind": "transformer",
                  "error": [1.0, 0.5], "n_dims": 3, "n_prompts": 8}).to_csv(folder / "eval.csv", index=False)
    return folder


def test_fast_config_reading_is_omegaconfs(tmp_path: Path):
    job = _job(tmp_path / "a", 0, 1e-3)
    assert results.flat_config(job) == results.flatten_config(results.load_config(job))
    assert isinstance(results.flat_config(job)["optim.lr"], float)  # 1e-3 is a float under OmegaConf's rules


def test_varying_cfg_columns_are_the_ones_that_differ(tmp_path: Path):
    for i, (seed, lr) in enumerate([(0, 1e-3), (1, 1e-3), (0, 1e-2)]):
        _job(tmp_path / str(i), seed, lr)
    full = results.load_results([tmp_path])
    slim = results.load_results([tmp_path], cfg_columns="varying")
    assert {c for c in slim if c.startswith("cfg.")} == {"cfg.seed", "cfg.optim.lr"}
    pd.testing.assert_frame_equal(slim, full[slim.columns])
    assert results.variant_label(slim).equals(results.variant_label(full))
    with pytest.raises(ValueError, match="cfg_columns"):
        results.load_results([tmp_path], cfg_columns="some")


def test_percentile_interval_is_nanquantile_per_column_and_takes_one_column():
    from icl.stats import percentile_interval

    boots = np.random.default_rng(0).normal(size=(200, 4))
    boots[:5, 1] = np.nan
    boots[:, 3] = np.nan
    low, high = percentile_interval(boots, 0.9)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        ref = np.nanquantile(boots, [0.05, 0.95], axis=0)
    np.testing.assert_allclose(np.stack([low, high]), ref, rtol=1e-14)  # NaN where a column has no replicate
    np.testing.assert_allclose(percentile_interval(boots[:, 0], 0.9), ref[:, 0], rtol=1e-14)
