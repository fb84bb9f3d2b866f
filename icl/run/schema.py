"""The training config's schema: a typo'd key or an impossible value fails before any compute, in one line.

``validate(cfg)`` merges the composed config into the structured schema below (``OmegaConf.structured``), so
an unknown key anywhere in a fixed-shape group (top level, ``data``, ``optim``, ``paths``, ``task``'s own keys,
``task.curriculum``) is rejected with its full dotted name, and a wrongly typed value names its key. ``trainer``
keys are checked against ``lightning.Trainer``'s signature, ``model`` keys against ``icl.module.MODEL_KEYS``. Free-form groups are
checked by the code that reads them: ``attn`` (the kernel's constructor), ``quant`` (``QuantSpec``), ``eval``
(``EvalConfig``), ``task.params`` (the task class), ``callbacks``/``logger`` (instantiated by Hydra).
Then the values no type can express: learning rate > 0, at least one layer, sparsity <= d, …
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException


@dataclass
class Stage:
    start: int = MISSING
    end: int = MISSING
    inc: int = 1
    interval: int = 2000


@dataclass
class CurriculumSchema:
    dims: Stage = field(default_factory=Stage)
    points: Stage = field(default_factory=Stage)


@dataclass
class TaskSchema:
    name: str = MISSING
    n_dims: int = MISSING
    params: Optional[dict[str, Any]] = None  # checked by the task class (icl/tasks.py)
    num_tasks: Optional[int] = None
    num_training_examples: Optional[int] = None
    curriculum: CurriculumSchema = field(default_factory=CurriculumSchema)
    baselines: list[str] = field(default_factory=list)


# The schema holds types, not defaults: every default is written once, in configs/ (train.yaml and its groups).
@dataclass
class DataSchema:
    batch_size: int = MISSING
    num_workers: int = MISSING


@dataclass
class OptimSchema:  # the keys ICLModule reads (icl.module.OPTIM_KEYS; a test keeps the two equal)
    lr: float = MISSING
    weight_decay: float = MISSING
    schedule: str = MISSING
    warmup_steps: int = MISSING


@dataclass
class PathsSchema:
    root_dir: str = MISSING
    output_dir: str = MISSING
    store: Optional[str] = MISSING


@dataclass
class TrainSchema:
    """``configs/train.yaml`` and its groups."""

    task: TaskSchema = field(default_factory=TaskSchema)
    model: Any = None  # keys checked against icl.module.MODEL_KEYS (one list for the code and the schema)
    data: DataSchema = field(default_factory=DataSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)
    paths: PathsSchema = field(default_factory=PathsSchema)
    attn: Any = None
    quant: Any = None
    trainer: Any = None
    callbacks: Any = None
    logger: Any = None
    eval: Any = None
    experiment: Optional[str] = None
    recipe: Any = None  # configs/recipe/*.yaml: a per-variant table; the keys it sets are checked where they land
    tune: Any = None  # configs/tune/*.yaml: the Optuna search space and reporting seed (checked by icl.run.tune)
    seed: int = 0
    threads: Optional[int] = None  # torch threads per job (null: cores / parallel jobs of the launcher, see icl/train.py)
    ckpt_path: Optional[str] = None
    skip_done: bool = False  # a rerun returns at once from a job done with the same config (icl.run.train.finished)


def _one_line(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or "?"
    message = str(err).splitlines()[0]
    if isinstance(err, ConfigKeyError):
        return f"unknown config key '{key}': check its spelling (see configs/ and icl/schema.py for the known keys)"
    return f"config key '{key}': {message}"


def check_keys(cfg: DictConfig) -> None:
    """Merge into the schema: unknown keys and wrong types raise ``ValueError`` with the full dotted key."""
    try:
        OmegaConf.merge(OmegaConf.structured(TrainSchema), cfg)
    except OmegaConfBaseException as err:
        raise ValueError(_one_line(err)) from None
    check_trainer_keys(cfg.get("trainer") or {})
    check_model_keys(cfg.get("model") or {})


def check_model_keys(model: DictConfig | dict) -> None:
    from icl.module import MODEL_KEYS

    unknown = sorted(set(model) - {"name", *MODEL_KEYS})
    if unknown:
        raise ValueError(f"unknown config key 'model.{unknown[0]}': known model keys are "
                         f"{', '.join(['name', *MODEL_KEYS])}")


def check_trainer_keys(trainer: DictConfig | dict) -> None:
    import lightning

    known = set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(trainer) - known - {"_target_"})
    if unknown:
        raise ValueError(f"unknown config key 'trainer.{unknown[0]}': not an argument of lightning.Trainer "
                         "(see its docs for the allowed ones)")


def _require(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{key}={value} is not allowed: {allowed}")


def check_values(cfg: dict[str, Any]) -> None:
    """Impossible values, as a resolved container: one ``ValueError`` line naming the key and what is allowed."""
    optim, model, data, task = cfg["optim"], cfg["model"], cfg["data"], cfg["task"]
    _require(optim["lr"] > 0, "optim.lr", "the learning rate must be > 0", optim["lr"])
    _require(optim["weight_decay"] >= 0, "optim.weight_decay", "must be >= 0", optim["weight_decay"])
    _require(optim["warmup_steps"] >= 0, "optim.warmup_steps", "must be >= 0", optim["warmup_steps"])
    for key in ("n_layer", "n_head", "n_embd", "n_positions"):
        value = model.get(key)
        _require(isinstance(value, int) and value >= 1, f"model.{key}", "must be an integer >= 1", value)
    _require(model["n_embd"] % model["n_head"] == 0, "model.n_embd",
             f"must be a multiple of model.n_head={model['n_head']}", model["n_embd"])
    _require(0 <= model.get("dropout", 0.0) < 1, "model.dropout", "must be in [0, 1)", model["dropout"])
    _require(data["batch_size"] >= 1, "data.batch_size", "must be >= 1", data["batch_size"])
    _require(data["num_workers"] >= 0, "data.num_workers", "must be >= 0", data["num_workers"])
    _require(cfg.get("threads") is None or cfg["threads"] >= 1, "threads", "must be >= 1 or null", cfg.get("threads"))
    check_task_params(task)


def check_task_params(task: dict[str, Any]) -> None:
    """Task parameters whose ranges the task classes do not check themselves."""
    params, d = task.get("params") or {}, task["n_dims"]
    if "sparsity" in params:
        _require(1 <= params["sparsity"] <= d, "task.params.sparsity",
                 f"must be in 1..task.n_dims={d} (non-zero coordinates of w)", params["sparsity"])
    for key in ("depth", "hidden", "n_trees"):
        if key in params:
            _require(params[key] >= 1, f"task.params.{key}", "must be >= 1", params[key])
    if "scale" in params and not math.isnan(params["scale"]):  # NaN is allowed: tests force a NaN loss with it
        _require(params["scale"] > 0, "task.params.scale", "must be > 0", params["scale"])
    if "noise_std" in params:
        _require(params["noise_std"] >= 0, "task.params.noise_std", "must be >= 0", params["noise_std"])


def validate(cfg: DictConfig) -> None:
    """Everything checkable from the config alone; called first in ``icl.run.train.build``."""
    check_keys(cfg)
    parts = ("optim", "model", "data", "task")  # not paths: output_dir may need Hydra's runtime resolver
    check_values({**{k: OmegaConf.to_container(cfg[k], resolve=True) for k in parts}, "threads": cfg.get("threads")})
