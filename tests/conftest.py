"""Fixtures; the helpers they build on are in tests/helpers.py (import those, never this file)."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`: one worker per core, so one torch thread each (set before
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch is imported; the CLI jobs a test starts inherit it, so
    os.environ.setdefault("MKL_NUM_THREADS", "1")  # in-process and CLI runs still sum in the same order)

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.helpers import TINY, compose_train


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Iterator[None]:
    """A test that runs a job or a benchmark in-process sets torch's thread count (``threads=``); later tests that
    compare an in-process run with a CLI run bit for bit need the default back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Factory: ``tiny_cfg("trainer.max_steps=20", out="a")`` composes the tiny job into ``tmp_path / out``."""

    def make(*overrides: str, out: str = "") -> DictConfig:
        return compose_train([*TINY, *overrides], tmp_path / out if out else tmp_path)

    return make
