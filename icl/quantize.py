"""Quantisation modes (``quant=NAME``) through torchao, and the proof that a model really is quantised.

Modes (README "Quantization" has the table): ``none``; post-training ``int8_weight`` (Int8WeightOnlyConfig),
``int8_dynamic`` (Int8DynamicActivationInt8WeightConfig), ``bf16`` (a dtype cast) and ``int4_weight``
(Int4WeightOnlyConfig, CUDA only); and ``qat_int8``: torchao's QATConfig fake-quantises during training
(``prepare_qat``, called by ICLModule so a reload or resume rebuilds it) and converts to real int8 afterwards.

Only linear layers are quantised; ``quant.layers`` picks which of ``read_in``, ``attn`` (qkv and output
projections), ``mlp`` and ``read_out``. The default ``[attn, mlp]`` holds > 98 % of the linear weights; the
read-in (d → width) and read-out (width → 1) are tiny, the read-out writes the prediction itself, and a
read-in of width d (5, 20) fits no int4 group.

``icl.run.evaluate.quantize_job`` applies a job's mode to its trained model and writes ``quant.json``: serialised bytes
(``torch.save`` of the state dict, tensor subclasses included) of the whole model and of the quantised
layers' weights, float vs quantised; how many linear layers store weights in the quantised dtype; and the
relative output difference against the float model on a fixed batch of evaluation prompts.
"""

from __future__ import annotations

import copy
import io
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from icl.errors import first_line
from icl.registry import Registry
from icl.transformer import predict_model

log = logging.getLogger(__name__)

LAYER_GROUPS: dict[str, str] = {  # layer group -> module names it covers (regex, full match)
    "read_in": r"read_in",
    "attn": r"blocks\.\d+\.attn\.(qkv|proj|in_proj)",  # in_proj: the recurrent mixers (icl.mixers)
    "mlp": r"blocks\.\d+\.mlp\.net\.\d+",
    "read_out": r"read_out",
}
DEFAULT_LAYERS = ("attn", "mlp")
PROOF_PROMPTS = 256  # the fixed batch (the first evaluation prompts) for the output difference


@dataclass(frozen=True)
class Mode:
    stage: str  # none | post (applied to the trained model) | qat (acts during training)
    dtype: str  # how a quantised layer stores its weights
    cuda_only: bool = False


MODES: Registry[Mode] = Registry("quant mode", "quant")
MODES.add("none", Mode("none", "float32"))
MODES.add("int8_weight", Mode("post", "int8"))
MODES.add("int8_dynamic", Mode("post", "int8"))
MODES.add("qat_int8", Mode("qat", "int8"))
MODES.add("bf16", Mode("post", "bfloat16"))
MODES.add("int4_weight", Mode("post", "int4", cuda_only=True))


@dataclass(frozen=True)
class QuantSpec:
    """A ``configs/quant/*.yaml`` node, checked."""

    name: str = "none"
    layers: tuple[str, ...] = DEFAULT_LAYERS
    params: dict[str, Any] = field(default_factory=dict)  # the mode's own settings (int4: group_size)

    @classmethod
    def from_config(cls, node: dict[str, Any] | None) -> "QuantSpec":
        node = dict(node or {})
        name = node.pop("name", "none")
        MODES.check(name)
        layers = tuple(node.pop("layers", DEFAULT_LAYERS) or ())
        unknown = sorted(set(layers) - set(LAYER_GROUPS))
        if unknown:
            raise ValueError(f"unknown quant.layers {unknown}; choose from {list(LAYER_GROUPS)}")
        if name != "none" and not layers:
            raise ValueError(f"quant={name} with quant.layers=[] quantises nothing: list layers or use quant=none")
        allowed = {"int4_weight": {"group_size", "packing"}}.get(name, set())
        extra = sorted(set(node) - allowed)
        if extra:
            known = sorted(allowed | {"name", "layers"})
            raise ValueError(f"unknown quant option(s) {extra} for quant={name}; known: {known}")
        return cls(name, layers, node)

    @property
    def mode(self) -> Mode:
        return MODES[self.name]

    def selects(self, module: nn.Module, name: str) -> bool:
        """torchao ``filter_fn``: a linear layer in one of the chosen groups."""
        return isinstance(module, nn.Linear) and any(re.fullmatch(LAYER_GROUPS[g], name) for g in self.layers)


def training_part(quant: "QuantSpec | dict[str, Any] | None") -> dict[str, Any] | None:
    """What of the quant config changes training (for the trained-model fingerprint): QAT only."""
    spec = quant if isinstance(quant, QuantSpec) else QuantSpec.from_config(quant)
    return {"name": spec.name, "layers": list(spec.layers), **spec.params} if spec.mode.stage == "qat" else None


@contextmanager
def quiet() -> Iterator[None]:
    """torchao's (lazy) imports warn about CUDA extensions a CPU build cannot load and about torch.compile
    registrations: noise in a job's log, so silenced while torchao works."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def torchao() -> Any:
    """The torchao package, imported quietly."""
    try:
        with quiet():
            import torchao as ao
            import torchao.quantization.qat
    except ImportError as err:
        raise ImportError(f"quant modes need torchao>=0.18 ({err}): pip install -e . (or pip install torchao)") from None
    return ao


def _qat_base() -> Any:
    """The PTQ config QAT imitates while training and applies at conversion:
    int8 per-channel weights, int8 per-token (asymmetric) activations."""
    q = torchao().quantization
    return q.Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=q.PerAxis(0))


def prepare_qat(model: nn.Module, spec: QuantSpec) -> None:
    """Swap the chosen linears for torchao's fake-quantised ones, in place (before the optimiser is built)."""
    q = torchao().quantization
    with quiet():
        q.quantize_(model, q.qat.QATConfig(_qat_base(), step="prepare"), filter_fn=spec.selects)


def _cast_in(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    dtype = torch.bfloat16
    return tuple(a.to(dtype) if torch.is_floating_point(a) else a for a in args)


def _cast_out(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
    return out.float()


def _to_bf16(model: nn.Module, spec: QuantSpec) -> None:
    """bfloat16 weights and matmuls in the chosen linears; float32 in and out, so LayerNorms and the residual
    stream stay float32."""
    for name, module in model.named_modules():
        if spec.selects(module, name):
            module.to(torch.bfloat16)
            module.register_forward_pre_hook(_cast_in)
            module.register_forward_hook(_cast_out)


def _ptq_config(spec: QuantSpec) -> Any:
    q = torchao().quantization
    if spec.name == "int8_weight":
        return q.Int8WeightOnlyConfig()
    if spec.name == "int8_dynamic":
        return q.Int8DynamicActivationInt8WeightConfig()
    if spec.name == "int4_weight":
        return q.Int4WeightOnlyConfig(group_size=int(spec.params.get("group_size", 32)),
                                      int4_packing_format=spec.params.get("packing", "tile_packed_to_4d"))
    raise AssertionError(spec.name)


def is_fake_quantized(model: nn.Module) -> bool:
    return any(type(m).__name__.startswith("FakeQuantized") for m in model.modules())


def float_model(model: nn.Module) -> nn.Module:
    """The float model a quantised one is compared with: for QAT, the trained weights without fake quantisation."""
    if not is_fake_quantized(model):
        return model
    q = torchao().quantization
    plain = copy.deepcopy(model)
    with quiet():
        q.quantize_(plain, q.qat.QATConfig(step="convert"), filter_fn=None)
    return plain


def quantize(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """A quantised copy of a trained model (``model`` is left as it is); still called as ``model(xs, ys)``."""
    stage = spec.mode.stage
    if stage == "none":
        return model
    with quiet():
        return _quantized_copy(model, spec).eval()


def _quantized_copy(model: nn.Module, spec: QuantSpec) -> nn.Module:
    out = copy.deepcopy(model)
    if spec.mode.stage == "qat":
        if not is_fake_quantized(model):
            raise ValueError("quant=qat_int8 needs a model trained with fake quantisation (its checkpoint has none)")
        ao = torchao()
        ao.quantization.quantize_(out, ao.quantization.qat.QATConfig(_qat_base(), step="convert"), filter_fn=None)
    elif spec.name == "bf16":
        _to_bf16(out, spec)
    else:
        if spec.name == "int4_weight":  # tinygemm int4 works on bfloat16 weights and activations
            _to_bf16(out, spec)
        torchao().quantization.quantize_(out, _ptq_config(spec), filter_fn=spec.selects)
    return out


def storage_dtype(weight: Tensor) -> str:
    """How a weight is stored: a torchao tensor's integer payload (int8, int4), else its dtype."""
    q = torchao().quantization if "torchao" in sys.modules else None
    if q is not None and isinstance(weight, (q.Int4Tensor, q.Int4TilePackedTo4dTensor, q.Int4PlainInt32Tensor,
                                             q.Int4PreshuffledTensor)):
        return "int4"  # packed two to a byte (or eight to an int32)
    target = getattr(weight, "target_dtype", None)  # IntxUnpackedToInt8Tensor: int1..int8 held in int8
    qdata = getattr(weight, "qdata", None)
    dtype = target if isinstance(target, torch.dtype) else qdata.dtype if qdata is not None else weight.dtype
    return str(dtype).removeprefix("torch.")


def serialized_bytes(tensors: dict[str, Any]) -> int:
    """Bytes of ``torch.save(tensors)``: the size on disk, tensor subclasses (data + scales) included."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.tell()


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


@torch.inference_mode()
def relative_difference(reference: nn.Module, other: nn.Module, xs: Tensor, ys: Tensor) -> Tensor:
    """Per prompt ‖other − reference‖ / ‖reference‖ over its predictions: (P,)."""
    ref = predict_model(reference, xs, ys, batch_size=256)
    out = predict_model(other, xs, ys, batch_size=256)
    return (out - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)


def _weight_bytes(state: dict[str, Any], layers: list[str]) -> int:
    return serialized_bytes({f"{n}.weight": state[f"{n}.weight"] for n in layers}) if layers else 0


def proof(reference: nn.Module, quantized: nn.Module, spec: QuantSpec, xs: Tensor, ys: Tensor) -> dict[str, Any]:
    """The evidence that ``quantized`` is quantised: sizes, stored dtypes and how far its outputs move."""
    chosen = [name for name, m in linears(reference).items() if spec.selects(m, name)] if spec.name != "none" else []
    q_linears = linears(quantized)
    stored = {name: storage_dtype(m.weight) for name, m in q_linears.items()}
    ref_state, q_state = reference.state_dict(), quantized.state_dict()
    diff = relative_difference(reference, quantized, xs, ys)
    return {
        "quant": spec.name, "stage": spec.mode.stage, "layers": list(spec.layers) if chosen else [],
        "quantized_dtype": spec.mode.dtype,
        "linear_layers": len(q_linears),
        "quantized_linears": sum(dtype == spec.mode.dtype for dtype in stored.values()) if chosen else 0,
        "weight_dtypes": stored,
        "bytes_float": serialized_bytes(ref_state),
        "bytes": serialized_bytes(q_state),
        "layer_bytes_float": _weight_bytes(ref_state, chosen),
        "layer_bytes": _weight_bytes(q_state, chosen),
        "proof_prompts": len(xs),
        "rel_diff_max": float(diff.max()),
        "rel_diff_mean": float(diff.mean()),
        "torchao": getattr(sys.modules.get("torchao"), "__version__", None),
    }


def summary(report: dict[str, Any]) -> str:
    """One log line from a ``quant.json`` report."""
    return (f"quant={report['quant']}: {report['quantized_linears']}/{report['linear_layers']} linear layers stored as "
            f"{report['quantized_dtype']}, {report['bytes']:,} bytes (float {report['bytes_float']:,}; quantised layers "
            f"{report['layer_bytes']:,} vs {report['layer_bytes_float']:,}), output vs float: relative difference "
            f"max {report['rel_diff_max']:.2e} mean {report['rel_diff_mean']:.2e}")


def check(spec: QuantSpec, model: nn.Module, on_gpu: bool) -> None:
    """Fail in one line, before training, when the mode cannot run here: apply it to the untrained model and run it."""
    if spec.name == "int4_weight":
        group = int(spec.params.get("group_size", 32))
        bad = {n: m.in_features for n, m in linears(model).items() if spec.selects(m, n) and m.in_features % group}
        if bad:  # torchao would silently leave these layers in float
            raise ValueError(f"quant.group_size={group} does not divide the input width of {sorted(bad)} "
                             f"({sorted(set(bad.values()))}): pick a group size that does, or drop them from "
                             "quant.layers")
    if spec.mode.cuda_only and not (on_gpu and torch.cuda.is_available()):
        raise ValueError(f"quant={spec.name} needs a CUDA GPU (torchao's int4 kernels are CUDA-only) and this job runs "
                         "on the CPU: use quant=int8_weight here, or trainer=gpu on a machine with a CUDA GPU")
    if spec.mode.stage == "none":
        return
    device = torch.device("cuda" if spec.mode.cuda_only else "cpu")
    try:
        trial = copy.deepcopy(model).to(device)
        if spec.mode.stage == "qat" and not is_fake_quantized(trial):
            prepare_qat(trial, spec)
        n_dims = trial.config.n_dims
        with torch.no_grad():  # quantize() returns an eval-mode model: no dropout, the global RNG is untouched
            quantize(trial, spec)(torch.zeros(1, 2, n_dims, device=device), torch.zeros(1, 2, device=device))
    except ImportError as err:
        raise ValueError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - any failure here is a setting that cannot work: one line
        raise ValueError(f"quant={spec.name} does not run on this model here ({first_line(err)}): "
                         "change quant.layers or the quant mode") from None
