"""Evaluation: the transformer and the task's baselines on the same fresh prompts → tidy ``eval.csv``.

One row per (strategy, param, predictor, k), k = number of in-context examples before the query
(0 … n_points − 1); strategies and their parameters come from ``eval.strategies`` (``icl.prompts``;
``param`` is empty for strategies without one). ``error`` is normalised so the zero estimator scores
1: for regression it is the mean squared error at k divided by the zero estimator's mean squared
error (mean of the target²) on the same prompts — a ratio of means, ≈ squared error / d on isotropic
linear prompts; for classification it is the error rate divided by 0.5 (chance). ``ci_low``/``ci_high``
are a percentile bootstrap over prompts (the ratio recomputed on every resample). ``error_raw`` keeps
the un-normalised mean and ``error_per_dim`` = ``error_raw`` / d is Garg et al.'s normalisation (the
two agree on standard isotropic prompts, not under scale_x/scale_y, where only ``error`` stays
comparable). Prompts come from ``eval.seed``, not the training seed, so every job of a study is
scored on the very same prompts.

Baseline rows carry ``diff_transformer`` [``diff_low``, ``diff_high``]: the baseline's error minus this job's
transformer's on the same prompts, in units of ``error`` (Σ err_baseline − Σ err_transformer over Σ err_zero),
with a paired percentile bootstrap CI (negative: the baseline is better). Differences between jobs (a variant vs
the softmax/float reference) are paired at aggregation (``icl.results.paired_differences``).

Beside ``eval.csv`` a job writes ``errors.npz``: the transformer's and the zero estimator's per-prompt
errors (float32, (P, n), key ``<strategy>/<param>/<predictor>``), from which ``icl.results`` computes
paired differences between jobs scored on the same prompts. Baseline predictions are cached across
jobs (``eval.cache``, ``icl.cache``).

Run alone on a finished job: ``python -m icl.evaluate run_dir=outputs/…`` (writes ``eval.csv`` there).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from icl import baselines, prompts
from icl.cache import BaselineCache
from icl.configs import CONFIG_DIR, check_yaml
from icl.files import atomic_write
from icl.results import paired_bootstrap
from icl.tasks import EVAL_STREAM, PromptSampler, Task, build_task, seeded

if TYPE_CHECKING:  # imported lazily at run time: icl.module pulls in Lightning
    from icl.module import ICLModule

log = logging.getLogger(__name__)

COLUMNS = ["task", "attn", "quant", "model", "seed", "strategy", "param", "k", "predictor", "kind", "metric",
           "error", "ci_low", "ci_high", "error_raw", "error_per_dim", "diff_transformer", "diff_low", "diff_high",
           "n_dims", "n_prompts"]  # n_prompts last: never empty, so a cut-short row shows (icl.results)
ERRORS_FILE = "errors.npz"


@dataclass
class EvalConfig:
    """What to evaluate; mirrors ``configs/eval/*.yaml``."""

    n_prompts: int = 1280
    batch_size: int = 256
    n_points: int | None = None  # default: the curriculum's final number of points
    seed: int = 0
    bootstrap: int = 1000
    ci: float = 0.95
    baselines: tuple[str, ...] = ()
    slow_baseline_prompts: int = 256  # per-prompt tree/xgboost/GD fits are capped to this many prompts
    slow_baseline_strategies: tuple[str, ...] | None = None  # strategies the slow baselines run on (None: all)
    strategies: dict[str, list[Any]] = field(default_factory=lambda: {"standard": [None]})
    cache: str | None = None  # folder of cached baseline predictions (icl.cache); None: no cache

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "EvalConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown eval option(s) {unknown}; known: {sorted(known)}")
        slow_on = cfg.get("slow_baseline_strategies")
        out = cls(**{**cfg, "baselines": tuple(cfg.get("baselines") or ()),
                     "slow_baseline_strategies": None if slow_on is None else tuple(slow_on),
                     "strategies": dict(cfg.get("strategies") or {"standard": [None]})})
        for name in out.baselines:
            baselines.is_slow(name)  # unknown names fail here, before any training
        prompts.check(out.strategies)
        if out.n_prompts < 2:
            raise ValueError(f"eval.n_prompts must be >= 2, got {out.n_prompts}")
        return out


def sample_eval_prompts(task: Task, n_prompts: int, n_points: int, seed: int) -> tuple[Tensor, Tensor]:
    """Fresh functions and inputs over all d dims (no curriculum, no finite pools)."""
    return PromptSampler(task).sample(n_prompts, n_points, task.n_dims, seeded(EVAL_STREAM, seed, 0, 0))


@torch.inference_mode()
def predict_model(model: torch.nn.Module, xs: Tensor, ys: Tensor, batch_size: int) -> Tensor:
    """Model predictions (P, n) in batches, on the model's device, returned on CPU."""
    device = next(model.parameters()).device
    model.eval()
    out = [model(x.to(device), y.to(device)).float().cpu() for x, y in zip(xs.split(batch_size), ys.split(batch_size))]
    return torch.cat(out)


@lru_cache(maxsize=4)
def resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) multinomial resampling counts, shared by every predictor and strategy scored on n prompts."""
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=n_boot).astype(np.float64)
    counts.flags.writeable = False
    return counts


def bootstrap_ratio(err: np.ndarray, ref: np.ndarray, n_boot: int, ci: float, seed: int) -> tuple[np.ndarray, ...]:
    """Mean of ``err`` over ``mean`` of ``ref`` per column (position), with a percentile bootstrap CI.

    err, ref: (P, n); NaN in ``err`` drops that prompt from that column. Resampling uses multinomial
    counts (n_boot, P) @ values (P, n), which avoids materialising n_boot copies of the data.
    """
    valid = ~np.isnan(err)
    e, r = np.where(valid, err, 0.0), np.where(valid, ref, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = e.sum(0) / r.sum(0)
        counts = resample_counts(len(err), n_boot, seed)
        boots = (counts @ e) / (counts @ r)
    alpha = (1 - ci) / 2
    low, high = np.nanquantile(boots, [alpha, 1 - alpha], axis=0) if n_boot else (point, point)
    raw = np.where(valid.any(0), e.sum(0) / np.maximum(valid.sum(0), 1), np.nan)
    return point, low, high, raw, valid.sum(0)


def prompt_errors(task: Task, preds: Tensor, targets: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-(prompt, k) error of ``preds`` (NaN where the prediction is) and of the zero estimator, float64."""
    err, ref = task.errors(preds, targets)
    err = err.numpy().astype(np.float64)
    err[np.isnan(preds.numpy())] = np.nan
    return err, ref.numpy().astype(np.float64)


def score(task: Task, preds: Tensor, ys: Tensor, cfg: EvalConfig) -> pd.DataFrame:
    """Per-k normalised error, CI, raw error and prompt count for one predictor's predictions."""
    err, ref = prompt_errors(task, preds, ys)
    point, low, high, raw, n = bootstrap_ratio(err, ref, cfg.bootstrap, cfg.ci, cfg.seed)
    return pd.DataFrame({"k": np.arange(err.shape[1]), "error": point, "ci_low": low, "ci_high": high,
                         "error_raw": raw, "n_prompts": n})


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


def param_key(param: Any) -> str:
    """A parameter as written in errors.npz keys: '' for none, else repr of the float (exact: 2 and 2.0 agree)."""
    return "" if param is None else repr(float(param))


def strategy_runs(task: Task, cfg: EvalConfig, n_points: int, n_positions: int | None) -> list[tuple[str, Any, int]]:
    """(strategy, param, points) to evaluate; strategies that do not apply are logged and skipped."""
    runs = []
    for name, params in cfg.strategies.items():
        for param in params:
            reason = prompts.skip_reason(name, task, n_points, n_positions, param)
            if reason:
                log.info("skipping strategy %s: %s", name, reason)
                continue
            runs.append((name, param, prompts.points_for(name, param, n_points, n_positions)))
    return runs


def _baseline_preds(name: str, p: prompts.Prompts, n: int, cache: BaselineCache, key: dict[str, Any],
                    task: Task | None = None) -> Tensor:
    queries = None if p.queries is None else p.queries[:n]
    return cache.get({**key, "baseline": name, "n_prompts": n},
                     lambda: baselines.predict(name, p.xs[:n], p.ys[:n], queries, task=task))


def evaluate(model: torch.nn.Module | None, task: Task, cfg: EvalConfig, n_points: int,
             labels: dict[str, Any], n_positions: int | None = None,
             errors: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Score the model (if any) and ``cfg.baselines`` on shared prompts of every strategy × parameter.

    ``errors``, if given, receives the transformer's and the zero estimator's per-prompt errors (``ERRORS_FILE``).
    """
    cache = BaselineCache(cfg.cache)
    task_id = {"task": task.name, "n_dims": task.n_dims, "params": {k: getattr(task, k) for k in task.param_names()}}
    frames = []
    for strategy, param, n in strategy_runs(task, cfg, n_points, n_positions):
        p = prompts.make_prompts(strategy, task, cfg.n_prompts, n, cfg.seed, param)
        rows = []
        if model is not None:
            preds = predict_model(model, p.xs, p.ys, cfg.batch_size) if p.queries is None else \
                predict_queries(model, p, cfg.batch_size)
            rows.append(("transformer", "transformer", preds, p.targets))
        # `drawn`: the first prompts of a draw depend on its size (functions are sampled after all inputs)
        key = {**task_id, "strategy": strategy, "param": param_key(param), "seed": cfg.seed, "n_points": n,
               "drawn": cfg.n_prompts}
        for name in cfg.baselines:
            slow = baselines.is_slow(name)
            if slow and cfg.slow_baseline_strategies is not None and strategy not in cfg.slow_baseline_strategies:
                continue
            count = min(cfg.n_prompts, cfg.slow_baseline_prompts) if slow else cfg.n_prompts
            log.debug("baseline %s on %d prompts (%s %s)", name, count, strategy, param)
            rows.append((name, "baseline", _baseline_preds(name, p, count, cache, key, task), p.targets[:count]))
        mine = None  # the transformer's per-prompt errors and the zero estimator's, for the paired differences
        for name, kind, preds, targets in rows:
            frame = score(task, preds, targets, cfg).assign(predictor=name, kind=kind, strategy=strategy, param=param)
            err, ref = prompt_errors(task, preds, targets)
            if kind == "transformer":
                mine = err, ref
                if errors is not None:
                    errors[f"{strategy}/{param_key(param)}/transformer"] = err.astype(np.float32)
                    errors[f"{strategy}/{param_key(param)}/zero"] = ref.astype(np.float32)
            elif mine is not None:  # baseline − transformer on the same (first len(err)) prompts, paired bootstrap
                diff, low, high, _ = paired_bootstrap(err, mine[0][: len(err)], mine[1][: len(err)], cfg.bootstrap,
                                                      cfg.ci, cfg.seed)
                frame = frame.assign(diff_transformer=diff, diff_low=low, diff_high=high)
            frames.append(frame)
    if cache.root is not None:
        log.info("baseline cache %s: %d reused, %d computed", cache.root, cache.hits, cache.misses)
    df = pd.concat(frames, ignore_index=True)
    df = df.assign(metric=task.metric, n_dims=task.n_dims, error_per_dim=df["error_raw"] / task.n_dims, **labels)
    return df.reindex(columns=COLUMNS)  # diff_* stay NaN on transformer rows (and without a model)


def job_labels(cfg: DictConfig) -> dict[str, Any]:
    """The identifying columns of a job, read from its config."""
    return {"task": cfg.task.name, "attn": cfg.attn.name, "quant": cfg.quant.name, "model": cfg.model.name,
            "seed": int(cfg.seed)}


def job_task(cfg: DictConfig) -> tuple[Task, EvalConfig, int]:
    """A job's task, eval settings and number of points per evaluation prompt."""
    eval_cfg = EvalConfig.from_config(OmegaConf.to_container(cfg.eval, resolve=True))
    task = build_task(cfg.task.name, cfg.task.n_dims, OmegaConf.to_container(cfg.task.get("params") or {}, resolve=True))
    if "bayes" in eval_cfg.baselines:
        baselines.bayes_predictor(task)  # a task without an exact one fails here, before training
    return task, eval_cfg, eval_cfg.n_points or int(cfg.task.curriculum.points.end)


def job_prompts(cfg: DictConfig, n_prompts: int) -> tuple[Tensor, Tensor]:
    """The first ``n_prompts`` of the job's evaluation prompts (a fixed batch, the same for every job of a study)."""
    task, eval_cfg, n_points = job_task(cfg)
    return sample_eval_prompts(task, n_prompts, n_points, eval_cfg.seed)


def evaluate_job(cfg: DictConfig, module: torch.nn.Module | None, out_dir: Path) -> pd.DataFrame:
    """Evaluate a job's model (an ``ICLModule`` or the transformer itself, e.g. quantised); write ``out_dir/eval.csv``."""
    task, eval_cfg, n_points = job_task(cfg)
    n_positions = OmegaConf.select(cfg, "model.n_positions")
    errors: dict[str, np.ndarray] = {}
    df = evaluate(getattr(module, "model", module), task, eval_cfg, n_points, job_labels(cfg),
                  n_positions=None if n_positions is None else int(n_positions), errors=errors)
    path = Path(out_dir) / "eval.csv"
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    atomic_write(Path(out_dir) / ERRORS_FILE, lambda tmp: _save_npz(tmp, errors))
    log.info("wrote %s (%d rows) and %s", path, len(df), ERRORS_FILE)
    return df


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to the tmp name
        np.savez_compressed(f, **arrays)


def load_job(run_dir: Path, ckpt: str = "last") -> tuple[DictConfig, "ICLModule"]:
    """A finished job's saved config and trained module (``ckpt``: 'last' or a path)."""
    from icl.module import ICLModule

    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no job config at {cfg_path}: run_dir must be a folder written by icl.train")
    path = run_dir / "checkpoints" / "last.ckpt" if ckpt == "last" else Path(ckpt)
    if ckpt == "last" and not path.is_file() and (run_dir / "status.json").is_file():
        # a job that reused a shared trained model (icl.store) records where it is
        path = Path(json.loads((run_dir / "status.json").read_text()).get("metrics", {}).get("model") or path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: train first, or pass ckpt=<path to a .ckpt>")
    return OmegaConf.load(cfg_path), ICLModule.load_from_checkpoint(path, map_location="cpu")


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    if not cfg.run_dir:
        log.error("pass the job folder to evaluate: python -m icl.evaluate run_dir=outputs/<date>/<time>")
        raise SystemExit(1)
    run_dir = Path(cfg.run_dir)
    try:
        job_cfg, module = load_job(run_dir, cfg.ckpt)
    except FileNotFoundError as err:
        log.error("%s", err)
        raise SystemExit(1) from None
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.eval).items() if v is not None}
    strategies = overrides.pop("strategies", None)
    if cfg.get("strategies_from"):  # e.g. `default`: an older job evaluated on today's full strategy grid
        strategies = OmegaConf.load(CONFIG_DIR / "eval" / f"{cfg.strategies_from}.yaml").strategies
    job_cfg.eval = OmegaConf.merge(job_cfg.eval, overrides)
    if strategies is not None:  # replaced, not merged key by key
        job_cfg.eval.strategies = strategies
    from icl.quantize import quantize_job

    out_dir = Path(cfg.out_dir or run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = evaluate_job(job_cfg, quantize_job(job_cfg, module.model, out_dir), out_dir)
    print(summary_line(df))


def summary_line(df: pd.DataFrame) -> str:
    """One line: the transformer's normalised error at k = d and k = 2d (where present)."""
    t = df[(df.predictor == "transformer") & (df.strategy == "standard")].set_index("k")["error"]
    d = int(df.n_dims.iloc[0])
    parts = [f"k={k}: {t[k]:.3f}" for k in (d, 2 * d) if k in t.index]
    return "transformer normalised error " + (", ".join(parts) if parts else "(no transformer rows)")


if __name__ == "__main__":
    check_yaml()
    main()
