"""Training diagnostics that say why an attention variant stalls, logged every N steps into metrics.csv.

``AttentionDiagnostics`` (a Lightning callback, ``callbacks.diagnostics``) hooks the model on one training step in
``every_n_steps`` only (hooks are installed at that batch's start and removed at its end: every other step runs the
plain model) and writes, per layer ``l``:

- ``diag/attn_ratio/l<l>``: ‖attention branch output‖ / ‖residual stream it is added to‖ (Frobenius norms over the
  batch, at the positions the block returns). ≪ 1 means the attention path contributes nothing yet (a saddle);
- ``diag/score_std/l<l>``: standard deviation of the pre-kernel scores s·q_i·k_j over causal pairs j ≤ i (how far
  from uniform/zero the kernel's input is; measured at init: docs/variants.md);
- ``diag/frac_positive/l<l>`` (relu, relu_causal): fraction of causal scores > 0, i.e. pairs that pass the ReLU;
- ``diag/mean_weight/l<l>`` (sigmoid): mean attention weight sigmoid(s·q·k + b) over causal pairs;

and ``diag/grad_norm``: the global gradient 2-norm before clipping (``on_before_optimizer_step``: Lightning calls
it after backward and before ``trainer.gradient_clip_val`` is applied). Values go straight to the trainer's loggers
at that step, so they do not depend on ``trainer.log_every_n_steps``. Nothing here changes the computation or draws
random numbers, so a run with diagnostics trains the same weights as one without.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from icl.attention import CausalReLUAttention, ReLUAttention, SigmoidAttention
from icl.tables import markdown_table

PREFIX = "diag/"


def causal_scores(q: Tensor, k: Tensor) -> Tensor:
    """s·q_i·k_j for the causal pairs j ≤ i, flattened: (B, nh, T, hs) × 2 → (B·nh·T(T+1)/2,)."""
    T = q.shape[-2]
    logits = (q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5
    return logits[..., torch.ones(T, T, dtype=torch.bool, device=q.device).tril()].flatten()


def kernel_stats(kernel: torch.nn.Module, q: Tensor, k: Tensor) -> dict[str, float]:
    """The score statistics of one kernel call (the module doc's list)."""
    s = causal_scores(q, k)
    out = {"score_std": float(s.std())}
    if isinstance(kernel, (ReLUAttention, CausalReLUAttention)):
        out["frac_positive"] = float((s > 0).float().mean())
    if isinstance(kernel, SigmoidAttention):
        b = -math.log(q.shape[-2]) if kernel.bias is None else kernel.bias
        out["mean_weight"] = float(torch.sigmoid(s + b).mean())
    return out


def branch_ratio(residual: Tensor, branch: Tensor) -> float:
    """‖branch‖ / ‖residual‖ at the positions the branch is added to (the last block keeps the x positions)."""
    if residual.shape[1] != branch.shape[1]:
        residual = residual[:, ::2]
    return float(branch.float().norm() / residual.float().norm().clamp_min(1e-12))


def grad_norm(module: torch.nn.Module) -> float:
    """Global 2-norm of every parameter gradient (parameters without one are skipped)."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


class AttentionDiagnostics(L.Callback):
    """Every ``every_n_steps`` optimiser steps, log the attention diagnostics of that step (module doc)."""

    def __init__(self, every_n_steps: int = 100) -> None:
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"callbacks.diagnostics.every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.handles: list[RemovableHandle] = []
        self.values: dict[str, float] = {}
        self.step: int | None = None

    def _due(self, step: int) -> bool:
        return step % self.every_n_steps == 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self._due(trainer.global_step):
            return
        self.step, self.values = trainer.global_step, {}
        for layer, block in enumerate(getattr(pl_module.model, "blocks", [])):
            self.handles += self._hook_block(layer, block)

    def _hook_block(self, layer: int, block: torch.nn.Module) -> list[RemovableHandle]:
        residual: dict[str, Tensor] = {}

        def keep_residual(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            residual["x"] = args[0].detach()

        def ratio(_module: torch.nn.Module, _args: tuple[Any, ...], out: Tensor) -> None:
            self.values[f"attn_ratio/l{layer}"] = branch_ratio(residual["x"], out.detach())

        def scores(kernel: torch.nn.Module, args: tuple[Any, ...]) -> None:
            q, k = args[0].detach(), args[1].detach()
            self.values.update({f"{name}/l{layer}": v for name, v in kernel_stats(kernel, q, k).items()})

        handles = [block.register_forward_pre_hook(keep_residual),
                   block.drop.register_forward_hook(ratio)]  # the mixer branch, as it is added (after LayerScale)
        kernel = getattr(block.attn, "kernel", None)  # recurrent mixers (icl.mixers) have no (q, k) kernel
        return handles + ([kernel.register_forward_pre_hook(scores)] if kernel is not None else [])

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self.step is not None:
            self.values["grad_norm"] = grad_norm(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.step is None:
            return
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self._write(trainer, {PREFIX + k: v for k, v in self.values.items()}, self.step)
        self.step, self.values = None, {}

    @rank_zero_only
    def _write(self, trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)


def at_init(attn: str, qk_norm: bool = False, n_dims: int = 5, n_points: int = 11, n_prompts: int = 256,
            seed: int = 0) -> dict[str, float]:
    """The diagnostics of a freshly initialised tiny model on standard prompts (the state training starts from)."""
    from icl.transformer import ICLTransformer, TransformerConfig

    torch.manual_seed(seed)
    model = ICLTransformer(TransformerConfig(n_dims=n_dims, n_positions=n_points, attn=attn, qk_norm=qk_norm)).eval()
    diagnostics = AttentionDiagnostics()
    handles = [h for layer, block in enumerate(model.blocks) for h in diagnostics._hook_block(layer, block)]
    with torch.no_grad():
        model(torch.randn(n_prompts, n_points, n_dims), torch.randn(n_prompts, n_points))
    for handle in handles:
        handle.remove()
    return dict(diagnostics.values)


def main() -> None:
    """``python -m icl.diagnostics``: the table of ``at_init`` for every variant, qk_norm off and on (layer 0)."""
    import pandas as pd

    from icl.attention import ATTENTION

    torch.set_num_threads(1)
    rows = [{"attn": name, "qk_norm": qk, **at_init(name, qk)} for name in sorted(ATTENTION) for qk in (False, True)]
    columns = ["attn", "qk_norm", "score_std/l0", "attn_ratio/l0", "frac_positive/l0", "mean_weight/l0"]
    table = pd.DataFrame(rows).reindex(columns=columns)
    print(markdown_table(columns, ([f"{v:.4f}".replace("nan", "—") if isinstance(v, float) else v for v in row]
                                   for row in table.itertuples(index=False))))


if __name__ == "__main__":
    main()
