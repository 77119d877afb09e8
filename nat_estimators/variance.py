r"""Variance of the Horvitz–Thompson total: exact design variance and one-sample estimators.

Notation (:doc:`/theory/notation`): :math:`\Delta_{kl} = \pi_{kl} - \pi_k\pi_l`, :math:`\check y_k =
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
:math:`\le N + 1` breakpoints of :math:`u`), all :math:`O(N)` or :math:`O(N \log N)` per row.
"""

from __future__ import annotations

import warnings

from ._compat import Array, float64_or_best, gather_last
from ._deprecation import positional_arrays
from ._design import Design
from ._units import quiet_float_errors
from ._variance_engine import (
    BiasedVarianceEstimateWarning,
    _check_sample,
    _est_dense,
    _est_successive,
    _lin,
    _outer,
    _per_row,
    _prefix_cut_weights,
    _quad,
    _Rows,
    _rows,
    _scan_sq,
    _var_dense,
    _weights,
)
from .poisson import Poisson
from .prefix import Prefix
from .simple_random import SimpleRandom
from .systematic import Systematic

__all__ = [
    "BiasedVarianceEstimateWarning",
    "design_variance",
    "variance_estimate",
]


# ---------------------------------------------------------------------------- exact variance
def _var_poisson(r: _Rows, y: Array, cov: bool) -> Array:
    # Delta_kk = pi_k (1 - pi_k), Delta_kl = 0:  V = sum_k (1 - pi_k) y_k^2 / pi_k
    xp = r.xp
    c = xp.where(r.mask, (1 - r.pi) / xp.where(r.mask, r.pi, xp.ones_like(r.pi)),
                 xp.zeros_like(r.pi))
    return r.run(lambda yc, cc: _quad(xp, yc, cc, cov), y, c)


def _var_srs(r: _Rows, y: Array, design: SimpleRandom, cov: bool) -> Array:
    # V = N^2 (1 - n/N) S^2 / n,  S^2 = sum (y - ybar)^2 / (N - 1)   (Sarndal et al. eq. 3.3.8)
    xp = r.xp
    dt = r.pi.dtype
    n = xp.reshape(xp.astype(design.n, dt), (r.n_rows,))
    cnt = xp.reshape(xp.astype(design.eligible_count(), dt), (r.n_rows,))
    if bool(xp.any((n == 0) & (cnt > 0))):
        raise ValueError(
            "a SimpleRandom row samples n = 0 of N > 0 eligible tokens: pi = 0 there and the HT "
            "total is not unbiased, so its variance is undefined; use n >= 1"
        )
    one = xp.ones_like(cnt)
    m = xp.astype(r.mask, dt)
    inv_cnt = xp.where(cnt > 0, 1 / xp.where(cnt > 0, cnt, one), xp.zeros_like(cnt))
    factor = xp.where((cnt > 1) & (n > 0),
                      cnt * (cnt - n) / (xp.where(n > 0, n, one) * xp.where(cnt > 1, cnt - 1, one)),
                      xp.zeros_like(cnt))

    def chunk(yc: Array, mc: Array, ic: Array, fc: Array) -> Array:
        ybar = _lin(xp, yc, mc) * ic[:, None]
        dev = yc - ybar[:, None, :]
        return _quad(xp, dev, mc, cov) * _per_row(fc, cov)

    return r.run(chunk, y, m, inv_cnt, factor)


def _var_prefix(r: _Rows, y: Array, cov: bool) -> Array:
    # Sum over the N + 1 possible cuts L = j:  V = sum_j P(L = j) (C_j - Y)^2, where C_j is the
    # HT total of the first j eligible tokens (C_0 = 0).  Every term is >= 0 (no cancellation).
    xp = r.xp
    p_pos, p0 = _prefix_cut_weights(xp, r.pi)
    w = _weights(xp, r.pi, r.mask)
    m = xp.astype(r.mask, r.pi.dtype)

    def chunk(yc: Array, wc: Array, pc: Array, mc: Array, p0c: Array) -> Array:
        total = _lin(xp, yc, mc)
        return _scan_sq(xp, yc, wc, pc, -total, cov) + _per_row(p0c, cov) * _outer(xp, total, cov)

    return r.run(chunk, y, w, p_pos, m, p0)


def _var_systematic(r: _Rows, y: Array, design: Systematic, cov: bool) -> Array:
    # u -> HT total is a step function on [0, 1).  Token k (0-based) is selected iff u lies in the
    # arc (t_k, t_k + pi_k] (mod 1), t_k = frac(V_{k-1}); token k's arc ends where token k+1's
    # starts, so the N + 1 points t_0 = 0, ..., t_{N-1}, frac(V_{N-1}) are the only breakpoints.
    # At t_k the total jumps by ycheck_k - ycheck_{k-1} (ycheck_{-1} = ycheck_N = 0).  Starting from
    # the sample at u = 0 and sweeping the sorted breakpoints: V = sum |interval| (value - Y)^2.
    # Everything follows the sampling rule on the same rounded cumulative sums V_k.
    xp = r.xp
    dt = r.pi.dtype
    f64 = float64_or_best(xp, design.device)
    pi = xp.reshape(xp.astype(design.pi, f64), (r.n_rows, -1))
    v = xp.cumulative_sum(pi, axis=-1)
    zero1 = xp.zeros((r.n_rows, 1), dtype=f64, device=design.device)
    vprev = xp.concat([zero1, v[:, :-1]], axis=-1)
    pos = xp.concat([vprev - xp.floor(vprev), v[:, -1:] - xp.floor(v[:, -1:])], axis=-1)
    order = xp.argsort(pos, axis=-1, stable=True)
    ps = gather_last(xp, pos, order)
    lengths = xp.astype(xp.concat([ps[:, 1:], zero1 + 1], axis=-1) - ps, dt)
    at0 = (xp.floor(v) > xp.floor(vprev)) & r.mask  # the sample at u = 0 (Madow's rule)
    w = _weights(xp, r.pi, r.mask)
    w0 = xp.where(at0, w, xp.zeros_like(w))
    # A token whose rounded arc V_k - V_{k-1} reaches 1 (pi_k = 1, up to rounding of the cumulative
    # sum) is selected for every u by the sampling rule: it is in the sample at u = 0 and has no
    # breakpoints (its start/end points could otherwise come out of order by one ulp).
    w = xp.where((v - vprev) >= 1, xp.zeros_like(w), w)
    m = xp.astype(r.mask, dt)

    def chunk(yc: Array, wc: Array, w0c: Array, mc: Array, oc: Array, lc: Array) -> Array:
        nr, _, q = yc.shape
        yck = wc[:, :, None] * yc
        z = xp.zeros((nr, 1, q), dtype=yc.dtype, device=yc.device)
        steps = xp.concat([yck, z], axis=1) - xp.concat([z, yck], axis=1)  # (nr, N + 1, q)
        idx = xp.broadcast_to(oc[:, :, None], (*oc.shape, q))
        ds = xp.take_along_axis(steps, idx, axis=1)
        start = _lin(xp, yc, w0c) - _lin(xp, yc, mc)  # HT total at u = 0 minus Y
        return _scan_sq(xp, ds, None, lc, start, cov)

    return r.run(chunk, y, w, w0, m, order, lengths)


@positional_arrays("y", "design")
def design_variance(
    y: Array,
    design: Design,
    /,
    *,
    axis: int = -1,
    covariance: bool = False,
    method: str = "auto",
) -> Array:
    r"""Exact design variance of the Horvitz–Thompson total, :math:`V(\hat Y)`.

    Parameters
    ----------
    y : array, shape (..., N, *V)
        Population values at every eligible unit (ignored at ineligible positions, which may hold
        NaN); ``axis`` is the unit axis, axes after it are value axes (e.g. per-token gradients).
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
        :math:`\sum_k\sum_l \Delta_{kl}\check y_k \check y_l` per component (or the covariance), in
        the promoted dtype of ``y`` and the design's probabilities.

    Raises
    ------
    ValueError
        If ``y`` is NaN or Inf at an eligible unit, or its shape does not match the design.

    Notes
    -----
    Fast paths (Särndal et al. 1992 for the closed forms), none of which forms an
    :math:`N \times N` array:

    * Poisson: :math:`V = \sum_k (1 - \pi_k)\, y_k^2/\pi_k`.
    * SimpleRandom: :math:`V = N^2 (1 - n/N) S_y^2 / n`, :math:`S_y^2 = \sum_k (y_k -
      \bar y)^2/(N - 1)`.
    * Prefix: the cut :math:`L` takes :math:`N + 1` values with :math:`P(L = j) = \pi_j -
      \pi_{j+1}`, and the estimate for :math:`L = j` is :math:`C_j = \sum_{k \le j} \check y_k`,
      so :math:`V = \sum_{j=0}^{N} P(L = j)(C_j - Y)^2` — a sum of non-negative terms.
    * Systematic: :math:`u \mapsto \hat Y(u)` is a step function with at most :math:`N + 1`
      breakpoints :math:`V_k \bmod 1`; sorting them gives
      :math:`V = \sum_{\text{intervals}} |I| (\hat Y_I - Y)^2`, :math:`O(N \log N)`.

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> y = np.array([1.0, 2.0, 3.0, 4.0])
    >>> float(nat.design_variance(y, nat.Poisson.from_fraction(0.5, mask=np.ones(4, dtype=bool))))
    30.0
    >>> d = nat.Prefix(np.array([1.0, 0.75, 0.5, 0.25]))
    >>> bool(np.isclose(nat.design_variance(y, d), nat.design_variance(y, d, method="dense")))
    True
    """
    if method not in ("auto", "dense"):
        raise ValueError(f"method must be 'auto' or 'dense', got {method!r}")
    r = _rows(y, design, axis)
    cov = bool(covariance)

    def compute(yv: Array) -> Array:
        if method == "dense":
            return _var_dense(r, yv, design, cov)
        if isinstance(design, Poisson):
            return _var_poisson(r, yv, cov)
        if isinstance(design, SimpleRandom):
            return _var_srs(r, yv, design, cov)
        if isinstance(design, Prefix):
            return _var_prefix(r, yv, cov)
        if isinstance(design, Systematic):
            return _var_systematic(r, yv, design, cov)
        return _var_dense(r, yv, design, cov)

    xp = r.xp
    # Optimistic: y is used as given (no masked copy of the whole array).  Ineligible positions
    # enter with weight 0, so a non-finite result means NaN/Inf padding there (recompute with it
    # zeroed), NaN/Inf at an eligible unit (an error) or a genuine overflow (returned as is).
    with quiet_float_errors():
        out = compute(r.y)
    if not bool(xp.all(xp.isfinite(out))):
        m3 = r.mask[:, :, None]
        if not bool(xp.all(xp.isfinite(xp.where(m3, r.y, xp.zeros_like(r.y))))):
            raise ValueError(
                "y contains NaN or Inf at eligible units; the design variance needs all of y"
            )
        out = compute(xp.where(m3, r.y, xp.zeros_like(r.y)))
    return r.restore(out, cov)


# ---------------------------------------------------------------------------- estimators
_METHODS = ("ht", "syg", "successive_differences")
_ESTIMATORS = ("ht", "hajek")

def _est_poisson(r: _Rows, y: Array, s: Array, cov: bool) -> Array:
    # v_HT = sum_{k in S} (1 - pi_k) ycheck_k^2   (Delta-check_kk = 1 - pi_k, 0 off the diagonal)
    xp = r.xp
    w = _weights(xp, r.pi, s)
    c = w * w * (1 - r.pi)
    return r.run(lambda yc, cc: _quad(xp, yc, cc, cov), y, c)


def _est_srs(r: _Rows, y: Array, s: Array, design: SimpleRandom, method: str, cov: bool) -> Array:
    # Delta-check is constant off the diagonal: c = 1 - pi^2/pi_kl = (n - N) / (N (n - 1)), and
    # 1 - pi on it.  With m sampled units, a = ycheck, abar their mean and SS = sum_S (a - abar)^2:
    #   v_HT  = (1 - pi - c) SS + m ((1 - pi) + c (m - 1)) abar^2   (second term 0 when m = n)
    #   v_SYG = -c m SS
    # i.e. N^2 (1 - f) s^2 / n for a valid sample, computed from deviations (no cancellation).
    xp = r.xp
    dt = r.pi.dtype
    n = xp.reshape(xp.astype(design.n, dt), (r.n_rows,))
    cnt = xp.reshape(xp.astype(design.eligible_count(), dt), (r.n_rows,))
    one = xp.ones_like(n)
    if bool(xp.any((n == 1) & (cnt > 1))):
        what = "0" if method == "syg" else "(1 - pi) ycheck^2, from the sampled unit alone"
        warnings.warn(
            "SimpleRandom with n = 1 has pi_kl = 0 for every pair: the variance estimate is "
            f"biased (it is {what}); use n >= 2",
            BiasedVarianceEstimateWarning,
            stacklevel=3,
        )
    ok = (n > 1) & (cnt > 1)
    c = xp.where(ok, (n - cnt) / (xp.where(ok, cnt, one) * xp.where(ok, n - 1, one)),
                 xp.zeros_like(n))
    pi_row = xp.where(cnt > 0, n / xp.where(cnt > 0, cnt, one), xp.zeros_like(n))
    sf = xp.astype(s, dt)
    m = xp.sum(sf, axis=-1)
    inv_m = xp.where(m > 0, 1 / xp.where(m > 0, m, one), xp.zeros_like(m))
    w = _weights(xp, r.pi, s)
    if method == "syg":
        f_ss, f_mean = -c * m, xp.zeros_like(m)
    else:
        f_ss, f_mean = 1 - pi_row - c, m * ((1 - pi_row) + c * (m - 1))

    def chunk(yc: Array, wc: Array, sc: Array, ic: Array, fs: Array, fm: Array) -> Array:
        a = wc[:, :, None] * yc
        abar = _lin(xp, yc, wc) * ic[:, None]
        ss = _quad(xp, a - abar[:, None, :], sc, cov)
        return _per_row(fs, cov) * ss + _per_row(fm, cov) * _outer(xp, abar, cov)

    return r.run(chunk, y, w, sf, inv_m, f_ss, f_mean)


def _est_prefix(r: _Rows, y: Array, s: Array, cov: bool, centered: bool) -> Array:
    # Delta-check_kl = 1 - max(pi_k, pi_l) = 1 - pi_min(k,l) (pi non-increasing).  Summing by parts
    # over the cuts: v_HT = sum_{j=0}^{N} P(L = j) (C_j - Yhat)^2, where C_j is the HT total of the
    # sample's first j eligible tokens — the exact-variance formula with the estimate Yhat in place
    # of Y.  Non-negative, and no cancellation.  ``centered``: y are Hájek residuals, whose HT total
    # is exactly 0 — use that 0 rather than a rounded sum of large terms (float32, tiny pi).
    xp = r.xp
    p_pos, p0 = _prefix_cut_weights(xp, r.pi)
    w = _weights(xp, r.pi, s)

    def chunk(yc: Array, wc: Array, pc: Array, p0c: Array) -> Array:
        total = _lin(xp, yc, wc)
        if centered:
            total = xp.zeros_like(total)
        return _scan_sq(xp, yc, wc, pc, -total, cov) + _per_row(p0c, cov) * _outer(xp, total, cov)

    return r.run(chunk, y, w, p_pos, p0)

@positional_arrays("y", "sample", "design", renamed={"mask": "sample"})
def variance_estimate(
    y: Array,
    sample: Array,
    design: Design,
    /,
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
        Values; only sampled units are read (others may be NaN or Inf).
    sample : array of bool, shape (..., N)
        The sample :math:`S`; must be a subset of ``design.mask`` (the eligible units).
    design : Design
        The design that drew ``sample``.
    method : {"ht", "syg", "successive_differences"}
        ``"ht"``: :math:`v_{HT} = \sum_{k,l \in S} \check\Delta_{kl}\check y_k\check y_l`.
        ``"syg"``: :math:`v_{SYG} = -\frac12\sum_{k,l\in S}\check\Delta_{kl}(\check y_k -
        \check y_l)^2`, fixed-size designs only (``ValueError`` otherwise).
        ``"successive_differences"``: :math:`v_{SD} = (1 - f)\frac{n}{2(n-1)}\sum_{j=2}^{n}
        (\check y_{(j)} - \check y_{(j-1)})^2` over the :math:`n` sampled units in position
        order, :math:`f = n/N` — the standard choice for systematic samples (Wolter 2007, §8.2,
        :math:`v_2`).  It is not design-unbiased for any design: it is unbiased on average over
        random orderings of the units (equal probabilities), close when :math:`\check y` is a
        smooth signal plus local noise, and it *underestimates* when a strong linear trend or a
        period near the sampling step dominates (the start-position effect it cannot see).  For
        unequal :math:`\pi` the finite-population correction :math:`1 - n/N` is an
        approximation.
    estimator : {"ht", "hajek"}
        ``"ht"``: variance of the HT total.  ``"hajek"``: linearized variance of the Hájek mean
        :math:`\bar y_H`, i.e. the chosen ``method`` applied to
        :math:`z_k = (y_k - \bar y_H)/\hat N` (Särndal et al. 1992, §5.7) — what R's
        ``survey::svymean`` reports as its squared SE.
    axis : int, default -1
        Unit axis of ``y``.
    covariance : bool, default False
        Return the covariance matrix of the value components instead of per-component values.

    Returns
    -------
    array, shape (..., *V) (or (..., *V, *V))
        The estimate.  Unbiased for :func:`design_variance` when every
        :math:`\pi_{kl} > 0` (method ``"ht"``; ``"syg"`` for fixed sizes).  ``"ht"`` may be
        negative for some designs (never for Poisson, SimpleRandom or Prefix).

    Raises
    ------
    ValueError
        Unknown ``method``/``estimator``; ``"syg"`` on a random-size design (Poisson, Prefix,
        Systematic with a non-integer :math:`\sum\pi`); ``sample`` not a subset of the design's
        eligible units; an empty sample with ``estimator="hajek"``; fewer than 2 sampled units
        with ``"successive_differences"``; NaN/Inf in ``y`` at a sampled unit.

    Warns
    -----
    BiasedVarianceEstimateWarning
        For designs with some :math:`\pi_{kl} = 0` (systematic sampling; SimpleRandom with
        :math:`n = 1`).

    Notes
    -----
    Fast paths, :math:`O(N)` per row: Poisson (:math:`\check\Delta_{kl} = 0` off the diagonal,
    :math:`1 - \pi_k` on it), SimpleRandom (constant off-diagonal :math:`\check\Delta`, computed
    from deviations as :math:`N^2(1 - f)s^2/n`), Prefix (:math:`\check\Delta_{kl} = 1 -
    \max(\pi_k, \pi_l)`; summing by parts gives :math:`v_{HT} = \sum_{j=0}^{N} P(L = j)(C_j -
    \hat Y)^2` with :math:`C_j` the estimate from the sample's first :math:`j` tokens).  Other
    designs (Systematic) use the dense :math:`\check\Delta`, :math:`O(N^2)` memory per row.

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
    r = _rows(y, design, axis, (sample,))
    xp = r.xp
    s = xp.reshape(_check_sample(xp, sample, design), (r.n_rows, -1))
    if method == "syg" and not design.has_fixed_size():
        raise ValueError(
            f"method='syg' needs a fixed-size design; this {type(design).__name__} design has a "
            "random sample size. Use method='ht'"
        )
    zero = xp.zeros((1,), dtype=r.y.dtype, device=r.y.device)
    yv = xp.where(s[:, :, None], r.y, zero)  # values at unsampled units are never read
    if not bool(xp.all(xp.isfinite(yv))):
        raise ValueError("y contains NaN or Inf at sampled units")
    if estimator == "hajek":
        w = _weights(xp, r.pi, s)
        nhat = xp.sum(w, axis=-1)
        if bool(xp.any(nhat <= 0)):
            raise ValueError(
                "the Hájek mean (hence its variance) is undefined for an empty sample; a row of "
                "sample has no sampled units"
            )
        ybar = _lin(xp, yv, w) / nhat[:, None]
        yv = xp.where(s[:, :, None], (yv - ybar[:, None, :]) / nhat[:, None, None], zero)
    cov = bool(covariance)
    if method == "successive_differences":
        out = _est_successive(r, yv, s, cov)
    elif isinstance(design, Poisson):
        out = _est_poisson(r, yv, s, cov)
    elif isinstance(design, SimpleRandom):
        out = _est_srs(r, yv, s, design, method, cov)
    elif isinstance(design, Prefix) and method == "ht":
        out = _est_prefix(r, yv, s, cov, centered=estimator == "hajek")
    else:
        out = _est_dense(r, yv, s, design, method, cov)
    return r.restore(out, cov)
