"""``EvalConfig.algorithms`` is always an ``AlgorithmsConfig``: off for ``algorithms: null`` and for configs saved
before the key existed, so callers test ``.enabled`` and never None."""

import pytest
import yaml
from omegaconf import OmegaConf

from icl.agreement import AlgorithmsConfig
from icl.evaluation import EvalConfig
from icl.run.configs import CONFIG_DIR
from icl.run.spec import JobSpec
from tests.helpers import compose_train


def default_eval() -> dict:
    node = yaml.safe_load((CONFIG_DIR / "eval" / "default.yaml").read_text())
    return {**node, "baselines": ["zero", "least_squares"], "cache": None}  # the file's interpolations, resolved


def test_null_and_absent_algorithms_are_the_typed_off_config():
    for node in (default_eval(), {k: v for k, v in default_eval().items() if k != "algorithms"}):
        algorithms = EvalConfig.from_config(node).algorithms
        assert isinstance(algorithms, AlgorithmsConfig) and not algorithms.enabled
        assert algorithms == AlgorithmsConfig.off()


def test_an_algorithms_node_is_parsed_once_into_its_typed_config():
    node = {**default_eval(), "algorithms": {"n_prompts": 8, "learners": ["least_squares"], "probes": 6,
                                              "readout": False}}
    algorithms = EvalConfig.from_config(node).algorithms
    assert algorithms.enabled and algorithms.learners == ("least_squares",) and not algorithms.dynamics
    with pytest.raises(ValueError, match=r"unknown eval.algorithms option\(s\) \['enabled'\]"):  # not a config key
        EvalConfig.from_config({**node, "algorithms": {**node["algorithms"], "enabled": False}})


def test_a_job_config_saved_before_the_key_still_parses(tmp_path):
    cfg = compose_train([], tmp_path)
    OmegaConf.set_struct(cfg, False)
    del cfg.eval["algorithms"]
    assert not JobSpec.from_config(cfg).eval.algorithms.enabled
    on = compose_train(["eval=algorithms"], tmp_path)
    assert JobSpec.from_config(on).eval.algorithms.enabled
