"""Quantisation through torchao, checked on the real model: int8 weights really are int8, sizes shrink, outputs
move a little; QAT trains through fake quantisation and converts to int8; bad settings fail before training."""

import copy
import io
import json
import re

import pandas as pd
import pytest
import torch
from torch import nn

from icl.module import ICLModule
from icl.quantize import (
    LAYER_GROUPS,
    QuantSpec,
    check,
    float_model,
    linears,
    prepare_qat,
    quantize,
    quantize_with_proof,
    serialized_bytes,
    storage_dtype,
    torchao,
)
from icl.run.spec import JobSpec, validate
from icl.run.train import build, train
from icl.transformer import ICLTransformer, TransformerConfig
from tests.helpers import CrashAt, compose_train

N_DIMS, N_POINTS = 5, 11


def tiny_model(seed: int = 0) -> ICLTransformer:
    torch.manual_seed(seed)
    model = ICLTransformer(TransformerConfig(n_dims=N_DIMS, n_positions=N_POINTS, n_embd=64, n_layer=2, n_head=2))
    for p in model.parameters():  # wider than the N(0, 0.02) init, like trained weights, so outputs are not ~0
        p.data.normal_(0, 0.2)
    return model.eval()


def prompts(n: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, N_POINTS, N_DIMS, generator=gen)
    return xs, xs @ torch.randn(N_DIMS, generator=gen)


def chosen(model: nn.Module, spec: QuantSpec) -> dict[str, nn.Linear]:
    return {name: m for name, m in linears(model).items() if spec.selects(m, name)}


def test_layer_groups_cover_every_linear_exactly_once():
    spec = QuantSpec("int8_weight", tuple(LAYER_GROUPS))
    model = tiny_model()
    for name, module in linears(model).items():
        groups = [g for g in LAYER_GROUPS if QuantSpec("int8_weight", (g,)).selects(module, name)]
        assert len(groups) == 1, (name, groups)
    assert len(chosen(model, spec)) == len(linears(model)) == 2 + 4 * model.config.n_layer


@pytest.mark.parametrize("name", ["int8_weight", "int8_dynamic"])
def test_int8_modes_store_int8_weights_and_stay_close(name):
    model = tiny_model()
    float_state = copy.deepcopy(model.state_dict())
    spec = QuantSpec.from_config({"name": name})
    xs, ys = prompts()
    q, report = quantize_with_proof(model, spec, xs, ys)
    assert isinstance(q, ICLTransformer)  # still a plain module called as model(xs, ys): timeable like float
    picked = chosen(q, spec)
    assert sorted(picked) == sorted(n for n in linears(q) if n.startswith("blocks."))
    for layer in picked.values():
        assert layer.weight.qdata.dtype == torch.int8 and storage_dtype(layer.weight) == "int8"
        assert layer.weight.qdata.shape == layer.weight.shape
    for plain in (q.read_in, q.read_out):  # not in the default layers
        assert type(plain.weight) is nn.Parameter and plain.weight.dtype == torch.float32
    for key, value in model.state_dict().items():  # the float model is left as it was
        assert type(value) is torch.Tensor and torch.equal(value, float_state[key])

    assert report["quantized_linears"] == len(picked) == 8 and report["linear_layers"] == 10
    assert 3.3 < report["layer_bytes_float"] / report["layer_bytes"] < 4.0  # int8 + per-channel scales
    assert report["bytes"] < 0.5 * report["bytes_float"]
    assert 1e-4 < report["rel_diff_mean"] <= report["rel_diff_max"] < 0.05
    with torch.inference_mode():
        diff = (q(xs, ys) - model(xs, ys)).abs()
    assert diff.max() > 0 and torch.isfinite(diff).all()


def test_quantized_state_dict_saves_and_reloads():
    """torch.save of a quantised state dict (torchao tensor subclasses) loads into a freshly quantised model."""
    spec = QuantSpec.from_config({"name": "int8_dynamic"})
    q = quantize(tiny_model(), spec)
    buffer = io.BytesIO()
    torch.save(q.state_dict(), buffer)
    buffer.seek(0)
    fresh = quantize(tiny_model(seed=7), spec)
    fresh.load_state_dict(torch.load(buffer, weights_only=False), assign=True)
    xs, ys = prompts()
    with torch.inference_mode():
        torch.testing.assert_close(fresh(xs, ys), q(xs, ys), rtol=0, atol=0)


def test_layers_setting_picks_what_is_quantised():
    everything = QuantSpec.from_config({"name": "int8_weight", "layers": ["read_in", "attn", "mlp", "read_out"]})
    q = quantize(tiny_model(), everything)
    assert all(storage_dtype(m.weight) == "int8" for m in linears(q).values())
    mlp_only = quantize(tiny_model(), QuantSpec.from_config({"name": "int8_weight", "layers": ["mlp"]}))
    dtypes = {n: storage_dtype(m.weight) for n, m in linears(mlp_only).items()}
    assert {n for n, d in dtypes.items() if d == "int8"} == {f"blocks.{i}.mlp.net.{j}" for i in (0, 1) for j in (0, 2)}


def test_bf16_halves_the_chosen_layers():
    model, spec = tiny_model(), QuantSpec.from_config({"name": "bf16"})
    xs, ys = prompts()
    q, report = quantize_with_proof(model, spec, xs, ys)
    assert {storage_dtype(m.weight) for m in chosen(q, spec).values()} == {"bfloat16"}
    assert 1.8 < report["layer_bytes_float"] / report["layer_bytes"] < 2.1
    assert 1e-4 < report["rel_diff_mean"] < 0.05
    assert q(xs, ys).dtype == torch.float32


def test_serialized_bytes_is_the_file_size(tmp_path):
    state = quantize(tiny_model(), QuantSpec.from_config({"name": "int8_weight"})).state_dict()
    torch.save(state, tmp_path / "archive.pt")  # torch names the zip records after the file: same name, same bytes
    assert serialized_bytes(state) == (tmp_path / "archive.pt").stat().st_size


class FakeQuantWatch:
    """Counts forward calls of torchao's fake quantisers."""

    def __init__(self):
        self.calls = 0

    def attach(self, module: ICLModule) -> None:
        for m in module.model.modules():
            if type(m).__name__ == "FakeQuantizedLinear":
                for fq in (m.activation_fake_quantizer, m.weight_fake_quantizer):
                    fq.register_forward_hook(self._count)

    def _count(self, *args) -> None:
        self.calls += 1


def test_qat_trains_through_fake_quantisation_and_converts_to_int8():
    spec = QuantSpec.from_config({"name": "qat_int8"})
    task = {"name": "linear", "n_dims": N_DIMS, "params": {}}
    module = ICLModule(task=task, model={"n_positions": N_POINTS, "n_layer": 2}, quant={"name": "qat_int8"})
    fq_layers = [m for m in module.model.modules() if type(m).__name__ == "FakeQuantizedLinear"]
    assert len(fq_layers) == 8  # attn + mlp of 2 blocks; read-in/out stay nn.Linear
    watch = FakeQuantWatch()
    watch.attach(module)

    # the parameters an optimiser built from the module gets are the fake-quantised layers' weights
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(layer.weight) in owned for layer in fq_layers)

    xs, ys = prompts(32)
    loss = module.task.loss(module(xs, ys), ys)
    assert watch.calls == 2 * len(fq_layers)  # activations and weights of every layer, in the loss's forward
    loss.backward()
    assert all(layer.weight.grad.abs().sum() > 0 for layer in fq_layers)  # straight-through gradients
    # switching the fake quantisers off changes the loss: it really is computed through them
    for layer in fq_layers:
        layer.activation_fake_quantizer.enabled = layer.weight_fake_quantizer.enabled = False
    with torch.no_grad():
        assert module.task.loss(module(xs, ys), ys) != loss.detach()
    for layer in fq_layers:
        layer.activation_fake_quantizer.enabled = layer.weight_fake_quantizer.enabled = True
    for _ in range(3):
        optimizer.zero_grad()
        module.task.loss(module(xs, ys), ys).backward()
        optimizer.step()

    converted = quantize(module.model, spec)
    assert not any(type(m).__name__.startswith("FakeQuantized") for m in converted.modules())
    weights = [m.weight for n, m in linears(converted).items() if spec.selects(m, n)]
    assert len(weights) == 8 and all(w.qdata.dtype == torch.int8 and storage_dtype(w) == "int8" for w in weights)
    with torch.inference_mode():
        trained, real = module.model(xs, ys), converted(xs, ys)
        plain = float_model(module.model)(xs, ys)
    torch.testing.assert_close(real, trained, rtol=1e-4, atol=1e-5)  # int8 computes what QAT simulated
    assert (real - plain).abs().max() > 0  # and differs from the same weights in float


def test_qat_job_checkpoint_reloads_fake_quantised_and_reports_int8(tmp_path, tiny_overrides):
    """Through the real pipeline: the saved module rebuilds its fake quantisers, quant.json shows int8 layers."""
    cfg = compose_train([*tiny_overrides, "quant=qat_int8", "trainer.max_steps=6"], tmp_path)
    train(cfg)
    module = ICLModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert sum(type(m).__name__ == "FakeQuantizedLinear" for m in module.model.modules()) == 4
    report = json.loads((tmp_path / "quant.json").read_text())
    assert report["quantized_linears"] == 4 and report["quantized_dtype"] == "int8"
    assert set(pd.read_csv(tmp_path / "eval.csv").quant) == {"qat_int8"}


def test_qat_resume_continues_exactly(tmp_path, tiny_overrides):
    """A crashed QAT run resumes into the fake-quantised model and ends where an uninterrupted one does."""
    qat = [*tiny_overrides, "quant=qat_int8", "trainer.max_steps=12", "callbacks.model_checkpoint.every_n_train_steps=4"]
    train(compose_train(qat, tmp_path / "straight"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_train(qat, tmp_path / "split"), callbacks=[CrashAt(10)])
    train(compose_train(qat, tmp_path / "split"))  # resumes from last.ckpt (step 8)
    a, b = (torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False) for run in ("straight", "split"))
    assert b["global_step"] == 12 and a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_int4_on_cpu_fails_before_training_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="quant=int4_weight needs a CUDA GPU") as err:
        build(compose_train(["quant=int4_weight", "quant.group_size=16"], tmp_path))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "checkpoints").exists()
    # the refusal names the CPU way to int4 weights, with the job's group size; those overrides run here
    suggested = re.search(r"on the CPU use (quant=intx_weight .*?), or trainer=gpu", str(err.value)).group(1).split()
    assert suggested == ["quant=intx_weight", "quant.bits=4", "quant.group_size=16"]
    spec = JobSpec.from_config(compose_train(suggested, tmp_path / "cpu"))
    assert (spec.quant.name, spec.quant.bits, spec.quant.params["group_size"]) == ("intx_weight", 4, 16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_int4_refusal_suggests_the_same_layers_and_blocks_on_the_cpu(tmp_path):
    # int4_weight.yaml has no blocks key (+); intx_weight.yaml has one, so the suggestion sets it plainly
    given = ["quant=int4_weight", "quant.group_size=16", "quant.layers=[mlp,read_out]", "+quant.blocks=[0]"]
    with pytest.raises(ValueError, match="quant=int4_weight needs a CUDA GPU") as err:
        JobSpec.from_config(compose_train(given, tmp_path))
    suggested = re.search(r"on the CPU use (quant=intx_weight .*?), or trainer=gpu", str(err.value)).group(1).split()
    assert suggested == ["quant=intx_weight", "quant.bits=4", "quant.group_size=16", "quant.layers=[mlp,read_out]",
                         "quant.blocks=[0]"]
    spec = JobSpec.from_config(compose_train(suggested, tmp_path / "cpu")).quant
    assert (spec.name, spec.bits, spec.layers, spec.blocks) == ("intx_weight", 4, ("mlp", "read_out"), (0,))


@pytest.mark.parametrize("override, message", [
    ("quant.layers=[attn,ffn]", r"unknown quant.layers \['ffn'\]"),
    ("quant.layers=[]", "quantises nothing"),
    ("quant.name=int3", "unknown quant mode 'int3'"),
    ("+quant.group_size=32", r"unknown quant option\(s\) \['group_size'\] for quant=int8_weight"),
])
def test_bad_quant_settings_are_one_line(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        build(compose_train(["quant=int8_weight", override], tmp_path))


def test_int4_group_that_does_not_divide_a_layer_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"quant.group_size=48 does not divide the input width of \['blocks.0.attn.proj'"):
        build(compose_train(["quant=int4_weight", "quant.group_size=48"], tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_the_parse_tries_the_mode_here_without_moving_the_seeded_rng(tmp_path):
    """JobSpec.from_config applies the mode to an untrained model (its weights drawn aside from the job's RNG);
    validate() checks the config alone, so a mode this machine cannot run is still a valid config."""
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert JobSpec.from_config(compose_train(["quant=int8_weight"], tmp_path)).quant.name == "int8_weight"
    assert torch.equal(torch.get_rng_state(), before)
    int4 = compose_train(["quant=int4_weight"], tmp_path)
    assert validate(int4).quant.name == "int4_weight"
    with pytest.raises(ValueError, match="quant=int4_weight needs a CUDA GPU"):
        JobSpec.from_config(int4)


def test_check_runs_the_mode_on_the_untrained_model():
    """The job spec's parse calls this: a mode that cannot run on the model fails there, as one line."""
    model = tiny_model()
    for name in ("int8_weight", "int8_dynamic", "bf16"):
        check(QuantSpec.from_config({"name": name}), model, on_gpu=False)
    qat = copy.deepcopy(model)
    prepare_qat(qat, QuantSpec.from_config({"name": "qat_int8"}))
    check(QuantSpec.from_config({"name": "qat_int8"}), qat, on_gpu=False)
    broken = copy.deepcopy(model)
    broken.blocks[0].mlp.net[0] = nn.Linear(64, 256, dtype=torch.float64)  # int8 kernels refuse float64 inputs
    with pytest.raises(ValueError, match=r"quant=int8_dynamic does not run on this model here \(") as err:
        check(QuantSpec.from_config({"name": "int8_dynamic"}), broken, on_gpu=False)
    assert "\n" not in str(err.value)


def test_torchao_is_the_installed_library():
    assert torchao().__version__ >= "0.18"


@pytest.mark.slow
def test_cli_sweep_over_post_training_modes_trains_once(tmp_path):
    """`python -m icl.train -m quant=none,int8_weight,int8_dynamic`: one training, three evaluated jobs."""
    from tests.helpers import FAST, jobs, run

    run(["-m", "icl.train", "-m", "quant=none,int8_weight,int8_dynamic", *FAST], tmp_path)
    found = jobs(tmp_path / "multirun")
    assert len(found) == 3
    trained = [j for j in found if (j / "checkpoints" / "last.ckpt").is_file()]
    assert len(trained) == 1 and (trained[0] / "metrics.csv").is_file()
    statuses = [json.loads((j / "status.json").read_text()) for j in found]
    assert {s["metrics"]["trained_by"] for s in statuses} == {str(trained[0])}
    assert sum(s["metrics"]["train_seconds"] > 0 for s in statuses) == 1
    quants = {pd.read_csv(j / "eval.csv").quant.unique().item(): json.loads((j / "quant.json").read_text())
              for j in found}
    assert set(quants) == {"none", "int8_weight", "int8_dynamic"}
    assert quants["none"]["quantized_linears"] == 0 and quants["int8_dynamic"]["quantized_linears"] == 4
    # a later invocation with the same training config reuses the model too
    run(["-m", "icl.train", *FAST, "quant=bf16", "hydra.run.dir=later"], tmp_path)
    later = json.loads((tmp_path / "later" / "status.json").read_text())["metrics"]
    assert later["trained_by"] == str(trained[0]) and later["train_seconds"] == 0


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cli_int4_on_cpu_is_one_line(tmp_path):
    from tests.helpers import TINY, run

    proc = run(["-m", "icl.train", *TINY, "quant=int4_weight"], tmp_path, check=False)
    assert proc.returncode == 1 and "quant=int4_weight needs a CUDA GPU" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.glob("**/checkpoints"))
