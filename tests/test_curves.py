"""Training-curve figures (icl.curves) from a synthetic set of job folders, through `make figures`."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from icl.analysis.curves import curve_figures, diagnostic_columns, load_curves
from icl.analysis.figures import make_figures
from tests.test_figures import make_job

REPO = Path(__file__).resolve().parents[1]


def add_metrics(job: Path, attn: str, learns: bool, diagnostics: bool = True, steps: int = 400) -> None:
    """A metrics.csv as Lightning's CSV logger writes it: loss rows every 10 steps, diag rows every 50."""
    step = np.arange(0, steps, 10)
    loss = np.exp(-step / 100) if learns else np.ones(len(step))
    rows = pd.DataFrame({"step": step, "train/loss_rel_zero": loss, "train/loss": 5 * loss})
    if diagnostics:
        diag = pd.DataFrame({"step": np.arange(0, steps, 50)})
        for layer in (0, 1):
            diag[f"diag/attn_ratio/l{layer}"] = 0.5 if learns else 1e-3
            diag[f"diag/score_std/l{layer}"] = 0.03
            if attn == "relu":
                diag[f"diag/frac_positive/l{layer}"] = 0.5
        diag["diag/grad_norm"] = 1.0
        rows = pd.concat([rows, diag], ignore_index=True)
    rows.to_csv(job / "metrics.csv", index=False)


def sweep(root: Path) -> Path:
    for i, (task, attn, learns) in enumerate([("linear", "softmax", True), ("linear", "relu", False),
                                              ("sparse_linear", "relu", True)]):
        job = make_job(root / str(i), task, 5, attn=attn)
        OmegaConf.save(OmegaConf.load(job / ".hydra" / "config.yaml"), job / "config.yaml")
        add_metrics(job, attn, learns)
    make_job(root / "no_metrics", "linear", 5, attn="linear")  # a reused model: no metrics.csv, skipped
    return root


def test_load_curves_reads_every_job_with_metrics(tmp_path):
    df = load_curves([sweep(tmp_path)])
    assert df["run_dir"].nunique() == 3 and set(df["attn"]) == {"softmax", "relu"}
    assert set(df["task"]) == {"linear", "sparse_linear"}
    stats = diagnostic_columns(df)
    assert list(stats) == ["attn_ratio", "score_std", "frac_positive", "grad_norm"]
    assert stats["attn_ratio"] == ["diag/attn_ratio/l0", "diag/attn_ratio/l1"]


def test_make_figures_writes_the_training_curves(tmp_path):
    written = {p.name for p in make_figures([sweep(tmp_path / "jobs")], tmp_path / "fig", formats=("png",))}
    assert {"training_curves.png", "training_diagnostics.png", "error_vs_k_linear.png"} <= written
    assert (tmp_path / "fig" / "training_curves.png").stat().st_size > 10_000


def test_curves_without_diagnostics_draw_the_loss_only(tmp_path):
    job = make_job(tmp_path / "0", "linear", 5)
    add_metrics(job, "softmax", True, diagnostics=False)
    assert list(curve_figures([tmp_path])) == ["training_curves"]
    assert curve_figures([tmp_path / "nothing"]) == {}


def test_curves_never_import_torch(tmp_path):
    sweep(tmp_path)
    code = ("import sys; from icl.analysis.curves import curve_figures; "
            f"assert len(curve_figures([{str(tmp_path)!r}])) == 2; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
