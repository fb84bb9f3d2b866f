"""Training in-process through the real configs: loss goes down, resume is exact, errors are clear."""

import json
import time

import pandas as pd
import pytest
import torch

from icl.evaluation import COLUMNS
from icl.run.loggers import load_metrics
from icl.run.train import train
from tests.helpers import CrashAt, PoisonWeightsAt, compose_train


def _weights(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_short_training_lowers_loss_and_writes_job(tmp_path, tiny_overrides):
    # One fixed function (a pool of 1) makes "the loss goes down" quick and certain; learning *in context*
    # is the smoke study's job (README, measured).
    cfg = compose_train([*tiny_overrides, "task.num_tasks=1", "trainer.max_steps=300",
                         "callbacks.model_checkpoint.every_n_train_steps=100"], tmp_path)
    metrics = train(cfg)
    log = pd.read_csv(tmp_path / "metrics.csv").dropna(subset=["train/loss_rel_zero"])
    first, last = log["train/loss_rel_zero"].iloc[:5].mean(), log["train/loss_rel_zero"].iloc[-5:].mean()
    assert last < 0.8 * first, (first, last)
    assert {"curriculum/n_dims", "curriculum/n_points", "train/loss"} <= set(log.columns)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "last.ckpt", "step_100.ckpt", "step_200.ckpt", "step_300.ckpt"]
    df = pd.read_csv(tmp_path / "eval.csv")
    assert list(df.columns) == COLUMNS
    assert set(df.predictor) == {"transformer", "zero", "least_squares"}
    assert sorted(df.k.unique()) == list(range(6))
    assert (df[df.predictor == "zero"].error == 1).all()
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "done"
    assert metrics["error_at_2d"] >= 0 and metrics["train_seconds"] > 0


def test_resume_continues_exactly(tmp_path, tiny_overrides):
    """20 steps straight == crash after step 14, resume from last.ckpt (step 12) to 20: same weights, curriculum, lr and metrics.

    The curriculum grows every 5 steps and the lr follows a cosine, so a resume that lost either
    (or replayed the data stream from step 0) would end with different weights.
    """
    moving = [*tiny_overrides, "task.n_dims=5", "task.curriculum.dims.start=2", "task.curriculum.dims.interval=5",
              "task.curriculum.points.start=3", "task.curriculum.points.inc=1", "task.curriculum.points.interval=5",
              "optim.schedule=cosine", "optim.warmup_steps=3", "trainer.log_every_n_steps=1",
              "callbacks.model_checkpoint.every_n_train_steps=4"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(compose_train([*moving, "trainer.max_steps=20"], straight))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_train([*moving, "trainer.max_steps=20"], split), callbacks=[CrashAt(14)])  # last.ckpt at 12
    status = json.loads((split / "status.json").read_text())  # train() itself records the failure
    assert status["status"] == "failed" and "simulated crash" in status["error"]
    train(compose_train([*moving, "trainer.max_steps=20"], split))  # finds split/checkpoints/last.ckpt
    a, b = _weights(straight / "checkpoints" / "last.ckpt"), _weights(split / "checkpoints" / "last.ckpt")
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    state = torch.load(split / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 20
    assert state["PromptDataModule"]["curriculum"] == {**state["PromptDataModule"]["curriculum"], "step": 20,
                                                       "n_dims": 5, "n_points": 6}
    m_straight = load_metrics(straight / "metrics.csv")
    m_split = load_metrics(split / "metrics.csv")  # the first run's rows survive the resume
    assert list(m_split.step) == list(m_straight.step)
    torch.testing.assert_close(torch.tensor(m_split["train/loss"].to_numpy()),
                               torch.tensor(m_straight["train/loss"].to_numpy()))


class SlowSteps(CrashAt):
    """Each step sleeps ``pause`` seconds, then the job crashes at ``step``: a slow first segment of a resumed job."""

    def __init__(self, step: int, pause: float) -> None:
        super().__init__(step)
        self.pause = pause

    def on_train_batch_end(self, trainer, *args) -> None:
        time.sleep(self.pause)
        super().on_train_batch_end(trainer, *args)


def test_a_resumed_jobs_training_time_counts_the_segment_before_the_resume(tmp_path, tiny_overrides):
    """status.json's train_seconds (the study's cost line) is the training's whole time, not its last segment."""
    overrides = [*tiny_overrides, "trainer.max_steps=16", "callbacks.model_checkpoint.every_n_train_steps=4"]
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_train(overrides, tmp_path), callbacks=[SlowSteps(14, pause=0.1)])  # last.ckpt at 12: >= 1.2 s
    metrics = train(compose_train(overrides, tmp_path))  # steps 13-16, fast
    assert 1.2 <= metrics["train_seconds"] <= time.perf_counter() - start, metrics["train_seconds"]  # counted once
    assert json.loads((tmp_path / "status.json").read_text())["metrics"]["train_seconds"] >= 1.2


def test_max_time_still_stops_training(tmp_path, tiny_overrides):
    """Our Timer (for train_seconds) must not displace Lightning's ``trainer.max_time`` one."""
    cfg = compose_train([*tiny_overrides, "trainer.max_steps=5000", "+trainer.max_time='00:00:00:02'"], tmp_path)
    metrics = train(cfg)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert 0 < state["global_step"] < 5000 and metrics["train_seconds"] >= 2


def test_nan_loss_fails_with_a_clear_line(tmp_path, tiny_overrides):
    cfg = compose_train([*tiny_overrides, "task.params.scale=nan", "trainer.max_steps=5"], tmp_path)
    with pytest.raises(FloatingPointError, match="lower optim.lr"):
        train(cfg)


def test_gradient_accumulation_is_refused(tmp_path, tiny_overrides):
    cfg = compose_train([*tiny_overrides, "+trainer.accumulate_grad_batches=2"], tmp_path)
    with pytest.raises(ValueError, match="accumulate_grad_batches must be 1"):
        train(cfg)


def test_missing_checkpoint_is_reported(tmp_path, tiny_overrides):
    cfg = compose_train([*tiny_overrides, f"ckpt_path={tmp_path}/nope.ckpt"], tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist"):
        train(cfg)


@pytest.mark.parametrize("task", ["sparse_linear", "noisy_linear", "quadratic", "linear_classification",
                                  "decision_tree", "random_forest", "relu_2nn", "relu_3nn"])
def test_every_task_trains_and_evaluates_with_its_baselines(task, tmp_path):
    """A few steps per task through the real configs, evaluated with the task's own baseline list."""
    cfg = compose_train([f"task={task}", "task.n_dims=5", "task.curriculum.points.end=8",
                         "task.curriculum.points.start=5", "model.n_layer=1", "data.batch_size=8",
                         "trainer.max_steps=3", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                         "eval.n_prompts=12", "eval.bootstrap=20", "eval.slow_baseline_prompts=2"], tmp_path)
    train(cfg)
    df = pd.read_csv(tmp_path / "eval.csv")
    assert set(df.predictor) == {"transformer", *cfg.task.baselines}
    assert df[df.predictor == "transformer"].error.notna().all()
    if task != "linear_classification":  # there the zero estimator is a coin flip, ≈ 1 only on average
        assert (df[df.predictor == "zero"].error == 1).all()
    slow = df[df.predictor.isin(["xgboost", "gd_2nn", "tree_depth4"])]
    assert (slow.n_prompts <= 2).all()
    assert (df[df.predictor.isin(["lasso_0.1", "bayes"])].n_prompts == 12).all()  # batched: every prompt
    assert set(df.metric) == {"error_rate" if task == "linear_classification" else "squared_error"}


def test_nan_weights_stop_training_and_keep_the_last_good_checkpoint(tmp_path, tiny_overrides):
    """The weights go NaN at step 6: that step's checkpoint is refused, last.ckpt stays the finite step-3 one."""
    cfg = compose_train([*tiny_overrides, "trainer.max_steps=20", "callbacks.model_checkpoint.every_n_train_steps=3"],
                        tmp_path)
    with pytest.raises(FloatingPointError, match=r"weight model.read_out.weight is not finite at step 6"):
        train(cfg, callbacks=[PoisonWeightsAt(6)])
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values() if w.is_floating_point())
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_same_config_and_seed_give_identical_eval_csv(tmp_path, tiny_overrides):
    """Two runs of one tiny job (own store each, so both train): byte-identical eval.csv; versions recorded."""
    for name in ("a", "b"):
        train(compose_train([*tiny_overrides, "seed=3", "trainer.max_steps=15", "data.num_workers=0"], tmp_path / name))
    assert (tmp_path / "a" / "eval.csv").read_bytes() == (tmp_path / "b" / "eval.csv").read_bytes()
    recorded = json.loads((tmp_path / "a" / "versions.json").read_text())
    assert recorded["seed"] == 3 and recorded["versions"]["torch"] == torch.__version__
    assert {"python", "lightning", "hydra-core", "numpy", "torchao"} <= set(recorded["versions"])
    assert "git_commit" in recorded and recorded["threads"] == torch.get_num_threads()


def test_a_baseline_failing_in_evaluation_leaves_the_job_done_with_the_failure_recorded(tmp_path, tiny_overrides,
                                                                                        monkeypatch):
    from icl import baselines

    real = baselines.predict

    def least_squares_fails(name, *args, **kw):
        if name == "least_squares":
            raise torch.linalg.LinAlgError("forced: the input matrix is singular")
        return real(name, *args, **kw)

    monkeypatch.setattr(baselines, "predict", least_squares_fails)
    metrics = train(compose_train([*tiny_overrides, "trainer.max_steps=10"], tmp_path))
    df = pd.read_csv(tmp_path / "eval.csv")
    assert df[df.predictor == "transformer"].error.notna().all() and df[df.predictor == "zero"].error.notna().all()
    ls = df[df.predictor == "least_squares"]
    assert len(ls) == 6 and ls.error.isna().all() and (ls.failure.str.startswith("LinAlgError: forced")).all()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "done" and status["metrics"]["error_at_2d"] >= 0
    assert status["failures"] == [{"strategy": "standard", "param": None, "predictor": "least_squares",
                                   "error": "LinAlgError: forced: the input matrix is singular"}]
    assert metrics["failures"] == status["failures"]


@pytest.mark.parametrize("other", [["seed=1"], ["task=sparse_linear"]])
def test_a_folder_of_another_training_config_is_never_resumed(tmp_path, tiny_overrides, other):
    """A job into a folder holding another training run's checkpoints stops in one line naming the folder and the
    differing keys, before touching it; post-training changes (quant, eval) still reuse the folder's model."""
    job = tmp_path / "x"
    overrides = [*tiny_overrides, "trainer.max_steps=5", "paths.store=null"]
    train(compose_train(overrides, job))
    before = {name: (job / name).read_bytes() for name in ("config.yaml", "eval.csv", "status.json")}
    with pytest.raises(ValueError) as err:
        train(compose_train([*overrides, *other], job))
    line = str(err.value)
    assert "\n" not in line and str(job) in line and other[0].split("=")[0].split(".")[0] in line
    assert "hydra.run.dir" in line  # what to do
    assert {name: (job / name).read_bytes() for name in before} == before  # the folder is untouched
    again = train(compose_train([*overrides, "quant=int8_weight", "eval.n_prompts=32"], job))
    assert not pd.isna(again["error_at_2d"])  # the folder's own model (resumed at its last step), evaluated
    assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    assert set(pd.read_csv(job / "eval.csv").quant) == {"int8_weight"}

