"""Evaluation: the transformer and the task's baselines on the same fresh prompts → tidy ``eval.csv``.

One row per (predictor, strategy, scale, k), k = number of in-context examples before the query
(0 … n_points − 1). ``error`` is normalised so the zero estimator scores 1: for regression it is the
mean squared error at k divided by the zero estimator's mean squared error (mean y²) on the same
prompts — a ratio of means, ≈ squared error / d on isotropic linear prompts, as Garg et al. plot it;
for classification it is the error rate divided by 0.5 (chance). ``ci_low``/``ci_high`` are a
percentile bootstrap over prompts (the ratio recomputed on every resample). ``error_raw`` keeps the
un-normalised mean. Prompts come from ``eval.seed``, not the training seed, so every job of a study
is scored on the very same prompts.

Run alone on a finished job: ``python -m icl.evaluate run_dir=outputs/…`` (writes ``eval.csv`` there).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from icl import baselines
from icl.configs import check_yaml
from icl.files import atomic_write
from icl.tasks import EVAL_STREAM, PromptSampler, Task, build_task, seeded

if TYPE_CHECKING:  # imported lazily at run time: icl.module pulls in Lightning
    from icl.module import ICLModule

log = logging.getLogger(__name__)

COLUMNS = ["task", "attn", "quant", "model", "seed", "strategy", "scale", "k", "predictor", "kind", "metric",
           "error", "ci_low", "ci_high", "error_raw", "n_dims", "n_prompts"]


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
    slow_baseline_prompts: int = 128  # per-prompt sklearn/xgboost/GD fits are capped to this many prompts

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "EvalConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown eval option(s) {unknown}; known: {sorted(known)}")
        out = cls(**{**cfg, "baselines": tuple(cfg.get("baselines") or ())})
        for name in out.baselines:
            baselines.is_slow(name)  # unknown names fail here, before any training
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


def bootstrap_ratio(err: np.ndarray, ref: np.ndarray, n_boot: int, ci: float, seed: int) -> tuple[np.ndarray, ...]:
    """Mean of ``err`` over ``mean`` of ``ref`` per column (position), with a percentile bootstrap CI.

    err, ref: (P, n); NaN in ``err`` drops that prompt from that column. Resampling uses multinomial
    counts (n_boot, P) @ values (P, n), which avoids materialising n_boot copies of the data.
    """
    valid = ~np.isnan(err)
    e, r = np.where(valid, err, 0.0), np.where(valid, ref, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = e.sum(0) / r.sum(0)
        counts = np.random.default_rng(seed).multinomial(len(err), np.full(len(err), 1 / len(err)), size=n_boot)
        boots = (counts @ e) / (counts @ r)
    alpha = (1 - ci) / 2
    low, high = np.nanquantile(boots, [alpha, 1 - alpha], axis=0) if n_boot else (point, point)
    raw = np.where(valid.any(0), e.sum(0) / np.maximum(valid.sum(0), 1), np.nan)
    return point, low, high, raw, valid.sum(0)


def score(task: Task, preds: Tensor, ys: Tensor, cfg: EvalConfig) -> pd.DataFrame:
    """Per-k normalised error, CI, raw error and prompt count for one predictor's predictions."""
    err, ref = task.errors(preds, ys)
    err = err.numpy().astype(np.float64)
    err[np.isnan(preds.numpy())] = np.nan
    point, low, high, raw, n = bootstrap_ratio(err, ref.numpy().astype(np.float64), cfg.bootstrap, cfg.ci, cfg.seed)
    return pd.DataFrame({"k": np.arange(err.shape[1]), "error": point, "ci_low": low, "ci_high": high,
                         "error_raw": raw, "n_prompts": n})


def evaluate(model: torch.nn.Module | None, task: Task, cfg: EvalConfig, n_points: int,
             labels: dict[str, Any]) -> pd.DataFrame:
    """Score the model (if any) and ``cfg.baselines`` on ``cfg.n_prompts`` shared prompts."""
    xs, ys = sample_eval_prompts(task, cfg.n_prompts, n_points, cfg.seed)
    frames = []
    if model is not None:
        frames.append(score(task, predict_model(model, xs, ys, cfg.batch_size), ys, cfg).assign(
            predictor="transformer", kind="transformer"))
    for name in cfg.baselines:
        n = min(cfg.n_prompts, cfg.slow_baseline_prompts) if baselines.is_slow(name) else cfg.n_prompts
        log.info("baseline %s on %d prompts", name, n)
        preds = baselines.predict(name, xs[:n], ys[:n])
        frames.append(score(task, preds, ys[:n], cfg).assign(predictor=name, kind="baseline"))
    df = pd.concat(frames, ignore_index=True)
    df = df.assign(strategy="standard", scale=1.0, metric=task.metric, n_dims=task.n_dims, **labels)
    return df[COLUMNS]


def job_labels(cfg: DictConfig) -> dict[str, Any]:
    """The identifying columns of a job, read from its config."""
    return {"task": cfg.task.name, "attn": cfg.attn.name, "quant": cfg.quant.name, "model": cfg.model.name,
            "seed": int(cfg.seed)}


def job_task(cfg: DictConfig) -> tuple[Task, EvalConfig, int]:
    """A job's task, eval settings and number of points per evaluation prompt."""
    eval_cfg = EvalConfig.from_config(OmegaConf.to_container(cfg.eval, resolve=True))
    task = build_task(cfg.task.name, cfg.task.n_dims, OmegaConf.to_container(cfg.task.get("params") or {}, resolve=True))
    return task, eval_cfg, eval_cfg.n_points or int(cfg.task.curriculum.points.end)


def job_prompts(cfg: DictConfig, n_prompts: int) -> tuple[Tensor, Tensor]:
    """The first ``n_prompts`` of the job's evaluation prompts (a fixed batch, the same for every job of a study)."""
    task, eval_cfg, n_points = job_task(cfg)
    return sample_eval_prompts(task, n_prompts, n_points, eval_cfg.seed)


def evaluate_job(cfg: DictConfig, module: torch.nn.Module | None, out_dir: Path) -> pd.DataFrame:
    """Evaluate a job's model (an ``ICLModule`` or the transformer itself, e.g. quantised); write ``out_dir/eval.csv``."""
    task, eval_cfg, n_points = job_task(cfg)
    df = evaluate(getattr(module, "model", module), task, eval_cfg, n_points, job_labels(cfg))
    path = Path(out_dir) / "eval.csv"
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    log.info("wrote %s (%d rows)", path, len(df))
    return df


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
    job_cfg.eval = OmegaConf.merge(job_cfg.eval, overrides)
    from icl.quantize import quantize_job

    out_dir = Path(cfg.out_dir or run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = evaluate_job(job_cfg, quantize_job(job_cfg, module.model, out_dir), out_dir)
    print(summary_line(df))


def summary_line(df: pd.DataFrame) -> str:
    """One line: the transformer's normalised error at k = d and k = 2d (where present)."""
    t = df[df.predictor == "transformer"].set_index("k")["error"]
    d = int(df.n_dims.iloc[0])
    parts = [f"k={k}: {t[k]:.3f}" for k in (d, 2 * d) if k in t.index]
    return "transformer normalised error " + (", ".join(parts) if parts else "(no transformer rows)")


if __name__ == "__main__":
    check_yaml()
    main()
