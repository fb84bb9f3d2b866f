"""Shared trained models: one fingerprint per training config, one training per fingerprint, safe across processes."""

import json
import subprocess
import sys
import time

import pandas as pd
import pytest

from icl.run.evaluate import load_job
from icl.run.job import JobDir
from icl.run.store import Entry, claim, fingerprint
from icl.run.train import train
from tests.helpers import REPO, compose_train


def fp(tmp_path, *overrides):
    return fingerprint(compose_train(list(overrides), tmp_path))


@pytest.mark.parametrize("same", [
    "quant=int8_weight", "quant=int8_dynamic", "quant=bf16", "quant=int4_weight", "eval=quick", "eval.n_prompts=10",
    "data.num_workers=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "logger=tensorboard",
    "callbacks.model_checkpoint.every_n_train_steps=7", "paths.root_dir=/elsewhere", "threads=3"])
def test_what_cannot_change_the_weights_keeps_the_fingerprint(tmp_path, same):
    assert fp(tmp_path, same) == fp(tmp_path)


@pytest.mark.parametrize("different", [
    "quant=qat_int8", "seed=1", "task.n_dims=10", "task=sparse_linear", "task.curriculum.points.interval=500",
    "model=small", "optim.lr=3e-4", "trainer.max_steps=10", "data.batch_size=32", "trainer.gradient_clip_val=1.0"])
def test_what_changes_the_weights_changes_the_fingerprint(tmp_path, different):
    assert fp(tmp_path, different) != fp(tmp_path)


def test_qat_layers_are_part_of_the_fingerprint(tmp_path):
    assert fp(tmp_path, "quant=qat_int8", "quant.layers=[mlp]") != fp(tmp_path, "quant=qat_int8")


def test_post_training_modes_reuse_one_trained_model(tmp_path, tiny_overrides):
    store = f"paths.store={tmp_path / 'store'}"
    first = train(compose_train([*tiny_overrides, "trainer.max_steps=20", store], tmp_path / "none"))
    again = train(compose_train([*tiny_overrides, "trainer.max_steps=20", store, "quant=int8_weight"], tmp_path / "int8"))
    assert first["trained_by"] == again["trained_by"] == str(tmp_path / "none")
    assert first["fingerprint"] == again["fingerprint"] and again["train_seconds"] == 0
    assert first["train/loss"] == again["train/loss"]  # the training metrics travel with the model
    assert not (tmp_path / "int8" / "checkpoints").exists() and not (tmp_path / "int8" / "metrics.csv").exists()
    assert set(pd.read_csv(tmp_path / "int8" / "eval.csv").quant) == {"int8_weight"}
    assert json.loads((tmp_path / "int8" / "quant.json").read_text())["quantized_linears"] == 4
    (tmp_path / "int8" / ".hydra").mkdir()  # as Hydra would have written it
    (tmp_path / "int8" / ".hydra" / "config.yaml").write_text((tmp_path / "int8" / "config.yaml").read_text())
    _, module = load_job(JobDir(tmp_path / "int8"))  # `python -m icl.evaluate run_dir=<job>` finds the shared model
    assert module.model.read_out.weight.shape == (1, 64)


def test_without_a_store_every_job_trains(tmp_path, tiny_overrides):
    runs = [train(compose_train([*tiny_overrides, "trainer.max_steps=5", "paths.store=null", f"quant={q}"], tmp_path / q))
            for q in ("none", "int8_weight")]
    assert all(r["train_seconds"] > 0 and "fingerprint" not in r for r in runs)
    assert (tmp_path / "int8_weight" / "checkpoints" / "last.ckpt").is_file()


HOLD = """
import logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO)
from icl.run.store import claim
with claim(Path(sys.argv[1]), "abc", Path("job-" + sys.argv[2])) as entry:
    print("claimed", entry.done, flush=True)
    if sys.argv[2] == "crash":
        import os; os._exit(3)  # dies holding the lock, nothing published
    time.sleep(float(sys.argv[3]))
    entry.publish(lambda p: p.write_text("weights"), {"trained_by": sys.argv[2]})
    print("published", flush=True)
"""


def spawn(store, who, hold=0.0):
    return subprocess.Popen([sys.executable, "-c", HOLD, str(store), who, str(hold)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_parallel_claims_train_once(tmp_path):
    """Two processes claim one fingerprint: the second waits for the first, then finds its model published."""
    first = spawn(tmp_path, "first", hold=2.0)
    assert first.stdout.readline().strip() == "claimed False"
    second = spawn(tmp_path, "second")
    time.sleep(1.0)
    assert second.poll() is None  # blocked on the lock while the first trains
    assert first.wait(timeout=60) == 0 and second.wait(timeout=60) == 0
    assert second.stdout.read().splitlines()[0] == "claimed True"  # saw the finished model: does not train
    assert "waiting for job-first" in second.stderr.read()
    entry = Entry(tmp_path / "abc")
    assert entry.meta()["trained_by"] == "first" and entry.ckpt.read_text() == "weights"


def test_a_crashed_holder_releases_its_claim(tmp_path):
    crashed = spawn(tmp_path, "crash")
    assert crashed.wait(timeout=60) == 3
    with claim(tmp_path, "abc", tmp_path / "next") as entry:  # does not block: the OS dropped the dead lock
        assert not entry.done
        entry.publish(lambda p: p.write_text("w"), {"trained_by": "next"})
    with claim(tmp_path, "abc", tmp_path / "later") as entry:
        assert entry.done
        entry.publish(lambda p: p.write_text("other"), {"trained_by": "later"})  # never overwrites
    assert entry.meta()["trained_by"] == "next" and entry.ckpt.read_text() == "w"
