"""icl.prompts: every strategy's prompts have the property its name promises, on every task where defined."""

from __future__ import annotations

import pytest
import torch

from icl import prompts
from icl.tasks import EVAL_STREAM, TASKS, PromptSampler, build_task, seeded

P, N, D = 64, 12, 6


def make(name: str, param=None, task: str = "linear", n_dims: int = D, n_prompts: int = P, n_points: int = N):
    return prompts.make_prompts(name, build_task(task, n_dims), n_prompts, n_points, seed=3, param=param)


def test_standard_is_the_shared_eval_draw():
    """standard = the prompts every job was scored on before strategies existed (PromptSampler, eval stream)."""
    task = build_task("noisy_linear", D)
    xs, ys = PromptSampler(task).sample(P, N, D, seeded(EVAL_STREAM, 3, 0, 0))
    p = prompts.make_prompts("standard", task, P, N, 3)
    assert torch.equal(p.xs, xs) and torch.equal(p.ys, ys) and torch.equal(p.targets, ys) and p.queries is None


@pytest.mark.parametrize("c", [0.125, 1.0, 3.0])
def test_scale_x_scales_the_inputs_and_relabels(c):
    base, p = make("standard"), make("scale_x", c)
    torch.testing.assert_close(p.xs, c * base.xs)
    torch.testing.assert_close(p.ys, c * base.ys, rtol=1e-5, atol=1e-5)  # linear: f(c x) = c f(x), same functions


def test_scale_x_trees_see_the_same_signs():
    base, p = make("standard", task="decision_tree"), make("scale_x", 4.0, task="decision_tree")
    assert torch.equal(p.ys, base.ys)  # a sign-threshold tree is invariant to x -> 4x


def test_scale_y_scales_labels_and_targets():
    base, p = make("standard", task="relu_2nn"), make("scale_y", 2.0, task="relu_2nn")
    assert torch.equal(p.xs, base.xs)
    torch.testing.assert_close(p.ys, 2 * base.ys)
    torch.testing.assert_close(p.targets, 2 * base.targets)


@pytest.mark.parametrize("r", [0.0, 0.5, 4.0])
def test_shift_x_moves_every_input_by_r_along_one_unit_direction(r):
    base, p = make("standard"), make("shift_x", r)
    shift = p.xs - base.xs  # (P, N, D): one vector per prompt
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))
    torch.testing.assert_close(shift[:, 0].norm(dim=-1), torch.full((P,), r), rtol=1e-5, atol=1e-5)
    if r > 0:  # directions differ between prompts
        assert (shift[0, 0] - shift[1, 0]).abs().max() > 1e-3


def test_noisy_y_adds_noise_to_context_labels_only():
    base, p = make("standard"), make("noisy_y", 0.5)
    assert torch.equal(p.targets, base.targets) and torch.equal(p.xs, base.xs)
    assert (p.ys - base.ys).std().item() == pytest.approx(0.5, rel=0.1)


def test_half_subspace_has_rank_d_over_2():
    p = make("half_subspace", n_points=20)
    ranks = torch.linalg.matrix_rank(p.xs.double(), atol=1e-4, rtol=0)  # float32 round-off off the subspace
    assert (ranks == D // 2).all()
    full = torch.linalg.matrix_rank(make("standard", n_points=20).xs.double())
    assert (full == D).all()


def test_skewed_has_decaying_spectrum_with_the_trace_of_identity():
    cov = prompts.skewed_covariance(D, seed=3)
    eig = torch.linalg.eigvalsh(cov).flip(0)
    assert eig.sum().item() == pytest.approx(D)
    torch.testing.assert_close(eig / eig[0], torch.arange(1, D + 1, dtype=torch.float64) ** -2.0)
    xs = make("skewed", n_prompts=4000, n_points=4).xs.reshape(-1, D).double()
    emp = xs.T @ xs / len(xs)
    assert emp.trace().item() == pytest.approx(D, rel=0.03)
    torch.testing.assert_close(emp, cov, atol=0.08, rtol=0)


def test_orthogonal_query_is_orthogonal_to_the_prefix_and_keeps_its_norm():
    p = make("orthogonal_query")
    assert p.xs.shape[1] == D  # with k >= d examples the prefix spans R^d
    for i in range(1, D):
        dots = torch.einsum("bjd,bd->bj", p.xs[:, :i].double(), p.queries[:, i].double())
        assert dots.abs().max() < 1e-4, i
    torch.testing.assert_close(p.queries.norm(dim=-1), p.xs.norm(dim=-1))
    assert torch.equal(p.queries[:, 0], p.xs[:, 0])


def test_overlapping_query_repeats_an_earlier_input():
    p = make("overlapping_query")
    for i in range(1, N):
        match = (p.xs[:, :i] == p.queries[:, i : i + 1]).all(-1)  # (P, i)
        assert match.any(1).all(), i
    torch.testing.assert_close(p.targets[:, 1:], torch.einsum("bnd,bd->bn", p.queries, _w(p))[:, 1:])


def _w(p: prompts.Prompts) -> torch.Tensor:
    """The linear functions behind the prompts (least squares on all points; noiseless, N > D)."""
    return torch.linalg.lstsq(p.xs.double(), p.ys.double().unsqueeze(-1)).solution.squeeze(-1).float()


def test_opposite_quadrants():
    p = make("opposite_quadrants")
    signs = torch.sign(p.xs[:, :1])
    assert (torch.sign(p.xs) == signs).all()  # every in-context input in one orthant per prompt
    assert (torch.sign(p.queries) == -signs).all()  # every query in the opposite one
    torch.testing.assert_close(p.targets, torch.einsum("bnd,bd->bn", p.queries, _w(p)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("name", sorted(prompts.STRATEGIES))
def test_every_strategy_on_every_task_or_a_reason(task, name):
    t = build_task(task, 4)
    param = {"scale_x": 2.0, "scale_y": 2.0, "shift_x": 1.0, "noisy_y": 0.5, "long_context": 10}.get(name)
    reason = prompts.skip_reason(name, t, 6, 10, param)
    if reason:
        assert prompts.STRATEGIES.meta(name, "regression_only") and t.metric == "error_rate", reason
        return
    n = prompts.points_for(name, param, 6, 10)
    p = prompts.make_prompts(name, t, 8, n, 0, param)
    assert p.xs.shape[0] == 8 and p.ys.shape == p.targets.shape == p.xs.shape[:2]
    assert torch.isfinite(p.xs).all() and torch.isfinite(p.targets).all()


def test_long_context_skipped_unless_beyond_training_length():
    t = build_task("linear", 4)
    assert "not beyond" in prompts.skip_reason("long_context", t, 11, 11)
    assert prompts.skip_reason("long_context", t, 11, 21) is None
    assert prompts.points_for("long_context", None, 11, 21) == 21
    assert "exceed model.n_positions" in prompts.skip_reason("long_context", t, 11, 21, 30)


@pytest.mark.parametrize("strategies, message", [
    ({"scale_z": [1]}, "unknown eval strategy 'scale_z'"),
    ({"scale_x": []}, "non-empty list"),
    ({"long_context": [1.5]}, "point counts"),
    ({"scale_x": [0.5, 0]}, "scale_x values must be > 0"),
    ({"scale_y": [-2]}, "scale_y values must be > 0"),
    ({"shift_x": [-1]}, "shift_x values must be >= 0"),
    ({"noisy_y": ["a"]}, "noisy_y takes numbers"),
    ({"skewed": [2]}, "takes no parameter"),
])
def test_bad_strategy_config_is_one_line(strategies, message):
    with pytest.raises(ValueError, match=message):
        prompts.check(strategies)


def test_bad_parameter_is_one_line():
    with pytest.raises(ValueError, match="scale_x values must be > 0"):
        make("scale_x", 0)
    with pytest.raises(ValueError, match="takes no parameter"):
        make("skewed", 2)
