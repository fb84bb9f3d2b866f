"""icl.analysis.figures: figures, summary tables, the no-results message and the Hydra entry point."""

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

from icl.analysis.figures import _variant_styles, make_figures
from icl.analysis.styles import ATTN_COLORS, attn_color

REPO = Path(__file__).resolve().parents[1]


def make_job(folder: Path, task: str, n_dims: int, seed: int = 0, metric: str = "squared_error",
             attn: str = "softmax", quant: str = "none", strategies: bool = False, old: bool = False) -> Path:
    """A finished job following the contract: .hydra/config.yaml, eval.csv (+ errors.npz), status.json."""
    cfg = {"task": {"name": task, "n_dims": n_dims}, "model": {"name": "tiny"}, "attn": {"name": attn},
           "quant": {"name": quant}, "seed": seed, "experiment": None, "trainer": {"max_steps": 10}}
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), folder / ".hydra" / "config.yaml")
    ks = np.arange(0, 2 * n_dims + 3)
    worse = 0.1 if attn != "softmax" else 0.0
    runs = [("standard", np.nan)]
    if strategies:
        runs += [("scale_x", c) for c in (0.5, 1.0, 2.0)] + [("shift_x", r) for r in (0.0, 1.0)]
        runs += [("orthogonal_query", np.nan)]
    frames, arrays = [], {}
    for strategy, param in runs:
        bump = 0.0 if np.isnan(param) else abs(np.log2(param + 1e-9 if strategy == "scale_x" else 2 ** param)) * 0.1
        for predictor, kind, err in [("transformer", "transformer", np.exp(-ks / n_dims) + 0.02 * seed + worse + bump),
                                     ("zero", "baseline", np.ones(len(ks))),
                                     ("least_squares", "baseline", np.where(ks < n_dims, np.nan, 0.05)),
                                     ("averaging", "baseline", 1 / (1 + 0.2 * ks))]:
            frames.append(pd.DataFrame({
                "task": task, "attn": attn, "quant": quant, "model": "tiny", "seed": seed,
                "strategy": strategy, "param": param, "k": ks, "predictor": predictor, "kind": kind,
                "metric": metric, "error": err, "ci_low": err * 0.9, "ci_high": err * 1.1, "error_raw": err,
                "error_per_dim": err / n_dims, "n_dims": n_dims, "n_prompts": 32}))
        key = f"{strategy}/{'' if np.isnan(param) else repr(float(param))}"
        zero = np.linspace(0.5, 1.5, 32 * len(ks)).reshape(32, len(ks)).astype(np.float32)
        arrays[f"{key}/zero"] = zero
        arrays[f"{key}/transformer"] = (zero * (np.exp(-ks / n_dims) + worse)).astype(np.float32)
    df = pd.concat(frames)
    if old:  # the eval.csv of jobs before strategies existed
        df = df.drop(columns=["param", "error_per_dim"]).assign(scale=1.0)
    df.to_csv(folder / "eval.csv", index=False)
    with open(folder / "errors.npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    (folder / "status.json").write_text(json.dumps({"status": "done", "error": None}))
    return folder


@pytest.fixture()
def jobs(tmp_path: Path) -> Path:
    make_job(tmp_path / "outputs" / "2026-11-23" / "10-00-00", "linear", 3, seed=0, strategies=True)
    make_job(tmp_path / "outputs" / "2026-11-23" / "10-05-00", "linear", 3, seed=1, strategies=True)
    make_job(tmp_path / "outputs" / "2026-11-23" / "10-07-00", "linear", 3, seed=0, attn="relu", strategies=True)
    make_job(tmp_path / "outputs" / "2026-11-23" / "10-08-00", "linear", 3, seed=0, quant="int8_weight")
    make_job(tmp_path / "outputs" / "2026-11-23" / "10-09-00", "linear", 5, seed=0, old=True)
    make_job(tmp_path / "outputs" / "2026-11-24" / "x" / "0", "sign", 4, metric="error_rate")
    return tmp_path


def test_make_figures_writes_every_figure_and_table(jobs: Path) -> None:
    out = jobs / "figs"
    written = make_figures([jobs / "outputs", jobs / "multirun"], out, scale_ks=(2, 4, 99))
    stems = ["error_vs_k_linear", "error_vs_k_sign", "error_vs_k_linear_scale_x", "error_vs_k_linear_shift_x",
             "error_vs_k_linear_orthogonal_query", "error_vs_scale_linear_scale_x", "error_vs_scale_linear_shift_x"]
    for stem in stems:
        for fmt in ("png", "pdf"):
            path = out / f"{stem}.{fmt}"
            assert path in written and path.stat().st_size > 1000, path
    assert sorted(p.name for p in out.glob("*.tmp")) == []
    for table in ("summary.csv", "summary.md", "paired.csv", "jobs.csv"):
        assert out / table in written
    assert len(pd.read_csv(out / "jobs.csv")) == 6


def test_summary_errors_cis_and_paired_differences(jobs: Path) -> None:
    out = jobs / "figs"
    make_figures([jobs / "outputs"], out, formats=("png",))
    summary = pd.read_csv(out / "summary.csv")
    # linear d=3: softmax (2 seeds), relu, int8_weight; linear d=5; sign d=4; each + 3 baselines
    assert len(summary[summary.kind == "transformer"]) == 5 and len(summary[summary.kind == "baseline"]) == 9
    soft = summary[(summary.task == "linear") & (summary.n_dims == 3) & (summary.attn == "softmax")
                   & (summary.quant == "none") & (summary.kind == "transformer")].iloc[0]
    assert soft.n_runs == 2 and (soft.k_half, soft.k_d, soft.k_2d, soft.k_last) == (1, 3, 6, 8)
    assert soft.error_at_d == pytest.approx(np.exp(-1) + 0.01)  # mean over the two seeds
    assert soft.ci_low_at_d == pytest.approx(0.9 * soft.error_at_d) and np.isnan(soft.diff_at_d)
    relu = summary[(summary.attn == "relu") & (summary.kind == "transformer")].iloc[0]
    assert relu.diff_at_d == pytest.approx(0.1, rel=1e-4)  # paired to softmax seed 0 through errors.npz
    paired = pd.read_csv(out / "paired.csv")
    assert set(zip(paired.attn, paired.quant)) == {("relu", "none"), ("softmax", "int8_weight")}
    assert {"standard", "scale_x", "shift_x"} <= set(paired[paired.attn == "relu"].strategy)
    assert (summary["error_at_last"] < 5).all()
    md = (out / "summary.md").read_text()
    assert "| linear | 3 | tiny · relu · none |" in md and "Δ +0.100" in md


def test_broken_and_unfinished_jobs_are_listed_and_skipped(jobs: Path, capsys) -> None:
    out = jobs / "figs"
    make_figures([jobs / "outputs"], out, formats=("png",))
    before = (out / "error_vs_k_linear.png").read_bytes()
    root = jobs / "outputs" / "2026-11-25"
    failed = make_job(root / "failed", "linear", 3, seed=5)
    (failed / "status.json").write_text(json.dumps({"status": "failed", "error": "FloatingPointError: NaN loss"}))
    running = make_job(root / "running", "linear", 3, seed=6)
    (running / "status.json").write_text(json.dumps({"status": "running"}))
    (make_job(root / "missing", "linear", 3, seed=7) / "eval.csv").unlink()
    (make_job(root / "missing" / "x", "linear", 3, seed=7) / "status.json").unlink()
    (root / "missing" / "x" / "eval.csv").unlink()
    corrupt = make_job(root / "corrupt", "linear", 3, seed=8)
    (corrupt / "eval.csv").write_text((corrupt / "eval.csv").read_text()[:300])
    capsys.readouterr()
    make_figures([jobs / "outputs"], out, formats=("png",))
    text = capsys.readouterr().out
    assert f"not aggregated: {failed.resolve()} (failed: FloatingPointError: NaN loss)" in text
    assert f"{running.resolve()} (interrupted: status.json says running but no process holds" in text  # died
    assert "incomplete" in text
    assert f"{corrupt.resolve()} (done, but its eval.csv is unreadable)" in text
    assert "6 of 11 jobs aggregated" in text
    assert (out / "error_vs_k_linear.png").read_bytes() == before  # the same jobs went in


def test_one_colour_per_attention_and_style_per_quant_in_every_figure() -> None:
    a = pd.DataFrame({"variant": ["tiny · softmax · none", "tiny · relu · int8_weight"], "attn": ["softmax", "relu"],
                      "quant": ["none", "int8_weight"]})
    b = pd.DataFrame({"variant": ["tiny · relu · none", "small · softmax · none", "tiny · softmax · none"],
                      "attn": ["relu", "softmax", "softmax"], "quant": ["none", "none", "none"]})
    sa, sb = _variant_styles(a), _variant_styles(b)
    assert sa["tiny · softmax · none"]["color"] == sb["tiny · softmax · none"]["color"] == attn_color("softmax")
    assert sa["tiny · relu · int8_weight"]["color"] == sb["tiny · relu · none"]["color"]
    assert sa["tiny · relu · int8_weight"]["dashes"] != sb["tiny · relu · none"]["dashes"]
    assert sb["small · softmax · none"]["marker"] != sb["tiny · softmax · none"]["marker"]  # told apart
    colours = [attn_color(n) for n in ATTN_COLORS] + [attn_color("my_new_kernel")]
    assert len(set(colours)) == len(colours)
    assert all(not np.allclose(c, c[0]) for c in colours)  # no greys: those are the baselines'


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


def test_drawing_in_processes_writes_the_same_files_as_one_process(jobs: Path, monkeypatch) -> None:
    """Forked drawing workers (make figures on a sweep) give the same files, listed in the same order."""
    import icl.analysis.figures as figures

    runs = {}
    for workers in (1, 3):
        monkeypatch.setattr(figures, "drawing_workers", lambda workers=workers: workers)
        out = jobs / f"figs{workers}"
        written = make_figures([jobs / "outputs"], out, formats=("png",), scale_ks=(2, 4))
        runs[workers] = ([p.name for p in written], {p.name: p.read_bytes() for p in out.glob("*.png")})
    assert runs[1][0] == runs[3][0]
    assert runs[1][1] == runs[3][1] and len(runs[1][1]) >= 5
