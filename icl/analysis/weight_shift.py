"""How close is each trained model to one step of gradient descent? One row per job, verdicts computed.

From every job's algorithms.csv (``icl.weight_shift`` rows, beside the agreement metrics) and eval.csv, at k = d and
k = 2d: the fitted step η̂ (k + d + 1) (1 = ``gd_1step_opt``), the share of the prediction one fitted GD step
explains, the agreement with ``gd_1step_opt``, and for softmax models per layer the linearisation gap, its bound, the
score spread a and whether the bound held at every position. Verdicts (docs/algorithms.md states the bound and the
thresholds):

  bound_holds     the linearisation bound held at every prompt, head, layer and k (a theorem: a check of the code
                  and of the heads it read);
  linear_regime   in every softmax layer the bound is below the GD-like term at >= ``REGIME_SHARE`` of the
                  (prompt, head, k >= 1) positions: the layer is provably near the linear attention that runs GD;
  one_step_gd     one fitted GD step explains >= ``GD_SHARE`` of the model's prediction at k = 2d;
  prediction_met  the papers' prediction for this model: a softmax model in the linear regime is one-step-GD-like
                  (linear_regime ⇒ one_step_gd); empty where the model is not in the regime (nothing is predicted).
Never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from icl.analysis.results import load_config
from icl.run.job import JobDir
from icl.tables import markdown_table

REGIME_SHARE = 0.5
GD_SHARE = 0.9
COLUMNS = ["task", "attn", "quant", "model", "layer_norm", "seed", "k", "error", "pred_diff_gd_1step_opt",
           "sensitivity_cos_gd_1step_opt", "step_fit", "gd_share", "score_spread_max", "linearisation_gap_max",
           "linearisation_bound_max", "explained_min", "li_log10_m_max", "bound_holds", "linear_regime",
           "one_step_gd", "prediction_met", "run_dir"]


def _value(rows: pd.DataFrame, metric: str, k: int, learner: str | None = None) -> float:
    sel = rows[(rows.metric == metric) & (rows.k == k)]
    if learner is not None:
        sel = sel[sel.learner == learner]
    return float(sel.value.iloc[0]) if len(sel) else np.nan


def _model_error(run_dir: Path, k: int) -> float:
    path = JobDir(run_dir).eval_csv
    if not path.is_file():
        return np.nan
    ev = pd.read_csv(path)
    sel = ev[(ev.strategy == "standard") & (ev.predictor == "transformer") & (ev.k == k)]
    return float(sel.error.iloc[0]) if len(sel) else np.nan


def job_rows(rows: pd.DataFrame) -> list[dict]:
    """The rows of one job (its algorithms.csv with run_dir), at k = d and k = 2d."""
    first = rows.iloc[0]
    run_dir, d = Path(first.run_dir), int(first.n_dims)
    layer_norm = bool(load_config(run_dir).get("model", {}).get("layer_norm", True))
    layers = rows[rows.metric.str.startswith(("linearisation", "score_spread", "li_log10"))]
    softmax = not layers.empty
    positive = layers[layers.k >= 1]
    bound_holds = bool((positive[positive.metric == "linearisation_violations"].value == 0).all()) if softmax else None
    explained = positive[positive.metric == "linearisation_explains"].groupby("layer").value.mean()
    linear_regime = bool(explained.min() >= REGIME_SHARE) if softmax else None
    out = []
    for k in (d, 2 * d):
        power, gap = _value(rows, "pred_power", k), _value(rows, "step_fit_gap", k)
        share = 1 - gap / power if power > 0 else np.nan
        at_k = layers[layers.k == k].groupby("metric").value.max()
        one_step = bool(share >= GD_SHARE)
        out.append({"task": first.task, "attn": first.attn, "quant": first.quant, "model": first.model,
                    "layer_norm": layer_norm, "seed": first.seed, "k": k, "error": _model_error(run_dir, k),
                    "pred_diff_gd_1step_opt": _value(rows, "pred_diff", k, "gd_1step_opt"),
                    "sensitivity_cos_gd_1step_opt": _value(rows, "sensitivity_cos", k, "gd_1step_opt"),
                    "step_fit": _value(rows, "step_fit", k), "gd_share": share,
                    "score_spread_max": at_k.get("score_spread", np.nan),
                    "linearisation_gap_max": at_k.get("linearisation_gap", np.nan),
                    "linearisation_bound_max": at_k.get("linearisation_bound", np.nan),
                    "explained_min": float(explained.min()) if softmax else np.nan,
                    "li_log10_m_max": at_k.get("li_log10_m", np.nan),
                    "bound_holds": bound_holds, "linear_regime": linear_regime,
                    "one_step_gd": one_step if k == 2 * d else None,
                    "prediction_met": (one_step if linear_regime else None) if k == 2 * d else None,
                    "run_dir": str(run_dir)})
    return out


def weight_shift_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per job × k ∈ {d, 2d} for the jobs whose algorithms.csv has the weight-shift rows."""
    jobs = df[df.metric == "step_fit"].run_dir.unique()
    out = [row for job in jobs for row in job_rows(df[df.run_dir == job])]
    return pd.DataFrame(out, columns=COLUMNS)


def weight_shift_markdown(table: pd.DataFrame) -> str:
    """The table as docs/algorithms.md shows it: one line per job and k, verdicts as computed."""
    def fmt(value: object, digits: int = 3) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "–"
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)

    header = ["attn", "LayerNorm", "k", "error", "pred_diff to gd_1step_opt", "sensitivity cos", "η̂(k+d+1)",
              "gd_share", "max score spread a", "gap / bound (max layer)", "expansion explains (min layer)",
              "bound holds", "linear regime", "one-step GD", "prediction met"]
    rows = [[r.attn, r.layer_norm, r.k, fmt(r.error), fmt(r.pred_diff_gd_1step_opt), fmt(r.sensitivity_cos_gd_1step_opt),
             fmt(r.step_fit), fmt(r.gd_share), fmt(r.score_spread_max),
             f"{fmt(r.linearisation_gap_max)} / {fmt(r.linearisation_bound_max)}", fmt(r.explained_min),
             fmt(r.bound_holds),
             fmt(r.linear_regime), fmt(r.one_step_gd), fmt(r.prediction_met)] for r in table.itertuples()]
    return markdown_table(header, rows)
