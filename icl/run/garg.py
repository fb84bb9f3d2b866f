"""Garg et al. (2022)'s reference model, and a converter from their checkpoints to a job folder of ours.

Their ``TransformerModel`` (dtsip/in-context-learning, ``src/models.py``) is a read-in ``nn.Linear(d, C)``, a
Hugging Face ``GPT2Model`` backbone fed ``inputs_embeds`` (its own position embeddings, pre-LN blocks, GPT-2's
tanh GELU) and a read-out ``nn.Linear(C, 1)`` read at the x positions. ``GargTransformer`` rebuilds it with
``transformers`` (an optional extra, imported only here) for the equivalence test and the benchmark;
``convert`` maps its state dict onto ``ICLTransformer`` (GPT-2's ``Conv1D`` stores weights as (in, out): transposed).

    python -m icl.run.garg checkpoint=state.pt out_dir=outputs/garg_linear task=linear model=standard
    python -m icl.evaluate run_dir=outputs/garg_linear            # any eval setting, and quant=… at conversion

The converted job folder (``.hydra/config.yaml``, ``config.yaml``, ``checkpoints/last.ckpt``, ``status.json``) is
one that ``icl.run.train`` could have written; every other argument is a ``train`` config override (``quant=…``,
``eval=…``, ``task.n_dims=…``), and ``model.n_positions``/``model.activation`` come from the checkpoint.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from icl.errors import first_line
from icl.files import atomic_write
from icl.transformer import ICLTransformer, TransformerConfig

# Our parameter name -> theirs, per block (GPT-2 Conv1D weights are (in, out): transposed on conversion).
BLOCK_KEYS = {
    "ln_1.weight": "ln_1.weight", "ln_1.bias": "ln_1.bias",
    "attn.qkv.weight": "attn.c_attn.weight", "attn.qkv.bias": "attn.c_attn.bias",
    "attn.proj.weight": "attn.c_proj.weight", "attn.proj.bias": "attn.c_proj.bias",
    "ln_2.weight": "ln_2.weight", "ln_2.bias": "ln_2.bias",
    "mlp.net.0.weight": "mlp.c_fc.weight", "mlp.net.0.bias": "mlp.c_fc.bias",
    "mlp.net.2.weight": "mlp.c_proj.weight", "mlp.net.2.bias": "mlp.c_proj.bias",
}
TRANSPOSED = {"attn.qkv.weight", "attn.proj.weight", "mlp.net.0.weight", "mlp.net.2.weight"}
TOP_KEYS = {"read_in.weight": "_read_in.weight", "read_in.bias": "_read_in.bias",
            "wpe.weight": "_backbone.wpe.weight", "ln_f.weight": "_backbone.ln_f.weight",
            "ln_f.bias": "_backbone.ln_f.bias", "read_out.weight": "_read_out.weight",
            "read_out.bias": "_read_out.bias"}
# Theirs, unused by a model fed inputs_embeds: the token embedding and old transformers' causal-mask buffers.
IGNORED = re.compile(r"_backbone\.(wte\.weight|h\.\d+\.attn\.(bias|masked_bias))")


class GargTransformer(nn.Module):
    """Garg et al.'s ``TransformerModel``, as in their code (dropout 0, no KV cache)."""

    def __init__(self, n_dims: int, n_positions: int, n_embd: int, n_layer: int, n_head: int) -> None:
        super().__init__()
        try:
            from transformers import GPT2Config, GPT2Model
        except ImportError:
            raise ImportError("the Garg et al. reference needs transformers: pip install -e '.[bench]'") from None
        config = GPT2Config(n_positions=2 * n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
        self.n_positions = n_positions
        self._read_in = nn.Linear(n_dims, n_embd)
        self._backbone = GPT2Model(config)
        self._read_out = nn.Linear(n_embd, 1)

    @staticmethod
    def _combine(xs: Tensor, ys: Tensor) -> Tensor:
        """Their interleaving: x1, (y1, 0, …), x2, … as (B, 2n, d)."""
        B, n, d = xs.shape
        ys_wide = torch.cat((ys.view(B, n, 1), torch.zeros(B, n, d - 1, device=ys.device, dtype=xs.dtype)), dim=2)
        return torch.stack((xs, ys_wide), dim=2).view(B, 2 * n, d)

    def forward(self, xs: Tensor, ys: Tensor) -> Tensor:
        embeds = self._read_in(self._combine(xs, ys))
        h = self._backbone(inputs_embeds=embeds).last_hidden_state
        return self._read_out(h)[:, ::2, 0]  # predictions at the x positions: (B, n)


def model_state(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The model's state dict from their ``state.pt`` (``model_state_dict``), a ``model_state`` entry, or a plain
    state dict (their ``model_<step>.pt``); a DataParallel ``module.`` prefix is dropped."""
    for key in ("model_state_dict", "model_state", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {k.removeprefix("module."): v for k, v in checkpoint.items() if isinstance(v, Tensor)}


def sizes(state: dict[str, Tensor]) -> dict[str, int]:
    """n_dims, n_positions, n_embd and n_layer read off the weights (the head count is not in them)."""
    if "_read_in.weight" not in state or "_backbone.wpe.weight" not in state:
        raise ValueError("not a Garg et al. TransformerModel state dict: no _read_in.weight / _backbone.wpe.weight "
                         f"(found keys like {sorted(state)[:3]})")
    n_embd, n_dims = state["_read_in.weight"].shape
    layers = {int(m.group(1)) for k in state if (m := re.fullmatch(r"_backbone\.h\.(\d+)\.ln_1\.weight", k))}
    return {"n_dims": int(n_dims), "n_positions": int(state["_backbone.wpe.weight"].shape[0]) // 2,
            "n_embd": int(n_embd), "n_layer": len(layers)}


def convert_state(state: dict[str, Tensor], n_layer: int) -> dict[str, Tensor]:
    """Their state dict → ours (``ICLTransformer`` parameter names); unmatched keys are one error line."""
    mapping = dict(TOP_KEYS)
    for i in range(n_layer):
        mapping.update({f"blocks.{i}.{ours}": f"_backbone.h.{i}.{theirs}" for ours, theirs in BLOCK_KEYS.items()})
    missing = sorted(theirs for theirs in mapping.values() if theirs not in state)
    unmatched = sorted(k for k in state if k not in set(mapping.values()) and not IGNORED.fullmatch(k))
    if missing or unmatched:
        raise ValueError(f"checkpoint does not match Garg et al.'s TransformerModel: missing {missing[:5]}"
                         f"{' …' if len(missing) > 5 else ''}, unmatched {unmatched[:5]}"
                         f"{' …' if len(unmatched) > 5 else ''} (is it their model's state dict?)")
    out = {}
    for ours, theirs in mapping.items():
        t = state[theirs].float()
        out[ours] = t.t().contiguous() if ours.split(".", 2)[-1] in TRANSPOSED else t
    return out


def convert(state: dict[str, Tensor], n_head: int) -> ICLTransformer:
    """Our model with their weights, computing the same function (GPT-2's tanh GELU)."""
    size = sizes(state)
    model = ICLTransformer(TransformerConfig(n_head=n_head, activation="gelu_tanh", **size))
    model.load_state_dict(convert_state(state, size["n_layer"]))
    return model.eval()


def check_sizes(size: dict[str, int], model: dict[str, Any], n_dims: int) -> None:
    """The config must describe the checkpoint: one line naming what to change otherwise."""
    if (size["n_embd"], size["n_layer"]) != (model["n_embd"], model["n_layer"]):
        raise ValueError(f"the checkpoint is {size['n_embd']} wide with {size['n_layer']} layers but "
                         f"model={model.get('name')} is {model['n_embd']} wide with {model['n_layer']}: pass the "
                         "matching model= (standard = Garg et al.'s) or model.n_embd=/model.n_layer=")
    if size["n_dims"] != n_dims:
        raise ValueError(f"the checkpoint reads {size['n_dims']}-dim inputs but task.n_dims={n_dims}: "
                         f"pass task.n_dims={size['n_dims']}")


def write_job(checkpoint: Path, out_dir: Path, overrides: list[str]) -> Path:
    """Convert ``checkpoint`` into a finished job folder at ``out_dir``; returns its last.ckpt."""
    import lightning as L
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from icl.module import ICLModule
    from icl.run.configs import CONFIG_DIR
    from icl.run.job import JobDir
    from icl.run.spec import JobSpec

    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint={checkpoint} does not exist: pass the path of their state.pt")
    state = model_state(torch.load(checkpoint, map_location="cpu", weights_only=True))
    size = sizes(state)
    fixed = [f"model.n_positions={size['n_positions']}", "++model.activation=gelu_tanh", "paths.store=null",
             f"paths.output_dir={out_dir}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *fixed])
    check_sizes(size, OmegaConf.to_container(cfg.model, resolve=True), int(cfg.task.n_dims))
    spec = JobSpec.from_config(cfg)
    if spec.quant.mode.stage == "qat":
        raise ValueError("quant=qat_int8 needs a model trained with fake quantisation: convert with a "
                         "post-training mode (none, int8_weight, int8_dynamic, bf16, int4_weight)")
    module = ICLModule(**spec.module_hparams, built_task=spec.task.task)
    if module.model.config.attn != "softmax":
        raise ValueError(f"Garg et al.'s model uses softmax attention: drop attn={module.model.config.attn}")
    module.model.load_state_dict(convert_state(state, size["n_layer"]))
    job = JobDir(out_dir)
    with job.lock("Garg et al. import (icl.run.garg)"):  # never into a folder a job is working in
        job.write_config(cfg, hydra_copy=True)
        job.checkpoints.mkdir(exist_ok=True)
        atomic_write(job.last_ckpt, lambda tmp: torch.save(
            {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
             "pytorch-lightning_version": L.__version__, "global_step": 0, "epoch": 0}, tmp))
        job.write_status("done", metrics={"converted_from": str(checkpoint.resolve()), **size})
    return job.last_ckpt


def main(argv: list[str]) -> None:
    """``checkpoint=PATH out_dir=DIR [train config overrides]`` → a job folder; errors are one line."""
    args = dict(a.split("=", 1) for a in argv if a.split("=", 1)[0] in ("checkpoint", "out_dir"))
    overrides = [a for a in argv if a.split("=", 1)[0] not in ("checkpoint", "out_dir")]
    if "checkpoint" not in args or "out_dir" not in args:
        raise SystemExit("usage: python -m icl.run.garg checkpoint=<their state.pt> out_dir=<job folder> "
                         "[task=linear task.n_dims=20 model=standard quant=… …]")
    try:
        ckpt = write_job(Path(args["checkpoint"]), Path(args["out_dir"]), overrides)
    except (ValueError, FileNotFoundError, ImportError) as err:
        raise SystemExit(f"error: {err}") from None
    except Exception as err:  # noqa: BLE001 - Hydra override errors (unknown group option, bad key): one line
        raise SystemExit(f"error: {first_line(err)}") from None
    print(f"wrote {ckpt}; evaluate with: python -m icl.evaluate run_dir={args['out_dir']}")


def cli() -> None:
    """Console script ``icl-garg`` (and ``python -m icl.run.garg``)."""
    from icl.run.configs import check_yaml

    check_yaml()
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()
