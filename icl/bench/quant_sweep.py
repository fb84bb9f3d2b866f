"""Post-training quantisation sweeps on trained jobs: the breaking point and per-layer sensitivity.

``python -m icl.bench.quant_sweep inputs=[<job or sweep folder>, …] [out=outputs/quant_sweep]`` (``make quant-sweep``)
loads each finished job's trained model (no retraining), scores it in float and under every probe on the job's
own standard evaluation prompts (the same prompts for every probe, so differences are paired), and writes
``quant_sweep.csv`` (one row per job × probe) and ``quant_sweep.md`` (breaking points, sensitivity tables).

Probes (``kind``):

- ``weights``: ``intx_weight`` at ``bits`` (8 6 5 4 3 2), every attention and MLP linear.
- ``attention``: ``attn_fq`` at ``attn_bits`` (16 8 6 5 4 3 2): q, k, v and the kernel output of every block.
- ``int8``: the int8 backends ``int8_weight``, ``int8_dynamic`` (torchao) and ``int8_fbgemm`` (PyTorch x86).
- ``sensitivity``: one block and one branch at a time at a low width: ``attn`` (the block's qkv and output
  projections) and ``mlp`` at ``low_bits`` weights, ``internals`` (the block's kernel) at ``low_attn_bits``.

Every row holds the normalised error at k = 2d (``error``; float: ``float_error``), and the paired difference
quantised − float on identical prompts (``diff``) with a paired percentile bootstrap CI (``icl.stats``); a width is
inside the margin when the CI's upper end is ≤ ``margin`` (normalised-error units; the zero estimator scores 1).
The breaking point (``icl.analysis.quant.breaking_points``) is the smallest width with it and every wider width
inside. ``seconds`` is the evaluation time of the probe (quantise + predict): the sweep's whole cost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from icl import contract, prompts
from icl.analysis.quant import breaking_points, sweep_markdown
from icl.evaluation import prompt_errors
from icl.files import write_csv, write_text
from icl.quantize import QuantSpec, check, float_model, quantize
from icl.run.cli import parse
from icl.run.evaluate import load_job
from icl.run.job import JobDir
from icl.run.spec import JobSpec
from icl.stats import paired_bootstrap
from icl.transformer import predict_model

log = logging.getLogger(__name__)
WEIGHT_BITS = (8, 6, 5, 4, 3, 2)
ATTN_BITS = (16, 8, 6, 5, 4, 3, 2)
INT8_BACKENDS = ("int8_weight", "int8_dynamic", "int8_fbgemm")  # is the fast CPU int8 as accurate as torchao's?


@dataclass(frozen=True)
class Probe:
    kind: str  # weights | attention | sensitivity
    bits: int
    node: dict[str, Any]  # the quant config it applies
    block: int | None = None
    branch: str = ""  # sensitivity: attn | mlp | internals


def probes(n_layer: int, bits: tuple[int, ...], attn_bits: tuple[int, ...], low_bits: int, low_attn_bits: int,
           group_size: int | None) -> list[Probe]:
    """Every probe of one job (module doc)."""
    out = [Probe("weights", b, {"name": "intx_weight", "bits": b, "group_size": group_size}) for b in bits]
    out += [Probe("int8", 8, {"name": name}) for name in INT8_BACKENDS]
    out += [Probe("attention", b, {"name": "attn_fq", "bits": b}) for b in attn_bits]
    for block in range(n_layer):
        for branch in ("attn", "mlp"):
            node = {"name": "intx_weight", "bits": low_bits, "group_size": group_size, "layers": [branch],
                    "blocks": [block]}
            out.append(Probe("sensitivity", low_bits, node, block, branch))
        out.append(Probe("sensitivity", low_attn_bits, {"name": "attn_fq", "bits": low_attn_bits, "blocks": [block]},
                         block, "internals"))
    return out


def normalised(err: np.ndarray, zero: np.ndarray) -> float:
    return float(err.sum() / zero.sum())


def sweep_job(path: Path, probe_args: dict[str, Any], n_prompts: int | None, margin: float) -> pd.DataFrame:
    """Every probe on one job's trained model: one row each (module doc)."""
    cfg, module = load_job(JobDir(path))
    spec_job = JobSpec.from_config(cfg)
    model = float_model(module.model).eval()
    task, eval_cfg, n_points = spec_job.task.task, spec_job.eval, spec_job.eval_points
    d = int(task.n_dims)
    k = min(2 * d, n_points - 1)  # prompts shorter than 2d + 1 points: their last k
    p = prompts.make_prompts("standard", task, int(n_prompts or eval_cfg.n_prompts), n_points, eval_cfg.seed)
    batch = int(eval_cfg.batch_size)
    with torch.inference_mode():
        err_f, zero = prompt_errors(task, predict_model(model, p.xs, p.ys, batch), p.targets)
    labels = {"run_dir": str(path), "task": spec_job.task.name, "attn": spec_job.attn["name"],
              "trained_quant": spec_job.quant.label, "model": spec_job.model.name, "seed": spec_job.seed,
              "n_dims": d, "k": k, "n_prompts": len(p.xs), "margin": margin,
              "float_error": normalised(err_f[:, k], zero[:, k])}
    rows = []
    for probe in probes(len(model.blocks), **probe_args):
        spec = QuantSpec.from_config(probe.node)
        start = time.perf_counter()
        check(spec, model, on_gpu=False)
        with torch.inference_mode():
            err_q, _ = prompt_errors(task, predict_model(quantize(model, spec), p.xs, p.ys, batch), p.targets)
        seconds = time.perf_counter() - start
        diff, low, high, _ = paired_bootstrap(err_q[:, [k]], err_f[:, [k]], zero[:, [k]], eval_cfg.bootstrap,
                                              eval_cfg.ci, eval_cfg.seed)
        rows.append({**labels, "kind": probe.kind, "bits": probe.bits, "block": probe.block, "branch": probe.branch,
                     "label": spec.label, "error": normalised(err_q[:, k], zero[:, k]), "diff": float(diff[0]),
                     "diff_low": float(low[0]), "diff_high": float(high[0]),
                     "inside_margin": bool(high[0] <= margin), "seconds": seconds})
    return pd.DataFrame(rows)


def find_jobs(inputs: list[str]) -> list[Path]:
    """Finished jobs (a config and a trained model) under the inputs, one per trained model: the jobs of a
    post-training sweep share their trainer's checkpoint, and it is swept once."""
    by_ckpt: dict[Path, Path] = {}
    for root in map(Path, inputs):
        for config in sorted(root.rglob(contract.CONFIG)):  # the resolved config every job writes
            job = config.parent.resolve()
            try:
                ckpt = JobDir(job).model_ckpt("last")
            except (OSError, ValueError):  # not a job folder after all
                continue
            if ckpt.is_file():
                by_ckpt.setdefault(ckpt.resolve(), job)
    return sorted(by_ckpt.values())


@dataclass
class Options:
    """``python -m icl.bench.quant_sweep inputs=[<job or sweep folder>, …] [key=value …]``."""

    inputs: list[str] = field(default=MISSING, metadata={"help": "job or sweep folders (trained jobs below them)"})
    out: str = field(default="outputs/quant_sweep", metadata={"help": "where quant_sweep.csv / .md go"})
    bits: list[int] = field(default_factory=lambda: list(WEIGHT_BITS), metadata={"help": "weight widths"})
    attn_bits: list[int] = field(default_factory=lambda: list(ATTN_BITS), metadata={"help": "attention widths"})
    low_bits: int = field(default=3, metadata={"help": "weight width of the sensitivity probes"})
    low_attn_bits: int = field(default=4, metadata={"help": "attention width of the sensitivity probes"})
    group_size: int = field(default=32, metadata={"help": "weights per scale (0: one per channel)"})
    margin: float = field(default=0.05, metadata={"help": "largest tolerated paired error increase"})
    n_prompts: Optional[int] = field(default=None, metadata={"help": "default: the job's eval.n_prompts"})


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse(Options, argv, "python -m icl.bench.quant_sweep", __doc__)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    probe_args = {"bits": tuple(args.bits), "attn_bits": tuple(args.attn_bits), "low_bits": args.low_bits,
                  "low_attn_bits": args.low_attn_bits, "group_size": args.group_size or None}
    if args.n_prompts is not None and args.n_prompts < 1:
        raise ValueError(f"n_prompts={args.n_prompts} must be a positive number of prompts")
    for b in [*args.bits, args.low_bits]:  # a bad width: one line before any model is loaded
        QuantSpec.from_config({"name": "intx_weight", "bits": b, "group_size": probe_args["group_size"]})
    for b in [*args.attn_bits, args.low_attn_bits]:
        QuantSpec.from_config({"name": "attn_fq", "bits": b})
    jobs = find_jobs(args.inputs)
    if not jobs:
        raise SystemExit(f"error: no trained job (config.yaml + a trained model) under {args.inputs}")
    start = time.perf_counter()
    df = pd.concat([sweep_job(job, probe_args, args.n_prompts, args.margin) for job in jobs], ignore_index=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "quant_sweep.csv", df, index=False)
    write_text(out / "quant_sweep.md", sweep_markdown(df))
    print(breaking_points(df).to_string(index=False))
    print(f"{len(jobs)} job(s), {len(df)} probes, {time.perf_counter() - start:.1f} s (evaluation only) -> "
          f"{out / 'quant_sweep.csv'}")
    return df


def cli() -> None:
    try:
        main()
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    cli()
