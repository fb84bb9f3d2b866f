"""The training loss's NaN/inf check reads the device only at the logging cadence, and still stops the run there,
naming the first non-finite step and the steps its check covered."""

import math

import lightning as L
import pytest
import torch

from icl.module import NonFinite
from icl.run.train import train
from tests.helpers import PoisonWeightsAt, compose_train


def test_the_first_non_finite_loss_is_kept_on_device_and_reported_at_the_check():
    watch = NonFinite()
    for step, loss in enumerate([1.0, 0.5, 0.4, 0.3]):
        watch.record(torch.tensor(loss), step)
    watch.check(3)  # all finite: nothing raised, the next check starts at 4
    for step, loss in [(4, 0.2), (5, math.nan), (6, math.inf), (7, 0.1)]:
        watch.record(torch.tensor(loss), step)
    assert watch.step.device == torch.device("cpu") and int(watch.step) == 5  # the first, not the latest
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step 5 \(found by the check of steps 4–7\)"
                                                 r": lower optim.lr"):
        watch.check(7)
    resumed = NonFinite()
    resumed.record(torch.tensor(math.inf), 40)
    with pytest.raises(FloatingPointError, match=r"loss is inf at step 40 \(found by the check of steps 40–41\)"):
        resumed.check(41)


class LastStep(L.Callback):
    def __init__(self) -> None:
        self.started = -1

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        self.started = trainer.global_step


def test_a_nan_loss_stops_training_within_the_logging_cadence(tmp_path, tiny_overrides):
    """Weights poisoned after step 4: the loss is NaN from step 5, the check at the logging cadence (every 4 steps)
    stops the run at step 7, long before max_steps."""
    cfg = compose_train([*tiny_overrides, "trainer.max_steps=40", "trainer.log_every_n_steps=4"], tmp_path)
    last = LastStep()
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step 5 \(found by the check of steps 4–7\)"):
        train(cfg, callbacks=[PoisonWeightsAt(5), last])
    assert last.started == 7
