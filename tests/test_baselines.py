"""Tests for icl.baselines: closed-form error curves, prefix-only, robustness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icl import baselines as bl
from icl.lab.reference import LOOPS

ALL = sorted(set(bl.BASELINES.where(task=None)) - {"bayes"})  # nominal and bayes need the task: test_physics, test_solvers


def linear_prompts(B: int, n: int, d: int, seed: int = 0, sparsity: int | None = None):
    """Noiseless isotropic linear prompts y = w.x, x ~ N(0, I), w ~ N(0, I) (optionally sparse)."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(B, n, d, generator=g)
    w = torch.randn(B, d, generator=g)
    if sparsity is not None:
        keep = torch.rand(B, d, generator=g).argsort(dim=1)[:, :sparsity]
        w = w * torch.zeros(B, d).scatter_(1, keep, 1.0)
    return xs, torch.einsum("bnd,bd->bn", xs, w)


def sq_err(name: str, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return (bl.predict(name, xs, ys).double() - ys.double()) ** 2  # (B, n)


@pytest.fixture(scope="module")
def iso():
    return linear_prompts(B=4000, n=11, d=5, seed=1)


def test_least_squares_matches_projection_error(iso):
    """Min-norm LS at k < d examples leaves error E||w - P_k w||^2 = d - k, so (d-k)/d normalised."""
    xs, ys = iso
    d = xs.shape[-1]
    err = sq_err("least_squares", xs, ys)
    zero = ys.double() ** 2
    B = xs.shape[0]
    for k in range(xs.shape[1]):
        ratio = (err[:, k].mean() / zero[:, k].mean()).item()
        if k < d:
            expected = (d - k) / d
            # delta-method standard error of a ratio of means (err and zero are correlated)
            se = ((err[:, k] - ratio * zero[:, k]).std() / zero[:, k].mean()).item() / B**0.5
            assert se < 0.02, se  # the tolerance must stay informative
            assert abs(ratio - expected) < 4 * se + 1e-6, (k, ratio, expected, se)
        else:
            assert ratio < 1e-6, (k, ratio)


def test_least_squares_is_min_norm():
    """With k < d the solution must be the pinv one (min-norm), not any interpolant."""
    xs, ys = linear_prompts(B=5, n=4, d=6, seed=2)
    preds = bl.predict("least_squares", xs, ys).double()
    for b in range(5):
        for i in range(1, 4):
            X, y = xs[b, :i].double().numpy(), ys[b, :i].double().numpy()
            w = np.linalg.pinv(X) @ y
            assert preds[b, i].item() == pytest.approx(float(xs[b, i].double().numpy() @ w), abs=1e-4)


@pytest.mark.parametrize("name", ["averaging", "knn_3"])
def test_worse_than_least_squares_beyond_d(iso, name):
    xs, ys = iso
    d = xs.shape[-1]
    ls, other = sq_err("least_squares", xs, ys).mean(0), sq_err(name, xs, ys).mean(0)
    for k in range(d, xs.shape[1]):
        assert other[k] > ls[k] + 1e-3, (name, k, other[k].item(), ls[k].item())


def test_ridge_matches_numpy_and_sits_between(iso):
    xs, ys = iso
    d = xs.shape[-1]
    preds = bl.predict("ridge", xs[:4], ys[:4]).double()
    for b in range(4):
        for i in range(1, xs.shape[1]):
            X, y = xs[b, :i].double().numpy(), ys[b, :i].double().numpy()
            w = np.linalg.solve(X.T @ X + bl.RIDGE_ALPHA * np.eye(d), X.T @ y)
            assert preds[b, i].item() == pytest.approx(float(xs[b, i].double().numpy() @ w), rel=1e-4, abs=1e-4)
    ridge, ls = sq_err("ridge", xs, ys).mean(0), sq_err("least_squares", xs, ys).mean(0)
    zero = (ys.double() ** 2).mean(0)
    for k in range(d, xs.shape[1]):
        assert ls[k] < ridge[k] < zero[k], k


@pytest.mark.parametrize("name", ALL)
def test_shape_dtype_and_zero_start(name):
    xs, ys = linear_prompts(B=3, n=6, d=3, seed=3)
    preds = bl.predict(name, xs, ys)
    assert preds.shape == (3, 6) and preds.dtype == torch.float32 and preds.device.type == "cpu"
    assert torch.all(preds[:, 0] == 0)
    assert torch.isfinite(preds).all()


@pytest.mark.parametrize("name", ALL)
def test_prefix_only(name):
    """Changing ys[:, i:] and xs[:, i+1:] must leave preds[:, :i+1] unchanged."""
    xs, ys = linear_prompts(B=3, n=6, d=3, seed=4)
    base = bl.predict(name, xs, ys)
    g = torch.Generator().manual_seed(5)
    for i in range(6):
        xs2, ys2 = xs.clone(), ys.clone()
        ys2[:, i:] = torch.randn(3, 6 - i, generator=g) * 10
        xs2[:, i + 1 :] = torch.randn(3, 5 - i, 3, generator=g) * 10
        torch.testing.assert_close(bl.predict(name, xs2, ys2)[:, : i + 1], base[:, : i + 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["lasso_0.1", "tree_depth4", "xgboost", "least_squares", "knn_3"])
def test_bad_prompt_gives_nan_not_exception(name):
    xs, ys = linear_prompts(B=3, n=6, d=3, seed=6)
    xs[1, 2, 0] = float("nan")
    xs[1, 3, 1] = float("inf")
    preds = bl.predict(name, xs, ys)
    assert torch.isnan(preds[1, 3:]).all()  # every fit that sees the bad rows (as data or query)
    assert torch.isfinite(preds[[0, 2]]).all()


def test_failing_or_warning_fit_gives_nan_and_continues():
    """A fit that raises writes NaN at that prompt/position only; warnings do not escape."""
    import warnings

    class Flaky:
        def fit(self, X, y):
            if np.any(y == 999.0):
                raise RuntimeError("boom")
            warnings.warn("noisy fit", UserWarning, stacklevel=2)
            self.mean = float(np.mean(y))
            return self

        def predict(self, X):
            return np.full(len(X), self.mean)

    xs, ys = linear_prompts(B=3, n=5, d=2, seed=11)
    ys[1, 2] = 999.0  # prompt 1 fails from position 3 on
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preds = bl._prefix_fit(xs, ys, Flaky)
    assert torch.isnan(preds[1, 3:]).all() and torch.isfinite(preds[1, :3]).all()
    assert torch.isfinite(preds[[0, 2]]).all()
    assert preds[0, 2].item() == pytest.approx(ys[0, :2].mean().item(), abs=1e-6)


def test_unknown_name():
    with pytest.raises(ValueError, match="least_squares"):
        bl.predict("nope", torch.zeros(1, 2, 3), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="known"):
        bl.is_slow("nope")


def test_is_slow():
    assert not any(bl.is_slow(n) for n in ["zero", "least_squares", "ridge", "averaging", "knn_3"])
    assert not bl.is_slow("lasso_0.01")  # batched (icl.solvers): runs on every prompt
    assert all(bl.is_slow(n) for n in ["tree_depth4", "tree_unbounded", "xgboost", "gd_2nn"])


def test_lasso_beats_least_squares_on_sparse():
    """3-sparse w in d=10 from k=8 < d examples: L1 recovers what min-norm LS cannot."""
    xs, ys = linear_prompts(B=150, n=9, d=10, seed=7, sparsity=3)
    k = 8
    lasso, ls = sq_err("lasso_0.01", xs, ys)[:, k].mean(), sq_err("least_squares", xs, ys)[:, k].mean()
    assert lasso < 0.5 * ls, (lasso.item(), ls.item())


def test_tree_fits_step_function():
    g = torch.Generator().manual_seed(8)
    xs = torch.randn(40, 41, 3, generator=g)
    ys = torch.where(xs[..., 0] > 0, 1.0, -1.0)
    preds = bl.predict("tree_depth4", xs, ys)
    exact = (preds[:, -1] == ys[:, -1]).float().mean()
    assert exact > 0.85, exact  # misses only when x_i falls between the training points around 0


def test_gd_2nn_deterministic_and_learns():
    xs, ys = linear_prompts(B=8, n=21, d=3, seed=9)
    state = torch.random.get_rng_state()
    a, b = bl.predict("gd_2nn", xs, ys), bl.predict("gd_2nn", xs, ys)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Beyond a few examples the net must beat predicting zero on this easy task.
    err = ((a - ys) ** 2)[:, 10:].mean()
    assert err < 0.5 * (ys[:, 10:] ** 2).mean(), err


def test_gd_2nn_under_inference_mode():
    xs, ys = linear_prompts(B=2, n=4, d=3, seed=10)
    with torch.inference_mode():
        preds = bl.predict("gd_2nn", xs, ys)
    assert torch.isfinite(preds).all()


# --- theory on the out-of-distribution prompts of icl.prompts (the very prompts the transformer sees) ---------
from icl import prompts as strategies  # noqa: E402
from icl.tasks import build_task  # noqa: E402


def strategy_ratio(name: str, strategy: str, param=None, n_points: int = 11, d: int = 5, P: int = 400):
    """Normalised error per k of baseline ``name`` on a strategy's noiseless linear prompts."""
    p = strategies.make_prompts(strategy, build_task("linear", d), P, n_points, seed=0, param=param)
    preds = bl.predict(name, p.xs, p.ys, p.queries).double()
    err = (preds - p.targets.double()) ** 2
    return (err.mean(0) / (p.targets.double() ** 2).mean(0)).numpy(), preds


@pytest.mark.parametrize("strategy, param", [("scale_x", 0.125), ("scale_x", 8.0), ("scale_y", 8.0),
                                             ("shift_x", 4.0), ("skewed", None), ("opposite_quadrants", None)])
def test_least_squares_exact_from_k_equals_d_on_any_linear_strategy(strategy, param):
    ratio, _ = strategy_ratio("least_squares", strategy, param)
    assert (ratio[5:] < 1e-6).all(), ratio
    assert (ratio[1:4] > 0.05).all(), ratio  # and not before: the test can fail


def test_least_squares_exact_from_half_d_in_the_half_subspace():
    ratio, _ = strategy_ratio("least_squares", "half_subspace", d=6)
    assert (ratio[3:] < 1e-6).all() and ratio[2] > 0.05, ratio


def test_least_squares_predicts_zero_on_orthogonal_queries():
    """Min-norm w lies in the span of the prefix, so w·q = 0: normalised error exactly 1 for every k < d."""
    ratio, preds = strategy_ratio("least_squares", "orthogonal_query")
    assert preds.abs().max() < 1e-4
    np.testing.assert_allclose(ratio, 1.0, atol=1e-6)


def test_least_squares_and_1nn_exact_when_the_query_repeats_an_example():
    ratio, _ = strategy_ratio("least_squares", "overlapping_query")
    assert (ratio[1:] < 1e-6).all(), ratio
    ratio_knn, _ = strategy_ratio("knn_3", "overlapping_query")
    assert ratio_knn[1] < 1e-6 and ratio_knn[6] > 0.05  # k = 1: the one neighbour is the query itself


def test_ridge_beats_least_squares_with_label_noise_at_k_equals_d():
    """With noise std 1, ridge (alpha 1) is the posterior mean; min-norm LS interpolates the noise."""
    ls, _ = strategy_ratio("least_squares", "noisy_y", 1.0, P=1000)
    ridge, _ = strategy_ratio("ridge", "noisy_y", 1.0, P=1000)
    assert ridge[5] < 0.7 * ls[5], (ridge[5], ls[5])
    clean, _ = strategy_ratio("least_squares", "standard")
    assert ls[8] > clean[8] + 0.01  # the noise costs something


def test_library_baselines_use_the_queries():
    xs, ys = linear_prompts(B=3, n=6, d=2, seed=4)
    queries = xs.flip(1)
    for name in ["knn_3", "least_squares", "tree_depth4", "zero", "gd_2nn"]:
        with_q = bl.predict(name, xs, ys, queries)
        for i in range(1, 6):
            ref = bl.predict(name, torch.cat([xs[:, :i], queries[:, i:i + 1]], 1), ys[:, :i + 1])[:, -1]
            torch.testing.assert_close(with_q[:, i], ref, rtol=1e-4, atol=1e-4, msg=f"{name} at {i}")


# --- vector outputs (ys (B, n, m); issue 18) ----------------------------------------------------------------------
PER_OUTPUT = sorted(bl.BASELINES.where(per_output=True))


def vector_prompts(B: int = 4, n: int = 7, d: int = 3, m: int = 3, seed: int = 0):
    """y_c = w_c·x + sin(x_0) c: m outputs, each its own function of the same inputs."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(B, n, d, generator=g)
    w = torch.randn(B, m, d, generator=g)
    return xs, torch.einsum("bnd,bmd->bnm", xs, w) + torch.sin(xs[..., :1]) * torch.arange(m)


def test_per_output_baselines_are_listed():
    linear = set(bl.BASELINES.where(linear=True))  # icl.learners' reference learners (tests/test_learners.py)
    assert set(PER_OUTPUT) == {"zero", "least_squares", "ridge", "averaging", "knn_3", "gd_2nn"} | linear


@pytest.mark.parametrize("name", [n for n in PER_OUTPUT if n != "gd_2nn"])
@pytest.mark.parametrize("queries", [False, True])
def test_vector_outputs_equal_a_loop_over_coordinates(name, queries):
    xs, ys = vector_prompts()
    qs = xs.flip(1) if queries else None
    preds = bl.predict(name, xs, ys, qs)
    assert preds.shape == ys.shape and preds.dtype == torch.float32
    loop = torch.stack([bl.predict(name, xs, ys[..., c], qs) for c in range(ys.shape[-1])], dim=-1)
    torch.testing.assert_close(preds, loop, rtol=1e-6, atol=1e-6)


def test_gd_2nn_fits_each_coordinate_on_its_own():
    """gd_2nn trains one net per (prompt, coordinate): changing coordinate 0's labels leaves coordinate 1's
    predictions exactly as they were, and a net per coordinate beats the zero estimator on a smooth target."""
    xs, ys = vector_prompts(B=3, n=8, m=2)
    preds = bl.predict("gd_2nn", xs, ys)
    assert preds.shape == (3, 8, 2) and torch.isfinite(preds).all()
    other = ys.clone()
    other[..., 0] = torch.randn(3, 8) * 10
    assert torch.equal(bl.predict("gd_2nn", xs, other)[..., 1], preds[..., 1])
    assert not torch.equal(bl.predict("gd_2nn", xs, other)[..., 0], preds[..., 0])


def test_scalar_baselines_refuse_vector_outputs_and_are_skipped():
    xs, ys = vector_prompts()
    with pytest.raises(ValueError, match="fits one scalar output"):
        bl.predict("tree_depth4", xs, ys)

    class Vector:
        name, y_dim = "mujoco_x", 3

    assert "y_dim = 3" in bl.skip_reason("lasso_0.1", Vector())
    assert bl.skip_reason("ridge", Vector()) is None
    assert "no nominal model" in bl.skip_reason("nominal", Vector())
    with pytest.raises(ValueError, match="needs a task with a nominal model"):
        bl.predict("nominal", xs, ys)


@pytest.mark.parametrize("name", ["tree_depth4", "tree_unbounded", "xgboost"])
def test_trees_and_xgboost_equal_the_scikit_learn_estimators(name):
    """``_Tree`` (no input validation) and ``_XGB`` (xgboost.train) fit the very models of the estimators."""
    g = torch.Generator().manual_seed(21)
    xs = torch.randn(3, 30, 5, generator=g)
    ys = torch.where(xs[..., 0] > 0, 1.0, -1.0) + 0.3 * xs[..., 1] + 0.1 * torch.randn(3, 30, generator=g)
    torch.testing.assert_close(bl.predict(name, xs, ys), LOOPS[name](xs, ys), rtol=0, atol=0)
