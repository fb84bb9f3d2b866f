"""Fixtures; the helpers they build on are in tests/helpers.py (import those, never this file)."""

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.helpers import TINY, compose_train


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Factory: ``tiny_cfg("trainer.max_steps=20", out="a")`` composes the tiny job into ``tmp_path / out``."""

    def make(*overrides: str, out: str = "") -> DictConfig:
        return compose_train([*TINY, *overrides], tmp_path / out if out else tmp_path)

    return make
