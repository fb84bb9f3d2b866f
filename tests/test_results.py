"""icl.analysis.results: job discovery, config flattening, loading and variant labels on synthetic jobs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from icl.analysis.results import find_jobs, flatten_config, jobs_table, load_results, variant_label


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
    with caplog.at_level(logging.WARNING, logger="icl.analysis.results"):
        df = load_results([tmp_path])
    assert {Path(p).name for p in df["run_dir"]} == {"ok"}
    assert set(df["status"]) == {"done"}
    assert "bad" in caplog.text and "busy" in caplog.text
    table = jobs_table([tmp_path])
    assert dict(zip(table["run_dir"].map(lambda p: Path(p).name), table["status"])) == {
        "ok": "done", "bad": "failed", "busy": "interrupted"}  # `running`, but no process holds its lock


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


# --- unreadable CSVs, older columns, paired differences ---------------------------------------------------------
from icl.analysis.results import paired_bootstrap, paired_differences, read_eval_csv  # noqa: E402


def test_unreadable_csvs_are_one_warning_each_and_skipped(tmp_path: Path, caplog) -> None:
    make_job(tmp_path / "ok")
    half = make_job(tmp_path / "half")
    text = (half / "eval.csv").read_text()
    (half / "eval.csv").write_text(text[: len(text) // 3] + "\nlinear,softmax,no")  # cut mid-row
    binary = make_job(tmp_path / "binary")
    (binary / "eval.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage\xff\xfe")
    empty = make_job(tmp_path / "empty")
    (empty / "eval.csv").write_text("")
    with caplog.at_level(logging.WARNING, logger="icl.analysis.results"):
        df = load_results([tmp_path])
    assert {Path(p).name for p in df["run_dir"]} == {"ok"}
    for name in ("half", "binary", "empty"):
        lines = [r.getMessage() for r in caplog.records if f"{name}/eval.csv" in r.getMessage()]
        assert len(lines) == 1 and "unreadable CSV" in lines[0] and "\n" not in lines[0], (name, lines)


def test_old_eval_csv_scale_column_becomes_param(tmp_path: Path) -> None:
    job = make_job(tmp_path / "old")  # written with the older `scale` column
    frame = pd.read_csv(job / "eval.csv")
    assert "scale" in frame and "param" not in frame
    frame = read_eval_csv(job / "eval.csv")
    assert "scale" not in frame and frame["param"].isna().all()  # standard rows have no parameter
    np.testing.assert_allclose(frame["error_per_dim"], frame["error_raw"] / 3)


def write_errors(job: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(job / "errors.npz", "wb") as f:
        np.savez_compressed(f, **arrays)


def test_paired_difference_to_the_reference_on_the_same_prompts(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(0)
    zero = rng.exponential(size=(400, 4)).astype(np.float32) + 0.5
    shared = rng.exponential(size=(400, 4)).astype(np.float32)  # prompt-level difficulty both models share
    ref, other, unrelated = (make_job(tmp_path / n) for n in ("ref", "other", "unrelated"))
    write_errors(ref, {"standard//transformer": shared, "standard//zero": zero})
    write_errors(other, {"standard//transformer": shared + 0.1 * zero, "standard//zero": zero,
                         "scale_x/2.0/transformer": shared, "scale_x/2.0/zero": zero})
    write_errors(unrelated, {"standard//transformer": shared, "standard//zero": zero + 1})  # other prompts
    for job, attn in ((other, "relu"), (unrelated, "linear")):
        frame = pd.read_csv(job / "eval.csv").assign(attn=attn)
        frame.to_csv(job / "eval.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="icl.analysis.results"):
        paired = paired_differences(load_results([tmp_path]), n_boot=200)
    assert set(paired["attn"]) == {"relu"} and set(paired["strategy"]) == {"standard"}
    np.testing.assert_allclose(paired["diff"], 0.1, rtol=1e-5)  # Σ 0.1·zero / Σ zero
    assert (paired["diff_low"] <= paired["diff"] + 1e-9).all() and (paired["diff"] <= paired["diff_high"] + 1e-9).all()
    assert (paired["diff_high"] - paired["diff_low"] < 1e-4).all()  # the shared part cancels: pairing is exact here
    assert "not the same prompts" in caplog.text and "unrelated" in caplog.text


def test_paired_bootstrap_ci_covers_a_noisy_difference() -> None:
    rng = np.random.default_rng(1)
    zero = np.ones((2000, 1))
    a, b = rng.normal(1.0, 1.0, (2000, 1)), rng.normal(1.0, 1.0, (2000, 1))
    diff, low, high, n = paired_bootstrap(a, b, zero, 500, 0.95, 0)
    assert low[0] < 0 < high[0] and n[0] == 2000  # no real difference: the CI straddles 0
    assert 0.1 < high[0] - low[0] < 0.2  # ≈ 2 · 1.96 · √2 / √2000 = 0.124


def test_failed_cells_are_read_and_counted_and_old_files_get_the_column(tmp_path: Path) -> None:
    """eval.csv rows of a failed cell (NaN numbers, the reason in `failure`) load as rows, not as a cut-short file;
    an older eval.csv without the column gets an empty one; jobs.csv counts status.json's failures."""
    from icl.analysis.results import read_eval_csv

    old = make_job(tmp_path / "old")
    assert read_eval_csv(old / "eval.csv")["failure"].isna().all()
    new = make_job(tmp_path / "new")
    frame = pd.read_csv(new / "eval.csv").drop(columns="scale").assign(strategy="standard", param=np.nan)
    failed = frame["predictor"] == "least_squares"
    frame.loc[failed, ["error", "ci_low", "ci_high", "error_raw"]] = np.nan
    frame["failure"] = np.where(failed, "LinAlgError: singular", None)
    columns = [c for c in frame.columns if c not in ("failure", "n_prompts")] + ["failure", "n_prompts"]
    frame[columns].to_csv(new / "eval.csv", index=False)
    (new / "status.json").write_text(json.dumps({"status": "done", "failures": [
        {"strategy": "standard", "param": None, "predictor": "least_squares", "error": "LinAlgError: singular"}]}))
    df = load_results([new])
    assert len(df) == len(frame) and set(df.loc[df.failure.notna(), "predictor"]) == {"least_squares"}
    table = jobs_table([tmp_path]).set_index(jobs_table([tmp_path])["run_dir"].map(lambda p: Path(p).name))
    assert table.loc["new", "failures"] == 1 and table.loc["old", "failures"] == 0
