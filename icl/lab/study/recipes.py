"""The study's recipe selections, from committed tuning tables: which recipe each arm was chosen to train with.

A tuning sweep (``configs/experiment/seed_study/tune_*.yaml``) is summarised by ``python -m icl.lab.tuning … out=
<tuning>/<name>`` into ``cells.csv`` (one row per job: validation error at k = 2d) and ``candidates.csv`` (one row
per recipe: its worst job, how many jobs it has, and its status). This module turns those committed files into the
report's "Recipe selection" section and checks that the cells of an arm trained with the recipe its selection chose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from icl.lab import tuning

# How the report names a recipe's options, in the order it lists them (an option without a label: its own name).
LABELS = {"lr": "lr", "qk_norm": "qk_norm", "gradient_clip_val": "clip", "warmup_steps": "warm-up"}


def recipe_columns() -> list[str]:
    """The columns that name a recipe (``icl.lab.tuning.RECIPE_KEYS``), in the report's order."""
    columns = list(tuning.RECIPE_KEYS.values())
    return [c for c in LABELS if c in columns] + [c for c in columns if c not in LABELS]


def _key(values: Mapping[str, Any]) -> tuple[Any, ...]:
    """A recipe as comparable values (clip None and NaN alike; lr to 3 significant digits)."""
    return tuple(_value(name, values.get(name)) for name in recipe_columns())


def _value(name: str, v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if name == "qk_norm":
        return str(v).lower() == "true"
    return float(f"{float(v):.3g}")


def attn_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The attention options (``icl.lab.tuning.ATTN_OPTIONS``, e.g. retnet's d_conv) ``values`` sets: shown and
    grouped by, not checked against the cells (a cell.json's recipe records the recipe keys only)."""
    return {name: v for name in tuning.ATTN_OPTIONS if (v := _value(name, values.get(name))) is not None}


def recipe_text(values: Mapping[str, Any]) -> str:
    def shown(name: str, v: Any) -> str:
        if name == "warmup_steps":
            return str(int(v)) if v is not None else "—"
        return f"{v:g}" if name in ("lr", *tuning.ATTN_OPTIONS) else str(v)

    named = [*zip(recipe_columns(), _key(values)), *attn_options(values).items()]
    return ", ".join(f"{LABELS.get(name, name)} {shown(name, v)}" for name, v in named)


def load(tuning_dir: Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """``{name: (cells, candidates)}`` for every committed selection under ``tuning_dir``."""
    out = {}
    for folder in sorted(p for p in Path(tuning_dir).glob("*") if (p / "candidates.csv").is_file()):
        out[folder.name] = (pd.read_csv(folder / "cells.csv"), pd.read_csv(folder / "candidates.csv"))
    return out


def job_table(cells: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per recipe: each variant × seed's validation error at k = 2d, and the recipe's worst job. The
    attention options a sweep varied are part of a recipe here (retnet with and without its short conv are two)."""
    rows = []
    by = [*recipe_columns(), *(c for c in tuning.ATTN_OPTIONS if c in cells.columns and cells[c].notna().any())]
    for _, sub in cells.groupby(by, dropna=False, sort=True):
        first = sub.iloc[0].to_dict()
        row: dict[str, Any] = {"recipe": recipe_text(first)}
        for _, job in sub.sort_values(["attn", "seed"]).iterrows():
            row[f"{job['attn']} s{int(job['seed'])}"] = float(job["error"])
        row["worst"] = float(sub["error"].max())
        rows.append(row)
    return rows


def train_minutes(cells: pd.DataFrame) -> float:
    """Training time of the sweep's own jobs (re-scored ones trained elsewhere count nothing)."""
    return float(pd.to_numeric(cells.get("train_seconds"), errors="coerce").fillna(0).sum()) / 60


def chosen(candidates: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The chosen recipe per variant (``{"*": row}`` for a shared selection)."""
    rows = candidates[candidates["status"] == "chosen"]
    if rows.empty:
        return {}
    if (candidates.get("selection", pd.Series(["per variant"])) == "shared").all():
        return {"*": rows.iloc[0].to_dict()}
    return {str(r["attn"]): r.to_dict() for _, r in rows.iterrows()}


def arm_check(candidates: pd.DataFrame, trained: Sequence[tuple[str, Mapping[str, Any]]],
              learn_bound: float = math.inf) -> str:
    """Whether every cell trained under this selection used the recipe chosen for it (``trained``: each committed
    cell's (variant, recipe); a variant a per-variant selection never tuned, e.g. the mixers grid's softmax, which
    the seed study's selection chose, is named and not checked); a chosen recipe whose worst job is above
    ``learn_bound`` (the guard's fraction of the zero estimator) is named as one that did not learn on every seed:
    the best there is, not a working recipe."""
    best = chosen(candidates)
    if not best:
        return "No complete recipe yet: nothing chosen"
    text = "; ".join(f"{'' if attn == '*' else attn + ': '}{recipe_text(row)}" + (
        f" (**did not learn on every seed**: {row['attn']} seed {int(row['seed'])} at {float(row['error']):.3f})"
        if not float(row["error"]) <= learn_bound else "") for attn, row in best.items())
    searched = set() if "*" in best else set(candidates["attn"].astype(str))
    outside = sorted({attn for attn, _ in trained if "*" not in best and attn not in searched})
    open_search = sorted({attn for attn, _ in trained if attn in searched and attn not in best})
    trained = [(attn, r) for attn, r in trained if attn not in outside and attn not in open_search]
    elsewhere = (f"; {', '.join(outside)}: not tuned by this selection (its cells' recipes are not checked here)"
                 if outside else "")
    elsewhere += (f"; {', '.join(open_search)}: **no recipe chosen yet** (its search is incomplete), yet cells "
                  "trained" if open_search else "")
    if not trained:
        return f"Chosen: {text}; no cell trained with it is committed yet{elsewhere}"
    wrong = [(attn, r) for attn, r in trained if _key(r) != _key(best.get("*", best.get(attn, {})))]
    if wrong:
        attn, r = wrong[0]
        return (f"Chosen: {text}; but {len(wrong)} of {len(trained)} cells trained with another recipe (e.g. {attn}: "
                f"{recipe_text(r)}): **the arm does not use its selection**{elsewhere}")
    return f"Chosen: {text}; all {len(trained)} committed cells trained with it{elsewhere}"


def section(tuning_dir: Path | None, arms: Mapping[str, Mapping[str, Any]],
            trained: Mapping[str, Sequence[tuple[str, Mapping[str, Any]]]], table: Any,
            learn_bound: float = math.inf) -> str:
    """The report's "Recipe selection" text: per committed selection, the arm check, its candidates and its jobs.
    ``trained``: arm -> (variant, recipe) of its committed cells; ``table``: the report's table writer."""
    selections = load(tuning_dir) if tuning_dir is not None and Path(tuning_dir).is_dir() else {}
    if not selections:
        return "No tuning selection is committed (`python -m icl.lab.tuning ... out=<tuning>/<name>`)."
    by_selection = {spec.get("tuning"): arm for arm, spec in arms.items() if spec.get("tuning")}
    out = []
    for name, (cells, candidates) in selections.items():
        arm = by_selection.get(name)
        check = arm_check(candidates, trained.get(arm, []) if arm else [], learn_bound)
        status = [{"attn": "all" if r.get("selection") == "shared" else r["attn"], "recipe": recipe_text(r),
                   "jobs": int(r["jobs"]), "worst job (error at k = 2d)": float(r["error"]),
                   "worst: attn, seed": f"{r['attn']}, {int(r['seed'])}", "status": r["status"]}
                  for _, r in candidates.iterrows()]
        jobs = job_table(cells)
        columns = ["recipe", *sorted({k for r in jobs for k in r} - {"recipe", "worst"}), "worst"]
        jobs = [{c: r.get(c, math.nan) for c in columns} for r in jobs]  # a job not trained (yet): —
        rescored = int(pd.to_numeric(cells.get("train_seconds"), errors="coerce").isna().sum())
        out += [f"### {name}" + (f" (arm **{arm}**)" if arm else ""),
                f"{len(cells)} jobs on validation prompts (eval.seed {', '.join(map(str, sorted(set(cells['eval_seed']))))}), "
                f"{train_minutes(cells):.0f} min of training in the sweep's own jobs ({rescored} re-scored models trained "
                f"elsewhere with the same training config). {check}.", "",
                table(status, list(status[0])), "", table(jobs, columns), ""]
    return "\n".join(out)
