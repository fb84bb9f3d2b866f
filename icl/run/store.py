"""Trained models shared between jobs: jobs whose training-relevant config is identical train once.

``fingerprint(cfg)`` hashes what decides the trained weights: the resolved config without the parts that
cannot change them (where results go, evaluation, logging, callbacks, post-training quantisation, the
number of data-loader workers, progress-bar and log cadence), plus the torch/Lightning versions and the
source of the modules that define training (tasks, curriculum, data, attention, transformer, module;
icl/quantize.py and torchao too for QAT). Changing the code therefore retrains rather than reusing a model
the current code would not reproduce. A ``model.pos`` that names its mixers' default is hashed as the default
(null): both build the same model.

A job claims ``<paths.store>/<fingerprint>/`` with an exclusive ``fcntl.flock`` on its ``lock`` file. The
operating system drops the lock when its holder exits or dies, so a crashed trainer never blocks the others.
The holder trains in its own job folder exactly as before (resume included) and publishes a weights-only
``model.ckpt`` and then ``meta.json`` (written last, so a half-published entry is never taken for a finished
one; it records the checkpoint's size and sha256). A job that finds the entry published loads it instead of
training; one that finds the lock held waits for it, then loads. Published entries are never overwritten, but one
that fails its check under the lock (``Entry.verify``: size and checksum, or for entries published without them, a
probe of the checkpoint) is moved aside into ``<entry>/damaged-*/`` with one warning line, and the job trains and
publishes it again; the lock makes one job do so while the others wait and then load the new entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from icl.errors import first_line
from icl.files import atomic_write, sha256_file, source_hash, write_json

log = logging.getLogger(__name__)

TRAINING_SOURCES = ("icl.tasks", "icl.physics", "icl.curriculum", "icl.data", "icl.attention", "icl.mixers", "icl.scans",
                    "icl.transformer", "icl.module")
IGNORED = {  # config keys that cannot change the trained weights
    "": {"paths", "eval", "callbacks", "logger", "hydra", "experiment", "ckpt_path", "quant", "threads", "skip_done",
         "recipe"},  # the recipe table: the values it sets (optim, model, trainer) are hashed where they land
    "trainer": {"enable_progress_bar", "enable_model_summary", "log_every_n_steps", "default_root_dir"},
    "data": {"num_workers"},  # each step's batch is seeded by the step, whoever samples it
}


def _versions(qat: bool) -> dict[str, str]:
    import lightning
    import torch

    out = {"torch": torch.__version__, "lightning": lightning.__version__}
    if qat:
        from icl.quantize import torchao

        out["torchao"] = torchao().__version__
    return out


def _source_hash(qat: bool) -> str:
    return source_hash((*TRAINING_SOURCES, *(("icl.quantize", "icl.quantize_modes") if qat else ())))


def training_config(cfg: DictConfig) -> dict[str, Any]:
    """The part of the resolved config that decides the trained weights (without the ``IGNORED`` keys; of
    ``quant``, only what QAT trains with)."""
    from icl.quantize import QuantSpec

    container = OmegaConf.to_container(cfg, resolve=True)
    config = {k: v for k, v in container.items() if k not in IGNORED[""]}
    for group, keys in IGNORED.items():
        if group and isinstance(config.get(group), dict):
            config[group] = {k: v for k, v in config[group].items() if k not in keys}
    config["quant"] = QuantSpec.from_config(container.get("quant")).training_part
    _default_pos_as_null(config)
    return config


def _default_pos_as_null(config: dict[str, Any]) -> None:
    """``model.pos`` set to its mixers' default is the default (null): one model, one fingerprint, so a sweep that
    names ``pos=learned`` for softmax reuses the model a job with ``pos: null`` trained."""
    from icl.mixers import default_pos
    from icl.transformer import layer_mixers

    model, attn = config.get("model"), config.get("attn")
    if not (isinstance(model, dict) and isinstance(attn, dict) and model.get("pos") is not None):
        return
    try:
        names = layer_mixers(attn["name"], model.get("pattern"), int(model["n_layer"]))
    except ValueError:  # a config this code cannot build (an old job's renamed mixer): hashed as written
        return
    if model["pos"] == default_pos(names):
        model["pos"] = None


def training_identity(cfg: DictConfig) -> dict[str, Any]:
    """Everything the fingerprint hashes, as a plain dict (recorded in meta.json)."""
    config = training_config(cfg)
    qat = config["quant"] is not None
    return {"config": config, "versions": _versions(qat), "source": _source_hash(qat)}


def training_differences(saved: DictConfig, cfg: DictConfig) -> list[str]:
    """``key: saved → new`` for each training-relevant value (the fingerprint's rule) that differs between two
    configs. A key only one side has is skipped: an option added (or dropped) since ``saved`` was written, whose
    absence means its default, "off"."""
    return _differences(training_config(saved), training_config(cfg), "")


def _differences(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(old.keys() & new.keys(), key=str)
                for line in _differences(old[key], new[key], f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix[:-1]}: {_short(old)} → {_short(new)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def fingerprint(cfg: DictConfig) -> str:
    """16 hex digits naming the trained model this config produces."""
    identity = json.dumps(training_identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


@dataclass
class Entry:
    """One trained model in the store: ``<store>/<fingerprint>/{model.ckpt, meta.json}``."""

    dir: Path

    @property
    def ckpt(self) -> Path:
        return self.dir / "model.ckpt"

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    @property
    def done(self) -> bool:
        return self.meta_path.is_file() and self.ckpt.is_file()

    def meta(self) -> dict[str, Any]:
        return json.loads(self.meta_path.read_text())

    def publish(self, save: Callable[[Path], None], meta: dict[str, Any]) -> None:
        """``save(path)`` writes the checkpoint; both files appear atomically, meta.json last, with the
        checkpoint's size and sha256 (``file``)."""
        if self.done:
            return  # never overwrite a published model
        atomic_write(self.ckpt, save)
        write_json(self.meta_path, {**meta, "file": {"size": self.ckpt.stat().st_size, "sha256": sha256_file(self.ckpt)}})
        log.info("published the trained model as %s", self.ckpt)

    def verify(self) -> str | None:
        """None for a published entry that is whole, else why not (one phrase): meta.json unreadable, or the
        checkpoint's size or sha256 not the ones published (entries published without them: the checkpoint does
        not load)."""
        try:
            meta = self.meta()
        except (OSError, ValueError) as err:
            return f"unreadable meta.json: {first_line(err)}"
        size, expected = self.ckpt.stat().st_size, (meta.get("file") or {})
        if not expected:
            from icl.run.checkpoints import probe

            return None if (why := probe(self.ckpt)[1]) is None else f"model.ckpt does not load: {why}"
        if size != expected.get("size"):
            return f"model.ckpt has {size} bytes, published with {expected.get('size')}"
        if sha256_file(self.ckpt) != expected.get("sha256"):
            return "model.ckpt does not match the sha256 it was published with"
        return None

    def move_aside(self, why: str) -> Path:
        """Move meta.json (first: the entry is then no longer done) and model.ckpt into a new ``damaged-*``
        folder of the entry, with one warning line naming it."""
        aside = Path(tempfile.mkdtemp(prefix=f"damaged-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-", dir=self.dir))
        for path in (self.meta_path, self.ckpt):
            path.replace(aside / path.name)
        log.warning("trained-model store entry %s is damaged (%s): moved aside to %s; this job trains the model "
                    "again and republishes it", self.dir, why, aside)
        return aside


def _holder(entry_dir: Path) -> str:
    try:
        info = json.loads((entry_dir / "holder.json").read_text())
        return f"{info['job']} (pid {info['pid']} on {info['host']})"
    except (OSError, ValueError, KeyError):
        return "another job"


@contextmanager
def claim(store: Path, key: str, job: Path) -> Iterator[Entry]:
    """Hold ``<store>/<key>`` exclusively (waiting while another job holds it) and yield its entry."""
    entry = Entry(Path(store) / key)
    entry.dir.mkdir(parents=True, exist_ok=True)
    with open(entry.dir / "lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s, which is training this model (%s)", _holder(entry.dir), entry.dir)
            start = time.monotonic()
            fcntl.flock(lock, fcntl.LOCK_EX)
            log.info("done waiting (%.0f s)", time.monotonic() - start)
        try:
            if entry.done and (why := entry.verify()) is not None:
                entry.move_aside(why)
            if not entry.done:
                holder = {"job": str(job), "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
                write_json(entry.dir / "holder.json", holder)
            yield entry
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
