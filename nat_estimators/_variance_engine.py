r"""The shared engine of the variance computations (private).

Rows flattened to ``(R, N, q)`` (:class:`_Rows`), processed in chunks of rows small enough for the
temporaries to stay in cache, every reduction over the unit axis a matmul; a blocked prefix sum
(:func:`_scan_sq`) for the designs whose variance is a sum over a small support (prefix cuts,
systematic breakpoints); the dense :math:`O(N^2)` paths every design falls back to; the
successive-differences estimator.  The designs' own closed forms call these helpers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from ._compat import Array, at_least_float32, device_of, eager_eval, is_torch_namespace
from ._design import Design
from ._units import Units, align_units
from ._validation import any_true, check_bool_mask


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


class HajekLinearizationWarning(BiasedVarianceEstimateWarning):
    r"""The linearized variance of the Hájek mean is used where the linearization fails.

    ``variance_estimate(..., estimator="hajek")`` estimates :math:`V(\bar y_H)` from the
    first-order (Taylor) expansion :math:`\bar y_H - \bar y \approx \hat Z / N`, which holds
    when a row's sample is made of many roughly independent draws (Särndal, Swensson & Wretman
    1992, §5.7).  Under prefix cutting one uniform decides the whole row, the expansion does not
    hold, and the estimate is far too small: by exact enumeration its expectation is 0.02–0.15
    of the true variance (rows of 10–2000 tokens; see :doc:`/theory/hajek`).  Use
    ``estimator="ht"`` (the variance of the unbiased HT total, or of :math:`\hat Y/N`), or a
    design with independent draws (Poisson, SimpleRandom, Systematic) when the Hájek mean's
    variance is needed.

    A subclass of :class:`BiasedVarianceEstimateWarning`: a filter on that one catches this too.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> d = nat.Prefix(np.array([1.0, 0.75, 0.5, 0.25]))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     v = nat.variance_estimate(np.arange(4.0), d.sample(np.array(0.6)), d, estimator="hajek")
    >>> caught[0].category is nat.HajekLinearizationWarning
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
    names = ("sample",) * len(extra) + ("design.mask",)
    u = align_units(y, axis, tuple(design.mask.shape), *extra, design.mask, names=names)
    xp = u.xp
    pi = design.inclusion_probabilities()
    dt = at_least_float32(xp, xp.result_type(u.y.dtype, pi.dtype))
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




#: Largest dense (rows x N x N) joint-probability array the dense paths will build.  Measured
#: (numpy, float64, tracemalloc): the dense paths hold about 5.5 arrays of that size at their
#: peak (systematic variance_estimate: 5.3; design_variance(method="dense"): 3.0-4.1), so the
#: limit keeps an allowed call below ~0.7 GiB and a few seconds of CPU (N = 4096 for one row:
#: 0.66 GiB and 3.6 s of CPU time for systematic variance_estimate, 0.5 GiB and 1.1 s for its
#: dense design_variance).  At the former limit of 2**27 an allowed N = 11000 call took 5.1 GiB
#: and 19 s.
_DENSE_LIMIT = 2**24
#: Arrays of the dense size alive at the peak of a dense path (measured, see above).
_DENSE_PEAK_ARRAYS = 5.5


def _check_dense_size(r: _Rows, design: Design, what: str) -> None:
    n = int(r.y.shape[1])
    size = r.n_rows * n * n
    if size > _DENSE_LIMIT:
        gib = _DENSE_PEAK_ARRAYS * size * 8 / 2**30
        cap = _DENSE_PEAK_ARRAYS * _DENSE_LIMIT * 8 / 2**30
        hint = design._dense_hint
        raise ValueError(
            f"{what} for {type(design).__name__} needs the dense {r.n_rows} x {n} x {n} joint "
            f"inclusion probabilities: {size:,} entries, about {gib:.1f} GiB of float64 at the "
            f"peak (~{_DENSE_PEAK_ARRAYS:g} arrays of that size), above the dense path's limit "
            f"of {_DENSE_LIMIT:,} entries (~{cap:.1f} GiB, a few seconds); split the batch into "
            f"fewer rows or shorter rows.{hint}"
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


def _check_sample(xp: Any, sample: Array, design: Design) -> Array:
    check_bool_mask(xp, sample, "sample", shape=tuple(design.mask.shape))
    if any_true(xp, sample & ~design.mask):
        raise ValueError(
            "sample selects units that are not eligible in the design; it must be a subset of "
            "design.mask — pass a sample drawn from this design"
        )
    return sample


def _est_dense(r: _Rows, y: Array, s: Array, design: Design, method: str, cov: bool) -> Array:
    xp = r.xp
    dt = r.pi.dtype
    n = int(y.shape[1])
    _check_dense_size(r, design, f"variance_estimate(method={method!r})")
    # a design built outside a JAX trace stays readable inside it: the warning below still fires
    with eager_eval(xp):
        p2 = xp.reshape(xp.astype(design.joint_inclusion_probabilities(), dt), (r.n_rows, n, n))
        m = xp.reshape(design.mask, (r.n_rows, n))
        elig = m[:, :, None] & m[:, None, :]
        zero_pairs = any_true(xp, elig & (p2 <= 0))
    pi = r.pi
    both = s[:, :, None] & s[:, None, :]
    if any_true(xp, both & (p2 <= 0)):
        raise ValueError(
            f"sample contains two units that this {type(design).__name__} design never samples "
            "together (joint inclusion probability 0), so it is not a sample of this design; pass "
            "a sample drawn from it (design.draw / design.sample)"
        )
    if zero_pairs:
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
    if any_true(xp, n < 2):
        raise ValueError(
            "sample: the successive-differences estimator needs at least 2 sampled units in every "
            "row (some row has fewer)"
        )
    a = _weights(xp, r.pi, s)[:, :, None] * y
    order = xp.argsort(xp.astype(~s, xp.int8), axis=-1, stable=True)
    q = int(a.shape[-1])
    ac = xp.take_along_axis(a, xp.broadcast_to(order[:, :, None], (*order.shape, q)), axis=-2)
    diff = ac[:, 1:, :] - ac[:, :-1, :]
    k = xp.arange(1, int(s.shape[-1]), dtype=xp.int64, device=device_of(a))
    valid = xp.astype(k < n[:, None], dt)
    nf = xp.astype(n, dt)
    cnt = xp.astype(xp.sum(xp.astype(r.mask, xp.int64), axis=-1), dt)
    f = (1 - nf / cnt) * nf / (2 * (nf - 1))
    return _quad(xp, diff, valid, cov) * _per_row(f, cov)
