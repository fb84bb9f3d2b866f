"""icl.results: job discovery, config flattening, loading and variant labels on synthetic jobs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from icl.results import find_jobs, flatten_config, jobs_table, load_results, variant_label


def make_job(folder: Path, task: str = "linear", n_dims: int = 3, model: str = "tiny", seed: int = 0,
             lr: float = 1e-3, status: str | None = "done", experiment: str | None = None) -> Path:
    """A job folder following the contract: .hydra/config.yaml, eval.csv, status.json."""
    cfg = {"task": {"name": task, "n_dims": n_dims}, "model": {"name": model}, "attn": {"name": "softmax"},
           "quant": {"name": "none"}, "seed": seed, "experiment": experiment,
           "module": {"lr": lr}, "trainer": {"max_steps": 10, "devices": [0]},
           "paths": {"output_dir": str(folder)}}
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), folder / ".hydra" / "config.yaml")
    ks = np.arange(1, 2 * n_dims + 2)
    rows = []
    for predictor, kind in [("transformer", "transformer"), ("zero", "baseline"), ("least_squares", "baseline")]:
        err = np.ones(len(ks)) if predictor == "zero" else np.exp(-ks / n_dims) * (1 + 0.1 * seed)
        if predictor == "least_squares":
            err[:2] = np.nan
        rows.append(pd.DataFrame({
            "task": task, "attn": "softmax", "quant": "none", "model": model, "seed": seed,
            "strategy": "standard", "scale": 1.0, "k": ks, "predictor": predictor, "kind": kind,
            "metric": "squared_error", "error": err, "ci_low": err * 0.9, "ci_high": err * 1.1,
            "error_raw": err * n_dims, "n_dims": n_dims, "n_prompts": 64}))
    pd.concat(rows).to_csv(folder / "eval.csv", index=False)
    if status is not None:
        (folder / "status.json").write_text(json.dumps({"status": status, "error": None}))
    return folder


def test_find_jobs_uneven_depths_and_missing_roots(tmp_path: Path) -> None:
    a = make_job(tmp_path / "outputs" / "2026-11-23" / "10-00-00")
    b = make_job(tmp_path / "multirun" / "2026-11-23" / "11-00-00" / "0")
    c = make_job(tmp_path / "multirun" / "x" / "y" / "z" / "deep" / "3")
    jobs = find_jobs([tmp_path / "outputs", tmp_path / "multirun", tmp_path / "nope"])
    assert jobs == sorted(p.resolve() for p in (a, b, c))


def test_task_comes_from_config_not_folder_name(tmp_path: Path) -> None:
    make_job(tmp_path / "multirun" / "task=sparse_linear" / "0", task="linear")
    df = load_results([tmp_path])
    assert set(df["task"]) == {"linear"}
    assert set(df["cfg.task.name"]) == {"linear"}


def test_failed_and_running_jobs_skipped_with_warning(tmp_path: Path, caplog) -> None:
    make_job(tmp_path / "ok", status=None)  # older job without status.json counts as done
    make_job(tmp_path / "bad", status="failed")
    make_job(tmp_path / "busy", status="running")
    with caplog.at_level(logging.WARNING, logger="icl.results"):
        df = load_results([tmp_path])
    assert {Path(p).name for p in df["run_dir"]} == {"ok"}
    assert set(df["status"]) == {"done"}
    assert "bad" in caplog.text and "busy" in caplog.text
    table = jobs_table([tmp_path])
    assert dict(zip(table["run_dir"].map(lambda p: Path(p).name), table["status"])) == {
        "ok": "done", "bad": "failed", "busy": "running"}


def test_missing_csv_skipped_and_empty_result_has_columns(tmp_path: Path) -> None:
    job = make_job(tmp_path / "j")
    (job / "eval.csv").unlink()
    df = load_results([tmp_path])
    assert df.empty and {"task", "error", "k", "run_dir", "status"} <= set(df.columns)
    assert load_results([tmp_path / "nothing"]).empty


def test_flatten_config() -> None:
    flat = flatten_config(OmegaConf.create({"task": {"n_dims": 5}, "trainer": {"max_steps": 7, "devices": [0, 1]},
                                            "lr": "${module.lr}", "module": {"lr": 0.1}, "experiment": None}))
    assert flat == {"task.n_dims": 5, "trainer.max_steps": 7, "trainer.devices": "[0, 1]", "lr": 0.1,
                    "module.lr": 0.1, "experiment": None}


def test_cfg_columns_added(tmp_path: Path) -> None:
    make_job(tmp_path / "j")
    df = load_results([tmp_path])
    assert (df["cfg.trainer.max_steps"] == 10).all() and (df["cfg.task.n_dims"] == 3).all()


def test_variant_label_lr_not_seed(tmp_path: Path) -> None:
    make_job(tmp_path / "a", seed=0, lr=1e-3)
    make_job(tmp_path / "b", seed=1, lr=1e-3)
    make_job(tmp_path / "c", seed=0, lr=1e-4)
    make_job(tmp_path / "d", model="small", seed=0)
    df = load_results([tmp_path])
    df["variant"] = variant_label(df)
    tf = df[df["kind"] == "transformer"]
    by_run = tf.groupby(tf["run_dir"].map(lambda p: Path(p).name))["variant"].first()
    assert by_run["a"] == by_run["b"] == "tiny · softmax · none · module.lr=0.001"
    assert by_run["c"] == "tiny · softmax · none · module.lr=0.0001"
    assert by_run["d"] == "small · softmax · none"
    assert set(df.loc[df["kind"] == "baseline", "variant"]) == {"zero", "least_squares"}


def test_variant_label_experiment_differs(tmp_path: Path) -> None:
    make_job(tmp_path / "a", experiment=None)
    make_job(tmp_path / "b", experiment="long")
    df = load_results([tmp_path])
    labels = set(variant_label(df[df["kind"] == "transformer"]))
    assert labels == {"tiny · softmax · none · experiment=None", "tiny · softmax · none · experiment=long"}
