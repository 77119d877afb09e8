r"""Variance-optimal inclusion probabilities at a token budget, with an optimality certificate.

Two allocation problems share one solver.  For a row of :math:`N` eligible tokens, a *profile*
:math:`d_t` and a budget of :math:`n = \kappa N` expected tokens:

**Prefix cutting** (survival :math:`S_t = P(L \ge t)`, :math:`\pi_{kl} = S_{\max(k,l)}`).  The
Horvitz–Thompson variance of the total of per-token values :math:`y_t` is

.. math::

    V(S) = \sum_{k,l} \Bigl(\frac{1}{S_{\min(k,l)}} - 1\Bigr) y_k^\top y_l
         = \sum_t \Bigl(\frac{1}{S_t} - 1\Bigr) d_t, \qquad
    d_t = \|T_t\|^2 - \|T_{t+1}\|^2,\ T_t = \sum_{s \ge t} y_s

(:doc:`/theory/allocation`), and the optimal cut law solves

.. math::

    \min_S \sum_t \frac{d_t}{S_t} \quad\text{s.t.}\quad
    1 \ge S_1 \ge \dots \ge S_N \ge a, \qquad \sum_t S_t = n ,

with :math:`a` the full-keep floor (:math:`P(L = N) \ge a`, largest weight :math:`1/a`).
:math:`d_t` may be negative (only its tail sums :math:`D_t = \|T_t\|^2` must be :math:`\ge 0`), so
the objective is not convex; it is solved exactly anyway.  Let :math:`\tilde d` be the
non-increasing isotonic regression of :math:`d` (pool adjacent violators; Barlow et al. 1972).
Its tail blocks have non-negative sums, so :math:`\tilde d \ge 0`; and inside a pooled block the
partial sums of :math:`d - \tilde d` are :math:`\le 0` and end at 0, so by Abel summation
:math:`\sum_t d_t g_t \ge \sum_t \tilde d_t g_t` for every non-decreasing :math:`g`, with
equality when :math:`g` is constant on the blocks.  With :math:`g = 1/S`:
:math:`V(S) + \sum d \ge \sum_t \tilde d_t / S_t` on the whole feasible set.  The right side is
convex and separable; dropping the order constraint, its minimiser under the box and the budget is

.. math:: S_t = \mathrm{clip}\bigl(\sqrt{\tilde d_t / \lambda},\ a,\ 1\bigr),

with :math:`\lambda > 0` the root of the (monotone) budget equation.  It is non-increasing
(:math:`\tilde d` is) and constant on the blocks, so it is feasible and the bound is tight there:
it is the global optimum.  The Lagrangian dual of the relaxation,
:math:`g(\lambda) = \sum_t \min_{a \le s \le 1} (\tilde d_t / s + \lambda s) - \lambda n`,
is a lower bound on :math:`V + \sum d` for every feasible :math:`S`; the certificate reports it
and the duality gap.

**Poisson / systematic sampling** (:math:`\pi_{kl} = \pi_k\pi_l` for Poisson).  The variance of
the HT total is :math:`\sum_t (1/\pi_t - 1) m_t` with :math:`m_t = \|y_t\|^2`, and for a
systematic or other fixed-size design its expectation under a model of uncorrelated tokens with
second moments :math:`m_t` is the same (Särndal, Swensson & Wretman 1992, §12.2).  Minimising it
at :math:`\sum_t \pi_t = n`, :math:`\pi_{\min} \le \pi_t \le 1` gives the Neyman / PPS optimum
:math:`\pi_t = \mathrm{clip}(\sqrt{m_t / \lambda}, \pi_{\min}, 1)` — inclusion probabilities
proportional to :math:`\sqrt{m_t}`, capped at 1 (Cochran 1977, §5.5; Särndal et al. 1992,
§3.7; Tillé 2006, §5.5): :func:`~nat_estimators.inclusion_probabilities` when
:math:`\pi_{\min} = 0`.

The budget equation :math:`h(\mu) = \sum_t \mathrm{clip}(\mu q_t, a, 1) = n`
(:math:`q = \sqrt{\tilde d}`, :math:`\mu = \lambda^{-1/2}`) is continuous and non-decreasing in
:math:`\mu`: it is solved for all rows at once by bisection on :math:`\log \mu` and one exact
linear step on the final active set.  The pooling runs on the host in float64
(:func:`scipy.optimize.isotonic_regression`, one call per row, :math:`O(N)`); everything else
stays in the profile's namespace and on its device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._compat import Array, device_of, float64_or_best, gather_last, namespace, to_numpy
from ._validation import check_bool_mask, check_float_array, check_fraction, eligible_rank
from .inclusion import inclusion_probabilities

__all__ = ["Allocation", "optimal_inclusion", "optimal_survival", "prefix_profile"]

_BISECT_STEPS = 80
_BISECT_ROUND = 24


@dataclass(frozen=True, eq=False)
class Allocation:
    r"""An optimal allocation and its Karush–Kuhn–Tucker certificate (arrays of shape ``(..., N)``
    or ``batch_shape``).

    Attributes
    ----------
    pi : array, shape (..., N)
        The optimal inclusion probabilities (the survival :math:`S` for prefix cutting), 0 at
        ineligible positions.
    multiplier : array, shape (...)
        :math:`\lambda`, the budget multiplier (the marginal variance of one more expected token
        is :math:`-\lambda`); 0 where the budget is not binding (every token with a positive
        profile already has :math:`\pi = 1`).
    pooled : array, shape (..., N)
        :math:`\tilde d`: the profile after pooling adjacent violators (prefix), or the profile
        itself (Poisson / systematic).
    variance : array, shape (...)
        The minimum :math:`\sum_t (1/\pi_t - 1) d_t`.
    lower_bound : array, shape (...)
        :math:`g(\lambda) - \sum_t d_t`: a lower bound on the variance of *every* feasible
        allocation (weak duality).
    gap : array, shape (...)
        ``variance - lower_bound`` (:math:`\ge 0`; 0 up to rounding at the optimum).
    budget_residual : array, shape (...)
        :math:`\sum_t \pi_t - n`.
    floor_multipliers, cap_multipliers : array, shape (..., N)
        :math:`\nu^{a}_t, \nu^{1}_t \ge 0` of :math:`\pi_t \ge a` and :math:`\pi_t \le 1`
        (complementary slackness: non-zero only where the bound is active).
    order_multipliers : array, shape (..., N)
        :math:`\beta_t \ge 0` of :math:`S_{t+1} \le S_t` (prefix; in eligible order, 0 for the
        last token and for Poisson): non-zero only inside pooled blocks, where
        :math:`S_t = S_{t+1}`.
    stationarity : array, shape (...)
        :math:`\max_t |{-d_t}/\pi_t^2 + \lambda - \nu^a_t + \nu^1_t - \beta_t + \beta_{t-1}|`
        relative to :math:`\max(\lambda, \max_t |d_t| / \pi_t^2)`.
    """

    pi: Array
    multiplier: Array
    pooled: Array
    variance: Array
    lower_bound: Array
    gap: Array
    budget_residual: Array
    floor_multipliers: Array
    cap_multipliers: Array
    order_multipliers: Array
    stationarity: Array

    def check(self, *, rtol: float = 1e-7) -> None:
        """Raise ``AssertionError`` unless the certificate proves optimality to ``rtol``.

        Checks, per row: the duality gap relative to the variance scale, the budget residual,
        stationarity, and that every multiplier is non-negative (up to rounding).
        """
        xp = namespace(self.pi)
        scale = xp.abs(self.variance) + xp.abs(self.lower_bound) + xp.sum(xp.abs(self.pooled),
                                                                           axis=-1)
        scale = xp.where(scale > 0, scale, xp.ones_like(scale))
        bad = {}
        gap = float(xp.max(xp.abs(self.gap) / scale))
        if not gap <= rtol:
            bad["duality gap"] = gap
        res = float(xp.max(xp.abs(self.budget_residual)))
        if not res <= rtol * max(1.0, float(xp.max(xp.sum(self.pi, axis=-1)))):
            bad["budget residual"] = res
        stat = float(xp.max(self.stationarity))
        if not stat <= rtol:
            bad["stationarity"] = stat
        for name, m in (("floor", self.floor_multipliers), ("cap", self.cap_multipliers),
                        ("order", self.order_multipliers)):
            worst = float(xp.min(m / scale[..., None]))
            if worst < -rtol:
                bad[f"{name} multipliers negative"] = worst
        if bool(xp.any(self.multiplier < 0)):
            bad["budget multiplier negative"] = float(xp.min(self.multiplier))
        if bad:
            raise AssertionError(f"allocation certificate fails: {bad}")


# ---------------------------------------------------------------------------- helpers
def _rows_float(xp: Any, x: Any, name: str, mask: Array | None) -> tuple[Array, Array]:
    x = check_float_array(xp, x, name)
    dev = device_of(x)
    x = xp.astype(x, float64_or_best(xp, dev))
    if mask is None:
        mask = xp.ones(x.shape, dtype=xp.bool, device=dev)
    else:
        mask = check_bool_mask(xp, mask, "mask", shape=tuple(x.shape))
        if device_of(mask) != dev:
            raise ValueError(f"mask is on device {device_of(mask)} but {name} is on {dev}")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has an empty token axis")
    if bool(xp.any(mask & ~xp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or Inf at eligible positions")
    return xp.where(mask, x, xp.zeros_like(x)), mask


def _budget(xp: Any, keep: float, mask: Array, dtype: Any, low: float, what: str) -> Array:
    kappa = check_fraction(keep, "keep")
    if kappa < low * (1 - 1e-12):
        raise ValueError(
            f"keep={kappa} is below the {what}={low}: every eligible token already costs {low} "
            f"expected tokens, so the smallest feasible keep is {low}; raise keep or lower {what}"
        )
    count = xp.sum(xp.astype(mask, dtype), axis=-1)
    return kappa * count


def _box_allocation(xp: Any, q: Array, n: Array, lo: float, mask: Array) -> tuple[Array, Array]:
    r"""``pi = clip(mu q, lo, 1)`` on ``mask`` with ``sum pi = n`` per row; returns
    ``(pi, lambda)`` with :math:`\lambda = \mu^{-2}` (0 where the budget does not bind).

    ``q >= 0``.  Tokens with ``q = 0`` cost nothing: they stay at ``lo`` unless the budget exceeds
    what the others can take (all at 1), and then share the rest equally.
    """
    dt = q.dtype
    pos = mask & (q > 0)
    one = xp.ones_like(q)
    big = xp.asarray(xp.finfo(dt).max, dtype=dt, device=device_of(q))
    qmax = xp.max(xp.where(pos, q, xp.zeros_like(q)), axis=-1)
    qmin = xp.min(xp.where(pos, q, big * one), axis=-1)
    has = xp.any(pos, axis=-1)
    safe_max = xp.where(has, qmax, xp.ones_like(qmax))
    safe_min = xp.where(has, qmin, xp.ones_like(qmin))
    # h(mu_lo) = lo * N <= n <= h(mu_hi) as far as the positive tokens can take it
    log_lo = xp.log(xp.asarray(max(lo, 1e-300), dtype=dt, device=device_of(q)) / safe_max)
    log_hi = -xp.log(safe_min)
    log_lo = xp.minimum(log_lo, log_hi)
    # rows whose positive tokens all at 1 cannot take the budget (the rest goes to the others)
    n_pos = xp.sum(xp.astype(pos, dt), axis=-1)
    n_other = xp.sum(xp.astype(mask & ~pos, dt), axis=-1)
    saturated = n_pos + lo * n_other <= n * (1 + 1e-12)

    # h(mu) = sum_eligible clip(mu q, lo, 1): ineligible tokens get q = 0 (so lo) and their
    # lo is taken off once, which keeps the bisection's hot loop to a product, a clip and a sum
    q_elig = xp.where(mask, q, xp.zeros_like(q))
    off = lo * xp.sum(xp.astype(~mask, dt), axis=-1)

    def h(log_mu: Array) -> Array:
        return xp.sum(xp.clip(xp.exp(log_mu)[..., None] * q_elig, lo, 1.0), axis=-1) - off

    def exact_step(mu: Array) -> tuple[Array, Array, Array]:
        """One exact linear step on the active set at ``mu``; whether it is self-consistent."""
        s = xp.clip(mu[..., None] * q, lo, 1.0)
        # sum over free tokens of mu q = n - (floored + capped)
        free = pos & (s > lo) & (s < 1)
        floored = pos & (s <= lo)
        capped = pos & (s >= 1)
        qf = xp.sum(xp.where(free, q, xp.zeros_like(q)), axis=-1)
        fixed = xp.sum(xp.where(mask & ~free, s, xp.zeros_like(s)), axis=-1)
        ok = qf > 0
        mu_exact = (n - fixed) / xp.where(ok, qf, xp.ones_like(qf))
        mu = xp.where(ok & (mu_exact > 0), mu_exact, mu)
        t = mu[..., None] * q
        s = xp.clip(xp.where(free, t, s), lo, 1.0)
        # the active set is right when, at the exact mu, the free tokens stay inside the box,
        # the floored ones below it and the capped ones above it, and the budget is met (then
        # mu is the root: h is linear on that piece)
        slack = 1e-9
        inside = ((~free | ((t >= lo * (1 - slack)) & (t <= 1 + slack)))
                  & (~floored | (t <= lo * (1 + slack))) & (~capped | (t >= 1 - slack)))
        met = xp.abs(xp.sum(xp.where(pos, s, xp.zeros_like(s)), axis=-1)
                     + xp.sum(xp.where(mask & ~pos, lo * one, xp.zeros_like(s)), axis=-1)
                     - n) <= slack * xp.maximum(n, xp.ones_like(n))
        good = xp.all(inside | ~mask, axis=-1) & (met | ~has | saturated)
        return s, mu, good

    # bisection on log mu in rounds, each ended by the exact step; stop once every row's active
    # set is verified (one round almost always; at most _BISECT_STEPS halvings in all)
    a, b = log_lo, log_hi
    done = 0
    while True:
        for _ in range(_BISECT_ROUND):
            mid = 0.5 * (a + b)
            under = h(mid) < n
            a = xp.where(under, mid, a)
            b = xp.where(under, b, mid)
        done += _BISECT_ROUND
        s, mu, good = exact_step(xp.exp(0.5 * (a + b)))
        if done >= _BISECT_STEPS or bool(xp.all(good)):
            break
    s = xp.where(pos, s, lo * one)
    # budget left over once every positive token is at 1: the zero-profile tokens share it
    zero = mask & ~pos
    nz = xp.sum(xp.astype(zero, dt), axis=-1)
    taken = xp.sum(xp.where(pos, s, xp.zeros_like(s)), axis=-1)
    extra = (n - taken) / xp.where(nz > 0, nz, xp.ones_like(nz))
    share = xp.clip(extra, lo, 1.0)
    s = xp.where(zero, share[..., None] * one, s)
    # the budget binds (lambda > 0) unless the zero-profile tokens took more than the floor
    binding = has & ~((nz > 0) & (extra > lo * (1 + 1e-12)))
    lam = xp.where(binding, 1 / (mu * mu), xp.zeros_like(mu))
    return xp.where(mask, s, xp.zeros_like(s)), lam


def _certificate(xp: Any, pi: Array, d: Array, dpool: Array, lam: Array, n: Array, lo: float,
                 mask: Array) -> Allocation:
    """Multipliers, dual bound and residuals of an allocation (``d`` in the order that matters)."""
    one = xp.ones_like(pi)
    p = xp.where(mask, pi, one)
    grad_pool = dpool / (p * p)  # marginal variance of the pooled problem, -d~/S^2 with sign
    floor = xp.where(mask & (pi <= lo), xp.clip(lam[..., None] - grad_pool, 0.0, None),
                     xp.zeros_like(pi))
    cap = xp.where(mask & (pi >= 1), xp.clip(grad_pool - lam[..., None], 0.0, None),
                   xp.zeros_like(pi))
    # order multipliers: partial sums of (d~ - d)/S^2 in eligible order (0 at block ends)
    beta = xp.cumulative_sum(xp.where(mask, (dpool - d) / (p * p), xp.zeros_like(pi)), axis=-1)
    beta = xp.where(mask, beta, xp.zeros_like(beta))
    beta_prev = xp.concat([xp.zeros_like(beta[..., :1]), beta[..., :-1]], axis=-1)
    resid = -d / (p * p) + lam[..., None] - floor + cap - beta + beta_prev
    scale = xp.maximum(lam, xp.max(xp.where(mask, xp.abs(d) / (p * p), xp.zeros_like(pi)),
                                   axis=-1))
    scale = xp.where(scale > 0, scale, xp.ones_like(scale))
    stat = xp.max(xp.where(mask, xp.abs(resid), xp.zeros_like(pi)), axis=-1) / scale
    variance = xp.sum(xp.where(mask, (1 / p - 1) * d, xp.zeros_like(pi)), axis=-1)
    # g(lambda) = sum_t min_{lo <= s <= 1} (d~_t / s + lambda s) - lambda n, minus sum d
    lamc = lam[..., None]
    s_star = xp.where(lamc > 0, xp.clip(xp.sqrt(dpool / xp.where(lamc > 0, lamc, one)), lo, 1.0),
                      one)
    s_star = xp.where(mask & (dpool <= 0) & (lamc > 0), lo * one, s_star)
    terms = dpool / xp.where(mask, s_star, one) + lamc * s_star
    dual = (xp.sum(xp.where(mask, terms, xp.zeros_like(pi)), axis=-1) - lam * n
            - xp.sum(xp.where(mask, d, xp.zeros_like(pi)), axis=-1))
    return Allocation(
        pi=pi, multiplier=lam, pooled=dpool, variance=variance, lower_bound=dual,
        gap=variance - dual, budget_residual=xp.sum(pi, axis=-1) - n,
        floor_multipliers=floor, cap_multipliers=cap, order_multipliers=beta,
        stationarity=stat,
    )


# ---------------------------------------------------------------------------- public API
def prefix_profile(y: Array, /, *, mask: Array | None = None) -> Array:
    r"""The prefix-variance profile :math:`d_t = \|T_t\|^2 - \|T_{t+1}\|^2` of per-token values.

    Parameters
    ----------
    y : array, shape (..., N) or (..., N, q)
        Per-token values (e.g. per-token gradients projected on ``q`` directions, or a scalar
        per token); tokens on axis ``-1`` (scalars) or ``-2`` (vectors).
    mask : array of bool, shape (..., N), optional
        Eligible positions; tail sums run over eligible tokens only, and ``d`` is 0 elsewhere.

    Returns
    -------
    array, shape (..., N)
        :math:`d_t`, with :math:`T_t = \sum_{s \ge t,\ s\ \mathrm{eligible}} y_s`.  Then
        ``design_variance(y, Prefix(S, mask=mask)) == sum((1/S - 1) * d)`` for every survival
        :math:`S`.

    Examples
    --------
    >>> import numpy as np
    >>> from nat_estimators.allocation import prefix_profile
    >>> prefix_profile(np.array([1.0, -1.0, 2.0]))
    array([ 3., -3.,  4.])
    """
    xp = namespace(y, mask)
    y = check_float_array(xp, y, "y")
    if mask is None or y.ndim != mask.ndim + 1:
        y = y[..., None]
    if mask is None:
        mask = xp.ones(y.shape[:-1], dtype=xp.bool, device=device_of(y))
    else:
        mask = check_bool_mask(xp, mask, "mask", shape=tuple(y.shape[:-1]))
    ym = xp.where(mask[..., None], y, xp.zeros_like(y))
    if bool(xp.any(~xp.isfinite(ym))):
        raise ValueError("y contains NaN or Inf at eligible positions")
    tail = xp.flip(xp.cumulative_sum(xp.flip(ym, axis=-2), axis=-2), axis=-2)
    sq = xp.sum(tail * tail, axis=-1)
    nxt = xp.concat([sq[..., 1:], xp.zeros_like(sq[..., :1])], axis=-1)
    # ||T_{t+1}|| at eligible t is the squared tail after t, whatever ineligible gaps follow
    d = xp.where(mask, sq - nxt, xp.zeros_like(sq))
    return d


def optimal_survival(
    profile: Array,
    keep: float,
    *,
    mask: Array | None = None,
    full_keep: float = 0.05,
    shared: bool = False,
) -> Allocation:
    r"""The variance-optimal prefix survival :math:`S` at expected keep fraction ``keep``.

    Minimises :math:`\sum_t (1/S_t - 1) d_t` over non-increasing :math:`S` with
    :math:`a \le S \le 1` and :math:`\sum_t S_t = \kappa N_i` per row (module documentation).

    Parameters
    ----------
    profile : array, shape (..., N)
        :math:`d_t` in position order (eligible positions; others ignored).  Exact from a pilot:
        :func:`prefix_profile`; from per-token second-moment proxies :math:`m_t` under
        uncorrelated tokens, :math:`E d_t = m_t`.  Entries may be negative, but every tail sum
        :math:`D_t = \sum_{s \ge t} d_s` (a squared norm) must be :math:`\ge 0`.
    keep : float
        Expected keep fraction :math:`\kappa \in (0, 1]`, at least ``full_keep``.
    mask : array of bool, shape (..., N), optional
        Eligible positions (default all); the cut counts eligible tokens.
    full_keep : float, default 0.05
        The floor :math:`a` of :math:`S` (full-keep probability, largest weight :math:`1/a`).
    shared : bool, default False
        One budget for the whole batch, :math:`\sum_{i,t} S_{it} = \kappa \sum_i N_i` (rows
        with larger profiles get more tokens; one :math:`\lambda`), instead of one per row.

    Returns
    -------
    Allocation
        ``pi`` is the optimal survival (0 at ineligible positions) with its certificate; with
        ``shared`` the per-row fields (``multiplier``, ``variance``, ...) have shape ``(1,)``:
        the whole batch.

    Raises
    ------
    ValueError
        NaN/Inf at eligible positions, a negative tail sum of the profile, ``keep`` outside
        :math:`(0, 1]` or below ``full_keep``.

    Examples
    --------
    >>> import numpy as np
    >>> from nat_estimators.allocation import optimal_survival
    >>> a = optimal_survival(np.array([4.0, 1.0, 1.0, 0.25]), 0.5, full_keep=0.1)
    >>> np.round(a.pi, 6)
    array([0.888889, 0.444444, 0.444444, 0.222222])
    >>> a.check()
    """
    xp, r = _solve_survival(profile, keep, mask, full_keep, shared)
    if shared:
        f = _flatten(xp, r["pooled"], r["dc"], r["mc"], r["n"])
        cert = _reshaped(xp, _certificate(xp, xp.reshape(r["sc"], (1, -1)), f[1], f[0],
                                          r["lam"], f[3], r["a"], f[2]), tuple(r["sc"].shape))
    else:
        cert = _certificate(xp, r["sc"], r["dc"], r["pooled"], r["lam"], r["n"], r["a"], r["mc"])
    scatter = r["scatter"]
    return Allocation(
        pi=scatter(r["sc"]), multiplier=cert.multiplier, pooled=scatter(r["pooled"]),
        variance=cert.variance, lower_bound=cert.lower_bound, gap=cert.gap,
        budget_residual=cert.budget_residual, floor_multipliers=scatter(cert.floor_multipliers),
        cap_multipliers=scatter(cert.cap_multipliers),
        order_multipliers=scatter(cert.order_multipliers), stationarity=cert.stationarity,
    )


def _solve_survival(profile: Array, keep: float, mask: Array | None, full_keep: float,
                    shared: bool) -> tuple[Any, dict[str, Any]]:
    """The optimal survival of :func:`optimal_survival` without its certificate: the namespace
    and the pieces (compacted survival ``sc``, profile ``dc``, pooled profile, multiplier,
    budgets, floor, compacted mask ``mc``, validated ``mask`` and ``scatter`` back to positions).
    """
    xp = namespace(profile, mask)
    d, mask = _rows_float(xp, profile, "profile", mask)
    a = check_fraction(full_keep, "full_keep")
    n = _budget(xp, keep, mask, d.dtype, a, "full_keep")
    dev = device_of(d)
    # compact eligible tokens to the front (position order kept)
    order = xp.argsort(xp.astype(~mask, xp.int8), axis=-1, stable=True)
    dc = gather_last(xp, d, order)
    count = xp.sum(xp.astype(mask, xp.int64), axis=-1)
    k = xp.arange(d.shape[-1], dtype=xp.int64, device=dev)
    mc = k < count[..., None]
    dc = xp.where(mc, dc, xp.zeros_like(dc))
    tails = xp.flip(xp.cumulative_sum(xp.flip(dc, axis=-1), axis=-1), axis=-1)
    tol = 1e-12 * xp.sum(xp.abs(dc), axis=-1, keepdims=True)
    if bool(xp.any(mc & (tails < -tol))):
        raise ValueError(
            "profile has a negative tail sum sum_{s>=t} d_s; a prefix profile's tail sums are "
            "squared norms ||T_t||^2 >= 0 (build it with prefix_profile, or pass per-token "
            "second moments, which are >= 0)"
        )
    pooled = _pool_nonincreasing(xp, dc, count)
    pooled = xp.where(mc, xp.clip(pooled, 0.0, None), xp.zeros_like(pooled))
    if shared:
        # pooling stays per row (the order constraints are per row); one budget, one lambda
        f = _flatten(xp, pooled, dc, mc, n)
        sc, lam = _box_allocation(xp, xp.sqrt(f[0]), f[3], a, f[2])
        sc = xp.reshape(sc, tuple(pooled.shape))
    else:
        sc, lam = _box_allocation(xp, xp.sqrt(pooled), n, a, mc)
    back = xp.clip(eligible_rank(xp, mask) - 1, 0, None)

    def scatter(x: Array) -> Array:
        return xp.where(mask, gather_last(xp, x, back), xp.zeros_like(x))

    return xp, {"sc": sc, "dc": dc, "pooled": pooled, "lam": lam, "n": n, "a": a, "mc": mc,
                "mask": mask, "scatter": scatter}


def survival_pi(profile: Array, keep: float, *, mask: Array | None = None,
                full_keep: float = 0.05, shared: bool = False) -> tuple[Array, Array]:
    """``(optimal_survival(...).pi, validated mask)`` without computing the certificate (the
    design constructors' fast path)."""
    _, r = _solve_survival(profile, keep, mask, full_keep, shared)
    return r["scatter"](r["sc"]), r["mask"]


def _flatten(xp: Any, *arrays_and_budget: Array) -> list[Array]:
    """Every ``(..., N)`` array as one row ``(1, R * N)``; the last argument (the per-row budgets)
    summed into a ``(1,)`` total."""
    *arrs, n = arrays_and_budget
    out = [xp.reshape(x, (1, -1)) for x in arrs]
    return [*out, xp.reshape(xp.sum(n), (1,))]


def _reshaped(xp: Any, c: Allocation, shape: tuple[int, ...]) -> Allocation:
    """A batch-level certificate with its per-token fields back in ``shape``."""
    def r(x: Array) -> Array:
        return xp.reshape(x, shape)

    return Allocation(
        pi=r(c.pi), multiplier=c.multiplier, pooled=r(c.pooled), variance=c.variance,
        lower_bound=c.lower_bound, gap=c.gap, budget_residual=c.budget_residual,
        floor_multipliers=r(c.floor_multipliers), cap_multipliers=r(c.cap_multipliers),
        order_multipliers=r(c.order_multipliers), stationarity=c.stationarity,
    )


def _pool_nonincreasing(xp: Any, dc: Array, count: Array) -> Array:
    """Non-increasing isotonic regression of each row's first ``count`` entries (host, scipy)."""
    from scipy.optimize import isotonic_regression

    host = np.asarray(to_numpy(dc), dtype=np.float64).reshape(-1, dc.shape[-1])
    cnt = np.asarray(to_numpy(count)).reshape(-1)
    out = np.zeros_like(host)
    for r in range(host.shape[0]):  # one O(N) call per row (never per token)
        c = int(cnt[r])
        if c:
            out[r, :c] = isotonic_regression(host[r, :c], increasing=False).x
    res = xp.asarray(out.reshape(tuple(dc.shape)), device=device_of(dc))
    return xp.astype(res, dc.dtype)


def optimal_inclusion(
    second_moment: Array,
    keep: Any,
    *,
    mask: Array | None = None,
    floor: float = 0.0,
    shared: bool = False,
) -> Allocation:
    r"""Neyman / PPS-optimal :math:`\pi` at expected keep fraction ``keep``.

    Minimises :math:`\sum_t (1/\pi_t - 1) m_t` over :math:`\pi_{\min} \le \pi_t \le 1`,
    :math:`\sum_t \pi_t = \kappa N_i`: :math:`\pi_t = \mathrm{clip}(\sqrt{m_t/\lambda},
    \pi_{\min}, 1)`, i.e. :math:`\pi \propto \sqrt{m}` capped at 1
    (:func:`~nat_estimators.inclusion_probabilities` when ``floor`` is 0).

    Parameters
    ----------
    second_moment : array, shape (..., N)
        :math:`m_t \ge 0`, the per-token second moment or a proxy of it
        (e.g. :math:`(|A| \cdot H)^2`, or a gradient-norm proxy squared).
    keep : float
        Expected keep fraction :math:`\kappa \in (0, 1]`, at least ``floor``.
    mask : array of bool, shape (..., N), optional
        Eligible positions (default all).
    floor : float, default 0.0
        :math:`\pi_{\min} \in [0, 1]`; with 0 every eligible token needs :math:`m_t > 0`.
    shared : bool, default False
        One budget for the whole batch (:math:`\sum_{i,t} \pi_{it} = \kappa \sum_i N_i`)
        instead of one per row; the certificate's per-row fields then have shape ``(1,)``.

    Returns
    -------
    Allocation
        ``pi`` and the certificate (``order_multipliers`` are 0: no order constraint).

    Examples
    --------
    >>> import numpy as np
    >>> from nat_estimators.allocation import optimal_inclusion
    >>> optimal_inclusion(np.array([1.0, 1.0, 4.0, 400.0]), 0.5).pi
    array([0.25, 0.25, 0.5 , 1.  ])
    """
    xp, r = _solve_inclusion(second_moment, keep, mask, floor, shared)
    pi, lam, m, n, lo, mask = r["pi"], r["lam"], r["m"], r["n"], r["lo"], r["mask"]
    cert = _certificate(xp, pi, m, m, lam, n, lo, mask)
    return _reshaped(xp, cert, r["shape"]) if shared else cert


def _solve_inclusion(second_moment: Array, keep: Any, mask: Array | None, floor: float,
                     shared: bool) -> tuple[Any, dict[str, Any]]:
    """The allocation of :func:`optimal_inclusion` without its certificate: the namespace and
    ``pi``, ``lam``, the (flattened when ``shared``) ``m``, ``n``, ``mask``, floor ``lo`` and the
    original ``shape``."""
    xp = namespace(second_moment, mask)
    m, mask = _rows_float(xp, second_moment, "second_moment", mask)
    if bool(xp.any(mask & (m < 0))):
        raise ValueError("second_moment contains negative entries; second moments must be >= 0")
    lo = check_fraction(floor, "floor", low_open=False)
    n = _budget(xp, keep, mask, m.dtype, lo, "floor")
    shape = tuple(m.shape)
    if shared:
        m, mask, n = _flatten(xp, m, mask, n)
    q = xp.sqrt(m)
    if lo == 0:
        if bool(xp.any(mask & (m == 0))):
            raise ValueError(
                "second_moment is 0 at some eligible token: with floor=0 it would never be "
                "sampled (pi = 0, infinite weight); pass floor > 0 or add a small constant"
            )
        pi = inclusion_probabilities(q, n, mask=mask)
        if bool(xp.any(mask & (pi * xp.finfo(pi.dtype).max < 1))):
            raise ValueError(
                "the optimal pi is so small at some eligible token (its second moment is tiny "
                "next to the others') that its weight 1/pi overflows; pass floor > 0 so every "
                "token keeps pi >= floor"
            )
        capped = pi >= 1
        qf = xp.sum(xp.where(mask & ~capped, q, xp.zeros_like(q)), axis=-1)
        nf = n - xp.sum(xp.where(mask & capped, pi, xp.zeros_like(pi)), axis=-1)
        mu = xp.where(qf > 0, nf / xp.where(qf > 0, qf, xp.ones_like(qf)), xp.zeros_like(qf))
        lam = xp.where(mu > 0, 1 / xp.where(mu > 0, mu * mu, xp.ones_like(mu)), xp.zeros_like(mu))
    else:
        pi, lam = _box_allocation(xp, q, n, lo, mask)
    return xp, {"pi": pi, "lam": lam, "m": m, "n": n, "lo": lo, "mask": mask, "shape": shape}


def inclusion_pi(second_moment: Array, keep: Any, *, mask: Array | None = None,
                 floor: float = 0.0, shared: bool = False) -> tuple[Array, Array]:
    """``(optimal_inclusion(...).pi, validated mask)`` in the input's shape, without the
    certificate (the design constructors' fast path)."""
    xp, r = _solve_inclusion(second_moment, keep, mask, floor, shared)
    return xp.reshape(r["pi"], r["shape"]), xp.reshape(r["mask"], r["shape"])
