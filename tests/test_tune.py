"""tune=smoke: the Optuna sweeper (hydra-optuna-sweeper) minimises the error on validation prompts."""

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from icl.run.configs import CONFIG_DIR
from icl.run.tune import ValidationObjective
from tests.helpers import TINY, jobs, run

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def tune_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["tune=smoke", *overrides], return_hydra_config=True)


def space(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)


def test_the_search_space_is_the_variants_row_or_the_default():
    softmax, relu = space(tune_config("attn=softmax")), space(tune_config("attn=relu"))
    assert set(softmax) == {"optim.lr", "optim.warmup_steps", "model.qk_norm", "trainer.gradient_clip_val"}
    assert softmax["optim.lr"] == "tag(log, interval(1e-4, 3e-3))"
    assert relu["optim.lr"] == "tag(log, interval(3e-5, 1e-3))" and relu["model.qk_norm"] == softmax["model.qk_norm"]
    cfg = tune_config("attn=softmax")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "minimize"
    assert cfg.eval.seed != cfg.tune.reporting_seed


def test_a_tuning_sweep_scored_on_the_reporting_seed_is_refused():
    guard = ValidationObjective()
    guard.on_multirun_start(tune_config())  # eval.seed=1000: validation prompts
    with pytest.raises(ValueError, match="eval.seed=0 is the reporting seed"):
        guard.on_multirun_start(tune_config("eval.seed=0"))
    with pytest.raises(ValueError, match="eval.seed=7 is the reporting seed"):
        guard.on_job_start(tune_config("eval.seed=7", "tune.reporting_seed=7"))
    searched = tune_config()
    with open_dict(searched), read_write(searched):
        searched.hydra.sweeper.params["eval.seed"] = "choice(1, 2)"
    with pytest.raises(ValueError, match="searches eval.seed"):
        guard.on_multirun_start(searched)


@pytest.mark.slow
def test_a_two_trial_sweep_minimises_the_validation_error(tmp_path: Path, monkeypatch):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("optim.lr=")]  # a command-line value would fix the searched key
    run(["-m", "icl.train", "-m", "tune=smoke", *tiny, "trainer.max_steps=20",
         "callbacks.model_checkpoint.every_n_train_steps=20", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
         f"eval.cache={tmp_path / 'cache'}", "logger=mlflow", f"logger.mlflow.save_dir={tmp_path / 'mlruns'}"], tmp_path)
    trials = jobs(sweep)
    assert len(trials) == 2
    errors, params = [], []
    for job in trials:
        cfg = OmegaConf.load(job / "config.yaml")
        assert cfg.eval.seed == 1000  # every objective is a validation error
        errors.append(yaml.safe_load((job / "status.json").read_text())["metrics"]["error_at_2d"])
        params.append({"optim.lr": cfg.optim.lr, "optim.warmup_steps": cfg.optim.warmup_steps})
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    mlflow = pytest.importorskip("mlflow")  # each trial is one tracked run, named by its cell
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when asked
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("icl").experiment_id])
    cells = {yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["override_dirname"]
             for job in trials}
    assert {r.info.run_name for r in runs} == cells and all("optim.lr=" in c for c in cells)
    assert sorted(r.data.metrics["eval_error_at_2d"] for r in runs) == pytest.approx(sorted(errors))
    assert result["best_value"] == pytest.approx(min(errors))
    best = params[errors.index(min(errors))]
    assert result["best_params"]["optim.lr"] == pytest.approx(best["optim.lr"])
    assert result["best_params"]["optim.warmup_steps"] == best["optim.warmup_steps"]
