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

from ._compat import Array, device_of, is_traced
from ._deprecation import positional_arrays
from ._design import Design
from ._units import quiet_float_errors
from ._validation import any_true, check_finite_result
from ._variance_engine import (
    BiasedVarianceEstimateWarning,
    HajekLinearizationWarning,
    _check_sample,
    _est_dense,
    _est_successive,
    _lin,
    _rows,
    _var_dense,
    _weights,
)

__all__ = [
    "BiasedVarianceEstimateWarning",
    "HajekLinearizationWarning",
    "design_variance",
    "variance_estimate",
]


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
        If ``y`` is NaN or Inf at an eligible unit, or its shape does not match the design; if
        the variance overflows the result dtype (it is never returned as Inf); if the dense path
        would exceed its size limit (the message gives the memory it would take).

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
        out = None if method == "dense" else design._exact_variance(r, yv, cov)
        return _var_dense(r, yv, design, cov) if out is None else out

    xp = r.xp
    # Optimistic: y is used as given (no masked copy of the whole array).  Ineligible positions
    # enter with weight 0, so a non-finite result means NaN/Inf padding there (recompute with it
    # zeroed), NaN/Inf at an eligible unit (an error) or a genuine overflow (an error too).
    # Traced (JAX): no values to look at; always compute on the masked copy (this also keeps
    # NaN padding out of gradients).
    m3 = r.mask[:, :, None]
    if is_traced(r.y, r.pi):
        return r.restore(compute(xp.where(m3, r.y, xp.zeros_like(r.y))), cov)
    with quiet_float_errors():
        out = compute(r.y)
    if not bool(xp.all(xp.isfinite(out))):
        if any_true(xp, ~xp.isfinite(xp.where(m3, r.y, xp.zeros_like(r.y)))):
            raise ValueError(
                "y contains NaN or Inf at eligible units; the design variance needs all of y"
            )
        with quiet_float_errors():
            out = compute(xp.where(m3, r.y, xp.zeros_like(r.y)))
        check_finite_result(xp, out, "the design variance")
    return r.restore(out, cov)


# ---------------------------------------------------------------------------- estimators
_METHODS = ("ht", "syg", "successive_differences")
_ESTIMATORS = ("ht", "hajek")


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
        eligible units; a ``sample`` the design never draws (not a prefix, or a cut of
        probability 0, under Prefix; a size other than ``n`` under SimpleRandom; no start
        :math:`u` producing it under Systematic, e.g. two adjacent units at a step of 2; a unit
        with :math:`\pi_k = 1` left out under Poisson); an empty sample with
        ``estimator="hajek"``; fewer than 2 sampled units with ``"successive_differences"``;
        NaN/Inf in ``y`` at a sampled unit; an estimate that overflows the result dtype.

    Warns
    -----
    BiasedVarianceEstimateWarning
        For designs with some :math:`\pi_{kl} = 0` (systematic sampling; SimpleRandom with
        :math:`n = 1`).
    HajekLinearizationWarning
        ``estimator="hajek"`` under :class:`~nat_estimators.Prefix`: the linearization behind
        the Hájek variance fails when one cut decides the whole row (the estimate's expectation
        is 2–15% of the true variance, by exact enumeration); use ``estimator="ht"``.

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
    design._refuse_impossible(sample)
    zero = xp.zeros((1,), dtype=r.y.dtype, device=device_of(r.y))
    yv = xp.where(s[:, :, None], r.y, zero)  # values at unsampled units are never read
    if any_true(xp, ~xp.isfinite(yv)):
        raise ValueError("y contains NaN or Inf at sampled units")
    if estimator == "hajek":
        if not design._hajek_linearizes:
            warnings.warn(
                f"estimator='hajek' under {type(design).__name__}: the linearized variance of the "
                "Hájek mean assumes many independent draws per row, but one cut decides the whole "
                "row, so the estimate is far too small (its expectation is 2-15% of the true "
                "variance). Use estimator='ht' (variance of the unbiased HT total), or a design "
                "with independent draws (Poisson, SimpleRandom) for the Hájek mean",
                HajekLinearizationWarning,
                stacklevel=3,
            )
        w = _weights(xp, r.pi, s)
        nhat = xp.sum(w, axis=-1)
        if any_true(xp, nhat <= 0):
            raise ValueError(
                "the Hájek mean (hence its variance) is undefined for an empty sample; a row of "
                "sample has no sampled units"
            )
        ybar = _lin(xp, yv, w) / nhat[:, None]
        yv = xp.where(s[:, :, None], (yv - ybar[:, None, :]) / nhat[:, None, None], zero)
    cov = bool(covariance)
    with quiet_float_errors():  # an overflow is reported below, not as a numpy warning
        if method == "successive_differences":
            out = _est_successive(r, yv, s, cov)
        else:
            out = design._variance_estimate(
                r, yv, s, method=method, cov=cov, centered=estimator == "hajek"
            )
            if out is None:
                out = _est_dense(r, yv, s, design, method, cov)
    check_finite_result(xp, out, "the variance estimate")
    return r.restore(out, cov)
