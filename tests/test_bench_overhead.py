"""The job's training step vs the bare loop: the job trains exactly the bare loop's arithmetic, and the benchmark
part runs at toy size (speed is not asserted)."""

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch import Callback

from icl.bench.latency import run
from icl.bench.overhead import BareLoop, clip_value, job_config
from icl.data import PromptStream
from icl.module import make_optimizer
from icl.run.configs import CONFIG_DIR
from icl.run.train import build, make_trainer
from icl.transformer import ICLTransformer, TransformerConfig

# The smoke job at toy size: its callbacks (diagnostics record at step 0), logger and schedule as configured.
TOY = ["experiment=smoke", "data.batch_size=8", "model.n_layer=2", "trainer.max_steps=6",
       "trainer.log_every_n_steps=2", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
       "optim.warmup_steps=2"]


def overrides_arg(overrides: list[str]) -> str:
    """``overhead.overrides`` on the command line: items with ``=`` are quoted in Hydra's list grammar."""
    return "overhead.overrides=[" + ",".join(f"'{o}'" for o in overrides) + "]"


@pytest.mark.parametrize(("attn", "extra", "clips"), [("softmax", ["trainer.gradient_clip_val=null"], False),
                                                     ("relu", [], True)])  # both paths: with and without clipping
def test_job_trains_exactly_the_bare_loop(tmp_path, attn, extra, clips):
    cfg = job_config([*TOY, f"attn={attn}", *extra], tmp_path)
    torch.manual_seed(0)
    datamodule, module = build(cfg)
    bare = BareLoop(module, datamodule, int(cfg.trainer.max_steps), clip_value(cfg))
    assert (clip_value(cfg) is not None) == clips
    make_trainer(cfg).fit(module, datamodule=datamodule)
    bare.run(int(cfg.trainer.max_steps))
    trained, reference = dict(module.model.named_parameters()), dict(bare.model.named_parameters())
    assert trained.keys() == reference.keys()
    for name, value in trained.items():
        assert not torch.equal(value, bare.initial[name]), name  # it trained
        assert torch.equal(value, reference[name]), name


def test_overhead_part_runs_at_toy_size(tmp_path):
    overrides = ["parts=[overhead]", f"out_dir={tmp_path}", "n_boot=100", "threads=1", "peak_size=256",
                 overrides_arg([*TOY[:-3], "trainer.max_steps=20"]), "overhead.steps_per_round=2", "overhead.rounds=3",
                 "overhead.profile_steps=3"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=overrides)
    df = run(cfg)
    rows = df[df.part == "overhead"].set_index("impl")
    assert set(rows.index) == {"job", "bare"} and (rows.median_ms > 0).all()
    assert (rows.rounds == 3).all()  # the warm-up round dropped, every timed round complete
    assert rows.loc["job", "ratio_ci_low"] <= rows.loc["job", "ratio"] <= rows.loc["job", "ratio_ci_high"]
    assert len(pd.read_csv(tmp_path / "bench.csv")) == 2
    text = (tmp_path / "bench.md").read_text()
    assert "job / bare" in text and "training_step" in text  # the profile of the job's step
    assert "run_backward" in (tmp_path / "profile_overhead_cprofile.txt").read_text()


@pytest.mark.parametrize("override, message", [
    ("overhead.clock=cpu", "overhead.clock must be one of wall, process"),
    ("overhead.rounds=0", "overhead.rounds must be an integer >= 1"),
    (overrides_arg(["experiment=smoke", "trainer.max_steps=50"]), r"trainer.max_steps \(50\) is below the 321 steps")])
def test_overhead_bad_settings_are_one_line(tmp_path, override, message):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=["parts=[overhead]", f"out_dir={tmp_path}", "peak_size=64", override])
    with pytest.raises(ValueError, match=message):
        run(cfg)


class LossPerStep(Callback):
    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step - 1] = float(outputs["loss"])


def test_metrics_are_logged_on_exactly_the_steps_the_logger_writes(tmp_path):
    """The module logs only where ``icl.module.logs_this_step`` (Lightning's private test) says the loggers write:
    metrics.csv still has a row with that very step's loss every ``log_every_n_steps`` steps, and the final metrics
    are the last step's. Fails loudly if Lightning renames or changes that test."""
    cfg = job_config([*TOY[:-1], "trainer.max_steps=7", "trainer.log_every_n_steps=3"], tmp_path)
    datamodule, module = build(cfg)
    losses = LossPerStep()
    trainer = make_trainer(cfg, [losses])
    trainer.fit(module, datamodule=datamodule)
    rows = pd.read_csv(tmp_path / "metrics.csv").dropna(subset=["train/loss"])
    assert rows.step.tolist() == [2, 5]
    for step, loss in zip(rows.step, rows["train/loss"]):
        assert loss == pytest.approx(losses.losses[step], rel=1e-6)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(losses.losses[6], rel=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_job_optimiser_is_plain_adams_arithmetic(weight_decay):
    """make_optimizer's multi-tensor Adam trains bit-identical parameters to the one-tensor-at-a-time loop."""
    torch.manual_seed(0)
    model = ICLTransformer(TransformerConfig(n_dims=4, n_positions=6, n_layer=2))
    xs, ys = torch.randn(16, 6, 4), torch.randn(16, 6)
    optim = {"lr": 1e-3, "weight_decay": weight_decay}
    trained = []
    for make in (lambda p: make_optimizer(p, **optim), lambda p: torch.optim.Adam(p, foreach=False, **optim)):
        copy = ICLTransformer(model.config)
        copy.load_state_dict(model.state_dict())
        opt = make(copy.parameters())
        for _ in range(5):
            opt.zero_grad()
            (copy(xs, ys) - ys).square().mean().backward()
            opt.step()
        trained.append(copy.state_dict())
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])
    assert not torch.equal(trained[0]["read_in.weight"], model.state_dict()["read_in.weight"])


def test_dataloader_yields_the_stream_as_is(tmp_path):
    datamodule, _ = build(job_config(TOY, tmp_path))
    loader = iter(datamodule.train_dataloader())
    stream = PromptStream(datamodule.sampler, datamodule.curriculum, datamodule.batch_size, datamodule.seed)
    for step in range(3):
        batch, expected = next(loader), stream.batch_at(step)
        assert batch.keys() == expected.keys()
        assert all(torch.equal(batch[k], expected[k]) if torch.is_tensor(batch[k]) else batch[k] == expected[k]
                   for k in batch)


def test_overhead_preset_composes_and_passes_the_checks():
    from icl.bench.latency import check

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=["bench=overhead"])
    check(cfg)
    assert list(cfg.parts) == ["overhead", "throughput"] and list(cfg.throughput.models) == ["tiny", "standard"]
    assert list(cfg.overhead.overrides) == ["experiment=smoke"]
