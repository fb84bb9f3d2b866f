"""The quantisation table: per job, its quant.json proof beside the transformer's error at k = d, 2d.

``python -m icl.analysis.quant <sweep or job folder> …`` prints it as markdown (docs/quantization.md's table).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from icl.analysis.results import find_jobs
from icl.analysis.styles import QUANT_STYLES
from icl.contract import STANDARD, read_eval_csv
from icl.run.job import JobDir
from icl.stats import error_at
from icl.tables import markdown_table


def table(jobs: list[Path]) -> pd.DataFrame:
    """One row per job: the quant.json figures and the transformer's normalised error at k = d and 2d (eval.csv)."""
    rows = []
    for path in jobs:
        job = JobDir(path)
        report = job.read_quant()
        if report is None or not job.eval_csv.is_file():
            continue
        df = read_eval_csv(job.eval_csv)
        if df is None:
            continue
        tf = df[(df.predictor == "transformer") & (df.strategy == STANDARD)].set_index("k")
        d = int(tf.n_dims.iloc[0])
        at = error_at(df, (d, 2 * d))
        rows.append({"quant": report["quant"], "bytes": report["bytes"], "bytes_float": report["bytes_float"],
                     "quantized_linears": f"{report['quantized_linears']}/{report['linear_layers']}",
                     "layer_bytes": report["layer_bytes"], "layer_bytes_float": report["layer_bytes_float"],
                     "rel_diff_max": report["rel_diff_max"], "rel_diff_mean": report["rel_diff_mean"],
                     f"error_k{d}": at.get(d), f"error_k{2 * d}": at.get(2 * d),
                     f"ci_k{2 * d}": f"[{tf.ci_low.get(2 * d):.3f}, {tf.ci_high.get(2 * d):.3f}]",
                     "job": str(job)})
    order = {name: i for i, name in enumerate(QUANT_STYLES)}  # the quant modes in their registry order
    return pd.DataFrame(rows).sort_values("quant", key=lambda s: s.map(order)) if rows else pd.DataFrame()


def main(argv: list[str]) -> None:
    """``python -m icl.analysis.quant <folder> …``: the quant.json table of every job under the folders (markdown)."""
    if not argv:
        raise SystemExit("usage: python -m icl.analysis.quant <sweep or job folder> [...]")
    df = table(find_jobs(argv))
    if df.empty:
        raise SystemExit(f"error: no job with quant.json and eval.csv under {' '.join(argv)}")
    print(markdown(df.drop(columns="job")))


def markdown(df: pd.DataFrame) -> str:
    """A DataFrame as a markdown table (numbers to 4 significant digits)."""
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    return markdown_table(list(df.columns), ([cell(v) for v in row] for row in df.itertuples(index=False)))


def cli() -> None:
    """Console script ``icl-quant-table``."""
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()
