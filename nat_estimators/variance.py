r"""Variance of the Horvitz–Thompson total: exact design variance and one-sample estimators.

Notation (DESIGN.md §1): :math:`\Delta_{kl} = \pi_{kl} - \pi_k\pi_l`, :math:`\check y_k =
y_k/\pi_k`, :math:`\check\Delta_{kl} = \Delta_{kl}/\pi_{kl}`.

Exact variance (Horvitz & Thompson 1952; Särndal, Swensson & Wretman 1992, result 2.8.1):

.. math:: V(\hat Y) = \sum_{k \in U}\sum_{l \in U} \Delta_{kl}\, \check y_k \check y_l ,

and for fixed-size designs also the Sen–Yates–Grundy form (Sen 1953; Yates & Grundy 1953)
:math:`V = -\tfrac12 \sum_k\sum_l \Delta_{kl} (\check y_k - \check y_l)^2`.  For vector-valued
:math:`y` every formula holds coordinatewise and the covariance matrix is
:math:`\check Y^\top \Delta\, \check Y`.

Unbiased estimators from one sample :math:`S` (Särndal et al. 1992, §2.8):

.. math::

    v_{HT} = \sum_{k \in S}\sum_{l \in S} \check\Delta_{kl}\, \check y_k \check y_l , \qquad
    v_{SYG} = -\tfrac12 \sum_{k \in S}\sum_{l \in S} \check\Delta_{kl}
              (\check y_k - \check y_l)^2 \ \text{(fixed size only)} ,

both unbiased iff :math:`\pi_{kl} > 0` for every pair.  Systematic sampling violates that (many
:math:`\pi_{kl} = 0`), so its estimates come with a :class:`BiasedVarianceEstimateWarning`; the
successive-differences estimator is the usual alternative there (Wolter 2007, §8.2).

Fast paths (no :math:`N \times N` matrix): Poisson and simple random sampling in closed form,
prefix cutting and systematic sampling by summing over their small support (:math:`N + 1` cuts;
:math:`\le 2N` arcs of :math:`u`), all :math:`O(N)` or :math:`O(N \log N)` per row.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from ._compat import Array, float64_or_best, gather_last
from ._design import Design
from ._units import Units, align_units
from ._validation import check_bool_mask
from .poisson import Poisson
from .prefix import Prefix
from .simple_random import SimpleRandom
from .systematic import Systematic

__all__ = [
    "BiasedVarianceEstimateWarning",
    "DesignSummary",
    "design_summary",
    "design_variance",
    "variance_estimate",
]


class BiasedVarianceEstimateWarning(UserWarning):
    """A variance estimate is returned although it is biased for this design.

    Raised as a warning when the design has pairs of units with :math:`\\pi_{kl} = 0` (e.g.
    systematic sampling): the Horvitz–Thompson and Sen–Yates–Grundy variance estimators then miss
    those pairs' contributions and are biased.  Use ``method="successive_differences"`` for
    systematic samples of smooth signals, or a design with all :math:`\\pi_{kl} > 0`.
    """


# ---------------------------------------------------------------------------- helpers
def _prep_population(y: Array, design: Design, axis: int) -> tuple[Units, Array, Array]:
    """y (zeroed at ineligible units) as (*batch, N, q), pi and y-check, in a float dtype."""
    if not isinstance(design, Design):
        raise TypeError(f"design must be a nat_estimators design, got {type(design).__name__}")
    u = align_units(y, axis, tuple(design.mask.shape), design.mask)
    xp = u.xp
    mask = design.mask
    yv = xp.where(mask[..., None], u.y, xp.zeros_like(u.y))
    if not bool(xp.all(xp.isfinite(yv))):
        raise ValueError("y contains NaN or Inf at eligible units; the variance needs all of y")
    pi = design.inclusion_probabilities()
    dt = xp.result_type(yv.dtype, pi.dtype)
    yv = xp.astype(yv, dt)
    pi = xp.astype(pi, dt)
    safe = xp.where(mask, pi, xp.ones_like(pi))
    ycheck = yv / safe[..., None]
    return Units(xp=xp, y=yv, batch_shape=u.batch_shape, value_shape=u.value_shape), pi, ycheck


def _quad(xp: Any, a: Array, b: Array, weights: Array, covariance: bool) -> Array:
    """Sum over units of weights * a * b: diag (..., q) or outer (..., q, q)."""
    if covariance:
        return xp.matmul(xp.matrix_transpose(a * weights[..., None]), b)
    return xp.sum(weights[..., None] * a * b, axis=-2)


def _outer_or_square(xp: Any, a: Array, covariance: bool) -> Array:
    """a (..., q) -> a*a (..., q) or outer (..., q, q)."""
    if covariance:
        return a[..., :, None] * a[..., None, :]
    return a * a


# ---------------------------------------------------------------------------- exact variance
def _var_poisson(u: Units, pi: Array, ycheck: Array, mask: Array, cov: bool) -> Array:
    # Delta_kk = pi(1 - pi), Delta_kl = 0:  V = sum_k (1 - pi_k) pi_k ycheck_k^2
    xp = u.xp
    w = xp.where(mask, (1 - pi) * pi, xp.zeros_like(pi))
    return _quad(xp, ycheck, ycheck, w, cov)


def _var_srs(u: Units, design: SimpleRandom, cov: bool) -> Array:
    # V = N^2 (1 - n/N) S^2 / n,  S^2 = sum (y - ybar)^2 / (N - 1)   (Sarndal et al. eq. 3.3.8)
    xp = u.xp
    dt = u.y.dtype
    n = xp.astype(design.n, dt)
    N = xp.astype(design.eligible_count(), dt)
    if bool(xp.any((n == 0) & (N > 0))):
        raise ValueError(
            "a SimpleRandom row samples n = 0 of N > 0 eligible tokens: pi = 0 there and the HT "
            "total is not unbiased, so its variance is undefined; use n >= 1"
        )
    one = xp.ones_like(N)
    ybar = xp.sum(u.y, axis=-2) / xp.where(N > 0, N, one)[..., None]
    dev = xp.where(design.mask[..., None], u.y - ybar[..., None, :], xp.zeros_like(u.y))
    s2 = _quad(xp, dev, dev, xp.astype(design.mask, dt), cov)
    factor = xp.where((N > 1) & (n > 0), N * (N - n) / (xp.where(n > 0, n, one) *
                                                         xp.where(N > 1, N - 1, one)),
                      xp.zeros_like(N))
    return s2 * (factor[..., None, None] if cov else factor[..., None])


def _var_prefix(u: Units, pi: Array, ycheck: Array, design: Prefix, cov: bool) -> Array:
    # Sum over the N + 1 possible cuts L = j:  V = sum_j P(L = j) (C_j - Y)^2, where C_j is the
    # HT total of the first j eligible tokens (C_0 = 0).  Every term is >= 0 (no cancellation).
    xp = u.xp
    mask = design.mask
    order = xp.argsort(xp.astype(~mask, xp.int8), axis=-1, stable=True)
    pc = gather_last(xp, pi, order)  # survival over ranks 1..N, zeros beyond the count
    zero = xp.zeros((*u.batch_shape, 1), dtype=pi.dtype, device=design.device)
    p_c = pc - xp.concat([pc[..., 1:], zero], axis=-1)  # P(L = j), j = 1..N
    p0 = 1 - pc[..., 0]  # P(L = 0)
    rank = xp.cumulative_sum(xp.astype(mask, xp.int64), axis=-1)
    p_pos = gather_last(xp, p_c, xp.maximum(rank - 1, xp.zeros_like(rank)))
    p_pos = xp.where(mask, p_pos, xp.zeros_like(p_pos))
    total = xp.sum(u.y, axis=-2)
    d = xp.cumulative_sum(ycheck, axis=-2) - total[..., None, :]
    v = _quad(xp, d, d, p_pos, cov)
    t2 = _outer_or_square(xp, total, cov)
    return v + (p0[..., None, None] if cov else p0[..., None]) * t2


def _var_systematic(u: Units, ycheck: Array, design: Systematic, cov: bool) -> Array:
    # u -> HT total is a step function: token k is in S iff u lies in the arc (s_k, s_k + pi_k]
    # (mod 1), s_k = V_{k-1} mod 1.  Sweep the <= 2N arc endpoints in order, accumulating +ycheck
    # at arc starts and -ycheck at arc ends (arcs wrapping past 1 start "on" at u = 0):
    # V = sum over intervals  length * (value - Y)^2.
    xp = u.xp
    dt = ycheck.dtype
    f64 = float64_or_best(xp, design.device)
    pi = xp.astype(design.pi, f64)
    v = xp.cumulative_sum(pi, axis=-1)
    zero1 = xp.zeros((*u.batch_shape, 1), dtype=f64, device=design.device)
    vprev = xp.concat([zero1, v[..., :-1]], axis=-1)
    s = vprev - xp.floor(vprev)
    e_raw = s + pi
    wrap = e_raw > 1
    e = xp.where(wrap, e_raw - 1, e_raw)
    w0 = xp.sum(xp.where(wrap[..., None], ycheck, xp.zeros_like(ycheck)), axis=-2)
    pos = xp.concat([s, e], axis=-1)
    deltas = xp.concat([ycheck, -ycheck], axis=-2)
    order = xp.argsort(pos, axis=-1, stable=True)
    ps = gather_last(xp, pos, order)
    q = ycheck.shape[-1]
    idx = xp.broadcast_to(order[..., None], (*order.shape, q))
    ds = xp.take_along_axis(deltas, idx, axis=-2)
    vals = w0[..., None, :] + xp.cumulative_sum(ds, axis=-2)
    one1 = xp.ones((*u.batch_shape, 1), dtype=f64, device=design.device)
    lengths = xp.astype(xp.concat([ps[..., 1:], one1], axis=-1) - ps, dt)
    total = xp.sum(u.y, axis=-2)
    dv = vals - total[..., None, :]
    first = xp.astype(ps[..., 0], dt)
    d0 = w0 - total
    out = _quad(xp, dv, dv, lengths, cov)
    t = _outer_or_square(xp, d0, cov)
    return out + (first[..., None, None] if cov else first[..., None]) * t


def _var_dense(u: Units, pi: Array, ycheck: Array, design: Design, cov: bool) -> Array:
    xp = u.xp
    p2 = xp.astype(design.joint_inclusion_probabilities(), pi.dtype)
    delta = p2 - pi[..., :, None] * pi[..., None, :]
    dy = xp.matmul(delta, ycheck)  # (..., N, q)
    if cov:
        return xp.matmul(xp.matrix_transpose(ycheck), dy)
    return xp.sum(ycheck * dy, axis=-2)


def design_variance(
    y: Array,
    design: Design,
    *,
    axis: int = -1,
    covariance: bool = False,
    method: str = "auto",
) -> Array:
    r"""Exact design variance of the Horvitz–Thompson total, :math:`V(\hat Y)`.

    Parameters
    ----------
    y : array, shape (..., N, *V)
        Population values at every eligible unit (ignored at ineligible positions); ``axis`` is
        the unit axis, axes after it are value axes (e.g. per-token gradients).
    design : Design
        The sampling design; its arrays have shape ``(..., N)`` matching ``y`` up to ``axis``.
    axis : int, default -1
        Unit axis of ``y``.
    covariance : bool, default False
        Return the full covariance matrix :math:`\check Y^\top \Delta \check Y` of the value
        components instead of the per-component variances.
    method : {"auto", "dense"}
        ``"auto"`` uses the :math:`O(N)` / :math:`O(N\log N)` fast path of the design (Poisson,
        SimpleRandom, Prefix, Systematic) and the dense path otherwise; ``"dense"`` always forms
        :math:`\Delta` from :meth:`Design.joint_inclusion_probabilities` (small ``N`` only).

    Returns
    -------
    array, shape (..., *V) or (..., *V, *V)
        :math:`\sum_k\sum_l \Delta_{kl}\check y_k \check y_l` per component (or the covariance).

    Notes
    -----
    Fast paths (Särndal et al. 1992 for the closed forms):

    * Poisson: :math:`V = \sum_k (1 - \pi_k)\, y_k^2/\pi_k`.
    * SimpleRandom: :math:`V = N^2 (1 - n/N) S_y^2 / n`, :math:`S_y^2 = \sum_k (y_k -
      \bar y)^2/(N - 1)`.
    * Prefix: the cut :math:`L` takes :math:`N + 1` values with :math:`P(L = j) = \pi_j -
      \pi_{j+1}`, and the estimate for :math:`L = j` is :math:`C_j = \sum_{k \le j} \check y_k`,
      so :math:`V = \sum_{j=0}^{N} P(L = j)(C_j - Y)^2` — a sum of non-negative terms.
    * Systematic: :math:`u \mapsto \hat Y(u)` is a step function with at most :math:`2N` steps
      (arc endpoints :math:`V_{k-1} \bmod 1`, :math:`V_k \bmod 1`); sorting them gives
      :math:`V = \sum_{\text{intervals}} |I| (\hat Y_I - Y)^2`.

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> y = np.array([1.0, 2.0, 3.0, 4.0])
    >>> float(nat.design_variance(y, nat.Poisson.uniform(0.5, mask=np.ones(4, dtype=bool))))
    30.0
    >>> d = nat.Prefix(np.array([1.0, 0.75, 0.5, 0.25]))
    >>> bool(np.isclose(nat.design_variance(y, d), nat.design_variance(y, d, method="dense")))
    True
    """
    u, pi, ycheck = _prep_population(y, design, axis)
    if method not in ("auto", "dense"):
        raise ValueError(f"method must be 'auto' or 'dense', got {method!r}")
    cov = bool(covariance)
    if method == "dense":
        r = _var_dense(u, pi, ycheck, design, cov)
    elif isinstance(design, Poisson):
        r = _var_poisson(u, pi, ycheck, design.mask, cov)
    elif isinstance(design, SimpleRandom):
        r = _var_srs(u, design, cov)
    elif isinstance(design, Prefix):
        r = _var_prefix(u, pi, ycheck, design, cov)
    elif isinstance(design, Systematic):
        r = _var_systematic(u, ycheck, design, cov)
    else:
        r = _var_dense(u, pi, ycheck, design, cov)
    return u.restore_cov(r) if cov else u.restore(r)


# ---------------------------------------------------------------------------- estimators
_METHODS = ("ht", "syg", "successive_differences")
_ESTIMATORS = ("ht", "hajek")


def _check_sample(xp: Any, mask: Array, design: Design) -> Array:
    check_bool_mask(xp, mask, "mask", shape=tuple(design.mask.shape))
    if bool(xp.any(mask & ~design.mask)):
        raise ValueError(
            "mask (the sample) selects units that are not eligible in the design; it must be a "
            "subset of design.mask — pass a sample drawn from this design"
        )
    return mask


def namespace_of(a: Array) -> Any:
    from ._compat import namespace

    return namespace(a)


def _est_srs(a: Array, pi: Array, s: Array, design: SimpleRandom, method: str, cov: bool) -> Array:
    # Delta-check is constant off the diagonal: c = 1 - pi^2/pi_kl = 1 - n(N - 1)/(N(n - 1)).
    xp = namespace_of(a)
    dt = a.dtype
    n = xp.astype(design.n, dt)
    N = xp.astype(design.eligible_count(), dt)
    one = xp.ones_like(n)
    if bool(xp.any((n == 1) & (N > 1))):
        warnings.warn(
            "SimpleRandom with n = 1 has pi_kl = 0 for every pair: the variance estimate is "
            "biased (it is 0); use n >= 2",
            BiasedVarianceEstimateWarning,
            stacklevel=3,
        )
    c = xp.where((n > 1) & (N > 1), 1 - n * (N - 1) / (N * xp.where(n > 1, n - 1, one)),
                 xp.zeros_like(n))
    d = 1 - xp.astype(pi, dt)
    av = xp.where(s[..., None], a, xp.zeros_like(a))
    tot = xp.sum(av, axis=-2)
    if method == "syg":
        # -1/2 sum_{k,l in S} c (a_k - a_l)^2 = -c (n sum a^2 - (sum a)^2)
        nn = xp.sum(xp.astype(s, dt), axis=-1)
        sq = _quad(xp, av, av, xp.ones(s.shape, dtype=dt, device=a.device), cov)
        t2 = _outer_or_square(xp, tot, cov)
        cc = c[..., None, None] if cov else c[..., None]
        nnn = nn[..., None, None] if cov else nn[..., None]
        return -cc * (nnn * sq - t2)
    diag = _quad(xp, av, av, xp.where(s, d, xp.zeros_like(d)), cov)
    sq = _quad(xp, av, av, xp.astype(s, dt), cov)
    t2 = _outer_or_square(xp, tot, cov)
    cc = c[..., None, None] if cov else c[..., None]
    return diag + cc * (t2 - sq)


def _est_prefix(a: Array, pi: Array, s: Array, cov: bool) -> Array:
    # Delta-check_kl = 1 - max(pi_k, pi_l); in position order max(pi_k, pi_l) is pi at the earlier
    # unit, so  v = Yhat^2 - sum_k pi_k a_k (2 R_k - a_k),  R_k = sum_{l >= k, l in S} a_l.
    xp = namespace_of(a)
    av = xp.where(s[..., None], a, xp.zeros_like(a))
    tot = xp.sum(av, axis=-2)
    r = tot[..., None, :] - xp.cumulative_sum(av, axis=-2) + av
    p = xp.where(s, xp.astype(pi, a.dtype), xp.zeros_like(xp.astype(pi, a.dtype)))
    if cov:
        m = _quad(xp, av, r, p, True)
        m = m + xp.matrix_transpose(m) - _quad(xp, av, av, p, True)
        return _outer_or_square(xp, tot, True) - m
    m = xp.sum(p[..., None] * av * (2 * r - av), axis=-2)
    return tot * tot - m


def _est_dense(
    a: Array, pi: Array, s: Array, design: Design, method: str, cov: bool
) -> Array:
    xp = namespace_of(a)
    dt = a.dtype
    p2 = xp.astype(design.joint_inclusion_probabilities(), dt)
    pi = xp.astype(pi, dt)
    both = s[..., :, None] & s[..., None, :]
    elig = design.mask[..., :, None] & design.mask[..., None, :]
    if bool(xp.any(elig & (p2 <= 0))):
        warnings.warn(
            f"{type(design).__name__} has pairs of eligible units with joint inclusion probability "
            "0, which no sample ever contains: the variance estimate misses their contribution "
            "and is biased. For systematic samples of smooth signals use "
            "method='successive_differences'.",
            BiasedVarianceEstimateWarning,
            stacklevel=3,
        )
    safe = xp.where(both, p2, xp.ones_like(p2))
    dchk = xp.where(both, (p2 - pi[..., :, None] * pi[..., None, :]) / safe, xp.zeros_like(p2))
    av = xp.where(s[..., None], a, xp.zeros_like(a))
    if method == "syg":
        # -1/2 sum dchk (a_k - a_l)^2 = -(sum_k rowsum_k a_k^2 - a^T dchk a)
        rows = xp.sum(dchk, axis=-1)
        quad = xp.matmul(dchk, av)
        if cov:
            t1 = _quad(xp, av, av, rows, True)
            t2 = xp.matmul(xp.matrix_transpose(av), quad)
            return -(t1 - t2)
        return -(xp.sum(rows[..., None] * av * av, axis=-2) - xp.sum(av * quad, axis=-2))
    quad = xp.matmul(dchk, av)
    if cov:
        return xp.matmul(xp.matrix_transpose(av), quad)
    return xp.sum(av * quad, axis=-2)


def _est_successive(a: Array, s: Array, cov: bool) -> Array:
    # v_SD = n / (2 (n - 1)) sum_{j=2}^{n} (a_(j) - a_(j-1))^2 over the sampled units in order
    # (Wolter 2007, Introduction to Variance Estimation, 2nd ed., section 8.2, estimator v_2).
    xp = namespace_of(a)
    dt = a.dtype
    n = xp.sum(xp.astype(s, xp.int64), axis=-1)
    if bool(xp.any(n < 2)):
        raise ValueError(
            "the successive-differences estimator needs at least 2 sampled units in every row"
        )
    order = xp.argsort(xp.astype(~s, xp.int8), axis=-1, stable=True)
    q = a.shape[-1]
    ac = xp.take_along_axis(a, xp.broadcast_to(order[..., None], (*order.shape, q)), axis=-2)
    diff = ac[..., 1:, :] - ac[..., :-1, :]
    k = xp.arange(1, s.shape[-1], dtype=xp.int64, device=a.device)
    valid = xp.astype(k < n[..., None], dt)
    nf = xp.astype(n, dt)
    f = nf / (2 * (nf - 1))
    r = _quad(xp, diff, diff, valid, cov)
    return r * (f[..., None, None] if cov else f[..., None])


def variance_estimate(
    y: Array,
    mask: Array,
    design: Design,
    *,
    method: str = "ht",
    estimator: str = "ht",
    axis: int = -1,
    covariance: bool = False,
) -> Array:
    r"""Variance estimate from one sample: of the HT total, or of the Hájek mean (linearized).

    Parameters
    ----------
    y : array, shape (..., N, *V)
        Values; only sampled units are read (others may be NaN).
    mask : array of bool, shape (..., N)
        The sample :math:`S`; must be a subset of ``design.mask``.
    design : Design
        The design that drew ``mask``.
    method : {"ht", "syg", "successive_differences"}
        ``"ht"``: :math:`v_{HT} = \sum_{k,l \in S} \check\Delta_{kl}\check y_k\check y_l`.
        ``"syg"``: :math:`v_{SYG} = -\frac12\sum_{k,l\in S}\check\Delta_{kl}(\check y_k -
        \check y_l)^2`, fixed-size designs only (``ValueError`` otherwise).
        ``"successive_differences"``: :math:`v_{SD} = \frac{n}{2(n-1)}\sum_{j=2}^{n}
        (\check y_{(j)} - \check y_{(j-1)})^2` over the sampled units in position order — the
        standard choice for systematic samples (Wolter 2007, §8.2), approximately unbiased when
        :math:`\check y` varies smoothly along the sequence, conservative under a trend; it is
        not design-unbiased for any design.
    estimator : {"ht", "hajek"}
        ``"ht"``: variance of the HT total.  ``"hajek"``: linearized variance of the Hájek mean
        :math:`\bar y_H`, i.e. the chosen ``method`` applied to
        :math:`z_k = (y_k - \bar y_H)/\hat N` (Särndal et al. 1992, §5.7).
    axis : int, default -1
        Unit axis of ``y``.
    covariance : bool, default False
        Return the covariance matrix of the value components instead of per-component values.

    Returns
    -------
    array, shape (..., *V) (or (..., *V, *V))
        The estimate.  Unbiased for :func:`design_variance` when every
        :math:`\pi_{kl} > 0` (method ``"ht"``; ``"syg"`` for fixed sizes); may be negative.

    Warns
    -----
    BiasedVarianceEstimateWarning
        For designs with some :math:`\pi_{kl} = 0` (systematic sampling; SimpleRandom with
        :math:`n = 1`).

    Notes
    -----
    Fast paths: Poisson (:math:`\check\Delta_{kl} = 0` off the diagonal, :math:`1 - \pi_k` on it),
    SimpleRandom (constant off-diagonal :math:`\check\Delta`), Prefix
    (:math:`\check\Delta_{kl} = 1 - \max(\pi_k, \pi_l)`, a suffix-sum identity gives
    :math:`O(N)`); other designs use the dense :math:`\check\Delta` (small ``N``).

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> d = nat.Poisson(np.array([0.5, 0.5, 1.0]))
    >>> s = np.array([True, False, True])
    >>> float(nat.variance_estimate(np.array([1.0, 2.0, 3.0]), s, d))
    2.0
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
    if not isinstance(design, Design):
        raise TypeError(f"design must be a nat_estimators design, got {type(design).__name__}")
    u = align_units(y, axis, tuple(design.mask.shape), mask, design.mask)
    xp = u.xp
    s = _check_sample(xp, mask, design)
    pi = design.inclusion_probabilities()
    dt = xp.result_type(u.y.dtype, pi.dtype)
    pi = xp.astype(pi, dt)
    yv = xp.where(s[..., None], xp.astype(u.y, dt), xp.zeros((1,), dtype=dt, device=pi.device))
    if not bool(xp.all(xp.isfinite(yv))):
        raise ValueError("y contains NaN or Inf at sampled units")
    safe = xp.where(s, pi, xp.ones_like(pi))
    w = xp.where(s, 1 / safe, xp.zeros_like(pi))
    if estimator == "hajek":
        nhat = xp.sum(w, axis=-1)
        if bool(xp.any(nhat <= 0)):
            raise ValueError(
                "the Hájek mean (hence its variance) is undefined for an empty sample; a row has "
                "no sampled units"
            )
        ybar = xp.sum(w[..., None] * yv, axis=-2) / nhat[..., None]
        yv = xp.where(s[..., None], (yv - ybar[..., None, :]) / nhat[..., None, None],
                      xp.zeros_like(yv))
    a = w[..., None] * yv  # y-check at sampled units, 0 elsewhere
    cov = bool(covariance)
    if method == "successive_differences":
        r = _est_successive(a, s, cov)
    elif method == "syg" and not design.has_fixed_size():
        raise ValueError(
            f"method='syg' needs a fixed-size design; this {type(design).__name__} design has a "
            "random sample size. Use method='ht'"
        )
    elif isinstance(design, Poisson):
        r = _quad(xp, a, a, xp.where(s, 1 - pi, xp.zeros_like(pi)), cov)
    elif isinstance(design, SimpleRandom):
        r = _est_srs(a, pi, s, design, method, cov)
    elif isinstance(design, Prefix) and method == "ht":
        r = _est_prefix(a, pi, s, cov)
    else:
        r = _est_dense(a, pi, s, design, method, cov)
    return u.restore_cov(r) if cov else u.restore(r)


# ---------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class DesignSummary:
    r"""What a design costs and buys, per row.

    Attributes
    ----------
    expected_size : array (...)
        :math:`E|S|`.
    keep_fraction : array (...)
        :math:`E|S| / N_i` (0 for empty rows).
    max_weight : array (...)
        Largest HT weight :math:`\max_k 1/\pi_k`.
    variance : array (..., *V) or None
        :math:`V(\hat Y)` per component (given ``y``).
    relative_variance : array (...) or None
        :math:`\sum_c V_c / \lVert Y \rVert^2`: squared coefficient of variation of the
        estimated total (gradient) relative to the full-token answer :math:`Y`.
    variance_inflation : array (...) or None
        :math:`\sum_c V_c / \sum_k \lVert y_k\rVert^2`: design variance per unit of per-token
        energy; equals :math:`1/p - 1` for uniform Poisson sampling at keep rate :math:`p`.
    """

    expected_size: Array
    keep_fraction: Array
    max_weight: Array
    variance: Array | None = None
    relative_variance: Array | None = None
    variance_inflation: Array | None = None


def design_summary(design: Design, y: Array | None = None, *, axis: int = -1) -> DesignSummary:
    r"""Budget and variance summary of a design (see :class:`DesignSummary`).

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> d = nat.Poisson.uniform(0.5, mask=np.ones(4, dtype=bool))
    >>> s = nat.design_summary(d, np.array([1.0, 2.0, 3.0, 4.0]))
    >>> float(s.keep_fraction), float(s.max_weight), float(s.variance_inflation)
    (0.5, 2.0, 1.0)
    """
    xp = design.xp
    es = design.expected_size()
    cnt = xp.astype(design.eligible_count(), es.dtype)
    kf = xp.where(cnt > 0, es / xp.where(cnt > 0, cnt, xp.ones_like(cnt)), xp.zeros_like(cnt))
    mw = design.max_weight()
    if y is None:
        return DesignSummary(expected_size=es, keep_fraction=kf, max_weight=mw)
    var = design_variance(y, design, axis=axis)
    u, _, _ = _prep_population(y, design, axis)
    vsum = xp.sum(xp.reshape(var, (*u.batch_shape, -1)), axis=-1)
    tot = xp.sum(u.y, axis=-2)
    y2 = xp.sum(tot * tot, axis=-1)
    e2 = xp.sum(xp.sum(u.y * u.y, axis=-1), axis=-1)
    rel = vsum / xp.where(y2 > 0, y2, xp.ones_like(y2))
    infl = vsum / xp.where(e2 > 0, e2, xp.ones_like(e2))
    return DesignSummary(es, kf, mw, var, rel, infl)
