"""Experiment trackers (``logger=wandb``, ``logger=mlflow``) and what a job sends them after evaluation.

Lightning's own loggers carry the training curves; ``log_evaluation`` adds what only the job knows at its end: the
evaluation summary (the transformer's error at k = d and 2d, train and eval seconds), eval.csv as a table/artifact
and the job's error-vs-k figures. Both trackers are optional extras (``pip install -e '.[tracking]'``); W&B runs
offline by default (``<job>/wandb/``), MLflow writes a local file store (``outputs/mlruns`` by default).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger

from icl.files import save_figure
from icl.run.job import JobDir
from icl.stats import error_at

log = logging.getLogger(__name__)

WANDB_MODES = ("offline", "online", "disabled")


def _require(module: str, logger: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"logger={logger} needs {module}: pip install -e '.[tracking]' (or use logger=csv)")


def check_trackers(loggers: Any) -> None:
    """Fail before training, with one line, on a tracker that is not installed or is misconfigured."""
    for key, node in (loggers or {}).items():
        target = str((node or {}).get("_target_", ""))
        if target.endswith("wandb_logger"):
            _require("wandb", "wandb")
            if (mode := node.get("mode", "offline")) not in WANDB_MODES:
                raise ValueError(f"logger.{key}.mode={mode} is not one of {', '.join(WANDB_MODES)}")
        elif target.endswith("mlflow_logger"):
            _require("mlflow", "mlflow")


def run_name(save_dir: str | Path) -> str:
    """The job's cell as a run name: Hydra's ``override_dirname`` (e.g. ``attn=relu,seed=1``), else the folder."""
    if HydraConfig.initialized():
        cell = HydraConfig.get().job.override_dirname
        if cell:
            return str(cell)
    path = Path(save_dir).resolve()
    return f"{path.parent.name}/{path.name}"


def wandb_logger(save_dir: str, project: str = "icl", name: str | None = None, mode: str = "offline",
                 **kwargs: Any) -> Logger:
    """Lightning's ``WandbLogger`` writing under ``<save_dir>/wandb`` (``mode=offline``: no network, no account;
    ``wandb sync <job>/wandb/offline-run-*`` uploads it later)."""
    check_trackers({"wandb": {"_target_": "wandb_logger", "mode": mode}})
    from lightning.pytorch.loggers import WandbLogger
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(name=name or run_name(save_dir), save_dir=save_dir, project=project, mode=mode, **kwargs)


def mlflow_logger(save_dir: str, job_dir: str, experiment_name: str = "icl", name: str | None = None,
                  tracking_uri: str | None = None, **kwargs: Any) -> Logger:
    """Lightning's ``MLFlowLogger``; without ``tracking_uri`` a file store in ``save_dir`` (MLflow 3 reads it only
    with ``MLFLOW_ALLOW_FILE_STORE=true``, set here for this process). ``job_dir``: the job's folder, for the run name."""
    check_trackers({"mlflow": {"_target_": "mlflow_logger"}})
    from lightning.pytorch.loggers import MLFlowLogger
    store = Path(save_dir).resolve()
    if tracking_uri is None:  # MLflow 3 refuses its file store unless asked: asked here, for the default only
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(experiment_name=experiment_name, run_name=name or run_name(job_dir),
                        tracking_uri=tracking_uri or store.as_uri(), save_dir=str(store), **kwargs)


def summary(df: pd.DataFrame, metrics: dict[str, Any]) -> dict[str, float]:
    """The job's evaluation summary: the transformer's error at k = d and 2d (standard prompts), its headline
    error and the seconds spent."""
    d = int(df.n_dims.iloc[0])
    out = {f"eval/error_k{k}": v for k, v in error_at(df, (d, 2 * d)).items()}
    out.update({f"eval/{key}": float(metrics[key]) for key in ("error_at_2d", "train_seconds", "eval_seconds")
                if metrics.get(key) is not None})
    return out


def job_figures(df: pd.DataFrame, out: Path) -> list[Path]:
    """The job's error vs k, one PNG per prompt strategy (a panel per strategy parameter, a line per predictor with
    its 95% CI band). Drawn here from eval.csv's rows: ``make figures`` (icl.analysis, a layer above this one)
    draws the sweep-level figures."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = df[df["error"].notna()].assign(strategy=df["strategy"].fillna("standard"))
    written = []
    for strategy, part in rows.groupby("strategy", sort=True):
        params = sorted(part["param"].dropna().unique()) or [None]
        fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.4), squeeze=False)
        for ax, param in zip(axes.flat, params):
            panel = part if param is None else part[part["param"] == param]
            for predictor, line in panel.groupby("predictor", sort=True):
                line = line.sort_values("k")
                ax.plot(line["k"], line["error"], label=predictor, linewidth=2 if predictor == "transformer" else 1)
                ax.fill_between(line["k"], line["ci_low"], line["ci_high"], alpha=0.2)
            ax.set_title(f"{strategy}" + ("" if param is None else f" = {param:g}"), fontsize=9)
            ax.set_xlabel("in-context examples k")
        axes[0, 0].set_ylabel("error / zero estimator's")
        axes[0, -1].legend(fontsize=7)
        fig.tight_layout()
        written.append(out / f"error_vs_k_{strategy}.png")
        save_figure(written[-1], fig, dpi=100)
        plt.close(fig)
    return written


def log_evaluation(loggers: Sequence[Logger], job: JobDir, df: pd.DataFrame, metrics: dict[str, Any]) -> None:
    """Send the evaluation to every tracker among ``loggers`` (CSV/TensorBoard get nothing more)."""
    trackers = [lg for lg in loggers if type(lg).__name__ in ("WandbLogger", "MLFlowLogger")]
    if not trackers:
        return
    values = summary(df, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        figures = job_figures(df, Path(tmp))
        for tracker in trackers:
            if type(tracker).__name__ == "WandbLogger":
                _to_wandb(tracker, job, df, values, figures)
            else:
                _to_mlflow(tracker, job, values, figures)


def _to_wandb(tracker: Logger, job: JobDir, df: pd.DataFrame, values: dict[str, float], figures: list[Path]) -> None:
    import wandb
    run = tracker.experiment
    run.summary.update(values)
    run.log({"eval/table": wandb.Table(dataframe=df.astype(object).where(df.notna(), None)),
             **{f"figures/{p.stem}": wandb.Image(str(p)) for p in figures}})
    artifact = wandb.Artifact(f"eval-{run.id}", type="evaluation")
    artifact.add_file(str(job.eval_csv))
    run.log_artifact(artifact)
    run.finish()  # the job is over: write the offline run out now, not at interpreter exit


def _to_mlflow(tracker: Logger, job: JobDir, values: dict[str, float], figures: list[Path]) -> None:
    client, run_id = tracker.experiment, tracker.run_id
    for key, value in values.items():
        client.log_metric(run_id, key.replace("/", "_"), value)
    client.log_artifact(run_id, str(job.eval_csv))
    for path in figures:
        client.log_artifact(run_id, str(path), "figures")
    client.set_terminated(run_id)
