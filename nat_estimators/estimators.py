r"""Horvitz–Thompson and Hájek (self-normalized) estimators.

Notation (DESIGN.md §1): a row's eligible tokens form the population :math:`U = \{1..N\}`; the
sample :math:`S \subseteq U` is given by the boolean ``mask`` (:math:`I_k = 1\{k \in S\}`) and
:math:`\pi_k = P(k \in S)`.  With :math:`\check y_k = y_k/\pi_k`:

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

from ._compat import Array, float_dtype
from ._units import Units, align_units
from ._validation import check_bool_mask, check_float_array

__all__ = ["hajek_mean", "hajek_total", "ht_mean", "ht_total", "ht_weights"]


def _prepare(y: Array, mask: Array, pi: Array, axis: int) -> tuple[Units, Array, Array]:
    """Validate and return (units, mask with value axis, weights 1/pi at sampled units)."""
    u0 = align_units(y, axis, None, mask, pi)
    xp = u0.xp
    ushape = (*u0.batch_shape, u0.y.shape[-2])
    check_bool_mask(xp, mask, "mask")
    pi = check_float_array(xp, pi, "pi")
    if tuple(pi.shape) != tuple(mask.shape):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but pi has shape {tuple(pi.shape)}; they must be "
            "equal (rows on leading axes, units on the last)"
        )
    if tuple(mask.shape) != ushape:
        raise ValueError(
            f"y.shape[:axis + 1] = {ushape} (axis={axis}) does not match the shape "
            f"{tuple(mask.shape)} of mask and pi; y must be aligned with them up to and including "
            "its unit axis (axes after it are value axes)"
        )
    w = ht_weights(mask, pi)
    dt = float_dtype(xp, u0.y, pi)
    yv = xp.astype(u0.y, dt) if u0.y.dtype != dt else u0.y
    yv = xp.where(mask[..., None], yv, xp.zeros_like(yv))
    units = Units(xp=xp, y=yv, batch_shape=u0.batch_shape, value_shape=u0.value_shape)
    return units, mask, xp.astype(w, dt)


def ht_weights(mask: Array, pi: Array) -> Array:
    r"""Horvitz–Thompson weights :math:`w_k = I_k / \pi_k` (0 at unsampled units).

    Parameters
    ----------
    mask : array of bool, shape (..., N)
        Sampled units :math:`I_k`.
    pi : array, shape (..., N)
        Inclusion probabilities; must be finite and in :math:`(0, 1]` wherever ``mask`` is set
        (ignored elsewhere).

    Returns
    -------
    array, shape (..., N)
        :math:`I_k/\pi_k` in ``pi``'s dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from nat_estimators import ht_weights
    >>> ht_weights(np.array([True, False, True]), np.array([0.5, 0.0, 0.25]))
    array([2., 0., 4.])
    """
    from ._compat import namespace

    xp = namespace(mask, pi)
    pi = check_float_array(xp, pi, "pi")
    check_bool_mask(xp, mask, "mask", shape=tuple(pi.shape))
    if bool(xp.any(mask & ~xp.isfinite(pi))):
        raise ValueError("pi is NaN or Inf at a sampled unit")
    if bool(xp.any(mask & ((pi <= 0) | (pi > 1)))):
        raise ValueError(
            "pi must lie in (0, 1] at every sampled unit (mask set); a sampled unit with pi = 0 "
            "would get an infinite weight — check that mask is a sample of the design that gave pi"
        )
    safe = xp.where(mask, pi, xp.ones_like(pi))
    return xp.where(mask, 1 / safe, xp.zeros_like(pi))


def ht_total(y: Array, mask: Array, pi: Array, *, axis: int = -1) -> Array:
    r"""Horvitz–Thompson estimator of the population total :math:`Y = \sum_{k \in U} y_k`.

    Parameters
    ----------
    y : array, shape (..., N, *V)
        Per-unit values; ``axis`` is the unit axis, axes after it are value axes.  Values at
        unsampled units are ignored (may be NaN).
    mask : array of bool, shape (..., N)
        Sampled units (the selection :math:`S`), aligned with ``y`` up to the unit axis.
    pi : array, shape (..., N)
        First-order inclusion probabilities of the design that drew ``mask``.
    axis : int, default -1
        Unit axis of ``y``.

    Returns
    -------
    array, shape (..., *V)
        :math:`\hat Y = \sum_{k \in S} y_k/\pi_k`; 0 for an empty sample.  In the promoted
        floating dtype of ``y`` and ``pi`` (float32 ``y`` with float32 ``pi`` stays float32), in
        their namespace and on their device.

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
    u, _, w = _prepare(y, mask, pi, axis)
    xp = u.xp
    return u.restore(xp.sum(w[..., None] * u.y, axis=-2))


def ht_mean(y: Array, mask: Array, pi: Array, population_size: Any, *, axis: int = -1) -> Array:
    r"""Horvitz–Thompson estimator of the mean with known population size :math:`N`.

    :math:`\hat{\bar y} = \hat Y / N`, unbiased (see :func:`ht_total`).

    Parameters
    ----------
    y, mask, pi, axis
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
    u, _, _ = _prepare(y, mask, pi, axis)
    xp = u.xp
    total = ht_total(y, mask, pi, axis=axis)
    n = _population(xp, population_size, u)
    return total / xp.reshape(n, (*u.batch_shape, *([1] * len(u.value_shape))))


def _population(xp: Any, population_size: Any, u: Units) -> Array:
    n = xp.asarray(population_size, dtype=u.y.dtype, device=u.y.device)
    try:
        n = xp.broadcast_to(n, u.batch_shape)
    except (ValueError, RuntimeError):
        raise ValueError(
            f"population_size of shape {tuple(n.shape)} does not broadcast to the row shape "
            f"{u.batch_shape}"
        ) from None
    if bool(xp.any(~(n > 0))) or bool(xp.any(~xp.isfinite(n))):
        raise ValueError("population_size must be finite and > 0")
    return n


def hajek_mean(y: Array, mask: Array, pi: Array, *, axis: int = -1) -> Array:
    r"""Hájek (self-normalized) estimator of the population mean.

    Parameters
    ----------
    y, mask, pi, axis
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
    u, _, w = _prepare(y, mask, pi, axis)
    xp = u.xp
    nhat = xp.sum(w, axis=-1)
    if bool(xp.any(nhat <= 0)):
        raise ValueError(
            "the Hájek mean is undefined for an empty sample (a row has no sampled units); "
            "use the HT total/mean, or make sure every row samples at least one unit"
        )
    return u.restore(xp.sum(w[..., None] * u.y, axis=-2) / nhat[..., None])


def hajek_total(
    y: Array, mask: Array, pi: Array, population_size: Any, *, axis: int = -1
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
    u, _, _ = _prepare(y, mask, pi, axis)
    xp = u.xp
    n = _population(xp, population_size, u)
    m = hajek_mean(y, mask, pi, axis=axis)
    return m * xp.reshape(n, (*u.batch_shape, *([1] * len(u.value_shape))))
