"""Claim (f): latency ratios to softmax/none from ``icl.bench``'s CSV (one process, interleaved rounds), worded as a
measurement on the machine that ran it — hardware, model size, batch and kernel in every row — never as a
replication of the seed paper's T4 table. (f) proper compares the variants in float; the quantised models' rows are
their own group (f-q): an int8 model's ratio to softmax in float times the int8 kernel (torchao's slow, fbgemm's
fast), and for relu and relu_causal the variant with it (the CSV holds ratios to softmax in float only). Per
device the fastest int8 backend, from the same rows."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from icl.lab.study.claims import REFERENCE, Row, SeedValue
from icl.lab.study.inference import UNRESOLVED, SeedInterval, verdict
from icl.quantize_modes import is_int8_backend

KERNELS = {"softmax": "torch scaled_dot_product_attention (fused)", "relu": "masked matmul, ÷ L",
           "relu_causal": "masked matmul, ÷ tokens seen"}


def read_bench(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def timing_rows(bench: pd.DataFrame | None, time_margin: float) -> list[Row]:
    """One row per variant × quant mode × k: log(latency ratio), CI from the benchmark's bootstrap; equivalence
    within [1/(1+m), 1+m]. Float rows are claim (f) (relu, relu_causal vs softmax); quantised rows claim (f-q)."""
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
        claim = "f" if r["quant"] == "none" else "f-q"
        row = Row(claim, f"{r['attn']} {r['quant']} vs softmax none, k = {int(r['k'])}", "—", f"{r['attn']}/{r['quant']}",
                  f"latency ratio {r['ratio']:.3f} [{r['ratio_ci_low']:.3f}, {r['ratio_ci_high']:.3f}]; {where}",
                  "equal", margin, [value])
        row.interval = SeedInterval(value.point, value.low, value.high, 1)  # the benchmark's CI: what is judged
        row.verdict, row.why = verdict("equal", value.low, value.high, margin, 1, 1)
        row.why = row.why.replace("seed-level CI", "log-ratio CI (interleaved rounds)")
        rows.append(row)
    return rows


SETTING = ["device", "model", "batch", "threads"]  # what a latency ratio is measured under: ranked within one


def fastest_int8(bench: pd.DataFrame | None) -> pd.DataFrame:
    """Per device and k: the int8 backend whose softmax model has the lowest latency ratio to softmax in float (the
    bench's ratio column, same process and rounds), its CI, and the runner-up's, to say whether the two overlap."""
    columns = [*SETTING, "k", "quant", "ratio", "ratio_ci_low", "ratio_ci_high", "runner_up", "runner_up_low",
               "runner_up_high"]
    needed = {"part", *SETTING, "attn", "quant", "k", "ratio", "ratio_ci_low", "ratio_ci_high"}
    if bench is None or not needed <= set(bench.columns):
        return pd.DataFrame(columns=columns)
    rows = bench[(bench["part"] == "latency") & (bench["attn"] == REFERENCE) & bench["ratio"].notna()
                 & bench["quant"].map(is_int8_backend)]
    out = []
    for (*setting, k), at_k in rows.groupby([*SETTING, "k"], sort=True):  # never ranked across models or batches
        ranked = at_k.sort_values("ratio")
        best, second = ranked.iloc[0], (ranked.iloc[1] if len(ranked) > 1 else None)
        out.append({**dict(zip(SETTING, setting)), "k": int(k),
                    **best[["quant", "ratio", "ratio_ci_low", "ratio_ci_high"]],
                    "runner_up": None if second is None else second["quant"],
                    "runner_up_low": math.nan if second is None else second["ratio_ci_low"],
                    "runner_up_high": math.nan if second is None else second["ratio_ci_high"]})
    return pd.DataFrame(out, columns=columns)


def fastest_int8_text(fastest: pd.DataFrame) -> str:
    """One line per device: the fastest int8 backend at each k, its latency ratio to float with CI, whether it is
    faster than float (CI below 1) and apart from the runner-up (CIs disjoint)."""
    if fastest.empty:
        return "no int8 latency rows of softmax in the timing CSV"
    lines = []
    for (device, model, batch, threads), rows in fastest.groupby(SETTING, sort=True):
        names, parts = sorted(set(rows["quant"])), []
        for r in rows.itertuples():
            speed = ("faster than float" if r.ratio_ci_high < 1 else
                     "slower than float" if r.ratio_ci_low > 1 else "not apart from float")
            apart = ("" if r.runner_up is None else
                     f"; next {r.runner_up} [{r.runner_up_low:.3f}, {r.runner_up_high:.3f}], "
                     + ("intervals apart" if r.ratio_ci_high < r.runner_up_low else "intervals overlap"))
            name = "" if len(names) == 1 else f"**{r.quant}** "
            parts.append(f"k = {r.k}: {name}{r.ratio:.3f} [{r.ratio_ci_low:.3f}, {r.ratio_ci_high:.3f}] ({speed}{apart})")
        head = f"**{names[0]}** at every k" if len(names) == 1 else "by k"
        lines.append(f"- {device}, model {model}, batch {batch}, {threads} thread(s): {head} (softmax's latency under "
                     f"it ÷ in float, 95% CI) — " + "; ".join(parts))
    return "\n".join(lines)
