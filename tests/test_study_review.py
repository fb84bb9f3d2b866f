"""Review of the seed study's inference code (issue 25): each test pins one finding (docs/study.md, "Review")."""

import math

import numpy as np
import pandas as pd
import pytest

from tests.test_study import pair_cells, relu_rows
from tests.test_tuning import cell_job


# -- recipe selection (icl.lab.tuning) -----------------------------------------------------------------------------
def test_a_rerun_job_does_not_make_a_recipe_missing_a_seed_complete(tmp_path):
    from icl.lab.tuning import candidates, load_cells, select

    v = tmp_path / "v"
    for seed in (0, 1, 2):  # recipe a: complete, worst 0.10
        cell_job(v / f"a{seed}", "relu", 1e-4, True, 1000, 0.08 + 0.01 * seed, seed=seed)
    cell_job(v / "b0", "relu", 1e-3, True, 1000, 0.02, seed=0)    # recipe b: seed 0 twice (a rerun), no seed 2
    cell_job(v / "b0_again", "relu", 1e-3, True, 1000, 0.03, seed=0)
    cell_job(v / "b1", "relu", 1e-3, True, 1000, 0.02, seed=1)
    for by in ("worst", "median"):
        ranked = candidates(load_cells([v]), by=by).set_index("lr")
        assert ranked.loc[1e-3, "status"] == "incomplete", by     # its seed 2 is unknown: it cannot win yet
        assert select(load_cells([v]), by=by).iloc[0].lr == 1e-4, by


def test_a_shared_recipe_missing_a_variant_is_not_complete(tmp_path):
    from icl.lab.tuning import candidates, load_cells

    v = tmp_path / "v"
    for seed in (0, 1):
        for attn in ("relu", "softmax"):
            cell_job(v / f"a_{attn}{seed}", attn, 1e-4, True, 1000, 0.10, seed=seed)
        cell_job(v / f"b_relu{seed}", "relu", 1e-3, True, 1000, 0.02, seed=seed)    # b: relu twice per seed,
        cell_job(v / f"b_relu{seed}x", "relu", 1e-3, True, 1000, 0.03, seed=seed)   # never softmax
    ranked = candidates(load_cells([v]), shared=True).set_index("lr")
    assert ranked.loc[1e-3, "status"] == "incomplete" and ranked.loc[1e-4, "status"] == "chosen"


def test_a_seed_without_an_error_at_2d_ranks_its_recipe_last(tmp_path):
    from icl.lab.tuning import candidates, load_cells, select

    v = tmp_path / "v"
    for seed in (0, 1, 2):
        cell_job(v / f"a{seed}", "relu", 1e-4, True, 1000, 0.10, seed=seed)
        job = cell_job(v / f"b{seed}", "relu", 1e-3, True, 1000, 0.02, seed=seed)
    frame = pd.read_csv(job / "eval.csv")   # b's seed 2: NaN at k = 2d (every prompt non-finite there)
    frame.loc[frame["k"] == 10, "error"] = math.nan
    frame.to_csv(job / "eval.csv", index=False)
    ranked = candidates(load_cells([v])).set_index("lr")
    assert ranked.loc[1e-3, "status"] == "complete"              # b's seed 2 is its worst job, not skipped
    assert math.isinf(ranked.loc[1e-3, "error"]) and select(load_cells([v])).iloc[0].lr == 1e-4


# -- compact results (icl.lab.study.compact) -----------------------------------------------------------------------
def test_a_window_sum_that_overflows_float16_is_kept_in_float32_beside_a_non_finite_prompt():
    from icl.lab.study.compact import Windows, window_sums

    errors = np.ones((3, 11))
    errors[0, 5] = np.nan        # a prompt whose model output was not finite
    errors[1, 5] = 1e5           # a finite sum float16 cannot hold (max 65504)
    (ks, sums), = window_sums(errors, Windows.of(5, 10, 11, 20), "standard").values()
    assert np.isnan(sums[0]) and float(sums[1]) == pytest.approx(1e5 + 5) and sums[2] == len(ks)


# -- claims (icl.lab.study.claims) ---------------------------------------------------------------------------------
def test_a_difference_in_differences_refuses_cells_scored_on_other_prompts_at_the_baseline_scale(tmp_path):
    from icl.lab.study.claims import Study, claim_rows
    from icl.lab.study.compact import ERRORS, load_cells
    from tests.test_study import study_cfg, write_cell

    root = tmp_path / "cells"
    for seed in range(3):
        for attn in ("softmax", "relu"):
            write_cell(root, attn, seed, 0.05)
    path = root / "tuned-linear-relu-seed1" / ERRORS   # relu seed 1: other prompts at c = 1 only
    arrays = dict(np.load(path))
    for key in [k for k in arrays if k.startswith("none/scale_x/1.0/")]:
        arrays[key] = arrays[key][::-1].copy()
    np.savez_compressed(path, **arrays)
    with pytest.raises(ValueError, match="different scale_x prompts"):
        claim_rows(Study(load_cells(root), study_cfg(root)))


def test_a_model_with_non_finite_errors_is_a_failed_seed_not_a_silently_dropped_one(tmp_path):
    from icl.lab.study.claims import Study, failure_table
    from icl.lab.study.compact import ERRORS, load_cells
    from tests.test_study import study_cfg

    root = pair_cells(tmp_path / "cells", 5)
    path = root / "tuned-linear-relu-seed1" / ERRORS   # relu seed 1: NaN on one prompt (eval.csv's mean skips it)
    arrays = dict(np.load(path))
    for key in [k for k in arrays if "/transformer/" in k]:
        arrays[key][3] = np.nan
    np.savez_compressed(path, **arrays)
    study = Study(load_cells(root), study_cfg(root))
    (row,) = relu_rows(study)
    assert [s.seed for s in row.seeds if not s.learned] == [1] and "did not learn: seed 1" in row.flags
    assert row.interval.n == 4
    table = {(r["attn"], r["quant"]): r["failed"] for r in failure_table(study)}
    assert table[("relu", "none")] == 1


def test_an_int8_row_without_a_noise_margin_claims_nothing_even_counting_failed_seeds(tmp_path):
    import json

    from icl.lab.study.claims import UNRESOLVED, Study, claim_rows
    from icl.lab.study.compact import CELL_JSON, ERRORS, load_cells
    from tests.test_study import study_cfg, write_cell

    root = tmp_path / "cells"
    for seed in range(3):   # only seed 0 learned: no seed-to-seed SD of the float model, so no margin
        write_cell(root, "relu", seed, 0.05 if seed == 0 else 0.9)
        folder = root / f"tuned-linear-relu-seed{seed}"
        arrays = dict(np.load(folder / ERRORS))
        arrays |= {"int8_weight" + k[4:]: v + 0.1 * arrays[k.replace("/transformer/", "/zero/")]
                   for k, v in arrays.items() if k.startswith("none/") and "/transformer/" in k}  # int8: +0.1 always
        np.savez_compressed(folder / ERRORS, **arrays)
        meta = json.loads((folder / CELL_JSON).read_text())
        meta["quants"]["int8_weight"] = meta["quants"]["none"]
        (folder / CELL_JSON).write_text(json.dumps(meta))
    rows = [r for r in claim_rows(Study(load_cells(root), study_cfg(root))) if r.claim == "e"]
    assert rows and all(r.verdict == UNRESOLVED and not r.with_failed for r in rows)


def test_median_rank_survives_a_recipe_with_no_error_at_2d_on_any_seed(tmp_path):
    from icl.lab.tuning import candidates, load_cells

    v = tmp_path / "v"
    for seed in (0, 1):
        cell_job(v / f"a{seed}", "relu", 1e-4, True, 1000, 0.10, seed=seed)
        job = cell_job(v / f"b{seed}", "relu", 1e-3, True, 1000, 0.02, seed=seed)
        frame = pd.read_csv(job / "eval.csv")
        frame.loc[frame["k"] == 10, "error"] = math.nan
        frame.to_csv(job / "eval.csv", index=False)
    ranked = candidates(load_cells([v]), by="median").set_index("lr")
    assert ranked.loc[1e-4, "status"] == "chosen" and math.isinf(ranked.loc[1e-3, "error"])


def test_a_seed_committed_for_one_model_of_a_pair_only_is_named_in_the_row(tmp_path):
    from tests.test_study import write_cell

    root = tmp_path / "cells"
    for seed in range(4):
        write_cell(root, "relu", seed, 0.08)
        if seed != 3:
            write_cell(root, "softmax", seed, 0.05)
    (row,) = relu_rows(root)
    assert row.interval.n == 3 and "one model only, left out: seed 3" in row.flags


def test_relus_extended_context_verdict_needs_the_softmax_it_beats_to_degrade():
    """(d) "then better than a *degrading* softmax": a refuted softmax-degrades row refutes each ReLU's (d)."""
    from icl.lab.study.claims import REFUTED, Row, SeedValue, claim_verdicts

    def row(part: str, subject: str, kind: str, points: list[float]) -> Row:
        seeds = [SeedValue(i, p, p - 0.001, p + 0.001, True, False) for i, p in enumerate(points)]
        return Row("d", part, "tuned", subject, "stat", kind, 0.0, seeds).decide(0.95, 3)

    rows = [row("first worse", "relu", "greater", [0.10, 0.12, 0.11]),
            row("then better", "relu", "less", [-0.10, -0.12, -0.11]),
            row("softmax degrades", "softmax", "greater", [-0.10, -0.12, -0.11])]
    verdicts = {v["subject"]: (v["verdict"], v["rows"]) for v in claim_verdicts(rows)}
    assert verdicts == {"relu": (REFUTED, 3), "softmax": (REFUTED, 1)}


def test_a_timing_row_shows_the_interval_its_verdict_comes_from():
    from icl.lab.study.timing import timing_rows

    bench = pd.DataFrame([{"device": "cpu", "threads": 1, "part": "latency", "model": "tiny", "batch": 256,
                           "attn": "relu", "quant": "none", "k": 10, "ratio": 1.02, "ratio_ci_low": 0.99,
                           "ratio_ci_high": 1.05}])
    (row,) = timing_rows(bench, 0.10)
    assert (row.interval.low, row.interval.high) == pytest.approx((math.log(0.99), math.log(1.05)))


def test_the_absolute_errors_beside_a_paired_row_use_the_seeds_its_verdict_uses(tmp_path):
    from tests.test_study import write_cell

    root = tmp_path / "cells"
    for seed in range(5):
        write_cell(root, "relu", seed, 0.05 + 0.01 * seed)
        write_cell(root, "softmax", seed, 0.9 if seed == 3 else 0.05)   # softmax seed 3 did not learn
    (row,) = relu_rows(root)
    assert row.absolute["relu"] == pytest.approx(np.mean([0.05, 0.06, 0.07, 0.09]))   # seeds 0, 1, 2, 4
    assert row.absolute["relu"] - row.absolute["softmax"] == pytest.approx(row.interval.mean, abs=2e-3)


def test_cost_counts_the_training_of_whichever_job_of_a_cell_trained_its_model():
    """A cell's model may be trained by a quant job launched before the float one; the float job then loads it."""
    from types import SimpleNamespace

    from icl.lab.study.report import cost_text

    by_quant_job = SimpleNamespace(meta={"quants": {"none": {"train_seconds": 0.0, "eval_seconds": 6.0},
                                                    "int8_weight": {"train_seconds": 600.0, "eval_seconds": 6.0}}})
    by_float_job = SimpleNamespace(meta={"quants": {"none": {"train_seconds": 300.0, "eval_seconds": 6.0},
                                                    "int8_weight": {"train_seconds": None, "eval_seconds": 6.0}}})
    assert cost_text([by_quant_job, by_float_job], {}).startswith("training 15.0 min and evaluation 0.4 min")


# -- the claims' sensitivity (review of the study page, 2026-12-07) ------------------------------------------------
def test_a_verdict_resting_on_seeds_that_passed_the_guard_only_by_its_baseline_clause_says_what_dropping_them_gives(
        tmp_path):
    """relu seeds 0-1 at 0.52 pass only as within the best baseline (0.45) + 0.1 (the tuned relu trees at 0.501/0.521
    beside xgboost 0.686): the row names them and gives the verdict without them; the failure table names them."""
    from icl.lab.study.claims import REFUTED, UNRESOLVED, Study, claim_rows, claim_verdicts, failure_table
    from icl.lab.study.compact import load_cells
    from tests.test_study import study_cfg, write_cell

    root = tmp_path / "cells"
    for seed in range(4):
        write_cell(root, "softmax", seed, 0.05)
        level = 0.52 if seed < 2 else 0.3
        write_cell(root, "relu", seed, level, means={"least_squares": [0.45] * 11})
    study = Study(load_cells(root), study_cfg(root))
    rows = claim_rows(study)
    (row,) = relu_rows(study)
    assert all(s.learned for s in row.seeds) and row.interval.n == 4 and row.verdict == REFUTED
    assert row.baseline_only == [0, 1] and row.plateau_only == UNRESOLVED             # 2 seeds left, 3 needed
    assert "learned only by the guard's baseline clause: seed 0, 1; dropping them: not resolved" in row.flags
    assert not row.with_failed                                                      # no seed failed
    softmax_u = next(r for r in rows if r.claim == "b-U" and r.subject == "softmax")
    assert softmax_u.baseline_only == [] and softmax_u.plateau_only == "" and "baseline clause" not in softmax_u.flags
    (verdict,) = [v for v in claim_verdicts(rows, study) if v["claim"] == "a"]
    assert (verdict["verdict"], verdict["plateau_only"]) == (REFUTED, UNRESOLVED)
    table = {(r["attn"], r["quant"]): r["baseline_clause_only"] for r in failure_table(study)}
    assert table[("relu", "none")] == "seed 0, seed 1" and table[("softmax", "none")] == "—"


def test_timing_claim_f_compares_the_variants_in_float_and_the_int8_rows_are_their_own_group():
    """9 of (f)'s 11 verdicts were int8 rows (softmax int8 vs softmax float among them: no variant comparison)."""
    from icl.lab.study.claims import CLAIMS, REFUTED, claim_verdicts
    from icl.lab.study.timing import timing_rows
    from tests.test_study import bench_rows

    bench = pd.concat([bench_rows("x86", {"int8_fbgemm": 0.7, "int8_dynamic": 2.0}),
                       bench_rows("x86", {"none": 1.01, "int8_dynamic": 2.1}, attn="relu")], ignore_index=True)
    rows = timing_rows(bench, 0.10)
    f = {(r.subject, r.part.rsplit("= ", 1)[1]) for r in rows if r.claim == "f"}
    assert f == {("relu/none", "10"), ("relu/none", "27")}                     # variants, in float
    quantised = {r.subject for r in rows if r.claim == "f-q"}
    assert quantised == {"softmax/int8_fbgemm", "softmax/int8_dynamic", "relu/int8_dynamic"}
    assert all(w in r.statistic for r in rows for w in ("x86", "model tiny", "batch 256", "kernel"))
    assert "int8" in CLAIMS["f-q"] and "not a variant comparison" in CLAIMS["f-q"]
    verdicts = {(v["claim"], v["subject"]): v["verdict"] for v in claim_verdicts(rows)}
    assert verdicts[("f", "relu/none")] == "confirmed" and verdicts[("f-q", "softmax/int8_dynamic")] == REFUTED
    assert [v["claim"] for v in claim_verdicts(rows)][-1] == "f-q"             # the group follows (f)


def test_an_int8_row_shows_its_margin_and_largest_shift_and_flags_a_margin_one_off_seed_made_wide(tmp_path):
    """Like tuned softmax linear c = 1/8 (float errors 0.414, 1.874, 0.275, 0.307, 0.328: SD 0.692 > ½ × mean 0.639),
    where int8's +0.090 on seed 1 read "confirmed"; elsewhere the SD is small beside the error."""
    from icl.lab.study.claims import Study, claim_rows, claim_verdicts
    from icl.lab.study.compact import load_cells
    from icl.lab.study.report import claim_tables
    from tests.test_study import study_cfg, write_cell

    root = tmp_path / "cells"
    for seed, level in enumerate((0.417, 1.876, 0.276, 0.308, 0.329)):  # the guard reads 0.05: every seed learned
        write_cell(root, "softmax", seed, level, quants=("int8_weight",), means={"transformer": [0.05] * 11})
        write_cell(root, "relu", seed, 0.05 + 0.01 * seed, quants=("int8_weight",))
    study = Study(load_cells(root), study_cfg(root))
    rows = [r for r in claim_rows(study) if r.claim == "e" and r.part.endswith("standard")]
    wide, narrow = (next(r for r in rows if r.attns == (attn,)) for attn in ("softmax", "relu"))
    assert wide.margin == pytest.approx(np.std([0.417, 1.876, 0.276, 0.308, 0.329], ddof=1), rel=0.05)
    assert wide.noise_mean == pytest.approx(0.641, rel=0.05) and wide.margin_wide
    assert "margin wide: noise dominates" in wide.flags and "margin wide" not in narrow.flags
    assert not narrow.margin_wide and narrow.margin < 0.5 * narrow.noise_mean
    shift = wide.largest_shift                                   # int8 = float × 1.001: largest on the worst seed
    assert shift.seed == 1 and abs(shift.point) == pytest.approx(0.001 * 1.876, rel=0.1)
    text = claim_tables(rows, 0.95)
    assert f"±{wide.margin:.3g} (float mean {wide.noise_mean:.3g})" in text and f"{abs(shift.point):.3g} (s1)" in text
    counts = {v["subject"]: v["margin_wide"] for v in claim_verdicts(rows, study)}
    assert counts["int8_weight, softmax"] == "1 of 1 rows" and counts["int8_weight, relu"] == ""


def sparse_cells(root, levels: dict[str, list[float]], seeds: int = 3) -> None:
    """sparse_linear cells (d = 10, k_train 20) whose cell.json means are ``levels[attn]`` below d (+ 0.01 per seed
    for relu) and 0.1 from k = d on; errors.npz at 0.05 for every model (its windows cannot show k < d)."""
    import json

    from icl.lab.study.compact import CELL_JSON
    from tests.test_study import write_cell

    for seed in range(seeds):
        for attn, below in levels.items():
            below = [v + (0.01 * seed if attn == "relu" else 0.0) for v in below]
            means = {"transformer": below + [0.1] * 11, "least_squares": [0.3] * 10 + [0.0] * 11,
                     "lasso_0.1": [0.1] * 10 + [0.02] * 11}
            write_cell(root, attn, seed, 0.05, means=means)
            folder = root / f"tuned-sparse_linear-{attn}-seed{seed}"
            (root / f"tuned-linear-{attn}-seed{seed}").rename(folder)
            meta = json.loads((folder / CELL_JSON).read_text())
            meta |= {"cell": folder.name, "task": "sparse_linear", "n_dims": 10, "k_train": 20, "n_positions": 21}
            (folder / CELL_JSON).write_text(json.dumps(meta))


def test_sparse_claim_is_also_tested_below_d_from_the_per_k_means(tmp_path):
    """The fit window k = d … k_train is where least squares is already exact: (c-sparse-early) reads k = 5…9 (d = 10)
    from cell.json's per-k means, with the seed-level t-interval and no prompt CI, Lasso and least squares beside."""
    from icl.lab.study.claims import CONFIRMED, Study, claim_rows, claim_verdicts, sparse_early_window
    from icl.lab.study.compact import load_cells
    from icl.lab.study.report import claim_tables
    from tests.test_study import study_cfg

    root = tmp_path / "cells"
    sparse_cells(root, {"softmax": [1.0] * 5 + [0.2] * 5, "relu": [1.0] * 5 + [0.4] * 5})
    cfg = study_cfg(root)
    study = Study(load_cells(root), cfg)
    assert sparse_early_window(study) == [5, 6, 7, 8, 9]
    (row,) = [r for r in claim_rows(study) if r.claim == "c-sparse-early" and r.subject.startswith("relu ")]
    assert [s.point for s in row.seeds] == pytest.approx([0.2, 0.21, 0.22])   # not errors.npz's 0 difference
    assert all(s.learned and math.isnan(s.low) for s in row.seeds) and row.interval.n == 3
    assert row.verdict == CONFIRMED and "k = 5…9" in row.statistic and "no prompt CI" in row.statistic
    assert row.absolute["lasso_0.1"] == pytest.approx(0.1) and row.absolute["least_squares"] == pytest.approx(0.3)
    assert row.absolute["relu"] == pytest.approx(0.41) and row.absolute["softmax"] == pytest.approx(0.2)
    assert "s0: +0.200 (no prompt CI)" in claim_tables([row], 0.95)
    assert {v["claim"] for v in claim_verdicts([row], study)} == {"c-sparse-early"}
    with pytest.raises(ValueError, match="sparse_early must be in"):
        sparse_early_window(Study(load_cells(root), cfg | {"sparse_early": 1.5}))
    with pytest.raises(ValueError, match=r"sparse_early=0.95 leaves 0 k value\(s\) below d = 10"):  # ceil(9.5) = 10
        sparse_early_window(Study(load_cells(root), cfg | {"sparse_early": 0.95}))
    with pytest.raises(ValueError, match="margins.quant_wide must be > 0"):   # 0 would flag every (e) row as wide
        claim_rows(Study(load_cells(root), cfg | {"margins": {**cfg["margins"], "quant_wide": 0}}))


# -- the claims' code review (2026-12-07, second pass) -------------------------------------------------------------
def quant_cells(root, float_levels: list[float], guard: list[float], shifts: list[float]) -> None:
    """softmax cells with an int8_weight model: the float model's errors.npz at ``float_levels`` (its noise margin),
    the guard reading ``guard`` (least squares 0.65: above 0.5 and ≤ 0.75 is the baseline clause), int8 = float +
    ``shifts`` × the zero estimator (so Δ = int8 − none is the shift exactly)."""
    import json

    from icl.lab.study.compact import CELL_JSON, ERRORS
    from tests.test_study import write_cell

    for seed, (level, read, shift) in enumerate(zip(float_levels, guard, shifts)):
        write_cell(root, "softmax", seed, level, means={"transformer": [read] * 11, "least_squares": [0.65] * 11})
        folder = root / f"tuned-linear-softmax-seed{seed}"
        arrays = dict(np.load(folder / ERRORS))
        arrays |= {"int8_weight" + k[4:]: v + shift * arrays[k.replace("/transformer/", "/zero/")]
                   for k, v in arrays.items() if k.startswith("none/") and "/transformer/" in k}
        np.savez_compressed(folder / ERRORS, **arrays)
        meta = json.loads((folder / CELL_JSON).read_text())
        meta["quants"]["int8_weight"] = meta["quants"]["none"]
        (folder / CELL_JSON).write_text(json.dumps(meta))


def test_dropping_baseline_clause_only_seeds_from_an_int8_row_drops_them_from_its_noise_margin_too(tmp_path):
    """Like tuned decision_tree relu_causal (float errors 0.557, 0.703 (seed 1, baseline clause only), 0.400): seed 1
    inflates the float SD. Without seed 1 the shifts 0.09-0.11 are judged against the SD of the seeds left (≈ 0.08),
    not the SD with seed 1 (≈ 0.13), inside which they would read as equivalent."""
    from icl.lab.study.claims import CONFIRMED, UNRESOLVED, Study, claim_rows
    from icl.lab.study.compact import load_cells
    from tests.test_study import study_cfg

    root = tmp_path / "cells"
    levels = [0.557, 0.703, 0.400, 0.45]
    quant_cells(root, levels, [0.3, 0.6, 0.3, 0.3], [0.09, 0.10, 0.10, 0.11])
    (row,) = [r for r in claim_rows(Study(load_cells(root), study_cfg(root)))
              if r.claim == "e" and r.part.endswith("standard")]
    assert row.baseline_only == [1] and row.verdict == CONFIRMED
    assert row.margin == pytest.approx(np.std(levels, ddof=1), rel=0.05)
    assert row.strict_margin == pytest.approx(np.std([0.557, 0.400, 0.45], ddof=1), rel=0.05)
    assert row.plateau_only == UNRESOLVED          # the Δ interval [≈0.075, ≈0.125] crosses ±0.08, not ±0.13
    assert f"dropping them: {UNRESOLVED} (margin ±{row.strict_margin:.3g} over the float seeds left)" in row.flags
    from icl.lab.study.report import claims_frame

    assert set(claims_frame([row])["plateau_only_margin"]) == {row.strict_margin}   # claims.csv has it, not just the flag


def test_a_baseline_clause_only_seed_that_inflates_nothing_leaves_the_int8_rows_plateau_verdict_alone(tmp_path):
    from icl.lab.study.claims import CONFIRMED, Study, claim_rows
    from icl.lab.study.compact import load_cells
    from tests.test_study import study_cfg

    root = tmp_path / "cells"
    quant_cells(root, [0.557, 0.703, 0.400, 0.45], [0.3, 0.6, 0.3, 0.3], [0.001, 0.002, 0.0, 0.001])
    (row,) = [r for r in claim_rows(Study(load_cells(root), study_cfg(root)))
              if r.claim == "e" and r.part.endswith("standard")]
    assert row.verdict == CONFIRMED and row.baseline_only == [1] and row.plateau_only == ""
    assert "dropping them" not in row.flags


@pytest.mark.parametrize("kept, plateau", [((0.06, 0.061, 0.062), "confirmed"), ((0.3, 0.31, 0.32), "")])
def test_dropping_two_of_five_seeds_leaves_three_and_the_verdict_follows_their_values(tmp_path, kept, plateau):
    """relu seeds 0-1 at 0.52 pass only by the baseline clause: without them 3 seeds (enough) decide. Seeds 2-4 just
    above softmax: all five read not resolved, the three confirm non-inferiority; far above: both refute (no flip)."""
    from icl.lab.study.claims import REFUTED, UNRESOLVED
    from tests.test_study import write_cell

    root = tmp_path / "cells"
    for seed, level in enumerate((0.52, 0.52, *kept)):
        write_cell(root, "softmax", seed, 0.05)
        write_cell(root, "relu", seed, level, means={"least_squares": [0.45] * 11})
    (row,) = relu_rows(root)
    assert row.baseline_only == [0, 1] and row.interval.n == 5
    assert row.verdict == (UNRESOLVED if plateau else REFUTED) and row.plateau_only == plateau
    assert ("dropping them" in row.flags) == bool(plateau)


def test_the_early_sparse_rows_refuse_cells_scored_on_other_prompts(tmp_path):
    """(c-sparse-early) reads cell.json's means, which cannot show the prompts: the fit window's zero sums can."""
    from icl.lab.study.claims import Study
    from icl.lab.study.compact import ERRORS, load_cells
    from tests.test_study import study_cfg

    root = tmp_path / "cells"
    sparse_cells(root, {"softmax": [1.0] * 5 + [0.2] * 5, "relu": [1.0] * 5 + [0.4] * 5})
    fit = np.arange(10, 21)   # the sparse cells' fit window (d = 10, k_train 20)
    for folder in root.iterdir():
        arrays = dict(np.load(folder / ERRORS))
        zero = np.linspace(1.0, 2.0, 200)
        if folder.name == "tuned-sparse_linear-relu-seed1":
            zero = zero[::-1].copy()
        arrays |= {"ks/standard//sparse": fit, "none/standard//zero/sparse": zero,
                   "none/standard//transformer/sparse": 0.1 * zero}
        np.savez_compressed(folder / ERRORS, **arrays)
    study = Study(load_cells(root), study_cfg(root))
    early = [5, 6, 7, 8, 9]
    pair = [(study.cell("tuned", "sparse_linear", attn, 1), "none") for attn in ("relu", "softmax")]
    with pytest.raises(ValueError, match="different standard prompts"):
        study.mean_difference(*pair, "standard", None, early, 1)
    same = [(study.cell("tuned", "sparse_linear", attn, 0), "none") for attn in ("relu", "softmax")]
    assert study.mean_difference(*same, "standard", None, early, 0).point == pytest.approx(0.2)


def test_an_early_sparse_seed_without_a_mean_at_some_k_is_named_not_dropped(tmp_path):
    import json

    from icl.lab.study.claims import Study, claim_rows
    from icl.lab.study.compact import CELL_JSON, load_cells
    from icl.lab.study.report import claim_tables
    from tests.test_study import study_cfg

    root = tmp_path / "cells"
    sparse_cells(root, {"softmax": [1.0] * 5 + [0.2] * 5, "relu": [1.0] * 5 + [0.4] * 5}, seeds=4)
    path = root / "tuned-sparse_linear-relu-seed1" / CELL_JSON
    meta = json.loads(path.read_text())
    meta["quants"]["none"]["means"]["standard/"]["transformer"][7] = None   # no finite prompt at k = 7
    path.write_text(json.dumps(meta))
    (row,) = [r for r in claim_rows(Study(load_cells(root), study_cfg(root)))
              if r.claim == "c-sparse-early" and r.subject.startswith("relu ")]
    assert [s.seed for s in row.seeds] == [0, 1, 2, 3] and row.interval.n == 3
    (gone,) = [s for s in row.seeds if s.seed == 1]
    assert not gone.learned and math.isnan(gone.point) and gone.missing == "no per-k mean: relu at k = 7"
    assert "no value (no per-k mean: relu at k = 7): seed 1" in row.flags and "did not learn" not in row.flags
    assert "s1: no value (no per-k mean: relu at k = 7) ×" in claim_tables([row], 0.95)


def test_a_seed_whose_bootstrap_is_not_finite_is_not_labelled_as_having_no_prompt_ci():
    from icl.lab.study.claims import Row, SeedValue
    from icl.lab.study.report import claim_tables

    seeds = [SeedValue(0, 0.1, math.nan, math.nan, True, False), SeedValue(1, 0.2, 0.1, 0.3, True, False)]
    row = Row("a", "part", "tuned", "relu", "stat", "noninferior", 0.02, seeds).decide(0.95, 2)
    assert "s0: +0.100 (CI not finite); s1: +0.200 [+0.100, +0.300]" in claim_tables([row], 0.95)
    row.from_means = True
    assert "s0: +0.100 (no prompt CI)" in claim_tables([row], 0.95)


def test_the_claims_csv_says_unknown_where_a_models_convergence_is_unknown(tmp_path):
    """A model without a readable curve is neither improving nor converged: the CSV must not write False for it."""
    from icl.lab.study.compact import CURVE
    from icl.lab.study.report import claims_frame

    root = pair_cells(tmp_path / "cells", 3)
    (root / "tuned-linear-relu-seed1" / CURVE).write_text("step,loss_rel_zero\n")
    (row,) = relu_rows(root)
    assert [s.known for s in row.seeds] == [True, False, True]
    frame = claims_frame([row])
    assert frame["improving"].tolist() == [False, "unknown", False]
    assert "no curve (relu): seed 1" in row.flags                   # the page's wording is unchanged
