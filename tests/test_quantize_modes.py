"""The quant modes' facts (icl.quantize_modes): torch-free, the ones icl.quantize applies, and what the torch-free
readers (the study's fastest int8 backend, the cost chart's marker, the quant sweep's int8 probes) decide from."""

import subprocess
import sys

import pandas as pd
import pytest

from icl.quantize_modes import KINDS, MODES, is_int8_backend
from tests.helpers import REPO


def test_the_facts_import_without_torch_and_are_the_modes_quantize_applies():
    code = "import sys, icl.quantize_modes; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    import icl.quantize

    assert icl.quantize.MODES is MODES
    assert {MODES[name].kind for name in MODES} <= set(KINDS)
    assert set(icl.quantize.FAKE_QUANT) == {name for name in MODES if MODES[name].kind == "simulated"}


@pytest.mark.parametrize("name", ["none", "int8_weight", "int8_dynamic", "int8_fbgemm", "bf16", "intx_weight",
                                  "attn_fq"])
def test_a_modes_facts_are_what_its_quant_json_reports(name):
    from icl.quantize import QuantSpec, quantize_with_proof
    from tests.test_quantize import prompts, tiny_model

    mode = MODES[name]
    _, report = quantize_with_proof(tiny_model(), QuantSpec.from_config({"name": name}), *prompts())
    bits = mode.bits or report["params"]["bits"]
    stored = {"float": {32: "float32", 16: "bfloat16"}.get(bits), "int8": "int8", "intN": f"int{bits}",
              "simulated": "float32"}[mode.kind]
    assert report["quantized_dtype"] == stored
    assert (report["quantized_linears"] > 0) == (mode.stage != "none" and mode.kind != "simulated")


def test_readers_decide_from_the_facts_not_the_name():
    from icl.analysis.quant import stored_as
    from icl.bench.quant_sweep import INT8_BACKENDS
    from icl.lab.study.timing import fastest_int8

    assert [n for n in MODES if is_int8_backend(n)] == list(INT8_BACKENDS) == ["int8_weight", "int8_dynamic",
                                                                               "int8_fbgemm"]
    assert not is_int8_backend("qat_int8") and not is_int8_backend("int8_made_up")
    # a simulated width whose report names no stored dtype: the mode says how it is stored
    assert stored_as({"quant": "attn_fq", "bytes": 100, "bytes_float": 100}) == "simulated"
    assert stored_as({"quant": "bf16", "bytes": 50, "bytes_float": 100, "quantized_dtype": "float32"}) == "real"
    bench = pd.DataFrame([{"part": "latency", "device": "cpu", "model": "tiny", "batch": 1, "threads": 1,
                           "attn": "softmax", "quant": q, "k": 10, "ratio": r, "ratio_ci_low": r - 0.1,
                           "ratio_ci_high": r + 0.1} for q, r in (("int8_made_up", 0.2), ("qat_int8", 0.3),
                                                                  ("int8_fbgemm", 0.5), ("int8_weight", 0.9))])
    best = fastest_int8(bench).iloc[0]
    assert (best.quant, best.runner_up) == ("int8_fbgemm", "int8_weight")
