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

from ._compat import Array, device_of, gather_last, namespace
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
        integer (Poisson sampling, systematic sampling with a random size).
    mask : array of bool, shape (..., N), optional
        Eligible positions; ``x`` is ignored elsewhere (may be NaN there) and :math:`\pi = 0`.

    Returns
    -------
    array, shape (..., N)
        :math:`\pi_k \in [0, 1]` with :math:`\sum_k \pi_k = n` per row, in ``x``'s dtype.

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
    xp = namespace(x, mask)
    x = check_float_array(xp, x, "x")
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
    dtype = x.dtype
    dev = device_of(x)
    n_arr = xp.broadcast_to(xp.asarray(n, dtype=dtype, device=dev), batch_shape)
    if any_true(xp, ~(n_arr > 0)):
        raise ValueError("n must be > 0 (the expected sample size of every row)")
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
            "sum(pi) = n is infeasible with pi <= 1; lower n or give more tokens a positive size"
        )
    # n within the rounding tolerance above #positive sizes: clamp it.  Without this no m
    # satisfies the capping condition below (not even m = #pos - 1), argmax falls back to m = 0
    # and the result is wrong (x = [1, 2, 3], n = 3 + 1e-13 gave [0.5, 1, 1]).
    n_arr = xp.minimum(n_arr, n_pos)
    N = x.shape[-1]
    xsort = xp.sort(xs, axis=-1, descending=True)
    # T_m = sum_{j > m} x_(j) for m = 0..N-1: reverse cumulative sum (monotone under rounding).
    suffix = xp.flip(xp.cumulative_sum(xp.flip(xsort, axis=-1), axis=-1), axis=-1)
    m = xp.arange(N, dtype=dtype, device=dev)
    nn = n_arr[..., None]
    flags = (nn - m) * xsort <= suffix
    # smallest m with the flag set (argmax returns the first maximum)
    mstar = xp.argmax(xp.astype(flags, xp.int8), axis=-1, keepdims=True)
    t_m = gather_last(xp, suffix, mstar)
    # units at or above the capping threshold are exactly 1 (avoid 1 - 1e-16 from rounding)
    kth = gather_last(xp, xsort, xp.maximum(mstar - 1, xp.zeros_like(mstar)))
    capped = (mstar > 0) & (xs >= kth)
    # pi = (n - m) x / T_m on the other units.  There x <= x_(m+1) <= T_m / (n - m), so the ratio
    # x / T_m is at most 1; forming c = (n - m) / T_m first overflowed for subnormal T_m.
    free = xp.where(capped, xp.zeros_like(xs), xs)
    ratio = free / xp.where(t_m > 0, t_m, xp.ones_like(t_m))
    pi = xp.minimum(xp.ones_like(xs), (nn - xp.astype(mstar, dtype)) * ratio)
    # n = number of positive sizes: every positive unit is a certainty unit, exactly (equal sizes
    # could otherwise give 1 - 1e-16 when the rounded sum lets m = 0 pass the test above)
    capped = capped | ((nn >= n_pos[..., None]) & (xs > 0))
    pi = xp.where(capped, xp.ones_like(pi), pi)
    return xp.where(mask, pi, xp.zeros_like(pi))
