"""Whole-model benchmarks: ``python -m icl.bench`` (``make bench``; ``bench=quick`` for a CI-sized run).

Two parts (``parts``), both written to ``out_dir`` as rows of one tidy ``bench.csv`` (column ``part``):

- **latency**: inference time per prompt for every attention variant × quant mode × k in-context examples
  (a prompt of k + 1 points, T = 2(k + 1) tokens; the model is built for that length), eval mode, inference mode.
  Variants and modes are interleaved within each repeat after untimed warm-up calls (``icl.bench.timing``). Each row
  carries median / IQR / trimmed mean / bootstrap CI of the median per prompt, the model's matmul FLOPs per prompt
  (``icl.bench.flops``), the implied FLOP/s and its fraction of the matmul peak measured in the same run — above 1 is
  flagged as an error — and the ratio to softmax / float at the same k with a CI and a Mann–Whitney p-value.
- **train** and **inference** (ours vs reference): one Adam step (forward + backward + update) and one forward
  pass of our ``ICLTransformer`` and of Garg et al.'s ``transformers.GPT2Model`` model (``icl.run.garg``) at the same
  size, alternating repeats in one process; the ratio reference / ours (> 1: ours faster) with CI and p-value.

Also ``bench.md`` (the tables) and ``bench_latency.png`` (log–log latency vs k, hue = attention, style = quant).
CUDA runs synchronise before every clock read (``icl.bench.timing.time_call``); that path is untested here (no GPU).
"""

from __future__ import annotations

import copy
import logging
import platform
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from icl.analysis.bench_figures import plot_latency
from icl.attention import ATTENTION
from icl.bench.attention import device_name, pick_device, variant_params
from icl.bench.entry import hydra_cli
from icl.bench.flops import forward_flops, matmul_peak, train_flops
from icl.bench.gemm import GemmCall, gemm_flops, record_gemms
from icl.bench.targets import check as check_targets
from icl.bench.targets import markdown as targets_markdown
from icl.bench.targets import verdicts
from icl.bench.timing import interleaved as timed_rounds
from icl.bench.timing import summarise
from icl.errors import first_line
from icl.files import atomic_write, write_text
from icl.module import make_optimizer
from icl.quantize import MODES, QuantSpec, prepare_qat, quantize
from icl.run.configs import CONFIG_DIR
from icl.stats import bootstrap_median_ci, mann_whitney_p, ratio_ci
from icl.transformer import ICLTransformer, TransformerConfig

log = logging.getLogger(__name__)
PARTS = ("latency", "throughput", "overhead")
REFERENCE = ("softmax", "none")  # the latency baseline every (variant, quant) is compared with


# ---------------------------------------------------------------------------------------------------------------------
# Models


def model_sizes(name: str) -> dict[str, int]:
    """Width, layers and heads of ``configs/model/<name>.yaml`` (its n_positions follows the benchmark's length)."""
    path = CONFIG_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        options = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ValueError(f"unknown model '{name}'; choose from: {options}")
    node = OmegaConf.load(path)
    return {k: int(node[k]) for k in ("n_embd", "n_layer", "n_head")}


def build_model(model: str, n_dims: int, n_points: int, attn: str = "softmax") -> ICLTransformer:
    """Our model at a size from configs/model/, built for prompts of ``n_points`` points, in eval mode."""
    config = TransformerConfig(n_dims=n_dims, n_positions=n_points, attn=attn, attn_params=variant_params(attn),
                               **model_sizes(model))
    return ICLTransformer(config).eval()


def quantized(model: ICLTransformer, quant: str, device: torch.device) -> tuple[nn.Module | None, str]:
    """``model`` in quant mode ``quant`` on ``device``, or (None, why) when the mode cannot run here.

    ``qat_int8`` is timed as what it deploys: the fake-quantised model converted to int8 (untrained weights; speed
    does not depend on their values).
    """
    spec = QuantSpec.from_config({"name": quant})
    if spec.mode.cuda_only and device.type != "cuda":
        return None, f"quant={quant} needs a CUDA GPU"
    base = copy.deepcopy(model).to(device)
    try:
        if spec.mode.stage == "qat":
            prepare_qat(base, spec)
        return quantize(base, spec).eval(), ""
    except Exception as err:  # noqa: BLE001 - recorded in the table instead of stopping the benchmark
        return None, first_line(err)


def prompts(batch: int, n_points: int, n_dims: int, device: torch.device, seed: int) -> tuple[Tensor, Tensor]:
    """Random prompts made on the device (timing does not depend on their values)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(batch, n_points, n_dims, generator=gen, device=device),
            torch.randn(batch, n_points, generator=gen, device=device))


def autocast(device: torch.device, amp: str | None):
    """bf16 autocast when asked (GPU), else a no-op context."""
    if amp in (None, "none"):
        return torch.autocast(device.type, enabled=False)
    if amp != "bf16":
        raise ValueError(f"amp must be null or bf16, got '{amp}'")
    return torch.autocast(device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------------------
# Statistics shared by both parts


def stats_row(seconds: list[float], per: int, n_boot: int, ci: float) -> dict[str, float]:
    """Summary of per-call times, divided by ``per`` (prompts per call): milliseconds per prompt."""
    t = np.asarray(seconds) / per * 1e3
    s = summarise(t)
    lo, hi = bootstrap_median_ci(t, n_boot, ci)
    return {"median_ms": s["median"], "q1_ms": s["q1"], "q3_ms": s["q3"], "iqr_ms": s["iqr"],
            "trimmed_mean_ms": s["trimmed_mean"], "median_ci_low_ms": lo, "median_ci_high_ms": hi,
            "n": s["n"], "n_kept": s["n_kept"]}


def compare(a: list[float], b: list[float], n_boot: int, ci: float) -> dict[str, float]:
    """median(a) / median(b) with its bootstrap CI and the Mann–Whitney p-value."""
    ratio, lo, hi = ratio_ci(a, b, n_boot, ci)
    return {"ratio": ratio, "ratio_ci_low": lo, "ratio_ci_high": hi, "p_value": mann_whitney_p(a, b)}


class Peak:
    """The matmul peak per compute dtype, measured inside the timed rounds: one (size × size) product per dtype
    joins every round of every cell, so on a shared machine the bound is taken under the same load as the model
    timings it bounds (the fastest product seen so far counts). int8 goes through ``torch._int_mm``."""

    def __init__(self, device: torch.device, size: int, dtypes: tuple[str, ...] = ("float32", "bfloat16", "int8")) -> None:
        self.size, self.device, self.best = size, device, {}
        self.operands: dict[str, tuple[Tensor, Tensor]] = {}
        for dtype in dtypes:
            try:  # an initial measurement, also proving the dtype's matmul runs here
                self.best[dtype] = 2 * size ** 3 / matmul_peak(device, getattr(torch, dtype), size, repeats=3)
            except (RuntimeError, NotImplementedError, AttributeError):
                continue
            self.operands[dtype] = tuple(torch.randn(size, size, device=device).mul(20).to(getattr(torch, dtype))
                                         for _ in range(2))

    def calls(self) -> dict[Any, Callable[[], object]]:
        mm = {"int8": lambda a, b: torch._int_mm(a, b)}
        return {("peak", dtype): (lambda a=a, b=b, f=mm.get(dtype, torch.matmul): f(a, b))
                for dtype, (a, b) in self.operands.items()}

    def record(self, times: dict[Any, list[float]]) -> None:
        for key, seconds in times.items():
            if isinstance(key, tuple) and key[0] == "peak" and seconds:
                self.best[key[1]] = min(self.best[key[1]], min(seconds))

    def flops(self) -> dict[str, float]:
        return {dtype: 2 * self.size ** 3 / seconds for dtype, seconds in self.best.items()}


def peak_for(quant: str, peak: dict[str, float]) -> float:
    """The bound a mode's FLOP/s must stay under: float32's for float, bf16's for bf16, the highest measured for the
    integer modes (their matmuls may run in int8)."""
    if quant == "none":
        return peak["float32"]
    if quant == "bf16":
        return peak.get("bfloat16", peak["float32"])
    return float(np.nanmax(list(peak.values())))


def sanity(flops: float, median_ms: float, peak: float) -> dict[str, Any]:
    """Implied FLOP/s of ``flops`` done in ``median_ms`` and its fraction of the peak; above 1 is physically
    impossible: flagged."""
    achieved = flops / (median_ms * 1e-3)
    frac = achieved / peak
    return {"achieved_gflops": achieved / 1e9, "peak_gflops": peak / 1e9, "frac_of_peak": frac,
            "flag": f"ERROR: {achieved / 1e9:.3g} GFLOP/s exceeds the measured peak {peak / 1e9:.3g}"
            if frac > 1 else ""}


def add_sanity(df: pd.DataFrame, peak: dict[str, float]) -> pd.DataFrame:
    """The sanity columns for every timed row, against the final peak (``work_flops`` = FLOPs per ``median_ms``)."""
    timed = (df["median_ms"].notna() & df["part"].ne("overhead") if "median_ms" in df
             else pd.Series(False, index=df.index))
    extra = [sanity(r.work_flops, r.median_ms, peak_for(r.quant, peak)) if ok else {}
             for ok, r in zip(timed, df.itertuples())]
    return pd.concat([df, pd.DataFrame(extra, index=df.index)], axis=1)


def interleaved(calls: dict[Any, Callable[[], object]], device: torch.device, warmup: int, repeats: int,
                peak: Peak | None = None) -> tuple[dict[Any, list[float]], dict[Any, str]]:
    """Time every call ``repeats`` times after ``warmup`` untimed rounds, rotating who goes first each round (with
    ``peak``'s matmuls among them, recorded into it)."""
    times, failed = timed_rounds({**calls, **(peak.calls() if peak else {})}, device, warmup, repeats)
    if peak:
        peak.record(times)
    return times, failed


# ---------------------------------------------------------------------------------------------------------------------
# Latency: attention × quant × k


def activation_bytes(model: str, n_points: int) -> int:
    """Rough float32 bytes live per prompt in one block: the MLP's 4C-wide hidden, qkv, and one (256 × T) score
    block per head (the blocked quadratic kernels), ×2 for the buffers alive at once."""
    size, T = model_sizes(model), 2 * n_points
    return 2 * 4 * (T * 8 * size["n_embd"] + size["n_head"] * min(T, 256) * T)


def latency_batch(cfg: DictConfig, n_points: int, flops: float, peak: float) -> tuple[int, str]:
    """``batch``, halved until one call is estimated (FLOPs / peak, ×2 for real efficiency) under
    ``max_call_seconds`` and its activations under ``max_memory_gb``; the reason is recorded."""
    batch, reason = int(cfg.batch), ""
    while batch > 1 and flops * batch / peak * 2 > cfg.max_call_seconds:
        batch, reason = batch // 2, "time"
    while batch > 1 and activation_bytes(cfg.model, n_points) * batch > cfg.max_memory_gb * 2**30:
        batch, reason = batch // 2, "memory"
    return batch, reason


def latency_at(cfg: DictConfig, k: int, device: torch.device, peak: Peak) -> list[dict[str, Any]]:
    """Every variant × quant mode at k in-context examples, interleaved; one row each."""
    n_points = k + 1
    names = list(cfg.variants) if cfg.variants else sorted(ATTENTION)
    flops_ref = forward_flops(build_model(cfg.model, cfg.n_dims, n_points).config, n_points)
    batch, reason = latency_batch(cfg, n_points, flops_ref, peak.flops()["float32"])
    xs, ys = prompts(batch, n_points, cfg.n_dims, device, int(cfg.seed))
    calls, notes, flops = {}, {}, {}
    for name in names:
        torch.manual_seed(int(cfg.seed))
        model = build_model(cfg.model, cfg.n_dims, n_points, name)
        flops[name] = forward_flops(model.config, n_points)
        for quant in cfg.quant:
            qmodel, notes[(name, quant)] = quantized(model, quant, device)
            if qmodel is not None:
                calls[(name, quant)] = forward_call(qmodel, xs, ys, device, cfg.get("amp"))
    times, failed = interleaved(calls, device, int(cfg.warmup), int(cfg.repeats), peak)
    notes.update(failed)
    rows = []
    for (name, quant), note in notes.items():
        row = {"part": "latency", "impl": "ours", "model": cfg.model, "attn": name, "quant": quant, "k": k,
               "n_points": n_points, "tokens": 2 * n_points, "batch": batch,
               "batch_note": f"reduced from {cfg.batch} ({reason})" if reason else "", "note": note}
        seconds = times.get((name, quant))
        if seconds and not note:
            row.update(stats_row(seconds, batch, int(cfg.n_boot), float(cfg.ci)))
            row.update(flops_per_prompt=flops[name], work_flops=flops[name])
            if times.get(REFERENCE):
                row.update(compare(seconds, times[REFERENCE], int(cfg.n_boot), float(cfg.ci)))
        rows.append(row)
    return rows


def forward_call(model: nn.Module, xs: Tensor, ys: Tensor, device: torch.device, amp: str | None) -> Callable[[], None]:
    def call() -> None:
        with torch.inference_mode(), autocast(device, amp):
            model(xs, ys)
    return call


# ---------------------------------------------------------------------------------------------------------------------
# Ours vs the reference: training step and inference at the same size


def train_call(model: nn.Module, xs: Tensor, ys: Tensor, device: torch.device, amp: str | None,
               end_to_end: bool, reference: bool) -> Callable[[], None]:
    """One Adam step on squared error. ``end_to_end`` times the whole loop as each side runs it: the reference's way
    makes the prompts on the CPU, copies them and reads the loss back every step; ours makes them on the device and
    never waits (and uses ``amp``). Otherwise both see the same fixed batch (model only)."""
    # Ours steps with the job's optimiser (icl.module.make_optimizer); the reference with torch's default Adam.
    opt = (torch.optim.Adam(model.parameters(), lr=1e-4) if reference
           else make_optimizer(model.parameters(), lr=1e-4, weight_decay=0.0))
    model.train()
    host = torch.device("cpu")
    gen = torch.Generator(device=host if reference else device).manual_seed(0)

    def call() -> None:
        bx, by = xs, ys
        if end_to_end:
            where = host if reference else device
            bx = torch.randn(xs.shape, generator=gen, device=where).to(device)
            by = torch.randn(ys.shape, generator=gen, device=where).to(device)
        opt.zero_grad(set_to_none=True)
        with autocast(device, None if reference else amp):
            loss = (model(bx, by).float() - by).square().mean()
        loss.backward()
        opt.step()
        if end_to_end and reference:
            loss.item()
    return call


def versus_reference(cfg: DictConfig, model_name: str, device: torch.device, peak: Peak) -> list[dict[str, Any]]:
    """Ours vs Garg et al.'s model at ``model_name``'s size: train step and forward, alternating; one row each."""
    from icl.run.garg import GargTransformer

    n_points, n_dims, batch = int(cfg.n_points), int(cfg.n_dims), int(cfg.batch)
    torch.manual_seed(int(cfg.seed))
    ours = build_model(model_name, n_dims, n_points).to(device)
    ref = GargTransformer(n_dims=n_dims, n_positions=n_points, **model_sizes(model_name)).to(device).eval()
    if cfg.get("compile"):
        ours = torch.compile(ours)
    xs, ys = prompts(batch, n_points, n_dims, device, int(cfg.seed))
    amp, e2e = cfg.get("amp"), bool(cfg.get("end_to_end"))
    config = ours_config(ours)  # the reference also runs its last block and read-out at the y positions
    flops = {(part, impl): (train_flops if part == "train" else forward_flops)(config, n_points,
                                                                                 every_token=impl == "reference")
             for part in ("train", "inference") for impl in ("ours", "reference")}
    rows = []
    for part in cfg.modes:
        if part == "train":
            calls = {"ours": train_call(ours, xs, ys, device, amp, e2e, False),
                     "reference": train_call(ref, xs, ys, device, amp, e2e, True)}
        else:
            calls = {"ours": forward_call(ours.eval(), xs, ys, device, amp),
                     "reference": forward_call(ref.eval(), xs, ys, device, None)}
        gemms = record_gemms(calls["ours"]) if part == "train" and cfg.get("gemm") else Counter()
        replays = {("gemm", i): g.replay(device) for i, g in enumerate(gemms)}  # timed in the same rounds
        times, failed = interleaved({**calls, **replays}, device, int(cfg.warmup), int(cfg.repeats[model_name]),
                                    peak)
        if cfg.get("profile_dir"):
            for impl, call in calls.items():
                write_profile(call, Path(cfg.profile_dir) / f"profile_{part}_{model_name}_{impl}.txt")
        for impl in ("ours", "reference"):
            seconds = times[impl]
            row = {"part": part, "impl": impl, "model": model_name, "attn": "softmax", "quant": "none",
                   "k": n_points - 1, "n_points": n_points, "tokens": 2 * n_points, "batch": batch,
                   "note": failed.get(impl, ""), "amp": amp or "", "end_to_end": e2e}
            if seconds:
                row.update(stats_row(seconds, 1, int(cfg.n_boot), float(cfg.ci)))  # ms per call (per step)
                row["steps_per_s"] = 1e3 / row["median_ms"]
                row["prompts_per_s"] = batch * row["steps_per_s"]
                row.update(flops_per_prompt=flops[part, impl], work_flops=flops[part, impl] * batch)
                # reference time / ours: > 1 means ours is faster
                row.update(compare(times["reference"], seconds, int(cfg.n_boot), float(cfg.ci)))
                if impl == "ours" and gemms:
                    row.update(gemm_columns(gemms, times, row["median_ms"]))
            rows.append(row)
    return rows


def gemm_columns(gemms: Counter[GemmCall], times: dict[Any, list[float]], step_ms: float) -> dict[str, Any]:
    """The step's matrix products replayed alone (``icl.bench.gemm``): their summed median time per step, its share
    of the step's median, their FLOPs per step, and the slowest product's share of that time."""
    per_call = {g: float(np.median(times[("gemm", i)])) * 1e3 * n for i, (g, n) in enumerate(gemms.items())}
    gemm_ms = sum(per_call.values())
    slowest = max(per_call, key=per_call.__getitem__)
    dtypes = {str(g.dtype).removeprefix("torch.") for g in gemms}
    return {"gemm_ms": gemm_ms, "gemm_share": gemm_ms / step_ms, "gemm_flops": gemm_flops(gemms),
            "gemm_calls": sum(gemms.values()), "gemm_shapes": len(gemms),
            "gemm_dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
            "gemm_slowest": f"{slowest.describe()} ×{gemms[slowest]}: {per_call[slowest] / gemm_ms:.0%}"}


def add_gemm_bound(df: pd.DataFrame, peak: dict[str, float]) -> pd.DataFrame:
    """The replayed GEMMs' fraction of their dtype's peak, and the step's bound if everything but its GEMMs were
    free (its counted FLOPs over the GEMMs' time alone); NaN where that peak was not measured (or dtypes mix)."""
    if "gemm_ms" not in df:
        return df
    bound = df["gemm_dtype"].map(lambda d: peak.get(d, np.nan) if isinstance(d, str) else np.nan)
    seconds = df["gemm_ms"] * 1e-3
    return df.assign(gemm_frac_of_peak=df["gemm_flops"] / seconds / bound,
                     bound_frac_of_peak=df["work_flops"] / seconds / bound)


def write_profile(call: Callable[[], None], path: Path) -> None:
    """Where one call's time goes: ``torch.profiler``'s table of operators by self time (one call, after timing)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        call()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20) + "\n")
    log.info("wrote %s", path)


def ours_config(model: nn.Module) -> TransformerConfig:
    return getattr(model, "_orig_mod", model).config


# ---------------------------------------------------------------------------------------------------------------------
# Outputs


def markdown(df: pd.DataFrame, header: str) -> str:
    """The latency table (ms per prompt, ratio to softmax/float) and the ours-vs-reference table."""
    parts = [header]
    lat = df[df.part == "latency"]
    if not lat.empty:
        lines = ["| attn | quant | k | batch | median ms/prompt [95% CI] | IQR | trimmed mean | GFLOP/s (of peak) | "
                 "× softmax/none [CI], p | note |", "|" + "---|" * 10]
        for _, r in lat.sort_values(["k", "attn", "quant"]).iterrows():
            if pd.isna(r.get("median_ms")):
                lines.append(f"| {r.attn} | {r.quant} | {r.k} | {r.batch} | — | — | — | — | — | {r.note} |")
                continue
            ratio = (f"{r.ratio:.2f} [{r.ratio_ci_low:.2f}, {r.ratio_ci_high:.2f}], {r.p_value:.2g}"
                     if not pd.isna(r.get("ratio")) else "—")
            lines.append(f"| {r.attn} | {r.quant} | {r.k} | {r.batch} | {r.median_ms:.4g} "
                         f"[{r.median_ci_low_ms:.4g}, {r.median_ci_high_ms:.4g}] | {r.iqr_ms:.2g} | "
                         f"{r.trimmed_mean_ms:.4g} | {r.achieved_gflops:.3g} ({r.frac_of_peak:.0%}) | {ratio} | "
                         f"{' '.join(x for x in (r.flag, r.batch_note, r.note) if isinstance(x, str) and x)} |")
        parts.append("**Inference latency per prompt**\n\n" + "\n".join(lines))
    vs = df[df.part.isin(["train", "inference"])]
    if not vs.empty:
        lines = ["| part | model | impl | ms per step [95% CI] | steps/s | prompts/s | GFLOP/s (of peak) | "
                 "reference / ours [CI], p |", "|" + "---|" * 8]
        for _, r in vs.iterrows():
            if pd.isna(r.get("median_ms")):
                lines.append(f"| {r.part} | {r.model} | {r.impl} | — | — | — | — | {r.note} |")
                continue
            ratio = f"{r.ratio:.2f} [{r.ratio_ci_low:.2f}, {r.ratio_ci_high:.2f}], {r.p_value:.2g}"
            lines.append(f"| {r.part} | {r.model} | {r.impl} | {r.median_ms:.4g} [{r.median_ci_low_ms:.4g}, "
                         f"{r.median_ci_high_ms:.4g}] | {r.steps_per_s:.3g} | {r.prompts_per_s:.4g} | "
                         f"{r.achieved_gflops:.3g} ({r.frac_of_peak:.0%}) {r.flag} | "
                         f"{ratio if r.impl == 'ours' else '1'} |")
        parts.append("**Ours vs Garg et al.'s GPT2Model reference** (batch of prompts per step; "
                     "reference / ours > 1: ours faster)\n\n" + "\n".join(lines))
    if "gemm_ms" in df and df["gemm_ms"].notna().any():
        lines = ["| model | step ms | its GEMMs alone: ms (share of the step) | GEMMs' GFLOP/s (of peak) | the rest: ms | "
                 "step's % of peak if only its GEMMs took time | slowest GEMM (share of GEMM time) |", "|" + "---|" * 7]
        for _, r in df[df["gemm_ms"].notna()].iterrows():
            over = " — replays longer than the step: per-call overhead, not meaningful here" if r.gemm_share > 1 else ""
            lines.append(f"| {r.model} | {r.median_ms:.4g} | {r.gemm_ms:.4g} ({r.gemm_share:.0%}){over} | "
                         f"{r.gemm_flops / r.gemm_ms / 1e6:.3g} ({r.gemm_frac_of_peak:.0%} of {r.gemm_dtype}'s) | "
                         f"{r.median_ms - r.gemm_ms:.4g} | {r.bound_frac_of_peak:.0%} | {r.gemm_slowest} |")
        parts.append("**Where ours' training step goes** (`throughput.gemm`: each matrix product of the step, forward "
                     "and backward, replayed alone on fresh operands of its shapes and layout in the same rounds; "
                     "median × count; the rest = fused attention, elementwise ops, normalisation, optimiser)\n\n"
                     + "\n".join(lines))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Entry point


def check(cfg: DictConfig) -> None:
    """Every bad setting is one line, before any timing."""
    bad = sorted(set(cfg.parts) - set(PARTS))
    if bad:
        raise ValueError(f"unknown part(s) {bad}; choose from: {', '.join(PARTS)}")
    lat = cfg.latency
    unknown = sorted(set(lat.variants or []) - set(ATTENTION))
    if unknown:
        raise ValueError(f"unknown attention variant(s) {unknown}; choose from: {', '.join(sorted(ATTENTION))}")
    unknown = sorted(set(lat.quant) - set(MODES))
    if unknown:
        raise ValueError(f"unknown quant mode(s) {unknown}; choose from: {', '.join(MODES)}")
    if any(int(k) < 0 for k in lat.ks):
        raise ValueError(f"latency.ks must be >= 0, got {list(lat.ks)}")
    model_sizes(lat.model)
    for name in cfg.throughput.models:
        model_sizes(name)
        if name not in cfg.throughput.repeats:
            raise ValueError(f"throughput.repeats has no entry for model {name}: add throughput.repeats.{name}=N")
    bad = sorted(set(cfg.throughput.modes) - {"train", "inference"})
    if bad:
        raise ValueError(f"unknown throughput.modes {bad}; choose from: train, inference")
    if "overhead" in cfg.parts:
        from icl.bench.overhead import check as check_overhead

        check_overhead(cfg.overhead)
    check_targets(OmegaConf.to_container(cfg.targets) if cfg.get("targets") is not None else None)


def with_common(cfg: DictConfig, part: DictConfig) -> DictConfig:
    """A part's settings plus the shared seed and bootstrap settings."""
    return OmegaConf.create({**OmegaConf.to_container(part, resolve=True), "seed": cfg.seed, "n_boot": cfg.n_boot,
                             "ci": cfg.ci})


def run(cfg: DictConfig) -> pd.DataFrame:
    """The benchmark; returns the tidy table (also written to ``out_dir``)."""
    check(cfg)
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    # Only the latency grid's quant modes are bounded by the bf16 / int8 peaks; on a CPU without bf16 / VNNI units
    # one 2048² product of those takes seconds to tens of seconds, every round.
    bf16_steps = "throughput" in cfg.parts and cfg.throughput.get("amp") == "bf16"  # its GEMMs run in bf16
    peak = Peak(device, int(cfg.peak_size), ("float32", "bfloat16", "int8") if "latency" in cfg.parts
                else ("float32", "bfloat16") if bf16_steps else ("float32",))
    rows: list[dict[str, Any]] = []
    if "latency" in cfg.parts:
        lat = with_common(cfg, cfg.latency)
        for k in lat.ks:
            log.info("latency k=%d ...", k)
            rows += latency_at(lat, int(k), device, peak)
    if "throughput" in cfg.parts:
        thr = with_common(cfg, cfg.throughput)
        thr.profile_dir = str(Path(cfg.out_dir)) if cfg.throughput.profile else None
        for name in thr.models:
            log.info("ours vs reference, model=%s ...", name)
            rows += versus_reference(thr, name, device, peak)
    sections = []
    if "overhead" in cfg.parts:
        log.info("the job's step vs a bare loop (%s) ...", " ".join(cfg.overhead.overrides))
        from icl.bench.overhead import run_overhead

        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        overhead_rows, section = run_overhead(cfg.overhead, Path(cfg.out_dir), int(cfg.n_boot), float(cfg.ci),
                                              int(cfg.seed))
        rows += overhead_rows
        sections.append(section)
    log.info("matmul peak on %s: %s", device_name(device),
             {k: f"{v / 1e9:.1f} GFLOP/s" for k, v in peak.flops().items()})
    df = add_gemm_bound(add_sanity(pd.DataFrame(rows), peak.flops()), peak.flops())
    df.insert(0, "device", device_name(device))
    df["threads"] = torch.get_num_threads() if device.type == "cpu" else np.nan
    df["torch"] = torch.__version__
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "bench.csv", lambda tmp: df.to_csv(tmp, index=False))
    header = (f"{device_name(device)}, torch {torch.__version__}, {platform.machine()}; matmul peak measured in this "
              f"run (fastest {cfg.peak_size}² product, interleaved with the timings): "
              + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peak.flops().items())
              + f"; {cfg.latency.repeats} timed runs per latency cell after {cfg.latency.warmup} warm-up, "
              f"{cfg.ci:.0%} bootstrap CIs")
    if cfg.get("targets") is not None:
        sections.append(targets_markdown(verdicts(df, OmegaConf.to_container(cfg.targets))))
    text = "\n\n".join([markdown(df, header).rstrip("\n"), *filter(None, sections)]) + "\n"
    write_text(out / "bench.md", text)
    plot_latency(df, out / "bench_latency.png")  # the analysis layer draws it, as `make figures` would
    print(text)
    flagged = df["flag"].astype(str).str.startswith("ERROR").sum() if "flag" in df else 0
    if flagged:
        log.error("%d timing(s) imply more FLOP/s than the measured matmul peak: see the flag column", flagged)
    return df


cli = hydra_cli(run, "bench", (ValueError, ImportError))  # console script icl-bench (and python -m icl.bench)

if __name__ == "__main__":
    cli()
