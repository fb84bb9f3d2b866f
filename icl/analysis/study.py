"""The seed study's report: claims (a)–(f) with paired differences, CIs, seed spread and a verdict worded by code.

``python -m icl.study`` (the last step of ``make study``; ``configs/study.yaml``) reads the study's job folders
(``<study_dir>/core``, ``<study_dir>/overview``), its timing CSV (``<study_dir>/bench/bench.csv``, from
``icl.bench``) and ``<study_dir>/timing.log`` (``make study``'s start/end stamps), and writes
``<out_dir>/RESULTS.md`` plus figures and small CSVs in ``<out_dir>/study/``. No torch: everything comes from
``errors.npz`` (per-prompt errors), ``eval.csv`` and ``status.json``.

Statistics. Each claim row compares two predictors on the very same prompts (every job is scored on the prompts
of ``eval.seed``; checked: the zero estimator's per-prompt errors must be identical) with a statistic pooled over
a window of k: Δ = Σ_p Σ_k (err_A − err_B) / Σ_p Σ_k err_zero (normalised error, negative: A lower), and a 95%
percentile bootstrap over prompts (both sides resampled with the same prompts, ``icl.stats.resample_counts``).
**Seeds are kept apart from prompt resampling**: the CI of a row is computed per training seed (model A of
seed s vs model B of seed s) and only covers the prompts; the seeds enter through the verdict rule (how many
seeds' CIs agree) and the spread column (the seed-wise point values), never pooled into one bootstrap.

Verdict rules (``verdict``), with n seeds and need = ⌈2n/3⌉ (2 of 3):
- direction claims ("A worse than B", "A more robust"): confirmed when the CI lies on the claimed side of 0 in
  ≥ need seeds, refuted when it lies on the opposite side in ≥ need seeds, else not resolved at this scale;
- equivalence claims ("≈", "changes no accuracy", "do not differ"): confirmed when the CI lies inside ±margin in
  ≥ need seeds, refuted when it lies entirely outside ±margin in ≥ need seeds, else not resolved;
- guard: a seed in which the *reference* model (softmax; the float model for (e); the model itself for a
  within-model row) did not learn (its error at k = 2d above ``guard`` and above the best baseline's) counts for
  nothing; when fewer than ``need`` seeds are left, the row is not resolved, saying so. A compared model (relu,
  int8) that failed to learn is not excluded: that is evidence about the claim itself.
Compound claims get one row per part; the claim's verdict per ReLU variant is ``combine``d: confirmed when every
part is, refuted when any part is, else not resolved.
"""

from __future__ import annotations

import logging
import math
import platform
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from icl.analysis.results import (
    find_jobs,
    flat_config,
    load_errors,
    load_results,
    paired_differences,
    read_eval_csv,
    variant_label,
)
from icl.files import atomic_write
from icl.run.configs import HYDRA_CONFIGS, run_cli
from icl.run.job import JobDir
from icl.stats import ratio_replicates

log = logging.getLogger(__name__)

CONFIRMED, REFUTED, UNRESOLVED = "confirmed", "refuted", "not resolved at this scale"
VERDICTS = (CONFIRMED, REFUTED, UNRESOLVED)
CLAIMS: dict[str, str] = {
    "a": "ReLU attention ≈ softmax on dense linear regression",
    "b": "ReLU is more robust to inputs scaled by 2 and by ½ (from about 15 examples on at d = 20); error vs the "
         "input scale is U-shaped for both, large factors pushing the models toward the zero estimator",
    "c": "ReLU is worse on sparse linear regression and on depth-4 decision trees",
    "d": "at extended context (100 examples after training on 40) ReLU is first worse, then better than a "
         "degrading softmax",
    "e": "int8 post-training quantization changes no accuracy",
    "f": "the variants' inference times do not differ significantly",
}
RELUS = ("relu", "relu_causal")
REFERENCE = "softmax"
GRIDS = ("core", "overview")


# -- verdict rules (pure; unit-tested on synthetic differences) -------------------------------------------------
def needed(n: int) -> int:
    """Seeds that must agree: ⌈2n/3⌉ (2 of 3, 1 of 1)."""
    return max(1, math.ceil(2 * n / 3))


def verdict(kind: str, lows: Sequence[float], highs: Sequence[float], margin: float = 0.0,
            learned: Sequence[bool] | None = None, who: Sequence[str] | None = None,
            margin_text: str | None = None) -> tuple[str, str]:
    """(verdict, why) of one claim row from its per-seed CIs (module doc). ``kind``: ``less`` (claimed Δ < 0),
    ``greater`` (Δ > 0) or ``equal`` (|Δ| < margin). ``learned[i]`` False drops seed i (the guard); ``who[i]``
    names what did not learn there; ``margin_text`` words the margin (e.g. a ratio's on the log scale)."""
    if kind not in ("less", "greater", "equal"):
        raise ValueError(f"claim kind must be less, greater or equal, got {kind!r}")
    n, need = len(lows), needed(len(lows))
    if n == 0:
        return UNRESOLVED, "no data"
    learned = list(learned) if learned is not None else [True] * n
    ok = [i for i in range(n) if learned[i] and not (np.isnan(lows[i]) or np.isnan(highs[i]))]
    if len(ok) < need:
        failed = [who[i] if who else f"seed {i}" for i in range(n) if not learned[i]]
        why = f"excluded by the guard (did not learn, or missing): {', '.join(failed)}" if failed else "no usable CI"
        return UNRESOLVED, f"{why}; {len(ok)} of {n} seeds usable, {need} needed"
    lo, hi = np.asarray(lows, float)[ok], np.asarray(highs, float)[ok]
    if kind == "equal":
        yes, no = int(((lo > -margin) & (hi < margin)).sum()), int(((lo > margin) | (hi < -margin)).sum())
        shown = margin_text or f"±{margin:g}"
        side, other = f"inside {shown}", f"outside {shown}"
    else:
        below, above = int((hi < 0).sum()), int((lo > 0).sum())
        yes, no = (below, above) if kind == "less" else (above, below)
        side, other = ("below 0", "above 0") if kind == "less" else ("above 0", "below 0")
    tail = f" in {{}} of {n} seeds (need {need})"
    if yes >= need:
        return CONFIRMED, f"CI {side}" + tail.format(yes)
    if no >= need:
        return REFUTED, f"CI {other}" + tail.format(no)
    return UNRESOLVED, f"CI {side} in {yes}, {other} in {no} of {n} seeds (need {need})"


def combine(verdicts: Iterable[str]) -> str:
    """A compound claim: confirmed when every part is, refuted when any part is, else not resolved."""
    verdicts = list(verdicts)
    if verdicts and all(v == CONFIRMED for v in verdicts):
        return CONFIRMED
    return REFUTED if REFUTED in verdicts else UNRESOLVED


# -- per-prompt statistics ----------------------------------------------------------------------------------------
def window_sum(errors: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """(P,) per-prompt sum of errors over the k window."""
    return errors[:, list(ks)].astype(np.float64).sum(1)


def interval(point: float, boots: np.ndarray, ci: float) -> tuple[float, float, float]:
    alpha = (1 - ci) / 2
    if np.isnan(boots).any() or math.isnan(point):
        return point, math.nan, math.nan
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return point, float(low), float(high)


# -- the study's jobs ------------------------------------------------------------------------------------------------
@dataclass
class Job:
    run_dir: Path
    task: str
    attn: str
    quant: str
    seed: int
    n_dims: int
    n_train: int          # training points (k up to n_train - 1)
    n_positions: int
    status: dict[str, Any]
    steps: int = 0        # trainer.max_steps
    model: str = ""
    _errors: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def errors(self) -> dict[str, np.ndarray]:
        if self._errors is None:
            self._errors = load_errors(self.run_dir) or {}
        return self._errors

    def err(self, strategy: str, param: float | None, predictor: str = "transformer") -> np.ndarray | None:
        key = f"{strategy}/{'' if param is None else repr(float(param))}/{predictor}"
        return self.errors().get(key)


def load_jobs(study_dir: Path) -> list[Job]:
    """The done jobs of the study's grids; a cell present twice (two folders for one task/attn/quant/seed) is an
    error, since the report could not know which to use."""
    jobs, seen = [], {}
    for path in find_jobs([study_dir / g for g in GRIDS]):
        status = JobDir(path).status()
        if status["status"] != "done":
            log.warning("skipping %s: status is %s", path, status["status"])
            continue
        flat = flat_config(path)
        job = Job(path, str(flat["task.name"]), str(flat["attn.name"]), str(flat["quant.name"]), int(flat["seed"]),
                  int(flat["task.n_dims"]), int(flat["task.curriculum.points.end"]), int(flat["model.n_positions"]),
                  status, int(flat.get("trainer.max_steps") or 0), str(flat.get("model.name", "")))
        cell = (job.task, job.attn, job.quant, job.seed)
        if cell in seen:
            raise ValueError(f"two jobs for task={job.task} attn={job.attn} quant={job.quant} seed={job.seed}: "
                             f"{seen[cell]} and {path}; delete one")
        seen[cell] = path
        jobs.append(job)
    return jobs


# -- claim rows ----------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One row of a claim table: one statistic per seed, and its verdict."""

    claim: str
    part: str
    subject: str            # the variant the claim is about (relu / relu_causal / a quant mode)
    statistic: str
    kind: str
    margin: float
    seeds: list[dict[str, Any]]
    verdict: str = ""
    why: str = ""
    margin_text: str | None = None

    def decide(self) -> "Row":
        self.verdict, self.why = verdict(self.kind, [s["low"] for s in self.seeds], [s["high"] for s in self.seeds],
                                         self.margin, [s["learned"] for s in self.seeds],
                                         [f"seed {s['seed']} ({s['note']})" for s in self.seeds], self.margin_text)
        return self


class Study:
    """The study's jobs and settings, and the statistics every claim row is built from."""

    def __init__(self, jobs: list[Job], cfg: dict[str, Any]) -> None:
        if not jobs:
            raise ValueError("no finished jobs in the study folder: run `make study` first")
        self.jobs, self.cfg = jobs, cfg
        self.n_boot, self.ci, self.seed = int(cfg["bootstrap"]), float(cfg["ci"]), int(cfg["seed"])
        first = next(j for j in jobs)
        self.d, self.n_train, self.n_positions = first.n_dims, first.n_train, first.n_positions
        self.k_train = self.n_train - 1                     # the largest k seen in training
        self.k_guard = min(2 * self.d, self.k_train)
        scale = self.d / float(cfg["paper_d"])
        self.map_k = lambda k: max(1, min(self.k_train, round(k * scale)))
        self.window_fit = list(range(min(self.d, self.k_train), self.k_train + 1))      # (a), (c), (e)
        self.window_robust = list(range(self.map_k(15), self.k_train + 1))              # (b)
        beyond = list(range(self.k_train + 1, self.n_positions))                        # (d)
        half = (len(beyond) + 1) // 2
        self.window_early, self.window_late = beyond[:half], beyond[half:]
        self.seeds = sorted({j.seed for j in jobs if j.quant == "none" and j.attn in (REFERENCE, *RELUS)})
        self._learned: dict[Path, tuple[bool, str]] = {}

    def job(self, task: str, attn: str, quant: str, seed: int) -> Job | None:
        return next((j for j in self.jobs if (j.task, j.attn, j.quant, j.seed) == (task, attn, quant, seed)), None)

    def learned(self, job: Job) -> tuple[bool, str]:
        """The guard: error at k = 2d (standard prompts) ≤ ``guard`` or ≤ the best baseline's there."""
        if job.run_dir not in self._learned:
            df = read_eval_csv(JobDir(job.run_dir).eval_csv)
            rows = df[(df["strategy"].fillna("standard") == "standard") & (df["k"] == self.k_guard)]
            mine = rows.loc[rows["predictor"] == "transformer", "error"]
            base = rows.loc[(rows["kind"] == "baseline") & (rows["predictor"] != "zero"), "error"].min()
            err = float(mine.iat[0]) if len(mine) else math.nan
            ok = bool(err <= float(self.cfg["guard"]) or (not math.isnan(base) and err <= base))
            self._learned[job.run_dir] = (ok, f"{job.attn} {job.quant} on {job.task}: {err:.3f} at k={self.k_guard}, "
                                              f"best baseline {base:.3f}")
        return self._learned[job.run_dir]

    def _seed_row(self, seed: int, point: float, boots: np.ndarray | None, jobs: Sequence[Job],
                  note: str = "") -> dict[str, Any]:
        learned = [self.learned(j) for j in jobs]
        bad = [why for ok, why in learned if not ok]
        point, low, high = interval(point, boots, self.ci) if boots is not None else (math.nan,) * 3
        return {"seed": seed, "point": point, "low": low, "high": high, "learned": not bad,
                "note": "; ".join(bad) or note}

    def paired(self, a: Job | None, b: Job | None, strategy: str, param: float | None, ks: Sequence[int],
               seed: int) -> dict[str, Any]:
        """Δ = (Σ err_a − Σ err_b) / Σ zero over prompts × ks, with its bootstrap CI over prompts."""
        if a is None or b is None:
            return {"seed": seed, "point": math.nan, "low": math.nan, "high": math.nan, "learned": False,
                    "note": "job missing"}
        ea, eb = a.err(strategy, param), b.err(strategy, param)
        za, zb = a.err(strategy, param, "zero"), b.err(strategy, param, "zero")
        if any(x is None for x in (ea, eb, za, zb)) or max(ks) >= ea.shape[1]:
            return self._seed_row(seed, math.nan, None, (b,), f"no {strategy} errors")
        if za.shape != zb.shape or not np.array_equal(za, zb, equal_nan=True):
            raise ValueError(f"{a.run_dir} and {b.run_dir} were not scored on the same prompts ({strategy}): "
                             "re-evaluate them with the same eval.seed / eval.n_prompts")
        # prompts with a non-finite error on either side are dropped from both (still paired), and counted
        keep = np.isfinite(ea[:, ks]).all(1) & np.isfinite(eb[:, ks]).all(1) & np.isfinite(za[:, ks]).all(1)
        ea, eb, za = ea[keep], eb[keep], za[keep]
        z = window_sum(za, ks)
        pa, ba = ratio_replicates(window_sum(ea, ks), z, self.n_boot, self.seed)
        pb, bb = ratio_replicates(window_sum(eb, ks), z, self.n_boot, self.seed)
        dropped = int((~keep).sum())
        # the guard looks at the reference (b: softmax, or the float model) only: a compared model that failed to
        # learn is evidence about the claim, a failed reference is not
        return self._seed_row(seed, pa - pb, ba - bb, (b,),
                              f"{dropped} prompt(s) with non-finite errors dropped" if dropped else "")

    def degrading(self, job: Job | None, seed: int) -> dict[str, Any]:
        """(d)'s "degrading softmax": the job's long-context error past training (late window) minus its error
        inside the trained range (k = d … k_train), on the same long_context prompts."""
        if job is None or not self.window_late:
            return {"seed": seed, "point": math.nan, "low": math.nan, "high": math.nan, "learned": False,
                    "note": "job missing"}
        e, z = job.err("long_context", None), job.err("long_context", None, "zero")
        if e is None or z is None or max(self.window_late) >= e.shape[1]:
            return self._seed_row(seed, math.nan, None, (job,), "no long_context errors")
        late, fit = self.window_late, self.window_fit
        p_late, b_late = ratio_replicates(window_sum(e, late), window_sum(z, late), self.n_boot, self.seed)
        p_fit, b_fit = ratio_replicates(window_sum(e, fit), window_sum(z, fit), self.n_boot, self.seed)
        return self._seed_row(seed, p_late - p_fit, b_late - b_fit, (job,))

    def within(self, job: Job | None, stat: Callable[[Callable[[float], tuple[float, np.ndarray]]],
                                                      tuple[float, np.ndarray]], ks: Sequence[int],
               seed: int) -> dict[str, Any]:
        """A statistic of one job's normalised errors at several scale_x factors (same resampled prompts)."""
        if job is None:
            return {"seed": seed, "point": math.nan, "low": math.nan, "high": math.nan, "learned": False,
                    "note": "job missing"}

        def norm(c: float) -> tuple[float, np.ndarray]:
            e, z = job.err("scale_x", c), job.err("scale_x", c, "zero")
            if e is None or z is None:
                return math.nan, np.full(self.n_boot, math.nan)
            return ratio_replicates(window_sum(e, ks), window_sum(z, ks), self.n_boot, self.seed)

        point, boots = stat(norm)
        return self._seed_row(seed, point, boots, (job,))

    def scale_factors(self) -> list[float]:
        keys = {k.split("/")[1] for j in self.jobs for k in j.errors() if k.startswith("scale_x/")}
        return sorted(float(k) for k in keys)


def _window(ks: Sequence[int]) -> str:
    return f"k = {ks[0]}…{ks[-1]}" if len(ks) > 1 else f"k = {ks[0]}"


def claim_rows(study: Study) -> list[Row]:
    """Every row of claims (a)–(e) (model-based); (f) comes from the timing CSV (``timing_rows``)."""
    s, rows = study, []
    margin, zero_margin = float(s.cfg["margin"]), float(s.cfg["zero_margin"])

    def vs_softmax(claim: str, part: str, task: str, strategy: str, param: float | None, ks: Sequence[int],
                   kind: str) -> None:
        for relu in RELUS:
            seeds = [s.paired(s.job(task, relu, "none", sd), s.job(task, REFERENCE, "none", sd), strategy, param,
                              ks, sd) for sd in s.seeds]
            stat = f"Δ = {relu} − softmax, {task}, {strategy}{'' if param is None else f' c = {param:g}'}, {_window(ks)}"
            rows.append(Row(claim, part, relu, stat, kind, margin, seeds).decide())

    vs_softmax("a", "≈ on dense linear", "linear", "standard", None, s.window_fit, "equal")
    vs_softmax("b", "more robust at c = 2", "linear", "scale_x", 2.0, s.window_robust, "less")
    vs_softmax("b", "more robust at c = ½", "linear", "scale_x", 0.5, s.window_robust, "less")
    factors = s.scale_factors()
    if factors:
        lo, hi = factors[0], factors[-1]

        def u_shape(norm: Callable[[float], tuple[float, np.ndarray]]) -> tuple[float, np.ndarray]:
            (p1, b1), (pl, bl), (ph, bh) = norm(1.0), norm(lo), norm(hi)
            return min(pl - p1, ph - p1), np.minimum(bl - b1, bh - b1)

        def toward_zero(norm: Callable[[float], tuple[float, np.ndarray]]) -> tuple[float, np.ndarray]:
            p, b = norm(hi)
            return p - 1.0, b - 1.0

        for attn in (REFERENCE, *RELUS):
            seeds = [s.within(s.job("linear", attn, "none", sd), u_shape, s.window_robust, sd) for sd in s.seeds]
            rows.append(Row("b", "U-shaped in c", attn, f"min(err(c = {lo:g}), err(c = {hi:g})) − err(c = 1), "
                            f"{attn}, linear, {_window(s.window_robust)}", "greater", 0.0, seeds).decide())
            seeds = [s.within(s.job("linear", attn, "none", sd), toward_zero, s.window_robust, sd) for sd in s.seeds]
            rows.append(Row("b", f"c = {hi:g} → zero estimator", attn, f"err(c = {hi:g}) − 1 (the zero estimator's), "
                            f"{attn}, linear, {_window(s.window_robust)}", "equal", zero_margin, seeds).decide())
    vs_softmax("c", "worse on sparse linear", "sparse_linear", "standard", None, s.window_fit, "greater")
    vs_softmax("c", "worse on decision trees", "decision_tree", "standard", None, s.window_fit, "greater")
    if s.window_early:
        vs_softmax("d", "first worse (extended context)", "linear", "long_context", None, s.window_early, "greater")
    if s.window_late:
        vs_softmax("d", "then better (extended context)", "linear", "long_context", None, s.window_late, "less")
        seeds = [s.degrading(s.job("linear", REFERENCE, "none", sd), sd) for sd in s.seeds]
        rows.append(Row("d", "softmax degrades (extended context)", REFERENCE,
                        f"err({_window(s.window_late)}) − err({_window(s.window_fit)}), softmax, linear, long_context",
                        "greater", 0.0, seeds).decide())
    quants = sorted({j.quant for j in s.jobs if j.quant != "none"})
    for quant in quants:
        for task in sorted({j.task for j in s.jobs if j.quant == quant}):
            for attn in sorted({j.attn for j in s.jobs if j.quant == quant and j.task == task}):
                seeds = [s.paired(s.job(task, attn, quant, sd), s.job(task, attn, "none", sd), "standard", None,
                                  s.window_fit, sd) for sd in s.seeds]
                rows.append(Row("e", f"{attn} on {task}", quant, f"Δ = {quant} − none, {attn}, {task}, standard, "
                                f"{_window(s.window_fit)}", "equal", margin, seeds).decide())
    return rows


def timing_rows(bench: pd.DataFrame | None, time_margin: float) -> list[Row]:
    """Claim (f): each variant × quant mode's latency over softmax/none at each k (``icl.bench``, one process,
    interleaved rounds), as log ratios so ±margin is symmetric: CI of the ratio inside [1/(1+m), 1+m]."""
    if bench is None or bench.empty:
        return [Row("f", "inference time", "—", "no timing CSV (icl.bench) in the study folder", "equal",
                    math.log1p(time_margin), []).decide()]
    rows = []
    if not {"part", "ratio", "ratio_ci_low", "ratio_ci_high"} <= set(bench.columns):
        return [Row("f", "inference time", "—", "the timing CSV has no latency ratios (did softmax/none fail to time?)",
                    "equal", math.log1p(time_margin), []).decide()]
    lat = bench[(bench["part"] == "latency") & bench["ratio"].notna()]
    lat = lat[~((lat["attn"] == REFERENCE) & (lat["quant"] == "none"))]
    for (attn, quant), sub in lat.groupby(["attn", "quant"], sort=True):
        for _, r in sub.sort_values("k").iterrows():
            seed = {"seed": 0, "point": math.log(r["ratio"]), "low": math.log(r["ratio_ci_low"]),
                    "high": math.log(r["ratio_ci_high"]), "learned": True, "note": "",
                    "ratio": (r["ratio"], r["ratio_ci_low"], r["ratio_ci_high"])}
            rows.append(Row("f", f"{attn} {quant} vs softmax none, k = {int(r['k'])}", f"{attn}/{quant}",
                            f"latency ratio (median) {attn} {quant} / softmax none, k = {int(r['k'])}", "equal",
                            math.log1p(time_margin), [seed],
                            margin_text=f"[{1 / (1 + time_margin):.3g}, {1 + time_margin:.3g}]").decide())
    return rows


def claim_verdicts(rows: Sequence[Row]) -> pd.DataFrame:
    """Per claim and subject: the combined verdict of its parts (``combine``)."""
    out = []
    for claim in CLAIMS:
        mine = [r for r in rows if r.claim == claim]
        subjects = RELUS if claim in "abcd" else sorted({r.subject for r in mine})
        for subject in subjects:
            parts = [r for r in mine if r.subject == subject or (claim in "bd" and r.subject == REFERENCE)]
            if claim == "e":
                parts = [r for r in mine if r.subject == subject]
            words = [r.verdict for r in parts]
            out.append({"claim": claim, "subject": subject, "parts": len(parts), "verdict": combine(words),
                        "rule": "confirmed when every part is, refuted when any part is, else not resolved",
                        "confirmed": words.count(CONFIRMED), "refuted": words.count(REFUTED),
                        "not_resolved": words.count(UNRESOLVED)})
        if claim == "f" and not subjects:
            out.append({"claim": "f", "subject": "—", "parts": 0, "verdict": UNRESOLVED, "rule": "no timing data",
                        "confirmed": 0, "refuted": 0, "not_resolved": 1})
    return pd.DataFrame(out)


def rows_frame(rows: Sequence[Row]) -> pd.DataFrame:
    """Tidy: one line per claim row × seed (claims.csv)."""
    out = []
    for r in rows:
        for s in r.seeds or [{"seed": None, "point": math.nan, "low": math.nan, "high": math.nan, "learned": None,
                               "note": ""}]:
            out.append({"claim": r.claim, "part": r.part, "subject": r.subject, "statistic": r.statistic,
                        "kind": r.kind, "margin": r.margin, "seed": s["seed"], "point": s["point"], "low": s["low"],
                        "high": s["high"], "learned": s["learned"], "note": s["note"], "verdict": r.verdict,
                        "why": r.why})
    return pd.DataFrame(out)


# -- markdown ------------------------------------------------------------------------------------------------------
def _fmt_seed(s: dict[str, Any], log_ratio: bool) -> str:
    if log_ratio and "ratio" in s:
        r, lo, hi = s["ratio"]
        return f"{r:.3f} [{lo:.3f}, {hi:.3f}]"
    if math.isnan(s["point"]):
        return f"s{s['seed']}: —"
    flag = "" if s["learned"] else " (did not learn)"
    return f"s{s['seed']}: {s['point']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}]{flag}"


def _spread(seeds: Sequence[dict[str, Any]], log_ratio: bool) -> str:
    points = np.array([s["point"] for s in seeds], float)
    points = points[~np.isnan(points)]
    if log_ratio or len(points) < 2:
        return "—" if len(points) < 2 else ""
    return f"{points.mean():+.3f} ({points.min():+.3f} … {points.max():+.3f})"


def claim_tables(rows: Sequence[Row], verdicts: pd.DataFrame, ci: float = 0.95) -> str:
    lines = []
    for claim, text in CLAIMS.items():
        mine = [r for r in rows if r.claim == claim]
        lines += [f"### ({claim}) {text}", ""]
        for _, v in verdicts[verdicts["claim"] == claim].iterrows():
            lines.append(f"- **{v['subject']}: {v['verdict']}** ({v['confirmed']} of {v['parts']} parts confirmed, "
                         f"{v['refuted']} refuted; rule: {v['rule']})")
        timing = claim == "f"
        head = f"ratio [{ci:.0%} CI]" if timing else f"per seed: Δ [{ci:.0%} CI over prompts]"
        lines += ["", f"| part | subject | statistic | {head} | seed spread: mean (min … max) | verdict | why |",
                  "|---|---|---|---|---|---|---|"]
        for r in mine:
            cells = "; ".join(_fmt_seed(s, timing) for s in r.seeds) or "—"
            lines.append(f"| {r.part} | {r.subject} | {r.statistic} | {cells} | {_spread(r.seeds, timing)} | "
                         f"{r.verdict} | {r.why} |")
        lines.append("")
    return "\n".join(lines)


# -- figures -------------------------------------------------------------------------------------------------------
def figures(study: Study, roots: Sequence[Path], out: Path, cfg: dict[str, Any]) -> list[Path]:
    """error vs k per task, error vs scale per k, extended context, quant vs float (``icl.analysis.figures``)."""
    from icl.analysis import figures as F

    formats = tuple(cfg["formats"])
    df = load_results(roots, cfg_columns="varying")
    df = df[df["error"].notna()].assign(variant=variant_label(df), strategy=df["strategy"].fillna("standard"))
    df["param"] = pd.to_numeric(df["param"], errors="coerce")
    tf, bl = F.aggregate_transformers(df), F.aggregate_baselines(df)
    written: list[Path] = []
    core = tf["attn"].isin([REFERENCE, *RELUS]) & (tf["quant"] == "none")
    for task in sorted(df["task"].unique()):
        metric = str(df.loc[df["task"] == task, "metric"].mode().iat[0])
        sel = lambda f, strategy, task=task: f[(f["task"] == task) & (f["strategy"] == strategy)]
        t = sel(tf, "standard")
        t = t[t["quant"] == "none"]  # float; on linear also the overview's variants
        written += F._save(F.plot_error_vs_k(task, "standard", t, sel(bl, "standard"), metric),
                           out / f"error_vs_k_{task}", formats)
        t = sel(tf[core], "scale_x")
        if len(t):
            fig = F.plot_error_vs_scale(task, "scale_x", t, sel(bl, "scale_x"), metric, list(cfg["scale_ks"]))
            if fig is not None:
                written += F._save(fig, out / f"error_vs_scale_{task}", formats)
        t = sel(tf[core], "long_context")
        if len(t):
            fig = F.plot_error_vs_k(task, "long_context", t, sel(bl, "long_context"), metric)
            for ax in fig.axes[:1]:
                ax.axvline(study.k_train + 0.5, color="black", linewidth=1, linestyle="--")
                ax.text(study.k_train + 0.7, 0.02, "training length", fontsize=7, transform=ax.get_xaxis_transform())
            written += F._save(fig, out / f"extended_context_{task}", formats)
    written += quant_figure(study, out, formats)
    return written


def quant_figure(study: Study, out: Path, formats: Sequence[str]) -> list[Path]:
    """Paired difference quant − float per attention × task (pooled over the fit window), one dot per seed."""
    import matplotlib.pyplot as plt

    from icl.analysis import figures as F
    from icl.analysis.styles import attn_color

    quants = sorted({j.quant for j in study.jobs if j.quant != "none"})
    if not quants:
        return []
    tasks = sorted({j.task for j in study.jobs if j.quant in quants})
    attns = [a for a in (REFERENCE, *RELUS) if any(j.attn == a for j in study.jobs)]
    fig, axes = plt.subplots(1, len(quants), figsize=(4.5 * len(quants), 3.4), squeeze=False)
    for ax, quant in zip(axes.flat, quants):
        for ti, task in enumerate(tasks):
            for ai, attn in enumerate(attns):
                x = ti + (ai - (len(attns) - 1) / 2) * 0.22
                for sd in study.seeds:
                    r = study.paired(study.job(task, attn, quant, sd), study.job(task, attn, "none", sd), "standard",
                                     None, study.window_fit, sd)
                    if not math.isnan(r["point"]):
                        ax.errorbar(x, r["point"], yerr=[[r["point"] - r["low"]], [r["high"] - r["point"]]],
                                    fmt="o", color=attn_color(attn), markersize=3, capsize=2,
                                    label=attn if (ti, sd) == (0, study.seeds[0]) else None)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
        ax.set_title(f"{quant} − float, {_window(study.window_fit)}", fontsize=9)
        ax.set_ylabel("paired Δ normalised error [95% CI]", fontsize=8)
    axes.flat[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return F._save(fig, out / "quant_vs_float", formats)


# -- the report ------------------------------------------------------------------------------------------------------
def wall_times(study_dir: Path) -> list[tuple[float, float | None]]:
    """(start, end) epoch seconds of each `make study` run, from timing.log's `start <t>` / `end <t>` lines."""
    path = study_dir / "timing.log"
    runs: list[tuple[float, float | None]] = []
    if not path.is_file():
        return runs
    for line in path.read_text().splitlines():
        m = re.match(r"(start|end)\s+([\d.]+)", line.strip())
        if not m:
            continue
        if m.group(1) == "start":
            runs.append((float(m.group(2)), None))
        elif runs and runs[-1][1] is None:
            runs[-1] = (runs[-1][0], float(m.group(2)))
    return runs


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def machine(jobs: Sequence[Job]) -> str:
    import json

    versions = {}
    path = jobs[0].run_dir / JobDir.VERSIONS
    if path.is_file():
        versions = json.loads(path.read_text())
    import os

    libs = ", ".join(f"{k} {v}" for k, v in (versions.get("libraries") or versions.get("versions") or {}).items()
                     if k in ("torch", "lightning", "torchao"))
    return (f"{platform.machine()} {platform.processor() or ''} with {os.cpu_count()} cores, "
            f"{platform.system()} {platform.release()}; {libs or 'library versions: see versions.json'}").strip()


def report(cfg: dict[str, Any]) -> Path:
    """Everything `python -m icl.study` writes (module doc); returns RESULTS.md's path."""
    start = time.perf_counter()
    study_dir, out_dir = Path(cfg["study_dir"]), Path(cfg["out_dir"])
    figs = out_dir / "study"
    figs.mkdir(parents=True, exist_ok=True)
    jobs = load_jobs(study_dir)
    study = Study(jobs, cfg)
    bench_csv = study_dir / "bench" / "bench.csv"
    bench = pd.read_csv(bench_csv) if bench_csv.is_file() else None
    rows = claim_rows(study) + timing_rows(bench, float(cfg["time_margin"]))
    verdicts = claim_verdicts(rows)
    tidy = rows_frame(rows)
    roots = [study_dir / g for g in GRIDS]
    written = [_write_csv(tidy, figs / "claims.csv"), _write_csv(verdicts, figs / "verdicts.csv")]
    results = load_results(roots, cfg_columns="varying")
    drop = ["run_dir", "reference_run"]
    paired = paired_differences(results, {"attn": REFERENCE, "quant": "none"}, study.n_boot, study.ci, study.seed)
    paired_q = paired_differences(results, {"quant": "none"}, study.n_boot, study.ci, study.seed, match=("attn",))
    both = pd.concat([paired, paired_q[paired_q["quant"] != "none"]], ignore_index=True)
    both = both[both["predictor"] == "transformer"].drop(columns=drop).drop_duplicates()
    written.append(_write_csv(both, figs / "paired.csv"))
    summary = _summary(study)
    written.append(_write_csv(summary, figs / "summary.csv"))
    written += figures(study, roots, figs, cfg)
    report_s = time.perf_counter() - start
    text = results_markdown(study, cfg, rows, verdicts, summary, written, out_dir, report_s, bench)
    path = out_dir / "RESULTS.md"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    if cfg.get("readme"):
        update_readme(Path(cfg["readme"]), path, figs, out_dir)
    for p in [*written, path]:
        print(f"wrote {p}")
    return path


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.6g"))
    return path


def _summary(study: Study) -> pd.DataFrame:
    """Per job: error at k = d and 2d (standard), train and eval seconds (status.json)."""
    rows = []
    for j in study.jobs:
        df = read_eval_csv(JobDir(j.run_dir).eval_csv)
        tf = df[(df["predictor"] == "transformer") & (df["strategy"].fillna("standard") == "standard")].set_index("k")
        m = j.status.get("metrics") or {}
        rows.append({"task": j.task, "attn": j.attn, "quant": j.quant, "seed": j.seed,
                     "error_k_d": tf["error"].get(j.n_dims, math.nan),
                     "error_k_2d": tf["error"].get(study.k_guard, math.nan),
                     "train_seconds": m.get("train_seconds", math.nan), "eval_seconds": m.get("eval_seconds", math.nan),
                     "job": Path(j.run_dir).name})
    return pd.DataFrame(rows).sort_values(["task", "attn", "quant", "seed"])


def not_learned(study: Study) -> str:
    """How many float models of the core grid the guard says did not learn, and which: the measure of how far
    this scale is from trained models, worded from the numbers."""
    core = [j for j in study.jobs if j.quant == "none" and j.attn in (REFERENCE, *RELUS)]
    failed = [j for j in core if not study.learned(j)[0]]
    names = ", ".join(f"{j.task}/{j.attn}/seed {j.seed}" for j in failed)
    return (f"{len(failed)} of {len(core)} float models of the core grid did not learn by the guard's rule"
            + (f" ({names})" if failed else ""))


def results_markdown(study: Study, cfg: dict[str, Any], rows: Sequence[Row], verdicts: pd.DataFrame,
                     summary: pd.DataFrame, written: Sequence[Path], out_dir: Path, report_s: float,
                     bench: pd.DataFrame | None) -> str:
    s = study
    train_s, eval_s = float(np.nansum(summary["train_seconds"])), float(np.nansum(summary["eval_seconds"]))
    walls = wall_times(Path(cfg["study_dir"]))
    wall = [f"`make study` run {i + 1}: {_minutes(e - b)} wall ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(b))})"
            if e else f"`make study` run {i + 1}: started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(b))}, "
            "no end stamp" for i, (b, e) in enumerate(walls)]
    trainings = int((summary["train_seconds"] > 0).sum())
    images = [p for p in written if p.suffix == ".png"]
    rel = lambda p: p.relative_to(out_dir).as_posix() if p.is_relative_to(out_dir) else str(p)
    overview = sorted({j.attn for j in s.jobs} - {REFERENCE, *RELUS})
    lines = [
        "# Results: the seed study's claims at this scale",
        "",
        "[← README](../README.md) · written by `python -m icl.study` (`icl/analysis/study.py`) from the study's job "
        "folders; every number and every verdict below is computed by that code, none by hand.",
        "",
        "## Setup",
        f"- **Machine**: {machine(s.jobs)}.",
        f"- **Commands**: `make study` (= `python -m icl.train experiment=seed_study/{cfg['scale']}_core`, "
        f"`python -m icl.train experiment=seed_study/{cfg['scale']}_overview`, `python -m icl.bench bench=study "
        f"out_dir={cfg['study_dir']}/bench`, `python -m icl.study`); a rerun skips finished jobs (`skip_done`).",
        f"- **Scale**: d = {s.d}, {s.n_train} training points (k ≤ {s.k_train}), model.n_positions = "
        f"{s.n_positions} (extended context k = {s.k_train + 1}…{s.n_positions - 1}); "
        f"{len(s.seeds)} training seeds; {len(s.jobs)} jobs ({trainings} trainings; the int8 jobs load the float "
        f"model from the store); overview variants (seed 0, float, linear only): {', '.join(overview) or 'none'}. "
        f"Why this scale: configs/study_scale/{cfg['scale']}.yaml.",
        f"- **Training**: {'/'.join(sorted({str(j.steps) for j in s.jobs}))} steps per model "
        f"({', '.join(sorted({j.model for j in s.jobs}))} model, each variant's recipe from configs/recipe/); "
        + not_learned(s) + ".",
        f"- **Wall time**: training {_minutes(train_s)} (Σ train_seconds of status.json, one core per job, two jobs "
        f"at once), evaluation {_minutes(eval_s)} (Σ eval_seconds), this report and its figures "
        f"{_minutes(report_s)}; " + ("; ".join(wall) if wall else "no timing.log (not run by `make study`)") + ".",
        "",
        "## How the claims are tested",
        f"- **k mapping**: the paper's k values (d = {cfg['paper_d']}, {cfg['paper_train_k']} training examples) are "
        f"scaled by d / {cfg['paper_d']}: (a), (c), (e) pool k = d…{s.k_train} ({_window(s.window_fit)}, the "
        f"trained range past d); (b) \"from about 15 examples on\" → {_window(s.window_robust)}; (d) \"100 after "
        f"40\" → the extended range split in halves, first {_window(s.window_early) if s.window_early else '—'}, "
        f"then {_window(s.window_late) if s.window_late else '—'}.",
        "- **Statistic**: Δ = Σ_p Σ_k (err_A − err_B) / Σ_p Σ_k err_zero on the same prompts (checked from "
        f"errors.npz), negative = A lower; {cfg['ci']:.0%} percentile bootstrap over the prompts "
        f"({cfg['bootstrap']} resamples).",
        "- **Seeds vs prompts**: each CI is computed per training seed (A of seed s vs B of seed s) and covers only "
        "prompt resampling; seeds are never pooled into a bootstrap — they enter through the verdict rule (how many "
        "seeds' CIs agree) and the spread column (the seed-wise point values: mean, min … max).",
        f"- **Verdicts** (code: `icl.analysis.study.verdict`): with n seeds, need = ⌈2n/3⌉. Direction claims: "
        "confirmed when the CI is on the claimed side of 0 in ≥ need seeds, refuted when on the opposite side in "
        f"≥ need seeds. Equivalence claims: margin ±{cfg['margin']} normalised error (timing: ratio within "
        f"±{cfg['time_margin']:.0%}, on the log scale; \"toward the zero estimator\": within ±{cfg['zero_margin']} of "
        "1): confirmed when the CI lies inside the margin, refuted when entirely outside, in ≥ need seeds. Else "
        f"{UNRESOLVED}. Guard: a seed whose compared model did not learn (error at k = {s.k_guard} above "
        f"{cfg['guard']} and above the best baseline's) is dropped. Compound claims: one row per part; per ReLU "
        "variant the claim is confirmed when every part is, refuted when any part is.",
        "",
        "## Verdicts",
        "",
        "| claim | subject | verdict | parts confirmed / refuted / not resolved |",
        "|---|---|---|---|",
    ]
    for _, v in verdicts.iterrows():
        lines.append(f"| ({v['claim']}) {CLAIMS[v['claim']]} | {v['subject']} | **{v['verdict']}** | "
                     f"{v['confirmed']} / {v['refuted']} / {v['not_resolved']} |")
    lines += ["", "## Claim tables", "", claim_tables(rows, verdicts, cfg["ci"]), "## Figures", ""]
    for p in images:
        lines += [f"![{p.stem}]({rel(p)})", ""]
    lines += ["## Files", "", "In `docs/study/`: `claims.csv` (every row × seed), `verdicts.csv`, `paired.csv` "
              "(every paired difference vs softmax/none and vs the float model, per strategy × k), `summary.csv` "
              "(per job: error at k = d, 2d; train and eval seconds)."
              + (" Timing: icl.bench's `bench.csv` in the study folder." if bench is not None else ""), ""]
    return "\n".join(lines)


README_BEGIN, README_END = "<!-- study:begin -->", "<!-- study:end -->"


def update_readme(readme: Path, results: Path, figs: Path, out_dir: Path) -> None:
    """Replace the README's study block with two of the figures and a link to RESULTS.md (figures that exist)."""
    if not readme.is_file():
        return
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        log.warning("%s has no %s … %s block: not updated", readme, README_BEGIN, README_END)
        return
    base = readme.resolve().parent
    rel = lambda p: Path(p).resolve().relative_to(base).as_posix() if Path(p).resolve().is_relative_to(base) else str(p)
    shown = [p for p in (figs / "error_vs_k_linear.png", figs / "error_vs_scale_linear.png") if p.is_file()]
    block = [README_BEGIN, f"The seed study's claims, measured with CIs and verdicts: [RESULTS]({rel(results)}).", ""]
    block += [f"![{p.stem}]({rel(p)})" for p in shown]
    block.append(README_END)
    head, rest = text.split(README_BEGIN, 1)
    new = head + "\n".join(block) + rest.split(README_END, 1)[1]
    atomic_write(readme, lambda tmp: tmp.write_text(new))


@hydra.main(version_base="1.3", config_path=HYDRA_CONFIGS, config_name="study")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (``python -m icl.study``); a bad input is one line."""
    try:
        report(OmegaConf.to_container(cfg, resolve=True))
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        raise SystemExit(1) from None


def cli() -> None:
    """Console script ``icl-study`` (and ``python -m icl.study``)."""
    run_cli(main)
