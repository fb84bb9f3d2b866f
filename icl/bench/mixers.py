"""Cost of each sequence mixer (``icl.mixers``) vs sequence length, and its training step next to softmax's:
``python -m icl.bench.mixers`` (run by ``make bench-attn`` after the kernels alone).

``part=cost``: the whole mixer (projections included, so attention and recurrent mixers compare like for like) on
(batch, T, n_embd) inputs, forward (no grad) and forward+backward, every name interleaved within each repeat; with
the state / KV memory one sequence keeps after T tokens (``state_floats``: floats per layer) and the kernel FLOPs
where they are counted (the pairwise softmax-family kernels: 4·C per scored pair; the recurrent mixers: their
recurrence per token; NaN = not counted).
``part=train_step``: one training step (forward, loss, backward, Adam) of the smoke-scale model (d = 5, 11 points,
the tiny size) per mixer, interleaved with softmax's in one process, in this process's CPU seconds, and the ratio
of medians to softmax's with a bootstrap interval.
``part=inference``: the inference cost per prompt of the smoke-scale model per mixer × quant mode (``quant``): CPU
time of a forward pass over a batch of prompts at k = 2d (d = 5, 11 points), per prompt, interleaved, and the
state / KV memory one sequence keeps in the whole model (every layer's ``state_floats``); the rows the error-vs-cost
chart of ``make figures`` joins with the jobs' errors on (model, attn, quant, n_dims) (``icl.analysis.pareto``). A
row's ``quant`` is the mode's label at its default settings (``intx_weight`` → ``intx_weight_w4_pc``), the label a
job's eval.csv carries for that mode.
Writes ``mixers.csv``, ``mixers_slopes.csv``, ``mixers.md``, ``train_step.csv`` and ``inference_cost.csv`` under
``out_dir``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from icl.analysis.pareto import COST_FILE
from icl.attention import positive
from icl.bench.attention import device_name, pick_device, slopes, variant_params
from icl.bench.entry import hydra_cli
from icl.bench.latency import quantized
from icl.bench.timing import interleaved, summarise
from icl.files import write_csv, write_text
from icl.mixers import MaskedSoftmax, build_mixer, check_mixer, family, mixer_names
from icl.quantize import QuantSpec
from icl.stats import bootstrap_median_ci, ratio_ci
from icl.transformer import ICLTransformer, TransformerConfig

log = logging.getLogger(__name__)
PARTS = ("cost", "train_step", "inference")


def kernel_flops(mixer: torch.nn.Module, T: int) -> float:
    """The mixing between the projections, 2 FLOPs per multiply-add: 4·C per scored causal pair for the pairwise
    kernels (QKᵀ and AV); the recurrent mixers' own count (``kernel_flops``: their recurrence run token by token,
    as generation runs it); NaN where the kernel's FLOPs are not counted (the linear-cost attention kernels)."""
    if hasattr(mixer, "kernel_flops"):
        return float(mixer.kernel_flops(T))
    kernel = getattr(mixer, "kernel", None)
    if kernel is None or not getattr(kernel, "pairwise", False):
        return float("nan")
    C = mixer.qkv.in_features
    pairs = int(kernel.allowed(T, torch.device("cpu")).sum()) if isinstance(kernel, MaskedSoftmax) else T * (T + 1) // 2
    return 4.0 * C * pairs


def cost_rows(cfg: DictConfig, names: list[str], T: int, device: torch.device) -> list[dict[str, Any]]:
    """Every mixer × mode at one length, interleaved; one summary row each."""
    dtype = getattr(torch, cfg.dtype)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    x = torch.randn(cfg.batch, T, cfg.n_embd, generator=gen).to(device, dtype).requires_grad_(True)
    grad = torch.randn(cfg.batch, T, cfg.n_embd, generator=gen).to(device, dtype)
    calls, mixers = {}, {}
    for name in names:
        mixers[name] = mixer = build_mixer(name, cfg.n_embd, cfg.n_head, variant_params(name, "smoke")).to(device, dtype)
        for mode in cfg.modes:
            if mode == "forward":
                calls[(name, mode)] = lambda m=mixer: _no_grad(m, x)
            else:
                calls[(name, mode)] = lambda m=mixer: m(x).backward(grad)
    times, failed = interleaved(calls, device, cfg.warmup, cfg.repeats)
    rows = []
    for (name, mode), seconds in times.items():
        stats = summarise(seconds) if seconds else {}
        rows.append({"variant": name, "family": family(name), "mode": mode, "T": T,
                     **{f"{k}_ms": v * 1e3 for k, v in stats.items() if k not in ("n", "n_kept")},
                     "n": stats.get("n", 0), "state_floats": mixers[name].state_floats(T),
                     "kernel_flops": kernel_flops(mixers[name], T), "note": failed.get((name, mode), "")})
    return rows


def _no_grad(mixer: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        mixer(x)


def cost_markdown(df: pd.DataFrame, slope_df: pd.DataFrame, mode: str) -> str:
    lengths = sorted(df["T"].unique())
    lines = ["| mixer | family | " + " | ".join(f"T={T}" for T in lengths) + " | slope (all) | state floats at "
             f"T={lengths[-1]} |", "|" + "---|" * (len(lengths) + 4)]
    for name in df["variant"].unique():
        sub = df[(df.variant == name) & (df["mode"] == mode)].set_index("T")
        cells = [f"{sub.median_ms[T]:.3g}" if T in sub.index and pd.notna(sub.median_ms[T]) else "—" for T in lengths]
        s = slope_df[(slope_df.variant == name) & (slope_df["mode"] == mode)].slope_all
        lines.append(f"| {name} | {sub.family.iloc[0]} | " + " | ".join(cells)
                     + f" | {s.iloc[0]:.2f} | {int(sub.state_floats[lengths[-1]]):,} |")
    return "\n".join(lines)


def smoke_model(name: str, seed: int = 0) -> ICLTransformer:
    """The smoke study's model (d = 5, 11 points, the tiny size) with ``name``'s options as its smoke recipe row
    trains it (retnet's d_conv, when its row sets one)."""
    torch.manual_seed(seed)
    return ICLTransformer(TransformerConfig(n_dims=5, n_positions=11, n_embd=64, n_layer=3, n_head=2, attn=name,
                                            attn_params=variant_params(name, "smoke")))


def train_step_ratios(names: list[str], batch: int = 64, warmup: int = 3, repeats: int = 30,
                      seed: int = 0) -> pd.DataFrame:
    """One Adam training step per mixer at the smoke scale, all interleaved with softmax in this process; CPU seconds
    (``time.process_time``: other processes on a shared machine do not count). Ratio of medians to softmax's."""
    names = ["softmax", *[n for n in names if n != "softmax"]]
    gen = torch.Generator().manual_seed(seed)
    xs, ys = torch.randn(batch, 11, 5, generator=gen), torch.randn(batch, 11, generator=gen)
    calls = {}
    for name in names:
        model = smoke_model(name, seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(model: ICLTransformer = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            (model(xs, ys) - ys).pow(2).mean().backward()
            opt.step()

        calls[name] = step
    times, _ = interleaved(calls, torch.device("cpu"), warmup, repeats, clock=time.process_time)
    rows = []
    for name in names:
        ratio, lo, hi = ratio_ci(times[name], times["softmax"], seed=seed)
        rows.append({"mixer": name, "family": family(name), "median_ms": 1e3 * summarise(times[name])["median"],
                     "ratio_to_softmax": ratio, "ratio_low": lo, "ratio_high": hi, "repeats": repeats,
                     "threads": torch.get_num_threads()})
    return pd.DataFrame(rows)


def model_state_floats(model: ICLTransformer, tokens: int) -> int:
    """Floats one sequence keeps in the whole model to produce the next token after ``tokens`` tokens."""
    return sum(block.attn.state_floats(tokens) for block in model.blocks)


def inference_costs(names: list[str], quants: list[str], batch: int = 64, warmup: int = 2, repeats: int = 20,
                    seed: int = 0) -> pd.DataFrame:
    """CPU ms per prompt of the smoke-scale model's forward pass at k = 2d (d = 5, 11 points), every mixer × quant
    mode interleaved in this process (``time.process_time``: other processes do not count), with the median's
    bootstrap interval and the state / KV floats per sequence; a mode that cannot run here is a row with its note."""
    n_dims, n_points = 5, 11
    gen = torch.Generator().manual_seed(seed)
    xs, ys = torch.randn(batch, n_points, n_dims, generator=gen), torch.randn(batch, n_points, generator=gen)
    calls, notes, state = {}, {}, {}
    for name in names:
        model = smoke_model(name, seed).eval()
        state[name] = model_state_floats(model, 2 * n_points)
        for quant in quants:
            qmodel, notes[(name, quant)] = quantized(model, quant, torch.device("cpu"))
            if qmodel is not None:
                calls[(name, quant)] = lambda m=qmodel: _no_grad_model(m, xs, ys)
    times, failed = interleaved(calls, torch.device("cpu"), warmup, repeats, clock=time.process_time)
    notes.update(failed)
    rows = []
    for (name, quant), note in notes.items():
        per_prompt = [1e3 * t / batch for t in times.get((name, quant), [])]
        lo, hi = bootstrap_median_ci(per_prompt, 2000, 0.95, seed) if per_prompt and not note else (math.nan,) * 2
        rows.append({"model": "tiny", "attn": name, "quant": QuantSpec.from_config({"name": quant}).label,
                     "family": family(name), "n_dims": n_dims,
                     "k": 2 * n_dims, "tokens": 2 * n_points, "batch": batch,
                     "latency_ms": summarise(per_prompt)["median"] if per_prompt and not note else math.nan,
                     "latency_low_ms": lo, "latency_high_ms": hi, "state_floats": state[name],
                     "clock": "process CPU time", "threads": torch.get_num_threads(),
                     "device": device_name(torch.device("cpu")), "note": note})
    return pd.DataFrame(rows)


def _no_grad_model(model: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> None:
    with torch.inference_mode():
        model(xs, ys)


def run(cfg: DictConfig) -> dict[str, pd.DataFrame]:
    names = [check_mixer(n) for n in cfg.variants] if cfg.variants else mixer_names()
    bad = sorted(set(cfg.parts) - set(PARTS))
    if bad:
        raise ValueError(f"unknown part(s) {bad}; choose from: {', '.join(PARTS)}")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device, text, result = pick_device(cfg.device), [], {}
    if "cost" in cfg.parts:
        rows = []
        for T in cfg.lengths:
            log.info("T=%d ...", T)
            rows += cost_rows(cfg, names, int(T), device)
        df = pd.DataFrame(rows)
        df.insert(3, "device", device_name(device))
        slope_df = slopes(df)
        write_csv(out / "mixers.csv", df, index=False)
        write_csv(out / "mixers_slopes.csv", slope_df, index=False)
        text.append(f"Sequence mixers (projections included), {device_name(device)}, torch {torch.__version__}, "
                    f"batch {cfg.batch}, n_embd {cfg.n_embd}, {cfg.n_head} heads, {cfg.dtype}; median ms over "
                    f"{cfg.repeats} runs; state floats per sequence and layer")
        text += [f"**{mode}**\n\n{cost_markdown(df, slope_df, mode)}" for mode in cfg.modes]
        result["cost"] = df
    if "train_step" in cfg.parts:
        steps = train_step_ratios(names, repeats=int(cfg.train_repeats), seed=int(cfg.seed))
        write_csv(out / "train_step.csv", steps, index=False)
        text.append("Training step at the smoke scale (d = 5, 11 points, tiny, batch 64), CPU ms, ratio to softmax "
                    "[95% bootstrap]\n\n" + "\n".join(
                        f"| {r.mixer} | {r.median_ms:.2f} | {r.ratio_to_softmax:.2f} [{r.ratio_low:.2f}, "
                        f"{r.ratio_high:.2f}] |" for r in steps.itertuples()))
        result["train_step"] = steps
    if "inference" in cfg.parts:
        costs = inference_costs(names, list(cfg.quant), positive("inference_batch", cfg.inference_batch),
                                int(cfg.warmup), positive("inference_repeats", cfg.inference_repeats), int(cfg.seed))
        write_csv(out / COST_FILE, costs, index=False)
        text.append("Inference per prompt at k = 2d (smoke model, batch "
                    f"{cfg.inference_batch}), CPU ms [95% bootstrap], state floats per sequence\n\n" + "\n".join(
                        f"| {r.attn} | {r.quant} | {r.latency_ms:.4f} [{r.latency_low_ms:.4f}, {r.latency_high_ms:.4f}] "
                        f"| {r.state_floats:,} | {r.note} |" for r in costs.itertuples()))
        result["inference"] = costs
    write_text(out / "mixers.md", "\n\n".join(text) + "\n")
    print("\n\n".join(text))
    return result


cli = hydra_cli(run, "bench_mixers")  # python -m icl.bench.mixers


if __name__ == "__main__":
    cli()
