"""Claim (f): latency ratios to softmax/none from ``icl.bench``'s CSV (one process, interleaved rounds), worded as a
measurement on the machine that ran it — hardware, model size, batch and kernel in every row — never as a
replication of the seed paper's T4 table."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from icl.lab.study.claims import REFERENCE, Row, SeedValue
from icl.lab.study.inference import UNRESOLVED, SeedInterval, verdict

KERNELS = {"softmax": "torch scaled_dot_product_attention (fused)", "relu": "masked matmul, ÷ L",
           "relu_causal": "masked matmul, ÷ tokens seen"}


def read_bench(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def timing_rows(bench: pd.DataFrame | None, time_margin: float) -> list[Row]:
    """One row per variant × quant mode × k: log(latency ratio), CI from the benchmark's bootstrap; equivalence
    within [1/(1+m), 1+m]."""
    margin = math.log1p(time_margin)
    needed = {"part", "ratio", "ratio_ci_low", "ratio_ci_high", "attn", "quant", "k"}
    if bench is None or not needed <= set(bench.columns):
        row = Row("f", "inference time", "—", "—", "no timing CSV with latency ratios in the study folder", "equal",
                  margin, [])
        row.verdict, row.why = UNRESOLVED, "no timing data"
        return [row]
    lat = bench[(bench["part"] == "latency") & bench["ratio"].notna()]
    lat = lat[~((lat["attn"] == REFERENCE) & (lat["quant"] == "none"))]
    rows = []
    for _, r in lat.sort_values(["attn", "quant", "k"]).iterrows():
        where = (f"measured on {r.get('device', '?')}, {int(r['threads']) if pd.notna(r.get('threads')) else '?'} "
                 f"thread(s); model {r.get('model', '?')}, batch {r.get('batch', '?')}; kernel: "
                 f"{KERNELS.get(str(r['attn']), str(r['attn']))}")
        value = SeedValue(0, math.log(r["ratio"]), math.log(r["ratio_ci_low"]), math.log(r["ratio_ci_high"]), True,
                          False)
        row = Row("f", f"{r['attn']} {r['quant']} vs softmax none, k = {int(r['k'])}", "—", f"{r['attn']}/{r['quant']}",
                  f"latency ratio {r['ratio']:.3f} [{r['ratio_ci_low']:.3f}, {r['ratio_ci_high']:.3f}]; {where}",
                  "equal", margin, [value])
        row.interval = SeedInterval(value.point, value.low, value.high, 1)  # the benchmark's CI: what is judged
        row.verdict, row.why = verdict("equal", value.low, value.high, margin, 1, 1)
        row.why = row.why.replace("seed-level CI", "log-ratio CI (interleaved rounds)")
        rows.append(row)
    return rows
