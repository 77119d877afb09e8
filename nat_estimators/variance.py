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
from dataclasses import dataclass
from typing import Any

from ._compat import Array, float64_or_best, gather_last, is_torch_namespace
from ._deprecation import deprecated, positional_arrays
from ._design import Design
from ._units import Units, align_units, quiet_float_errors
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
    r"""A variance estimate is returned although it is biased for this design.

    Raised as a warning when the design has pairs of units with :math:`\pi_{kl} = 0` (e.g.
    systematic sampling; simple random sampling of one unit): the Horvitz–Thompson and
    Sen–Yates–Grundy variance estimators then miss those pairs' contributions and are biased.
    Use ``method="successive_differences"`` for systematic samples of smooth signals, or a design
    with all :math:`\pi_{kl} > 0`.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> d = nat.Systematic(np.array([0.5, 0.5, 0.5, 0.5]))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     v = nat.variance_estimate(np.arange(4.0), d.sample(np.array(0.25)), d)
    >>> caught[0].category is nat.BiasedVarianceEstimateWarning
    True
    """


# ---------------------------------------------------------------------------- engine
# The fast paths work on rows flattened to (R, N, q) and process them in chunks of rows small
# enough for the temporaries to stay in cache; every reduction over the unit axis is a matmul.
_CHUNK_ELEMENTS = 1 << 19  # elements of y per chunk of rows (2 MiB of float32)
_SCAN_BLOCK = 16  # block length of the blocked prefix-sum in _scan_sq


def _chunks(n_rows: int, per_row: int, scale: int = 1) -> list[slice]:
    step = max(1, (_CHUNK_ELEMENTS * scale) // max(per_row, 1))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)] or [slice(0, 0)]


def _quad(xp: Any, d: Array, p: Array, cov: bool) -> Array:
    """``sum_j p_j d_j * d_j`` -> (R, q), or ``sum_j p_j d_j d_j^T`` -> (R, q, q).

    ``d`` is (R, M, q), ``p`` is (R, M).
    """
    if cov:
        return xp.matmul(xp.matrix_transpose(d * p[..., None]), d)
    return xp.matmul(p[..., None, :], d * d)[..., 0, :]


def _lin(xp: Any, y: Array, c: Array) -> Array:
    """``sum_k c_k y_k`` -> (R, q) for ``y`` (R, N, q) and ``c`` (R, N)."""
    return xp.matmul(c[..., None, :], y)[..., 0, :]


def _outer(xp: Any, a: Array, cov: bool) -> Array:
    """(R, q) -> ``a * a`` (R, q) or ``a a^T`` (R, q, q)."""
    if cov:
        return a[..., :, None] * a[..., None, :]
    return a * a


def _per_row(x: Array, cov: bool) -> Array:
    """Broadcast a per-row (R,) factor against (R, q) or (R, q, q) results."""
    return x[..., None, None] if cov else x[..., None]


def _scan_sq(xp: Any, y: Array, w: Array | None, p: Array, c0: Array, cov: bool) -> Array:
    r"""``sum_j p_j d_j d_j`` (or outer) with ``d_j = c0 + sum_{i <= j} w_i y_i`` along axis 1.

    ``y`` (R, N, q); ``w`` (R, N) or None (then the increments are ``y`` itself); ``p`` (R, N);
    ``c0`` (R, q).  A blocked prefix sum: the array API's ``cumulative_sum`` is a sequential scan
    (slow on CPU), so the positions are split into blocks of ``_SCAN_BLOCK``, the block totals are
    scanned (``N / _SCAN_BLOCK`` elements) and the positions inside the blocks are swept one offset
    at a time, each step vectorised over all blocks.  O(N q) time, O(N q) memory.
    """
    n_rows, n, q = y.shape
    s = _SCAN_BLOCK
    nblk = n // s if n >= 4 * s else 0
    acc = None
    end = c0
    if nblk:
        n0 = nblk * s
        y4 = xp.reshape(y[:, :n0, :], (n_rows, nblk, s, q))
        # per-offset weights as contiguous (n_rows, nblk) rows (a strided operand would push
        # numpy's matmul off BLAS): offset-major copies of the small (R, N) arrays
        p3 = xp.reshape(xp.permute_dims(xp.reshape(p[:, :n0], (n_rows, nblk, s)), (0, 2, 1)),
                        (n_rows, s * nblk))
        if w is None:
            xs = [y4[:, :, i, :] for i in range(s)]
        else:
            w3 = xp.reshape(xp.permute_dims(xp.reshape(w[:, :n0], (n_rows, nblk, s)), (0, 2, 1)),
                            (n_rows, s * nblk))
            xs = [w3[:, i * nblk : (i + 1) * nblk, None] * y4[:, :, i, :] for i in range(s)]
        bsum = xs[0]
        for x in xs[1:]:
            bsum = bsum + x
        cb = xp.cumulative_sum(bsum, axis=1)
        cur = c0[:, None, :] + (cb - bsum)  # d just before each block
        for i, x in enumerate(xs):
            cur = cur + x
            t = _quad(xp, cur, p3[:, i * nblk : (i + 1) * nblk], cov)
            acc = t if acc is None else acc + t
        end = c0 + cb[:, -1, :]
    if nblk * s < n:
        yt = y[:, nblk * s :, :]
        xt = yt if w is None else w[:, nblk * s :, None] * yt
        d = end[:, None, :] + xp.cumulative_sum(xt, axis=1)
        t = _quad(xp, d, p[:, nblk * s :], cov)
        acc = t if acc is None else acc + t
    assert acc is not None
    return acc


@dataclass(frozen=True)
class _Rows:
    """A call's arrays with the row axes flattened: y (R, N, q), per-unit (R, N), per-row (R,)."""

    xp: Any
    y: Array
    pi: Array
    mask: Array
    units: Units

    @property
    def n_rows(self) -> int:
        return int(self.y.shape[0])

    def flat(self, a: Array) -> Array:
        """(*batch, ...) -> (R, ...)."""
        nb = len(self.units.batch_shape)
        return self.xp.reshape(a, (self.n_rows, *a.shape[nb:]))

    def run(self, fn: Any, y: Array, *per_unit: Array) -> Array:
        """``fn(y_chunk, *per_unit_chunks)`` over chunks of rows, concatenated."""
        xp = self.xp
        per_row = int(y.shape[1]) * int(y.shape[2])
        # torch pays more per operation than numpy: larger chunks (measured on CPU)
        scale = 2 if is_torch_namespace(xp) else 1
        outs = [fn(y[sl, ...], *(a[sl, ...] for a in per_unit))
                for sl in _chunks(self.n_rows, per_row, scale)]
        return outs[0] if len(outs) == 1 else xp.concat(outs, axis=0)

    def restore(self, r: Array, cov: bool) -> Array:
        u = self.units
        return u.restore_cov(r) if cov else u.restore(r)


def _rows(y: Array, design: Design, axis: int, extra: tuple[Array, ...] = ()) -> _Rows:
    if not isinstance(design, Design):
        raise TypeError(f"design must be a nat_estimators design, got {type(design).__name__}")
    u = align_units(y, axis, tuple(design.mask.shape), *extra, design.mask)
    xp = u.xp
    pi = design.inclusion_probabilities()
    dt = xp.result_type(u.y.dtype, pi.dtype)
    n_rows = 1
    for b in u.batch_shape:
        n_rows *= int(b)
    n, q = int(u.y.shape[-2]), int(u.y.shape[-1])
    yf = xp.reshape(xp.astype(u.y, dt, copy=False), (n_rows, n, q))
    pif = xp.reshape(xp.astype(pi, dt, copy=False), (n_rows, n))
    mf = xp.reshape(design.mask, (n_rows, n))
    return _Rows(xp=xp, y=yf, pi=pif, mask=mf, units=u)


def _weights(xp: Any, pi: Array, sel: Array) -> Array:
    """``sel / pi`` (0 where not ``sel``)."""
    return xp.where(sel, 1 / xp.where(sel, pi, xp.ones_like(pi)), xp.zeros_like(pi))


def _prefix_cut_weights(xp: Any, pi: Array) -> tuple[Array, Array]:
    r"""Per-position weights ``pi_k - pi_{k+1}`` (``pi_{N+1} = 0``) and ``P(L = 0) = 1 - pi_1``.

    ``pi`` (R, N) is the survival function :math:`P(L \ge k)` at eligible positions and 0
    elsewhere.  At an eligible position followed by another eligible one the weight is the cut
    probability :math:`P(L = \mathrm{rank}_k)`; across a run of ineligible positions it splits
    into :math:`\pi_k` and :math:`-\pi_{\mathrm{next}}` (and a leading run carries
    :math:`-\pi_{\mathrm{first}}`).  Summed against a quantity that is constant over such a
    run — a prefix sum of increments that vanish at ineligible positions — the split parts add
    up to exactly the cut probability, so no sort or gather to the eligible ranks is needed.
    """
    zero = xp.zeros((int(pi.shape[0]), 1), dtype=pi.dtype, device=pi.device)
    return pi - xp.concat([pi[:, 1:], zero], axis=-1), 1 - pi[:, 0]


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


#: Largest dense (rows x N x N) joint-probability array the dense paths will build.
_DENSE_LIMIT = 2**27


def _check_dense_size(r: _Rows, design: Design, what: str) -> None:
    n = int(r.y.shape[1])
    size = r.n_rows * n * n
    if size > _DENSE_LIMIT:
        gib = size * 8 / 2**30
        hint = (" For systematic samples use method='successive_differences' (O(N))."
                if isinstance(design, Systematic) else "")
        raise ValueError(
            f"{what} for {type(design).__name__} needs the dense {r.n_rows} x {n} x {n} joint "
            f"inclusion probabilities (~{gib:.1f} GiB in float64), above the "
            f"{_DENSE_LIMIT:,}-entry limit of the dense path; split the batch into fewer rows "
            f"or shorter rows.{hint}"
        )


def _var_dense(r: _Rows, y: Array, design: Design, cov: bool) -> Array:
    xp = r.xp
    n = int(y.shape[1])
    _check_dense_size(r, design, "the dense design variance")
    p2 = xp.reshape(xp.astype(design.joint_inclusion_probabilities(), r.pi.dtype),
                    (r.n_rows, n, n))
    delta = p2 - r.pi[:, :, None] * r.pi[:, None, :]
    w = _weights(xp, r.pi, r.mask)
    ycheck = w[:, :, None] * y
    dy = xp.matmul(delta, ycheck)  # (R, N, q)
    if cov:
        return xp.matmul(xp.matrix_transpose(ycheck), dy)
    return xp.sum(ycheck * dy, axis=-2)


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


def _check_sample(xp: Any, sample: Array, design: Design) -> Array:
    check_bool_mask(xp, sample, "sample", shape=tuple(design.mask.shape))
    if bool(xp.any(sample & ~design.mask)):
        raise ValueError(
            "sample selects units that are not eligible in the design; it must be a subset of "
            "design.mask — pass a sample drawn from this design"
        )
    return sample


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


def _est_dense(r: _Rows, y: Array, s: Array, design: Design, method: str, cov: bool) -> Array:
    xp = r.xp
    dt = r.pi.dtype
    n = int(y.shape[1])
    _check_dense_size(r, design, f"variance_estimate(method={method!r})")
    p2 = xp.reshape(xp.astype(design.joint_inclusion_probabilities(), dt), (r.n_rows, n, n))
    pi = r.pi
    both = s[:, :, None] & s[:, None, :]
    elig = r.mask[:, :, None] & r.mask[:, None, :]
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
    dchk = xp.where(both, (p2 - pi[:, :, None] * pi[:, None, :]) / safe, xp.zeros_like(p2))
    a = _weights(xp, pi, s)[:, :, None] * y
    quad = xp.matmul(dchk, a)
    if method == "syg":
        # -1/2 sum dchk (a_k - a_l)^2 = -(sum_k rowsum_k a_k^2 - a^T dchk a)
        rows = xp.sum(dchk, axis=-1)
        if cov:
            return -(_quad(xp, a, rows, True) - xp.matmul(xp.matrix_transpose(a), quad))
        return -(xp.sum(rows[:, :, None] * a * a, axis=-2) - xp.sum(a * quad, axis=-2))
    if cov:
        return xp.matmul(xp.matrix_transpose(a), quad)
    return xp.sum(a * quad, axis=-2)


def _est_successive(r: _Rows, y: Array, s: Array, cov: bool) -> Array:
    # v_SD = (1 - f) n / (2 (n - 1)) sum_{j=2}^{n} (a_(j) - a_(j-1))^2 over the sampled units in
    # position order, f = n / N (Wolter 2007, Introduction to Variance Estimation, 2nd ed.,
    # section 8.2, estimator v_2, written for the total: a = y / pi).
    xp = r.xp
    dt = r.pi.dtype
    n = xp.sum(xp.astype(s, xp.int64), axis=-1)
    if bool(xp.any(n < 2)):
        raise ValueError(
            "sample: the successive-differences estimator needs at least 2 sampled units in every "
            "row (some row has fewer)"
        )
    a = _weights(xp, r.pi, s)[:, :, None] * y
    order = xp.argsort(xp.astype(~s, xp.int8), axis=-1, stable=True)
    q = int(a.shape[-1])
    ac = xp.take_along_axis(a, xp.broadcast_to(order[:, :, None], (*order.shape, q)), axis=-2)
    diff = ac[:, 1:, :] - ac[:, :-1, :]
    k = xp.arange(1, int(s.shape[-1]), dtype=xp.int64, device=a.device)
    valid = xp.astype(k < n[:, None], dt)
    nf = xp.astype(n, dt)
    cnt = xp.astype(xp.sum(xp.astype(r.mask, xp.int64), axis=-1), dt)
    f = (1 - nf / cnt) * nf / (2 * (nf - 1))
    return _quad(xp, diff, valid, cov) * _per_row(f, cov)


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
        estimated total (gradient) relative to the full-token answer :math:`Y`; ``inf`` when
        :math:`Y = 0` but :math:`V > 0`, 0 when :math:`V = 0`.
    variance_inflation : array (...) or None
        :math:`\sum_c V_c / \sum_k \lVert y_k\rVert^2`: design variance per unit of per-token
        energy; equals :math:`1/p - 1` for uniform Poisson sampling at keep rate :math:`p` (0 for
        an all-zero ``y``).

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> d = nat.Prefix.from_fraction(0.5, mask=np.ones((1, 8), dtype=bool), full_keep=0.25)
    >>> s = nat.design_summary(np.ones((1, 8)), d)
    >>> float(s.keep_fraction[0]), float(s.max_weight[0])
    (0.5, 4.0)
    """

    expected_size: Array
    keep_fraction: Array
    max_weight: Array
    variance: Array | None = None
    relative_variance: Array | None = None
    variance_inflation: Array | None = None


def _ratio(xp: Any, num: Array, den: Array) -> Array:
    """num / den for den > 0; else inf where num > 0 and 0 where num == 0 (never NaN)."""
    safe = xp.where(den > 0, den, xp.ones_like(den))
    inf = xp.full(num.shape, float("inf"), dtype=num.dtype, device=num.device)
    return xp.where(den > 0, num / safe, xp.where(num > 0, inf, xp.zeros_like(num)))


@positional_arrays("y", "design")
def design_summary(
    y: Array | None, design: Design | None = None, /, *, axis: int = -1
) -> DesignSummary:
    r"""Budget and variance summary of a design (see :class:`DesignSummary`).

    Parameters
    ----------
    y : array, shape (..., N, *V), or None
        Population values, as in :func:`design_variance`; ``None`` for the budget only (expected
        size, keep fraction, largest weight).
    design : Design
        The sampling design.
    axis : int, default -1
        Unit axis of ``y``.

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> d = nat.Poisson.from_fraction(0.5, mask=np.ones(4, dtype=bool))
    >>> s = nat.design_summary(np.array([1.0, 2.0, 3.0, 4.0]), d)
    >>> float(s.keep_fraction), float(s.max_weight), float(s.variance_inflation)
    (0.5, 2.0, 1.0)
    >>> float(nat.design_summary(None, d).expected_size)
    2.0
    """
    if isinstance(y, Design):  # the former argument order design_summary(design, y)
        deprecated(  # stacklevel 4: past the positional_arrays wrapper
            "design_summary(design, y)", "design_summary(y, design) (or (None, design))",
            stacklevel=4,
        )
        y, design = design, y
    if not isinstance(design, Design):
        raise TypeError(f"design must be a nat_estimators design, got {type(design).__name__}")
    xp = design.xp
    es = design.expected_size()
    cnt = xp.astype(design.eligible_count(), es.dtype)
    kf = xp.where(cnt > 0, es / xp.where(cnt > 0, cnt, xp.ones_like(cnt)), xp.zeros_like(cnt))
    mw = design.max_weight()
    if y is None:
        return DesignSummary(expected_size=es, keep_fraction=kf, max_weight=mw)
    var = design_variance(y, design, axis=axis)
    r = _rows(y, design, axis)
    yv = xp.where(r.mask[:, :, None], r.y, xp.zeros_like(r.y))
    vsum = xp.sum(xp.reshape(var, (r.n_rows, -1)), axis=-1)
    tot = xp.sum(yv, axis=-2)
    y2 = xp.sum(tot * tot, axis=-1)
    e2 = xp.sum(xp.sum(yv * yv, axis=-1), axis=-1)
    bshape = r.units.batch_shape
    rel = xp.reshape(_ratio(xp, vsum, y2), bshape)
    infl = xp.reshape(_ratio(xp, vsum, e2), bshape)
    return DesignSummary(es, kf, mw, var, rel, infl)
