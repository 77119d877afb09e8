r"""Inclusion probabilities proportional to size, capped at 1.

.. math::

    \pi_k = \min(1, c\, x_k), \qquad \text{$c > 0$ such that } \sum_k \pi_k = n.

This is the standard construction of :math:`\pi\text{ps}` designs (Särndal, Swensson & Wretman
1992, §3.6; Tillé 2006, §2.10, algorithm of R's ``sampling::inclusionprobabilities``), with two
differences from R: it is vectorised over rows, and infeasible input raises instead of silently
returning :math:`\sum_k \pi_k < n`.
"""

from __future__ import annotations

from typing import Any

from ._compat import (
    Array,
    device_of,
    float64_or_best,
    gather_last,
    is_array,
    is_half,
    namespace,
    sort_last,
)
from ._validation import any_true, check_bool_mask, check_float_array, check_scalar_or_row_array

__all__ = ["inclusion_probabilities"]


def inclusion_probabilities(x: Array, n: Any, *, mask: Array | None = None) -> Array:
    r"""Size-proportional inclusion probabilities with certainty units capped at 1, per row.

    Parameters
    ----------
    x : array, shape (..., N)
        Non-negative finite size measures :math:`x_k` (e.g. token entropies, :math:`|A|`);
        rows on the leading axes.
    n : float or array of shape (...)
        Target expected sample size per row, :math:`0 < n \le \#\{k : x_k > 0\}`; need not be an
        integer (Poisson sampling, systematic sampling with a random size).  A row without
        eligible tokens takes :math:`n = 0` (its :math:`\pi` is all 0).
    mask : array of bool, shape (..., N), optional
        Eligible positions; ``x`` is ignored elsewhere (may be NaN there) and :math:`\pi = 0`.

    Returns
    -------
    array, shape (..., N)
        :math:`\pi_k \in [0, 1]` with :math:`\sum_k \pi_k = n` per row, in ``x``'s dtype —
        float32 for half-precision ``x`` (float16/bfloat16 sizes are computed in float64: in
        half precision the sums that set the budget are off by percents, and so would be
        :math:`\pi` itself).

    Raises
    ------
    ValueError
        On negative or non-finite sizes at eligible positions, :math:`n \le 0`, or :math:`n`
        larger than the number of positive sizes of a row (infeasible: R's
        ``inclusionprobabilities`` silently returns a smaller total in that case).

    Notes
    -----
    Sort a row's sizes decreasingly, :math:`x_{(1)} \ge \dots \ge x_{(N)}`, and let
    :math:`T_m = \sum_{j > m} x_{(j)}`.  With :math:`m` certainty units the scale is
    :math:`c_m = (n - m)/T_m`.  The number of certainty units is the smallest :math:`m` with

    .. math:: (n - m)\, x_{(m+1)} \le T_m ,

    i.e. :math:`c_m x_{(m+1)} \le 1`.  This :math:`m` is consistent: the previous condition failing,
    :math:`(n - m + 1) x_{(m)} > T_{m-1} = x_{(m)} + T_m`, gives :math:`c_m x_{(m)} > 1`, so the
    units :math:`(1) \dots (m)` are indeed capped.  Because :math:`c \mapsto \sum_k \min(1, c x_k)`
    is increasing until every positive unit is capped, the solution is unique and equals the fixed
    point of R's iterative capping loop.  Computed for all rows at once: one sort, one cumulative
    sum, one gather.

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> nat.inclusion_probabilities(np.array([1.0, 1.0, 2.0, 20.0]), 2)
    array([0.25, 0.25, 0.5 , 1.  ])
    """
    xp = namespace(x, mask, n if is_array(n) else None, names=("x", "mask", "n"))
    x = check_float_array(xp, x, "x")
    if x.shape[-1] == 0:
        raise ValueError("x has an empty token axis; there must be at least one token position")
    if mask is None:
        mask = xp.ones(x.shape, dtype=xp.bool, device=device_of(x))
    else:
        mask = check_bool_mask(xp, mask, "mask", shape=tuple(x.shape))
    if any_true(xp, mask & ~xp.isfinite(x)):
        raise ValueError("x contains NaN or Inf at eligible positions; sizes must be finite")
    if any_true(xp, mask & (x < 0)):
        raise ValueError("x contains negative sizes; size measures must be >= 0")
    batch_shape = tuple(x.shape[:-1])
    n = check_scalar_or_row_array(xp, n, "n", batch_shape)
    out_dtype = x.dtype
    if is_half(xp, x.dtype):
        out_dtype = xp.float32
        x = xp.astype(x, float64_or_best(xp, device_of(x)))
    dtype = x.dtype
    dev = device_of(x)
    n_arr = xp.broadcast_to(xp.asarray(n, dtype=dtype, device=dev), batch_shape)
    # n = 0 is the only possible size of a row without eligible tokens (and only there)
    empty_row = ~xp.any(mask, axis=-1)
    if any_true(xp, ~((n_arr > 0) | ((n_arr == 0) & empty_row))):
        raise ValueError(
            "n must be > 0 (the expected sample size of every row); n = 0 is allowed only for "
            "rows without eligible tokens (pass n as a per-row array)"
        )
    xs = xp.where(mask, x, xp.zeros_like(x))
    # pi does not depend on the scale of a row's sizes: rows with huge sizes are divided by their
    # maximum so that the sums below cannot overflow (sizes near 1e308 gave a RuntimeWarning and
    # garbage).  Ordinary rows are left untouched.  The division goes through sqrt(max) twice:
    # XLA (JAX) divides by multiplying with the reciprocal, and 1/max of a huge row is subnormal,
    # which it flushes to zero.
    xmax = xp.max(xs, axis=-1, keepdims=True)
    huge = xmax > xp.finfo(dtype).max ** 0.5
    root = xp.sqrt(xp.where(huge, xmax, xp.ones_like(xmax)))
    xs = xp.where(huge, (xs / root) / root, xs)
    n_pos = xp.sum(xp.astype(xs > 0, dtype), axis=-1)
    if any_true(xp, n_arr > n_pos * (1 + 1e-12)):
        raise ValueError(
            "n exceeds the number of eligible tokens with positive size in some row, so "
            "sum(pi) = n is infeasible with pi <= 1; lower n or give more tokens a positive size "
            "(a row without eligible tokens takes n = 0)"
        )
    # n within the rounding tolerance above #positive sizes: clamp it.  Without this no m
    # satisfies the capping condition below (not even m = #pos - 1), argmax falls back to m = 0
    # and the result is wrong (x = [1, 2, 3], n = 3 + 1e-13 gave [0.5, 1, 1]).
    n_arr = xp.minimum(n_arr, n_pos)
    pi = _capped_probabilities(xp, xs, n_arr, n_pos)
    return pi if pi.dtype == out_dtype else xp.astype(pi, out_dtype)


def _capped_probabilities(xp: Any, xs: Array, n: Array, n_pos: Array) -> Array:
    r"""The capping of :func:`inclusion_probabilities` on checked input, all rows at once.

    ``xs``: finite sizes :math:`\ge 0`, 0 at ineligible positions, shape ``(..., N)``, floating;
    ``n``: per-row targets in :math:`[0, n_+]` in ``xs``'s dtype, shape ``(...)``; ``n_pos``: the
    number :math:`n_+` of positive sizes per row.  A row with ``n = 0`` gets :math:`\pi = 0`.

    One ascending sort and one cumulative sum per row, then elementwise passes: no loop over rows
    or tokens.  With :math:`a_1 \le \dots \le a_N` the ascending sizes and
    :math:`P_i = a_1 + \dots + a_i`, descending rank :math:`m + 1` is ascending index
    :math:`i = N - m` and :math:`T_m = P_{N-m}`, so the capping condition
    :math:`(n - m)\, x_{(m+1)} \le T_m` reads :math:`(n - N + i)\, a_i \le P_i` and the smallest
    such :math:`m` is the largest such :math:`i`.  (:math:`P` is the same sequence of rounded
    partial sums as the reverse cumulative sum of the descending sort, so the result is the same
    to the last bit.)
    """
    dtype = xs.dtype
    dev = device_of(xs)
    N = xs.shape[-1]
    asc = sort_last(xp, xs)
    psum = xp.cumulative_sum(asc, axis=-1)
    nn = n[..., None]
    # (n - m) with m = N - 1 - i, for the 0-based ascending index i
    minus_m = xp.arange(N, dtype=dtype, device=dev) - (N - 1)
    lhs = nn + minus_m
    lhs *= asc  # in place: one (..., N) temporary fewer
    flags = lhs <= psum
    # largest i with the flag set = smallest m (argmax returns the first maximum; no flag: m = 0)
    mstar = xp.argmax(xp.astype(xp.flip(flags, axis=-1), xp.int8), axis=-1, keepdims=True)
    t_m = gather_last(xp, psum, N - 1 - mstar)
    one = xp.ones((), dtype=dtype, device=dev)
    # Units at or above the capping threshold x_(m) are exactly 1 (avoid 1 - 1e-16 from rounding);
    # x_(m) > 0 whenever m > 0 (the flag at m - 1 failed), so no zero size is ever capped.  No
    # unit is capped where m = 0 (threshold +inf), and where n = number of positive sizes every
    # positive unit is a certainty unit, exactly (equal sizes could otherwise give 1 - 1e-16 when
    # the rounded sum lets m = 0 pass the test above): threshold 0, and only positive sizes are
    # capped (no subnormal threshold, which XLA flushes to zero).
    kth = gather_last(xp, asc, xp.minimum(N - mstar, xp.full_like(mstar, N - 1)))
    kth = xp.where(mstar > 0, kth, xp.full_like(kth, xp.inf))
    thr = xp.where((n >= n_pos)[..., None], xp.zeros_like(kth), kth)
    capped = (xs > 0) & (xs >= thr)
    # pi = (n - m) x / T_m on the other units.  There x <= x_(m+1) <= T_m / (n - m), so the ratio
    # x / T_m is at most 1; forming c = (n - m) / T_m first overflowed for subnormal T_m.
    # (In place on a fresh array, in the same order of operations: free / T_m, then times n - m.)
    pi = xp.where(capped, xp.zeros((), dtype=dtype, device=dev), xs)
    pi /= xp.where(t_m > 0, t_m, xp.ones_like(t_m))
    pi *= nn - xp.astype(mstar, dtype)
    pi = xp.minimum(pi, one)
    return xp.where(capped, one, pi)
