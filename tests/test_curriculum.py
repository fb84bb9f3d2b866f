"""Curriculum schedule and the seeded, resumable prompt stream."""

import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from icl.curriculum import Curriculum, Stage
from icl.data import PromptDataModule, PromptStream

TASK = {"name": "linear", "n_dims": 20, "params": {}, "num_tasks": None, "num_training_examples": None,
        "curriculum": {"dims": {"start": 5, "end": 20, "inc": 1, "interval": 2000},
                       "points": {"start": 11, "end": 41, "inc": 2, "interval": 2000}}}


def test_garg_schedule():
    cur = Curriculum.from_config(TASK["curriculum"])
    expected = {0: (5, 11), 1999: (5, 11), 2000: (6, 13), 10_000: (10, 21), 30_000: (20, 41), 500_000: (20, 41)}
    for step, (dims, points) in expected.items():
        cur.step = step
        assert (cur.n_dims, cur.n_points) == (dims, points)


def test_state_dict_round_trip():
    cur = Curriculum.from_config(TASK["curriculum"])
    cur.step = 4321
    other = Curriculum.from_config(TASK["curriculum"])
    other.load_state_dict(cur.state_dict())
    assert other.state_dict() == cur.state_dict() and cur.state_dict()["n_dims"] == 7


def test_bad_stage():
    with pytest.raises(ValueError, match="start <= end"):
        Stage(start=10, end=5)
    with pytest.raises(ValueError, match=r"task.curriculum.dims: .*start=5, end=4"):
        Curriculum.from_config({"dims": {"start": 5, "end": 4}, "points": {"start": 1, "end": 2}})
    with pytest.raises(ValueError, match="task.curriculum.points: .*unexpected keyword argument 'stop'"):
        Curriculum.from_config({"dims": {"start": 1, "end": 4}, "points": {"start": 1, "stop": 2}})


def _stream(start=0):
    dm = PromptDataModule.from_config(TASK, batch_size=4, seed=7)
    return PromptStream(dm.sampler, dm.curriculum, 4, seed=7, start_step=start)


def test_stream_follows_curriculum_and_resumes_exactly():
    batches = list(itertools.islice(iter(_stream()), 3))
    assert [b["step"] for b in batches] == [0, 1, 2]
    assert batches[0]["xs"].shape == (4, 11, 20) and torch.all(batches[0]["xs"][..., 5:] == 0)
    resumed = next(iter(_stream(start=2)))
    torch.testing.assert_close(resumed["xs"], batches[2]["xs"])
    later = _stream().batch_at(2000)
    assert later["xs"].shape[1] == 13 and later["n_dims"] == 6


def test_workers_split_steps_in_order():
    loader = DataLoader(_stream(), batch_size=None, num_workers=2)
    got = [b["step"] for b in itertools.islice(iter(loader), 6)]
    assert got == [0, 1, 2, 3, 4, 5]


def test_datamodule_checks_dims_and_saves_curriculum():
    bad = {**TASK, "curriculum": {**TASK["curriculum"], "dims": {"start": 5, "end": 25}}}
    with pytest.raises(ValueError, match="task.n_dims"):
        PromptDataModule.from_config(bad)
    dm = PromptDataModule.from_config(TASK)
    dm.load_state_dict({"curriculum": {"step": 6000}})
    assert dm.step == 6000 and dm.state_dict()["curriculum"]["n_points"] == 17
    assert next(iter(dm.train_dataloader()))["step"] == 6000
