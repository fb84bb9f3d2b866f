"""The job spec: the composed config parsed once, at the Hydra boundary, into one typed spec per concern.

``JobSpec.from_config(cfg)`` checks every group through the dataclass of the code it configures (``TaskSpec``,
``ModelSpec``, ``OptimSpec``, ``DataSpec``, ``EvalConfig``, ``QuantSpec``; ``paths`` and the top-level keys here;
``trainer`` keys against ``lightning.Trainer``'s signature) and the values that need two groups (prompt length vs
``model.n_positions``). A misspelt key or an impossible value is one ``ValueError`` line naming the dotted key.
The parse also builds the task (its class checks ``task.params``) and checks what this machine must provide: the
loggers installed, the quant mode applied to an untrained stand-in of the model and run (``here=False``: the config alone).
``train()`` and the evaluate CLI build it once and hand it down; ``ValidateSweep`` builds the spec of every cell
of a ``-m`` sweep before the first job starts. Free-form groups (``attn``, ``callbacks``, ``logger``, ``recipe``)
are checked by what consumes them (the kernel's constructor, Hydra's instantiate).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from icl import baselines
from icl.data import DataSpec
from icl.evaluation import EvalConfig
from icl.module import OptimSpec
from icl.quantize import QuantSpec, check_blocks
from icl.quantize import check as check_quant
from icl.run.tracking import check_trackers
from icl.spec import known_keys, require, typed_fields
from icl.tasks import TaskSpec
from icl.transformer import MODEL_KEYS, ICLTransformer, ModelSpec, TransformerConfig

log = logging.getLogger(__name__)

GROUPS = ("task", "model", "data", "optim", "paths", "attn", "quant", "trainer", "callbacks", "logger", "eval",
          "experiment", "tune", "recipe", "regime", "seed", "threads", "ckpt_path", "skip_done")


@dataclass(frozen=True)
class PathsSpec:
    """``paths``: where a job writes (``output_dir``), and the trained-model store (None: off)."""

    root_dir: str
    output_dir: str
    store: str | None


@dataclass(frozen=True)
class JobSpec:
    """One training job, checked. ``cfg`` is the composed config itself: written to the job folder, hashed by
    the trained-model store, and the source of the groups Hydra instantiates (trainer, callbacks, logger)."""

    cfg: DictConfig
    task: TaskSpec
    model: ModelSpec
    attn: dict[str, Any]
    optim: OptimSpec
    data: DataSpec
    eval: EvalConfig
    quant: QuantSpec
    paths: PathsSpec
    seed: int
    threads: int | None
    ckpt_path: str | None
    skip_done: bool
    gpu: bool  # trainer.accelerator is gpu or cuda

    @classmethod
    def from_config(cls, cfg: DictConfig, here: bool = True) -> "JobSpec":
        """Every check the config allows; ``here``: also what this machine must provide to run the job (its loggers
        installed, its quant mode running on the untrained model; a GPU job's only where a GPU is seen)."""
        known_keys({k: None for k in cfg if k != "hydra"}, GROUPS, "")
        node = lambda key: _plain(cfg, key)
        check_trainer_keys(node("trainer") or {})
        if here:
            check_loggers(node("logger") or {})
        top = {k: node(k) for k in ("seed", "threads", "ckpt_path", "skip_done")}
        for key, ok, allowed in (("seed", isinstance(top["seed"], int), "must be an integer"),
                                 ("threads", top["threads"] is None or isinstance(top["threads"], int)
                                  and top["threads"] >= 1, "must be >= 1 or null"),
                                 ("skip_done", isinstance(top["skip_done"], bool), "must be true or false")):
            require(ok, key, allowed, top[key])
        spec = cls(cfg=cfg, task=TaskSpec.from_config(node("task")), model=ModelSpec.from_config(node("model")),
                   attn=dict(node("attn") or {"name": "softmax"}), optim=OptimSpec.from_config(node("optim")),
                   data=DataSpec.from_config(node("data")), eval=EvalConfig.from_config(node("eval")),
                   quant=QuantSpec.from_config(node("quant")),
                   paths=PathsSpec(**typed_fields(PathsSpec, node("paths"), "paths")),
                   gpu=str((node("trainer") or {}).get("accelerator")) in ("gpu", "cuda"), **top)
        spec.check_prompt_length()
        task = spec.task.task  # built once, here: the task class checks task.params
        if "bayes" in spec.eval.baselines:
            baselines.bayes_predictor(task)  # a task without an exact one fails here, before training
        if spec.eval.algorithms.enabled:
            from icl.agreement import check_task

            check_task(task, spec.eval.algorithms)
        if here:
            spec.check_quant_runs()
        return spec

    @property
    def module_hparams(self) -> dict[str, Any]:
        """``ICLModule``'s keyword arguments: each concern as the plain dict its checkpoint saves (of quant, only
        what changes training)."""
        return {"task": self.task.as_dict(), "model": {"name": self.model.name, **self.model.transformer_keys()},
                "attn": dict(self.attn), "optim": asdict(self.optim), "quant": self.quant.training_part}

    def check_quant_runs(self) -> None:
        """Apply the quant mode to a stand-in of the untrained model and run it, so a mode that cannot work fails
        before training (and before a sweep launches); a GPU job parsed where no GPU is seen is checked where it runs."""
        if (self.quant.name == "none" and self.quant.blocks is None) or (self.gpu and not torch.cuda.is_available()):
            return
        check_blocks(self.quant, self.model.n_layer)
        with torch.random.fork_rng(devices=[]):  # the stand-in's initial weights must not move the job's seeded RNG
            stand_in = ICLTransformer(self.stand_in_config())
        check_quant(self.quant, stand_in, on_gpu=self.gpu, in_place=True)

    def stand_in_config(self) -> TransformerConfig:
        """The job's model with what the quant check cannot tell apart cut: the same layer types and widths, only
        as many blocks as the mixer pattern's period (or up to the last block ``quant.blocks`` names), 2 points."""
        hp = self.module_hparams
        attn = dict(hp["attn"])
        keys = {k: v for k, v in hp["model"].items() if k in MODEL_KEYS}
        period = len(keys.get("pattern") or ()) or 1
        needed = max(self.quant.blocks) + 1 if self.quant.blocks is not None else 1
        keys.update(n_layer=period * math.ceil(needed / period), n_positions=2)  # the check runs 2 points
        return TransformerConfig(n_dims=self.task.n_dims, attn=attn.pop("name"), attn_params=attn,
                                 y_dim=self.task.task.y_dim, **keys)

    @property
    def eval_points(self) -> int:
        """Points per evaluation prompt."""
        return self.eval.points(self.task.curriculum.points.end)

    def check_prompt_length(self) -> None:
        n_points = max(self.task.curriculum.points.end, self.eval_points)
        if n_points > self.model.n_positions:
            raise ValueError(f"prompts reach {n_points} points but model.n_positions is {self.model.n_positions}: "
                             "raise model.n_positions or lower task.curriculum.points.end / eval.n_points")

    def labels(self) -> dict[str, Any]:
        """The identifying columns of the job in eval.csv."""
        return {"task": self.task.name, "attn": self.attn["name"], "quant": self.quant.label, "model": self.model.name,
                "seed": self.seed}


def _plain(cfg: DictConfig, key: str) -> Any:
    """A group as plain Python values; an interpolation that cannot resolve is one line naming the key."""
    try:
        value = cfg.get(key)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except OmegaConfBaseException as err:
        raise ValueError(f"config key '{getattr(err, 'full_key', key) or key}': {str(err).splitlines()[0]}") from None


def check_trainer_keys(trainer: dict[str, Any]) -> None:
    import lightning

    known = set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(trainer) - known - {"_target_"})
    if unknown:
        raise ValueError(f"unknown config key 'trainer.{unknown[0]}': not an argument of lightning.Trainer "
                         "(see its docs for the allowed ones)")
    if trainer.get("accumulate_grad_batches", 1) != 1:
        raise ValueError("trainer.accumulate_grad_batches must be 1 (the prompt stream is keyed by optimiser step): "
                         "raise data.batch_size instead")


def check_loggers(loggers: dict[str, Any]) -> None:
    """Every logger the config names is installed (and an experiment tracker's settings are valid)."""
    if "tensorboard" in loggers and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise ValueError("logger=tensorboard needs TensorBoard: pip install -e '.[tensorboard]' (or use logger=csv)")
    check_trackers(loggers)


def validate(cfg: DictConfig) -> JobSpec:
    """The spec of a composed config checked on its own (``JobSpec.from_config``, not what this machine provides)."""
    return JobSpec.from_config(cfg, here=False)


def sweep_cells(overrides: list[str]) -> list[list[str]]:
    """The override list of every job a basic-sweeper ``-m`` run launches (its cartesian product): the one shim
    over Hydra's private ``BasicSweeper.split_arguments`` (tests/test_sweep_check.py fails if Hydra changes it)."""
    import hydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        split = BasicSweeper.split_arguments
    except (ImportError, AttributeError) as err:
        raise RuntimeError(f"hydra-core {hydra.__version__} has no BasicSweeper.split_arguments ({err}): "
                           "update icl.run.spec.sweep_cells") from None
    parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    return [cell for batch in split(parsed, None) for cell in batch]


def with_sweeper_params(overrides: list[str], params: Any) -> list[str]:
    """The command line's overrides plus the sweep a config declares (``hydra.sweeper.params``, e.g. an experiment
    file's quant modes); for a key in both the command line wins, as in Hydra's basic sweeper."""
    given = {o.split("=", 1)[0].lstrip("~+") for o in overrides}
    declared = [f"{key}={value}" for key, value in (params or {}).items() if str(key).lstrip("~+") not in given]
    return [*declared, *overrides]


class ValidateSweep(Callback):
    """Hydra callback: before a multirun launches anything, compose every cell of the sweep and build its spec,
    so a misspelt key or an impossible value fails once, in one line, before the first job (not in every job,
    after a SLURM array was submitted). It exits 1: Hydra only warns about a callback's exception. Sweepers
    other than the basic one pick their cells as they go: there the config without the sweep is checked."""

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        from hydra import compose

        overrides = with_sweeper_params(list(config.hydra.overrides.task), config.hydra.sweeper.get("params"))
        basic = str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper")
        try:
            cells = sweep_cells(overrides) if basic else [[o for o in overrides if "," not in o and "(" not in o]]
        except Exception as err:  # noqa: BLE001 - Hydra reports a bad override itself when it launches
            log.warning("sweep not checked before launch: %s", str(err).splitlines()[0])
            return
        for cell in cells:
            cfg = compose(config_name=config_name, overrides=cell)
            cfg.paths.output_dir = "<job folder>"  # Hydra's per-job folder: not known before the job runs
            try:
                JobSpec.from_config(cfg)
            except ValueError as err:  # SystemExit: Hydra turns a callback's Exception into a warning and goes on
                log.error("%s (sweep cell: %s; no job was started)", err, " ".join(cell))
                raise SystemExit(1) from None
        log.info("sweep checked: %d job config(s) valid", len(cells))
