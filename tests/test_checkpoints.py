"""Resume when checkpoints are damaged: fall back to the newest readable one, or stop with one line."""

import json
import logging

import pytest
import torch

from icl.run.checkpoints import CheckpointsUnreadable, choose_resume, probe
from icl.run.train import train
from tests.helpers import TINY, CrashAt, compose_train

# the curriculum and lr move every few steps, so a resume from the wrong state ends with different weights
MOVING = [*TINY, "task.n_dims=5", "task.curriculum.dims.start=2", "task.curriculum.dims.interval=5",
          "task.curriculum.points.start=3", "task.curriculum.points.inc=1", "task.curriculum.points.interval=5",
          "optim.schedule=cosine", "optim.warmup_steps=3", "trainer.log_every_n_steps=1",
          "callbacks.model_checkpoint.every_n_train_steps=4", "trainer.max_steps=20"]


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut short


def _crashed_job(tmp_path):
    """A job that crashed after step 14: step_4, step_8, step_12 and last.ckpt (= step 12) in checkpoints/."""
    out = tmp_path / "job"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_train(MOVING, out), callbacks=[CrashAt(14)])
    return out, out / "checkpoints"


def test_unreadable_last_ckpt_resumes_from_the_newest_readable_one(tmp_path, caplog):
    straight = tmp_path / "straight"
    train(compose_train(MOVING, straight))
    out, ckpts = _crashed_job(tmp_path)
    _truncate(ckpts / "last.ckpt")
    _truncate(ckpts / "step_12.ckpt")
    with caplog.at_level(logging.WARNING, logger="icl.run.checkpoints"):
        train(compose_train(MOVING, out))
    [line] = [r.getMessage() for r in caplog.records if r.name == "icl.run.checkpoints"]
    assert "last.ckpt is unreadable (" in line and "and so are step_12.ckpt" in line
    assert "resuming from step_8.ckpt (step 8)" in line and "steps redone (metrics.csv reached step 1" in line
    assert sorted(p.name for p in ckpts.iterdir()) == [  # no -v1 copies beside the damaged files
        "last.ckpt", "last.ckpt.unreadable", "step_12.ckpt", "step_12.ckpt.unreadable", "step_16.ckpt",
        "step_20.ckpt", "step_4.ckpt", "step_8.ckpt"]
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert b["global_step"] == 20
    for key in a["state_dict"]:  # resumed from step 8, the run is the uninterrupted one
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key])
    assert json.loads((out / "status.json").read_text())["status"] == "done"


def test_no_readable_checkpoint_is_one_line_saying_what_to_delete(tmp_path):
    out, ckpts = _crashed_job(tmp_path)
    for path in ckpts.iterdir():
        _truncate(path)
    before = sorted(p.name for p in ckpts.iterdir())
    with pytest.raises(CheckpointsUnreadable) as info:
        train(compose_train(MOVING, out))
    message = str(info.value)
    assert "\n" not in message and "no readable checkpoint in" in message
    assert f"rm -r {ckpts} {out / 'metrics.csv'}" in message and "last.ckpt, step_12.ckpt, step_8.ckpt" in message
    assert sorted(p.name for p in ckpts.iterdir()) == before  # nothing renamed or deleted: the user decides
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and "no readable checkpoint" in status["error"]


def test_probe_and_choice_without_training(tmp_path):
    """The building blocks: a fresh folder resumes from nothing; a lone periodic checkpoint is used, said so."""
    assert choose_resume(tmp_path / "none") is None
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"global_step": 7, "state_dict": {}}, ckpts / "step_7.ckpt")
    (ckpts / "step_9.ckpt").write_bytes(b"not a zip")
    (ckpts / "step_9.ckpt.tmp").write_bytes(b"half a write")  # never a candidate
    assert probe(ckpts / "step_7.ckpt") == (7, None)
    assert probe(ckpts / "step_9.ckpt")[1].startswith("RuntimeError")  # torch's zip reader, in one line
    assert choose_resume(ckpts, logged_step=9) == ckpts / "step_7.ckpt"
    assert (ckpts / "step_9.ckpt.unreadable").is_file()
