"""Shared test helpers: compose the real configs (configs/) with overrides, as the CLI would; fault injection."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch import Callback
from omegaconf import DictConfig

from icl.run.configs import CONFIG_DIR as CONFIGS

REPO = Path(__file__).resolve().parents[1]

# A job small enough for seconds on 2 CPU cores: linear d = 3, 6 points, 1-layer tiny model.
TINY = [
    "task.n_dims=3", "task.curriculum.dims.start=3", "task.curriculum.points.start=6",
    "task.curriculum.points.end=6", "model.n_layer=1", "data.batch_size=32", "optim.lr=3e-3",
    "eval=quick", "eval.n_prompts=64", "eval.bootstrap=50", "eval.baselines=[zero,least_squares]",
    "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]

FAST = [*TINY, "trainer.max_steps=30", "callbacks.model_checkpoint.every_n_train_steps=30"]  # CLI tests
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``python <args>`` in ``cwd`` as a user would run it (this checkout first on the path)."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def jobs(root: Path) -> list[Path]:
    """Job folders under ``root`` (those with Hydra's config)."""
    return sorted(p.parent.parent for p in root.glob("**/.hydra/config.yaml"))


def compose_train(overrides: list[str], out_dir: Path | None = None) -> DictConfig:
    """The composed ``train`` config with ``paths.output_dir`` pointed at ``out_dir``.

    The trained-model store defaults to ``out_dir/store`` (an override in ``overrides`` wins), so tests never
    share trained models through the repository's outputs/.
    """
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        store = [f"paths.store={out_dir / 'store'}", f"eval.cache={out_dir / 'eval_cache'}"] if out_dir else []
        extra = [f"paths.output_dir={out_dir}"] if out_dir else []
        return compose("train", overrides=[*store, *overrides, *extra])


class CrashAt(Callback):
    """Raise at a given step, like a pre-empted or crashed job (``train(cfg, callbacks=[CrashAt(10)])``)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class PoisonWeightsAt(Callback):
    """Make one weight NaN after the optimiser step of ``step`` (as a diverging update would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.read_out.weight[0, 0] = float("nan")


def assert_model_causal(model: torch.nn.Module) -> None:
    """Perturbing y_i and every later x, y leaves the predictions at positions <= i unchanged (sharp weights, since
    GPT-2's 0.02 init makes attention nearly uniform)."""
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    xs, ys = torch.randn(2, 12, 4), torch.randn(2, 12)
    base = model(xs, ys)
    for i in range(11):
        xs2, ys2 = xs.clone(), ys.clone()
        ys2[:, i:] += 5 * torch.randn(2, 12 - i)
        xs2[:, i + 1:] += 5 * torch.randn(2, 11 - i, 4)
        torch.testing.assert_close(model(xs2, ys2)[:, : i + 1], base[:, : i + 1], atol=1e-5, rtol=1e-4)
