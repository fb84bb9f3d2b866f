"""The quant sweep's figures (icl.analysis.quant): every sweep CSV under the inputs, docs/quantization's committed
rows included; one figure per task over every variant, each arm drawn from one file; error bars that are the
seed-level t-interval the breaking point is read from; per-block sensitivity one panel per variant."""

import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from icl.analysis.quant import (
    combine_sweeps,
    find_sweeps,
    plot_sensitivity,
    plot_sweep,
    quant_sweep_figures,
    read_sweep,
    seed_bars,
    with_guard_columns,
)
from tests.helpers import REPO, run

COMMITTED = REPO / "docs" / "quantization"


def rows(diffs: dict[int, list[float]], recipe: str = "smoke", attn: str = "relu", source: str = "cpu",
         kind: str = "weights", ci: float = 0.004) -> pd.DataFrame:
    """One arm's sweep rows: ``diffs[bits][seed]``, each seed's paired CI over prompts ± ``ci``."""
    return pd.DataFrame([{"source": source, "recipe": recipe, "task": "linear", "attn": attn, "seed": s,
                          "kind": kind, "bits": b, "block": np.nan, "branch": "", "label": f"w{b}", "margin": 0.05,
                          "float_error": 0.04, "error": 0.04 + d, "diff": d, "diff_low": d - ci, "diff_high": d + ci,
                          "inside_margin": d + ci < 0.05, "learned": True, "seconds": 0.1}
                         for b, per_seed in diffs.items() for s, d in enumerate(per_seed)])


def sensitivity(recipe: str, attn: str, seeds: int = 3) -> pd.DataFrame:
    return pd.DataFrame([{**rows({3: [0.0]}, recipe, attn).iloc[0].to_dict(), "kind": "sensitivity", "seed": s,
                          "block": block, "branch": branch, "diff": 0.01 * (block + 1), "diff_low": 0.0,
                          "diff_high": 0.05} for s in range(seeds) for block in range(3) for branch in ("attn", "mlp")])


def same_to_4_digits(got: np.ndarray, want: np.ndarray) -> bool:
    """``want`` as docs/ keeps it (4 significant digits; low = mean − half-width loses some to the rounding), rows of
    (mean, low, high); a non-finite row (a model that predicted nan) is inf in both."""
    inf = np.isinf(want).any(axis=1)
    scale = np.abs(want[~inf]).max(axis=1, keepdims=True)
    return bool(np.isinf(got[inf]).all() and (np.abs(got[~inf] - want[~inf]) <= 1e-3 * scale + 1e-6).all())


def errorbar_segments(ax: plt.Axes) -> list[list[tuple[float, float]]]:
    """Per errorbar drawn in ``ax``: its vertical bars as (low, high) pairs."""
    return [[(seg[0][1], seg[1][1]) for seg in c[2][0].get_segments()] for c in ax.containers]


def test_error_bars_are_the_seed_level_t_interval_of_three_seeds():
    # by hand: mean 0.03, sd = sqrt((0.02² + 0.01² + 0.03²) / 2) = 0.0264575, t(0.975, 2 df) = 4.302653 (table),
    # half-width 4.302653 · 0.0264575 / √3 = 0.0657241
    df = rows({8: [0.0, 0.001, 0.002], 4: [0.01, 0.02, 0.06]})
    bars = seed_bars(df, ["bits"]).set_index("bits")
    assert bars.loc[4, "series"] == "3 seeds" and bars.loc[4, "diff"] == pytest.approx(0.03)
    assert (bars.loc[4, "low"], bars.loc[4, "high"]) == pytest.approx((0.03 - 0.0657241, 0.03 + 0.0657241), abs=1e-7)
    fig = plot_sweep(df, "linear")
    (drawn,) = errorbar_segments(fig.axes[0])  # one line; x sorted: 4 bits, then 8
    assert np.array(drawn[0]) == pytest.approx(np.array([-0.0357241, 0.0957241]), abs=1e-7)  # not ± 0.004
    assert any("3 seeds (t-interval)" in t.get_text() for t in fig.legends[0].get_texts())
    plt.close(fig)


def test_fewer_than_three_seeds_are_drawn_seed_by_seed_with_their_prompt_cis():
    df = rows({4: [0.01, 0.03]}, ci=0.002)
    bars = seed_bars(df, ["bits"])
    assert list(bars.series) == ["seed 0", "seed 1"]
    assert bars[["low", "high"]].to_numpy() == pytest.approx(np.array([[0.008, 0.012], [0.028, 0.032]]))
    fig = plot_sweep(df, "linear")
    assert np.array([s[0] for s in errorbar_segments(fig.axes[0])]) == pytest.approx(np.array([[0.008, 0.012], [0.028, 0.032]]))
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {
        "relu: seed 0 (CI over prompts), float 0.040", "relu: seed 1 (CI over prompts), float 0.040"}
    plt.close(fig)
    nan = seed_bars(rows({2: [0.3, np.nan, 0.5]}), ["bits"])  # a quantised model that predicted nan: not finite
    assert np.isinf(nan[["diff", "low", "high"]].to_numpy()).all()
    with pytest.raises(ValueError, match="min_seeds=1: a seed-level t-interval needs at least 2 seeds"):
        quant_sweep_figures([COMMITTED], COMMITTED / "never", min_seeds=1)


def test_an_arm_in_two_files_is_drawn_once_from_the_pass_with_more_seeds(tmp_path, caplog):
    earlier = rows({8: [0.0, 0.001], 4: [0.01, 0.02]})
    later = rows({8: [0.0, 0.001, 0.002], 4: [0.01, 0.02, 0.03]})  # a reuse= pass: the same rows and one more seed
    before_recipes = later.drop(columns=["recipe"]).assign(diff=0.5)  # a sweep from before the arms (recipe column)
    other = rows({8: [0.0] * 3, 4: [0.04] * 3}, attn="softmax", source="elsewhere")
    for name, df in (("sweep_b.csv", earlier), ("sweep_a.csv", later), ("sweep_old.csv", before_recipes),
                     ("sweep_other.csv", other)):
        df.to_csv(tmp_path / name, index=False)
    with_guard_columns(later).drop(columns=["label", "block", "branch"]).assign(seeds="0 1 2", verdict="x").to_csv(
        tmp_path / "sweep_a_seeds.csv", index=False)  # seed-level rows: not a sweep's rows
    files = find_sweeps([tmp_path])
    assert [f.name for f in files] == ["sweep_a.csv", "sweep_b.csv", "sweep_old.csv", "sweep_other.csv"]
    df = combine_sweeps(files)
    assert df.groupby(["source", "attn"]).file.unique().map(lambda f: [p.split("/")[-1] for p in f]).to_dict() == {
        ("cpu", "relu"): ["sweep_a.csv"], ("elsewhere", "softmax"): ["sweep_other.csv"]}
    assert len(df) == 12  # 6 relu rows, 6 softmax rows: nothing twice
    fig = plot_sweep(df, "linear")
    assert len(fig.axes[0].containers) == 2 and len(fig.legends[0].get_texts()) == 2  # one line per arm
    plt.close(fig)
    later.assign(diff=later["diff"] + 0.1).to_csv(tmp_path / "sweep_b.csv", index=False)  # same seeds, other numbers
    with caplog.at_level(logging.WARNING, logger="icl.analysis.quant"):
        tie = combine_sweeps(find_sweeps([tmp_path]))
    assert set(tie[tie.attn == "relu"].file.map(lambda p: p.split("/")[-1])) == {"sweep_b.csv"}  # tie: the later name
    assert "6 of 6 shared probes differ" in caplog.text


def test_the_sensitivity_figure_has_one_panel_per_variant():
    df = pd.concat([sensitivity("smoke", "relu"), sensitivity("study_shared", "relu"), sensitivity("smoke", "softmax", 1)],
                   ignore_index=True)
    fig = plot_sensitivity(df, "linear")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["relu (cpu smoke)", "relu (cpu study_shared)",
                                                                "softmax (cpu smoke)"]
    assert panels[0].get_title().endswith("3 seeds, t-interval") and "CI over prompts" in panels[2].get_title()
    assert all(len(ax.patches) == 6 for ax in panels)  # 3 blocks × 2 branches, each panel its own variant's
    plt.close(fig)
    assert plot_sensitivity(df.assign(kind="weights"), "linear") is None


def test_the_committed_sweeps_bars_are_their_committed_seed_level_rows():
    files = find_sweeps([COMMITTED])
    assert {"sweep_arms.csv", "sweep_quant_models.csv"} <= {f.name for f in files}
    assert not any(f.name.endswith("_seeds.csv") for f in files)
    pairs = [f for f in files if f.with_name(f.stem + "_seeds.csv").is_file()]
    assert len(pairs) >= 3
    for per_seed in pairs:
        df = with_guard_columns(read_sweep(per_seed))
        df = df[df.learned.astype(bool)]
        committed = read_sweep(per_seed.with_name(per_seed.stem + "_seeds.csv"))
        for (source, recipe, task, attn, kind), g in with_guard_columns(committed).groupby(
                ["source", "recipe", "task", "attn", "kind"]):
            arm = df[(df.source == source) & (df.recipe == recipe) & (df.task == task) & (df.attn == attn)]
            bars = seed_bars(arm[arm.kind == kind], ["bits"]).set_index("bits")
            want = g.set_index("bits").loc[bars.index, ["diff", "diff_low", "diff_high"]]
            assert (bars.series == g.seed.iat[0]).all(), (per_seed.name, attn, kind)  # "5 seeds"
            assert same_to_4_digits(bars[["diff", "low", "high"]].to_numpy(), want.to_numpy()), (per_seed.name, attn, kind)


@pytest.mark.slow
def test_make_quant_figures_draws_the_committed_figures_from_the_committed_csvs(tmp_path):
    run(["-m", "icl.figures", f"inputs=[{COMMITTED}]", f"out_dir={tmp_path}", "formats=[png]"], tmp_path)
    df = combine_sweeps(find_sweeps([COMMITTED]))
    tasks = sorted(df[df.learned.astype(bool)].task.unique())
    assert {"linear", "sparse_linear"} <= set(tasks)
    want = {f"{stem}_{t}.png" for t in tasks for stem in ("quant_sweep", "quant_sensitivity")}
    tables = {"quant_breaking_points.csv", "quant_breaking_points.md"}
    assert {p.name for p in tmp_path.iterdir()} == want | tables  # nothing else: docs/quantization holds no job folder
    for name in tables:  # the committed summary is what make quant-figures writes
        assert (tmp_path / name).read_text() == (COMMITTED / name).read_text(), name
    assert all((tmp_path / name).stat().st_size > 10_000 for name in want)
    assert want <= {p.name for p in COMMITTED.glob("*.png")}  # the committed figures are these (make quant-figures)


def test_breaking_point_summary_reads_the_seed_level_bars_and_each_seed_below_three():
    from icl.analysis.quant import breaking_point_summary

    # 3 seeds: 8 and 6 bits inside (t-interval upper ends ≪ 0.05); 4 bits mean 0.03 ± 0.0657 (upper 0.096) outside
    pooled = rows({8: [0.0, 0.001, 0.002], 6: [0.002, 0.003, 0.004], 4: [0.01, 0.02, 0.06]})
    # 2 seeds, each on its own paired CI: seed 0 inside down to 4 bits, seed 1 outside already at 6 (and so at 4)
    alone = rows({8: [0.0, 0.0], 6: [0.001, 0.06], 4: [0.02, 0.001]}, attn="softmax")
    # a width inside below one outside does not count: the breaking point needs every wider width inside
    gap = rows({8: [0.0, 0.0, 0.0], 6: [0.2, 0.2, 0.2], 4: [0.0, 0.0, 0.0]}, attn="linear")
    df = with_guard_columns(pd.concat([pooled, alone, gap], ignore_index=True))
    got = breaking_point_summary(df).set_index("attn")
    assert got.at["relu", "breaking_point"] == "6 bits" and got.at["relu", "read"] == "t-interval over 3 seeds"
    assert got.at["softmax", "breaking_point"] == "4 8 bits" and got.at["softmax", "read"].startswith("per seed")
    assert got.at["linear", "breaking_point"] == "8 bits"
    none = rows({8: [0.2, 0.2, 0.2]}, attn="sigmoid")
    assert breaking_point_summary(with_guard_columns(none)).breaking_point.iat[0] == "–"


def test_the_committed_breaking_point_summary_is_the_committed_rows():
    from icl.analysis.quant import BREAKING_POINTS, breaking_point_summary

    want = pd.read_csv(COMMITTED / f"{BREAKING_POINTS}.csv", dtype=str, keep_default_na=False)
    got = breaking_point_summary(combine_sweeps(find_sweeps([COMMITTED]))).astype(str)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False)


def test_the_breaking_point_needs_the_upper_end_strictly_below_the_margin_and_one_margin(tmp_path):
    from icl.analysis.quant import breaking_point_summary

    edge = rows({8: [0.0], 4: [0.01]}).assign(diff_high=[0.001, 0.05])  # 4 bits: upper end AT the margin
    assert breaking_point_summary(with_guard_columns(edge)).breaking_point.iat[0] == "8 bits"
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    rows({8: [0.0, 0.0, 0.0]}).to_csv(tmp_path / "a" / "quant_sweep.csv", index=False)
    rows({8: [0.0, 0.0, 0.0]}).round(4).to_csv(tmp_path / "a" / "quant_sweep_compact.csv", index=False)
    assert find_sweeps([tmp_path]) == [tmp_path / "a" / "quant_sweep.csv"]  # its rounded copy is not a second file
    rows({8: [0.0, 0.0, 0.0]}).assign(margin=0.01).to_csv(tmp_path / "b" / "quant_sweep.csv", index=False)
    with pytest.raises(ValueError, match="margins \\[0.01, 0.05\\]: pass the files of one margin only"):
        combine_sweeps(find_sweeps([tmp_path]))


def test_docs_quantization_shows_the_committed_breaking_point_summary_unchanged():
    from icl.analysis.quant import BREAKING_POINTS

    table = (COMMITTED / f"{BREAKING_POINTS}.md").read_text().strip()
    assert table.startswith("| task | attn | arm | kind |")
    assert "\n" + table + "\n" in (REPO / "docs" / "quantization.md").read_text()


def test_a_per_seed_reading_lists_the_seeds_in_order_when_one_lacks_the_narrowest_width():
    """Seed 0 was not probed at 2 bits: its point must still come first (seed_bars groups by width first)."""
    from icl.analysis.quant import read_breaking_point

    def row(seed, bits, diff):
        return {"seed": seed, "bits": bits, "diff": diff, "diff_low": diff - 0.01, "diff_high": diff + 0.01,
                "margin": 0.05}

    rows = pd.DataFrame([row(0, 4, 0.2), row(0, 6, 0.0), row(0, 8, 0.0),  # seed 0 breaks at 6
                         row(1, 2, 0.3), row(1, 4, 0.0), row(1, 6, 0.0), row(1, 8, 0.0)])  # seed 1 at 4
    reading = read_breaking_point(rows, min_seeds=3)
    assert reading.points == (6, 4) and reading.text == "6 4 bits"
