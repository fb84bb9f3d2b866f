"""Post-training quantisation sweeps on trained jobs: the breaking point and per-layer sensitivity.

``python -m icl.bench.quant_sweep inputs=[<job or sweep folder>, …] [out=outputs/quant_sweep]`` (``make quant-sweep``)
loads each finished job's trained model (no retraining), scores it in float and under every probe on the job's
own standard evaluation prompts (the same prompts for every probe, so differences are paired), and writes
``quant_sweep.csv`` (one row per job × probe) and ``quant_sweep.md`` (breaking points, sensitivity tables).

Probes (``kind``):

- ``weights``: ``intx_weight`` at ``bits`` (8 6 5 4 3 2), every attention and MLP linear.
- ``attention``: ``attn_fq`` at ``attn_bits`` (16 8 6 5 4 3 2): q, k, v, the attention weights and the kernel output
  of every block with a (q, k, v) kernel.
- ``state``: ``state_fq`` at ``attn_bits``: the feature maps and the recurrent state of every block whose mixer is
  linear-cost (linear, performer, mamba, mamba2, deltanet, retnet; ``icl.statequant``); absent for the others.
- ``int8``: the int8 backends ``int8_weight``, ``int8_dynamic`` (torchao) and ``int8_fbgemm`` (PyTorch x86).
- ``sensitivity``: one block and one branch at a time at a low width: ``attn`` (the block's qkv and output
  projections) and ``mlp`` at ``low_bits`` weights, ``internals`` (the block's kernel) and ``state`` (its
  recurrence) at ``low_attn_bits``.

Every row holds the normalised error at k = 2d (``error``; float: ``float_error``), and the paired difference
quantised − float on identical prompts (``diff``) with a paired percentile bootstrap CI (``icl.stats``); a width is
inside the margin when the CI's upper end is < ``margin`` (``below_margin``; normalised-error units, the zero
estimator scores 1).
The breaking point (``icl.analysis.quant.breaking_point``, the one rule) is the smallest width with it and every
wider width inside. ``seconds`` is the evaluation time of the probe (quantise + predict): the sweep's whole cost.

With several training seeds of one variant × task, seeds are the unit (``seed_level``): per width the seed-level
values Δ_s (each seed's paired difference) give the study's t-interval over seeds (``icl.lab.study.inference``), a
width is inside when that interval's upper end is < margin (the study's ``noninferior`` verdict, confirmed) with at
least ``min_seeds`` seeds. The breaking point per variant (``variant_breaking_points``) is read as the figures'
summary reads it (``icl.analysis.quant.read_breaking_point``): from that t-interval where every width has
``min_seeds`` or more learned seeds, else from each seed's own CI. Only finished jobs (status ``done``) are swept.

A seed whose float model did not learn is left out of every seed-level interval, breaking point and sensitivity
summary (its per-job rows stay, with ``learned`` false): the study's guard (``configs/study.yaml`` ``guard``,
``icl.lab.study.inference.Guard``) on the float model's error at the guard's k (and the best baseline the config
lists for the task, which can only widen the bar), computed on the sweep's prompts. Several input roots are kept
apart: ``source`` (the root's
folder name) is part of every seed-level group, and so is ``recipe`` (the job config's ``recipe.name``), which keeps
the study's arms apart within one root. ``reuse=<quant_sweep.csv>`` carries an earlier sweep's rows for the jobs it
holds (same folder, same training fingerprint) and evaluates only the others: polling a root while it trains.
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
from omegaconf import OmegaConf

from icl import baselines, contract, prompts
from icl.analysis.quant import (
    ARM_KEYS,
    MIN_SEEDS,
    WIDTH_KINDS,
    breaking_points,
    markdown,
    read_breaking_point,
    read_sweep,
    sweep_markdown,
    with_guard_columns,
)
from icl.evaluation import prompt_errors
from icl.files import write_csv, write_text
from icl.lab.study.inference import CONFIRMED, Guard, below_margin, seed_interval, verdict
from icl.quantize import QuantSpec, check, float_model, quantize
from icl.quantize_modes import MODES, is_int8_backend
from icl.run.cli import parse
from icl.run.configs import CONFIG_DIR
from icl.run.evaluate import load_job
from icl.run.job import JobDir
from icl.run.spec import JobSpec
from icl.statequant import recurrent_blocks
from icl.stats import paired_bootstrap
from icl.transformer import predict_model

log = logging.getLogger(__name__)
WEIGHT_BITS = (8, 6, 5, 4, 3, 2)
ATTN_BITS = (16, 8, 6, 5, 4, 3, 2)
INT8_BACKENDS = tuple(filter(is_int8_backend, MODES))  # is the fast CPU int8 as accurate as torchao's?


@dataclass(frozen=True)
class Probe:
    kind: str  # weights | int8 | attention | state | sensitivity
    bits: int
    node: dict[str, Any]  # the quant config it applies
    block: int | None = None
    branch: str = ""  # sensitivity: attn | mlp | internals | state


def probes(n_layer: int, bits: tuple[int, ...], attn_bits: tuple[int, ...], low_bits: int, low_attn_bits: int,
           group_size: int | None, kernel_blocks: tuple[int, ...] | None = None,
           state_blocks: tuple[int, ...] = ()) -> list[Probe]:
    """Every probe of one job (module doc); ``kernel_blocks`` (None: all) have a (q, k, v) kernel for ``attn_fq``,
    ``state_blocks`` a recurrence for ``state_fq``."""
    kernels = tuple(range(n_layer)) if kernel_blocks is None else tuple(kernel_blocks)
    only = lambda chosen: None if len(chosen) == n_layer else list(chosen)  # None: every block
    out = [Probe("weights", b, {"name": "intx_weight", "bits": b, "group_size": group_size}) for b in bits]
    out += [Probe("int8", 8, {"name": name}) for name in INT8_BACKENDS]
    if kernels:
        out += [Probe("attention", b, {"name": "attn_fq", "bits": b, "blocks": only(kernels)}) for b in attn_bits]
    if state_blocks:
        out += [Probe("state", b, {"name": "state_fq", "bits": b, "blocks": only(state_blocks)}) for b in attn_bits]
    for block in range(n_layer):
        for branch in ("attn", "mlp"):
            node = {"name": "intx_weight", "bits": low_bits, "group_size": group_size, "layers": [branch],
                    "blocks": [block]}
            out.append(Probe("sensitivity", low_bits, node, block, branch))
        if block in kernels:
            out.append(Probe("sensitivity", low_attn_bits, {"name": "attn_fq", "bits": low_attn_bits,
                                                            "blocks": [block]}, block, "internals"))
        if block in state_blocks:
            out.append(Probe("sensitivity", low_attn_bits, {"name": "state_fq", "bits": low_attn_bits,
                                                            "blocks": [block]}, block, "state"))
    return out


def kernel_blocks(model: torch.nn.Module) -> tuple[int, ...]:
    """Blocks whose mixer has a (q, k, v) kernel without ALiBi: what ``attn_fq`` can wrap."""
    return tuple(i for i, b in enumerate(model.blocks)
                 if getattr(b.attn, "kernel", None) is not None and getattr(b.attn, "pos", None) != "alibi")


def normalised(err: np.ndarray, zero: np.ndarray) -> float:
    return float(err.sum() / zero.sum())


@dataclass(frozen=True)
class GuardRule:
    """The study's "did this model learn?" rule as configs/study.yaml states it (``guard``: the bar, its k per task
    and the baselines that can fit each task), on a sweep's own prompts."""

    guard: Guard

    @classmethod
    def from_study(cls, path: Path = CONFIG_DIR / "study.yaml") -> GuardRule:
        return cls(Guard.from_config(OmegaConf.to_container(OmegaConf.load(path).guard)))

    def check(self, task_name: str, task: Any, p: prompts.Prompts, err: np.ndarray, zero: np.ndarray,
              k: int, slow_prompts: int) -> dict[str, Any]:
        """The guard on a float model whose per-prompt errors on ``p`` are ``err``: its columns of a sweep row (``k``:
        the sweep's, for a task the guard lists no k for)."""
        k = min(int(self.guard.k.get(task_name, k)), err.shape[1] - 1)

        def baseline_error(name: str) -> float:
            n = slow_prompts if baselines.is_slow(name) else len(p.xs)  # per-prompt fits: capped as in evaluation
            b_err, b_zero = prompt_errors(task, baselines.predict(name, p.xs[:n], p.ys[:n], task=task), p.targets[:n])
            return normalised(b_err[:, k], b_zero[:, k])

        best_name, best = self.guard.best_baseline(task_name, baseline_error)
        error = normalised(err[:, k], zero[:, k])
        return {"guard_k": k, "guard_error": error, "guard_baseline": best_name, "guard_baseline_error": best,
                "learned": self.guard.learned(error, best)}


def sweep_job(path: Path, probe_args: dict[str, Any], n_prompts: int | None, margin: float,
              guard: GuardRule | None = None, source: str = "") -> pd.DataFrame:
    """Every probe on one job's trained model: one row each (module doc); ``guard`` (None: every model counts as
    learned) says whether the float model learned."""
    cfg, module = load_job(JobDir(path), trained_model(path)[1])
    spec_job = JobSpec.from_config(cfg)
    model = float_model(module.model).eval()
    task, eval_cfg, n_points = spec_job.task.task, spec_job.eval, spec_job.eval_points
    d = int(task.n_dims)
    k = min(2 * d, n_points - 1)  # prompts shorter than 2d + 1 points: their last k
    p = prompts.make_prompts("standard", task, int(n_prompts or eval_cfg.n_prompts), n_points, eval_cfg.seed)
    batch = int(eval_cfg.batch_size)
    with torch.inference_mode():
        err_f, zero = prompt_errors(task, predict_model(model, p.xs, p.ys, batch), p.targets)
    learned = ({"learned": True} if guard is None else
               guard.check(spec_job.task.name, task, p, err_f, zero, k, int(eval_cfg.slow_baseline_prompts)))
    labels = {"source": source, "recipe": recipe(path),
              "run_dir": str(path), "fingerprint": fingerprint(path), "task": spec_job.task.name,
              "attn": spec_job.attn["name"],
              "trained_quant": spec_job.quant.label, "model": spec_job.model.name, "seed": spec_job.seed,
              "n_dims": d, "k": k, "n_prompts": len(p.xs), "margin": margin,
              "float_error": normalised(err_f[:, k], zero[:, k]), **learned}
    rows = []
    blocks = {"kernel_blocks": kernel_blocks(model), "state_blocks": tuple(recurrent_blocks(model))}
    for probe in probes(len(model.blocks), **probe_args, **blocks):
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
                     "inside_margin": bool(below_margin(high[0], margin)), "seconds": seconds})
    log.info("swept %s: %d probes, %.1f s of evaluation%s", path, len(rows), sum(r["seconds"] for r in rows),
             "" if learned["learned"] else " (did not learn: left out of the seed level)")
    return pd.DataFrame(rows)


def in_project(job: Path, path: Path) -> Path:
    """``path`` as written in ``job``'s status (relative to the project the job ran in, maybe another worktree)."""
    if path.is_absolute():
        return path
    return next((a / path for a in job.parents if (a / path).exists()), path)  # the job's project before the cwd


def trained_model(job: Path) -> tuple[Path, str]:
    """The job's trained model and the ``ckpt`` argument that loads it: 'last', or the model's path when it is not
    the job's own (a shared model named relative to its project, or the model of the job a re-evaluation folder
    was ``evaluated_from``)."""
    ckpt = JobDir(job).model_ckpt("last")
    if not ckpt.is_file() and (source := (JobDir(job).status().get("metrics") or {}).get("evaluated_from")):
        origin = in_project(job, Path(source))
        ckpt = trained_model(origin)[0] if origin.is_dir() else ckpt
    found = in_project(job, ckpt)
    return found, "last" if found == JobDir(job).model_ckpt("last") else str(found)


def find_jobs(inputs: list[str]) -> list[Path]:
    """Finished jobs (status done, a config and a trained model) under the inputs, one per trained model: the jobs
    of a post-training sweep share their trainer's checkpoint, and it is swept once: as the job that scored it
    unquantised (``quant=none``), else as the job that trained it. A job still training (or
    failed), or one that kept no model, is skipped with a log line. A re-evaluation folder (``python -m icl.evaluate
    out_dir=…``, e.g. on validation prompts) is swept on its own prompts with the model it was evaluated from."""
    by_ckpt: dict[tuple[Path, str, Any], tuple[tuple[bool, bool], Path]] = {}  # a model under two roots: swept in each
    for root in map(Path, inputs):
        for config in sorted(root.rglob(contract.CONFIG)):  # the resolved config every job writes
            if config.parent.name.startswith("."):  # Hydra's copy of the config (<job>/.hydra/config.yaml)
                continue
            job = config.parent.resolve()
            status = JobDir(job).status()["status"]
            if status != "done":
                log.info("skipped %s: status %s", job, status)
                continue
            try:
                ckpt, how = trained_model(job)
            except (OSError, ValueError):  # not a job folder after all
                continue
            if not ckpt.is_file():
                log.info("skipped %s: no trained model (%s)", job, ckpt)
                continue
            # The trainer's last.ckpt and the store's copy are one model: the training fingerprint says so.
            # Per root and recipe: a model the store served to both arms of the study is swept in each.
            key = (root, recipe(job), fingerprint(job) or ckpt.resolve())
            rank = (is_float_job(job), how == "last")  # the cell's float job, else the one that trained it, is kept
            if key not in by_ckpt or rank > by_ckpt[key][0]:
                by_ckpt[key] = (rank, job)
    return sorted({job for _, job in by_ckpt.values()})


def fingerprint(job: Path) -> str:
    """The job's training fingerprint ('' for a job that recorded none): which model a folder held when swept."""
    return str((JobDir(job).status().get("metrics") or {}).get("fingerprint") or "")


def recipe(job: Path) -> str:
    """The job config's ``recipe.name`` ('' without one): which arm of the study trained it."""
    return OmegaConf.select(JobDir(job).load_config(), "recipe.name", default=None) or ""


def is_float_job(job: Path) -> bool:
    """The job scored its model unquantised (``quant=none``): the row to carry when a model has several jobs."""
    return OmegaConf.select(JobDir(job).load_config(), "quant.name", default="none") == "none"


def source_of(job: Path, inputs: list[str]) -> str:
    """The folder name of the first input root holding ``job``: what keeps two roots' seeds apart."""
    for root in inputs:
        if job.is_relative_to(Path(root).resolve()):
            return Path(root).resolve().name
    return ""


def arm_id(source: str, recipe: str) -> str:
    """The ``run_dir`` of a seed-level row: one per source × recipe, so a table per run_dir keeps two arms apart."""
    return f"{source}:{recipe}"


SEED_COLUMNS = ["source", "recipe", "task", "attn", "seed", "run_dir", "kind", "bits", "margin", "float_error", "diff",
                "diff_low", "diff_high", "inside_margin", "verdict", "seeds"]


def seed_level(df: pd.DataFrame, min_seeds: int = MIN_SEEDS, ci: float = 0.95) -> pd.DataFrame:
    """Per source × recipe × task × variant × width kind × width: the t-interval over the learned training seeds of
    the seed-level paired differences, and the study's non-inferiority verdict against the margin (module doc). One
    row each, shaped like the sweep's rows (``seed`` = how many seeds, ``run_dir`` = ``arm_id``), so
    ``breaking_points`` reads it as one job per variant."""
    rows = []
    df = with_guard_columns(df)
    widths = df[df.kind.isin(WIDTH_KINDS) & df.learned.astype(bool)]
    for (source, recipe, task, attn, kind, bits), g in widths.groupby([*ARM_KEYS, "kind", "bits"], sort=True):
        interval = seed_interval(g["diff"].tolist(), ci)
        margin = float(g.margin.iat[0])
        word, _ = verdict("noninferior", interval.low, interval.high, margin, min_seeds, interval.n)
        broken = not np.isfinite(g["diff"]).all()  # a seed's quantised model predicted inf/nan: outside, not dropped
        n = len(g)
        rows.append({"source": source, "recipe": recipe, "task": task, "attn": attn,
                     "seed": f"{n} seed{'s' * (n != 1)}", "run_dir": arm_id(source, recipe),
                     "kind": kind,
                     "bits": bits, "margin": margin, "float_error": float(g.float_error.mean()),
                     "diff": float("inf") if broken else interval.mean,
                     "diff_low": float("inf") if broken else interval.low,
                     "diff_high": float("inf") if broken else interval.high,
                     "inside_margin": word == CONFIRMED and not broken, "verdict": "refuted" if broken else word,
                     "seeds": " ".join(map(str, sorted(g.seed)))})
    return pd.DataFrame(rows, columns=SEED_COLUMNS)  # no learned seed: no rows, the same columns


def compact(df: pd.DataFrame) -> pd.DataFrame:
    """The sweep's rows without paths, numbers to 4 significant digits (for docs/)."""
    out = df.drop(columns=["run_dir"], errors="ignore").copy()  # no column at all: no seed had enough to pool
    for column in {"float_error", "error", "diff", "diff_low", "diff_high", "seconds", "guard_error",
                   "guard_baseline_error"} & set(out.columns):
        out[column] = out[column].map(lambda v: float(f"{v:.4g}"))
    return out


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
    min_seeds: int = field(default=MIN_SEEDS, metadata={"help": "fewest seeds for a seed-level verdict"})
    n_prompts: Optional[int] = field(default=None, metadata={"help": "default: the job's eval.n_prompts"})
    rescore: Optional[str] = field(default=None, metadata={
        "help": "a quant_sweep.csv to read again at this margin instead of evaluating (inputs are then ignored)"})
    guard: bool = field(default=True, metadata={"help": "leave out seeds that did not learn (configs/study.yaml guard)"})
    reuse: Optional[str] = field(default=None, metadata={
        "help": "a quant_sweep.csv of the same probes: its jobs' rows are carried, only the other jobs are evaluated"})


def rescored(csv: Path, margin: float) -> pd.DataFrame:
    """A sweep's rows read at another margin: the measurements (paired differences and their CIs) do not depend on
    it, only which widths count as inside."""
    if not csv.is_file():
        raise ValueError(f"rescore={csv}: no such quant_sweep.csv (write one with inputs=[…] first)")
    df = read_sweep(csv)
    return df.assign(margin=margin, inside_margin=below_margin(df.diff_high.to_numpy(), margin))


def reused_rows(csv: Path, margin: float, probe_args: dict[str, Any], n_prompts: int | None) -> pd.DataFrame:
    """A finished sweep's rows, to carry instead of evaluating their jobs again (a folder still holding the model
    of the same fingerprint); refused when its probes or prompt count are not the ones asked for."""
    df = with_guard_columns(rescored(csv, margin))
    df["fingerprint"] = df.get("fingerprint", pd.Series("", index=df.index)).fillna("").astype(str)
    if n_prompts is not None and set(df.n_prompts) - {n_prompts}:
        raise ValueError(f"reuse={csv} scored {sorted(set(df.n_prompts))} prompts per job, not n_prompts={n_prompts}: "
                         f"pass the same n_prompts, or leave out reuse")
    asked = probes(1, **probe_args)
    for kind in ("weights", "attention"):
        want = {QuantSpec.from_config(p.node).label for p in asked if p.kind == kind}
        have = set(df.label[df.kind == kind])
        if have and have != want:
            raise ValueError(f"reuse={csv} swept {kind} as {sorted(have)}, not {sorted(want)}: pass the same "
                             f"bits/attn_bits/group_size as that sweep, or leave out reuse")
    return df


def rejudged(carried: pd.DataFrame, guard: GuardRule | None) -> pd.Series:
    """Carried rows' ``learned`` under today's ``zero_fraction`` and ``baseline_margin``, from the errors they carry
    (the rule is config, the measured errors are not). A changed guard ``k`` or ``baselines`` is NOT applied: the
    carried errors were measured at the old k against the old baselines, so that needs a sweep without ``reuse``."""
    if guard is None:
        return pd.Series(True, index=carried.index)
    if not {"guard_error", "guard_baseline_error"} <= set(carried.columns):
        return carried.learned  # rows from before the guard's columns: as they were judged
    judged = pd.Series([guard.guard.learned(float(e), float(b)) for e, b in
                        zip(carried.guard_error, carried.guard_baseline_error)], index=carried.index)
    return judged.where(carried.guard_error.notna(), carried.learned)  # no number (a guard-less sweep, NaN): as judged


def split_reused(carried: pd.DataFrame, jobs: list[Path]) -> tuple[pd.DataFrame, list[Path]]:
    """The carried rows of jobs that still hold the model they were swept with (same folder and fingerprint: a
    folder retrained since holds another model), and the jobs left to evaluate."""
    if carried.empty:
        return carried, list(jobs)
    now = {(str(job), fingerprint(job)) for job in jobs}
    kept = carried[[(r, f) in now for r, f in zip(carried.run_dir, carried.fingerprint)]]
    return kept, [job for job in jobs if str(job) not in set(kept.run_dir)]


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
    start = time.perf_counter()
    guard = GuardRule.from_study() if args.guard else None
    if args.rescore:
        df = with_guard_columns(rescored(Path(args.rescore), args.margin))
        df, what = df.assign(learned=rejudged(df, guard)), f"rescored {args.rescore}"
    else:
        jobs = find_jobs(args.inputs)
        if not jobs:
            raise SystemExit(f"error: no trained job (config.yaml + a trained model) under {args.inputs}")
        carried = (reused_rows(Path(args.reuse), args.margin, probe_args, args.n_prompts) if args.reuse else
                   pd.DataFrame(columns=["run_dir"]))
        carried, fresh = split_reused(carried, jobs)
        swept = [sweep_job(job, probe_args, args.n_prompts, args.margin, guard, source_of(job, args.inputs))
                 for job in fresh]
        kept = [carried.assign(learned=rejudged(carried, guard))] if len(carried) else []
        df = pd.concat(kept + swept, ignore_index=True)
        what = f"{len(jobs)} job(s)" + (f", {len(jobs) - len(fresh)} carried from {args.reuse}" if args.reuse else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "quant_sweep.csv", df, index=False)
    write_csv(out / "quant_sweep_compact.csv", compact(df), index=False)
    seeds = seed_level(df, args.min_seeds)
    write_csv(out / "quant_sweep_seeds.csv", compact(seeds), index=False)
    write_text(out / "quant_sweep.md", sweep_markdown(df) + seed_markdown(df, seeds, args.min_seeds))
    print(breaking_points(df).to_string(index=False))
    print(variant_breaking_points(df, args.min_seeds).to_string(index=False))
    print(f"{what}, {len(df)} probes, {time.perf_counter() - start:.1f} s (evaluation only) -> "
          f"{out / 'quant_sweep.csv'}")
    return df


def variant_breaking_points(df: pd.DataFrame, min_seeds: int = MIN_SEEDS, ci: float = 0.95) -> pd.DataFrame:
    """Per source × recipe × task × variant × width kind: the breaking point of the learned seeds as the figures'
    summary reads it (``icl.analysis.quant.read_breaking_point``: at the seed level where every width has
    ``min_seeds`` or more learned seeds, else each seed's own), each learned seed's own breaking point, the seeds it
    rests on and the seeds the guard left out."""
    df = with_guard_columns(df)
    jobs = ["seed", "run_dir"] if "run_dir" in df.columns else ["seed"]  # docs/' compact copies have no paths
    rows = []
    for (source, recipe, task, attn, kind), everyone in df[df.kind.isin(WIDTH_KINDS)].groupby([*ARM_KEYS, "kind"],
                                                                                            sort=True):
        learned = everyone[everyone.learned.astype(bool)]
        floats = learned.groupby(jobs, sort=True).float_error.first()
        failed = everyone[~everyone.learned.astype(bool)].groupby(jobs, sort=True).float_error.first()
        reading = read_breaking_point(learned, min_seeds, ci) if len(learned) else None
        own = read_breaking_point(learned, per_seed=True).points if len(learned) else ()
        rows.append({"source": source, "recipe": recipe, "task": task, "attn": attn, "kind": kind,
                     "n_seeds": len(floats), "seeds": " ".join(map(str, floats.index.get_level_values("seed"))),
                     "float_error": " ".join(f"{e:.3f}" for e in floats),
                     "rule": reading.read if reading else "no seed learned (study guard)",
                     "breaking_point": reading.text if reading else "",
                     "per_seed": " ".join("–" if p is None else str(p) for p in own),
                     "did_not_learn": " ".join(f"{s} ({e:.3f})" for s, e in
                                               zip(failed.index.get_level_values("seed"), failed))})
    return pd.DataFrame(rows)


def sensitivity_over_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Per source × recipe × task × variant × block: each branch's paired difference (one block quantised) as mean
    over the learned seeds and the range of their values."""
    df = with_guard_columns(df)
    sens = df[(df.kind == "sensitivity") & df.learned.astype(bool)]
    if sens.empty:
        return pd.DataFrame()
    cell = lambda g: (f"{g.mean():+.3f} ({g.min():+.3f} … {g.max():+.3f})" if len(g) > 1 else f"{g.iat[0]:+.3f}")
    out = sens.assign(col=sens.branch + "@" + sens.bits.astype(str)).groupby(
        [*ARM_KEYS, "block", "col"])["diff"].agg(cell).unstack("col").fillna("").reset_index()
    n = sens.groupby(ARM_KEYS).seed.nunique().rename("n_seeds").reset_index()
    return out.merge(n, on=ARM_KEYS)


def seed_markdown(df: pd.DataFrame, seeds: pd.DataFrame, min_seeds: int = MIN_SEEDS) -> str:
    """quant_sweep.md's seed-level part: per variant, each width's t-interval over seeds with its verdict
    (✓ inside the margin, ✗ outside, ? not resolved), and the breaking point per variant."""
    if seeds.empty:
        return ""
    mark = {CONFIRMED: "✓", "refuted": "✗"}
    cell = lambda r: (f"{r['diff']:+.3f} [{r.diff_low:+.3f}, {r.diff_high:+.3f}] {mark.get(r.verdict, '?')}"
                      if np.isfinite(r.diff_high) else f"{r['diff']:+.3f} {mark.get(r.verdict, '?')}")  # one seed: no interval
    wide = seeds.assign(c=seeds.apply(cell, axis=1)).pivot_table(index=[*ARM_KEYS, "seed", "kind"],
                                                                 columns="bits", values="c", aggfunc="first")
    wide = wide[sorted(wide.columns, reverse=True)].fillna("").reset_index()  # weights have no 16-bit probe
    points = variant_breaking_points(df, min_seeds)
    return ("\n## Seed level: mean paired difference over training seeds [t-interval] (✓ inside the margin, ✗ "
            "outside, ? not resolved: fewer seeds or the interval spans the margin; seeds whose float model did not "
            "learn, by the study's guard, left out)\n\n" + markdown(wide)
            + "\n\n## Breaking point per variant (seed level where there are enough seeds)\n\n" + markdown(points)
            + "\n\n## Sensitivity over seeds: one block quantised, mean (range) of the seeds' paired differences\n\n"
            + markdown(sensitivity_over_seeds(df)) + "\n")


def cli() -> None:
    try:
        main()
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    cli()
