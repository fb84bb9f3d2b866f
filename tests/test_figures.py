"""icl.figures: figures, summary tables, the no-results message and the Hydra entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from icl.figures import make_figures

REPO = Path(__file__).resolve().parents[1]


def make_job(folder: Path, task: str, n_dims: int, seed: int = 0, metric: str = "squared_error") -> Path:
    """A finished job following the contract: .hydra/config.yaml, eval.csv, status.json."""
    cfg = {"task": {"name": task, "n_dims": n_dims}, "model": {"name": "tiny"}, "attn": {"name": "softmax"},
           "quant": {"name": "none"}, "seed": seed, "experiment": None, "trainer": {"max_steps": 10}}
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), folder / ".hydra" / "config.yaml")
    ks = np.arange(0, 2 * n_dims + 3)
    frames = []
    for predictor, kind, err in [("transformer", "transformer", np.exp(-ks / n_dims) + 0.02 * seed),
                                 ("zero", "baseline", np.ones(len(ks))),
                                 ("least_squares", "baseline", np.where(ks < n_dims, np.nan, 0.05)),
                                 ("averaging", "baseline", 1 / (1 + 0.2 * ks))]:
        frames.append(pd.DataFrame({
            "task": task, "attn": "softmax", "quant": "none", "model": "tiny", "seed": seed,
            "strategy": "standard", "scale": 1.0, "k": ks, "predictor": predictor, "kind": kind, "metric": metric,
            "error": err, "ci_low": err * 0.9, "ci_high": err * 1.1, "error_raw": err, "n_dims": n_dims,
            "n_prompts": 32}))
    ood = frames[0].assign(strategy="scaled_x", scale=2.0, error=5.0)  # must not enter error-vs-k
    pd.concat([*frames, ood]).to_csv(folder / "eval.csv", index=False)
    (folder / "status.json").write_text(json.dumps({"status": "done", "error": None}))
    return folder


@pytest.fixture()
def jobs(tmp_path: Path) -> Path:
    make_job(tmp_path / "outputs" / "2026-11-23" / "10-00-00", "linear", 3, seed=0)
    make_job(tmp_path / "outputs" / "2026-11-23" / "10-05-00", "linear", 3, seed=1)
    make_job(tmp_path / "outputs" / "2026-11-23" / "10-09-00", "linear", 5, seed=0)
    make_job(tmp_path / "outputs" / "2026-11-24" / "x" / "0", "sign", 4, metric="error_rate")
    return tmp_path


def test_make_figures_writes_files_and_summary(jobs: Path) -> None:
    out = jobs / "figs"
    written = make_figures([jobs / "outputs", jobs / "multirun"], out)
    for task in ("linear", "sign"):
        for fmt in ("png", "pdf"):
            path = out / f"error_vs_k_{task}.{fmt}"
            assert path in written and path.stat().st_size > 1000
    summary = pd.read_csv(out / "summary.csv")
    # linear d=3, linear d=5, sign d=4; each with transformer + 3 baselines
    assert len(summary) == 3 * 4
    tf = summary[(summary["task"] == "linear") & (summary["n_dims"] == 3) & (summary["kind"] == "transformer")]
    assert len(tf) == 1 and tf["n_runs"].iat[0] == 2
    assert tf["k_d"].iat[0] == 3 and tf["k_2d"].iat[0] == 6 and tf["k_last"].iat[0] == 8
    assert tf["error_at_d"].iat[0] == pytest.approx(np.exp(-1) + 0.01)  # mean over the two seeds
    assert (summary["error_at_last"] < 5).all()  # OOD rows filtered out
    assert len(pd.read_csv(out / "jobs.csv")) == 4


def test_no_results_raises_helpful_systemexit(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        make_figures([tmp_path / "outputs"], tmp_path / "figs")
    message = str(exc.value)
    assert "\n" not in message and str(tmp_path / "outputs") in message
    assert "make demo" in message and "python -m icl.train" in message
    assert not (tmp_path / "figs").exists()


def test_hydra_entry_point(jobs: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "icl.figures", f"inputs=[{jobs}/outputs]", f"out_dir={jobs}/figs",
                           "formats=[png]"], cwd=jobs, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (jobs / "figs" / "error_vs_k_linear.png").stat().st_size > 1000
    assert not (jobs / "figs" / "error_vs_k_linear.pdf").exists()
    assert "wrote" in proc.stdout
    assert sorted(p.name for p in jobs.iterdir()) == ["figs", "outputs"]  # no new outputs/<date>, .hydra or logs
    assert sorted(p.name for p in (jobs / "outputs").iterdir()) == ["2026-11-23", "2026-11-24"]
