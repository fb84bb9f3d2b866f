"""The Optuna sweeper's objective is a validation error: ``tune=smoke`` (configs/tune/) and its guard.

A job returns the transformer's error at k = 2d on the prompts of its ``eval.seed`` to Hydra (``icl.run.train.main``);
under ``hydra/sweeper=optuna`` that float is what Optuna minimises. Choosing a recipe on the prompts the results are
reported on would select on the test set, so ``ValidationObjective`` (a Hydra callback the tune presets install)
refuses a sweep, or a trial, scored with ``tune.reporting_seed`` before anything is trained.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def check_validation_seed(config: DictConfig) -> None:
    """Raise (one line) if a tuning job would be scored on the reporting prompts, or sweeps eval.seed itself."""
    reporting = config.get("tune", {}).get("reporting_seed")
    if reporting is None:
        raise ValueError("tune.reporting_seed is not set: tune with a preset (tune=smoke) that names the reporting seed")
    if int(config.eval.seed) == int(reporting):
        raise ValueError(f"eval.seed={config.eval.seed} is the reporting seed (tune.reporting_seed): a recipe must be "
                         f"chosen on validation prompts, e.g. eval.seed=1000")
    params = config.get("hydra", {}).get("sweeper", {}).get("params") or {}
    if "eval.seed" in params:
        raise ValueError("hydra.sweeper.params searches eval.seed: the prompts a trial is scored on are not a "
                         "hyperparameter; drop it from the search space")


class ValidationObjective(Callback):
    """Hydra callback: refuse the sweep (at its start) and each trial whose objective would be a reporting error."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_validation_seed(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_validation_seed(config)
