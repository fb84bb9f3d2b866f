"""icl.analysis.extrapolation: the extended-context table per positional encoding from synthetic job folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from icl.analysis.extrapolation import extended_context, extended_context_files, summary
from icl.analysis.results import load_results

N_TRAIN, N_POSITIONS, PROMPTS = 4, 10, 16  # trained on 4 points (k <= 3), scored to k = 9


def make_job(folder: Path, attn: str, pos: str | None, error_at, seed: int = 0) -> Path:
    """A finished job with standard rows up to the training length and long_context rows to n_positions."""
    cfg = {"task": {"name": "linear", "n_dims": 2, "curriculum": {"points": {"end": N_TRAIN}}},
           "model": {"name": "tiny", "pos": pos, "n_positions": N_POSITIONS}, "attn": {"name": attn},
           "quant": {"name": "none"}, "seed": seed}
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), folder / ".hydra" / "config.yaml")
    frames, arrays = [], {}
    zero = np.linspace(0.5, 1.5, PROMPTS * N_POSITIONS).reshape(PROMPTS, N_POSITIONS)  # the same prompts everywhere
    for strategy, n in (("standard", N_TRAIN), ("long_context", N_POSITIONS)):
        ks = np.arange(n)
        err = np.array([error_at(k) for k in ks])
        frames.append(pd.DataFrame({"task": "linear", "attn": attn, "quant": "none", "model": "tiny", "seed": seed,
                                    "strategy": strategy, "param": np.nan, "k": ks, "predictor": "transformer",
                                    "kind": "transformer", "metric": "squared_error", "error": err,
                                    "ci_low": 0.9 * err, "ci_high": 1.1 * err, "n_dims": 2, "n_prompts": PROMPTS}))
        arrays[f"{strategy}//zero"] = zero[:, :n]
        arrays[f"{strategy}//transformer"] = zero[:, :n] * err
    pd.concat(frames).to_csv(folder / "eval.csv", index=False)
    with open(folder / "errors.npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    (folder / "status.json").write_text(json.dumps({"status": "done", "error": None}))
    return folder


def _jobs(root: Path) -> Path:
    make_job(root / "learned", "softmax", "learned", lambda k: 0.2 if k < N_TRAIN else 0.2 + 0.1 * (k - 3))
    make_job(root / "rope", "softmax", "rope", lambda k: 0.2)
    make_job(root / "mamba", "mamba", None, lambda k: 0.1)
    return root


def test_extended_context_rows_pairs_and_verdicts(tmp_path):
    table = extended_context(load_results([_jobs(tmp_path / "outputs")]), n_boot=200).set_index(["attn", "pos"])
    assert len(table) == 3 and set(table.k_trained) == {3} and set(table.k_mid) == {6} and set(table.k_long) == {9}
    learned, rope, mamba = table.loc[("softmax", "learned")], table.loc[("softmax", "rope")], table.loc[("mamba",
                                                                                                         "default")]
    assert np.isclose(learned.error_trained, 0.2) and np.isclose(learned.error_long, 0.8)
    assert np.isclose(learned.error_mid, 0.5)
    assert not learned.extrapolates and rope.extrapolates and mamba.extrapolates
    assert np.isclose(rope.diff_vs_learned, 0.2 - 0.8) and rope.diff_high < 0  # paired on the same prompts
    assert np.isnan(learned.diff_vs_learned) and np.isnan(mamba.diff_vs_learned)  # the reference; no learned mamba


def test_files_only_where_jobs_were_scored_past_their_training_length(tmp_path):
    assert extended_context_files([tmp_path / "nothing"], tmp_path / "fig") == []
    written = extended_context_files([_jobs(tmp_path / "outputs")], tmp_path / "fig", n_boot=200)
    assert [p.name for p in written] == ["extended_context.csv", "extended_context_summary.csv", "extended_context.md"]
    text = written[2].read_text()
    assert "| softmax | rope | none | 0 | 0.200 [0.180, 0.220] |" in text and "k = 9" in text
    assert "| softmax | rope | none | 1 | 0.200 | k = 9: 0.200 | 1 of 1 | 1 / 0 of 1 | extrapolates |" in text
    assert "| softmax | learned | none | 1 | 0.200 | k = 9: 0.800 | 0 of 1 | — | does not extrapolate |" in text
    assert "| mamba | default | none | 1 | 0.100 | k = 9: 0.100 | 1 of 1 | — | extrapolates |" in text  # no twin
    assert set(pd.read_csv(written[0]).run_dir) == {"outputs/learned", "outputs/rope", "outputs/mamba"}


def test_the_summary_counts_seeds(tmp_path):
    """Two seeds per mixer × pos: rope extrapolates on one and degrades on the other (mixed), learned on neither;
    the paired difference to learned is counted per seed (better on seed 0, worse on seed 1)."""
    root = tmp_path / "outputs"
    for seed in (0, 1):
        make_job(root / f"learned{seed}", "softmax", "learned", lambda k: 0.2 if k < N_TRAIN else 0.2 + 0.1 * (k - 3),
                 seed=seed)
    make_job(root / "rope0", "softmax", "rope", lambda k: 0.2, seed=0)
    make_job(root / "rope1", "softmax", "rope", lambda k: 0.2 if k < N_TRAIN else 0.3 + 0.2 * (k - 3), seed=1)
    pooled = summary(extended_context(load_results([root]), n_boot=200)).set_index("pos")
    assert pooled.loc["learned", "verdict"] == "does not extrapolate" and pooled.loc["learned", "seeds"] == 2
    rope = pooled.loc["rope"]
    assert rope.verdict == "mixed (1 of 2 seeds)" and (rope.better_than_learned, rope.worse_than_learned) == (1, 1)
    assert np.isclose(rope.error_long, (0.2 + 0.3 + 0.2 * 6) / 2) and rope.paired == 2
    assert pd.isna(pooled.loc["learned", "better_than_learned"]) and pooled.loc["learned", "paired"] == 0
    # the same seed found twice (overlapping inputs) counts once
    twice = extended_context(load_results([root]), n_boot=200)
    twice = pd.concat([twice, twice[twice.pos == "rope"].assign(run_dir="elsewhere")], ignore_index=True)
    assert summary(twice).set_index("pos").loc["rope", "seeds"] == 2
