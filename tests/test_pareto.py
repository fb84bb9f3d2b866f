"""icl.analysis.pareto: the error-vs-cost chart from synthetic job folders and cost rows, its Pareto front, and the
model size as stored (quant.json) marked by how it is stored."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from icl.analysis.figures import make_figures
from icl.analysis.pareto import (
    COST_FILE,
    STORAGE,
    error_vs_cost,
    error_vs_cost_files,
    job_sizes,
    load_costs,
    pareto_front,
    plot_error_vs_cost,
)
from icl.analysis.quant import read_quant, stored_as, table
from icl.analysis.results import load_results
from icl.run.job import JobDir
from tests.test_figures import make_job


def test_pareto_front_keeps_exactly_the_undominated_points():
    cost = [1.0, 2.0, 3.0, 2.0, 1.0, 4.0]
    error = [0.5, 0.3, 0.1, 0.4, 0.6, 0.1]  # (2, .4) is dominated by (2, .3); (1, .6) by (1, .5); (4, .1) by (3, .1)
    assert pareto_front(cost, error).tolist() == [True, True, True, False, False, False]
    assert pareto_front([1.0, 1.0], [0.2, 0.2]).tolist() == [True, True]  # equal points do not dominate each other


def _costs(folder: Path, rows: list[tuple[str, str, float, int]], note: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"model": "tiny", "attn": a, "quant": q, "n_dims": 3, "k": 6, "latency_ms": ms,
                   "latency_low_ms": 0.9 * ms, "latency_high_ms": 1.1 * ms, "state_floats": state, "note": note}
                  for a, q, ms, state in rows]).to_csv(folder / COST_FILE, index=False)


def test_error_vs_cost_from_job_folders(tmp_path, caplog):
    root = tmp_path / "outputs"
    for seed in (0, 1):  # make_job's transformer error at k = 2d = 6: exp(-2) + 0.02·seed (+ 0.1 off softmax)
        make_job(root / f"softmax{seed}", "linear", 3, seed=seed)
    make_job(root / "relu", "linear", 3, attn="relu")
    make_job(root / "int8", "linear", 3, quant="int8_weight")
    make_job(root / "nocost", "linear", 3, attn="sigmoid")
    _costs(root / "bench_old", [("softmax", "none", 9.0, 999)])
    _costs(root / "bench", [("softmax", "none", 2.0, 300), ("relu", "none", 1.0, 300),
                            ("softmax", "int8_weight", 3.0, 300)])
    _costs(root / "bench_failed", [("sigmoid", "none", math.nan, 300)], note="quant mode cannot run here")
    (root / "bench" / COST_FILE).touch()  # the newer file wins a repeated (model, attn, quant, n_dims)
    assert len(load_costs([root])) == 3
    with caplog.at_level(logging.WARNING):
        written = error_vs_cost_files([root], tmp_path / "figures", ("png",))
    assert {p.name for p in written} == {"error_vs_cost.csv", "error_vs_cost.png"}
    assert "no cost row for model=tiny attn=sigmoid" in caplog.text
    points = pd.read_csv(tmp_path / "figures" / "error_vs_cost.csv").set_index(["attn", "quant"])
    assert len(points) == 3
    soft = points.loc[("softmax", "none")]
    assert soft.jobs == 2 and soft.latency_ms == 2.0
    assert np.isclose(soft.error, np.exp(-2) + 0.01)
    # two seeds: the seed-level t-interval (t with 1 degree of freedom, 12.7), not a normal one
    assert np.isclose(soft.error_high - soft.error, 12.706 * np.std([0.0, 0.02], ddof=1) / np.sqrt(2), rtol=1e-4)
    relu = points.loc[("relu", "none")]
    assert np.isclose(relu.error, np.exp(-2) + 0.1) and (relu.error_low, relu.error_high) == (
        0.9 * relu.error, 1.1 * relu.error)  # one job: its own bootstrap interval
    # latency: relu cheapest, softmax in between, int8 (seed 0 only) the most accurate: none dominates another
    assert points.front_latency_ms.all()
    # state: all equal, so only the lowest error is on the front
    assert points.front_state_floats.to_dict() == {("softmax", "none"): False, ("relu", "none"): False,
                                                   ("softmax", "int8_weight"): True}


def test_make_figures_draws_the_chart_when_cost_rows_exist(tmp_path):
    make_job(tmp_path / "outputs" / "a", "linear", 3)
    assert not list(Path(tmp_path / "fig0").glob("error_vs_cost*"))
    _costs(tmp_path / "outputs" / "bench", [("softmax", "none", 2.0, 300)])
    make_figures([tmp_path / "outputs"], tmp_path / "fig", formats=("png",))
    assert (tmp_path / "fig" / "error_vs_cost.png").stat().st_size > 0



def _quant_json(job: Path, quant: str, stored: int, packed: int, float_bytes: int, dtype: str) -> None:
    JobDir(job).write_quant({"quant": quant, "label": quant, "quantized_dtype": dtype, "bytes": stored,
                             "bytes_packed": packed, "bytes_float": float_bytes})


def test_size_as_stored_per_point_marked_by_how_it_is_stored(tmp_path, caplog):
    root = tmp_path / "outputs"
    stored = {  # eval.csv's quant label -> quant.json's (quant, bytes, bytes_packed, quantized_dtype); float: 600 kB
        "none": ("none", 600_000, 600_000, "float32"), "int8_weight": ("int8_weight", 200_000, 200_000, "int8"),
        "intx_weight_w4_g32": ("intx_weight", 210_000, 120_000, "int4"),
        "attn_fq_a8_head": ("attn_fq", 600_064, 600_064, "float32")}  # + the wrappers' pickle metadata
    for label, (quant, size, packed, dtype) in stored.items():
        _quant_json(make_job(root / label, "linear", 3, quant=label), quant, size, packed, 600_000, dtype)
    simulated_eval = root / "attn_fq_a8_head" / "eval.csv"  # the most accurate point, yet off every front
    pd.read_csv(simulated_eval).assign(error=lambda df: df.error - 0.01).to_csv(simulated_eval, index=False)
    make_job(root / "relu_none", "linear", 3, attn="relu")  # no quant.json: its quantised sibling's bytes_float
    _quant_json(make_job(root / "relu_int8", "linear", 3, attn="relu", quant="int8_weight"), "int8_weight",
                200_300, 200_300, 600_500, "int8")
    make_job(root / "relu_int4", "linear", 3, attn="relu", quant="intx_weight_w4_g32")  # no quant.json, no cost
    _costs(root / "bench", [("softmax", "none", 2.0, 300), ("softmax", "int8_weight", 3.0, 300),
                            ("softmax", "attn_fq_a8_head", 2.5, 300)])  # a simulated width timed: not drawn
    with caplog.at_level(logging.WARNING):
        error_vs_cost_files([root], tmp_path / "figures", ("png",))
    assert "no size for model=tiny attn=relu quant=intx_weight_w4_g32" in caplog.text
    assert "no cost row for model=tiny attn=softmax quant=attn_fq" not in caplog.text
    points = pd.read_csv(tmp_path / "figures" / "error_vs_cost.csv").set_index(["attn", "quant"])
    expected = {("softmax", "none"): (600_000, 600_000, "float32"), ("softmax", "int8_weight"): (200_000, 200_000, "real"),
                ("softmax", "intx_weight_w4_g32"): (210_000, 120_000, "unpacked"),
                ("softmax", "attn_fq_a8_head"): (600_000, 600_000, "simulated"),
                ("relu", "none"): (600_500, 600_500, "float32"), ("relu", "int8_weight"): (200_300, 200_300, "real")}
    # points with a size but no cost row are kept (their latency empty); a point with neither is not
    assert points[["bytes_stored", "bytes_packed", "storage"]].apply(tuple, axis=1).to_dict() == expected
    # a simulated width's time and state are float kernels plus rounding: left out even with a cost row
    for cost in ("latency_ms", "state_floats"):
        assert points[cost].notna().to_dict() == {key: key[0] == "softmax" and key[1] in ("none", "int8_weight")
                                                 for key in expected}
    assert points.bytes_source.to_dict() == {key: "bytes_float of a sibling job" if key == ("relu", "none")
                                             else "quant.json" for key in expected}
    # equal errors on softmax: the smallest stored model alone is on the size front; relu's are worse and larger;
    # the simulated width, though most accurate, is no deployable model: on no front
    assert points.error.idxmin() == ("softmax", "attn_fq_a8_head")
    assert points.index[points.front_bytes_stored].tolist() == [("softmax", "int8_weight")]

    results = load_results([root], cfg_columns="varying")
    fig = plot_error_vs_cost(error_vs_cost(results, load_costs([root]), job_sizes(results)))
    latency_panel, size_panel = fig.axes[0], fig.axes[2]
    assert not [t for t in latency_panel.texts if "attn_fq" in t.get_text()]
    # the simulated width: drawn at the float size with its own marker; unlabelled, as every quantised point off the
    # front (the colour says the mixer, the marker the mode)
    simulated = [line for line in size_panel.lines if line.get_marker() == STORAGE["simulated"][0]]
    assert [line.get_xdata().tolist() for line in simulated] == [[600_000]]
    labels = {t.get_text() for t in size_panel.texts}
    assert "int8_weight *" in labels and not [t for t in labels if "attn_fq" in t]
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"softmax", "relu"}  # colour = mixer
    assert not [line for line in latency_panel.lines if list(line.get_ydata()) == [1.0, 1.0]]  # errors far below 1
    packed = [line for line in size_panel.lines if line.get_gid() == "packed"]
    assert [line.get_xdata().tolist() for line in packed] == [[120_000]]  # only where bytes_packed < bytes
    legend = [t.get_text() for t in size_panel.get_legend().get_texts()]
    assert legend == [text for _, text in STORAGE.values()] + ["Pareto front"]
    assert "size as stored" in size_panel.get_xlabel()
    # the latency panel's legend names the quant modes it draws (each its own marker), not the simulated one
    assert [t.get_text() for t in latency_panel.get_legend().get_texts()] == ["none", "int8_weight", "Pareto front"]
    plt.close(fig)


@pytest.mark.parametrize(("mode", "storage"), [({"name": "none"}, "float32"), ({"name": "int8_weight"}, "real"),
                                               ({"name": "intx_weight", "bits": 4}, "unpacked"),
                                               ({"name": "intx_weight", "bits": 8}, "real"),
                                               ({"name": "attn_fq", "bits": 4}, "simulated")])
def test_storage_of_a_real_quant_json(mode, storage):
    from icl.quantize import QuantSpec, quantize_with_proof
    from tests.test_quantize import prompts, tiny_model

    _, report = quantize_with_proof(tiny_model(), QuantSpec.from_config(mode), *prompts())
    assert stored_as(report) == storage
    if storage == "float32":
        assert report["bytes"] == report["bytes_packed"] == report["bytes_float"]
    if storage == "simulated":  # the float weights, and the wrappers' metadata: drawn at the float size
        assert 0 <= report["bytes"] - report["bytes_float"] < 1e-3 * report["bytes_float"]


def test_a_quant_label_takes_its_modes_style():
    from icl.analysis.styles import quant_style

    assert quant_style("intx_weight_w4_pc") == quant_style("intx_weight_w2_g32") == quant_style("intx_weight")
    styles = [quant_style(q) for q in ("none", "int8_dynamic", "int8_fbgemm", "intx_weight", "attn_fq_a8_head")]
    assert len({marker for _, marker in styles}) == len(styles)  # each drawn with its own marker


def test_the_docs_int8_speed_ranges_are_the_committed_cost_rows():
    """docs/mixers.md's ranges (ratio of the medians to each mixer's float time, same process) and its counts of the
    mixers where int8_fbgemm is the fastest quantised mode and beats float come from the committed
    docs/mixers/inference_cost.csv."""
    from tests.helpers import REPO

    cost = pd.read_csv(REPO / "docs" / "mixers" / "inference_cost.csv")
    ratio = cost.pivot_table(index="attn", columns="quant", values="latency_ms").pipe(lambda t: t.div(t["none"], axis=0))
    text = " ".join((REPO / "docs" / "mixers.md").read_text().split())
    n, fastest = len(ratio), (ratio.drop(columns="none").idxmin(axis=1) == "int8_fbgemm").sum()
    assert f"the fastest quantised mode for {fastest} of the {n} mixers" in text
    assert f"below the float time for {(ratio['int8_fbgemm'] < 1).sum()} of the {n}" in text
    for quant, words in (("int8_fbgemm", "{}–{}× the float time"), ("int8_dynamic", "costs {}–{}×"),
                         ("intx_weight_w4_pc", "int4 {}–{}×")):
        low, high = ratio[quant].min(), ratio[quant].max()
        assert words.format(f"{low:.2f}", f"{high:.2f}") in text, (quant, low, high)


def test_the_cost_chart_and_the_quant_table_read_quant_json_through_one_reader(tmp_path):
    from icl.quantize import QuantSpec, quantize_with_proof
    from tests.test_quantize import prompts, tiny_model

    root = tmp_path / "outputs"
    job = make_job(root / "w4", "linear", 3, quant="intx_weight_w4_g32")
    _, report = quantize_with_proof(tiny_model(), QuantSpec.from_config({"name": "intx_weight", "bits": 4}), *prompts())
    JobDir(job).write_quant({k: v for k, v in report.items() if k not in ("label", "bytes_packed", "storage")})  # older
    results = load_results([root], cfg_columns="varying")
    size, row = job_sizes(results).iloc[0], table([job]).iloc[0]
    assert read_quant(job)["stored_as"] == size.storage == "real"  # no bytes_packed written: nothing packed
    assert (size.bytes_stored, size.bytes_packed, size.bytes_float) == (row.bytes, row.bytes_packed, row.bytes_float)
    assert (row.quant, row.storage) == ("intx_weight", "")
    JobDir(job).write_quant({"quant": "intx_weight", "bytes_float": 100})  # no bytes: one line, from both readers
    for read in (lambda: table([job]), lambda: job_sizes(results)):
        with pytest.raises(ValueError, match=r"quant.json lacks \['bytes'\]: evaluate the job again"):
            read()
    JobDir(job).write_quant({**report, "quant": "int3_gone"})  # a mode renamed since: the file named, not a KeyError
    for read in (lambda: table([job]), lambda: job_sizes(results)):
        with pytest.raises(ValueError, match=r"w4.*quant.json: quant mode 'int3_gone' is not one of"):
            read()
