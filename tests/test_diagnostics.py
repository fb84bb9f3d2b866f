"""Attention diagnostics: the statistics themselves, and that a short run writes them into metrics.csv."""

import math

import pandas as pd
import pytest
import torch

from icl.attention import build_attention
from icl.diagnostics import AttentionDiagnostics, branch_ratio, causal_scores, kernel_stats
from icl.run.loggers import load_metrics
from icl.run.train import train
from tests.helpers import compose_train


def test_causal_scores_are_the_lower_triangle():
    q, k = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    s = causal_scores(q, k)
    assert s.numel() == 2 * 3 * 15
    full = q @ k.transpose(-2, -1) / 2.0
    torch.testing.assert_close(s.max(), full[..., torch.ones(5, 5, dtype=torch.bool).tril()].max())


def test_kernel_stats_per_variant():
    q = torch.ones(1, 1, 4, 4)
    k = torch.cat([torch.ones(1, 1, 2, 4), -torch.ones(1, 1, 2, 4)], dim=2)  # scores +2 for keys 0,1; -2 for 2,3
    relu = kernel_stats(build_attention("relu", head_dim=4), q, k)
    assert relu["frac_positive"] == pytest.approx(7 / 10)  # causal pairs: 10, of which keys 0-1: 1+2+2+2
    sigmoid = kernel_stats(build_attention("sigmoid", head_dim=4, bias=0.0), q, k)
    expected = (7 * torch.sigmoid(torch.tensor(2.0)) + 3 * torch.sigmoid(torch.tensor(-2.0))) / 10
    assert sigmoid["mean_weight"] == pytest.approx(float(expected))
    assert set(kernel_stats(build_attention("softmax", head_dim=4), q, k)) == {"score_std"}


def test_branch_ratio_uses_the_positions_the_branch_is_added_to():
    residual = torch.ones(1, 4, 3)
    residual[:, 1::2] = 100.0  # y positions: not what the last block's branch is added to
    assert branch_ratio(residual, torch.ones(1, 2, 3)) == pytest.approx(1.0)
    assert branch_ratio(residual, 0.5 * torch.ones(1, 4, 3)) < 0.01


def test_every_n_steps_must_be_positive():
    with pytest.raises(ValueError, match="every_n_steps must be an integer >= 1"):
        AttentionDiagnostics(0)


@pytest.mark.parametrize("attn,kernel_column", [("relu", "frac_positive"), ("sigmoid", "mean_weight")])
def test_a_short_run_writes_diagnostics_into_metrics_csv(attn, kernel_column, tmp_path, tiny_overrides):
    cfg = compose_train([*tiny_overrides, f"attn={attn}", "model.n_layer=2", "trainer.max_steps=12",
                         "callbacks.diagnostics.every_n_steps=5", "trainer.gradient_clip_val=1.0"], tmp_path)
    train(cfg)
    df = load_metrics(tmp_path / "metrics.csv")
    columns = [f"diag/{name}/l{layer}" for layer in (0, 1) for name in ("attn_ratio", "score_std", kernel_column)]
    rows = df.dropna(subset=["diag/grad_norm"])
    assert sorted(rows.step) == [0, 5, 10]
    assert rows[columns].notna().all().all()
    assert (rows["diag/grad_norm"] > 0).all() and (rows[[c for c in columns if "attn_ratio" in c]] > 0).all().all()
    frac = rows[[c for c in columns if kernel_column in c]]
    assert ((frac > 0) & (frac < 1)).all().all()
    assert "train/loss_rel_zero" in df and math.isfinite(df["train/loss_rel_zero"].dropna().iloc[-1])


def test_diagnostics_do_not_change_training(tmp_path, tiny_overrides):
    """Hooks only read: the same job with and without them ends with the same loss."""
    base = [*tiny_overrides, "attn=relu_causal", "trainer.max_steps=8", "model.qk_norm=true"]
    with_diag = train(compose_train([*base, "callbacks.diagnostics.every_n_steps=2"], tmp_path / "on"))
    without = train(compose_train([*base, "~callbacks.diagnostics"], tmp_path / "off"))
    assert with_diag["train/loss"] == without["train/loss"]
    assert "diag/grad_norm" not in pd.read_csv(tmp_path / "off" / "metrics.csv")


def test_at_init_relu_attention_starts_near_zero_and_qk_norm_lifts_it():
    """The saddle issue 14 suspected: with the 0.02 init ReLU(·)/L adds ~1% of what softmax adds to the residual."""
    from icl.diagnostics import at_init

    softmax, relu, relu_qk = (at_init(a, qk, n_prompts=32)["attn_ratio/l0"]
                              for a, qk in (("softmax", False), ("relu", False), ("relu", True)))
    assert relu < 0.05 * softmax and relu_qk > 10 * relu
