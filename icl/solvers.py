"""Batched solvers behind the per-prompt baselines: every prompt × prefix (× α) in one torch computation.

The reference implementations fit one library model per prompt and prefix (``baselines._prefix_fit``); at
1280 prompts × 41 positions × 5 Lasso strengths that is 262,000 scikit-learn fits. Here the same problems
are solved together:

* ``lasso_predict``: cyclic coordinate descent on the prefix Gram matrices, the algorithm and objective of
  scikit-learn's ``Lasso(fit_intercept=False)``, (1/(2k))‖y − Xw‖² + α‖w‖₁, with its duality-gap stop
  (gap ≤ ``tol``·‖y‖²), vectorised over problems; problems that converge leave the working set.
* ``gd_2nn_predict``: the 2-layer ReLU nets of ``baselines._gd_2nn`` for every position at once (masked
  full-batch losses; see its docstring for where the random streams differ from the loop).
* ``bayes_predict``: the Bayes-optimal (posterior-mean) prediction under a task's training prior where an
  exact form exists (``bayes_kind``).

Everything takes clean float64 ``xs`` (B, n, d), ``ys`` (B, n) and queries ``qs`` (B, n, d) — the callers in
``icl.baselines`` handle non-finite inputs and position 0 — and returns predictions (B, n), where position i
uses only ``xs[:, :i]``, ``ys[:, :i]`` and ``qs[:, i]``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from itertools import combinations

import torch
from torch import Tensor

# scikit-learn's defaults for Lasso; the stop is its duality gap, made tighter so that predictions agree with
# a fully converged solution to ~1e-6 relative (the old loop used tol = 1e-4, see docs/baselines.md).
LASSO_TOL = 1e-8
LASSO_MAX_SWEEPS = 10_000
LASSO_FIRST_SWEEPS = 60  # vectorised repair sweeps before the rest goes to scikit-learn's compiled descent (_sklearn_cd)
LASSO_CHECK_EVERY = 10  # sweeps between duality-gap checks


def prefix_grams(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """X^T X, X^T y and y^T y of every prefix: (B, n, d, d), (B, n, d), (B, n); index i = the first i points.

    Cumulative sums, so prefix i never sees a point at or after i (index 0 is the empty prefix).
    """
    outer = xs.unsqueeze(-1) * xs.unsqueeze(-2)  # (B, n, d, d)
    zero = lambda t: torch.zeros_like(t[:, :1])
    gram = torch.cat([zero(outer), outer[:, :-1]], 1).cumsum(1)
    xy = xs * ys.unsqueeze(-1)
    b = torch.cat([zero(xy), xy[:, :-1]], 1).cumsum(1)
    y2 = ys**2
    yy = torch.cat([zero(y2), y2[:, :-1]], 1).cumsum(1)
    return gram, b, yy


def _duality_gap(G: Tensor, b: Tensor, yy: Tensor, lam: Tensor, w: Tensor) -> Tensor:
    """scikit-learn's Lasso duality gap (``enet_coordinate_descent``, l2 = 0) from Gram quantities.

    Primal 0.5‖y − Xw‖² + λ‖w‖₁ with λ = α·k (scikit-learn scales α by the number of samples); the dual
    point is the residual rescaled into the feasible set ‖X^T θ‖∞ ≤ λ.
    """
    # w (..., d) against G (..., d, d), G symmetric; with targets (N, T, d) against G (N, 1, d, d) one bmm instead
    # of a broadcast matmul, which copies G for every target (20x slower)
    Gw = torch.bmm(w, G.squeeze(1)) if G.ndim == w.ndim + 1 and G.shape[1] == 1 else (G @ w.unsqueeze(-1)).squeeze(-1)
    wb = (w * b).sum(-1)
    r2 = (yy - 2 * wb + (w * Gw).sum(-1)).clamp(min=0)  # ‖y − Xw‖²
    dual_norm = (b - Gw).abs().amax(-1)  # ‖X^T r‖∞
    const = torch.where(dual_norm > lam, lam / dual_norm.clamp(min=1e-300), torch.ones_like(lam))
    return 0.5 * r2 * (1 + const**2) + lam * w.abs().sum(-1) - const * (yy - wb)


def _cd_sweeps(G: Tensor, b: Tensor, lam: Tensor, w: Tensor, sweeps: int) -> Tensor:
    """``sweeps`` cyclic coordinate-descent passes over all coordinates, every problem at once (in place).

    w_j ← S(b_j − (Gw)_j + G_jj w_j, λ) / G_jj, S the soft threshold; a coordinate with G_jj = 0 (a zero
    column) stays 0, as in scikit-learn.
    """
    diag = torch.diagonal(G, dim1=-2, dim2=-1)
    live = diag > 0
    inv = torch.where(live, 1.0 / diag.clamp(min=1e-300), 0.0)
    for _ in range(sweeps):
        for j in range(G.shape[-1]):
            rho = b[:, j] - (G[:, j] * w).sum(-1) + diag[:, j] * w[:, j]
            w[:, j] = torch.sign(rho) * (rho.abs() - lam).clamp(min=0) * inv[:, j]
    return w


def _polish(G: Tensor, b: Tensor, lam: Tensor, w: Tensor) -> Tensor:
    """The exact Lasso solution if the support and signs of ``w`` are the optimal ones: G_AA w_A = b_A − λ s_A.

    Coordinate descent finds the support long before its values converge (small α with k ≤ d takes it
    thousands of sweeps: two correlated columns trade weight geometrically slowly). The candidate is only
    accepted where its own duality gap certifies it (``_cd_solve``); a singular system gives NaN, rejected.
    """
    on = w != 0
    eye = torch.diag_embed((~on).to(G.dtype))
    system = G * (on.unsqueeze(-1) & on.unsqueeze(-2)) + eye
    rhs = torch.where(on, b - lam.unsqueeze(-1) * torch.sign(w), 0.0)
    sol, info = torch.linalg.solve_ex(system, rhs)
    return torch.where((info == 0).unsqueeze(-1) & on, sol, 0.0)


def _cd_solve(G: Tensor, b: Tensor, yy: Tensor, lam: Tensor, w: Tensor, tol: float,
              max_sweeps: int) -> tuple[Tensor, Tensor, Tensor]:
    """Coordinate descent until each problem's gap ≤ tol·yy (or ``max_sweeps``); converged ones leave the set.

    At every check a problem whose iterate is not yet certified tries the exact solution on its current
    support (``_polish``) and keeps it if that one's duality gap is within tolerance. Returns the solutions,
    a converged mask and the sweeps spent. Problems are (N, d, d), (N, d), (N,), (N,).
    """
    out, done = w.clone(), torch.zeros(len(w), dtype=torch.bool)
    sweeps = torch.zeros(len(w), dtype=torch.long)
    idx = torch.arange(len(w))
    G, b, yy, lam, w = G.clone(), b.clone(), yy.clone(), lam.clone(), w.clone()
    spent = 0
    while len(idx) and spent < max_sweeps:
        step = min(LASSO_CHECK_EVERY, max_sweeps - spent)
        _cd_sweeps(G, b, lam, w, step)
        spent += step
        ok = _duality_gap(G, b, yy, lam, w) <= tol * yy
        if not ok.all():
            cand = _polish(G[~ok], b[~ok], lam[~ok], w[~ok])
            good = _duality_gap(G[~ok], b[~ok], yy[~ok], lam[~ok], cand) <= tol * yy[~ok]
            fix = (~ok).nonzero().squeeze(-1)[good]
            w[fix] = cand[good]
            ok[fix] = True
        out[idx], sweeps[idx] = w, spent
        done[idx[ok]] = True
        keep = ~ok
        idx, G, b, yy, lam, w = idx[keep], G[keep], b[keep], yy[keep], lam[keep], w[keep]
    return out, done, sweeps


def _masked_solve(G: Tensor, on: Tensor, rhs: Tensor, compact: bool = True) -> Tensor:
    """Solve G_AA x_A = rhs_A on each problem's set A (``on``), x = 0 off A; NaN where G_AA is singular.

    Problems are grouped by |A| and each group solves its compact |A| × |A| systems (gathered active-first):
    a solve costs |A|³, and most active sets are far smaller than d. The same systems as solving the
    d × d one padded with the identity off A (``compact=False``), so the same solutions to round-off."""
    if not compact:
        system = G.masked_fill(~(on.unsqueeze(-1) & on.unsqueeze(-2)), 0.0)  # one pass: ~8x cheaper than G * mask
        system.diagonal(dim1=-2, dim2=-1).add_(~on)
        sol, info = torch.linalg.solve_ex(system, torch.where(on, rhs, 0.0))
        return torch.where(on, sol, 0.0).masked_fill((info != 0).unsqueeze(-1), math.nan)
    N, d = on.shape
    out = torch.zeros_like(rhs)
    count = on.sum(-1)
    order = torch.argsort((~on).to(torch.int8), dim=-1, stable=True)  # active columns first, in index order
    for K in count.unique().tolist():
        if K == 0:
            continue
        rows = (count == K).nonzero().squeeze(-1)
        idx = order[rows, :K]  # (m, K) the active columns of each problem
        sub = G[rows].gather(1, idx.unsqueeze(-1).expand(-1, -1, d)).gather(2, idx.unsqueeze(1).expand(-1, K, -1))
        sol, info = torch.linalg.solve_ex(sub, rhs[rows].gather(1, idx))
        out[rows] = torch.zeros(len(rows), d, dtype=rhs.dtype).scatter_(1, idx, sol).masked_fill_(
            (info != 0).unsqueeze(-1), math.nan)
    return out


def _homotopy_step(G: Tensor, rows: Tensor, w: Tensor, on: Tensor, c: Tensor, lam: Tensor, lams: Tensor,
                   out: Tensor, compact: bool = True) -> None:
    """One kink-to-kink step of the problems ``rows`` (G already gathered), updating the state in place."""
    tiny = 1e-12
    wr, onr, cr, lr, targets = w[rows], on[rows], c[rows], lam[rows], lams[rows]
    u = torch.nan_to_num(_masked_solve(G, onr, torch.sign(cr) * onr, compact), nan=0.0)  # dw / d(−λ) on A
    a = (G @ u.unsqueeze(-1)).squeeze(-1)  # how fast each correlation falls
    lam_col = lr.unsqueeze(-1)
    g1 = torch.where((1 - a).abs() > tiny, (lam_col - cr) / (1 - a), math.inf)  # c_j(γ) = +(λ − γ)
    g2 = torch.where((1 + a).abs() > tiny, (lam_col + cr) / (1 + a), math.inf)  # c_j(γ) = −(λ − γ)
    join = torch.minimum(g1.where(g1 > tiny, math.inf), g2.where(g2 > tiny, math.inf)).masked_fill(onr, math.inf)
    drop = (-wr / u.where(u != 0, 1.0)).where(onr & (u != 0), math.inf)
    drop = drop.where(drop > tiny, math.inf)
    gj, jj = join.min(-1)
    gd, jd = drop.min(-1)
    gamma = torch.minimum(torch.minimum(gj, gd), lr)
    passed = (targets < lam_col) & (targets >= (lr - gamma).unsqueeze(-1))  # targets on this segment
    at = wr.unsqueeze(1) + (lam_col - targets).unsqueeze(-1) * u.unsqueeze(1)
    out[rows] = torch.where(passed.unsqueeze(-1), at, out[rows])
    wr = wr + gamma.unsqueeze(-1) * u
    idx = torch.arange(len(rows))
    joins = (gj <= gd) & (gj < lr)
    drops = (gd < gj) & (gd < lr)
    onr[idx[joins], jj[joins]] = True
    onr[idx[drops], jd[drops]] = False
    wr[idx[drops], jd[drops]] = 0.0
    w[rows], on[rows], c[rows], lam[rows] = wr, onr, cr - gamma.unsqueeze(-1) * a, lr - gamma


def lasso_homotopy(G: Tensor, b: Tensor, lams: Tensor, max_steps: int, compact: bool = True) -> Tensor:
    """The Lasso path (LARS-Lasso homotopy) of every problem, read off at its targets λ: (N, T, d).

    ``lams`` (N, T) must be in decreasing order per row. From w = 0 at λ = ‖b‖∞ the solution is piecewise
    linear in λ: on an active set A with signs s it moves along u = G_AA⁻¹ s_A while λ falls, until an
    inactive correlation reaches the boundary (it joins) or an active coefficient hits zero (it leaves).
    All problems step together; each takes as many steps as its path has kinks above its smallest target
    (at most ~2·min(k, d) for these problems). The iterates are certified, and if needed repaired, by
    ``lasso_solve``.
    """
    N, d = b.shape
    T = lams.shape[1]
    w = torch.zeros(N, d, dtype=b.dtype)
    on = torch.zeros(N, d, dtype=torch.bool)
    out = torch.zeros(N, T, d, dtype=b.dtype)
    c = b.clone()
    lam = c.abs().amax(-1)
    first = c.abs().argmax(-1)
    on[torch.arange(N), first] = lam > 0
    rows = torch.arange(N)  # the problems still on their path (the others have passed every target)
    for _ in range(max_steps):
        rows = rows[lam[rows] > lams[rows, -1]]
        if not len(rows):
            break
        _homotopy_step(G[rows], rows, w, on, c, lam, lams, out, compact)
    return out


def _sklearn_cd(G: Tensor, b: Tensor, yy: Tensor, lam: Tensor, w: Tensor, tol: float, max_sweeps: int) -> Tensor:
    """scikit-learn's compiled cyclic coordinate descent on Gram quantities (``enet_coordinate_descent_gram``,
    what ``Lasso`` runs with a precomputed Gram), one problem at a time from ``w``; the same duality-gap stop
    (it reads y only through ‖y‖², so y is passed as the one-entry vector √yy). Problems (m, d, d), (m, d), (m,),
    (m,), (m, d) float64."""
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model._cd_fast import enet_coordinate_descent_gram

    out = w.clone()
    rng = np.random.RandomState(0)  # unused: cyclic order
    for i in range(len(w)):
        wi = np.ascontiguousarray(w[i].numpy(), dtype=np.float64).copy()
        y = np.sqrt(np.array([max(float(yy[i]), 0.0)]))
        with warnings.catch_warnings():  # lasso_solve counts these ("unconverged"); one warning per problem is noise
            warnings.simplefilter("ignore", ConvergenceWarning)
            sol = enet_coordinate_descent_gram(wi, float(lam[i]), 0.0, np.ascontiguousarray(G[i].numpy()),
                                               np.ascontiguousarray(b[i].numpy()), y, max_sweeps, tol, rng, False,
                                               False)
        out[i] = torch.from_numpy(np.asarray(sol[0]))
    return out


def lasso_solve(G: Tensor, b: Tensor, yy: Tensor, lams: Tensor, tol: float = LASSO_TOL,
                max_sweeps: int = LASSO_MAX_SWEEPS) -> tuple[Tensor, dict[str, int]]:
    """Lasso solutions (N, T, d) of 0.5 wᵀGw − bᵀw + λ‖w‖₁ at each problem's targets ``lams`` (N, T, decreasing).

    The homotopy gives each solution's support and signs; the coefficients are then solved exactly on that
    support, and every solution must pass scikit-learn's stop, duality gap ≤ ``tol``·yy. Those that do not
    (ties or round-off on the path) continue by coordinate descent from there.
    """
    N, T = lams.shape
    w = lasso_homotopy(G, b, lams, max_steps=4 * b.shape[-1] + 20)
    gap = _duality_gap(G.unsqueeze(1), b.unsqueeze(1), yy.unsqueeze(1), lams, w)  # broadcast over targets
    n_i, t_i = (gap > tol * yy.unsqueeze(1)).nonzero(as_tuple=True)
    repaired = unconverged = 0
    if len(n_i):  # round-off on a long path: re-solve on its support, then coordinate descent if need be
        Gb, bb, yb, lb, wb = G[n_i], b[n_i], yy[n_i], lams[n_i, t_i], w[n_i, t_i]
        # first the path once more with the padded d × d solves: other round-off, which on ill-conditioned
        # prefixes (skewed inputs, k < d) often passes where the first did not, and is far cheaper than descent
        again = lasso_homotopy(Gb, bb, lams[n_i], max_steps=4 * b.shape[-1] + 20, compact=False)[
            torch.arange(len(n_i)), t_i]
        wb = torch.where((_duality_gap(Gb, bb, yb, lb, again) < _duality_gap(Gb, bb, yb, lb, wb)).unsqueeze(-1),
                         again, wb)
        exact = torch.nan_to_num(_masked_solve(Gb, wb != 0, bb - lb.unsqueeze(-1) * torch.sign(wb)), nan=0.0)
        better = _duality_gap(Gb, bb, yb, lb, exact) < _duality_gap(Gb, bb, yb, lb, wb)
        wb = torch.where(better.unsqueeze(-1), exact, wb)
        # a few vectorised sweeps (each check also tries the exact solution on the current support), then
        # scikit-learn's own compiled Gram coordinate descent for whatever is left: a long descent in torch is
        # one Python-level op per coordinate and sweep, ~1000x the compiled loop's cost on a handful of problems
        first = min(LASSO_FIRST_SWEEPS, max_sweeps)
        wb, done, _ = _cd_solve(Gb, bb, yb, lb, wb, tol, first)
        if not done.all() and max_sweeps > first:
            rest = (~done).nonzero().squeeze(-1)
            wb[rest] = _sklearn_cd(Gb[rest], bb[rest], yb[rest], lb[rest], wb[rest], tol, max_sweeps - first)
            done[rest] = _duality_gap(Gb[rest], bb[rest], yb[rest], lb[rest], wb[rest]) <= tol * yb[rest]
        w[n_i, t_i] = wb
        repaired, unconverged = len(n_i), int((~done).sum())
    return w, {"problems": N * T, "repaired": repaired, "unconverged": unconverged}


def lasso_predict(xs: Tensor, ys: Tensor, qs: Tensor, alphas: Sequence[float], tol: float = LASSO_TOL,
                  max_sweeps: int = LASSO_MAX_SWEEPS, chunk: int = 8192) -> tuple[Tensor, dict[str, int]]:
    """Lasso predictions (A, B, n) for every α, prompt and prefix, and solver statistics.

    Each (α, prompt, prefix i ≥ 1) is scikit-learn's ``Lasso(alpha, fit_intercept=False)`` on (xs[:i], ys[:i])
    predicting qs[i], i.e. λ = α·i in ``lasso_solve``'s unscaled form. Problems are solved ``chunk`` Gram
    matrices at a time (memory: chunk·d² float64 a few times over).
    """
    B, n, d = xs.shape
    order = sorted(range(len(alphas)), key=lambda j: -float(alphas[j]))
    gram, b, yy = (t[:, 1:].reshape(B * (n - 1), *t.shape[2:]) for t in prefix_grams(xs, ys))
    k = torch.arange(1, n, dtype=xs.dtype).repeat(B)
    lams = k.unsqueeze(-1) * torch.tensor([float(alphas[j]) for j in order], dtype=xs.dtype)
    q = qs[:, 1:].reshape(B * (n - 1), d)
    preds = torch.zeros(len(alphas), B * (n - 1), dtype=xs.dtype)
    stats = {"problems": 0, "repaired": 0, "unconverged": 0}
    for s in range(0, len(k), chunk):
        sl = slice(s, s + chunk)
        w, st = lasso_solve(gram[sl], b[sl], yy[sl], lams[sl], tol, max_sweeps)
        preds[order, sl] = (w * q[sl].unsqueeze(1)).sum(-1).T
        stats = {key: stats[key] + st[key] for key in stats}
    out = torch.zeros(len(alphas), B, n, dtype=xs.dtype)
    out[:, :, 1:] = preds.reshape(len(alphas), B, n - 1)
    return out, stats


def _uniform(shape: tuple[int, ...], fan_in: int, gen: torch.Generator) -> Tensor:
    bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init, drawn as baselines._gd_2nn draws it
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def _position_groups(n: int, batch: int, hidden: int, batch_size: int, budget: int) -> list[range]:
    """Consecutive positions 1 … n−1 in groups whose activations (prompts × padded prefix × positions × hidden)
    stay within ``budget`` floats. Each group is padded to its longest prefix, so grouping neighbours wastes
    little; a prefix longer than one minibatch (i > ``batch_size``) draws its own points and is a group alone."""
    groups, start = [], 1
    while start < n:
        end = start + 1
        while (end < n and end <= batch_size
               and batch * min(end, batch_size) * (end + 1 - start) * hidden <= budget):
            end += 1
        groups.append(range(start, end))
        start = end
    return groups


def _init_group(group: range, B: int, d: int, hidden: int, gen: torch.Generator) -> list[Tensor]:
    """The group's initial weights in the loop's draw order (per position: w1, b1, w2, b2), one net per
    (prompt, position): W1 (B, G, d + 1, h) = [w1; b1] (the bias is a weight on a ones column of the inputs, so
    it needs no pass of its own), w2 (B, G, h), b2 (B, G)."""
    drawn = [(_uniform((B, d, hidden), d, gen), _uniform((B, 1, hidden), d, gen),
              _uniform((B, hidden, 1), hidden, gen), _uniform((B, 1, 1), hidden, gen)) for _ in group]
    return [torch.stack([torch.cat([w1, b1], 1) for w1, b1, _, _ in drawn], 1),
            torch.stack([w2.squeeze(-1) for _, _, w2, _ in drawn], 1), torch.stack([b2.reshape(B) for *_, b2 in drawn], 1)]


def _flat_views(flat: Tensor, N: int, d1: int, hidden: int) -> list[Tensor]:
    """W1 (N, d1, h), w2 (N, h, 1), b2 (N, 1, 1): contiguous views of one flat buffer [W1 | w2 | b2] of N nets,
    so that Adam is one fused pass over all of them and the gradients are written straight into theirs."""
    a, b = N * d1 * hidden, N * (d1 + 1) * hidden
    return [flat[:a].view(N, d1, hidden), flat[a:b].view(N, hidden, 1), flat[b:].view(N, 1, 1)]


def _gradients(Xe: Tensor, XeT: Tensor, y: Tensor, scale: Tensor, params: list[Tensor], grads: list[Tensor],
               H: Tensor) -> None:
    """Gradients of Σ_nets Σ_points scale·½(out − y)² with respect to W1, w2, b2, written into ``grads``.

    Nets are the batch: Xe (N, m, d + 1) inputs with a ones column and XeT its contiguous transpose, y and
    scale (N, 1, m), H (N, m, h) a workspace. Written out by hand (the same numbers as autograd,
    tests/test_solvers.py) so that the (N, m, h) hidden layer, where the time goes, is touched as little as
    possible: one product writes it, ReLU in place, one product reads it for the output, it becomes ReLU's
    mask M in place, and one product reads it for A = Σ_m (x r)ᵀ M, of which both remaining gradients are cheap
    functions: dW1 = A ⊙ w2 (r·w2 is never materialised) and dw2 = Σ_m r·relu(z) = Σ_k W1 ⊙ A (z = x·W1 where
    M = 1; no second read of H). The output is w2ᵀ·Hᵀ, (1 × h)·(h × m): H·w2 as a one-column bmm or a
    broadcast multiply-sum is 2–8× slower here.
    """
    W1, w2, b2 = params
    gW1, gw2, gb2 = grads
    w2t = w2.transpose(1, 2)  # (N, 1, h)
    torch.bmm(Xe, W1, out=H).relu_()
    r = torch.baddbmm(b2, w2t, H.transpose(1, 2)).sub_(y).mul_(scale)  # d loss / d out, (N, 1, m)
    torch.sum(r, -1, keepdim=True, out=gb2)
    torch.bmm(XeT * r, H.gt_(0), out=gW1)  # A: H > 0 is ReLU's mask (z > 0), in place
    torch.sum(W1 * gW1, 1, out=gw2.view(gw2.shape[:2]))
    gW1.mul_(w2t)


def _with_ones(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones_like(x[..., :1])], -1)


def _repeat_nets(t: Tensor, G: int) -> Tensor:
    """(b, m, k) per prompt → (b·G, m, k), one copy per net of the prompt (nets are the batch of every product)."""
    return t.unsqueeze(1).expand(t.shape[0], G, *t.shape[1:]).reshape(t.shape[0] * G, *t.shape[1:])


def _train_group(params: list[Tensor], xs: Tensor, ys: Tensor, qs: Tensor, group: range, lr: float, steps: int,
                 batch_size: int, minibatch_gen: torch.Generator) -> Tensor:
    """Train the nets of positions ``group`` for prompts xs (b, n, d) from ``params`` (``_init_group``'s layout,
    b prompts); their predictions (b, G). Adam (torch's defaults) is ``torch._fused_adam_``, what
    ``torch.optim.Adam(fused=True)`` runs, called on one flat buffer without the optimizer's per-step Python."""
    b, _, d = xs.shape
    G, pad, hidden = len(group), min(group[-1], batch_size), params[1].shape[-1]
    N = b * G
    flat = torch.cat([p.reshape(-1) for p in params])
    grad, exp_avg, exp_avg_sq = torch.empty_like(flat), torch.zeros_like(flat), torch.zeros_like(flat)
    step = torch.zeros((), dtype=torch.float32)
    weights, grads = _flat_views(flat, N, d + 1, hidden), _flat_views(grad, N, d + 1, hidden)
    sizes = torch.tensor(list(group), dtype=torch.float32)
    mask = (torch.arange(pad).unsqueeze(-1) < sizes).float()  # (pad, G): point j is in prefix i
    scale = (mask * (2 / sizes.clamp(max=batch_size))).T  # (G, pad): d(mean squared error)/d(out) per point
    scale = scale.expand(b, G, pad).reshape(N, 1, pad)
    H = torch.empty(N, pad, hidden)
    Xe, y = _repeat_nets(_with_ones(xs[:, :pad]), G), _repeat_nets(ys[:, :pad].unsqueeze(1), G)
    XeT = Xe.transpose(1, 2).contiguous()
    for _ in range(steps):
        if group[0] > batch_size:  # a group alone: a fresh minibatch of its prefix every step
            sel = torch.randperm(group[0], generator=minibatch_gen)[:batch_size]
            Xe, y = _with_ones(xs[:, sel]), ys[:, sel].unsqueeze(1)
            XeT = Xe.transpose(1, 2).contiguous()
        _gradients(Xe, XeT, y, scale, weights, grads, H)
        step += 1
        torch._fused_adam_([flat], [grad], [exp_avg], [exp_avg_sq], [], [step], lr=lr, beta1=0.9, beta2=0.999,
                           weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
    W1, w2, b2 = weights
    xq = _with_ones(qs[:, list(group)]).reshape(N, 1, d + 1)  # net g predicts only its own query
    return torch.baddbmm(b2, torch.bmm(xq, W1).relu_(), w2).view(b, G)


def gd_2nn_predict(xs: Tensor, ys: Tensor, qs: Tensor, hidden: int = 100, lr: float = 5e-3, steps: int = 100,
                   batch_size: int = 100, seed: int = 0, budget: int = 1 << 18, block: int = 16) -> Tensor:
    """``baselines._gd_2nn`` (a fresh 2-layer ReLU net per prompt and position, Adam, ``steps`` steps) with the
    nets of many positions trained together: predictions (B, n) float32.

    The nets of a group of positions see the same points (prefixes of one prompt), so they are trained as one
    batch of matrix products; each net's loss is the mean squared error over its own prefix (a mask over
    the group's padded prefix), so its gradient, and Adam's elementwise update, are those of training it
    alone. Initial weights are drawn from ``seed`` in the loop's order, so when every prefix fits in one
    minibatch (i ≤ ``batch_size``, e.g. n ≤ 101 points) the nets start from the loop's very weights and end
    within float round-off of it. Longer prefixes draw their minibatches from a second stream: the loop
    interleaves those draws with the initial weights of later positions, which cannot be reproduced out of
    order, so there the result equals the loop's in distribution, not draw for draw.
    """
    with torch.no_grad():
        xs32, ys32, qs32 = (t.detach().float() for t in (xs, ys, qs))
        B, n, d = xs32.shape
        gen = torch.Generator().manual_seed(seed)
        minibatch_gen = torch.Generator().manual_seed(seed * 1_000_003 + 1)
        preds = torch.zeros(B, n)
        for group in _position_groups(n, min(B, block), hidden, batch_size, budget):
            drawn = _init_group(group, B, d, hidden, gen)
            for b0 in range(0, B, block):  # prompts are independent: blocks keep each step's tensors in cache
                rows = slice(b0, b0 + block)
                preds[rows, list(group)] = _train_group(
                    [p[rows] for p in drawn], xs32[rows], ys32[rows], qs32[rows], group, lr, steps,
                    batch_size, minibatch_gen)
    return preds


# --- Bayes-optimal predictors under a task's training prior -------------------------------------------------
# The posterior mean of f(x_query) minimises the expected squared error; where it has an exact form it is
# computed here (icl.baselines.bayes_predictor picks the one for a task). Tasks without one, and why:
NO_EXACT_BAYES: dict[str, str] = {
    "linear_classification": "the posterior over w given signs is a Gaussian cut by k half-spaces; P(sign(w·x) "
                             "= +1 | data) is a polytope integral with no closed form",
    "relu_2nn": "the posterior over the network weights has no closed form (it is not Gaussian in W1)",
    "relu_3nn": "as relu_2nn",
    "decision_tree": "exact in principle (a sum over the d^(2^depth - 1) coordinate choices, factorising down "
                     "the tree), not implemented",
    "random_forest": "a sum over n_trees × that of decision_tree, not implemented",
    "noisy_linear with renormalize": "labels are rescaled by a statistic of the whole training batch, not a "
                                     "property of one prompt",
}
SPARSE_NOISE_FLOOR = 1e-4  # noise std (× the prior std) assumed for noiseless sparse prompts: see sparse_bayes_predict


def ridge_predict(xs: Tensor, ys: Tensor, qs: Tensor, lam: float) -> Tensor:
    """(Xᵀ X + λ I)⁻¹ Xᵀ y of every prefix at once (λ > 0): the posterior mean for w ~ N(0, I), noise var λ."""
    B, n, d = xs.shape
    gram, b, _ = prefix_grams(xs, ys)
    w = torch.linalg.solve(gram + lam * torch.eye(d, dtype=xs.dtype), b.unsqueeze(-1)).squeeze(-1)
    return (w * qs).sum(-1)


def _small_spd_solve(A: list[list[Tensor | None]], rhs: Tensor) -> tuple[Tensor, Tensor]:
    """Solve A x = rhs and log det A for many tiny SPD matrices given entry-wise (A[i][j], j ≤ i: a tensor over
    the batch; rhs (..., s)): Cholesky written out over the s ≤ ~5 entries, so each step is one vectorised op over
    millions of systems (every support of every prompt and prefix) instead of one tiny LAPACK call each."""
    s = len(A)
    L: list[list[Tensor | None]] = [[None] * s for _ in range(s)]
    for i in range(s):
        for j in range(i + 1):
            acc = A[i][j] - sum((L[i][m] * L[j][m] for m in range(j)), torch.zeros_like(A[i][j]))
            L[i][j] = acc.clamp(min=1e-300).sqrt() if i == j else acc / L[j][j]
    z: list[Tensor] = []
    for i in range(s):  # L z = rhs
        z.append((rhs[..., i] - sum((L[i][m] * z[m] for m in range(i)), torch.zeros_like(rhs[..., i]))) / L[i][i])
    x: list[Tensor] = [torch.zeros_like(z[0])] * s
    for i in reversed(range(s)):  # Lᵀ x = z
        x[i] = (z[i] - sum((L[m][i] * x[m] for m in range(i + 1, s)), torch.zeros_like(z[i]))) / L[i][i]
    logdet = 2 * sum(torch.log(L[i][i]) for i in range(s))
    return torch.stack(x, -1), logdet


def _support_posterior(G: Tensor, b: Tensor, yy: Tensor, q: Tensor, sup: Tensor, rho: float, sigma: float,
                       keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Posterior-mean predictions (m,) and log p(S | data) (m, C) over supports ``sup`` (m, C, s) per problem.

    G, b, yy, q: (m, d, d), (m, d), (m,), (m, d) prefix Gram quantities and queries; ``keep`` (m, C) masks
    supports out (their posterior weight is zero)."""
    m, C, s = sup.shape
    d = G.shape[-1]
    shared = sup.stride(0) == 0  # every problem has the same supports (the full enumeration): one index for all

    def pick(t: Tensor, index: Tensor) -> Tensor:  # t (m, D) at index (m, C): gathers, not advanced indexing
        return t.index_select(1, index[0]) if shared else t.gather(1, index)

    Gf = G.reshape(m, d * d)
    # the lower triangle only: the Cholesky below never reads the upper one
    blocks = [[pick(Gf, sup[..., i] * d + sup[..., j]) + (rho if i == j else 0.0) if j <= i else None
               for j in range(s)] for i in range(s)]
    bS = torch.stack([pick(b, sup[..., i]) for i in range(s)], -1)  # (m, C, s)
    qS = torch.stack([pick(q, sup[..., i]) for i in range(s)], -1)
    w, logdet = _small_spd_solve(blocks, bS)
    logp = -0.5 * logdet - (yy.unsqueeze(-1) - (bS * w).sum(-1)) / (2 * sigma**2)
    if keep is not None:
        logp = logp.masked_fill(~keep, -math.inf)
    return (torch.softmax(logp, -1) * (w * qS).sum(-1)).sum(-1), logp


SPARSE_PRUNE = 50.0  # supports this far (in log posterior) below the best at k = s + 1 are dropped for larger k


def sparse_bayes_predict(xs: Tensor, ys: Tensor, qs: Tensor, sparsity: int, prior_std: float = 1.0,
                         noise_std: float = 0.0, chunk: int = 1 << 16) -> Tensor:
    """The posterior mean of w·x_query for w = prior_std · (g ⊙ 1_S), g ~ N(0, I_d), S a uniformly random
    support of size ``sparsity`` (the sparse_linear prior at evaluation, all d coordinates active).

    p(S | data) ∝ N(y; 0, prior_std² X_S X_Sᵀ + σ² I) and E[w_S | S, data] = (X_Sᵀ X_S + ρ I)⁻¹ X_Sᵀ y with
    ρ = σ² / prior_std², both from the s × s prefix Gram blocks: log p(S | data) = −½ log det(X_Sᵀ X_S + ρ I)
    − (yᵀy − b_Sᵀ w_S) / (2σ²) + const. All C(d, s) supports are enumerated (1140 at d = 20, s = 3).
    Noiseless prompts (σ = 0) use σ = ``SPARSE_NOISE_FLOOR`` · prior_std: a wrong support then needs a
    residual below ~1e-4 of the signal to keep any weight, so this is the σ → 0 limit to that accuracy (with
    k ≤ s every support interpolates and the weights are the Gaussian evidence of X_S X_Sᵀ).

    Noiseless, a support's residual never falls as points are added, so supports more than ``SPARSE_PRUNE``
    below the best at k = s + 1 stay negligible (their weight < e^-50 of the best, unless the log-det term
    moved by as much): beyond that prefix only the survivors (almost always the true support alone) are
    evaluated. From k ≥ d on, w is determined by the data and the prediction is least squares exactly.
    """
    B, n, d = xs.shape
    s = min(sparsity, d)
    sigma = noise_std if noise_std > 0 else SPARSE_NOISE_FLOOR * prior_std
    rho = (sigma / prior_std) ** 2
    gram, b, yy = prefix_grams(xs, ys)
    supports = torch.tensor(list(combinations(range(d), s)), dtype=torch.long)  # (C, s)
    C = len(supports)
    preds = torch.zeros(B, n, dtype=xs.dtype)
    noisy = noise_std > 0
    full_until = n if noisy else min(n, s + 2, d)  # positions 1 … s + 1 see every support
    step = max(1, chunk // C)
    logp_last = None
    for i in range(1, full_until):
        for start in range(0, B, step):
            rows = slice(start, start + step)
            m = len(range(B)[rows])
            pred, logp = _support_posterior(gram[rows, i], b[rows, i], yy[rows, i], qs[rows, i],
                                            supports.expand(m, C, s), rho, sigma)
            preds[rows, i] = pred
            if i == full_until - 1 and not noisy:
                logp_last = logp if start == 0 else torch.cat([logp_last, logp])
    if logp_last is not None and full_until < min(n, d):
        alive = logp_last >= logp_last.amax(-1, keepdim=True) - SPARSE_PRUNE
        K = int(alive.sum(-1).max())
        top = logp_last.topk(K, dim=-1)
        sup = supports[top.indices]  # (B, K, s) the surviving supports of each prompt
        keep = top.values >= logp_last.amax(-1, keepdim=True) - SPARSE_PRUNE
        for i in range(full_until, min(n, d)):
            preds[:, i] = _support_posterior(gram[:, i], b[:, i], yy[:, i], qs[:, i], sup, rho, sigma, keep)[0]
    k = torch.arange(n).repeat(B)
    gram, b, q = gram.reshape(B * n, d, d), b.reshape(B * n, d), qs.reshape(B * n, d)
    preds = preds.reshape(B * n)
    exact = ((k >= d) & (noise_std == 0)).nonzero().squeeze(-1)
    if len(exact):  # k ≥ d noiseless: the unique interpolant
        w = torch.linalg.solve(gram[exact], b[exact].unsqueeze(-1)).squeeze(-1)
        preds[exact] = (w * q[exact]).sum(-1)
    return preds.reshape(B, n)
