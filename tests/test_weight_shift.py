"""icl.weight_shift: the softmax linearisation bound, the fitted one-step-GD predictor, the rows algorithms.csv gets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from icl import learners, weight_shift
from icl.prompts import make_prompts
from icl.tasks import build_task
from icl.transformer import ICLTransformer, TransformerConfig
from tests.test_gd_construction import ETA, D, N, gd_model


def _naive(scores: torch.Tensor, values: torch.Tensor, t: int) -> tuple[float, float, float]:
    """One query t of one head by the definitions: softmax output vs (1 + u_j)/T, and the bound."""
    s, v = scores[: t + 1].double(), values[: t + 1].double()
    u = s - s.mean()
    a = u.abs().max()
    lin = (1 + u) / (t + 1)
    gap = (torch.softmax(s, 0) @ v - lin @ v).norm()
    radius = (v - v.mean(0)).norm(dim=-1).max()
    return float(gap), float((2 + a) * (math.exp(a) - 1 - a) * radius), float(a)


def test_linearisation_matches_the_definition_at_every_query() -> None:
    torch.manual_seed(0)
    scores, values = torch.randn(2, 3, 7, 7) * 2, torch.randn(2, 3, 7, 4)
    out = weight_shift.softmax_linearisation(scores, values)
    for b, h, t in [(0, 0, 0), (0, 2, 3), (1, 1, 6)]:
        gap, bound, spread = _naive(scores[b, h, t], values[b, h], t)
        assert out.gap[b, h, t].item() == pytest.approx(gap, rel=1e-9, abs=1e-12)
        assert out.bound[b, h, t].item() == pytest.approx(bound, rel=1e-9, abs=1e-12)
        assert out.spread[b, h, t].item() == pytest.approx(spread, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("scale", [0.01, 0.3, 1.0, 3.0, 10.0])
def test_the_bound_holds_at_every_scale(scale: float) -> None:
    torch.manual_seed(1)
    scores, values = torch.randn(64, 2, 11, 11) * scale, torch.randn(64, 2, 11, 8)
    out = weight_shift.softmax_linearisation(scores, values)
    assert (out.gap <= out.bound * (1 + 1e-9) + 1e-15).all()
    assert out.bound[..., 1:].gt(0).all()  # not vacuous by being 0 where there is a gap


def test_the_gap_shrinks_quadratically_with_the_score_scale_and_the_gd_term_linearly() -> None:
    torch.manual_seed(2)
    scores, values = torch.randn(32, 1, 9, 9), torch.randn(32, 1, 9, 4)
    small, half = (weight_shift.softmax_linearisation(scores * beta, values) for beta in (1e-2, 5e-3))
    gap_ratio = (half.gap.sum() / small.gap.sum()).item()
    term_ratio = (half.linear_term.sum() / small.linear_term.sum()).item()
    assert gap_ratio == pytest.approx(0.25, rel=0.02) and term_ratio == pytest.approx(0.5, rel=1e-9)


def test_the_captured_heads_are_the_kernels_own() -> None:
    """softmax_heads reads q, k, v where the kernel gets them: its p @ v is the kernel's output."""
    torch.manual_seed(3)
    model = ICLTransformer(TransformerConfig(n_dims=3, n_positions=6, n_embd=16, n_layer=2, n_head=2, mlp=False,
                                             qk_norm=True)).eval()
    xs, ys = torch.randn(4, 6, 3), torch.randn(4, 6)
    seen = []
    hook = model.blocks[1].attn.kernel.register_forward_hook(lambda _m, args, out: seen.append((args, out)))
    heads = weight_shift.softmax_heads(model, xs, ys)
    hook.remove()
    (q, k, v), out = seen[0]
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    torch.testing.assert_close(weight_shift.softmax_linearisation(scores, v).gap[..., ::2], heads[1].gap)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, full if out.shape == full.shape else full[:, :, ::2])  # the last block: x queries
    assert len(heads) == 2
    linear = ICLTransformer(TransformerConfig(n_dims=3, n_positions=6, n_embd=16, n_layer=2, n_head=2, attn="linear"))
    assert weight_shift.softmax_heads(linear, xs, ys) == []


def test_the_fitted_step_of_the_gd_construction_is_its_step() -> None:
    """The hand-set one-step-GD model: fitted η̂ = η at every k ≥ 1, no gap; its direction is learners' η Xᵀy."""
    task = build_task("linear", D)
    p = make_prompts("standard", task, 64, N, seed=0)
    direction = weight_shift.one_step_direction(p.xs, p.ys)
    weights = learners.one_step_gd_weights(p.xs.double(), p.ys.double(), 1.0)
    torch.testing.assert_close(direction, (weights * p.xs.double()).sum(-1))
    with torch.no_grad():
        preds = gd_model()(p.xs, p.ys)
    eta, gap = weight_shift.fit_step(preds, direction, p.targets)
    assert eta[1:] == pytest.approx(ETA, rel=1e-5) and (gap[1:] < 1e-10).all()
    eta_noisy, gap_noisy = weight_shift.fit_step(preds + 0.1 * torch.randn_like(preds), direction, p.targets)
    assert (gap_noisy[1:] > 1e-4).all()


def test_weight_shift_rows() -> None:
    torch.manual_seed(4)
    model = ICLTransformer(TransformerConfig(n_dims=3, n_positions=6, n_embd=16, n_layer=2, n_head=2, mlp=False)).eval()
    xs, ys = torch.randn(16, 6, 3), torch.randn(16, 6)
    with torch.no_grad():
        df = weight_shift.weight_shift_frame(model, xs, ys, model(xs, ys))
    assert set(df.metric) == set(weight_shift.METRICS)
    assert set(df.dropna(subset=["layer"]).layer) == {1, 2} and len(df[df.metric == "step_fit"]) == 6
    assert (df[df.metric == "linearisation_violations"].value == 0).all()
