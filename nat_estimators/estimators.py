r"""Horvitz–Thompson and Hájek (self-normalized) estimators.

Notation (:doc:`/theory/notation`): a row's eligible tokens form the population
:math:`U = \{1..N\}`; the sample :math:`S \subseteq U` is given by the boolean ``sample``
(:math:`I_k = 1\{k \in S\}`) and :math:`\pi_k = P(k \in S)`.  With :math:`\check y_k = y_k/\pi_k`:

* Horvitz–Thompson total (Horvitz & Thompson 1952): :math:`\hat Y = \sum_{k \in S} \check y_k`,
  unbiased for :math:`Y = \sum_{k \in U} y_k` whenever :math:`\pi_k > 0` for all :math:`k`, since
  :math:`E[\hat Y] = \sum_k E[I_k]\, y_k/\pi_k = \sum_k y_k`.
* HT mean with known :math:`N`: :math:`\hat Y / N`.
* Hájek mean (Hájek 1971): :math:`\bar y_H = \hat Y / \hat N`, :math:`\hat N = \sum_{k \in S}
  1/\pi_k`.  A ratio of two unbiased estimators: biased, with bias :math:`O(1/n)`, often lower
  variance (Särndal, Swensson & Wretman 1992, §5.7).  Undefined for an empty sample.

All functions are vectorised over leading row axes and accept vector-valued ``y`` (axes after
``axis``), e.g. a per-token gradient.  Values of ``y`` at unsampled units are never read into the
result: they are replaced by 0 with ``where`` before any arithmetic, so NaN or Inf there changes
neither the value nor (under torch autograd) the gradient, which is :math:`I_k/\pi_k`.
"""

from __future__ import annotations

from typing import Any

from ._compat import Array, at_least_float32, device_of, float_dtype, is_half, namespace
from ._deprecation import positional_arrays
from ._units import Units, align_units, quiet_float_errors
from ._validation import (
    any_true,
    check_bool_mask,
    check_finite_result,
    check_float_array,
    check_scalar_or_row_array,
)

__all__ = ["hajek_mean", "hajek_total", "ht_mean", "ht_total", "ht_weights"]


def _prepare(y: Array, sample: Array, pi: Array, axis: int) -> tuple[Units, Array, Array]:
    """Validate and return (units, sample, weights 1/pi at sampled units)."""
    u0 = align_units(y, axis, None, sample, pi, names=("sample", "pi"))
    xp = u0.xp
    ushape = (*u0.batch_shape, u0.y.shape[-2])
    check_bool_mask(xp, sample, "sample")
    pi = check_float_array(xp, pi, "pi")
    if tuple(pi.shape) != tuple(sample.shape):
        raise ValueError(
            f"sample has shape {tuple(sample.shape)} but pi has shape {tuple(pi.shape)}; they "
            "must be equal (rows on leading axes, units on the last)"
        )
    if tuple(sample.shape) != ushape:
        raise ValueError(
            f"y.shape[:axis + 1] = {ushape} (axis={axis}) does not match the shape "
            f"{tuple(sample.shape)} of sample and pi; y must be aligned with them up to and "
            "including its unit axis (axes after it are value axes)"
        )
    dt = at_least_float32(xp, float_dtype(xp, u0.y, pi))
    w = ht_weights(sample, pi, dtype=dt)
    yv = xp.astype(u0.y, dt) if u0.y.dtype != dt else u0.y
    yv = xp.where(sample[..., None], yv, xp.zeros_like(yv))
    units = Units(xp=xp, y=yv, batch_shape=u0.batch_shape, value_shape=u0.value_shape)
    return units, sample, xp.astype(w, dt)


@positional_arrays(
    "sample", "pi", renamed={"mask": "sample", "response_mask": "mask"}, keyword_only=("mask",)
)
def ht_weights(
    sample: Array, pi: Array, /, *, mask: Array | None = None, dtype: Any = None
) -> Array:
    r"""Horvitz–Thompson weights :math:`w_k = I_k / \pi_k` (0 at unsampled units).

    Parameters
    ----------
    sample : array of bool, shape (..., N)
        Sampled units :math:`I_k`.
    pi : array, shape (..., N)
        Inclusion probabilities; must be finite and in :math:`(0, 1]` on every eligible unit
        (``mask``), ignored elsewhere.
    mask : array of bool, shape (..., N), optional
        Eligible units (e.g. the response mask); ``sample`` must lie inside it.  Default:
        ``sample`` (only the sampled units' ``pi`` is checked).
    dtype : dtype, optional
        Floating dtype of the weights (default: ``pi``'s, float32 for a half-precision ``pi``).
        :math:`1/\pi` is formed in ``pi``'s dtype (at least float32) and then cast.  Half
        precision is refused: :math:`1/\pi` rounds (bfloat16 keeps 8 mantissa bits) or overflows
        (float16).  A weight that overflows ``dtype`` (:math:`\pi < 3 \cdot 10^{-39}` for
        float32) is an error, never ``inf``.

    Returns
    -------
    array, shape (..., N)
        :math:`I_k/\pi_k`, in ``pi``'s namespace and on its device.

    Raises
    ------
    ValueError
        ``pi`` is 0, negative, above 1 or not finite at an eligible unit; ``sample`` selects a
        unit outside ``mask``; shapes disagree; a half ``dtype``.

    Examples
    --------
    >>> import numpy as np
    >>> from nat_estimators import ht_weights
    >>> ht_weights(np.array([True, False, True]), np.array([0.5, 0.0, 0.25]))
    array([2., 0., 4.])

    The same function is :func:`nat_estimators.rl.ht_weights`; on torch tensors, with the
    response mask as the eligible units and float32 weights:

    >>> import torch
    >>> s = torch.tensor([[True, False, True]])
    >>> p = torch.tensor([[0.5, 0.5, 0.25]], dtype=torch.float64)
    >>> ht_weights(s, p, mask=torch.ones(1, 3, dtype=torch.bool), dtype=torch.float32)
    tensor([[2., 0., 4.]])
    """
    xp = namespace(sample, pi, mask, names=("sample", "pi", "mask"))
    pi = check_float_array(xp, pi, "pi")
    check_bool_mask(xp, sample, "sample", shape=tuple(pi.shape))
    if mask is None:
        elig = sample
    else:
        elig = check_bool_mask(xp, mask, "mask", shape=tuple(pi.shape))
        if any_true(xp, sample & ~elig):
            raise ValueError(
                "sample selects units outside mask (the eligible units): a sample must be drawn "
                "from the design built on mask"
            )
    if is_half(xp, pi.dtype):
        pi = xp.astype(pi, at_least_float32(xp, pi.dtype))
    if dtype is not None and dtype not in (xp.float32, xp.float64):
        raise ValueError(
            f"dtype must be float32 or float64, got {dtype}: Horvitz–Thompson weights 1/pi lose "
            "precision (bfloat16 has 8 mantissa bits) or overflow (float16) in half precision; "
            "keep the weights in float32 and let the loss be cast up"
        )
    if any_true(xp, elig & ~((pi > 0) & (pi <= 1))):
        if any_true(xp, elig & ~xp.isfinite(pi)):
            raise ValueError("pi is NaN or Inf at a sampled (or eligible) unit")
        raise ValueError(
            "pi must lie in (0, 1] at every sampled (and every eligible) unit; a unit with pi = 0 "
            "would get an infinite weight — check that sample is a sample of the design that gave "
            "pi"
        )
    safe = xp.where(sample, pi, xp.ones_like(pi))
    with quiet_float_errors():
        w = xp.where(sample, 1 / safe, xp.zeros_like(pi))
        w = w if dtype is None or w.dtype == dtype else xp.astype(w, dtype)
    return check_finite_result(xp, w, "a Horvitz–Thompson weight 1/pi")


@positional_arrays("y", "sample", "pi", renamed={"mask": "sample"})
def ht_total(y: Array, sample: Array, pi: Array, /, *, axis: int = -1) -> Array:
    r"""Horvitz–Thompson estimator of the population total :math:`Y = \sum_{k \in U} y_k`.

    Parameters
    ----------
    y : array, shape (..., N, *V)
        Per-unit values; ``axis`` is the unit axis, axes after it are value axes.  Values at
        unsampled units are ignored (may be NaN).
    sample : array of bool, shape (..., N)
        Sampled units (the selection :math:`S`), aligned with ``y`` up to the unit axis.
    pi : array, shape (..., N)
        First-order inclusion probabilities of the design that drew ``sample``.
    axis : int, default -1
        Unit axis of ``y``.

    Returns
    -------
    array, shape (..., *V)
        :math:`\hat Y = \sum_{k \in S} y_k/\pi_k`; 0 for an empty sample.  In the promoted
        floating dtype of ``y`` and ``pi``, at least float32 (float32 ``y`` with float32 ``pi``
        stays float32; half precision is accumulated in float32), in their namespace and on their
        device.  A total that overflows that dtype is an error, never ``inf``.

    Notes
    -----
    .. math:: \hat Y = \sum_{k \in U} \frac{I_k\, y_k}{\pi_k}, \qquad
              E[\hat Y] = \sum_{k \in U} y_k \text{ if } \pi_k > 0\ \forall k .

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> y = np.array([1.0, np.nan, 3.0])
    >>> float(nat.ht_total(y, np.array([True, False, True]), np.array([0.5, 0.5, 1.0])))
    5.0
    >>> yv = np.array([[1.0, 10.0], [np.nan, np.nan], [3.0, 30.0]])  # vector y, unit axis 0
    >>> nat.ht_total(yv, np.array([True, False, True]), np.array([0.5, 0.5, 1.0]), axis=0)
    array([ 5., 50.])
    """
    u, _, w = _prepare(y, sample, pi, axis)
    xp = u.xp
    with quiet_float_errors():
        out = xp.sum(w[..., None] * u.y, axis=-2)
    return u.restore(check_finite_result(xp, out, "the Horvitz–Thompson total"))


@positional_arrays("y", "sample", "pi", "population_size", renamed={"mask": "sample"})
def ht_mean(
    y: Array, sample: Array, pi: Array, population_size: Any, /, *, axis: int = -1
) -> Array:
    r"""Horvitz–Thompson estimator of the mean with known population size :math:`N`.

    :math:`\hat{\bar y} = \hat Y / N`, unbiased (see :func:`ht_total`).

    Parameters
    ----------
    y, sample, pi, axis
        As in :func:`ht_total`.
    population_size : float or array of shape (...)
        Known :math:`N` per row (e.g. the number of eligible tokens); must be > 0.

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> nat.ht_mean(np.array([1.0, 2.0]), np.array([True, False]), np.array([0.5, 0.5]), 2)
    np.float64(1.0)
    """
    u, _, _ = _prepare(y, sample, pi, axis)
    return ht_total(y, sample, pi, axis=axis) / _population(population_size, u)


def _population(population_size: Any, u: Units) -> Array:
    """Validated :math:`N` per row, shaped to broadcast against an estimate ``(..., *V)``."""
    xp = u.xp
    check_scalar_or_row_array(xp, population_size, "population_size", u.batch_shape)
    n = xp.asarray(population_size, dtype=u.y.dtype, device=device_of(u.y))
    try:
        n = xp.broadcast_to(n, u.batch_shape)
    except (ValueError, RuntimeError):
        raise ValueError(
            f"population_size of shape {tuple(n.shape)} does not broadcast to the row shape "
            f"{u.batch_shape}"
        ) from None
    if any_true(xp, ~(n > 0)) or any_true(xp, ~xp.isfinite(n)):
        raise ValueError("population_size must be finite and > 0")
    return xp.reshape(n, (*u.batch_shape, *([1] * len(u.value_shape))))


@positional_arrays("y", "sample", "pi", renamed={"mask": "sample"})
def hajek_mean(y: Array, sample: Array, pi: Array, /, *, axis: int = -1) -> Array:
    r"""Hájek (self-normalized) estimator of the population mean.

    Parameters
    ----------
    y, sample, pi, axis
        As in :func:`ht_total`.

    Returns
    -------
    array, shape (..., *V)
        :math:`\bar y_H = \sum_{k \in S} \check y_k \big/ \sum_{k \in S} 1/\pi_k`.

    Raises
    ------
    ValueError
        If some row's sample is empty: the ratio is undefined (never returned as NaN).

    Notes
    -----
    .. math:: \bar y_H = \frac{\hat Y}{\hat N}, \qquad \hat N = \sum_{k \in S} \frac{1}{\pi_k}.

    Biased, :math:`E[\bar y_H] - \bar y = O(1/n)` (Hájek 1971; Särndal et al. 1992, §5.7); under
    prefix cutting the bias does not vanish with the budget because late tokens are sampled only
    together with all early ones.  Its linearized variance is given by
    :func:`~nat_estimators.variance_estimate` with ``estimator="hajek"``.

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> float(nat.hajek_mean(np.array([1.0, 5.0, 3.0]), np.array([True, False, True]),
    ...                      np.array([0.5, 0.5, 1.0])))
    1.6666666666666667
    """
    u, _, w = _prepare(y, sample, pi, axis)
    xp = u.xp
    nhat = xp.sum(w, axis=-1)
    if any_true(xp, nhat <= 0):
        raise ValueError(
            "the Hájek mean is undefined for an empty sample (a row has no sampled units); "
            "use the HT total/mean, or make sure every row samples at least one unit"
        )
    with quiet_float_errors():
        out = xp.sum(w[..., None] * u.y, axis=-2) / nhat[..., None]
    return u.restore(check_finite_result(xp, out, "the Hájek mean"))


@positional_arrays("y", "sample", "pi", "population_size", renamed={"mask": "sample"})
def hajek_total(
    y: Array, sample: Array, pi: Array, population_size: Any, /, *, axis: int = -1
) -> Array:
    r"""Hájek estimator of the total with known :math:`N`: :math:`N\, \bar y_H`.

    See :func:`hajek_mean` (same bias caveat).

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> nat.hajek_total(np.array([1.0, 3.0]), np.array([True, True]), np.array([0.5, 1.0]), 2)
    np.float64(3.3333333333333335)
    """
    u, _, _ = _prepare(y, sample, pi, axis)
    n = _population(population_size, u)
    return hajek_mean(y, sample, pi, axis=axis) * n
