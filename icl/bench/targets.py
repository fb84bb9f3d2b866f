"""Speed targets checked against a benchmark's own rows: each verdict computed from bench.csv's numbers, never typed.

``targets`` (``configs/bench/overhead.yaml``; null elsewhere) names what the issue asks of the training step:

- ``job_over_bare``: the smoke job's step / the bare loop's (part ``overhead``), at most this;
- ``train.<model>.ratio``: reference / ours for the training step (part ``train``), at least this;
- ``train.<model>.frac_of_peak``: ours' matmul FLOP/s as a fraction of the peak measured in the same run, at least.

A target is ``met`` when the point estimate is on its side; ``CI`` says whether the whole confidence interval is too
(a ratio whose CI straddles the target is not a clear pass on this noisy machine). Not a CI gate.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from icl.tables import markdown_table

TRAIN_KEYS = ("ratio", "frac_of_peak")


def check(targets: dict[str, Any] | None) -> None:
    """Every bad target is one line."""
    if targets is None:
        return
    if not isinstance(targets, dict) or not isinstance(targets.get("train") or {}, dict):
        raise ValueError("targets must be a mapping {job_over_bare: X, train: {<model>: {ratio: X, frac_of_peak: X}}}")
    unknown = sorted(set(targets) - {"job_over_bare", "train"})
    if unknown:
        raise ValueError(f"unknown targets {unknown}; choose from: job_over_bare, train")
    values = [("targets.job_over_bare", targets.get("job_over_bare"))]
    for model, node in (targets.get("train") or {}).items():
        if not isinstance(node, dict):
            raise ValueError(f"targets.train.{model} must be a mapping {{ratio: X, frac_of_peak: X}}, got {node!r}")
        bad = sorted(set(node) - set(TRAIN_KEYS))
        if bad:
            raise ValueError(f"unknown targets.train.{model} key(s) {bad}; choose from: {', '.join(TRAIN_KEYS)}")
        values += [(f"targets.train.{model}.{key}", node.get(key)) for key in TRAIN_KEYS]
    for name, value in values:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"{name} must be a positive number or null, got {value!r}")


def verdicts(df: pd.DataFrame, targets: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target that this run measured: what, the value [CI], the target, met, CI clear of it."""
    out = []
    if targets.get("job_over_bare") is not None and "overhead" in set(df.get("part", ())):
        job = df[(df.part == "overhead") & (df.impl == "job")].iloc[0]
        out.append(_row("smoke job / bare loop", job.ratio, job.ratio_ci_low, job.ratio_ci_high,
                        float(targets["job_over_bare"]), at_most=True))
    for model, node in (targets.get("train") or {}).items():
        rows = df[(df.part == "train") & (df.impl == "ours") & (df.model == model)] if "model" in df else df[:0]
        if rows.empty or pd.isna(rows.iloc[0].get("median_ms")):
            continue
        ours = rows.iloc[0]
        if node.get("ratio") is not None:
            out.append(_row(f"{model} train step, reference / ours", ours.ratio, ours.ratio_ci_low,
                            ours.ratio_ci_high, float(node["ratio"])))
        if node.get("frac_of_peak") is not None:
            out.append(_row(f"{model} train step, fraction of the matmul peak", ours.frac_of_peak, None, None,
                            float(node["frac_of_peak"]), percent=True))
    return out


def _row(what: str, value: float, low: float | None, high: float | None, target: float,
         at_most: bool = False, percent: bool = False) -> dict[str, Any]:
    met = value <= target if at_most else value >= target
    clear = None if low is None else bool(high <= target if at_most else low >= target)
    shown = f"{target:.0%}" if percent else f"{target:g}"
    return {"what": what, "value": float(value), "ci_low": low, "ci_high": high, "percent": percent,
            "target": f"{'≤' if at_most else '≥'} {shown}", "met": bool(met), "ci_clear": clear}


def markdown(rows: list[dict[str, Any]]) -> str:
    """The verdicts as a table ('' when there are none)."""
    if not rows:
        return ""

    def value(r: dict[str, Any]) -> str:
        if r["ci_low"] is None:
            return f"{r['value']:.1%}" if r["percent"] else f"{r['value']:.3g}"
        return f"{r['value']:.3g} [{r['ci_low']:.3g}, {r['ci_high']:.3g}]"

    table = markdown_table(["target", "measured [CI]", "target", "met", "CI clear of the target"],
                           ([r["what"], value(r), r["target"], "yes" if r["met"] else "no",
                             "—" if r["ci_clear"] is None else ("yes" if r["ci_clear"] else "no")] for r in rows))
    return "**Targets (issue 32; met = the point estimate is on the target's side)**\n\n" + table
