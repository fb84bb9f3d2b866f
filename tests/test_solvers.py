"""Tests for icl.solvers: the batched solvers against scikit-learn and the per-prompt loops they replace."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from icl import baselines as bl
from icl import solvers
from icl.lab.reference import LOOPS


def sparse_prompts(B: int, n: int, d: int, seed: int, s: int = 3, noise: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    w = torch.randn(B, d, generator=g, dtype=torch.float64)
    keep = torch.rand(B, d, generator=g).argsort(1)[:, :s]
    w = w * torch.zeros(B, d, dtype=torch.float64).scatter_(1, keep, 1.0)
    return xs, torch.einsum("bnd,bd->bn", xs, w) + noise * torch.randn(B, n, generator=g, dtype=torch.float64)


def sklearn_lasso(X: np.ndarray, y: np.ndarray, alpha: float):
    """scikit-learn's Lasso run to a far tighter stop than its default, and whether it got there."""
    from sklearn.linear_model import Lasso

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=200_000).fit(X, y)
    return model.coef_, model.n_iter_ < 200_000


def objective(X: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> float:
    return float(((y - X @ w) ** 2).sum() / (2 * len(y)) + alpha * np.abs(w).sum())


@pytest.mark.parametrize("alpha", [1.0, 0.1, 0.01, 0.001])
def test_batched_lasso_matches_sklearn_for_k_below_and_above_d(alpha):
    """Every prefix k = 1 … 2d, k < d included: predictions to 1e-4 relative wherever scikit-learn converges,
    and never a worse objective where it does not (small α with k < d: its coordinate descent stalls)."""
    B, n, d = 4, 17, 8
    xs, ys = sparse_prompts(B, n, d, seed=1, noise=0.1)
    preds, stats = solvers.lasso_predict(xs, ys, xs, [alpha])
    assert stats["unconverged"] == 0
    gram, b, _ = solvers.prefix_grams(xs, ys)
    compared = 0
    for p in range(B):
        for k in range(1, n):
            X, y, q = xs[p, :k].numpy(), ys[p, :k].numpy(), xs[p, k].numpy()
            coef, converged = sklearn_lasso(X, y, alpha)
            ours = float(preds[0, p, k])
            w = solvers.lasso_solve(gram[p, k:k + 1], b[p, k:k + 1], (ys[p, :k] ** 2).sum().reshape(1),
                                    torch.tensor([[alpha * k]], dtype=torch.float64))[0][0, 0].numpy()
            assert ours == pytest.approx(float(w @ q), rel=1e-12, abs=1e-12)
            assert objective(X, y, w, alpha) <= objective(X, y, coef, alpha) + 1e-10 * (1 + (y**2).mean())
            if converged:
                ref = float(coef @ q)
                assert ours == pytest.approx(ref, rel=1e-4, abs=1e-6 * np.abs(y).max()), (alpha, p, k)
                compared += 1
    assert compared >= B * (n - 1) // 2  # the comparison must not be vacuous


def test_batched_lasso_is_exactly_zero_at_large_alpha():
    """α ≥ ‖Xᵀy‖∞ / k: the Lasso solution is w = 0 (scikit-learn's too), at every prefix."""
    xs, ys = sparse_prompts(3, 12, 6, seed=2)
    preds, _ = solvers.lasso_predict(xs, ys, xs, [1e3])
    assert torch.equal(preds, torch.zeros_like(preds))
    coef, _ = sklearn_lasso(xs[0, :5].numpy(), ys[0, :5].numpy(), 1e3)
    assert not coef.any()


def test_batched_lasso_uses_the_queries_and_one_solve_for_all_alphas():
    xs, ys = sparse_prompts(3, 10, 5, seed=3)
    qs = torch.randn(xs.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    both, _ = solvers.lasso_predict(xs, ys, qs, [0.1, 0.01])
    alone, _ = solvers.lasso_predict(xs, ys, qs, [0.01])
    torch.testing.assert_close(both[1], alone[0], rtol=1e-10, atol=1e-10)
    via_registry = bl.predict("lasso_0.01", xs.float(), ys.float(), qs.float())
    expected, _ = solvers.lasso_predict(xs.float().double(), ys.float().double(), qs.float().double(), [0.01])
    torch.testing.assert_close(via_registry, expected[0].float())


def test_batched_lasso_agrees_with_the_old_loop_where_the_loop_converged():
    """The registry's batched Lasso vs the per-prompt sklearn loop it replaced (tol 1e-4, 10,000 iterations):
    at α = 0.1 the loop converges on every prefix, so the two agree to its tolerance."""
    xs, ys = sparse_prompts(3, 21, 10, seed=5)
    new = bl.predict("lasso_0.1", xs.float(), ys.float()).double()
    old = LOOPS["lasso_0.1"](xs.float(), ys.float()).double()
    torch.testing.assert_close(new, old, rtol=0, atol=2e-2 * float(ys.abs().max()))


def test_cache_key_changes_when_a_baseline_implementation_changes(tmp_path, monkeypatch):
    """icl.cache hashes the source of every module the baselines import from icl (SOURCES, by module name);
    editing one — here the batched solvers — must give new keys, so stale predictions are never reused."""
    import ast
    import importlib.util
    import shutil
    from pathlib import Path

    from icl import cache, files

    src = Path(bl.__file__).parent
    imported = {f"icl.{a.name}" for mod in ("baselines.py", "solvers.py")
                for node in ast.walk(ast.parse((src / mod).read_text()))
                if isinstance(node, ast.ImportFrom) and node.module == "icl" for a in node.names}
    assert imported - {"icl.registry"} <= set(cache.SOURCES), imported - set(cache.SOURCES)
    assert "icl.solvers" in cache.SOURCES and "icl.baselines" in cache.SOURCES
    cache.code_version.cache_clear()
    before = cache.cache_key(baseline="lasso_0.1")
    edited = tmp_path / "solvers.py"
    shutil.copy(src / "solvers.py", edited)
    with open(edited, "a") as f:
        f.write("\n# a changed implementation\n")
    real = importlib.util.find_spec
    monkeypatch.setattr(files.importlib.util, "find_spec", lambda name, *a: importlib.util.spec_from_file_location(
        name, edited) if name == "icl.solvers" else real(name, *a))
    cache.code_version.cache_clear()
    assert cache.cache_key(baseline="lasso_0.1") != before
    monkeypatch.undo()
    cache.code_version.cache_clear()
    assert cache.cache_key(baseline="lasso_0.1") == before


def relu_prompts(B: int, n: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(B, n, d, generator=g)
    w1, w2 = torch.randn(B, d, 8, generator=g), torch.randn(B, 8, generator=g)
    return xs, torch.einsum("bnh,bh->bn", torch.relu(xs @ w1), w2) / 2


def test_gd_2nn_batched_equals_the_loop_on_a_fixed_seed():
    """Every prefix within one minibatch: the same initial weights and the same Adam steps as the per-position
    loop, so the predictions agree up to float round-off accumulated over 100 steps."""
    xs, ys = relu_prompts(6, 15, 4, seed=11)
    new = bl.predict("gd_2nn", xs, ys)
    old = LOOPS["gd_2nn"](xs, ys)
    assert new[:, 0].eq(0).all()
    torch.testing.assert_close(new, old, rtol=0, atol=2e-3 * float(old.abs().max()))
    other_seed = solvers.gd_2nn_predict(xs.double(), ys.double(), xs.double(), seed=1)
    assert (other_seed - old).abs().max() > 1e-2  # the comparison can fail: the seed matters


def test_gd_2nn_batched_with_minibatches_equals_the_loop_in_distribution():
    """Prefixes longer than the minibatch (here 4 points): the subsets come from another stream than the
    loop's, so compare the error curve over many prompts, not single predictions."""
    xs, ys = relu_prompts(48, 13, 3, seed=12)
    kw = dict(hidden=16, steps=60, batch_size=4)
    new = solvers.gd_2nn_predict(xs.double(), ys.double(), xs.double(), **kw)
    old = LOOPS["gd_2nn"](xs, ys, **kw)
    assert not torch.allclose(new[:, 5:], old[:, 5:])  # different minibatches ...
    paired = (((new - ys) ** 2) - ((old - ys) ** 2))[:, 5:].double().mean(1)  # per prompt, positions 5 … 12
    se = paired.std() / len(paired) ** 0.5
    assert abs(paired.mean()) < 4 * se + 1e-3, (paired.mean(), se)  # ... no systematic difference in error
    assert ((old - ys) ** 2)[:, 5:].mean() < 0.8 * (ys[:, 5:] ** 2).mean()  # and both learn (the test has power)
    torch.testing.assert_close(new[:, :5], old[:, :5], rtol=0, atol=2e-3 * float(old.abs().max()))


def test_gd_2nn_hand_written_gradients_match_autograd():
    g = torch.Generator().manual_seed(13)
    B, m, G, h, d = 3, 5, 2, 4, 3
    X, y = torch.randn(B, m, d, generator=g), torch.randn(B, m, generator=g)
    W1, w2, b2 = solvers._init_group(range(1, G + 1), B, d, h, g)  # nets (prompt, position) flattened below
    params = [W1.reshape(B * G, d + 1, h), w2.reshape(B * G, h, 1), b2.reshape(B * G, 1, 1)]
    Xe, ye = solvers._repeat_nets(solvers._with_ones(X), G), solvers._repeat_nets(y.unsqueeze(-1), G)
    scale = torch.rand(B * G, m, 1, generator=g)  # per net and point (the solver takes it and y as (N, 1, m))
    leaves = [p.clone().requires_grad_() for p in params]
    lw1, lw2, lb2 = leaves
    out = torch.relu(Xe[..., :d] @ lw1[:, :d] + lw1[:, d:]) @ lw2 + lb2  # the plain net: w1, b1 apart
    (0.5 * ((out - ye) ** 2 * scale).sum()).backward()
    grads = [torch.empty_like(p) for p in params]
    solvers._gradients(Xe, Xe.transpose(1, 2).contiguous(), ye.transpose(1, 2), scale.transpose(1, 2), params,
                       grads, torch.empty(B * G, m, h))
    for leaf, mine in zip(leaves, grads):
        torch.testing.assert_close(mine, leaf.grad)


def test_trees_split_among_processes_give_the_same_numbers(monkeypatch):
    """joblib over prompts (the job's thread budget) runs the very fits of the sequential loop."""
    g = torch.Generator().manual_seed(14)
    xs = torch.randn(6, 9, 3, generator=g)
    ys = torch.where(xs[..., 0] > 0, 1.0, -1.0) + 0.1 * torch.randn(6, 9, generator=g)
    sequential = bl.predict("tree_unbounded", xs, ys)
    monkeypatch.setattr(bl, "_workers", lambda B, n: 2)
    torch.testing.assert_close(bl.predict("tree_unbounded", xs, ys), sequential, rtol=0, atol=0)


# --- Bayes-optimal baselines ------------------------------------------------------------------------------
from icl import prompts  # noqa: E402
from icl.tasks import build_task  # noqa: E402


def task_prompts(name: str, d: int, P: int, n: int, params: dict | None = None):
    task = build_task(name, d, params)
    p = prompts.make_prompts("standard", task, P, n, seed=0)
    return task, p.xs, p.ys


def test_bayes_on_noiseless_isotropic_linear_is_least_squares():
    task, xs, ys = task_prompts("linear", 5, 50, 11)
    torch.testing.assert_close(bl.predict("bayes", xs, ys, task=task), bl.predict("least_squares", xs, ys))


def test_bayes_on_noisy_linear_is_ridge_with_the_noise_to_prior_ratio():
    task, xs, ys = task_prompts("noisy_linear", 5, 50, 11)  # σ = 1, scale = 1: the ridge baseline (α = 1)
    torch.testing.assert_close(bl.predict("bayes", xs, ys, task=task), bl.predict("ridge", xs, ys), rtol=1e-5, atol=1e-5)
    task, xs, ys = task_prompts("noisy_linear", 5, 400, 11, {"noise_std": 0.5, "scale": 2.0})
    bayes = bl.predict("bayes", xs, ys, task=task)
    torch.testing.assert_close(bayes, solvers.ridge_predict(xs.double(), ys.double(), xs.double(), 1 / 16).float(),
                               rtol=1e-5, atol=1e-5)
    assert ((bayes - ys) ** 2)[:, 5].mean() < ((bl.predict("ridge", xs, ys) - ys) ** 2)[:, 5].mean()


def test_sparse_bayes_matches_brute_force_enumeration():
    """Full k × k Gaussian evidence per support in numpy, every support, every prefix (also those past
    k = s + 1, where the solver keeps only the supports that survived)."""
    import itertools

    task, xs, ys = task_prompts("sparse_linear", 6, 4, 9, {"sparsity": 2})
    ours = solvers.sparse_bayes_predict(xs.double(), ys.double(), xs.double(), 2)
    sig = solvers.SPARSE_NOISE_FLOOR
    for p in range(4):
        for k in range(1, 6):
            X, y, q = xs[p, :k].double().numpy(), ys[p, :k].double().numpy(), xs[p, k].double().numpy()
            logw, means = [], []
            for S in itertools.combinations(range(6), 2):
                cov = X[:, S] @ X[:, S].T + sig**2 * np.eye(k)
                logw.append(-0.5 * np.linalg.slogdet(cov)[1] - 0.5 * y @ np.linalg.solve(cov, y))
                means.append(q[list(S)] @ (X[:, S].T @ np.linalg.solve(cov, y)))
            w = np.exp(np.array(logw) - max(logw))
            assert float(ours[p, k]) == pytest.approx(float(w @ means / w.sum()), rel=1e-5, abs=1e-6), (p, k)


def test_sparse_bayes_at_most_lasso_at_every_k_and_exact_from_d():
    task, xs, ys = task_prompts("sparse_linear", 8, 600, 13, {"sparsity": 2})
    err = lambda preds: (preds.double() - ys.double()) ** 2
    bayes = err(bl.predict("bayes", xs, ys, task=task))
    lassos = [err(bl.predict(f"lasso_{a}", xs, ys)) for a in bl.LASSO_ALPHAS]
    for k in range(1, 13):
        best = min(lassos, key=lambda e: float(e[:, k].mean()))
        diff = bayes[:, k] - best[:, k]
        assert diff.mean() <= 3 * diff.std() / len(diff) ** 0.5 + 1e-9, (k, diff.mean())
    zero = (ys.double() ** 2).mean()
    assert (bayes[:, 8:].mean(0) < 1e-8 * zero).all()  # exact once k ≥ d
    assert bayes[:, 4].mean() < 0.2 * min(float(e[:, 4].mean()) for e in lassos)  # and far better at k = 2s


def test_bayes_on_quadratic_is_exact_from_d_and_beats_least_squares():
    task, xs, ys = task_prompts("quadratic", 4, 300, 9)
    bayes = ((bl.predict("bayes", xs, ys, task=task) - ys) ** 2).double()
    ls = ((bl.predict("least_squares", xs, ys) - ys) ** 2).double()
    assert (bayes[:, 4:].mean(0) < 1e-6 * (ys.double() ** 2).mean()).all()
    assert (bayes[:, 1:].mean(0) <= ls[:, 1:].mean(0) + 1e-9).all()


@pytest.mark.parametrize("name,params", [("linear_classification", None), ("relu_2nn", None),
                                         ("decision_tree", None), ("noisy_linear", {"renormalize": True})])
def test_bayes_says_why_where_there_is_no_exact_form(name, params):
    with pytest.raises(ValueError, match="no exact Bayes-optimal baseline"):
        bl.bayes_predictor(build_task(name, 4, params))
    with pytest.raises(ValueError, match="needs|depends"):
        bl.predict("bayes", torch.zeros(1, 2, 4), torch.zeros(1, 2))
