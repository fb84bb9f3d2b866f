"""Task samplers: shapes, truncation, sparsity, tree structure, pools, seed reproducibility."""

import math

import pytest
import torch

from icl.tasks import POOL_FUNCTIONS, TASKS, PromptSampler, build_task, seeded

D = 8


SCALAR = sorted(TASKS.where(simulator=None))  # tasks of any n_dims; the mujoco_* ones: tests/test_physics.py


@pytest.mark.parametrize("name", SCALAR)
def test_shapes_and_truncation(name):
    task = build_task(name, D)
    xs, ys = PromptSampler(task).sample(16, 7, 5, seeded(0))
    assert xs.shape == (16, 7, D) and ys.shape == (16, 7)
    assert torch.all(xs[..., 5:] == 0) and torch.all(xs[..., :5] != 0)
    assert torch.isfinite(ys).all()


@pytest.mark.parametrize("name", SCALAR)
def test_same_seed_same_prompts_other_seed_differs(name):
    task = build_task(name, D)
    a = PromptSampler(task).sample(4, 6, D, seeded(3, 1))
    b = PromptSampler(task).sample(4, 6, D, seeded(3, 1))
    c = PromptSampler(task).sample(4, 6, D, seeded(3, 2))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("name", ["linear", "quadratic", "relu_2nn", "relu_3nn"])
def test_output_scale_matches_linear(name):
    """Garg et al.'s scalings give E[y²] ≈ d for these classes (so errors are comparable across tasks)."""
    _, ys = PromptSampler(build_task(name, D)).sample(4000, 4, D, seeded(0))
    assert ys.pow(2).mean().item() == pytest.approx(D, rel=0.15)


def test_sparse_linear_keeps_s_active_coordinates():
    task = build_task("sparse_linear", D, {"sparsity": 3})
    w = task.sample_params(500, 5, seeded(0))["w"]
    nonzero = w != 0
    assert torch.all(nonzero.sum(1) == 3)
    assert not nonzero[:, 5:].any()  # only among the curriculum's active coordinates
    assert nonzero[:, :5].any(0).all()  # every active coordinate gets chosen sometimes
    w_small = task.sample_params(10, 2, seeded(0))["w"]  # fewer active dims than s: all active kept
    assert torch.all((w_small != 0).sum(1) == 2)


def test_decision_tree_is_a_depth4_tree():
    task = build_task("decision_tree", D)
    params = task.sample_params(3, D, seeded(0))
    assert params["coords"].shape == (3, 15) and params["leaves"].shape == (3, 16)
    xs = torch.randn(3, 2000, D, generator=seeded(1))
    ys = task.evaluate(params, xs)
    for b in range(3):  # every output is a leaf value, reached by the explicit walk
        assert set(ys[b].tolist()) <= set(params["leaves"][b].tolist())
        for i in range(0, 2000, 97):
            node = 0
            for _ in range(4):
                node = 2 * node + (2 if xs[b, i, params["coords"][b, node]] > 0 else 1)
            assert ys[b, i] == params["leaves"][b, node - 15]


def test_random_forest_is_mean_of_trees():
    task = build_task("random_forest", D, {"n_trees": 3})
    params = task.sample_params(2, D, seeded(0))
    xs = torch.randn(2, 50, D, generator=seeded(1))
    tree = build_task("decision_tree", D)
    trees = [tree.evaluate({"coords": params["coords"][:, t], "leaves": params["leaves"][:, t]}, xs) for t in range(3)]
    torch.testing.assert_close(task.evaluate(params, xs), sum(trees) / 3)


def test_linear_classification_labels_and_metric():
    task = build_task("linear_classification", D)
    _, ys = PromptSampler(task).sample(8, 10, D, seeded(0))
    assert set(ys.unique().tolist()) <= {-1.0, 1.0}
    wrong, chance = task.errors(torch.ones_like(ys), ys)
    assert wrong.mean().item() == pytest.approx((ys < 0).float().mean().item())
    assert torch.all(chance == 0.5)
    assert task.metric == "error_rate"
    assert task.loss(torch.zeros_like(ys), ys).item() == pytest.approx(math.log(2))


def test_noisy_linear_adds_fresh_noise_of_given_std():
    noisy = build_task("noisy_linear", D, {"noise_std": 0.5})
    xs, ys = PromptSampler(noisy, num_tasks=1).sample(2000, 3, D, seeded(0))
    w = build_task("linear", D).sample_params(1, D, seeded(POOL_FUNCTIONS, 0, 0, 0))["w"]
    residual = ys - torch.einsum("bnd,d->bn", xs, w[0])
    assert residual.std().item() == pytest.approx(0.5, rel=0.05)
    xs2, ys2 = PromptSampler(noisy, num_tasks=1).sample(2000, 3, D, seeded(1))
    residual2 = ys2 - torch.einsum("bnd,d->bn", xs2, w[0])
    assert not torch.allclose(residual[0], residual2[0])  # fresh noise per batch, even from a pool of one


def test_finite_pools_repeat_functions_and_inputs():
    task = build_task("linear", D)
    xs, ys = PromptSampler(task, num_tasks=1).sample(6, 10, D, seeded(0))
    w = torch.linalg.lstsq(xs[0], ys[0]).solution
    torch.testing.assert_close(torch.einsum("bnd,d->bn", xs, w), ys, atol=1e-4, rtol=1e-4)  # one shared w
    a, _ = PromptSampler(task, num_training_examples=2, max_points=10).sample(40, 10, D, seeded(1))
    assert len({tuple(x.flatten().tolist()) for x in a}) == 2
    b, _ = PromptSampler(task, num_training_examples=2, max_points=10).sample(40, 6, D, seeded(1))
    torch.testing.assert_close(a[:, :6], b)  # a pooled prompt's prefix does not depend on n_points


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'lineer'.*linear"):
        build_task("lineer", D)
    with pytest.raises(ValueError, match="has no parameter 'evaluate'"):
        build_task("linear", D, {"evaluate": 1})
    with pytest.raises(ValueError, match=r"has no parameter 'sparsty' \(known: scale, sparsity\)"):
        build_task("sparse_linear", D, {"sparsty": 2})
    with pytest.raises(ValueError, match="'sparsity' must be of type int"):
        build_task("sparse_linear", D, {"sparsity": 2.5})
    with pytest.raises(ValueError, match="'scale' must be of type float"):
        build_task("linear", D, {"scale": "big"})
    with pytest.raises(ValueError, match="n_dims must be >= 1"):
        build_task("linear", 0)
    with pytest.raises(ValueError, match="active dims"):
        PromptSampler(build_task("linear", D)).sample(2, 3, D + 1, seeded(0))
    with pytest.raises(ValueError, match="num_tasks"):
        PromptSampler(build_task("linear", D), num_tasks=0)
