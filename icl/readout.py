"""Per-layer read-out: where in depth does the prediction form?

Each block's residual stream at the x positions is passed through the model's final LayerNorm and read-out, as if
the model stopped there (layer 0: the read-in plus positions; layer L: the model's output). A layer's raw read-out
need not be on the output's scale, so an affine recalibration ŷ = a·r + c per (layer, k) is fitted by least squares
on validation prompts and applied to the test prompts (Grazzi et al. 2024 decode each layer the same way).
Rows (``icl.agreement.COLUMNS``): metric ``readout_error`` (recalibrated) and ``readout_error_raw``, learner
``transformer``, one per layer and k, normalised like eval.csv's error; and ``readout_gd_diff``, learner ``gd_<l>``:
the squared difference between layer l's recalibrated read-out and l steps of GD (``icl.learners.gd_weights``),
normalised the same way — does each layer add one step of gradient descent?
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from icl import learners
from icl.prompts import Prompts
from icl.stats import bootstrap_ratio
from icl.transformer import ICLTransformer


@torch.inference_mode()
def layer_readouts(model: ICLTransformer, xs: Tensor, ys: Tensor) -> Tensor:
    """(L + 1, B, n): the read-out of the residual stream at every x position after the read-in and each block."""
    if not isinstance(model, ICLTransformer):
        raise ValueError(f"per-layer read-out needs an ICLTransformer, got {type(model).__name__}")
    device = next(model.parameters()).device
    model.eval()
    xs, ys = xs.to(device), ys.to(device)
    h = model.embed(xs, ys)
    states = [h]
    for block in model.blocks:
        h = block(h)
        states.append(h)
    return torch.stack([model.read_out(model.ln_f(s[:, ::2]))[..., 0].float().cpu() for s in states])


def recalibrate(val_readout: Tensor, val_targets: Tensor, readout: Tensor) -> Tensor:
    """Apply a·r + c fitted per (layer, k) by least squares on validation read-outs (L, P, n) to ``readout``."""
    r, t = val_readout.double(), val_targets.double().unsqueeze(0)
    r_mean, t_mean = r.mean(1, keepdim=True), t.mean(1, keepdim=True)
    var = (r - r_mean).pow(2).mean(1, keepdim=True)
    slope = torch.where(var > 0, ((r - r_mean) * (t - t_mean)).mean(1, keepdim=True) / var.clamp(min=1e-300), 0.0)
    return (slope * (readout.double() - r_mean) + t_mean).float()


def _batched(model: ICLTransformer, p: Prompts, batch_size: int = 512) -> Tensor:
    return torch.cat([layer_readouts(model, x, y) for x, y in zip(p.xs.split(batch_size), p.ys.split(batch_size))], 1)


def readout_frame(model: ICLTransformer, test: Prompts, val: Prompts, boot: int, ci: float, seed: int) -> pd.DataFrame:
    """readout_error (recalibrated on ``val``) and readout_error_raw per layer and k on ``test``."""
    raw, val_raw = _batched(model, test), _batched(model, val)
    calibrated = recalibrate(val_raw, val.targets, raw)
    zero = test.targets.double().pow(2).numpy()
    frames = []
    x64, y64 = test.xs.double(), test.ys.double()
    for layer in range(raw.shape[0]):
        compared = [("readout_error", calibrated[layer], test.targets, "transformer"),
                    ("readout_error_raw", raw[layer], test.targets, "transformer")]
        if layer >= 1:  # layer l against l steps of GD (Grazzi et al. 2024 compare each layer with a GD iterate)
            gd = (learners.gd_weights(x64, y64, layer) * x64).sum(-1)
            compared.append(("readout_gd_diff", calibrated[layer], gd, f"gd_{layer}"))
        for metric, preds, reference, learner in compared:
            err = (preds.double() - reference.double()).pow(2).numpy()
            point, low, high, _, count = bootstrap_ratio(err, zero, boot, ci, seed)
            frames.append(pd.DataFrame({"k": np.arange(err.shape[1]), "value": point, "ci_low": low, "ci_high": high,
                                        "n_prompts": count, "metric": metric, "learner": learner, "layer": layer}))
    return pd.concat(frames, ignore_index=True)
