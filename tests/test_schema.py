"""Bad input fails before any compute with one line naming the key and what is allowed (icl/run/spec.py)."""

import shutil

import pytest
from hydra import compose, initialize_config_dir

from icl.run.spec import validate
from icl.run.train import build
from tests.helpers import CONFIGS, compose_train


@pytest.mark.parametrize("override, expected", [
    ("optim.lr=0", "optim.lr=0 is not allowed: the learning rate must be > 0"),
    ("optim.lr=-1e-3", "optim.lr=-0.001 is not allowed"),
    ("model.n_layer=0", "model.n_layer=0 is not allowed: must be an integer >= 1"),
    ("model.n_layer=two", "model.n_layer=two is not allowed: must be an integer >= 1"),
    ("+model.n_layr=2", "unknown config key 'model.n_layr': known model keys are name, n_positions"),
    ("model.n_head=3", "model.n_embd=64 is not allowed: must be a multiple of model.n_head=3"),
    ("data.batch_size=0", "data.batch_size=0 is not allowed"),
    ("threads=0", "threads=0 is not allowed: must be >= 1 or null"),
    ("task.params.scale=0", "task.params.scale=0 is not allowed: must be > 0"),
    ("optim.lr=fast", "config key 'optim.lr'"),
    ("+optim.lrr=1e-3", "unknown config key 'optim.lrr'"),
    ("+data.batchsize=8", "unknown config key 'data.batchsize'"),
    ("+sed=1", "unknown config key 'sed'"),
    ("+task.curriculum.points.every=5", "unknown config key 'task.curriculum.points.every'"),
    ("+trainer.max_step=5", "unknown config key 'trainer.max_step': not an argument of lightning.Trainer"),
])
def test_impossible_values_and_unknown_keys(tmp_path, override, expected):
    with pytest.raises(ValueError) as err:
        build(compose_train([override], tmp_path))
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("task, override, expected", [
    ("sparse_linear", "task.params.sparsity=21", "task.params.sparsity=21 is not allowed: must be in 1..task.n_dims=20"),
    ("decision_tree", "task.params.depth=0", "task.params.depth=0 is not allowed: must be >= 1"),
    ("relu_2nn", "task.params.hidden=0", "task.params.hidden=0 is not allowed"),
])
def test_impossible_task_parameters(tmp_path, task, override, expected):
    with pytest.raises(ValueError, match=expected):
        build(compose_train([f"task={task}", override], tmp_path))


def test_a_typo_in_a_yaml_file_is_rejected(tmp_path):
    """A misspelt key in a config file is an error naming it, not a silently ignored setting."""
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    tiny = configs / "model" / "tiny.yaml"
    tiny.write_text(tiny.read_text().replace("n_layer: 3", "n_layer: 3\nn_layr: 1"))
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="unknown config key 'model.n_layr'"):
        validate(cfg)


def test_optim_keys_are_the_schema_and_model_keys_the_transformer_fields():
    """One list each: the schema's optim keys are what ICLModule reads; model keys come from TransformerConfig."""
    from dataclasses import fields

    from icl.module import FROM_TASK, MODEL_KEYS, OPTIM_KEYS, OptimSpec
    from icl.transformer import TransformerConfig

    assert set(OPTIM_KEYS) == {f.name for f in fields(OptimSpec)}
    assert set(MODEL_KEYS) == {f.name for f in fields(TransformerConfig)} - set(FROM_TASK)
    assert set(FROM_TASK) <= {f.name for f in fields(TransformerConfig)}


def test_every_default_is_in_the_yaml(tiny_cfg):
    """The schema holds no defaults: a composed config names every optim/data/eval key itself."""
    from dataclasses import fields

    from icl.data import DataSpec
    from icl.evaluation import EvalConfig
    from icl.module import OptimSpec

    cfg = tiny_cfg()
    assert {f.name for f in fields(OptimSpec)} <= set(cfg.optim)
    assert {f.name for f in fields(DataSpec)} <= set(cfg.data)
    assert {f.name for f in fields(EvalConfig)} == set(cfg.eval)
