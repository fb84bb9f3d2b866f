"""Baseline predictors, scored on the same prompts as the transformer.

Every baseline maps prompts ``xs`` (B, n, d), ``ys`` (B, n) (and optional per-position ``queries``) to
predictions (B, n): ``preds[:, i]`` reads only the examples before position i, so baselines and the transformer
compare on equal terms. The list of baselines, how each is computed, and the failure policy: docs/baselines.md.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from icl import learners, solvers
from icl.registry import Registry

Predictor = Callable[..., Tensor]  # (xs, ys[, queries]) -> preds

RIDGE_ALPHA = 1.0
LASSO_ALPHAS = ("1", "0.1", "0.01", "0.001", "0.0001")


def _prep(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """Detached float64 CPU copies (float64 so pinv/solve are stable at k ~ d)."""
    if xs.ndim != 3 or ys.shape != xs.shape[:2]:
        raise ValueError(f"expected xs (B, n, d) and ys (B, n), got {tuple(xs.shape)} and {tuple(ys.shape)}")
    return xs.detach().to("cpu", torch.float64), ys.detach().to("cpu", torch.float64)


def _nonfinite_positions(xs: Tensor, ys: Tensor, queries: Tensor) -> Tensor:
    """(B, n) mask: position i sees a non-finite value in xs[:, :i], ys[:, :i] or its query.

    The batched baselines return NaN there, as a library fit on that data would,
    instead of letting one bad prompt raise (pinv) or silently skew others.
    """
    def shifted(bad: Tensor) -> Tensor:
        return torch.cat([torch.zeros_like(bad[:, :1]), bad[:, :-1]], dim=1)

    prefix = (shifted(~torch.isfinite(xs).all(-1)) | shifted(~torch.isfinite(ys))).cummax(dim=1).values
    return prefix | ~torch.isfinite(queries).all(-1)


def _prep_queries(xs: Tensor, queries: Tensor | None) -> Tensor:
    """The query of each position as float64: ``xs`` itself unless given."""
    if queries is None:
        return xs
    if queries.shape != xs.shape:
        raise ValueError(f"queries must have the shape of xs {tuple(xs.shape)}, got {tuple(queries.shape)}")
    return queries.detach().to("cpu", torch.float64)


def _clean(t: Tensor) -> Tensor:
    return torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)


def _batched(predictor: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Predictor:
    """Wrap a float64 batched predictor: clean non-finite inputs, then NaN the affected positions."""

    def wrapped(xs: Tensor, ys: Tensor, queries: Tensor | None = None) -> Tensor:
        xs, ys = _prep(xs, ys)
        qs = _prep_queries(xs, queries)
        bad = _nonfinite_positions(xs, ys, qs)
        preds = predictor(_clean(xs), _clean(ys), _clean(qs))
        preds = preds.masked_fill(bad, math.nan)
        preds[:, 0] = 0.0
        return preds.float()

    return wrapped


def _batched_prefix(fit_predict: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Predictor:
    """Turn ``fit_predict(X (B,i,d), y (B,i), x_query (B,d)) -> (B,)`` into a predictor.

    The loop over positions hands each fit only the prefix, which makes the
    prefix-only guarantee structural rather than a matter of masking.
    """

    def predictor(xs: Tensor, ys: Tensor, qs: Tensor) -> Tensor:
        preds = torch.zeros(ys.shape, dtype=torch.float64)
        for i in range(1, xs.shape[1]):
            preds[:, i] = fit_predict(xs[:, :i], ys[:, :i], qs[:, i])
        return preds

    return _batched(predictor)


def _zero(xs: Tensor, ys: Tensor, queries: Tensor | None = None) -> Tensor:
    return torch.zeros(ys.shape, dtype=torch.float32)


def _least_squares(X: Tensor, y: Tensor, xq: Tensor) -> Tensor:
    # The minimum-norm least-squares solution pinv(X) y, from LAPACK's gelsy (complete orthogonal
    # factorisation, rank cut at pinv's default rtol eps·max(k, d)): 4-6x faster than the SVD behind pinv,
    # equal to it to ~1e-12 relative on full-rank prefixes and as close as pinv's own SVD drivers agree
    # with each other on rank-deficient ones (docs/baselines.md). The driver is named: the default one
    # of other backends (gels) is not min-norm when k < d.
    rcond = torch.finfo(X.dtype).eps * max(X.shape[-2:])
    w = torch.linalg.lstsq(X, y.unsqueeze(-1), rcond=rcond, driver="gelsy").solution  # (B, d, 1)
    return (xq.unsqueeze(1) @ w).squeeze(-1).squeeze(-1)


def _ridge(X: Tensor, y: Tensor, xq: Tensor) -> Tensor:
    eye = torch.eye(X.shape[-1], dtype=X.dtype)
    gram = X.transpose(1, 2) @ X + RIDGE_ALPHA * eye
    w = _solve(gram, X.transpose(1, 2) @ y.unsqueeze(-1))
    return (xq.unsqueeze(1) @ w).squeeze(-1).squeeze(-1)


def _solve(a: Tensor, b: Tensor) -> Tensor:
    """a⁻¹ b per batch element, never raising: where ``a`` is singular to working precision (inputs scaled by
    1e9 make X^T X + αI numerically singular) the minimum-norm pinv solution replaces ``solve``'s."""
    x, info = torch.linalg.solve_ex(a, b)
    singular = info != 0
    if singular.any():
        x[singular] = torch.linalg.pinv(a[singular], hermitian=True) @ b[singular]
    return x


def _averaging(X: Tensor, y: Tensor, xq: Tensor) -> Tensor:
    w = (y.unsqueeze(-1) * X).mean(dim=1)  # (B, d)
    return (w * xq).sum(-1)


def _knn(k: int) -> Predictor:
    """k-nearest-neighbour mean over the prefix, all positions at once via a causal mask."""

    def predictor(xs: Tensor, ys: Tensor, qs: Tensor) -> Tensor:
        n = xs.shape[1]
        dist = torch.cdist(qs, xs)  # (B, n, n): query i vs example j
        future = torch.ones(n, n, dtype=torch.bool).triu()  # j >= i is not in the prefix of i
        dist = dist.masked_fill(future, math.inf)
        kk = min(k, n)
        d_near, idx = dist.topk(kk, dim=-1, largest=False)  # (B, n, kk)
        valid = torch.isfinite(d_near)  # fewer than k examples -> fewer valid neighbours
        y_near = torch.gather(ys.unsqueeze(1).expand(-1, n, -1), 2, idx)
        total = (y_near * valid).sum(-1)
        count = valid.sum(-1)
        return torch.where(count > 0, total / count.clamp(min=1), 0.0)

    return _batched(predictor)


def _prefix_fit(xs: Tensor, ys: Tensor, make_model: Callable[[], Any], queries: Tensor | None = None) -> Tensor:
    """Fit a fresh sklearn-style model per prompt and prefix; NaN where a fit fails.

    The one loop shared by all library baselines: position i is fitted on
    (xs[b, :i], ys[b, :i]) and predicts its query (xs[b, i] unless ``queries``).
    """
    xs64, ys64 = _prep(xs, ys)
    qs64 = _prep_queries(xs64, queries)
    bad = _nonfinite_positions(xs64, ys64, qs64).numpy()
    xs_np, ys_np, qs_np = xs64.numpy(), ys64.numpy(), qs64.numpy()
    B, n, _ = xs_np.shape
    preds = np.zeros((B, n), dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in range(B):
            for i in range(1, n):
                if bad[b, i]:  # same policy as the batched baselines (xgboost would read NaN as "missing")
                    preds[b, i] = np.nan
                    continue
                try:
                    model = make_model()
                    model.fit(xs_np[b, :i], ys_np[b, :i])
                    preds[b, i] = float(np.asarray(model.predict(qs_np[b, i : i + 1])).reshape(-1)[0])
                except Exception:  # noqa: BLE001 - any failed fit is recorded, not raised
                    preds[b, i] = np.nan
    return torch.from_numpy(preds).float()


def _workers(B: int, n: int) -> int:
    """Processes for the per-prompt fits: the job's thread budget (torch.get_num_threads(), which parallel
    launchers set to their share of the cores), never more than there are prompts, and 1 for small batches,
    where starting workers (~1 s) costs more than it saves."""
    if torch.cuda.is_available():  # xgboost then fits on the GPU, from this process
        return 1
    return max(1, min(torch.get_num_threads(), B, (B * n) // 256))


def _parallel_prefix_fit(xs: Tensor, ys: Tensor, make_model: Callable[[], Any], queries: Tensor | None = None) -> Tensor:
    """``_prefix_fit`` over prompts split among ``_workers`` processes (joblib): the same fits, the same numbers."""
    workers = _workers(xs.shape[0], xs.shape[1])
    if workers == 1:
        return _prefix_fit(xs, ys, make_model, queries)
    from joblib import Parallel, delayed

    parts = torch.arange(xs.shape[0]).tensor_split(workers)
    outs = Parallel(n_jobs=workers, backend="loky")(
        delayed(_prefix_fit)(xs[p], ys[p], make_model, None if queries is None else queries[p]) for p in parts)
    return torch.cat(outs)


def _content_key(*tensors: Tensor) -> str:
    """A digest of the tensors' values: the five Lasso strengths share one solve on the same prompts."""
    digest = hashlib.blake2b(digest_size=16)
    for t in tensors:
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


_LASSO_LAST: dict[str, Tensor] = {}  # content key -> (A, B, n) predictions of the last prompts solved


def _lasso_all(xs: Tensor, ys: Tensor, qs: Tensor) -> Tensor:
    """Every Lasso strength on these prompts at once (``solvers.lasso_predict``), remembered for the next call."""
    key = _content_key(xs, ys, qs)
    if key not in _LASSO_LAST:
        _LASSO_LAST.clear()
        preds, stats = solvers.lasso_predict(xs, ys, qs, [float(a) for a in LASSO_ALPHAS])
        if stats["unconverged"]:  # one line per call instead of scikit-learn's warning per problem
            logging.getLogger(__name__).warning(
                "lasso: %d of %d problems stopped above the duality-gap tolerance (%.0e of ||y||^2) after %d "
                "coordinate-descent sweeps; they keep their last iterate", stats["unconverged"], stats["problems"],
                solvers.LASSO_TOL, solvers.LASSO_MAX_SWEEPS)
        _LASSO_LAST[key] = preds
    return _LASSO_LAST[key]


def _lasso_batched(alpha: str) -> Predictor:
    """sklearn's Lasso(alpha, fit_intercept=False) solved exactly for all prompts and prefixes (icl.solvers)."""
    j = LASSO_ALPHAS.index(alpha)
    return _batched(lambda xs, ys, qs: _lasso_all(xs, ys, qs)[j])


class _Tree:
    """sklearn's DecisionTreeRegressor(max_depth, random_state=0) fitted on the float32 copy its input validation
    makes, with that validation skipped (``check_input=False``): the same tree, half the per-fit cost (~0.3 ms
    of ~0.6 ms at ≤ 100 points is validation). Non-finite float32 inputs raise, as the validation would."""

    def __init__(self, max_depth: int | None) -> None:
        from sklearn.tree import DecisionTreeRegressor

        self.model = DecisionTreeRegressor(max_depth=max_depth, random_state=0)

    @staticmethod
    def _x(X: np.ndarray) -> np.ndarray:
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        if not np.isfinite(X32).all():
            raise ValueError("non-finite input (float32)")
        return X32

    def fit(self, X: np.ndarray, y: np.ndarray) -> "_Tree":
        self.model.fit(self._x(X), np.ascontiguousarray(y, dtype=np.float64), check_input=False)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict(self._x(X), check_input=False)


class _XGB:
    """XGBRegressor(n_estimators=50, max_depth=4, learning_rate=0.3, tree_method="hist", n_jobs=1,
    random_state=0) as the booster it trains — ``xgboost.train`` on a DMatrix with the same parameters (the
    same predictions), without the scikit-learn wrapper's per-fit overhead. ~10 ms a fit at ≤ 100 points,
    nearly all of it XGBoost's own 50 rounds (docs/baselines.md); device="cuda" where a GPU is present (its
    hist method may differ from the CPU's in round-off)."""

    ROUNDS = 50

    def __init__(self) -> None:
        self.params = {"max_depth": 4, "learning_rate": 0.3, "tree_method": "hist", "nthread": 1, "verbosity": 0,
                       "seed": 0, "objective": "reg:squarederror",
                       "device": "cuda" if torch.cuda.is_available() else "cpu"}
        self.booster: Any = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> "_XGB":
        import xgboost

        self.booster = xgboost.train(self.params, xgboost.DMatrix(X, y, nthread=1), self.ROUNDS)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.booster.inplace_predict(X)


def _tree(max_depth: int | None) -> Predictor:
    return lambda xs, ys, queries=None: _parallel_prefix_fit(xs, ys, partial(_Tree, max_depth), queries)


def _xgboost(xs: Tensor, ys: Tensor, queries: Tensor | None = None) -> Tensor:
    return _parallel_prefix_fit(xs, ys, _XGB, queries)


def _nominal(xs: Tensor, ys: Tensor, queries: Tensor | None = None, task: Any = None) -> Tensor:
    """The task's nominal model at each query; it reads no context, so it predicts at k = 0 too."""
    return task.nominal(xs if queries is None else queries).float()


def _needs_task(xs: Tensor, ys: Tensor, queries: Tensor | None = None) -> Tensor:
    raise ValueError("baseline 'bayes' depends on the task's prior: call predict('bayes', ..., task=task)")


def bayes_predictor(task: Any) -> Predictor:
    """The Bayes-optimal (posterior-mean) predictor under ``task``'s training prior, where one is exact.

    linear: w ~ N(0, I), noiseless, so the posterior mean is the min-norm least-squares solution.
    noisy_linear: y = scale·w·x + N(0, σ²), so ridge with λ = (σ / scale)² (the ridge baseline's α = 1 at the
    defaults); σ = 0 is least squares; with ``renormalize`` there is none (a batch statistic rescales y).
    quadratic: linear in the features x ⊙ x, so min-norm least squares on them.
    sparse_linear: the exact mixture over supports (``solvers.sparse_bayes_predict``).
    Others raise ValueError saying why (``solvers.NO_EXACT_BAYES``).
    """
    name = task.name
    if name == "linear" or (name == "noisy_linear" and not task.renormalize and task.noise_std == 0):
        return BASELINES["least_squares"]
    if name == "noisy_linear" and not task.renormalize and task.scale != 0:
        lam = (task.noise_std / task.scale) ** 2
        return _batched(lambda xs, ys, qs: solvers.ridge_predict(xs, ys, qs, lam))
    if name == "quadratic":
        return _batched_prefix(lambda X, y, xq: _least_squares(X**2, y, xq**2))
    if name == "sparse_linear" and task.scale != 0:
        return _batched(lambda xs, ys, qs: solvers.sparse_bayes_predict(xs, ys, qs, task.sparsity, abs(task.scale)))
    why = solvers.NO_EXACT_BAYES.get("noisy_linear with renormalize" if name == "noisy_linear" else name,
                                     "none implemented")
    raise ValueError(f"no exact Bayes-optimal baseline for task {name!r}: {why}")


# slow: per-prompt fits (sklearn, xgboost, gd_2nn) whose cost grows with B * n; callers cap their prompts.
# per_output: fits each output coordinate on its own, so it also serves tasks with vector outputs (task.y_dim > 1).
BASELINES: Registry[Predictor] = Registry("baseline", "task.baselines")
BASELINES.add("zero", _zero, per_output=True)
BASELINES.add("bayes", _needs_task)  # per task: bayes_predictor
BASELINES.add("least_squares", _batched_prefix(_least_squares), per_output=True)
BASELINES.add("ridge", _batched_prefix(_ridge), per_output=True)
BASELINES.add("averaging", _batched_prefix(_averaging), per_output=True)
BASELINES.add("knn_3", _knn(3), per_output=True)
for _alpha in LASSO_ALPHAS:
    BASELINES.add(f"lasso_{_alpha}", _lasso_batched(_alpha))
BASELINES.add("tree_depth4", _tree(4), slow=True)
BASELINES.add("tree_unbounded", _tree(None), slow=True)
BASELINES.add("xgboost", _xgboost, slow=True)
BASELINES.add("gd_2nn", _batched(solvers.gd_2nn_predict), slow=True, per_output=True)
BASELINES.add("nominal", _nominal, task=True)
for _name, _weights in learners.linear_learners().items():
    if _name not in BASELINES:  # least_squares, ridge, averaging keep their own (tested) implementations
        BASELINES.add(_name, _batched(partial(learners.predict_linear, _weights)), per_output=True, linear=True)

def check_installed(name: str) -> None:
    """Raise (one line) if baseline ``name`` needs a library that is not installed (XGBoost is an extra)."""
    if name != "xgboost":
        return
    try:
        importlib.import_module("xgboost")
    except ImportError:
        raise ValueError("baseline 'xgboost' needs XGBoost: pip install -e '.[trees]' (or drop xgboost from "
                         "task.baselines / eval.baselines)") from None


def is_slow(name: str) -> bool:
    """True for per-prompt fits (trees, xgboost, gd_2nn) whose cost grows with B * n."""
    return bool(BASELINES.meta(name, "slow", False))


def skip_reason(name: str, task: Any) -> str | None:
    """Why baseline ``name`` cannot score ``task`` (None: it can): scalar-only fits on vector outputs, or a
    model-based baseline on a task without that model."""
    if BASELINES.meta(name, "task") and not hasattr(task, "nominal"):
        return f"task {task.name} has no nominal model"
    if task.y_dim > 1 and not BASELINES.meta(name, "per_output") and not BASELINES.meta(name, "task"):
        return f"it fits one scalar output and task {task.name} has y_dim = {task.y_dim}"
    return None


def _per_output(predictor: Predictor, xs: Tensor, ys: Tensor, queries: Tensor | None) -> Tensor:
    """A scalar predictor on each of the m output coordinates, as m more prompts: (B, n, m) -> (B, n, m).

    Prompt b's coordinate c becomes prompt b * m + c with the same inputs, so each fit sees only its own output."""
    batch, n, m = ys.shape
    flat = ys.permute(0, 2, 1).reshape(batch * m, n)
    rep = lambda t: t.repeat_interleave(m, dim=0)
    preds = predictor(rep(xs), flat) if queries is None else predictor(rep(xs), flat, rep(queries))
    return preds.reshape(batch, m, n).permute(0, 2, 1).contiguous()


def predict(name: str, xs: Tensor, ys: Tensor, queries: Tensor | None = None, task: Any = None) -> Tensor:
    """Predictions (B, n) float32 on CPU of baseline ``name``; position i sees only the prefix < i
    and its query (``queries[:, i]`` when given, else ``xs[:, i]``).

    Vector outputs ys (B, n, m) give (B, n, m), fitted per coordinate (``per_output`` baselines only);
    model-based baselines (``nominal``) and ``bayes`` (its prior) need the ``task``."""
    predictor = bayes_predictor(task) if name == "bayes" and task is not None else BASELINES[name]
    if BASELINES.meta(name, "task"):
        if task is None or not hasattr(task, "nominal"):
            raise ValueError(f"baseline '{name}' needs a task with a nominal model (the mujoco_* tasks)")
        return predictor(xs, ys, queries, task=task)
    if ys.ndim == 3:
        if not BASELINES.meta(name, "per_output"):
            raise ValueError(f"baseline '{name}' fits one scalar output; ys {tuple(ys.shape)} are vectors")
        return _per_output(predictor, xs, ys, queries)
    return predictor(xs, ys) if queries is None else predictor(xs, ys, queries)
