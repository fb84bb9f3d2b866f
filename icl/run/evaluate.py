"""Evaluate a job: its (quantised) trained model and the task's baselines → ``<job>/eval.csv``.

``quantize_job`` and ``evaluate_job`` are what training calls after fitting; ``main`` re-evaluates a finished job
from its folder: ``python -m icl.evaluate run_dir=outputs/<date>/<time> [eval.n_prompts=…]`` — only the ``eval.*``
keys given on the command line replace the job's saved settings; ``quant=MODE out_dir=<folder>`` scores the trained
model under another post-training quant mode, into a job folder of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from icl import contract, prompts
from icl.contract import cap_k, failures
from icl.evaluation import evaluate
from icl.quantize import PROOF_PROMPTS, QuantSpec, quantize_with_proof, summary
from icl.run.configs import CONFIG_DIR, HYDRA_CONFIGS, refusals, run_cli
from icl.run.job import JobDir, JobLocked
from icl.run.spec import JobSpec
from icl.run.store import Entry
from icl.run.threads import set_threads
from icl.stats import error_at

if TYPE_CHECKING:  # imported lazily at run time: icl.module pulls in Lightning
    from icl.module import ICLModule

log = logging.getLogger(__name__)
DELETED = object()  # '~eval.KEY' on the command line: the key is removed from the job's saved eval


def quantize_job(spec: JobSpec | DictConfig, model: torch.nn.Module, job: JobDir) -> torch.nn.Module:
    """Apply the job's ``quant`` mode to its trained model, write ``quant.json``, return the model to evaluate."""
    spec = spec if isinstance(spec, JobSpec) else JobSpec.from_config(spec)  # a composed config: tests
    p = prompts.make_prompts("standard", spec.task.task, PROOF_PROMPTS, spec.eval_points, spec.eval.seed)  # eval's first
    quantized, report = quantize_with_proof(model, spec.quant, p.xs, p.ys)
    job.write_quant(report)
    log.info(summary(report))
    return quantized


def evaluate_job(spec: JobSpec | DictConfig, module: torch.nn.Module | None, job: JobDir) -> pd.DataFrame:
    """Evaluate a job's model (an ``ICLModule`` or the transformer itself, e.g. quantised); write eval.csv."""
    spec = spec if isinstance(spec, JobSpec) else JobSpec.from_config(spec)  # a composed config: tests
    errors: dict[str, Any] = {}
    df = evaluate(getattr(module, "model", module), spec.task.task, spec.eval, spec.eval_points, spec.labels(),
                  n_positions=spec.model.n_positions, errors=errors)
    job.write_eval(df, errors)
    log.info("wrote %s (%d rows) and %s", job.eval_csv, len(df), contract.ERRORS)
    if spec.eval.algorithms.enabled and module is not None:
        write_algorithms(spec, getattr(module, "model", module), job)
    if failed := failures(df):
        log.warning("%d evaluation cell(s) failed (NaN rows, reason in the failure column): %s", len(failed),
                    "; ".join(f"{f['predictor']} on {f['strategy']}"
                              + ("" if f["param"] is None else f"={f['param']:g}") for f in failed))
    return df


def write_algorithms(spec: JobSpec, model: torch.nn.Module, job: JobDir) -> None:
    """algorithms.csv (agreement with reference learners, per-layer read-out) and, if asked, dynamics.csv."""
    from icl.agreement import evaluate_algorithms

    algo_cfg = spec.eval.algorithms
    algos = evaluate_algorithms(model, spec.task.task, algo_cfg, spec.eval_points, spec.eval.seed, spec.labels(),
                                spec.eval.bootstrap, spec.eval.ci, spec.eval.batch_size, pool=_pool(spec))
    job.write_algorithms(algos)
    log.info("wrote %s (%d rows)", job.algorithms_csv, len(algos))
    if algo_cfg.dynamics:
        write_dynamics(spec, job, algo_cfg.n_prompts)


def write_dynamics(spec: JobSpec, job: JobDir, n_prompts: int) -> None:
    """dynamics.csv: the float model of every periodic checkpoint (step_<N>.ckpt, in step order) on the first
    ``n_prompts`` standard evaluation prompts; nothing when the job has no checkpoints of its own (a stored model)."""
    from icl.agreement import DYNAMICS_COLUMNS, dynamics_frame
    from icl.module import ICLModule
    from icl.run.checkpoints import step_checkpoints

    found = step_checkpoints(job.checkpoints)[::-1]  # oldest first
    if not found:
        log.info("no periodic checkpoints in %s: no %s", job.checkpoints, contract.DYNAMICS)
        return
    task = spec.task.task
    p = prompts.make_prompts("standard", task, n_prompts, spec.eval_points, spec.eval.seed)

    def models() -> Iterator[tuple[int, torch.nn.Module]]:  # one checkpoint in memory at a time
        for path in found:
            step = int(path.name.removeprefix("step_").split(".")[0].split("-")[0])  # step_<N>[-v<M>].ckpt
            yield step, ICLModule.load_from_checkpoint(path, map_location="cpu").model

    frame = dynamics_frame(models(), task, p.xs, p.ys, spec.eval.bootstrap, spec.eval.ci, spec.eval.seed,
                           spec.eval.batch_size)
    job.write_dynamics(frame.assign(**spec.labels()).reindex(columns=DYNAMICS_COLUMNS))
    log.info("wrote %s (%d checkpoints)", job.path / contract.DYNAMICS, len(found))


def _pool(spec: JobSpec) -> tuple[int, int] | None:
    """(num_tasks, pool seed) of a linear job trained on a finite pool of functions (icl.pool), else None."""
    if spec.task.num_tasks is None or spec.task.name not in ("linear", "noisy_linear"):
        return None
    return int(spec.task.num_tasks), spec.seed  # the pool is seeded by the training seed (icl.data.PromptDataModule)


def error_at_2d(df: pd.DataFrame) -> float:
    """The transformer's normalised error at k = 2d (or the largest k evaluated, if smaller): a job's headline
    number in status.json; NaN without transformer rows."""
    d = int(df.n_dims.iloc[0])
    return next(iter(error_at(df, (cap_k(df, 2 * d),)).values()), float("nan"))


def summary_line(df: pd.DataFrame) -> str:
    """One line: the transformer's normalised error at k = d and k = 2d (where present)."""
    d = int(df.n_dims.iloc[0])
    errors = error_at(df, (d, 2 * d))
    parts = [f"k={k}: {e:.3f}" for k, e in errors.items()]
    return "transformer normalised error " + (", ".join(parts) if parts else "(no transformer rows)")


def load_job(job: JobDir, ckpt: str = "last") -> tuple[DictConfig, "ICLModule"]:
    """A finished job's saved config and trained module (``ckpt``: 'last' or a path)."""
    from icl.module import ICLModule

    cfg = job.load_config()
    path = job.model_ckpt(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: train first, or pass ckpt=<path to a .ckpt>")
    if ckpt == "last" and path != job.last_ckpt and (why := Entry(path.parent).verify()) is not None:
        raise ValueError(f"the shared trained model {path} that {job.path} used is damaged ({why}): rerun the "
                         f"training command of {job.path} (it moves the entry aside, retrains and republishes)")
    return cfg, ICLModule.load_from_checkpoint(path, map_location="cpu")


def eval_overrides() -> dict[str, Any]:
    """The ``eval.*`` keys given on the command line (dotted below ``eval``) with their values as given: what
    replaces the job's. Read from the overrides, not the composed config: Hydra merges a mapping given on the command
    line into configs/eval/default.yaml's, so 'eval.strategies={standard:[null]}' came back as the whole default grid
    (35 strategy settings for one asked: minutes per re-evaluation), and a dotted key was dropped."""
    parsed = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    if any(o.key_or_group == "eval" for o in parsed):  # a group choice would only change the unused default
        raise ValueError("icl.evaluate keeps the job's eval settings: give eval.KEY=… to replace one, or "
                         "strategies_from=NAME for the strategies of configs/eval/NAME.yaml (not eval=NAME)")
    found = {o.key_or_group.removeprefix("eval."): DELETED if o.is_delete() else o.value() for o in parsed
             if o.key_or_group.startswith("eval.")}
    if "strategies" in found and (found["strategies"] is DELETED or not found["strategies"]):
        raise ValueError("eval.strategies must name at least one strategy, e.g. 'eval.strategies={standard:[null]}'")
    return found


def apply_eval_overrides(job_eval: DictConfig, overrides: dict[str, Any]) -> None:
    """Set (or, for '~eval.KEY', delete) each dotted key in the job's saved ``eval``, a mapping merged key by key."""
    for key, value in overrides.items():
        if value is DELETED:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(job_eval, parent) if parent else job_eval
            if isinstance(node, DictConfig):
                node.pop(leaf, None)
        else:
            OmegaConf.update(job_eval, key, value, merge=True)


@hydra.main(version_base="1.3", config_path=HYDRA_CONFIGS, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Re-evaluate a job, holding its folder's lock (and ``out_dir``'s): a job still training is refused in one
    line naming its process, rather than read mid-write."""
    if not cfg.run_dir:
        log.error("pass the job folder to evaluate: python -m icl.evaluate run_dir=outputs/<date>/<time>")
        raise SystemExit(1)
    set_threads(cfg.get("threads"))
    run, out = JobDir(cfg.run_dir), JobDir(cfg.out_dir or cfg.run_dir)
    folders = [run, out] if run.is_job() else []  # not a job: load_job says so, and no .lock is left behind
    with refusals(FileNotFoundError, ValueError, JobLocked):
        if folders and holds_another_job(out, run):
            raise ValueError(f"out_dir={out.path} holds another job: pick a new folder (its results stay as they are)")
        if cfg.get("quant") is not None and folders:  # refused before a new out_dir exists
            replacing_quant(cfg.quant, OmegaConf.select(run.load_config(), "quant"), same_folder(run, out))
        overrides = eval_overrides()  # a bad one is refused before a new out_dir exists, too
        out.path.mkdir(parents=True, exist_ok=True) if folders else None  # a new out_dir is locked as well
        with locked(*folders):
            reevaluate(cfg, overrides)


def evaluated_from(job: JobDir) -> str | None:
    """The job a re-evaluation folder scored (None for a job that trained its own model)."""
    return (job.status().get("metrics") or {}).get("evaluated_from")


def same_folder(run: JobDir, out: JobDir) -> bool:
    return same_path(out.path, run.path)


def same_path(a: str | Path, b: str | Path) -> bool:
    """One folder however it is written: relative or absolute, with ``.``/``..``, a trailing slash or a symlink."""
    return Path(a).resolve() == Path(b).resolve()


def holds_another_job(out: JobDir, run: JobDir) -> bool:
    """``out_dir`` is a job folder other than ``run_dir`` and other than an earlier re-evaluation of it."""
    if same_folder(run, out) or not out.is_job():
        return False
    source = evaluated_from(out)
    return source is None or not same_path(source, run.path)


@contextmanager
def locked(*jobs: JobDir) -> Iterator[None]:
    """Hold the lock of every distinct existing folder in ``jobs`` (never waits: ``JobLocked`` if one is held;
    a folder that does not exist is left uncreated, for the caller's own error)."""
    with ExitStack() as stack:
        for path in dict.fromkeys(job.path.resolve() for job in jobs if job.path.is_dir()):
            stack.enter_context(JobDir(path).lock("re-evaluation (icl.evaluate)"))
        yield


def reevaluate(cfg: DictConfig, overrides: dict[str, Any]) -> None:
    """Score ``run_dir``'s model with its saved settings (``overrides``: the ``eval.*`` keys on the command line,
    replacing them)."""
    job_cfg, module = load_job(JobDir(cfg.run_dir), cfg.ckpt)
    overrides = dict(overrides)
    strategies = overrides.pop("strategies", None)
    if cfg.get("strategies_from"):  # e.g. `default`: an older job evaluated on today's full strategy grid
        strategies = OmegaConf.load(CONFIG_DIR / "eval" / f"{cfg.strategies_from}.yaml").strategies
    job_cfg.logger = None  # re-evaluation logs to no tracker: the job's need not be installed here
    if strategies is not None:  # replaced, not merged key by key
        job_cfg.eval.strategies = strategies
    apply_eval_overrides(job_cfg.eval, overrides)  # eval.n_prompts=…, eval.strategies.scale_x=[…], ~eval.strategies.X
    run, out = JobDir(cfg.run_dir), JobDir(cfg.out_dir or cfg.run_dir)
    if cfg.get("quant") is not None:
        job_cfg.quant = replacing_quant(cfg.quant, OmegaConf.select(job_cfg, "quant"), same_folder(run, out))
    if not same_folder(run, out):
        job_cfg.paths.output_dir = str(out.path)
    spec = JobSpec.from_config(job_cfg)  # the one parse of the (re-evaluated) job's config
    if same_folder(run, out):
        df = evaluate_job(spec, quantize_job(spec, module.model, out), out)
    else:  # a folder of its own: self-describing (config, status) like any job, so figures and tuning can read it
        out.write_config(job_cfg, hydra_copy=True)
        with out.lifecycle() as metrics:
            df = evaluate_job(spec, quantize_job(spec, module.model, out), out)
            metrics.update(evaluated_from=str(run.path), error_at_2d=error_at_2d(df), threads=torch.get_num_threads())
            same = not overrides and strategies is None and cfg.ckpt == "last"  # another checkpoint: another model
            if same and (fp := (run.status().get("metrics") or {}).get("fingerprint")):
                metrics.update(fingerprint=fp)  # the same model on the same prompts: a sweep takes it once, not twice
    print(summary_line(df))


def replacing_quant(quant: DictConfig, job_quant: DictConfig, in_place: bool) -> DictConfig:
    """``quant=MODE`` on the command line: a post-training mode for the job's trained float model, evaluated into a
    folder of its own (the job's own eval.csv and quant.json stay those of its mode)."""
    job_quant = job_quant if job_quant is not None else OmegaConf.create({"name": "none"})  # jobs from before quant=
    mode, trained = (QuantSpec.from_config(OmegaConf.to_container(q)) for q in (quant, job_quant))
    if mode.mode.stage == "qat":
        raise ValueError(f"quant={mode.name} acts during training: train with it (python -m icl.train "
                         f"quant={mode.name}); icl.evaluate applies post-training modes only")
    if trained.mode.stage == "qat":
        raise ValueError(f"the job was trained with quant={trained.name}: its model is the fake-quantised one, not a "
                         "float model to quantise again; evaluate a float job (quant=none or a post-training mode)")
    if in_place:
        raise ValueError(f"quant={mode.name} evaluates into a job of its own: pass out_dir=<new folder>")
    return quant


def cli() -> None:
    """Console script ``icl-evaluate``."""
    run_cli(main)


if __name__ == "__main__":
    cli()
