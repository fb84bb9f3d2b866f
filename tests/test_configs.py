"""Every shipped YAML composes and builds against the code that consumes it."""

import importlib.util
import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from icl.run.configs import check_yaml
from icl.run.spec import validate
from icl.run.train import build
from icl.tasks import seeded
from tests.helpers import CONFIGS, compose_train


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("task", [t for t in options("task") if not t.startswith("mujoco_")])
def test_every_task_builds(task, tmp_path):
    cfg = compose_train([f"task={task}", "task.n_dims=6"], tmp_path)
    datamodule, module = build(cfg)
    xs, ys = datamodule.sampler.sample(2, 5, 5, seeded(0))
    assert xs.shape == (2, 5, 6) and module(xs, ys).shape == (2, 5)
    assert module.task.name == task


@pytest.mark.parametrize("task", [t for t in options("task") if t.startswith("mujoco_")])
def test_every_mujoco_task_builds(task, tmp_path):
    """n_dims is fixed by the system: the YAML's own value, and vector outputs through the model."""
    pytest.importorskip("mujoco")
    cfg = compose_train([f"task={task}"], tmp_path)
    datamodule, module = build(cfg)
    d, y_dim = cfg.task.n_dims, module.task.y_dim
    xs, ys = datamodule.sampler.sample(2, 5, d, seeded(0))
    assert ys.shape == (2, 5, y_dim) and module(xs, ys).shape == (2, 5, y_dim) and module.model.config.y_dim == y_dim
    assert "nominal" in cfg.task.baselines


@pytest.mark.parametrize("model", options("model"))
def test_model_sizes(model, tmp_path):
    cfg = compose_train([f"model={model}"], tmp_path)
    _, module = build(cfg)
    c = module.model.config
    assert (c.n_embd, c.n_layer, c.n_head) == {"tiny": (64, 3, 2), "small": (128, 6, 4), "standard": (256, 12, 8),
                                              "attn_only": (64, 3, 2), "hybrid": (64, 3, 2)}[model]
    assert c.mlp == (model != "attn_only")
    assert c.n_positions == cfg.task.curriculum.points.end


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    assert cfg.experiment == experiment
    OmegaConf.resolve(cfg)
    build(cfg)


@pytest.mark.parametrize("group", ["trainer", "logger", "eval", "attn", "quant", "callbacks", "paths", "recipe"])
def test_other_groups_compose(group, tmp_path):
    for option in options(group):
        cfg = compose_train([f"{group}={option}"], tmp_path)
        validate(cfg)  # the schema accepts every shipped option
        OmegaConf.resolve(cfg)


def test_garg_settings(tmp_path):
    cfg = compose_train(["experiment=garg_decision_tree"], tmp_path)
    assert cfg.trainer.max_steps == 500_000 and cfg.model.name == "standard" and cfg.optim.lr == 1e-4
    assert OmegaConf.to_container(cfg.task.curriculum, resolve=True) == {
        "dims": {"start": 5, "end": 20, "inc": 1, "interval": 2000},
        "points": {"start": 26, "end": 101, "inc": 5, "interval": 2000}}


def test_impossible_points_rejected(tmp_path):
    cfg = compose_train(["model.n_positions=20"], tmp_path)
    with pytest.raises(ValueError, match="model.n_positions"):
        build(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_gpu_trainer_without_gpu_is_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="use trainer=cpu"):
        build(compose_train(["trainer=gpu"], tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_logger_without_tensorboard_says_how_to_install(tmp_path):
    with pytest.raises(ValueError, match=r"pip install -e '.\[tensorboard\]'"):
        build(compose_train(["logger=tensorboard"], tmp_path))


def test_unknown_optim_option(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key 'optim.lrr'"):
        build(compose_train(["+optim.lrr=1e-3"], tmp_path))


def test_small_dims_hint(tmp_path):
    with pytest.raises(ValueError, match="lower task.curriculum.dims.start"):
        build(compose_train(["task.n_dims=3"], tmp_path))


def test_shipped_yaml_parses_and_broken_yaml_is_one_line(tmp_path):
    check_yaml()  # every shipped file
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny.yaml").write_text("name: tiny\nn_embd: 64\n  n_layer: 3\n")
    with pytest.raises(SystemExit, match=r"broken YAML at .*model/tiny.yaml:3:10: .*\(fix that file\)"):
        check_yaml(tmp_path)
    (tmp_path / "model" / "tiny.yaml").write_text("name: tiny\nn_embd: 64\n")
    check_yaml(tmp_path)  # fixed: passes, and is remembered as passed ...
    (tmp_path / "model" / "tiny.yaml").write_text("name: tiny\n  n_layer: 3\n  n_embd: 64\n")  # ... until edited
    with pytest.raises(SystemExit, match=r"broken YAML at .*model/tiny.yaml"):
        check_yaml(tmp_path)


@pytest.mark.filterwarnings("ignore:(?s).*is validated against ConfigStore schema")  # see icl/train.py __main__
@pytest.mark.parametrize("launcher, target", [("joblib", "JoblibLauncher"), ("submitit_slurm", "SlurmLauncher"),
                                              ("submitit_local", "LocalLauncher")])
def test_launcher_configs_extend_the_plugins(launcher, target):
    """Our hydra/launcher/*.yaml are merged onto the plugins' schemas: defaults applied, typos would be rejected."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert {"joblib": ("n_jobs", 2), "submitit_slurm": ("max_num_timeout", 3),
            "submitit_local": ("cpus_per_task", 1)}[launcher] in cfg.hydra.launcher.items()


@pytest.mark.filterwarnings("ignore:(?s).*is validated against ConfigStore schema")
def test_submitit_slurm_config_gives_the_sbatch_script(tmp_path, monkeypatch):
    """Pointing at a cluster: our submitit_slurm defaults + partition/account on the command line become these
    #SBATCH lines, built by submitit exactly as the plugin does (a stand-in `srun` only satisfies its check)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                                          "hydra.launcher.account=proj", f"hydra.sweep.dir={tmp_path}",
                                          "hydra.job.name=train"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    executor = submitit.AutoExecutor(folder=params.pop("submitit_folder"), cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m icl.train", "uid")
    for line in ("--partition=gpu", "--account=proj", "--gpus-per-node=1", "--time=720", "--mem=32GB",
                 "--cpus-per-task=8", "--ntasks-per-node=1", "--nodes=1"):
        assert f"#SBATCH {line}\n" in script
