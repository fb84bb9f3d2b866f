"""Shared trained models: one fingerprint per training config, one training per fingerprint, safe across processes."""

import json
import logging
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


def test_a_pos_named_as_its_mixers_default_is_the_default(tmp_path):
    """softmax attends (default learned), mamba does not (default none): naming the default trains the same model."""
    assert fp(tmp_path, "model.pos=learned") == fp(tmp_path) != fp(tmp_path, "model.pos=none")
    assert fp(tmp_path, "attn=mamba", "model.pos=none") == fp(tmp_path, "attn=mamba")
    assert fp(tmp_path, "attn=mamba", "model.pos=learned") != fp(tmp_path, "attn=mamba")
    # the hybrid (mamba, softmax, softmax) ships pos=none, not its layers' default (learned): a different model
    assert fp(tmp_path, "model=hybrid") != fp(tmp_path, "model=hybrid", "model.pos=null")


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


def test_a_truncated_entry_is_moved_aside_and_the_job_retrains_and_republishes(tmp_path, tiny_overrides, caplog):
    store = f"paths.store={tmp_path / 'store'}"
    first = train(compose_train([*tiny_overrides, "trainer.max_steps=5", store], tmp_path / "a"))
    reused = train(compose_train([*tiny_overrides, "trainer.max_steps=5", store, "quant=bf16"], tmp_path / "r"))
    entry = Entry(tmp_path / "store" / first["fingerprint"])
    entry.ckpt.write_bytes(entry.ckpt.read_bytes()[:2000])  # a copy cut short
    with pytest.raises(ValueError, match=r"shared trained model .* is damaged .*rerun the training command"):
        load_job(JobDir(tmp_path / "r"))  # `icl.evaluate` of a job that used the entry: one line, what to do
    with caplog.at_level(logging.WARNING, logger="icl.run.store"):
        again = train(compose_train([*tiny_overrides, "trainer.max_steps=5", store, "quant=int8_weight"], tmp_path / "b"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(entry.dir) in warnings[0] and "moved aside" in warnings[0]
    assert again["train_seconds"] > 0 and again["trained_by"] == str(tmp_path / "b")  # retrained, republished
    assert entry.verify() is None and entry.meta()["trained_by"] == str(tmp_path / "b")
    reused = train(compose_train([*tiny_overrides, "trainer.max_steps=5", store, "quant=int8_dynamic"], tmp_path / "c"))
    assert reused["train_seconds"] == 0 and reused["trained_by"] == str(tmp_path / "b")


HEAL = """
import sys, time
from pathlib import Path
from icl.run.store import claim
with claim(Path(sys.argv[1]), "abc", Path("job-" + sys.argv[2])) as entry:
    if entry.done:
        print("loaded", entry.ckpt.read_text(), flush=True)
    else:
        time.sleep(0.5)  # training
        entry.publish(lambda p: p.write_text("weights of " + sys.argv[2]), {"trained_by": sys.argv[2]})
        print("published", flush=True)
"""


def test_two_jobs_finding_one_damaged_entry_end_with_one_good_entry(tmp_path):
    with claim(tmp_path, "abc", tmp_path / "old") as entry:
        entry.publish(lambda p: p.write_text("weights of old"), {"trained_by": "old"})
    entry.ckpt.write_text("weights of o")  # truncated on disk
    procs = [subprocess.Popen([sys.executable, "-c", HEAL, str(tmp_path), who], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for who in ("x", "y")]
    outs = [(p.communicate(timeout=60), p.returncode) for p in procs]
    assert all(rc == 0 for _, rc in outs), outs
    said = sorted(out.strip() for (out, _), _ in outs)
    assert said[1] == "published" and said[0].startswith("loaded weights of "), said  # one retrains, one loads it
    assert entry.verify() is None and entry.ckpt.read_text() == said[0].removeprefix("loaded ")
    assert sum("moved aside" in err for (_, err), _ in outs) == 1
    aside = [p for p in entry.dir.iterdir() if p.is_dir()]
    assert len(aside) == 1 and (aside[0] / "model.ckpt").read_text() == "weights of o"


def test_entries_published_before_checksums_are_probed(tmp_path):
    """meta.json without a `file` record (older entries): the checkpoint must load as a training checkpoint."""
    import torch

    good, bad = Entry(tmp_path / "good"), Entry(tmp_path / "bad")
    for entry in (good, bad):
        entry.dir.mkdir()
        entry.meta_path.write_text(json.dumps({"trained_by": "old"}))
    torch.save({"global_step": 3, "state_dict": {}}, good.ckpt)
    bad.ckpt.write_bytes(good.ckpt.read_bytes()[:100])
    assert good.verify() is None
    assert "does not load" in bad.verify()
