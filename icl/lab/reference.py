"""The per-prompt loops the batched baselines replaced: references for tests and ``python -m icl.bench.eval``.

Lab code (the library never imports it): Lasso and gd_2nn one fit per prompt and prefix, and the trees / XGBoost
through the scikit-learn estimators in one process. ``tests/test_baselines.py`` and ``tests/test_solvers.py`` check
the library's batched versions against them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
from torch import Tensor

from icl.baselines import LASSO_ALPHAS, Predictor, _prefix_fit, _prep, _prep_queries


def _lasso(alpha: float) -> Predictor:
    def make() -> Any:
        from sklearn.linear_model import Lasso

        return Lasso(alpha=alpha, fit_intercept=False, max_iter=10_000)

    return lambda xs, ys, queries=None: _prefix_fit(xs, ys, make, queries)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch single-threaded for a while (process-global; restored on exit).

    gd_2nn is thousands of tiny ops; with intra-op threads, a busy second core
    made it ~50x slower (OpenMP workers spin-waiting), measured on 2 cores.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _gd_2nn(
    xs: Tensor, ys: Tensor, queries: Tensor | None = None, hidden: int = 100, lr: float = 5e-3, steps: int = 100,
    batch_size: int = 100, seed: int = 0,
) -> Tensor:
    """Train one 2-layer ReLU net per prompt and prefix, batched over prompts.

    Weights are (B, ...) tensors and Adam is elementwise, so each prompt's net is
    trained independently of the others. Each position gets a fresh init from a
    local generator drawn in position order, so results do not depend on the data
    of later positions and the global RNG is untouched.
    """
    # Leave inference/no-grad mode the caller may be in; inference tensors cannot be saved for backward.
    with _single_thread(), torch.inference_mode(False), torch.enable_grad():
        xs64, ys64 = _prep(xs, ys)
        xs32, ys32, qs32 = (t.float().clone() for t in (xs64, ys64, _prep_queries(xs64, queries)))
        B, n, d = xs32.shape
        gen = torch.Generator(device="cpu").manual_seed(seed)
        preds = torch.zeros(B, n)

        def uniform(shape: tuple[int, ...], fan_in: int) -> Tensor:
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init
            return ((torch.rand(shape, generator=gen) * 2 - 1) * bound).requires_grad_()

        for i in range(1, n):
            params = [uniform((B, d, hidden), d), uniform((B, 1, hidden), d),
                      uniform((B, hidden, 1), hidden), uniform((B, 1, 1), hidden)]
            w1, b1, w2, b2 = params
            opt = torch.optim.Adam(params, lr=lr)
            for _ in range(steps):
                if i <= batch_size:
                    X, y = xs32[:, :i], ys32[:, :i]
                else:
                    sel = torch.randperm(i, generator=gen)[:batch_size]
                    X, y = xs32[:, sel], ys32[:, sel]
                out = (torch.relu(X @ w1 + b1) @ w2 + b2).squeeze(-1)
                # Sum of per-prompt means: each prompt's gradient is its own MSE gradient.
                loss = ((out - y) ** 2).mean(dim=1).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                xq = qs32[:, i : i + 1]
                preds[:, i] = (torch.relu(xq @ w1 + b1) @ w2 + b2).reshape(B)
    return preds.detach()


def _sklearn_tree(max_depth: int | None) -> Any:
    from sklearn.tree import DecisionTreeRegressor

    return DecisionTreeRegressor(max_depth=max_depth, random_state=0)


def _xgb_regressor() -> Any:
    import xgboost

    return xgboost.XGBRegressor(n_estimators=50, max_depth=4, learning_rate=0.3, tree_method="hist", n_jobs=1,
                                verbosity=0, random_state=0, device="cuda" if torch.cuda.is_available() else "cpu")


LOOPS: dict[str, Predictor] = {
    **{f"lasso_{a}": _lasso(float(a)) for a in LASSO_ALPHAS}, "gd_2nn": _gd_2nn,
    "tree_depth4": lambda xs, ys, queries=None: _prefix_fit(xs, ys, partial(_sklearn_tree, 4), queries),
    "tree_unbounded": lambda xs, ys, queries=None: _prefix_fit(xs, ys, partial(_sklearn_tree, None), queries),
    "xgboost": lambda xs, ys, queries=None: _prefix_fit(xs, ys, _xgb_regressor, queries),
}
