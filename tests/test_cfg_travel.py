"""The config is parsed once and then handed down as built objects: a bound on how far it travels."""

import pytest

from icl import tasks
from tests.helpers import FAST
from tests.tools.trace_cfg import trace

# Functions handed a config piece outside JobSpec.from_config, and calls from icl.run down into the core with one
# (docs/architecture.md, "How far the config travels"): raise a bound only for a stop that needs the piece.
MAX_STOPS = 14
MAX_RETURNS = 3
BUILD_TASK = tasks.build_task


@pytest.mark.slow
def test_the_config_travels_a_bounded_way_and_the_task_is_built_once(tmp_path, monkeypatch):
    built = []

    def counted(*args: object) -> tasks.Task:
        built.append(args)
        return BUILD_TASK(*args)

    monkeypatch.setattr(tasks, "build_task", counted)
    result = trace([*FAST, "trainer.max_steps=2", "paths.store=null", "eval.cache=null"], tmp_path)
    assert len(result.stops) <= MAX_STOPS, sorted(result.stops)
    assert len(result.returns) <= MAX_RETURNS, sorted(result.returns)
    assert len(built) == 1 and "icl.tasks.build_task" in result.parsed  # one Task, built in the parse, for all
    assert "icl.curriculum.Curriculum.from_config" not in result.stops  # the parse's stages are reused
