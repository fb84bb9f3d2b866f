"""Evaluation: the transformer and the task's baselines on the same fresh prompts → tidy ``eval.csv`` and
``errors.npz`` (their columns and keys: ``icl.contract``; what each column means: docs/jobs.md#evalcsv).

One row per (strategy, param, predictor, k); errors are normalised so the zero estimator scores 1, with percentile
bootstrap CIs over prompts and, on baseline rows, the paired difference to the transformer. A cell that raises
becomes NaN rows with its error line in ``failure``; the other cells are still scored. No Hydra, no job folder
here: ``icl.run.evaluate`` evaluates a job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from icl import baselines, prompts
from icl.agreement import AlgorithmsConfig
from icl.cache import BaselineCache
from icl.contract import EVAL_COLUMNS, errors_key, failures, param_key  # noqa: F401 - failures re-exported
from icl.errors import first_line
from icl.spec import require
from icl.stats import bootstrap_ratio, paired_bootstrap
from icl.tasks import Task
from icl.transformer import predict_model

log = logging.getLogger(__name__)

COLUMNS = EVAL_COLUMNS


@dataclass
class EvalConfig:
    """What to evaluate: the schema of ``configs/eval/*.yaml``, which hold the defaults (every field is required)."""

    n_prompts: int
    batch_size: int
    n_points: int | None  # None: the training prompts' final number of points (``points``)
    seed: int
    bootstrap: int
    ci: float
    baselines: tuple[str, ...]
    slow_baseline_prompts: int  # per-prompt tree/xgboost/GD fits are capped to this many prompts
    slow_baseline_strategies: tuple[str, ...] | None  # strategies the slow baselines run on (None: all)
    strategies: dict[str, list[Any]]
    cache: str | None  # folder of cached baseline predictions (icl.cache); None: no cache
    algorithms: AlgorithmsConfig = field(default_factory=AlgorithmsConfig.off)  # off: no algorithms.csv

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "EvalConfig":
        known = [f.name for f in fields(cls)]
        optional = {"algorithms"}  # absent from configs saved before it existed: re-evaluating them stays possible
        unknown, missing = sorted(set(cfg) - set(known)), [k for k in known if k not in cfg and k not in optional]
        if unknown:
            raise ValueError(f"unknown eval option(s) {unknown}; known: {sorted(known)}")
        if missing:
            raise ValueError(f"eval options {missing} missing: start from configs/eval/default.yaml")
        slow_on = cfg.get("slow_baseline_strategies")
        out = cls(**{**cfg, "baselines": tuple(cfg.get("baselines") or ()),
                     "slow_baseline_strategies": None if slow_on is None else tuple(slow_on),
                     "strategies": dict(cfg.get("strategies") or {"standard": [None]}),
                     "algorithms": AlgorithmsConfig.from_config(cfg.get("algorithms"))})  # a bad option fails here
        for name in out.baselines:
            baselines.is_slow(name)  # unknown names fail here, before any training
            baselines.check_installed(name)
        prompts.check(out.strategies)
        if out.n_prompts < 2:
            raise ValueError(f"eval.n_prompts must be >= 2, got {out.n_prompts}")
        require(out.batch_size >= 1, "eval.batch_size", "must be >= 1", out.batch_size)
        require(out.bootstrap >= 1, "eval.bootstrap", "must be >= 1", out.bootstrap)
        require(0 < out.ci < 1, "eval.ci", "must be in (0, 1)", out.ci)
        require(out.n_points is None or out.n_points >= 1, "eval.n_points", "must be >= 1 or null", out.n_points)
        return out

    def points(self, train_points: int) -> int:
        """Points per evaluation prompt: ``n_points``, else the training prompts' final length."""
        return int(self.n_points or train_points)


def prompt_errors(task: Task, preds: Tensor, targets: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-(prompt, k) error of ``preds`` (NaN where the prediction is) and of the zero estimator, float64."""
    err, ref = task.errors(preds, targets)
    err = err.numpy().astype(np.float64)
    bad = np.isnan(preds.numpy())
    err[bad.any(-1) if bad.ndim == 3 else bad] = np.nan  # vector outputs: NaN in any coordinate
    return err, ref.numpy().astype(np.float64)


@dataclass(frozen=True)
class Resampling:
    """The bootstrap of every interval: resamples, confidence level and the seed of the resampling."""

    bootstrap: int
    ci: float
    seed: int


def score(task: Task, preds: Tensor, ys: Tensor, resampling: Resampling) -> pd.DataFrame:
    """Per-k normalised error, CI, raw error and prompt count for one predictor's predictions."""
    err, ref = prompt_errors(task, preds, ys)
    point, low, high, raw, n = bootstrap_ratio(err, ref, resampling.bootstrap, resampling.ci, resampling.seed)
    frame = pd.DataFrame({"k": np.arange(err.shape[1]), "error": point, "ci_low": low, "ci_high": high,
                          "error_raw": raw})
    return finite(frame).assign(n_prompts=n)


def finite(frame: pd.DataFrame) -> pd.DataFrame:
    """±inf → NaN: an overflow (inputs scaled by 1e9 and beyond, squared in float32) is no number to compare, and
    is reported like a failed prediction."""
    return frame.where(np.isfinite(frame))


@torch.inference_mode()
def predict_queries(model: torch.nn.Module, p: prompts.Prompts, batch_size: int) -> Tensor:
    """Model predictions when each position has its own query: one forward pass per position i on
    (x_0, y_0, …, x_{i−1}, y_{i−1}, q_i), keeping the last prediction."""
    out = torch.empty(p.ys.shape)
    for i in range(p.xs.shape[1]):
        xs = torch.cat([p.xs[:, :i], p.queries[:, i : i + 1]], dim=1)
        ys = torch.cat([p.ys[:, :i], torch.zeros_like(p.ys[:, :1])], dim=1)  # y_i is never seen by prediction i
        out[:, i] = predict_model(model, xs, ys, batch_size)[:, -1]
    return out


def _baseline_preds(name: str, p: prompts.Prompts, n: int, cache: BaselineCache, key: dict[str, Any],
                    task: Task | None = None) -> Tensor:
    queries = None if p.queries is None else p.queries[:n]
    return cache.get({**key, "baseline": name, "n_prompts": n},
                     lambda: baselines.predict(name, p.xs[:n], p.ys[:n], queries, task=task))


def evaluate(model: torch.nn.Module | None, task: Task, cfg: EvalConfig, n_points: int,
             labels: dict[str, Any], n_positions: int | None = None,
             errors: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Score the model (if any) and ``cfg.baselines`` on shared prompts of every strategy × parameter.

    ``errors``, if given, receives the transformer's and the zero estimator's per-prompt errors (errors.npz).
    A cell that raises becomes NaN rows with the error in ``failure`` (module doc); the others are unaffected.
    """
    run = _Run(model, task, n_prompts=cfg.n_prompts, batch_size=cfg.batch_size, seed=cfg.seed,
               resampling=Resampling(cfg.bootstrap, cfg.ci, cfg.seed), baselines=cfg.baselines,
               slow_prompts=cfg.slow_baseline_prompts, slow_strategies=cfg.slow_baseline_strategies,
               strategies=cfg.strategies, cache=BaselineCache(cfg.cache), errors=errors)
    frames = []
    for strategy, param, n in run.runs(n_points, n_positions):
        frames += run.strategy(strategy, param, n)
    if run.cache.root is not None:
        log.info("baseline cache %s: %d reused, %d computed", run.cache.root, run.cache.hits, run.cache.misses)
    df = pd.concat(frames, ignore_index=True)
    df = df.assign(metric=task.metric, n_dims=task.n_dims, error_per_dim=df["error_raw"] / task.n_dims, **labels)
    return df.reindex(columns=COLUMNS)  # diff_* stay NaN on transformer rows (and without a model)


@dataclass
class _Run:
    """One evaluation: what every cell shares (model, task, the settings it reads, the cache, the errors.npz
    dict), set once from ``EvalConfig`` so the per-cell steps take only the cell."""

    model: torch.nn.Module | None
    task: Task
    n_prompts: int
    batch_size: int
    seed: int
    resampling: Resampling
    baselines: tuple[str, ...]
    slow_prompts: int
    slow_strategies: tuple[str, ...] | None
    strategies: dict[str, list[Any]]
    cache: BaselineCache
    errors: dict[str, np.ndarray] | None

    def __post_init__(self) -> None:
        task = self.task
        self.task_id = {"task": task.name, "n_dims": task.n_dims,
                        "params": {k: getattr(task, k) for k in task.param_names()}}

    def runs(self, n_points: int, n_positions: int | None) -> list[tuple[str, Any, int]]:
        """(strategy, param, points) to evaluate; strategies that do not apply are logged and skipped."""
        runs = []
        for name, params in self.strategies.items():
            for param in params:
                reason = prompts.skip_reason(name, self.task, n_points, n_positions, param)
                if reason:
                    log.info("skipping strategy %s: %s", name, reason)
                    continue
                runs.append((name, param, prompts.points_for(name, param, n_points, n_positions)))
        return runs

    def predictors(self, strategy: str) -> list[tuple[str, str, int]]:
        """(name, kind, prompts scored) of every predictor of a strategy: the transformer first, then the baselines
        that apply to the task (slow ones capped to ``slow_baseline_prompts`` and to ``slow_baseline_strategies``)."""
        out = [("transformer", "transformer", self.n_prompts)] if self.model is not None else []
        for name in self.baselines:
            if reason := baselines.skip_reason(name, self.task):
                log.info("skipping baseline %s: %s", name, reason)
                continue
            slow = baselines.is_slow(name)
            if slow and self.slow_strategies is not None and strategy not in self.slow_strategies:
                continue
            out.append((name, "baseline", min(self.n_prompts, self.slow_prompts) if slow else self.n_prompts))
        return out

    def strategy(self, strategy: str, param: Any, n: int) -> list[pd.DataFrame]:
        """Every predictor's rows on one strategy × parameter, each predictor a cell of its own (``_guarded``)."""
        cell = {"strategy": strategy, "param": param}
        predictors = self.predictors(strategy)
        try:
            p = prompts.make_prompts(strategy, self.task, self.n_prompts, n, self.seed, param)
        except Exception as err:  # noqa: BLE001 - no prompts: every predictor of this strategy fails with the same line
            _log_failure("prompts", strategy, param, err)
            return [failed_rows(name, kind, n, count, first_line(err), cell) for name, kind, count in predictors]
        # `drawn`: the first prompts of a draw depend on its size (functions are sampled after all inputs)
        key = {**self.task_id, "strategy": strategy, "param": param_key(param), "seed": self.seed, "n_points": n,
               "drawn": self.n_prompts}
        mine: list[tuple[np.ndarray, np.ndarray]] = []  # the transformer's per-prompt errors and the zero estimator's
        frames = []
        for name, kind, count in predictors:  # the transformer first: the baselines' paired differences need it
            compute = partial(self.transformer_frame, p, cell, mine) if kind == "transformer" \
                else partial(self.baseline_frame, name, p, count, key, cell, mine)
            frames.append(_guarded(name, kind, n, count, cell, compute))
        return frames

    def transformer_frame(self, p: prompts.Prompts, cell: dict[str, Any],
                          mine: list[tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
        """The transformer's rows; its per-prompt errors go into ``mine`` (paired differences) and ``errors``."""
        model, task = self.model, self.task
        preds = predict_model(model, p.xs, p.ys, self.batch_size) if p.queries is None else \
            predict_queries(model, p, self.batch_size)
        frame = score(task, preds, p.targets, self.resampling).assign(predictor="transformer", kind="transformer",
                                                                      **cell)
        err, ref = prompt_errors(task, preds, p.targets)
        mine.append((err, ref))
        if self.errors is not None:
            self.errors[errors_key(cell["strategy"], cell["param"], "transformer")] = err.astype(np.float32)
            self.errors[errors_key(cell["strategy"], cell["param"], "zero")] = ref.astype(np.float32)
        return frame

    def baseline_frame(self, name: str, p: prompts.Prompts, count: int, key: dict[str, Any], cell: dict[str, Any],
                       mine: list[tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
        """A baseline's rows on the first ``count`` prompts (its predictions cached under ``key``), with its paired
        difference to the transformer when the transformer was scored."""
        task, rs = self.task, self.resampling
        preds, targets = _baseline_preds(name, p, count, self.cache, key, task), p.targets[:count]
        frame = score(task, preds, targets, rs).assign(predictor=name, kind="baseline", **cell)
        if mine:  # baseline − transformer on the same (first len(err)) prompts, paired bootstrap
            err, _ = prompt_errors(task, preds, targets)
            theirs, zero = mine[0]
            diff, low, high, _ = paired_bootstrap(err, theirs[: len(err)], zero[: len(err)], rs.bootstrap, rs.ci,
                                                  rs.seed)
            diffs = finite(pd.DataFrame({"diff_transformer": diff, "diff_low": low, "diff_high": high}))
            frame = frame.assign(**{c: diffs[c].to_numpy() for c in diffs})
        return frame


def _guarded(name: str, kind: str, n: int, count: int, cell: dict[str, Any],
             compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``compute()``, or — if it raises — the cell's NaN rows with the error line, logged once."""
    try:
        return compute()
    except Exception as err:  # noqa: BLE001 - one cell's failure is recorded; the other cells are still scored
        _log_failure(f"{kind} {name}" if kind == "baseline" else name, cell["strategy"], cell["param"], err)
        return failed_rows(name, kind, n, count, first_line(err), cell)


def _log_failure(what: str, strategy: str, param: Any, err: BaseException) -> None:
    at = strategy if param is None else f"{strategy}={param}"
    log.error("evaluation: %s on %s failed (%s); its rows are NaN with the reason in eval.csv's failure column",
              what, at, first_line(err))


def failed_rows(name: str, kind: str, n: int, count: int, reason: str, cell: dict[str, Any]) -> pd.DataFrame:
    """The rows of a cell that could not be computed: every k, NaN numbers, ``failure`` = the error line."""
    return pd.DataFrame({"k": np.arange(n), "error": np.nan, "n_prompts": count, "failure": reason,
                         "predictor": name, "kind": kind, **cell})
