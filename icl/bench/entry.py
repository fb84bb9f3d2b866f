"""The one runner of the benchmarks' Hydra entry points: a module states its ``run(cfg)`` and its config, and
``cli = hydra_cli(run, "<config name>")`` is its console script (one-line YAML errors, then Hydra, then ``run`` with
its bad input refused in one line)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from icl.run.configs import HYDRA_CONFIGS, refusals, run_cli


def hydra_cli(run: Callable[[DictConfig], object], config_name: str,
              refuse: tuple[type[BaseException], ...] = (ValueError,)) -> Callable[[], None]:
    """The console script that runs ``run`` on ``configs/<config_name>.yaml`` plus the command line's overrides."""

    @functools.wraps(run)  # Hydra names the job after the wrapped function's module, as if ``run`` were decorated
    def main(cfg: DictConfig) -> None:
        with refusals(*refuse):
            run(cfg)

    hydra_main = hydra.main(version_base="1.3", config_path=HYDRA_CONFIGS, config_name=config_name)(main)

    def cli() -> None:
        run_cli(hydra_main)

    cli.__doc__ = f"Console script: {run.__module__}.run on configs/{config_name}.yaml."
    return cli
