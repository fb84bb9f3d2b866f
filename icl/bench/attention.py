"""Cost of each attention kernel alone vs sequence length: ``python -m icl.bench.attention`` (``make bench-attn``).

Times forward (inference, no grad) and forward+backward of every registered variant, with its
parameters from ``configs/attn/<name>.yaml``, at each length T, on (batch, heads, T, head_dim)
inputs. Variants are interleaved within each repeat (one call of each, in a rotating order), so
slow drifts of the machine hit every variant alike. Writes to ``out_dir``:
``bench_attn.csv`` (one row per variant × mode × T), ``slopes.csv`` (log-time vs log-T slope, over
all lengths and between the two largest), ``bench_attn.md`` (the tables) and ``bench_attn.png``.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from icl.attention import ATTENTION, build_attention
from icl.bench.entry import hydra_cli
from icl.bench.timing import interleaved, loglog_slope, summarise
from icl.files import atomic_write, write_text
from icl.run.configs import CONFIG_DIR
from icl.tables import markdown_table

log = logging.getLogger(__name__)
MODES = ("forward", "forward_backward")


def variant_params(name: str, recipe: str | None = None) -> dict[str, Any]:
    """The variant's settings (its YAML resolved, minus the name) as a training job with ``recipe``
    (configs/recipe/<recipe>.yaml) gets them: an option the variant's row sets (nystrom's ridge, retnet's d_conv)
    takes the row's value; ``None``: as a job without a recipe, every option at its file's default (the published
    RetNet, the exact Nyström form)."""
    node = OmegaConf.load(CONFIG_DIR / "attn" / f"{name}.yaml")
    if recipe is not None:  # the attn file reads its row through ${oc.select:recipe.variants.<name>...}
        rows = OmegaConf.load(CONFIG_DIR / "recipe" / f"{recipe}.yaml").recipe
        node = OmegaConf.merge({"recipe": rows}, {"attn": node}).attn
    params = OmegaConf.to_container(node, resolve=True)
    params.pop("name", None)
    return params


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch sees no CUDA GPU here: use device=cpu or device=auto")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model with the intra-op thread count the timings ran with."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{models[0] if models else platform.processor()} ({torch.get_num_threads()} threads)"


def make_call(kernel: torch.nn.Module, mode: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              grad: torch.Tensor) -> Callable[[], None]:
    """A closure running one forward (no grad) or one forward+backward of ``kernel``."""
    if mode == "forward":
        def call() -> None:
            with torch.inference_mode():
                kernel(q, k, v)
    else:
        def call() -> None:
            for t in (q, k, v):
                t.grad = None
            kernel(q, k, v).backward(grad)
    return call


def bench_length(cfg: DictConfig, names: list[str], T: int, device: torch.device) -> list[dict[str, Any]]:
    """All variants × modes at one length, interleaved; one summary row each."""
    dtype = getattr(torch, cfg.dtype)
    gen = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
    shape = (cfg.batch, cfg.heads, T, cfg.head_dim)
    q, k, v, grad = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    calls = {}
    for name in names:
        kernel = build_attention(name, head_dim=cfg.head_dim, **variant_params(name)).to(device, dtype)
        for mode in cfg.modes:
            calls[(name, mode)] = make_call(kernel, mode, q, k, v, grad)
    times, failed = interleaved(calls, device, cfg.warmup, cfg.repeats)
    rows = []
    for (name, mode), seconds in times.items():
        stats = summarise(seconds) if seconds else {}
        rows.append({"variant": name, "mode": mode, "T": T, **{f"{k}_ms": v * 1e3 for k, v in stats.items()
                                                                if k not in ("n", "n_kept")},
                     "n": stats.get("n", 0), "n_kept": stats.get("n_kept", 0), "note": failed.get((name, mode), "")})
    return rows


def slopes(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant × mode: slope of log(median) vs log(T) over all lengths and over the two largest."""
    out = []
    for (name, mode), g in df.dropna(subset=["median_ms"]).groupby(["variant", "mode"], sort=False):
        g = g.sort_values("T")
        out.append({"variant": name, "mode": mode, "slope_all": loglog_slope(g["T"], g["median_ms"]),
                    "slope_top": loglog_slope(g["T"].iloc[-2:], g["median_ms"].iloc[-2:]),
                    "top_lengths": f"{g['T'].iloc[-2]}-{g['T'].iloc[-1]}" if len(g) > 1 else ""})
    return pd.DataFrame(out)


def markdown(df: pd.DataFrame, slope_df: pd.DataFrame, mode: str) -> str:
    """One table per mode: median ms [IQR] per length, then the slopes."""
    lengths = sorted(df["T"].unique())
    rows = []
    for name in df["variant"].unique():
        cells = []
        for T in lengths:
            row = df[(df.variant == name) & (df["mode"] == mode) & (df["T"] == T)]
            cells.append("—" if row.empty or np.isnan(row.median_ms.iloc[0]) else
                         f"{row.median_ms.iloc[0]:.3g} [{row.iqr_ms.iloc[0]:.2g}]")
        s = slope_df[(slope_df.variant == name) & (slope_df["mode"] == mode)]
        fit = [f"{s[c].iloc[0]:.2f}" if not s.empty else "—" for c in ("slope_all", "slope_top")]
        rows.append([name, *cells, *fit])
    return markdown_table(["variant", *(f"T={T}" for T in lengths), "slope (all)", "slope (top two)"], rows)


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sns.lineplot(df, x="T", y="median_ms", hue="variant", style="mode", markers=True, ax=ax)
    ax.set(xscale="log", yscale="log", xlabel="sequence length T (tokens)", ylabel="median time per call (ms)",
           title="attention kernel cost")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, format=Path(path).suffix[1:]))
    plt.close(fig)


def run(cfg: DictConfig) -> pd.DataFrame:
    """The whole benchmark; returns the tidy table (also written to ``cfg.out_dir``)."""
    names = list(cfg.variants) if cfg.variants else sorted(ATTENTION)
    unknown = sorted(set(names) - set(ATTENTION))
    if unknown:
        raise ValueError(f"unknown attention variant(s) {unknown}; choose from: {', '.join(sorted(ATTENTION))}")
    bad_modes = sorted(set(cfg.modes) - set(MODES))
    if bad_modes:
        raise ValueError(f"unknown mode(s) {bad_modes}; choose from: {', '.join(MODES)}")
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))
    rows = []
    for T in cfg.lengths:
        log.info("T=%d ...", T)
        rows += bench_length(cfg, names, int(T), device)
    df = pd.DataFrame(rows)
    df.insert(3, "device", device_name(device))
    for key in ("batch", "heads", "head_dim", "dtype"):
        df[key] = cfg[key]
    slope_df = slopes(df)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "bench_attn.csv", lambda tmp: df.to_csv(tmp, index=False))
    atomic_write(out / "slopes.csv", lambda tmp: slope_df.to_csv(tmp, index=False))
    title = (f"Attention kernels alone, {device_name(device)}, torch {torch.__version__}, batch {cfg.batch}, "
             f"{cfg.heads} heads × head_dim {cfg.head_dim}, {cfg.dtype}; median ms [IQR] over {cfg.repeats} runs")
    text = "\n\n".join([title] + [f"**{mode}**\n\n{markdown(df, slope_df, mode)}" for mode in cfg.modes]) + "\n"
    write_text(out / "bench_attn.md", text)
    plot(df, out / "bench_attn.png")
    print(text)
    return df


cli = hydra_cli(run, "bench_attn")  # console script icl-bench-attn (and python -m icl.bench.attention)

if __name__ == "__main__":
    cli()
