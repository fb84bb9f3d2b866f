"""The prompt stream under data parallelism: each rank its own seeded stream, every batch a function of
(seed, rank, step) — so DDP ranks never train on the same prompts and a resumed rank continues its own stream."""

import torch

from icl.curriculum import Curriculum
from icl.data import PromptStream
from icl.tasks import PromptSampler, build_task

CURRICULUM = {"dims": {"start": 2, "end": 4, "inc": 1, "interval": 3}, "points": {"start": 3, "end": 6, "inc": 1, "interval": 3}}


def stream(rank: int, seed: int = 0, start: int = 0) -> PromptStream:
    task = build_task("linear", 4)
    sampler = PromptSampler(task, None, None, pool_seed=seed, max_points=6)
    return PromptStream(sampler, Curriculum.from_config(CURRICULUM), 8, seed=seed, rank=rank, start_step=start)


def take(s: PromptStream, n: int) -> list[torch.Tensor]:
    it = iter(s)
    return [next(it)["xs"] for _ in range(n)]


def test_ranks_get_distinct_streams_and_each_is_reproducible():
    r0, r1 = take(stream(0), 8), take(stream(1), 8)
    assert all(a.shape == b.shape and not torch.equal(a, b) for a, b in zip(r0, r1))
    assert all(torch.equal(a, b) for a, b in zip(r0, take(stream(0), 8)))
    assert not torch.equal(r0[0], take(stream(0, seed=1), 1)[0])  # and the seed changes every rank's stream


def test_a_resumed_rank_continues_its_own_stream():
    full, resumed = take(stream(1), 8), take(stream(1, start=5), 3)
    assert all(torch.equal(a, b) for a, b in zip(full[5:], resumed))
    # the curriculum at steps 5 and 7: 4 then 5 points, 3 then 4 active dims (inactive ones are zero)
    assert resumed[0].shape[1] == 4 and resumed[-1].shape[1] == 5
    assert (resumed[0][..., 3] == 0).all() and (resumed[-1][..., 3] != 0).all()
