"""Shared helpers: compose the real configs (configs/) with overrides, as the CLI would."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from lightning.pytorch import Callback
from omegaconf import DictConfig

from icl.configs import CONFIG_DIR as CONFIGS

REPO = Path(__file__).resolve().parents[1]

# A job small enough for seconds on 2 CPU cores: linear d = 3, 6 points, 1-layer tiny model.
TINY = [
    "task.n_dims=3", "task.curriculum.dims.start=3", "task.curriculum.points.start=6",
    "task.curriculum.points.end=6", "model.n_layer=1", "data.batch_size=32", "optim.lr=3e-3",
    "eval=quick", "eval.n_prompts=64", "eval.bootstrap=50", "eval.baselines=[zero,least_squares]",
    "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]


def compose_train(overrides: list[str], out_dir: Path | None = None) -> DictConfig:
    """The composed ``train`` config with ``paths.output_dir`` pointed at ``out_dir``.

    The trained-model store defaults to ``out_dir/store`` (an override in ``overrides`` wins), so tests never
    share trained models through the repository's outputs/.
    """
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        store = [f"paths.store={out_dir / 'store'}", f"eval.cache={out_dir / 'eval_cache'}"] if out_dir else []
        extra = [f"paths.output_dir={out_dir}"] if out_dir else []
        return compose("train", overrides=[*store, *overrides, *extra])


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


class CrashAt(Callback):
    """Raise at a given step, like a pre-empted or crashed job (used through the callbacks config)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")
