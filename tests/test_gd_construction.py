"""A two-layer attention-only model with weights set to one step of gradient descent (von Oswald et al. 2023).

x_j and y_j are separate tokens here, so a first layer copies x_j into the y_j token (queries and keys are the
positional one-hot codes: y token 2j+1 attends to token 2j only) and the second computes Σ_j (x_query·x_j) y_j,
scaled by η, into a channel the read-out reads. The kernel is plain linear attention (Σ_{s≤t} (q_t·k_s) v_s, no
feature map, no normalisation), defined here: the registered `linear` kernel (φ = elu + 1, normalised) cannot
express the bilinear score. The model predicts η Xᵀy · x_query exactly, and the agreement metrics recover it."""

from __future__ import annotations

import torch
from torch import nn

from icl import agreement, learners
from icl.prompts import make_prompts
from icl.tasks import build_task
from icl.transformer import ICLTransformer, TransformerConfig

D, N, ETA = 3, 7, 0.15


class PlainLinearAttention(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (q @ k.transpose(-2, -1)).tril() @ v  # (B, nh, T, hs)


def gd_model() -> ICLTransformer:
    """Channels: [0, D) token content, [D, 2D) copied x_j, 2D the prediction, then 2N positional one-hot codes."""
    pos0, width = 2 * D + 1, 2 * D + 1 + 2 * N
    model = ICLTransformer(TransformerConfig(n_dims=D, n_positions=N, n_embd=width, n_layer=2, n_head=1,
                                             mlp=False, layer_norm=False))
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.read_in.weight[:D, :D] = torch.eye(D)
        model.wpe.weight[:, pos0:] = torch.eye(2 * N)
        model.read_out.weight[0, 2 * D] = 1.0
        copy, step = (block.attn for block in model.blocks)
        for attn in (copy, step):
            attn.kernel = PlainLinearAttention()
            attn.proj.weight.copy_(torch.eye(width))
        wq, wk, wv = copy.qkv.weight.view(3, width, width)  # layer 1: y token 2j+1 reads token 2j
        for t in range(1, 2 * N, 2):
            wq[pos0 + t - 1, pos0 + t] = 1.0
        wk[pos0:, pos0:] = torch.eye(2 * N)
        wv[D : 2 * D, :D] = torch.eye(D)
        wq, wk, wv = step.qkv.weight.view(3, width, width)  # layer 2: η Σ_j (x_query·x_j) y_j
        wq[:D, :D] = torch.eye(D)
        wk[:D, D : 2 * D] = torch.eye(D)
        wv[2 * D, 0] = ETA
    return model.eval()


def test_the_construction_is_one_step_of_gradient_descent() -> None:
    task = build_task("linear", D)
    p = make_prompts("standard", task, 32, N, seed=0)
    model = gd_model()
    weights = learners.one_step_gd_weights(p.xs.double(), p.ys.double(), ETA)
    with torch.no_grad():
        torch.testing.assert_close(model(p.xs, p.ys).double(), (weights * p.xs.double()).sum(-1),
                                   rtol=1e-5, atol=1e-5)
    probes = agreement.probe_queries(32, N, D, 8, seed=0)
    w_hat, r2 = agreement.implicit_weights(model, p.xs, p.ys, probes)
    torch.testing.assert_close(w_hat[:, 1:], weights[:, 1:], rtol=1e-4, atol=1e-4)  # implicit weights = η Xᵀy
    assert (r2[:, 1:] > 1 - 1e-8).all()
    torch.testing.assert_close(agreement.input_sensitivity_fd(model, p.xs, p.ys).double()[:, 1:], weights[:, 1:],
                               rtol=1e-4, atol=1e-4)
    k = torch.arange(N, dtype=torch.float64).clamp(min=1)  # with η = 1/k it would be the averaging baseline
    torch.testing.assert_close(learners.averaging_weights(p.xs.double(), p.ys.double()),
                               weights / ETA / k[:, None])
