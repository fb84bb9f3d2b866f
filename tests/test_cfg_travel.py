"""The config is parsed once and then handed down as built objects: a bound on how far it travels."""

import pytest

from tests.helpers import FAST
from tests.tools.trace_cfg import trace

# Functions handed a config piece outside JobSpec.from_config, and calls from icl.run down into the core with one
# (docs/architecture.md, "How far the config travels"): raise a bound only for a stop that needs the piece.
MAX_STOPS = 21
MAX_RETURNS = 5


@pytest.mark.slow
def test_the_config_travels_a_bounded_way_and_the_task_is_built_once(tmp_path):
    result = trace([*FAST, "trainer.max_steps=2", "paths.store=null", "eval.cache=null"], tmp_path)
    assert len(result.stops) <= MAX_STOPS, sorted(result.stops)
    assert len(result.returns) <= MAX_RETURNS, sorted(result.returns)
    assert result.stops["icl.tasks.build_task"] == 1  # one Task for data, module and evaluation
    assert "icl.curriculum.Curriculum.from_config" not in result.stops  # the parse's stages are reused
