"""Quantisation modes (``quant=NAME``) through torchao, and the proof that a model really is quantised.

Modes (docs/quantization.md has the table): ``none``; post-training ``int8_weight`` (Int8WeightOnlyConfig),
``int8_dynamic`` (Int8DynamicActivationInt8WeightConfig), ``bf16`` (a dtype cast), ``int4_weight``
(Int4WeightOnlyConfig, CUDA only), ``intx_weight`` (IntxWeightOnlyConfig: ``bits`` 2..8, ``group_size`` or per
channel), ``int8_fbgemm`` (PyTorch's x86/FBGEMM dynamic int8, ``torch.ao.quantization.quantize_dynamic``: the int8
kernels that are faster than float on a CPU) and ``attn_fq`` (fake quantisation of q, k, v, the attention weights
and the kernel output, ``icl.fakequant``), ``state_fq`` (fake quantisation of a linear-cost mixer's feature maps and
recurrent state, ``icl.statequant``); and ``qat_int8`` / ``qat_intx``: torchao's QATConfig fake-quantises during training
(``prepare_qat``, called by ICLModule so a reload or resume rebuilds it) and converts to real integers afterwards.
``quant.blocks`` limits any mode to some blocks (per-layer sensitivity, ``icl.bench.quant_sweep``).

Only linear layers are quantised; ``quant.layers`` picks which of ``read_in``, ``attn`` (qkv and output
projections), ``mlp`` and ``read_out``. The default ``[attn, mlp]`` holds > 98 % of the linear weights; the
read-in (d → width) and read-out (width → 1) are tiny, the read-out writes the prediction itself, and a
read-in of width d (5, 20) fits no int4 group.

``quantize_with_proof`` applies a mode to a trained model and returns, with the quantised copy, the report that
``icl.run.evaluate.quantize_job`` writes to ``quant.json``: serialised bytes
(``torch.save`` of the state dict, tensor subclasses included) of the whole model and of the quantised
layers' weights, float vs quantised; how many linear layers store weights in the quantised dtype; and the
relative output difference against the float model on a fixed batch of evaluation prompts.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from icl.errors import first_line
from icl.fakequant import GRANULARITIES, TENSORS, wrap_kernels
from icl.quantize_modes import MODES as MODES  # the modes' facts, torch-free; re-exported: callers read them here
from icl.quantize_modes import Mode as Mode
from icl.statequant import STATE_TENSORS, wrap_mixers
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
WEIGHT_BITS = range(2, 9)  # intx widths: int1 has no symmetric range
ATTN_BITS = range(2, 33)
DEFAULTS: dict[str, dict[str, Any]] = {  # a mode's settings when its config leaves them out
    "int4_weight": {"group_size": 32, "packing": "tile_packed_to_4d"},
    "intx_weight": {"bits": 4, "group_size": None},
    "qat_intx": {"bits": 4, "group_size": 32},
    "attn_fq": {"bits": 8, "granularity": "head", "tensors": list(TENSORS)},
    "state_fq": {"bits": 8, "tensors": list(STATE_TENSORS)},
}
FAKE_QUANT = {"attn_fq": TENSORS, "state_fq": STATE_TENSORS}  # simulated modes -> the tensors they may round


def _check_params(name: str, params: dict[str, Any]) -> None:
    """One ValueError line for a width or granularity that cannot exist."""
    bits = params.get("bits")
    widths = ATTN_BITS if name in FAKE_QUANT else WEIGHT_BITS
    if "bits" in params and (not isinstance(bits, int) or isinstance(bits, bool) or bits not in widths):
        raise ValueError(f"quant.bits={bits!r} is impossible for quant={name}: use an integer in "
                         f"{widths.start}..{widths.stop - 1}")
    group = params.get("group_size")
    if group is not None and (not isinstance(group, int) or isinstance(group, bool) or group < 1):
        raise ValueError(f"quant.group_size={group!r} must be a positive integer (or null: one scale per channel)")
    if name == "attn_fq":
        if params.get("granularity") not in GRANULARITIES:
            raise ValueError(f"quant.granularity={params.get('granularity')!r} is unknown; choose from "
                             f"{list(GRANULARITIES)}")
    if name in FAKE_QUANT:
        bad = sorted(set(params.get("tensors") or ()) - set(FAKE_QUANT[name]))
        if bad or not params.get("tensors"):
            raise ValueError(f"quant.tensors={params.get('tensors')!r}: list some of {list(FAKE_QUANT[name])}")


@dataclass(frozen=True)
class QuantSpec:
    """A ``configs/quant/*.yaml`` node, checked."""

    name: str = "none"
    layers: tuple[str, ...] = DEFAULT_LAYERS
    params: dict[str, Any] = field(default_factory=dict)  # the mode's own settings (int4: group_size)
    blocks: tuple[int, ...] | None = None  # only these blocks (None: all)

    @classmethod
    def from_config(cls, node: dict[str, Any] | None) -> "QuantSpec":
        node = dict(node or {})
        name = node.pop("name", "none")
        MODES.check(name)
        layers = tuple(node.pop("layers", DEFAULT_LAYERS) or ())
        unknown = sorted(set(layers) - set(LAYER_GROUPS))
        if unknown:
            raise ValueError(f"unknown quant.layers {unknown}; choose from {list(LAYER_GROUPS)}")
        if name != "none" and MODES[name].linears and not layers:
            raise ValueError(f"quant={name} with quant.layers=[] quantises nothing: list layers or use quant=none")
        blocks = node.pop("blocks", None)
        if blocks is not None:
            if not blocks or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks):
                raise ValueError(f"quant.blocks={blocks!r} must be a non-empty list of block indices (or null: all)")
            blocks = tuple(blocks)
        allowed = MODES[name].options
        extra = sorted(set(node) - allowed)
        if extra:
            known = sorted(allowed | {"name", "layers", "blocks"})
            raise ValueError(f"unknown quant option(s) {extra} for quant={name}; known: {known}")
        params = {**DEFAULTS.get(name, {}), **node}
        _check_params(name, params)
        return cls(name, layers, params, blocks)

    @property
    def mode(self) -> Mode:
        return MODES[self.name]

    @property
    def bits(self) -> int | None:
        return self.params.get("bits")

    @property
    def dtype(self) -> str:
        """How a quantised layer stores its values (intx modes: int<bits>)."""
        return f"int{self.bits}" if self.mode.dtype == "intx" else self.mode.dtype

    @property
    def label(self) -> str:
        """The mode with its width and grouping, e.g. ``intx_weight_w4_g32`` (the ``quant`` column of eval.csv)."""
        if self.name in ("intx_weight", "qat_intx"):
            group = self.params.get("group_size")
            tail = f"_w{self.bits}_{'g' + str(group) if group else 'pc'}"
        elif self.name == "attn_fq":
            tensors = list(self.params["tensors"])
            tail = f"_a{self.bits}_{self.params['granularity']}" + ("" if tensors == list(TENSORS) else
                                                                    "_" + "-".join(tensors))
        elif self.name == "state_fq":
            tensors = list(self.params["tensors"])
            tail = f"_s{self.bits}" + ("" if tensors == list(STATE_TENSORS) else "_" + "-".join(tensors))
        else:
            tail = ""
        return self.name + tail + ("_b" + "-".join(map(str, self.blocks)) if self.blocks is not None else "")

    @property
    def training_part(self) -> dict[str, Any] | None:
        """What of the spec changes training (ICLModule's ``quant`` and the trained-model fingerprint): QAT only."""
        if self.mode.stage != "qat":
            return None
        blocks = {} if self.blocks is None else {"blocks": list(self.blocks)}
        return {"name": self.name, "layers": list(self.layers), **self.params, **blocks}

    @property
    def storage(self) -> str:
        """Whether the mode's width is real storage or only simulated accuracy."""
        if self.name == "none":
            return "float32"
        if self.name == "attn_fq":
            return "simulated: fake-quantised attention internals, float32 storage"
        if self.name == "state_fq":
            return "simulated: fake-quantised feature maps and recurrent state, float32 storage"
        if self.mode.dtype == "intx" and self.bits != 8:
            return f"real int{self.bits} values held one per int8 byte (bytes); bytes_packed: {self.bits} bits each"
        return f"real: {self.dtype} storage"

    def selects(self, module: nn.Module, name: str) -> bool:
        """torchao ``filter_fn``: a linear layer in one of the chosen groups (and blocks)."""
        if not (self.mode.linears and isinstance(module, nn.Linear)):
            return False
        if self.blocks is not None and not any(name.startswith(f"blocks.{b}.") for b in self.blocks):
            return False
        return any(re.fullmatch(LAYER_GROUPS[g], name) for g in self.layers)


@contextmanager
def quiet() -> Iterator[None]:
    """torchao's (lazy) imports warn about CUDA extensions a CPU build cannot load and about torch.compile
    registrations: noise in a job's log, so silenced while torchao works."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # torch.ao.quantization (int8_fbgemm) warns that it is deprecated
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
            warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*deprecated")
            warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
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


def _intx_config(spec: QuantSpec) -> Any:
    """IntxWeightOnlyConfig at the spec's width: symmetric, one scale per group or per output channel."""
    q = torchao().quantization
    group = spec.params.get("group_size")
    return q.IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{spec.bits}"),
                                  granularity=q.PerGroup(group) if group else q.PerAxis(0))


def _qat_base(spec: QuantSpec) -> Any:
    """The PTQ config QAT imitates while training and applies at conversion: qat_int8: int8 per-channel weights,
    int8 per-token (asymmetric) activations; qat_intx: int<bits> weights (grouped), float activations."""
    q = torchao().quantization
    if spec.name == "qat_intx":
        return _intx_config(spec)
    return q.Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=q.PerAxis(0))


def prepare_qat(model: nn.Module, spec: QuantSpec) -> None:
    """Swap the chosen linears for torchao's fake-quantised ones, in place (before the optimiser is built)."""
    q = torchao().quantization
    with quiet():
        q.quantize_(model, q.qat.QATConfig(_qat_base(spec), step="prepare"), filter_fn=spec.selects)


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
    if spec.name == "intx_weight":
        return _intx_config(spec)
    raise AssertionError(spec.name)


def fbgemm_engine() -> str | None:
    """PyTorch's x86 quantized engine (FBGEMM, or "x86" which dispatches to it) if this build has one."""
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("x86", "fbgemm") if e in engines), None)


def _to_fbgemm(model: nn.Module, spec: QuantSpec) -> None:
    """Dynamic int8 (per-channel weights, activations per tensor at run time) via torch.ao's x86 engine, in place."""
    engine = fbgemm_engine()
    if engine is None:
        raise RuntimeError("this PyTorch build has no x86/FBGEMM quantized engine")
    torch.backends.quantized.engine = engine
    ao = torch.ao.quantization
    chosen = {name: ao.per_channel_dynamic_qconfig for name, m in model.named_modules() if spec.selects(m, name)}
    ao.quantize_dynamic(model, chosen, dtype=torch.qint8, inplace=True)


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
            raise ValueError(f"quant={spec.name} needs a model trained with fake quantisation (its checkpoint has none)")
        ao = torchao()
        ao.quantization.quantize_(out, ao.quantization.qat.QATConfig(_qat_base(spec), step="convert"), filter_fn=None)
    elif spec.name == "bf16":
        _to_bf16(out, spec)
    elif spec.name == "int8_fbgemm":
        _to_fbgemm(out, spec)
    elif spec.name == "attn_fq":
        p = spec.params
        wrap_kernels(out, p["bits"], p["granularity"], tuple(p["tensors"]), spec.blocks)
    elif spec.name == "state_fq":
        wrap_mixers(out, spec.params["bits"], tuple(spec.params["tensors"]), spec.blocks)
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


def is_fbgemm_linear(module: nn.Module) -> bool:
    """A torch.ao dynamic quantized linear (int8_fbgemm): its weight lives in FBGEMM's packed parameters."""
    dynamic = sys.modules.get("torch.ao.nn.quantized.dynamic")  # imported by quantize_dynamic, never before
    return dynamic is not None and isinstance(module, dynamic.Linear)


def linears(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) or is_fbgemm_linear(m)}


def layer_dtype(module: nn.Module) -> str:
    """How a linear layer stores its weight (an FBGEMM-packed layer: int8)."""
    return "int8" if is_fbgemm_linear(module) else storage_dtype(module.weight)


def packed_bytes(weight: Tensor) -> int | None:
    """Bytes a torchao int<b> weight held one value per int8 would take with b bits per value (values + scales,
    + zero points where any is non-zero); None for anything else."""
    target = getattr(weight, "target_dtype", None)
    qdata, scale = getattr(weight, "qdata", None), getattr(weight, "scale", None)
    if not isinstance(target, torch.dtype) or qdata is None or scale is None or target == torch.int8:
        return None
    bits = int(str(target).removeprefix("torch.int"))
    zero = getattr(weight, "zero_point", None)
    zero_bytes = zero.numel() * zero.element_size() if zero is not None and bool(zero.ne(0).any()) else 0
    return math.ceil(qdata.numel() * bits / 8) + scale.numel() * scale.element_size() + zero_bytes


@torch.inference_mode()
def relative_difference(reference: nn.Module, other: nn.Module, xs: Tensor, ys: Tensor) -> Tensor:
    """Per prompt ‖other − reference‖ / ‖reference‖ over its predictions: (P,)."""
    ref = predict_model(reference, xs, ys, batch_size=256)
    out = predict_model(other, xs, ys, batch_size=256)
    return (out - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)


def _layer_entries(state: dict[str, Any], name: str) -> dict[str, Any]:
    """A layer's weight; an FBGEMM layer's packed parameters (weight and bias together, as FBGEMM stores them)."""
    if f"{name}.weight" in state:
        return {f"{name}.weight": state[f"{name}.weight"]}
    return {k: v for k, v in state.items() if k.startswith(f"{name}.")}


def _weight_bytes(state: dict[str, Any], layers: list[str]) -> int:
    return serialized_bytes({k: v for n in layers for k, v in _layer_entries(state, n).items()}) if layers else 0


def _packed_layer_bytes(state: dict[str, Any], layers: list[str]) -> int:
    """The chosen layers' weights with sub-8-bit values packed (``packed_bytes``); as stored where already packed."""
    total, rest = 0, []
    for n in layers:
        size = packed_bytes(state.get(f"{n}.weight"))
        if size is None:
            rest.append(n)
        else:
            total += size
    return total + (_weight_bytes(state, rest) if rest else 0)


def quantize_with_proof(model: nn.Module, spec: QuantSpec, xs: Tensor,
                        ys: Tensor) -> tuple[nn.Module, dict[str, Any]]:
    """``quantize(model, spec)`` and the evidence that it is quantised (quant.json): sizes, stored dtypes and how far
    its outputs on ``xs, ys`` move from the float model's (for QAT, the trained weights without fake quantisation)."""
    reference, quantized = float_model(model), quantize(model, spec)
    chosen = [name for name, m in linears(reference).items() if spec.selects(m, name)] if spec.name != "none" else []
    q_linears = linears(quantized)
    stored = {name: layer_dtype(m) for name, m in q_linears.items()}
    ref_state, q_state = reference.state_dict(), quantized.state_dict()
    diff = relative_difference(reference, quantized, xs, ys)
    total, layer = serialized_bytes(q_state), _weight_bytes(q_state, chosen)
    layer_packed = _packed_layer_bytes(q_state, chosen)
    return quantized, {
        "quant": spec.name, "label": spec.label, "stage": spec.mode.stage,
        "layers": list(spec.layers) if chosen else [], "blocks": None if spec.blocks is None else list(spec.blocks),
        "params": spec.params, "quantized_dtype": spec.dtype, "storage": spec.storage,
        "linear_layers": len(q_linears),
        "quantized_linears": sum(dtype == spec.dtype for dtype in stored.values()) if chosen else 0,
        "weight_dtypes": stored,
        "attention_kernels_quantized": sum(type(m).__name__ == "QuantizedKernel" for m in quantized.modules()),
        "recurrent_mixers_quantized": sum(type(m).__name__ == "QuantizedMixer" for m in quantized.modules()),
        "bytes_float": serialized_bytes(ref_state),
        "bytes": total,
        "bytes_packed": total - layer + layer_packed,
        "layer_bytes_float": _weight_bytes(ref_state, chosen),
        "layer_bytes": layer,
        "layer_bytes_packed": layer_packed,
        "proof_prompts": len(xs),
        "rel_diff_max": float(diff.max()),
        "rel_diff_mean": float(diff.mean()),
        "torchao": getattr(sys.modules.get("torchao"), "__version__", None),
    }


def summary(report: dict[str, Any]) -> str:
    """One log line from a ``quant.json`` report."""
    return (f"quant={report.get('label', report['quant'])}: {report['quantized_linears']}/{report['linear_layers']} "
            f"linear layers stored as {report['quantized_dtype']}, {report['bytes']:,} bytes (float "
            f"{report['bytes_float']:,}; quantised layers {report['layer_bytes']:,} vs {report['layer_bytes_float']:,}; "
            f"packed {report.get('bytes_packed', report['bytes']):,}), attention kernels fake-quantised: "
            f"{report.get('attention_kernels_quantized', 0)}, output vs float: relative difference "
            f"max {report['rel_diff_max']:.2e} mean {report['rel_diff_mean']:.2e}")


def check_blocks(spec: QuantSpec, n_blocks: int) -> None:
    """``quant.blocks`` names blocks a model of ``n_blocks`` has."""
    if spec.blocks is not None and max(spec.blocks) >= n_blocks:
        raise ValueError(f"quant.blocks={list(spec.blocks)} names a block the model lacks (it has {n_blocks}: "
                         f"0..{n_blocks - 1})")


def check(spec: QuantSpec, model: nn.Module, on_gpu: bool, in_place: bool = False) -> None:
    """Fail in one line when the mode cannot run here: apply it to the untrained model and run it (the job spec's
    parse calls this, so a -m sweep is refused before its first job). ``in_place``: ``model`` is a throwaway
    stand-in, quantised without a copy."""
    group = spec.params.get("group_size")
    if group:
        bad = {n: m.in_features for n, m in linears(model).items() if spec.selects(m, n) and m.in_features % group}
        if bad:  # torchao would silently leave these layers in float
            raise ValueError(f"quant.group_size={group} does not divide the input width of {sorted(bad)} "
                             f"({sorted(set(bad.values()))}): pick a group size that does, or drop them from "
                             "quant.layers")
    check_blocks(spec, len(getattr(model, "blocks", ())))
    if spec.name == "int8_fbgemm" and fbgemm_engine() is None:
        raise ValueError(f"quant=int8_fbgemm needs PyTorch's x86/FBGEMM quantized engine, which this build lacks "
                         f"(engines: {torch.backends.quantized.supported_engines}): use quant=int8_dynamic")
    if spec.mode.cuda_only and not (on_gpu and torch.cuda.is_available()):
        cpu_way = " ".join(["quant=intx_weight", "quant.bits=4", *([f"quant.group_size={group}"] if group else []),
                            *([f"quant.layers=[{','.join(spec.layers)}]"] if spec.layers != DEFAULT_LAYERS else []),
                            *([f"quant.blocks=[{','.join(map(str, spec.blocks))}]"] if spec.blocks is not None else [])])
        raise ValueError(f"quant={spec.name} needs a CUDA GPU (torchao's int4 kernels are CUDA-only) and this job runs "
                         f"on the CPU: for int4 weights on the CPU use {cpu_way}, or trainer=gpu on a machine with a "
                         "CUDA GPU")
    if spec.mode.stage == "none":
        return
    device = torch.device("cuda" if spec.mode.cuda_only else "cpu")
    try:
        trial = (model if in_place else copy.deepcopy(model)).to(device)
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
