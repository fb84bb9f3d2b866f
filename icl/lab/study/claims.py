"""The seed study's claims as its paper states them (``../shared/REFERENCES.md``), one row per tested statement
and arm, computed from committed cells (``icl.lab.study.compact``) alone.

Per row and training seed: a paired statistic on the same prompts (normalised error: Σ_p Σ_k err / Σ_p Σ_k zero),
its bootstrap CI over prompts (that seed's precision), whether both models passed the guard and whether either was
still improving at the end of training. The row's verdict comes from the seed-level t-interval over the seeds where
both models learned (``icl.lab.study.inference``); the row also says what counting the failed seeds would give, and
what dropping the seeds that learned only through the guard's baseline clause would give (the guard's two
directions of sensitivity).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icl.lab.study.compact import Cell, Windows
from icl.lab.study.inference import (
    CONFIRMED,
    REFUTED,
    UNRESOLVED,
    Convergence,
    Guard,
    SeedInterval,
    combine,
    convergence,
    convergence_flags,
    failure_rate,
    seed_interval,
    verdict,
)
from icl.stats import percentile_interval, ratio_replicates

REFERENCE = "softmax"
SEED_MODEL, PROPOSED_FIX = "relu", "relu_causal"
SUBJECT_NAMES = {SEED_MODEL: "relu (÷ L: the seed's model)", PROPOSED_FIX: "relu_causal (÷ tokens seen: its proposed fix)"}
CLAIMS: dict[str, str] = {
    "a": "ReLU attention matches or outperforms softmax on dense linear regression (non-inferiority)",
    "b": "ReLU is more robust to inputs scaled by 2 and by ½ (difference in differences, from about 15 examples)",
    "b-U": "error vs the input scale c is U-shaped (each model)",
    "b-zero": "large c drives the models toward the zero estimator (each model)",
    "c-sparse": "ReLU is worse on sparse linear regression",
    "c-sparse-early": "ReLU is worse on sparse linear regression below d examples (k < d, where sparsity pays: "
                      "Lasso's regime; least squares is exact from k = d on)",
    "c-trees": "ReLU is worse on depth-4 decision trees",
    "d": "at extended context ReLU is first worse, then better than a degrading softmax",
    "e": "int8 post-training quantization changes no accuracy (every evaluated strategy)",
    "f": "the variants' inference times do not differ significantly (in float, vs softmax; a measurement on this "
         "machine)",
    "f-q": "an int8 model's inference time equals softmax's in float (the int8 kernels' cost, plus the "
           "variant's own for relu and relu_causal: softmax's rows alone are not a variant comparison; a "
           "measurement on this machine)",
}


@dataclass
class SeedValue:
    seed: int
    point: float
    low: float            # prompt-bootstrap CI of this seed's statistic
    high: float
    learned: bool         # every model of the comparison passed the guard
    improving: bool       # a model of the comparison was still improving at the end of training
    note: str = ""
    baseline_only: bool = False   # learned, but a model of the comparison only through the guard's baseline clause
    convergence: tuple[str, ...] = ()   # the comparison's models' convergence flags (no curve, loss rose, ...)
    known: bool = True    # every model's convergence is known (False and not improving: unknown, never converged)
    missing: str = ""     # why the seed has no value although its models were committed (then not learned, point NaN)


@dataclass
class Row:
    claim: str
    part: str
    arm: str
    subject: str
    statistic: str
    kind: str
    margin: float
    seeds: list[SeedValue]
    absolute: dict[str, float] = field(default_factory=dict)   # mean normalised errors beside the statistic
    interval: SeedInterval | None = None
    verdict: str = UNRESOLVED
    why: str = ""
    with_failed: str = ""   # the verdict when failed seeds are counted, when it differs
    plateau_only: str = ""  # the verdict when baseline-clause-only seeds are dropped too, when it differs
    task: str = ""          # the task the row tests: a claim's verdict is combined per task
    unpaired: list[int] = field(default_factory=list)   # seeds committed for one model of the pair only
    attns: tuple[str, ...] = ()   # the variants whose models the row reads
    noise_mean: float = math.nan  # (e): the float model's mean error over the seeds its margin's SD is taken over
    margin_wide: bool = False     # (e): the margin exceeds the configured share of that mean (noise dominates)
    from_means: bool = False      # the seed values come from per-k means: no prompt CI by construction
    strict_margin: float = math.nan   # (e): the margin over the float seeds left once the baseline-clause-only seeds
    strict_wide: bool = False         # are dropped (NaN: not recomputed), and whether that margin is wide

    def decide(self, ci: float, min_seeds: int) -> "Row":
        learned = [s.point for s in self.seeds if s.learned]
        self.interval = seed_interval(learned, ci)
        self.verdict, self.why = verdict(self.kind, self.interval.low, self.interval.high, self.margin, min_seeds,
                                         self.interval.n)
        every = seed_interval([s.point for s in self.seeds], ci)
        alt, _ = verdict(self.kind, every.low, every.high, self.margin, min_seeds, every.n)
        if any(not s.learned for s in self.seeds) and alt != self.verdict:
            self.with_failed = alt
        self.drop_baseline_only(ci, min_seeds)
        return self

    def drop_baseline_only(self, ci: float, min_seeds: int, margin: float | None = None) -> None:
        """The other direction: a seed that passed the guard only by being near a poor baseline (trees) is dropped
        (``plateau_only``). ``margin``: the margin measured without those seeds, where the margin is measured on the
        seeds too ((e)'s float seed-to-seed SD): dropping them from the interval only would be asymmetric."""
        strict = seed_interval([s.point for s in self.seeds if s.learned and not s.baseline_only], ci)
        alt, _ = verdict(self.kind, strict.low, strict.high, self.margin if margin is None else margin, min_seeds,
                         strict.n)
        self.plateau_only = alt if self.baseline_only and alt != self.verdict else ""

    @property
    def baseline_only(self) -> list[int]:
        """The seeds the verdict uses where a model learned only through the guard's baseline clause."""
        return [s.seed for s in self.seeds if s.learned and s.baseline_only]

    @property
    def measurable_inside_margin(self) -> bool:
        """An equivalence confirmed although its interval excludes 0: the change is real, just smaller than the
        margin (the verdict is "equivalent within ±margin", not "no change")."""
        iv = self.interval
        return (self.claim == "e" and self.verdict == CONFIRMED and iv is not None
                and (iv.low > 0 or iv.high < 0))

    @property
    def largest_shift(self) -> SeedValue | None:
        """The seed with the largest |statistic| among those the verdict uses (every seed when none learned)."""
        used = [s for s in self.seeds if s.learned] or [s for s in self.seeds if not math.isnan(s.point)]
        return max(used, key=lambda s: abs(s.point)) if used else None

    @property
    def _strict_margin_text(self) -> str:
        if math.isnan(self.strict_margin):
            return ""
        return f" (margin ±{self.strict_margin:.3g} over the float seeds left{', wide' if self.strict_wide else ''})"

    @property
    def flags(self) -> str:
        failed = [s.seed for s in self.seeds if not s.learned and not s.missing]
        out = []
        if failed:
            out.append(f"did not learn: seed {', '.join(map(str, failed))}")
        out += [f"no value ({s.missing}): seed {s.seed}" for s in self.seeds if s.missing]
        out += convergence_flags([(s.seed, s.convergence) for s in self.seeds])
        if self.with_failed:
            out.append(f"counting failed seeds: {self.with_failed}")
        if self.baseline_only:
            out.append(f"learned only by the guard's baseline clause: seed {', '.join(map(str, self.baseline_only))}"
                       + (f"; dropping them: {self.plateau_only}{self._strict_margin_text}" if self.plateau_only
                          else ""))
        if self.measurable_inside_margin:
            out.append("a measurable change inside the margin (CI excludes 0)")
        if self.margin_wide:
            out.append(f"margin wide: noise dominates (±{self.margin:.3g} against the float model's mean error "
                       f"{self.noise_mean:.3g})")
        if self.unpaired:
            out.append(f"one model only, left out: seed {', '.join(map(str, self.unpaired))}")
        return "; ".join(out)


def window_text(ks: Sequence[int]) -> str:
    return f"k = {ks[0]}…{ks[-1]}" if len(ks) > 1 else f"k = {ks[0]}"


class Study:
    """The committed cells and the study's settings; the statistics rows are built from."""

    def __init__(self, cells: Sequence[Cell], cfg: Mapping[str, Any]) -> None:
        if not cells:
            raise ValueError(f"no committed cells under {cfg.get('cells')}: run `make study` or export finished jobs "
                             "(python -m icl.lab.study.compact)")
        self.cells = {c.key: c for c in cells}
        self.cfg = cfg
        self.n_boot, self.ci, self.boot_seed = int(cfg["bootstrap"]), float(cfg["ci"]), int(cfg["seed"])
        self.min_seeds = int(cfg["min_seeds"])
        self.guard = Guard.from_config(cfg["guard"])
        self.arms = [a for a in cfg["grid"]["arms"] if any(c.meta["arm"] == a for c in cells)]
        self._learned: dict[tuple, tuple[bool, str]] = {}
        self._convergence: dict[tuple, Convergence] = {}

    # -- cells ------------------------------------------------------------------------------------------------
    def cell(self, arm: str, task: str, attn: str, seed: int) -> Cell | None:
        return self.cells.get((arm, task, attn, seed))

    def same_models(self, arm: str, task: str, attns: Sequence[str]) -> str:
        """The other arms whose cells of ``attns`` on ``task`` have this arm's config fingerprints seed by seed (the
        same trained models, so the same numbers); "" when none, or nothing of this arm is committed."""
        def prints(a: str) -> dict[tuple[str, int], str]:
            return {(c.meta["attn"], c.meta["seed"]): c.meta.get("fingerprint", "") for c in self.cells.values()
                    if c.meta["arm"] == a and c.meta["task"] == task and c.meta["attn"] in attns}
        mine = prints(arm)
        return ", ".join(a for a in self.arms if a != arm and mine and all(mine.values()) and prints(a) == mine)

    def seeds(self, arm: str, task: str) -> list[int]:
        return sorted({k[3] for k in self.cells if k[0] == arm and k[1] == task})

    def windows(self, task: str) -> Windows | None:
        cell = next((c for c in self.cells.values() if c.meta["task"] == task), None)
        if cell is None:
            return None
        m = cell.meta
        return Windows.of(int(m["n_dims"]), int(m["k_train"]), int(m["n_positions"]), int(self.cfg["paper_d"]))

    def guard_k(self, cell: Cell) -> int:
        return self.guard.k_for(cell.meta["task"], int(cell.meta["n_dims"]), int(cell.meta["k_train"]))

    def best_baseline(self, cell: Cell, k: int, quant: str = "none") -> tuple[str, float]:
        """The lowest error at k among the baselines the config says can fit the task."""
        return self.guard.best_baseline(cell.meta["task"], lambda n: cell.mean(quant, "standard", None, n, k))

    def learned(self, cell: Cell, quant: str = "none") -> tuple[bool, str]:
        """The guard on one model (the cell's float model, or one of its quant modes)."""
        key = (cell.key, quant)
        if key not in self._learned:
            k = self.guard_k(cell)
            err = cell.mean(quant, "standard", None, "transformer", k)
            name, base = self.best_baseline(cell, k)
            # eval.csv's means skip a non-finite prompt; the window sums the claims use would turn NaN instead
            finite = all(np.isfinite(v).all() for n, v in cell.errors().items()
                         if n.startswith(f"{quant}/") and "/transformer/" in n)
            ok = self.guard.learned(err, base) and finite
            self._learned[key] = (ok, f"{cell.meta['attn']} {quant}: {err:.3f} at k = {k} ({name} {base:.3f})"
                                  + ("" if finite else ", non-finite errors on some prompt"))
        return self._learned[key]

    def baseline_only(self, cell: Cell, quant: str = "none") -> bool:
        """Learned, but only through the guard's baseline clause (error above ``zero_fraction``, within the best
        baseline + margin): such a model is as good as the fitters without having left the plateau by the guard's
        first test, so a verdict resting on it is reported with and without it (``Row.plateau_only``)."""
        err = cell.mean(quant, "standard", None, "transformer", self.guard_k(cell))
        return self.learned(cell, quant)[0] and not err <= self.guard.zero_fraction

    def convergence(self, cell: Cell) -> Convergence:
        """The convergence rules on the cell's training curve (read once); unknown when it has no curve."""
        if cell.key not in self._convergence:
            conv, curve = self.cfg["convergence"], cell.curve()
            self._convergence[cell.key] = convergence(curve["step"], curve["loss_rel_zero"], float(conv["tail"]),
                                                      float(conv["tolerance"]), self.ci)
        return self._convergence[cell.key]

    def improving(self, cell: Cell) -> bool:
        return self.convergence(cell).improving

    # -- statistics -------------------------------------------------------------------------------------------
    def _norm(self, cell: Cell, quant: str, strategy: str, param: float | None,
              ks: Sequence[int]) -> tuple[float, np.ndarray] | None:
        model, zero = cell.window(quant, strategy, param, ks), cell.window(quant, strategy, param, ks, "zero")
        if model is None or zero is None:
            return None
        return ratio_replicates(model, zero, self.n_boot, self.boot_seed)

    def _seed_value(self, seed: int, models: Sequence[tuple[Cell | None, str]],
                    stat: Callable[[], tuple[float, np.ndarray] | None]) -> SeedValue | None:
        if any(c is None for c, _ in models):
            return None
        checks = [self.learned(c, q) for c, q in models]
        result = stat()
        if result is None:
            return None
        point, boots = result
        low, high = percentile_interval(boots, self.ci) if np.isfinite(boots).all() else (math.nan, math.nan)
        return SeedValue(seed, float(point), float(low), float(high), all(ok for ok, _ in checks),
                         any(self.improving(c) for c, _ in models),
                         "; ".join(why for ok, why in checks if not ok),
                         any(self.baseline_only(c, q) for c, q in models),
                         convergence=self._convergence_labels(models),
                         known=all(self.convergence(c).known for c, _ in models))

    def _convergence_labels(self, models: Sequence[tuple[Cell, str]]) -> tuple[str, ...]:
        """The comparison's models' convergence flags, each naming its variant where the models differ in it (a
        relu − softmax row's "no curve" must say whose curve is missing)."""
        several = len({c.meta["attn"] for c, _ in models}) > 1
        return tuple(dict.fromkeys(f"{flag} ({c.meta['attn']})" if several else flag
                                   for c, _ in models for flag in self.convergence(c).flags))

    def _same_prompts(self, a: Cell, b: Cell, strategy: str, param: float | None, ks: Sequence[int]) -> None:
        za, zb = a.window("none", strategy, param, ks, "zero"), b.window("none", strategy, param, ks, "zero")
        if za is not None and zb is not None and not np.array_equal(za, zb):
            raise ValueError(f"cells {a.dir.name} and {b.dir.name} were scored on different {strategy} prompts: "
                             "evaluate every cell with the same eval.seed and eval.n_prompts")

    def difference(self, a: tuple[Cell | None, str], b: tuple[Cell | None, str], strategy: str,
                   param: float | None, ks: Sequence[int], seed: int,
                   baseline: tuple[float | None, ...] = ()) -> SeedValue | None:
        """Δ = norm(a) − norm(b) on the same prompts; with ``baseline`` params, the difference in differences
        [Δ(param) − Δ(baseline param)]."""
        def stat() -> tuple[float, np.ndarray] | None:
            out = []
            for p in (param, *baseline):
                self._same_prompts(a[0], b[0], strategy, p, ks)
                na, nb = self._norm(a[0], a[1], strategy, p, ks), self._norm(b[0], b[1], strategy, p, ks)
                if na is None or nb is None:
                    return None
                out.append((na[0] - nb[0], na[1] - nb[1]))
            if baseline:
                return out[0][0] - out[1][0], out[0][1] - out[1][1]
            return out[0]
        return self._seed_value(seed, [a, b], stat)

    def mean_difference(self, a: tuple[Cell | None, str], b: tuple[Cell | None, str], strategy: str,
                        param: float | None, ks: Sequence[int], seed: int) -> SeedValue | None:
        """Δ = mean over ``ks`` of a's per-k mean normalised error − b's, from cell.json's means (eval.csv's, index =
        k): for a window errors.npz does not store (it holds the claims' windows only). The means carry no
        per-prompt values, so the seed has no prompt CI (NaN); the seed-level t-interval is computed as for any row.
        The prompts are checked on the fit window's zero sums (errors.npz), as ``difference`` does. A model without
        a mean at some k of the window gives a seed with no value (not learned, named), never a silently dropped one."""
        if not ks or a[0] is None or b[0] is None:
            return None
        win = self.windows(a[0].meta["task"])
        if win is not None:
            self._same_prompts(a[0], b[0], strategy, param, win.fit)
        per_k = [[m.mean(q, strategy, param, "transformer", k) for k in ks] for m, q in (a, b)]
        absent = [f"{m.meta['attn']} at k = {', '.join(str(k) for k, v in zip(ks, values) if math.isnan(v))}"
                  for (m, _), values in zip((a, b), per_k) if any(math.isnan(v) for v in values)]
        if absent:
            value = self._seed_value(seed, [a, b], lambda: (math.nan, np.array([math.nan])))
            if value is not None:
                value.learned, value.missing = False, f"no per-k mean: {'; '.join(absent)}"
            return value
        return self._seed_value(seed, [a, b], lambda: (float(np.mean(per_k[0]) - np.mean(per_k[1])),
                                                       np.array([math.nan])))

    def within(self, cell: Cell | None, seed: int, stat: Callable[[Callable], tuple[float, np.ndarray] | None]
               ) -> SeedValue | None:
        if cell is None:
            return None
        return self._seed_value(seed, [(cell, "none")], lambda: stat(
            lambda strategy, param, ks: self._norm(cell, "none", strategy, param, ks)))

    def absolute(self, arm: str, task: str, attns: Sequence[str], strategy: str, param: float | None,
                 ks: Sequence[int], quants: Sequence[str] = ("none",), also: Sequence[str] = ()) -> dict[str, float]:
        """Mean normalised error over ks of each model (attn × quant), over the seeds where every one of them
        learned (the seeds a paired row's verdict uses; none: over every seed, the names say so), the best fitting
        baseline (and the baselines ``also`` names), and the zero estimator's raw mean squared error (the
        normaliser)."""
        out: dict[str, float] = {}
        models = [(attn, quant) for attn in attns for quant in quants]
        present, seeds = [], []
        for sd in self.seeds(arm, task):
            cells = [(self.cell(arm, task, attn, sd), quant) for attn, quant in models]
            if all(c is not None for c, _ in cells):
                present.append(cells)
                if all(self.learned(c, q)[0] for c, q in cells):
                    seeds.append(cells)
        # no seed where all learned: the failed models' errors over every seed, said so (an absolute column is
        # never left empty)
        suffix = "" if seeds or not present else " (every seed: none where all learned)"
        for i, (attn, quant) in enumerate(models):
            vals = [_mean([c.mean(q, strategy, param, "transformer", k) for k in ks]) for c, q in
                    (cells[i] for cells in (seeds or present))]
            out[f"{attn}{'' if quant == 'none' else ' ' + quant}{suffix}"] = float(np.mean(vals)) if vals else math.nan
        cell = next((c for c in self.cells.values() if c.meta["arm"] == arm and c.meta["task"] == task), None)
        if cell is not None:
            names = self.guard.baselines.get(task, ())
            per = {n: _mean([cell.mean("none", strategy, param, n, k) for k in ks]) for n in names}
            per = {n: v for n, v in per.items() if not math.isnan(v)}
            if per:
                name = min(per, key=per.get)
                out[name] = float(per[name])
            for name in also:
                value = _mean([cell.mean("none", strategy, param, name, k) for k in ks])
                if name not in out and not math.isnan(value):
                    out[name] = value
            zero = cell.window("none", strategy, param, ks, "zero")
            if zero is not None:
                out["zero (raw MSE)"] = float(zero.mean() / len(ks))
        return out


def _mean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN when there is none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _row(study: Study, claim: str, part: str, arm: str, subject: str, statistic: str, kind: str, margin: float,
         seeds: Sequence[SeedValue | None], absolute: dict[str, float], task: str = "linear",
         unpaired: Sequence[int] = (), attns: Sequence[str] = (), from_means: bool = False) -> Row | None:
    kept = [s for s in seeds if s is not None]
    if not kept:
        return None
    return Row(claim, part, arm, subject, statistic, kind, margin, kept, absolute, task=task,
               unpaired=list(unpaired), attns=tuple(attns), from_means=from_means).decide(study.ci, study.min_seeds)


def claim_rows(study: Study) -> list[Row]:
    """Rows of claims (a)–(e) for every arm (timing (f): ``timing_rows``)."""
    rows: list[Row] = []
    margins = study.cfg["margins"]
    for arm in study.arms:
        rows += _accuracy_rows(study, arm, float(margins["noninferiority"]), float(margins["zero"]))
        if not float(margins["quant_wide"]) > 0:  # <= 0 would flag every (e) row as noise-dominated
            raise ValueError(f"study: margins.quant_wide must be > 0 (a share of the float model's mean error), "
                             f"got {margins['quant_wide']}")
        rows += _quant_rows(study, arm, float(margins["quant_noise_factor"]), float(margins["quant_wide"]))
    return [r for r in rows if r is not None]  # a row none of whose cells is committed is left out


def _vs_softmax(study: Study, arm: str, claim: str, part: str, task: str, strategy: str, param: float | None,
                ks: Sequence[int], kind: str, margin: float = 0.0, baseline: tuple[float | None, ...] = (),
                from_means: bool = False, also: Sequence[str] = ()) -> list[Row]:
    """Each ReLU variant against softmax; ``from_means``: the seed values from cell.json's per-k means
    (``Study.mean_difference``) for a window errors.npz does not store."""
    rows = []
    for relu in (SEED_MODEL, PROPOSED_FIX):
        pairs = [((study.cell(arm, task, relu, sd), "none"), (study.cell(arm, task, REFERENCE, sd), "none"), sd)
                 for sd in study.seeds(arm, task)]
        seeds = [study.mean_difference(a, b, strategy, param, ks, sd) if from_means else
                 study.difference(a, b, strategy, param, ks, sd, baseline) for a, b, sd in pairs]
        unpaired = [sd for sd in study.seeds(arm, task)
                     if (study.cell(arm, task, relu, sd) is None) != (study.cell(arm, task, REFERENCE, sd) is None)]
        what = f"{strategy}{'' if param is None else f' c = {param:g}'}"
        stat = (f"[Δ(c = {param:g}) − Δ(c = 1)], Δ = {relu} − softmax" if baseline else f"Δ = {relu} − softmax")
        source = (" (mean over k of cell.json's per-k mean normalised errors: no prompt CI per seed)"
                  if from_means else "")
        rows.append(_row(study, claim, part, arm, SUBJECT_NAMES[relu],
                         f"{stat}, {task}, {what}, {window_text(ks)}{source}", kind, margin, seeds,
                         study.absolute(arm, task, (relu, REFERENCE), strategy, param, ks, also=also),
                         task, unpaired, (relu, REFERENCE), from_means))
    return rows


def _accuracy_rows(study: Study, arm: str, noninferiority: float, zero_margin: float) -> list[Row]:
    rows: list[Row] = []
    lin = study.windows("linear")
    if lin is not None and study.seeds(arm, "linear"):
        rows += _vs_softmax(study, arm, "a", "not worse on dense linear", "linear", "standard", None, lin.fit,
                            "noninferior", noninferiority)
        for c in (2.0, 0.5):
            rows += _vs_softmax(study, arm, "b", f"more robust at c = {c:g}", "linear", "scale_x", c, lin.robust,
                                "less", baseline=(1.0,))
        factors = sorted(study.cfg["scale_factors"])
        lo, hi = factors[0], factors[-1]

        def u_shape(norm: Callable) -> tuple[float, np.ndarray] | None:
            parts = [norm("scale_x", c, lin.robust) for c in (1.0, lo, hi)]
            if any(p is None for p in parts):
                return None
            (p1, b1), (pl, bl), (ph, bh) = parts
            return min(pl - p1, ph - p1), np.minimum(bl - b1, bh - b1)

        def toward_zero(norm: Callable) -> tuple[float, np.ndarray] | None:
            out = norm("scale_x", hi, lin.robust)
            return None if out is None else (out[0] - 1.0, out[1] - 1.0)

        for attn in (REFERENCE, SEED_MODEL, PROPOSED_FIX):
            seeds = [study.within(study.cell(arm, "linear", attn, sd), sd, u_shape) for sd in study.seeds(arm, "linear")]
            rows.append(_row(study, "b-U", "U-shaped in c", arm, attn, f"min(err(c = {lo:g}), err(c = {hi:g})) − "
                             f"err(c = 1), linear, {window_text(lin.robust)}", "greater", 0.0, seeds,
                             study.absolute(arm, "linear", (attn,), "scale_x", 1.0, lin.robust), attns=(attn,)))
            seeds = [study.within(study.cell(arm, "linear", attn, sd), sd, toward_zero)
                     for sd in study.seeds(arm, "linear")]
            rows.append(_row(study, "b-zero", f"c = {hi:g} → zero estimator", arm, attn, f"err(c = {hi:g}) − 1, "
                             f"linear, {window_text(lin.robust)}", "equal", zero_margin, seeds,
                             study.absolute(arm, "linear", (attn,), "scale_x", hi, lin.robust), attns=(attn,)))
        if lin.beyond:
            early, late = lin.early, lin.late
            rows += _vs_softmax(study, arm, "d", "first worse (extended context)", "linear", "long_context", None,
                                early, "greater")
            if late:
                rows += _vs_softmax(study, arm, "d", "then better (extended context)", "linear", "long_context",
                                    None, late, "less")

                def degrading(norm: Callable) -> tuple[float, np.ndarray] | None:
                    a, b = norm("long_context", None, late), norm("long_context", None, lin.fit)
                    return None if a is None or b is None else (a[0] - b[0], a[1] - b[1])

                seeds = [study.within(study.cell(arm, "linear", REFERENCE, sd), sd, degrading)
                         for sd in study.seeds(arm, "linear")]
                rows.append(_row(study, "d", "softmax degrades", arm, REFERENCE, f"err({window_text(late)}) − "
                                 f"err({window_text(lin.fit)}), softmax, linear, long_context", "greater", 0.0, seeds,
                                 study.absolute(arm, "linear", (REFERENCE,), "long_context", None, late),
                                 attns=(REFERENCE,)))
    for claim, task in (("c-sparse", "sparse_linear"), ("c-trees", "decision_tree")):
        win = study.windows(task)
        if win is not None and study.seeds(arm, task):
            rows += _vs_softmax(study, arm, claim, f"worse on {task}", task, "standard", None, win.fit, "greater")
    early = sparse_early_window(study)
    if early and study.seeds(arm, "sparse_linear"):
        rows += _vs_softmax(study, arm, "c-sparse-early", "worse on sparse_linear below d", "sparse_linear",
                            "standard", None, early, "greater", from_means=True, also=("least_squares",))
    return rows


def sparse_early_window(study: Study) -> list[int]:
    """(c-sparse-early)'s k = ceil(``sparse_early`` × d) … d − 1: the fit window starts at k = d, where least
    squares is already exact on a sparse task; sparsity pays below d (Lasso's regime), so the claim is tested there."""
    cell = next((c for c in study.cells.values() if c.meta["task"] == "sparse_linear"), None)
    if cell is None:
        return []
    share = float(study.cfg["sparse_early"])
    if not 0 < share < 1:
        raise ValueError(f"study: sparse_early must be in (0, 1) (the window's start as a share of d), got {share}")
    d = int(cell.meta["n_dims"])
    window = list(range(math.ceil(share * d), min(d, int(cell.meta["k_train"]) + 1)))
    if len(window) < 2:  # else the claim would leave the page without a word
        raise ValueError(f"study: sparse_early={share} leaves {len(window)} k value(s) below d = {d} "
                         f"(k = ceil(sparse_early × d) … d − 1): lower it, e.g. sparse_early=0.5")
    return window


def float_errors(study: Study, arm: str, task: str, attn: str, strategy: str, param: float | None,
                 ks: Sequence[int]) -> list[float]:
    """The float model's normalised error over ``ks``, one value per seed where it learned."""
    return list(float_errors_by_seed(study, arm, task, attn, strategy, param, ks).values())


def quant_margin(study: Study, arm: str, task: str, attn: str, strategy: str, param: float | None,
                 ks: Sequence[int], factor: float) -> float:
    """(e)'s margin, tied to measured noise: ``factor`` × the seed-to-seed SD of the float model's error here."""
    values = float_errors(study, arm, task, attn, strategy, param, ks)
    return factor * float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan


def float_errors_by_seed(study: Study, arm: str, task: str, attn: str, strategy: str, param: float | None,
                         ks: Sequence[int]) -> dict[int, float]:
    """``float_errors`` keyed by seed: the margin recomputed without some seeds (``Row.drop_baseline_only``)."""
    values = {}
    for sd in study.seeds(arm, task):
        c = study.cell(arm, task, attn, sd)
        out = study._norm(c, "none", strategy, param, ks) if c is not None and study.learned(c)[0] else None
        if out is not None:
            values[sd] = out[0]
    return values


def _drop_baseline_only_noise(study: Study, row: Row, noise: Mapping[int, float], factor: float,
                              wide: float) -> None:
    """(e) without the baseline-clause-only seeds: the margin (and its wide flag) over the float seeds left, so the
    interval and the margin it is judged against lose the same seeds (evidence: tuned decision_tree relu_causal, float
    errors 0.557, 0.703 (seed 1, baseline clause only), 0.400: SD 0.152 with seed 1, 0.111 without)."""
    dropped = {s.seed for s in row.seeds if s.baseline_only}
    left = [v for sd, v in noise.items() if sd not in dropped]
    row.strict_margin = factor * float(np.std(left, ddof=1)) if len(left) >= 2 else math.nan
    row.strict_wide = bool(left) and row.strict_margin > wide * float(np.mean(left))
    row.drop_baseline_only(study.ci, study.min_seeds, row.strict_margin)


def _quant_row(study: Study, arm: str, task: str, attn: str, quant: str, strategy: str, param: float | None,
               ks: Sequence[int], factor: float, fit: Sequence[int], wide: float) -> Row | None:
    """One (e) row over ``ks``; its margin is always the fit window's (the training noise of in-range error: past the
    training length the seeds' errors spread so far that their SD would make any margin meaningless). A margin above
    ``wide`` × the float model's mean error there is flagged: one off seed inflates an SD over 3-5 seeds until any
    shift reads as equivalent (the margin rule itself is kept: it is what the issue asks, a margin tied to noise)."""
    beyond = list(ks) != list(fit)
    margin = quant_margin(study, arm, task, attn, strategy, param, fit, factor)
    noise = float_errors(study, arm, task, attn, strategy, param, fit)
    seeds = []
    for sd in study.seeds(arm, task):
        c = study.cell(arm, task, attn, sd)
        seeds.append(None if c is None or quant not in c.meta["quants"] else
                     study.difference((c, quant), (c, "none"), strategy, param, ks, sd))
    what = f"{strategy}{'' if param is None else f' c = {param:g}'}"
    part = f"{attn} on {task}, {what}" + (f" beyond training ({window_text(ks)})" if beyond else "")
    row = _row(study, "e", part, arm, quant, f"Δ = {quant} − none, {attn}, {task}, {what}, {window_text(ks)}",
               "equal", margin, seeds,  # NaN: no margin, so neither verdict (nor with_failed) can resolve
               study.absolute(arm, task, (attn,), strategy, param, ks, (quant, "none")), task, attns=(attn,))
    if row is not None and math.isnan(margin):
        row.verdict, row.why = UNRESOLVED, "no margin: fewer than 2 learned float seeds"
    if row is not None and noise:
        row.noise_mean = float(np.mean(noise))
        row.margin_wide = margin > wide * row.noise_mean
    if row is not None and row.baseline_only:
        _drop_baseline_only_noise(study, row, float_errors_by_seed(study, arm, task, attn, strategy, param, fit),
                                  factor, wide)
    return row


def _quant_rows(study: Study, arm: str, factor: float, wide: float) -> list[Row]:
    rows = []
    cells = [c for c in study.cells.values() if c.meta["arm"] == arm]
    quants = sorted({q for c in cells for q in c.meta["quants"] if q != "none"})
    for quant in quants:
        for task in sorted({c.meta["task"] for c in cells}):
            win = study.windows(task)
            tags = sorted({"/".join(k.split("/")[1:3]) for c in cells if c.meta["task"] == task
                           for k in c.errors() if k.startswith(f"{quant}/")})
            for attn in sorted({c.meta["attn"] for c in cells if c.meta["task"] == task}):
                for tag in tags:
                    strategy, raw = tag.split("/")
                    param = float(raw) if raw else None
                    # long_context is distinctive past the training length: its late window too
                    windows = [win.fit] + ([win.late] if strategy == "long_context" and win.late else [])
                    for ks in windows:
                        rows.append(_quant_row(study, arm, task, attn, quant, strategy, param, ks, factor, win.fit,
                                               wide))
    return rows


def proofs(study: Study) -> list[dict[str, Any]]:
    """Each quantised job's quant.json proof: how far its predictions moved from the float model's."""
    out = []
    for cell in study.cells.values():
        for quant in cell.meta["quants"]:
            p = cell.proof(quant)
            if quant != "none" and p is not None:
                out.append({"cell": cell.dir.name, "quant": quant, "quantized_linears": p.get("quantized_linears"),
                            "linear_layers": p.get("linear_layers"), "rel_diff_mean": p.get("rel_diff_mean"),
                            "rel_diff_max": p.get("rel_diff_max"), "proof_prompts": p.get("proof_prompts")})
    return out


def failure_table(study: Study) -> list[dict[str, Any]]:
    """k of n seeds that did not learn, per arm × task × variant × quant mode, with a Clopper–Pearson CI, and the
    seeds that learned only through the guard's baseline clause (named: the verdicts resting on them say so)."""
    out = []
    groups: dict[tuple, list[tuple[int, bool, bool]]] = {}
    for cell in study.cells.values():
        for quant in cell.meta["quants"]:
            groups.setdefault((cell.meta["arm"], cell.meta["task"], cell.meta["attn"], quant), []).append(
                (int(cell.meta["seed"]), study.learned(cell, quant)[0], study.baseline_only(cell, quant)))
    for (arm, task, attn, quant), flags in sorted(groups.items()):
        failed = [learned for _, learned, _ in flags].count(False)
        low, high = failure_rate(failed, len(flags), study.ci)
        by_baseline = sorted(seed for seed, _, only in flags if only)
        out.append({"arm": arm, "task": task, "attn": attn, "quant": quant, "failed": failed, "seeds": len(flags),
                    "ci_low": low, "ci_high": high,
                    "baseline_clause_only": ", ".join(f"seed {s}" for s in by_baseline) or "—"})
    return out


def verdict_subject(row: Row) -> str:
    """The subject a row's verdict is combined under: (e)'s per variant too (its rows name the variant first)."""
    return f"{row.subject}, {row.attns[0]}" if row.claim == "e" and row.attns else row.subject


def claim_verdicts(rows: Sequence[Row], study: Study | None = None) -> list[dict[str, Any]]:
    """Per claim × arm × subject × task: the combined verdict of its rows (per task, so a task on which no model
    learned leaves the claim open there without hiding its verdict on the others; (e) per variant too, so one
    variant's open rows do not hide another's). (d)'s softmax-degrades row is part of each ReLU subject's (d) too:
    the seed claims ReLU ends below a *degrading* softmax. ``with_failed``: the combined verdict when the failed
    seeds are counted, where it differs; ``margin_wide``: (e)'s rows whose noise margin is flagged wide;
    ``plateau_only``: when the seeds that learned only through the guard's
    baseline clause are dropped, where it differs; ``same_models``: the other arms whose cells hold the very models this
    verdict reads (equal config fingerprints, seed by seed), so their verdict is no replication of this one."""
    out = []
    keys = sorted({(r.claim, r.arm, verdict_subject(r), r.task) for r in rows},
                  key=lambda k: (list(CLAIMS).index(k[0]), k[1], k[2], k[3]))
    for claim, arm, name, task in keys:
        mine = [r for r in rows if (r.claim, r.arm, r.task) == (claim, arm, task)
                and (verdict_subject(r) == name or (claim == "d" and r.subject == REFERENCE))]  # (d): "a degrading softmax"
        words = [r.verdict for r in mine]
        counted = combine([r.with_failed or r.verdict for r in mine])
        strict = combine([r.plateau_only or r.verdict for r in mine])
        attns = sorted({a for r in mine for a in r.attns})
        wide = sum(r.margin_wide for r in mine)
        out.append({"claim": claim, "arm": arm, "subject": name, "task": task, "verdict": combine(words),
                    "rows": len(words), "refuted": words.count(REFUTED),
                    "with_failed": counted if counted != combine(words) else "",
                    "plateau_only": strict if strict != combine(words) else "",
                    "margin_wide": f"{wide} of {len(mine)} rows" if wide else "",
                    "same_models": study.same_models(arm, task, attns) if study is not None else ""})
    return out
