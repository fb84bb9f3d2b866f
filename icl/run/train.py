"""Train one job, evaluate it, write eval.csv: ``python -m icl.train [overrides] [-m]``.

``train(cfg)`` is the testable core; ``main`` is the Hydra entry point. A job folder ends up with
``.hydra/config.yaml``, ``checkpoints/`` (last.ckpt + periodic), ``metrics.csv``, ``quant.json``, ``eval.csv`` and
``status.json`` (running → done | failed, with the error line). Re-running into the same folder
(``hydra.run.dir=<job>``) resumes from ``checkpoints/last.ckpt`` (or, if that is unreadable, the newest readable
periodic checkpoint: ``icl.run.checkpoints.choose_resume``). One process at a time works in a job folder: rank 0
holds its lock (``JobDir.lock``) from before anything is written to the end of evaluation; a second process into
the same folder stops at once with one line naming the holder.

Jobs with the same training config share one trained model (``icl.run.store``, under ``paths.store``): the first
trains and publishes it, the others (e.g. post-training ``quant`` modes of one sweep) load it instead of training,
and then hold no checkpoints/ or metrics.csv of their own (status.json names the model and the job that trained it).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.pytorch.callbacks import ProgressBar, Timer
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from icl import contract
from icl.data import PromptDataModule
from icl.files import write_text
from icl.module import ICLModule
from icl.run.checkpoints import AtomicCheckpointIO, CheckpointOnSigterm, RngState, choose_resume, probe
from icl.run.configs import HYDRA_CONFIGS, run_cli
from icl.run.evaluate import error_at_2d, evaluate_job, failures, quantize_job, summary_line
from icl.run.job import INTERRUPTED, STALE, JobDir, JobLocked, failure_message
from icl.run.loggers import last_logged_step
from icl.run.spec import JobSpec
from icl.run.store import Entry, claim, fingerprint, training_differences, training_identity
from icl.run.threads import set_threads
from icl.run.tracking import log_evaluation

log = logging.getLogger(__name__)

# in a sweep's folder, for the running multirun: <job num>.job (the job's folder), <job num>.failed (why it failed)
MULTIRUN_JOBS = ".multirun_jobs"


class OtherTrainingConfig(ValueError):
    """The job folder holds another training config's checkpoints: nothing was done (the message says what to do)."""


def build(spec: JobSpec | DictConfig) -> tuple[PromptDataModule, ICLModule]:
    """Data and model of a job spec (a config is parsed into one first: every check the config allows runs
    there); a GPU job on a machine without one fails here, before any training."""
    spec = spec if isinstance(spec, JobSpec) else JobSpec.from_config(spec)  # a composed config: tests
    if spec.gpu and not torch.cuda.is_available():
        raise ValueError("trainer=gpu but torch sees no CUDA GPU here: use trainer=cpu (or a CUDA build of torch)")
    task = spec.task
    datamodule = PromptDataModule(task.task, task.curriculum.start(), seed=spec.seed, batch_size=spec.data.batch_size,
                                  num_workers=spec.data.num_workers, num_tasks=task.num_tasks,
                                  num_training_examples=task.num_training_examples)
    return datamodule, ICLModule(**spec.module_hparams, built_task=task.task)


def resume_path(ckpt_path: str | None, job: JobDir, main: bool = True) -> str | None:
    """An explicit ``ckpt_path`` (must exist and load), or the checkpoint an earlier run of this job left:
    last.ckpt, falling back to the newest readable step_*.ckpt (``choose_resume``; ``main``: this process may
    rename unreadable files aside). None for a fresh job."""
    if ckpt_path:
        path = Path(ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist: fix the path or drop ckpt_path")
        _, reason = probe(path)
        if reason is not None:
            raise ValueError(f"ckpt_path={ckpt_path} is unreadable ({reason}): fix the path or drop ckpt_path")
        return str(path)
    chosen = choose_resume(job.checkpoints, last_logged_step(job.metrics_csv), main, afresh=(job.metrics_csv,))
    return None if chosen is None else str(chosen)


def save_last(trainer: L.Trainer) -> None:
    """Make last.ckpt the final model: ModelCheckpoint only writes it every n steps."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.save_last and callback.dirpath:
        trainer.save_checkpoint(Path(callback.dirpath) / contract.LAST_CKPT)


def check_launch(strategy: str) -> None:
    """Refuse a local multirun with ``trainer.strategy=ddp``: Lightning starts each extra rank by re-running the command
    line, which for ``-m`` is the whole sweep. Under SLURM (srun starts the ranks) it is fine."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    if strategy.startswith("ddp") and strategy not in ("ddp_spawn", "ddp_notebook") and "SLURM_NTASKS" not in os.environ:
        raise ValueError(f"trainer.strategy={strategy} in a local multirun (-m) would re-run the whole sweep per rank: "
                         "run DDP jobs one per command, or use hydra/launcher=submitit_slurm, or trainer.strategy=ddp_spawn")


def make_trainer(cfg: DictConfig, extra: Sequence[L.Callback] = ()) -> L.Trainer:
    """The Lightning trainer of the config (plus ``extra`` callbacks), with atomic checkpoints, RNG state and the
    training time so far in them, and a save on SIGTERM."""
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c] + list(extra)
    if not cfg.trainer.get("enable_progress_bar", True):  # `trainer.enable_progress_bar=false` wins over the callback
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.trainer.get("max_time") is None and not any(isinstance(c, Timer) for c in callbacks):
        callbacks.append(Timer(verbose=False))  # in checkpoints: a resumed job's time counts the earlier segments
    callbacks += [RngState(), CheckpointOnSigterm()]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                   plugins=[AtomicCheckpointIO()])


def is_main_process(trainer: L.Trainer) -> bool:
    """Rank 0 of a multi-process run (or the only process): the one that writes the job folder and evaluates.

    ``rank_zero_only.rank`` comes from the environment (LOCAL_RANK set by Lightning's launcher for the extra
    ranks it starts, SLURM_PROCID under srun), ``trainer.global_rank`` from the cluster environment.
    """
    return rank_zero_only.rank == 0 and trainer.global_rank == 0


def train(cfg: DictConfig, callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Fit (or reuse the shared trained model), quantise, evaluate; returns the final training metrics and the
    transformer's error at k = 2d. status.json goes running → done | failed around all of it (``JobDir.lifecycle``);
    ``callbacks`` are added to the config's (e.g. a test's fault injection)."""
    job = JobDir(cfg.paths.output_dir)
    with job_lock(job):
        if cfg.get("skip_done") and (done := finished(cfg, job)) is not None:
            log.info("skipping %s: done with this config (skip_done=true)", job.path)
            return done
        check_same_training(cfg, job)
        with job.lifecycle(write=rank_zero_only.rank == 0) as metrics:
            metrics.update(_train(JobSpec.from_config(cfg), job, callbacks))
    return metrics


def finished(cfg: DictConfig, job: JobDir) -> dict[str, Any] | None:
    """The metrics of a job already done in this folder with this very resolved config (so a rerun of a study
    costs nothing), None if it is not done. A folder done with *another* config is an error: retraining there
    would resume from checkpoints of a different run."""
    status = job.status()
    if status["status"] != "done" or not job.config_file.is_file():
        return None
    if not same_job(OmegaConf.load(job.config_file), cfg):
        raise ValueError(f"{job.path} holds a finished job with another config: delete that folder (or choose "
                         "another hydra.sweep.dir / hydra.run.dir) to run this one, or drop skip_done")
    return dict(status.get("metrics") or {})


def check_same_training(cfg: DictConfig, job: JobDir) -> None:
    """Refuse, in one line and before the folder is touched, to resume a folder holding another training config's
    checkpoints or training curve (compared on what decides the trained weights: ``icl.run.store``'s fingerprint
    rule); post-training changes (evaluation, quant mode, logging) resume the folder's model as before."""
    has_state = job.metrics_csv.is_file() or any(job.checkpoints.glob("*.ckpt"))
    if not has_state or not job.config_file.is_file():
        return
    if diffs := training_differences(OmegaConf.load(job.config_file), cfg):
        shown = ", ".join(diffs[:6]) + (f" and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise OtherTrainingConfig(
            f"{job.path} holds the checkpoints of another training config ({shown}; the folder's → this job's): "
            f"rerun with the folder's config to resume it, give this job its own folder (hydra.run.dir=… or another "
            f"hydra.sweep.dir), or delete {job.path} to train it there")


def same_job(saved: DictConfig, cfg: DictConfig) -> bool:
    """Whether two resolved configs describe the same job: equal except for where files go (``paths``, the baseline
    cache, and every value under the job's own folder, e.g. checkpoint and log dirs), so a finished study folder
    moved or copied to another checkout is still recognised as done, and except for the ``recipe`` table (a changed
    row of *another* variant does not make this job another job; its own row's values are in optim/model/trainer)."""
    def what(c: DictConfig) -> Any:
        plain = OmegaConf.to_container(c, resolve=True)
        home = str(plain.get("paths", {}).get("output_dir", "")) or None
        plain.pop("paths", None)
        plain.pop("recipe", None)  # the table of every variant's recipe: its row's effect is in optim/model/trainer
        plain.get("eval", {}).pop("cache", None)
        return relocate(plain, home)
    return what(saved) == what(cfg)


def relocate(value: Any, home: str | None) -> Any:
    """``value`` with every string under the folder ``home`` written relative to it (``<job>/…``)."""
    if isinstance(value, dict):
        return {k: relocate(v, home) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, home) for v in value]
    if home and isinstance(value, str) and (value == home or value.startswith(home.rstrip("/") + "/")):
        return "<job>" + value[len(home.rstrip("/")):]
    return value


def job_lock(job: JobDir) -> AbstractContextManager[None]:
    """The job folder's lock for rank 0 (or the only process); nothing for the extra DDP ranks, which Lightning
    starts with the same command in the same folder while rank 0 holds it (``rank_zero_only.rank`` is read from
    the environment those ranks get: LOCAL_RANK, or SLURM_PROCID under srun)."""
    return job.lock("training") if rank_zero_only.rank == 0 else nullcontext()


def _train(spec: JobSpec, job: JobDir, callbacks: Sequence[L.Callback]) -> dict[str, Any]:
    cfg = spec.cfg
    check_launch(str(cfg.trainer.get("strategy") or ""))
    threads = set_threads(spec.threads)
    L.seed_everything(spec.seed, workers=True, verbose=False)
    datamodule, module = build(spec)
    trainer = make_trainer(cfg, callbacks)
    ckpt = resume_path(spec.ckpt_path, job, main=is_main_process(trainer))
    if not is_main_process(trainer):  # an extra DDP rank: train alongside rank 0, which writes and evaluates
        fit(trainer, module, datamodule, ckpt)
        return {}
    job.write_config(cfg)  # resolved, for aggregation
    job.write_versions(seed=spec.seed, threads=threads, world_size=trainer.world_size)
    with shared_model(spec, job, trainer.world_size) as entry:
        if entry is not None and entry.done:  # trained already by a job with the same training config
            log.info("reusing the model trained by %s: %s", entry.meta().get("trained_by"), entry.ckpt)
            module = ICLModule.load_from_checkpoint(entry.ckpt, map_location="cpu")
            metrics = {**entry.meta().get("metrics", {}), "train_seconds": 0.0}
        else:
            metrics = fit(trainer, module, datamodule, ckpt)
            if entry is not None:
                entry.publish(lambda path: trainer.save_checkpoint(path, weights_only=True),
                              {"trained_by": str(job.path), "metrics": metrics, **training_identity(cfg)})
    if entry is not None:
        metrics.update(fingerprint=entry.dir.name, model=str(entry.ckpt), trained_by=entry.meta()["trained_by"])
    start = time.perf_counter()
    model = quantize_job(spec, module.model.to(trainer.strategy.root_device), job)
    df = evaluate_job(spec, model, job)
    log.info(summary_line(df))
    metrics.update(error_at_2d=error_at_2d(df), eval_seconds=time.perf_counter() - start)
    track(trainer, job, df, metrics)
    if failed := failures(df):  # the job is still done: status.json lists what could not be computed
        metrics["failures"] = failed
    return metrics


def track(trainer: L.Trainer, job: JobDir, df: Any, metrics: dict[str, Any]) -> None:
    """The evaluation to the experiment trackers among the trainer's loggers (``logger=wandb|mlflow``)."""
    log_evaluation(trainer.loggers, job, df, metrics)


def fit(trainer: L.Trainer, module: ICLModule, datamodule: PromptDataModule, ckpt: str | None) -> dict[str, Any]:
    """Train (resuming from ``ckpt`` if given), leave last.ckpt as the final model; the final training metrics."""
    if ckpt:
        log.info("resuming from %s", ckpt)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    this_run = time.perf_counter() - start
    save_last(trainer)
    return {**{k: float(v) for k, v in trainer.callback_metrics.items()},
            "train_seconds": max(this_run, training_seconds(trainer))}


def training_seconds(trainer: L.Trainer) -> float:
    """Wall seconds of training across resumes, from the trainer's Timer (``trainer.max_time``'s or ours): its
    offset is the time the resumed checkpoint had trained (steps a stop lost after it count once, when re-run; a
    ``ckpt_path`` into another job's checkpoint counts that job's time too). 0 where the Timer ran in spawned
    processes (``ddp_spawn``): ``fit`` then falls back on this run's wall time."""
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    return float(timers[0].time_elapsed("train")) if timers else 0.0


@contextmanager
def shared_model(spec: JobSpec, job: JobDir, world_size: int = 1) -> Iterator[Entry | None]:
    """The trained-model store entry for this job's training config (held exclusively), or None without a store.

    ``paths.store=null`` turns sharing off; so does an explicit ``ckpt_path`` (training may then start from weights
    the config does not describe), and so does multi-process training (the other ranks cannot know whether rank 0
    found the model trained, so each such job trains its own).
    """
    store = spec.paths.store
    if not store or spec.ckpt_path or world_size > 1:
        yield None
        return
    with claim(Path(store), fingerprint(spec.cfg), job.path) as entry:
        yield entry


def note_job(folder: str, failure: str | None = None) -> None:
    """Record a job of the running multirun for ``FailOnFailedJobs``, a file in the sweep's folder (a launcher may
    run the job in another process): its folder when it starts (only this multirun's jobs are judged, not an
    earlier sweep's in the same folder), and why it failed, so a job that failed before writing a status of its
    own — a busy folder, a folder done with another config under ``skip_done`` — is counted too."""
    hydra_cfg = HydraConfig.get()
    notes = Path(hydra_cfg.sweep.dir) / MULTIRUN_JOBS
    notes.mkdir(parents=True, exist_ok=True)
    if failure is None:
        write_text(notes / f"{hydra_cfg.job.num}.job", folder)
    else:
        write_text(notes / f"{hydra_cfg.job.num}.failed", f"{folder}: {failure}")


class FailOnFailedJobs(Callback):
    """Hydra callback: after a multirun, name the jobs of this multirun (``note_job``) that failed — noted so, or
    whose status says failed (or interrupted) — and exit 1.

    Hydra's basic launcher goes on after a failed job (what we want: the other cells still run) but
    then exits 0; this makes a sweep with failures visible to scripts and CI.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        shutil.rmtree(Path(config.hydra.sweep.dir) / MULTIRUN_JOBS, ignore_errors=True)  # an earlier multirun's

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        notes = Path(config.hydra.sweep.dir) / MULTIRUN_JOBS
        failed = {}
        for note in sorted(notes.glob("*.job"), key=lambda path: int(path.stem)):
            job = JobDir(note.read_text())
            status = job.status()
            if job.status_file.exists() and status["status"] in ("failed", STALE):
                failed[str(job.path.resolve())] = status["error"]
        for note in sorted(notes.glob("*.failed"), key=lambda path: int(path.stem)):
            folder, _, message = note.read_text().partition(": ")
            failed.setdefault(str(Path(folder).resolve()), message)
        if failed:
            log.error("%d job(s) failed: %s\n  %s", len(failed), ", ".join(failed),
                      "\n  ".join(f"{folder}: {error}" for folder, error in failed.items()))
            raise SystemExit(1)


@hydra.main(version_base="1.3", config_path=HYDRA_CONFIGS, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point. Errors become one line (status.json says failed); a multirun goes on to the next job."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        note_job(cfg.paths.output_dir)
    try:
        return train(cfg).get("error_at_2d")
    except JobLocked as err:  # nothing was done, and the folder's status belongs to the holder
        log.error("%s", err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            note_job(cfg.paths.output_dir, str(err))
            return None
        raise SystemExit(1) from None
    except OtherTrainingConfig as err:  # nothing was done: the folder's files are the other job's
        log.error("%s", err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            note_job(cfg.paths.output_dir, str(err))
            return None
        raise SystemExit(1) from None
    except BaseException as err:  # noqa: BLE001 - recorded by train(), then skipped (multirun) or exit 1
        message = failure_message(err)
        log.error("job failed: %s (details in %s)", message, cfg.paths.output_dir)
        if HydraConfig.get().mode == RunMode.MULTIRUN and message != INTERRUPTED:
            note_job(cfg.paths.output_dir, message)
            return None
        raise SystemExit(1) from None


def cli() -> None:
    """Console script ``icl-train`` (and ``python -m icl.train``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
