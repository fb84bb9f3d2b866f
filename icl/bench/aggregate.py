"""Aggregation at sweep scale: `make figures` over synthetic copies of one smoke job (`python -m icl.bench.aggregate`).

A study grid is attention variants × quant modes × seeds of one job, all scored on the same evaluation prompts.
This builds such a grid without training: one smoke job (experiment=smoke's config, d = 5, the default eval grid
on 1280 prompts) is evaluated once with a stand-in "transformer" (a shrunk running mean of the labels: any
predictor will do, aggregation only reads its errors), then copied to ``attn × quant × seeds`` folders whose
config and eval.csv name the variant and whose transformer errors are perturbed per job (so no two agree).
Then ``icl.figures.make_figures`` runs on the whole grid in a fresh process (wall time and peak memory from
``resource``), and ``paired_differences`` is checked against the reference implementation
(``reference_paired_bootstrap``: the counts drawn afresh per call) on the first ``check`` jobs.

    python -m icl.bench.aggregate                    # 8 attn × 3 quant × 8 seeds = 192 folders
    python -m icl.bench.aggregate seeds=2 keep=true  # 48 folders, left in place to profile
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from icl import contract
from icl.run.cli import parse

ATTNS = ("softmax", "relu", "relu_causal", "linear", "sigmoid", "performer", "nystrom", "combiner")
QUANTS = ("none", "int8_weight", "int8_dynamic")


def reference_paired_bootstrap(err: np.ndarray, ref: np.ndarray, zero: np.ndarray, n_boot: int, ci: float,
                               seed: int) -> tuple[np.ndarray, ...]:
    """``icl.stats.paired_bootstrap`` as it was before resample counts were cached (the baseline measured)."""
    valid = ~(np.isnan(err) | np.isnan(ref))
    delta = np.where(valid, err.astype(np.float64) - ref, 0.0)
    z = np.where(valid, zero.astype(np.float64), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = delta.sum(0) / z.sum(0)
        counts = np.random.default_rng(seed).multinomial(len(err), np.full(len(err), 1 / len(err)), size=n_boot)
        boots = (counts @ delta) / (counts @ z)
    alpha = (1 - ci) / 2
    low, high = np.nanquantile(boots, [alpha, 1 - alpha], axis=0) if n_boot else (point, point)
    return point, low, high, valid.sum(0)


def smoke_job(folder: Path) -> Path:
    """One evaluated smoke job: resolved config.yaml (+ .hydra/config.yaml), eval.csv, errors.npz, status.json."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from icl.run.configs import CONFIG_DIR
    from icl.run.evaluate import evaluate_job
    from icl.run.job import JobDir

    class RunningMean(torch.nn.Module):
        """Stand-in transformer: 0.9 × the mean of the labels before each position (never its own)."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.9))

        def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
            before = torch.cat([torch.zeros_like(ys[:, :1]), ys[:, :-1]], 1).cumsum(1)
            return self.scale * before / torch.arange(1, ys.shape[1] + 1)

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=smoke", f"paths.root_dir={folder}", "eval.cache=null"])
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    cfg.paths.output_dir = str(folder)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
    evaluate_job(cfg, RunningMean(), JobDir(folder))
    (folder / contract.STATUS).write_text(json.dumps({"status": "done", "error": None}))
    return folder


def copy_grid(base: Path, root: Path, seeds: int) -> list[Path]:
    """``ATTNS × QUANTS × seeds`` copies of ``base``, each naming its variant and with its own transformer errors."""
    from omegaconf import OmegaConf

    frame = pd.read_csv(base / contract.EVAL)
    with np.load(base / contract.ERRORS) as data:
        errors = {k: data[k] for k in data.files}
    cfg = OmegaConf.load(base / "config.yaml")
    jobs = []
    for j, (attn, quant, seed) in enumerate((a, q, s) for a in ATTNS for q in QUANTS for s in range(seeds)):
        job = root / f"{j:04d}"
        (job / ".hydra").mkdir(parents=True)
        cfg.attn.name, cfg.quant.name, cfg.seed = attn, quant, seed
        for name in ("config.yaml", ".hydra/config.yaml"):
            OmegaConf.save(cfg, job / name)
        factor = 1 + 0.01 * (j % 17) - 0.02 * (seed % 3)
        out = frame.assign(attn=attn, quant=quant, seed=seed)
        is_tf = out["kind"] == "transformer"
        out.loc[is_tf, ["error", "ci_low", "ci_high", "error_raw", "error_per_dim"]] *= factor
        out.to_csv(job / contract.EVAL, index=False)
        mine = {k: (v * np.float32(factor) if k.endswith("/transformer") else v) for k, v in errors.items()}
        with open(job / contract.ERRORS, "wb") as f:
            np.savez_compressed(f, **mine)
        shutil.copy(base / contract.STATUS, job / contract.STATUS)
        jobs.append(job)
    return jobs


def _pss_mb(pid: int) -> float:
    """Proportional set size of a process (pages shared with others counted by share), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def time_figures(root: Path, out: Path) -> dict[str, float]:
    """``make_figures`` on ``root`` in a fresh interpreter (as `make figures` runs): wall seconds, CPU seconds of
    it and its drawing workers, peak RSS of the main process, and the peak of the summed PSS of it and its workers
    (sampled every 0.1 s; forked workers share the parent's pages, which the sum counts once; Linux only, else 0)."""
    code = ("import resource, sys, time; t = time.perf_counter(); from icl.analysis.figures import make_figures; "
            f"make_figures([{str(root)!r}], {str(out)!r}); "
            "print('BENCH', time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_pss = 0.0
    while proc.poll() is None:
        peak_pss = max(peak_pss, sum(_pss_mb(pid) for pid in [proc.pid, *_children(proc.pid)]))
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"make_figures failed ({proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child and anything it waited for
    line = next(row for row in stdout.splitlines() if row.startswith("BENCH"))
    _, seconds, rss_kb = line.split()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": float(seconds), "cpu_s": cpu, "peak_mb": int(rss_kb) / 1024, "peak_pss_mb": peak_pss}


def time_tables(root: Path) -> dict[str, float]:
    """The per-job part of aggregation alone (results, jobs table, paired differences), in this process."""
    from icl.analysis import results

    t = time.perf_counter()
    df = results.load_results([root], cfg_columns="varying")
    results.jobs_table([root])
    loaded = time.perf_counter() - t
    paired = results.paired_differences(df)
    return {"load_s": loaded, "paired_s": time.perf_counter() - t - loaded, "paired_rows": len(paired)}


def check_paired(root: Path, jobs: int) -> float:
    """Largest |new − reference| over every paired column on the first ``jobs`` folders (0.0: identical)."""
    from icl.analysis import results

    sub = Path(tempfile.mkdtemp(prefix="icl_bench_pairs_"))
    for job in sorted(root.iterdir())[:jobs]:
        shutil.copytree(job, sub / job.name, copy_function=os.link)  # rglob does not follow symlinks
    df = results.load_results([sub])
    new = results.paired_differences(df)
    original = results.paired_bootstrap_many
    try:  # one fresh draw per pair, as before
        results.paired_bootstrap_many = lambda triples, *a: [reference_paired_bootstrap(*t, *a) for t in triples]
        old = results.paired_differences(df)
    finally:
        results.paired_bootstrap_many = original
    shutil.rmtree(sub)
    cols = ["diff", "diff_low", "diff_high", "n_prompts"]
    assert len(new) == len(old) and len(new), (len(new), len(old))
    return float(np.nanmax(np.abs(new[cols].to_numpy(float) - old[cols].to_numpy(float))))


@dataclass
class Options:
    seeds: int = field(default=8, metadata={"help": "seeds per attn × quant cell"})
    check: int = field(default=24, metadata={"help": "jobs on which new and reference pairs are compared"})
    root: str | None = field(default=None, metadata={"help": "where to build the grid (null: a temp dir)"})
    keep: bool = field(default=False, metadata={"help": "leave the grid in place"})


def main(argv: list[str] | None = None) -> None:
    args = parse(Options, argv, "python -m icl.bench.aggregate", __doc__)
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="icl_bench_aggregate_"))
    t = time.perf_counter()
    base = smoke_job(root / "base")
    jobs = copy_grid(base, root / "grid", args.seeds)
    shutil.rmtree(base)
    print(f"built {len(jobs)} job folders in {time.perf_counter() - t:.0f} s under {root / 'grid'}")
    tables = time_tables(root / "grid")
    print(f"per-job part over {len(jobs)} folders: load {tables['load_s']:.1f} s, paired differences "
          f"{tables['paired_s']:.1f} s ({tables['paired_rows']} rows)")
    stats = time_figures(root / "grid", root / "figures")
    print(f"make_figures over {len(jobs)} folders: {stats['seconds']:.1f} s wall, {stats['cpu_s']:.1f} s CPU "
          f"(user + sys), peak {stats['peak_mb']:.0f} MB (main process RSS), {stats['peak_pss_mb']:.0f} MB (Σ PSS with "
          "its drawing workers)")
    diff = check_paired(root / "grid", args.check)
    print(f"paired differences on {args.check} folders, cached vs fresh resample counts: max |Δ| = {diff:.3g}")
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
