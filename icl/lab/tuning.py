"""Pick a training recipe per attention variant from a tuning sweep, on validation prompts only.

``python -m icl.lab.tuning sweeps=[<dir>,…] [reporting_seed=0] [out=DIR] [full_steps=15000]``

A tuning sweep is any set of job folders (``icl.train -m …``) that differ in training options; each job's
``eval.csv`` holds its transformer's error on the prompts of *its* ``eval.seed``. Selection must not look at the
prompts the final numbers are reported on, so every job of the sweep must have been evaluated with an
``eval.seed`` different from the reporting one (``reporting_seed``, default 0 = ``configs/eval``'s seed); a sweep
that was not is refused with one line, before anything is picked. Per variant the cell with the lowest error at
k = 2d over its training seeds (its worst seed, or ``rank=median``; ``shared=true``: one recipe for all) wins
(ties: the lower upper CI bound, then the smaller lr). Writes ``cells.csv`` / ``cells.md`` (every cell)
and ``best.csv`` / ``best.md`` (the winners, with the warm-up rescaled to ``full_steps``: screening runs are
shorter and keep the warm-up's share of the run), ``candidates.csv`` / ``candidates.md`` (every recipe with its
status: only a complete recipe can win; see ``candidates``) and prints the rows for ``configs/recipe/smoke.yaml``.
Exits 2 when no recipe is complete yet (the tables are written all the same), 1 on an error.

Reads job folders through ``icl.results`` only: no torch.
"""

from __future__ import annotations

import json
import math
import numbers
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import MISSING, OmegaConf

from icl.analysis.results import find_jobs, flatten_config, load_config, load_errors, read_status
from icl.contract import EVAL, STANDARD, STATUS, cap_k, errors_key, read_eval_csv, strategies
from icl.files import write_csv, write_text
from icl.run.cli import parse
from icl.run.configs import CONFIG_DIR
from icl.stats import paired_bootstrap
from icl.tables import markdown_table

# The options that name a recipe (a row of configs/recipe/*.yaml): config key -> column name.
RECIPE_KEYS = {"optim.lr": "lr", "optim.warmup_steps": "warmup_steps", "model.qk_norm": "qk_norm",
               "trainer.gradient_clip_val": "gradient_clip_val"}
# The options a cell is made of: the recipe's, then what else a tuning sweep may vary, and the training seed.
# Attention options a sweep may search (config key -> column): a recipe row sets one where the variant's
# configs/attn/<name>.yaml reads it from the recipe (nystrom's ridge, retnet's d_conv).
ATTN_KEYS = {"attn.num_landmarks": "num_landmarks", "attn.ridge": "ridge", "attn.d_conv": "d_conv"}
ATTN_OPTIONS = tuple(ATTN_KEYS.values())
INT_OPTIONS = ("num_landmarks", "d_conv")  # integers in the YAML (a column with NaN for other variants is float)
CELL_KEYS = {**RECIPE_KEYS, "model.layer_scale": "layer_scale", "trainer.max_steps": "max_steps", **ATTN_KEYS,
             "seed": "seed"}
# Issue 14's targets for the smoke task at k = 2d: every variant <= 0.15, these three <= 0.10, and softmax not worse
# than before its tuning: 0.030 [0.025, 0.035] (README "Every attention variant on the smoke study", 15k steps,
# shared recipe lr 1e-3, eval.seed 0) — "not worse" = that value lies at or above the lower end of softmax's CI.
# With a reference job (softmax trained with the former recipe at the same steps, scored on the same prompts), the
# check is paired instead: the lower end of the CI of (tuned − reference) must be ≤ 0 (not significantly worse).
TARGET_ALL, TARGET_STRICT, STRICT = 0.15, 0.10, ("relu", "relu_causal", "sigmoid")
SOFTMAX_BEFORE = 0.030


class Rank(str, Enum):
    """Which training seed's error ranks a recipe (never the luckiest seed, nor seed 0 alone). As the type of a
    tool's option, the command line's parser refuses any other value in one line."""

    worst = "worst"
    median = "median"

    def __str__(self) -> str:  # the word itself, in f-strings and --help, on every Python
        return self.value


def paired_to(job: str | Path, reference: str | Path, k: int, n_boot: int = 1000, ci: float = 0.95) -> tuple[float, ...]:
    """(job − reference) transformer error at k on the same standard prompts, ÷ the zero estimator's, with a paired
    bootstrap CI: (point, low, high). Refuses jobs scored on different prompts (their zero errors differ)."""
    mine, ref = load_errors(job), load_errors(reference)
    if mine is None or ref is None:
        raise ValueError(f"no errors.npz in {job if mine is None else reference}: cannot pair them")
    zero_key, tf_key = errors_key(STANDARD, None, "zero"), errors_key(STANDARD, None, "transformer")
    zero = mine[zero_key][:, k]
    if not (ref[zero_key].shape == mine[zero_key].shape and (ref[zero_key][:, k] == zero).all()):
        raise ValueError(f"{job} and {reference} were not scored on the same prompts: no paired difference")
    point, low, high, _ = paired_bootstrap(mine[tf_key][:, [k]], ref[tf_key][:, [k]], zero[:, None], n_boot, ci,
                                           seed=0)
    return float(point[0]), float(low[0]), float(high[0])


def load_cells(roots: Iterable[str | Path]) -> pd.DataFrame:
    """One row per finished job: variant, task, cell options, eval.seed, error at k = 2d on its prompts, its CI."""
    rows = []
    for job in find_jobs(roots):
        status = read_status(job)["status"]
        df = read_eval_csv(job / EVAL) if (job / EVAL).is_file() else None
        if status != "done" or df is None:
            continue
        flat = flatten_config(load_config(job))
        cell = cell_row(flat)
        tf = df[(df["predictor"] == "transformer") & (strategies(df) == STANDARD)]
        at = tf[tf["k"] == cap_k(tf, 2 * cell["n_dims"])]
        if at.empty:
            continue
        rows.append({**cell, "eval_seed": int(flat["eval.seed"]), "n_prompts": int(at["n_prompts"].iat[0]),
                     "k": int(at["k"].iat[0]), "error": float(at["error"].iat[0]),
                     "ci_low": float(at["ci_low"].iat[0]), "ci_high": float(at["ci_high"].iat[0]),
                     "train_seconds": train_seconds(job), "run_dir": str(job)})
    return pd.DataFrame(rows)


def cell_row(flat: Mapping[str, Any]) -> dict[str, Any]:
    """What names a job's cell — variant, task, d and the ``CELL_KEYS`` options — from its flattened config."""
    return {"attn": flat["attn.name"], "task": flat["task.name"], "n_dims": int(flat["task.n_dims"]),
            **{col: flat.get(key) for key, col in CELL_KEYS.items()}}


def train_seconds(job: Path) -> float | None:
    """The job's training time (status.json), None for a job that re-scored a model trained elsewhere."""
    try:
        return json.loads((job / STATUS).read_text()).get("metrics", {}).get("train_seconds")
    except (OSError, ValueError):
        return None


def check_validation(cells: pd.DataFrame, reporting_seed: int) -> None:
    """Refuse a sweep scored on the reporting prompts (selection would then be tuned on the numbers reported)."""
    if cells.empty:
        raise ValueError("no finished job with an eval.csv in the sweep: nothing to select from")
    leaked = cells[cells["eval_seed"] == reporting_seed]
    if len(leaked):
        raise ValueError(f"{len(leaked)} job(s) were evaluated with eval.seed={reporting_seed}, the reporting seed "
                         f"(e.g. {leaked['run_dir'].iat[0]}): rerun the sweep with eval.seed=<another seed, e.g. 1000> "
                         "so the recipe is chosen on validation prompts")


class NothingChosen(ValueError):
    """No recipe is complete yet: the sweep is partial, not wrong."""


def select(cells: pd.DataFrame, reporting_seed: int = 0, by: str = "worst", shared: bool = False) -> pd.DataFrame:
    """The best recipe per (task, d, variant) by validation error at k = 2d over its training seeds; see the module
    doc for ties. ``by``: ``worst`` or ``median`` seed ranks a recipe (never the luckiest seed, nor seed 0 alone:
    a recipe that strands one seed on the plateau loses). ``shared``: one recipe for every variant, ranked by its
    worst variant. Only a complete recipe (a job for every training seed, and with ``shared`` every variant, that
    the sweep holds) can win: a partial one's worst seed is not yet known."""
    ranked = candidates(cells, reporting_seed, by, shared)
    group = selection_group(shared)
    best = ranked[ranked["status"] == "chosen"].drop(columns="selection")
    if best.empty:
        raise NothingChosen("no recipe has a job for every training seed (and variant) of the sweep yet: nothing can "
                         "be chosen; finish the sweep")
    counts = ranked.groupby(group).size().rename("cells")
    return best.drop(columns="status").join(counts, on=group).sort_values(group).reset_index(drop=True)


def candidates(cells: pd.DataFrame, reporting_seed: int = 0, by: str = "worst", shared: bool = False,
               grid: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per recipe (its worst or median job, ``jobs`` = how many it has) with a ``status``: ``chosen``,
    ``complete``, ``dominated`` (partial, but with ``by=worst`` one of its jobs is already worse than the chosen
    recipe's worst: it cannot win whatever its missing jobs score, so they need not be trained) or ``incomplete``
    (partial and not dominated: the choice is provisional until it is complete). A recipe is complete with a job
    for every training seed (× variant, when ``shared``) that ``cells`` hold and, with ``grid`` (every job of the
    sweep, ``cell_row`` columns), that the grid plans: with ``grid`` a recipe missing a planned seed is never the bar."""
    check_validation(cells, reporting_seed)
    group = selection_group(shared)
    ranked = rank_over_seeds(cells, by, shared).sort_values(["error", "ci_high", "lr"], kind="stable")
    ranked = ranked.reset_index(drop=True)
    unit = ["attn", "seed"] if shared else ["seed"]  # what a complete recipe has one job of
    # the units the sweep will hold: those trained so far and, with ``grid``, those it plans (jobs outside the
    # grid count too: the selection, which knows no grid, needs a job for them as well)
    planned = cells[group + unit] if grid is None else pd.concat([cells[group + unit], grid[group + unit]])
    expected = planned.astype(str).drop_duplicates().groupby(group).size().rename("expected").reset_index()
    expected = expected.astype({c: cells[c].dtype for c in group})
    complete = ranked["jobs"] == ranked[group].merge(expected, on=group, how="left")["expected"]
    chosen = ranked[complete].groupby(group, sort=False).head(1)
    bar = ranked[group].merge(chosen[group + ["error"]].rename(columns={"error": "bar"}), on=group, how="left")["bar"]
    status = pd.Series("complete", index=ranked.index)
    status[~complete] = "incomplete"
    if by == "worst":
        status[~complete & (ranked["error"] > bar)] = "dominated"
    status[chosen.index] = "chosen"
    return ranked.assign(status=status, selection="shared" if shared else "per variant")


def rank_over_seeds(cells: pd.DataFrame, by: str, shared: bool) -> pd.DataFrame:
    """One row per recipe: the row of its worst (or median) training seed (and variant, when ``shared``), with
    ``jobs``, the number of distinct seeds (seed × variant pairs, when ``shared``) the recipe's jobs cover."""
    if by not in set(Rank):
        raise ValueError(f"rank recipes by the worst or the median seed, got {by!r}")
    recipe = recipe_columns(cells, shared)
    keys = recipe_identity(cells, shared)
    cells = cells.assign(error=cells["error"].fillna(math.inf))  # no error at 2d ranks as the worst, not skipped
    filled = cells.assign(**{c: cells[c].fillna(-1) for c in recipe})
    unit = filled[["attn", "seed"] if shared else ["seed"]].astype(str).agg("/".join, axis=1)
    # distinct seeds (× variants) covered, not rows: a rerun job must not stand in for a missing seed
    jobs = unit.groupby([filled[k] for k in keys], sort=False).transform("nunique")
    if by == "worst":
        idx = filled.groupby(keys, sort=False)["error"].idxmax()
        return cells.assign(jobs=jobs).loc[idx.values]
    rows = []
    for _, sub in filled.groupby(keys, sort=False):
        med = sub["error"].median()
        row = cells.loc[(sub["error"] - med).abs().fillna(0).idxmin()].copy()  # NaN: inf − inf, at the median
        row["error"] = med
        row["jobs"] = jobs.loc[sub.index].iat[0]
        rows.append(row)
    return pd.DataFrame(rows)


def selection_group(shared: bool) -> list[str]:
    """What one choice is made per: (task, d), and the variant unless one recipe is shared by all."""
    return ["task", "n_dims"] if shared else ["task", "n_dims", "attn"]


def recipe_identity(cells: pd.DataFrame, shared: bool) -> list[str]:
    """The columns that tell one candidate recipe from another: its selection group and its recipe columns."""
    return selection_group(shared) + recipe_columns(cells, shared)


def recipe_columns(cells: pd.DataFrame, shared: bool) -> list[str]:
    """The cell columns that tell recipes apart: every ``CELL_KEYS`` option but the seed (and, for one shared recipe,
    but the attention options, which only some variants have)."""
    return [c for c in CELL_KEYS.values() if c in cells and c != "seed"
            and not (shared and c in ATTN_OPTIONS)]


def candidate_position(ranked: pd.DataFrame, cell: Mapping[str, Any], shared: bool) -> int | None:
    """The row of ``candidates``' table (best first) holding the recipe of ``cell`` (a ``cell_row``), None if none
    of its jobs is in."""
    names = recipe_identity(ranked, shared)
    same = pd.Series(True, index=ranked.index)
    for name in names:
        same &= ranked[name].map(lambda value, want=cell.get(name): same_value(value, want))
    return int(same.to_numpy().argmax()) if same.any() else None


def candidate_status(ranked: pd.DataFrame, cell: Mapping[str, Any], shared: bool) -> str | None:
    """The ``status`` ``candidates`` gave the recipe of ``cell`` (a ``cell_row``), None if none of its jobs is in."""
    row = candidate_position(ranked, cell, shared)
    return None if row is None else str(ranked["status"].iat[row])


def same_value(a: Any, b: Any) -> bool:
    """Two config values alike: missing (None, NaN) equal, numbers equal to rounding, else equal."""
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in (a, b)]
    if any(missing):
        return all(missing)
    if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (a, b)):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return bool(a == b)


def rescale_warmup(best: pd.DataFrame, full_steps: int) -> pd.DataFrame:
    """The recipe for a run of ``full_steps``: the warm-up keeps its share of the screening run."""
    share = best["warmup_steps"] / best["max_steps"]
    return best.assign(full_warmup_steps=(share * full_steps).round().astype(int), full_steps=full_steps)


def recipe_yaml(best: pd.DataFrame) -> str:
    """The ``recipe.variants`` rows of configs/recipe/smoke.yaml for the winners."""
    def fmt(value: object) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "null"
        if isinstance(value, bool):
            return str(value).lower()
        return f"{value:.1e}" if isinstance(value, float) and value < 0.01 else str(value)

    lines = []
    for _, row in best.iterrows():
        values = {col: row[col] for col in RECIPE_KEYS.values()}
        values |= {"warmup_steps": int(row["full_warmup_steps"]), "qk_norm": bool(row["qk_norm"])}
        values |= {key: int(row[key]) if key in INT_OPTIONS else row[key] for key in recipe_options(str(row["attn"]))
                   if key in row and pd.notna(row[key]) and row[key]}  # options configs/attn/<name>.yaml reads
        lines.append(f"    {row['attn']}: {{" + ", ".join(f"{k}: {fmt(v)}" for k, v in values.items()) + "}")
    return "\n".join(lines) + "\n"


def recipe_options(attn: str) -> list[str]:
    """The attention options (``ATTN_OPTIONS``) that configs/attn/<attn>.yaml takes from its recipe row."""
    path = CONFIG_DIR / "attn" / f"{attn}.yaml"
    node = OmegaConf.load(path) if path.is_file() else OmegaConf.create()
    return [key for key in ATTN_OPTIONS if key in node
            and "recipe.variants" in str(OmegaConf.to_container(node, resolve=False)[key])]


def markdown(cells: pd.DataFrame, columns: Sequence[str]) -> str:
    """A Markdown table of ``columns`` plus error [95% CI]."""
    def shown(column: str, value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return "—"  # an option this variant does not have
        return int(value) if column in INT_OPTIONS and isinstance(value, float) and value.is_integer() else value

    rows = ([*(shown(c, row[c]) for c in columns), f"{row['error']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"]
            for _, row in cells.iterrows())
    return markdown_table([*columns, "error at k = 2d [95% CI]"], rows) + "\n"


def verdict(final: pd.DataFrame, reporting_seed: int = 0, softmax_reference: str | Path | None = None) -> pd.DataFrame:
    """Final runs (scored on the reporting prompts) against the targets above: one ``target`` and ``met`` per row
    (and, with ``softmax_reference``, softmax's paired difference to it: ``diff``, ``diff_low``, ``diff_high``)."""
    if final.empty:
        raise ValueError("no finished final run to judge")
    if (final["eval_seed"] != reporting_seed).any():
        raise ValueError(f"final runs must be scored on the reporting prompts (eval.seed={reporting_seed})")
    out = final.assign(target=[TARGET_STRICT if a in STRICT else TARGET_ALL for a in final["attn"]])
    met = out["error"] <= out["target"]
    softmax = out["attn"] == "softmax"
    if softmax_reference is None:
        met[softmax] &= out.loc[softmax, "ci_low"] <= SOFTMAX_BEFORE
        return out.assign(met=met)
    diffs = {i: paired_to(out.at[i, "run_dir"], softmax_reference, int(out.at[i, "k"])) for i in out.index[softmax]}
    for i, (point, low, high) in diffs.items():
        met[i] &= low <= 0
        out.loc[i, ["diff", "diff_low", "diff_high"]] = point, low, high
    return out.assign(met=met)


def varying(cells: pd.DataFrame) -> list[str]:
    """The optional cell columns (attention options, training seed) worth a table column: set in some job."""
    return [c for c in (*ATTN_OPTIONS, "seed") if c in cells and cells[c].fillna(0).nunique() > 1]


@dataclass
class Options:
    """``python -m icl.lab.tuning sweeps=[<dir>,…] [key=value …]``."""

    sweeps: list[str] = field(default=MISSING, metadata={"help": "sweep folders (searched recursively for job folders)"})
    reporting_seed: int = field(default=0, metadata={"help": "eval.seed the final numbers are reported on"})
    full_steps: int = field(default=15000, metadata={"help": "trainer.max_steps of the recipe's runs"})
    rank: Rank = field(default=Rank.worst, metadata={"help": "rank a recipe by this seed: worst or median"})
    shared: bool = field(default=False, metadata={"help": "one recipe for every variant (its worst variant)"})
    out: str | None = field(default=None, metadata={"help": "write cells.{csv,md} and best.{csv,md} here"})
    final: bool = field(default=False, metadata={
        "help": "the folders hold the final runs (reporting seed): judge them against the targets instead"})
    softmax_reference: str | None = field(default=None, metadata={
        "help": "with final=true: softmax trained with the former recipe at the same steps (paired check)"})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(Options, argv, "python -m icl.lab.tuning", __doc__)
    out = Path(args.out) if args.out else None
    cells = load_cells(args.sweeps)
    if args.final:
        reference = Path(args.softmax_reference) if args.softmax_reference else None
        return report_final(cells, args.reporting_seed, out, reference)
    try:
        ranked = candidates(cells, args.reporting_seed, args.rank, args.shared)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    cell_cols = ["attn", "lr", "qk_norm", "warmup_steps", "gradient_clip_val", "max_steps", *varying(cells)]
    cells = cells.sort_values(["task", "attn", "lr", "qk_norm", "warmup_steps"]).reset_index(drop=True)
    if out:  # written while the sweep is partial too: candidates.md says what is still missing
        out.mkdir(parents=True, exist_ok=True)
        for stale in (out / "best.csv", out / "best.md"):  # a winner of an earlier state of the sweep
            stale.unlink(missing_ok=True)
        write_csv(out / "cells.csv", cells.drop(columns="run_dir"), index=False)
        write_text(out / "cells.md", markdown(cells, cell_cols))
        write_csv(out / "candidates.csv", ranked.drop(columns="run_dir"), index=False)
        write_text(out / "candidates.md", markdown(ranked, [*cell_cols, "jobs", "status"]))
    try:
        best = rescale_warmup(select(cells, args.reporting_seed, args.rank, args.shared), args.full_steps)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, NothingChosen) else 1
    if out:
        write_csv(out / "best.csv", best.drop(columns="run_dir"), index=False)
        write_text(out / "best.md", markdown(best, [*cell_cols, "full_warmup_steps", "cells"]))
    print(markdown(best, [*cell_cols, "full_warmup_steps", "cells"]))
    if (ranked["status"] == "incomplete").any():
        print(f"provisional: {int((ranked['status'] == 'incomplete').sum())} partial recipe(s) could still win; "
              "train their missing jobs (candidates.md)")
    print(recipe_yaml(best))
    return 0


def report_final(cells: pd.DataFrame, reporting_seed: int, out: Path | None,
                 softmax_reference: Path | None = None) -> int:
    """Print (and write final.{csv,md}) the final runs with their target and whether it is met."""
    try:
        judged = verdict(cells, reporting_seed, softmax_reference).sort_values(["task", "attn"]).reset_index(drop=True)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    columns = ["task", "attn", "lr", "qk_norm", "warmup_steps", "gradient_clip_val", "max_steps", *varying(judged),
               "target", "met"]
    text = markdown(judged, columns)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "final.csv", judged.drop(columns="run_dir"), index=False)
        write_text(out / "final.md", text)
    for _, row in judged[judged["attn"] == "softmax"].iterrows():
        if "diff" in judged and pd.notna(row.get("diff")):
            text += (f"\nsoftmax minus the reference ({softmax_reference}) at k = {row['k']}, paired on the same prompts: "
                     f"{row['diff']:+.3f} [{row['diff_low']:+.3f}, {row['diff_high']:+.3f}]\n")
    print(text + f"{int(judged['met'].sum())} of {len(judged)} targets met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
