"""icl.evaluation: strategies × parameters in eval.csv, errors.npz consistent with it, the baseline cache."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from icl import baselines, contract, prompts
from icl.evaluation import COLUMNS, EvalConfig, failures, predict_model, predict_queries
from icl.run.evaluate import evaluate_job, holds_another_job, replacing_quant
from icl.run.job import JobDir
from icl.run.spec import JobSpec
from icl.tasks import build_task
from icl.transformer import ICLTransformer, TransformerConfig
from tests.helpers import TINY, compose_train

# eval=quick (TINY) has standard only; Hydra adds/removes keys with +/~
STRATEGIES = ["+eval.strategies.scale_x=[0.5,2]", "+eval.strategies.orthogonal_query=[null]",
              "+eval.strategies.long_context=[null]"]


def tiny_model(n_positions: int = 12) -> ICLTransformer:
    torch.manual_seed(0)
    return ICLTransformer(TransformerConfig(n_dims=3, n_positions=n_positions, n_embd=16, n_layer=1))


@pytest.fixture
def job(tmp_path: Path):
    cfg = compose_train([*TINY, *STRATEGIES, "model.n_positions=12", f"eval.cache={tmp_path / 'cache'}"], tmp_path)
    df = evaluate_job(cfg, tiny_model(), JobDir(tmp_path))
    return cfg, df, tmp_path


def test_eval_csv_rows_per_strategy_param_and_k(job):
    _, df, out = job
    assert list(df.columns) == COLUMNS and list(pd.read_csv(out / "eval.csv").columns) == COLUMNS
    ks = df.groupby(["strategy", "param"], dropna=False)["k"].max().to_dict()
    got = {(s, None if pd.isna(p) else p): k for (s, p), k in ks.items()}
    assert got == {("standard", None): 5, ("scale_x", 0.5): 5, ("scale_x", 2.0): 5,
                   ("orthogonal_query", None): 2,  # k < d = 3 only
                   ("long_context", None): 11}  # up to model.n_positions = 12 points
    assert set(df.predictor) == {"transformer", "zero", "least_squares"}
    np.testing.assert_allclose(df.error_per_dim, df.error_raw / 3)
    assert np.allclose(df.loc[df.predictor == "zero", "error"], 1.0)
    ls = df[(df.predictor == "least_squares") & (df.k >= 3) & df.strategy.isin(["standard", "scale_x"])]
    assert (ls.error < 1e-6).all()


def test_errors_npz_reproduces_the_transformer_rows(job):
    _, df, out = job
    with np.load(out / contract.ERRORS) as data:
        arrays = {k: data[k] for k in data.files}
    assert set(arrays) == {f"{s}/{p}/{w}" for s, p in [("standard", ""), ("scale_x", "0.5"), ("scale_x", "2.0"),
                                                         ("orthogonal_query", ""), ("long_context", "")]
                           for w in ("transformer", "zero")}
    for (strategy, param), rows in df[df.predictor == "transformer"].groupby(["strategy", "param"], dropna=False):
        key = f"{strategy}/{'' if pd.isna(param) else repr(float(param))}"
        err, zero = arrays[f"{key}/transformer"].astype(np.float64), arrays[f"{key}/zero"].astype(np.float64)
        assert err.shape == (64, rows.k.max() + 1)
        np.testing.assert_allclose(err.sum(0) / zero.sum(0), rows.sort_values("k").error, rtol=1e-4)


def test_query_predictions_equal_one_pass_when_the_query_is_the_input():
    """predict_queries feeds (prefix, q_i) per position; with q_i = x_i it must match the causal full pass."""
    model = tiny_model()
    p = prompts.make_prompts("standard", build_task("linear", 3), 16, 8, seed=0)
    full = predict_model(model, p.xs, p.ys, 8)
    per_position = predict_queries(model, prompts.Prompts(p.xs, p.ys, p.targets, p.xs.clone()), 8)
    torch.testing.assert_close(per_position, full, rtol=1e-4, atol=1e-5)


def test_baselines_computed_once_and_reused(tmp_path, monkeypatch):
    calls = []
    real = baselines.predict
    monkeypatch.setattr(baselines, "predict", lambda name, *a, **kw: calls.append(name) or real(name, *a, **kw))
    cfg = compose_train([*TINY, *STRATEGIES, "model.n_positions=12", f"eval.cache={tmp_path / 'cache'}"], tmp_path)
    for sub in "abcd":
        (tmp_path / sub).mkdir()
    first = evaluate_job(cfg, tiny_model(), JobDir(tmp_path / "a"))
    n_first = len(calls)
    assert n_first == 2 * 5  # two baselines × five (strategy, param)
    second = evaluate_job(cfg, tiny_model(), JobDir(tmp_path / "b"))
    assert len(calls) == n_first  # every baseline curve came from the cache
    pd.testing.assert_frame_equal(first, second)
    cfg.eval.seed = 1  # other prompts: recomputed
    evaluate_job(cfg, tiny_model(), JobDir(tmp_path / "c"))
    assert len(calls) == 2 * n_first
    cfg.eval.cache = None  # off: nothing read or written
    before = sorted((tmp_path / "cache").iterdir())
    evaluate_job(cfg, tiny_model(), JobDir(tmp_path / "d"))
    assert len(calls) == 3 * n_first and sorted((tmp_path / "cache").iterdir()) == before


def test_classification_skips_regression_only_strategies(tmp_path, caplog):
    cfg = compose_train([*TINY, "task=linear_classification", "task.n_dims=3", "eval.cache=null",
                         "+eval.strategies.scale_y=[2]", "+eval.strategies.noisy_y=[0.5]"], tmp_path)
    with caplog.at_level(logging.INFO, logger="icl.evaluation"):
        df = evaluate_job(cfg, None, JobDir(tmp_path))
    assert set(df.strategy) == {"standard"} and set(df.metric) == {"error_rate"}
    assert "skipping strategy scale_y" in caplog.text and "skipping strategy noisy_y" in caplog.text


def test_unknown_strategy_fails_before_anything_runs(tmp_path):
    cfg = compose_train([*TINY, "+eval.strategies.scale_q=[1]"], tmp_path)
    with pytest.raises(ValueError, match="unknown eval strategy 'scale_q'"):
        JobSpec.from_config(cfg)
    with pytest.raises(ValueError, match="unknown eval option"):
        EvalConfig.from_config({"strategy": {}})


def test_cached_slow_baselines_belong_to_the_prompts_drawn(tmp_path):
    """Slow baselines run on the first prompts only, but those depend on how many were drawn (the functions are
    sampled after all inputs): another eval.n_prompts must not reuse their predictions."""
    overrides = [*TINY, "eval.baselines=[zero,tree_depth4]", "eval.slow_baseline_prompts=8"]
    cfg = compose_train([*overrides, "eval.n_prompts=64", f"eval.cache={tmp_path / 'cache'}"], tmp_path)
    evaluate_job(cfg, None, JobDir(tmp_path))
    cfg.eval.n_prompts = 32
    cached = evaluate_job(cfg, None, JobDir(tmp_path))
    cfg.eval.cache = None
    pd.testing.assert_frame_equal(cached, evaluate_job(cfg, None, JobDir(tmp_path)))


def test_non_positive_scale_fails_before_training(tmp_path):
    from icl.run.train import build

    cfg = compose_train([*TINY, "+eval.strategies.scale_x=[0.5,0]"], tmp_path)
    with pytest.raises(ValueError, match="scale_x values must be > 0"):
        build(cfg)


def test_baseline_rows_carry_the_paired_difference_to_the_transformer(job):
    _, df, _ = job
    std = df[df.strategy == "standard"].set_index(["predictor", "k"])
    assert std.loc["transformer", ["diff_transformer", "diff_low", "diff_high"]].isna().all().all()
    ls, tf = std.loc["least_squares"], std.loc["transformer"]
    # all prompts on both sides and one denominator (the zero estimator's), so Δ is the difference of the errors
    np.testing.assert_allclose(ls.diff_transformer, ls.error - tf.error, atol=1e-9)
    assert (ls.diff_low <= ls.diff_transformer + 1e-12).all() and (ls.diff_transformer <= ls.diff_high + 1e-12).all()
    assert (ls.diff_high.loc[3:] < 0).all()  # least squares is exact from k = d: significantly better than this model


def test_paired_csv_has_each_baseline_minus_the_reference_transformer(job):
    from omegaconf import OmegaConf

    from icl.analysis.results import load_results, paired_differences

    cfg, df, out = job
    (out / ".hydra").mkdir()
    (out / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    paired = paired_differences(load_results([out]), n_boot=50)
    ls = paired[(paired.predictor == "least_squares") & (paired.strategy == "standard")].set_index("k")
    mine = df[(df.predictor == "least_squares") & (df.strategy == "standard")].set_index("k")
    np.testing.assert_allclose(ls["diff"], mine.diff_transformer)
    assert (ls.reference_run == str(out)).all() and "transformer" not in set(paired.predictor)


def _raising(predictor, only: str):
    """``predictor`` (a baselines.predict or a prompt maker) that raises for ``only``, like a LAPACK failure would."""
    def wrapped(name, *args, **kwargs):
        if name == only:
            raise RuntimeError(f"forced failure of {name}\nsecond line of the traceback text")
        return predictor(name, *args, **kwargs)
    return wrapped


def test_a_failing_baseline_is_nan_rows_with_the_reason_and_the_rest_is_scored(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(baselines, "predict", _raising(baselines.predict, "least_squares"))
    cfg = compose_train([*TINY, "+eval.strategies.scale_x=[2]", "eval.cache=null"], tmp_path)
    with caplog.at_level(logging.ERROR, logger="icl.evaluation"):
        df = evaluate_job(cfg, tiny_model(), JobDir(tmp_path))
    written = pd.read_csv(tmp_path / "eval.csv")
    assert list(written.columns) == COLUMNS and len(written) == len(df) == 3 * 2 * 6  # 3 predictors, 2 cells, 6 k
    bad, good = written[written.predictor == "least_squares"], written[written.predictor != "least_squares"]
    assert bad.error.isna().all() and (bad.failure == "RuntimeError: forced failure of least_squares").all()
    assert (bad.n_prompts == 64).all() and set(bad.strategy) == {"standard", "scale_x"}
    assert good.failure.isna().all() and good[good.predictor == "transformer"].error.notna().all()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "baseline least_squares on scale_x=2" in lines[1] and "forced failure" in lines[1]
    assert failures(written) == [
        {"strategy": "standard", "param": None, "predictor": "least_squares", "error": bad.failure.iloc[0]},
        {"strategy": "scale_x", "param": 2.0, "predictor": "least_squares", "error": bad.failure.iloc[0]}]
    from icl.analysis.results import read_eval_csv

    assert read_eval_csv(tmp_path / "eval.csv") is not None  # NaN rows are not taken for a truncated file


def test_failing_prompts_or_transformer_cost_only_their_cell(tmp_path, monkeypatch):
    monkeypatch.setattr(prompts, "make_prompts", _raising(prompts.make_prompts, "orthogonal_query"))
    real = predict_model

    def fails_on_long_prompts(model, xs, ys, batch_size):
        if xs.shape[1] > 6:
            raise torch.OutOfMemoryError("forced: out of memory")
        return real(model, xs, ys, batch_size)

    monkeypatch.setattr("icl.evaluation.predict_model", fails_on_long_prompts)
    cfg = compose_train([*TINY, *STRATEGIES, "model.n_positions=12", "eval.cache=null"], tmp_path)
    df = evaluate_job(cfg, tiny_model(), JobDir(tmp_path))
    cells = df.groupby(["strategy", "predictor"])["failure"].first().dropna().to_dict()
    assert cells == {("orthogonal_query", "transformer"): "RuntimeError: forced failure of orthogonal_query",
                     ("orthogonal_query", "zero"): "RuntimeError: forced failure of orthogonal_query",
                     ("orthogonal_query", "least_squares"): "RuntimeError: forced failure of orthogonal_query",
                     ("long_context", "transformer"): "OutOfMemoryError: forced: out of memory"}
    long = df[df.strategy == "long_context"].set_index(["predictor", "k"])
    assert long.loc["least_squares"].error.notna().all() and long.loc["least_squares"].diff_transformer.isna().all()
    assert df[df.strategy.isin(["standard", "scale_x"])].error.notna().all()


@pytest.mark.parametrize("factor", [1e6, 1e9, 1e30])
def test_extreme_scale_x_gives_numbers_or_nan_never_a_crash(tmp_path, factor):
    """Inputs ×1e9 made ridge's X^T X + I singular for torch.linalg.solve; ×1e30 overflows float32 squares."""
    cfg = compose_train([*TINY, f"+eval.strategies.scale_x=[{factor}]", "eval.cache=null",
                         "eval.baselines=[zero,least_squares,ridge,averaging,knn_3]"], tmp_path)
    df = evaluate_job(cfg, tiny_model(), JobDir(tmp_path))
    assert df.failure.isna().all(), df.failure.dropna().unique()
    numbers = df[["error", "ci_low", "ci_high", "error_raw", "diff_transformer", "diff_low", "diff_high"]]
    assert not np.isinf(numbers.to_numpy(dtype=float)).any()
    scaled = df[df.strategy == "scale_x"].set_index(["predictor", "k"])
    if factor <= 1e9:  # least squares is scale-free: exact from k = d (float32 predictions at 1e9·x: ≈ 1e-7)
        assert (scaled.loc["least_squares"].error.loc[3:] < 1e-4).all()
        assert scaled.loc["ridge"].error.notna().all()


@pytest.mark.parametrize("mode, trained, in_place, message", [
    ("int8_fbgemm", "none", False, None),
    ("intx_weight", "int8_dynamic", False, None),  # a post-training job's model is the float one
    ("int8_fbgemm", "none", True, "pass out_dir=<new folder>"),
    ("qat_intx", "none", False, "quant=qat_intx acts during training"),
    ("int8_dynamic", "qat_int8", False, "the job was trained with quant=qat_int8"),
])
def test_evaluate_under_another_quant_mode_takes_post_training_modes_of_float_models(mode, trained, in_place,
                                                                                    message):
    quant, job_quant = OmegaConf.create({"name": mode}), OmegaConf.create({"name": trained})
    if message is None:
        assert replacing_quant(quant, job_quant, in_place) is quant
        return
    with pytest.raises(ValueError, match=message) as err:
        replacing_quant(quant, job_quant, in_place)
    assert "\n" not in str(err.value)


def test_out_dir_holding_another_job_is_told_by_folder_not_by_how_its_path_is_written(tmp_path, monkeypatch):
    import json

    def job_folder(path: Path, evaluated_from: str | None = None) -> JobDir:
        (path / ".hydra").mkdir(parents=True)
        (path / ".hydra" / "config.yaml").write_text("seed: 0\n")
        metrics = {} if evaluated_from is None else {"evaluated_from": evaluated_from}
        (path / "status.json").write_text(json.dumps({"status": "done", "metrics": metrics}))
        return JobDir(path)

    monkeypatch.chdir(tmp_path)
    run = job_folder(tmp_path / "out" / "x")
    (tmp_path / "link").symlink_to(tmp_path / "out" / "x")
    again = job_folder(tmp_path / "again", evaluated_from="out/x")  # a re-evaluation of run, written relative
    for form in ("out/./x", "out/x/", str(tmp_path / "out" / "x"), "link", "out/../out/x"):
        assert not holds_another_job(again, JobDir(form)), form
        assert not holds_another_job(JobDir(form), run), form  # run_dir and out_dir one folder
    assert not holds_another_job(JobDir(tmp_path / "new"), run)  # not a job yet
    other = job_folder(tmp_path / "other")  # trained its own model
    assert holds_another_job(other, run) and holds_another_job(again, other)
