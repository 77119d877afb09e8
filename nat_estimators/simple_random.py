r"""Simple random sampling without replacement: exactly ``n`` of a row's ``N`` eligible tokens.

Every subset of size :math:`n` has probability :math:`1/\binom{N}{n}`, hence

.. math::

    \pi_k = \frac{n}{N}, \qquad \pi_{kl} = \frac{n(n-1)}{N(N-1)}\ (k \ne l)

(Särndal, Swensson & Wretman 1992, §3.3; Tillé 2006, §4.4).
"""

from __future__ import annotations

import itertools
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

from ._compat import (
    Array,
    device_of,
    eager_eval,
    float64_or_best,
    gather_last,
    is_array,
    is_traced,
    namespace,
    sort_last,
)
from ._design import Design
from ._validation import any_true, check_bool_mask, check_scalar_or_row_array, resolve_mask
from ._variance_engine import (
    BiasedVarianceEstimateWarning,
    _lin,
    _outer,
    _per_row,
    _quad,
    _Rows,
    _weights,
)

__all__ = ["SimpleRandom"]


def _as_integer_sizes(xp: Any, n: Any, batch_shape: tuple[int, ...], dev: Any) -> Array:
    n = check_scalar_or_row_array(xp, n, "n", batch_shape)
    if isinstance(n, numbers.Real):
        if float(n) != int(float(n)):
            raise ValueError(f"n must be an integer sample size (a fixed-size design), got {n}")
        n = int(n) if isinstance(n, numbers.Integral) else int(float(n))
        if not -(2**62) < n < 2**62:  # int64 holds it; no row has that many tokens anyway
            raise ValueError(
                f"n = {n} is out of range: it must satisfy 0 <= n <= the number of eligible tokens "
                "of every row"
            )
        arr = xp.full(batch_shape, n, dtype=xp.int64, device=dev)
    else:
        if xp.isdtype(n.dtype, "integral"):
            arr = xp.astype(n, xp.int64)
        elif xp.isdtype(n.dtype, "real floating"):
            if any_true(xp, n != xp.round(n)) or any_true(xp, ~xp.isfinite(n)):
                raise ValueError("n must contain integer sample sizes (a fixed-size design)")
            arr = xp.astype(n, xp.int64)
        else:
            raise ValueError(f"n must be an integer sample size per row, got dtype {n.dtype}")
        arr = xp.broadcast_to(arr, batch_shape)
    return arr


@dataclass(frozen=True, eq=False, repr=False)
class SimpleRandom(Design, name="simple_random"):
    r"""Simple random sampling without replacement of ``n`` eligible tokens per row.

    Parameters
    ----------
    n : int or integer array of shape (...)
        Sample size per row, :math:`1 \le n_i \le N_i` (:math:`N_i` = eligible count of row
        :math:`i`); :math:`n_i = 0` exactly for rows without eligible tokens.
    mask : array of bool, shape (..., N)
        Eligible positions; required (it defines the population of each row).

    Notes
    -----
    ``sample(u)`` takes one uniform per position and keeps the :math:`n` eligible tokens with the
    smallest uniforms: the ranks of i.i.d. continuous keys form a uniformly random permutation, so
    every :math:`n`-subset is equally likely (the "random sort" method, Tillé 2006, §4.4.4).
    Ties among float64 uniforms have probability :math:`\approx N^2 2^{-53}` and are ignored.

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> d = nat.SimpleRandom(2, mask=np.array([True, True, True, True]))
    >>> d.inclusion_probabilities()
    array([0.5, 0.5, 0.5, 0.5])
    >>> d.sample(np.array([0.9, 0.1, 0.5, 0.7]))
    array([False,  True,  True, False])
    """

    n: Any
    mask: Array = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.mask is None:
            raise TypeError("SimpleRandom needs mask= (the eligible positions of every row)")
        xp = namespace(self.mask, self.n if is_array(self.n) else None, names=("mask", "n"))
        mask = check_bool_mask(xp, self.mask, "mask")
        if mask.ndim < 1 or mask.shape[-1] == 0:
            raise ValueError("mask must have a non-empty token axis (tokens on the last axis)")
        mask = resolve_mask(xp, mask, tuple(mask.shape), device_of(mask))
        batch_shape = tuple(mask.shape[:-1])
        n = _as_integer_sizes(xp, self.n, batch_shape, device_of(mask))
        count = xp.sum(xp.astype(mask, xp.int64), axis=-1)
        if any_true(xp, n < 0):
            raise ValueError("n must be >= 0")
        # n_i = 0 on a row with eligible tokens gives them pi = 0: never sampled, infinite HT
        # weight (the other designs refuse pi = 0 on eligible positions for the same reason).
        if any_true(xp, (n == 0) & (count > 0)):
            raise ValueError(
                "n is 0 for a row that has eligible tokens: they could never be sampled and their "
                "Horvitz–Thompson weight 1/pi would be infinite; ask n >= 1 for that row, or mark "
                "the row ineligible in mask (n = 0 is only for rows without eligible tokens)"
            )
        if any_true(xp, n > count):
            if any_true(xp, (count == 0) & (n > 0)):
                raise ValueError(
                    "a row has no eligible tokens but n > 0 tokens are asked from it; "
                    "set n = 0 for empty rows (pass n as a per-row array)"
                )
            raise ValueError(
                "n is larger than the number of eligible tokens in some row; "
                "n must satisfy 0 <= n_i <= mask[i].sum()"
            )
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "mask", mask)

    @classmethod
    def from_fraction(cls, keep: float, *, mask: Array) -> SimpleRandom:
        r"""Keep :math:`n_i = \mathrm{round}(\kappa N_i)` tokens of each row, at least one.

        Parameters
        ----------
        keep : float
            Keep fraction :math:`\kappa \in (0, 1]`.
        mask : array of bool, shape (..., N)
            Eligible positions.  Rows without eligible tokens get :math:`n_i = 0`.

        Notes
        -----
        :math:`\mathrm{round}` rounds halves to even (``2.5 -> 2``), as ``numpy.round`` does.

        Examples
        --------
        >>> import numpy as np
        >>> import nat_estimators as nat
        >>> mask = np.array([[True] * 6, [True, True, True, False, False, False]])
        >>> nat.SimpleRandom.from_fraction(0.5, mask=mask).n
        array([3, 2])
        """
        xp = namespace(mask)
        mask = check_bool_mask(xp, mask, "mask")
        if isinstance(keep, bool) or not isinstance(keep, numbers.Real) or not 0 < keep <= 1:
            raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
        count = xp.sum(xp.astype(mask, xp.int64), axis=-1)
        dtype = float64_or_best(xp, device_of(mask))
        n = xp.astype(xp.round(xp.astype(count, dtype) * float(keep)), xp.int64)
        n = xp.minimum(xp.maximum(n, xp.minimum(count, xp.ones_like(count))), count)
        return cls(n, mask=mask)

    @property
    def uniform_shape(self) -> tuple[int, ...]:
        """One uniform per token position: ``(..., N)``."""
        return tuple(self.mask.shape)

    def has_fixed_size(self) -> bool:
        return True

    def _float_n_and_count(self) -> tuple[Array, Array]:
        xp = self.xp
        dtype = float64_or_best(xp, self.device)
        count = xp.astype(self.eligible_count(), dtype)
        return xp.astype(self.n, dtype), count

    def inclusion_probabilities(self) -> Array:
        r""":math:`\pi_k = n_i/N_i` on eligible positions (float64), 0 elsewhere."""
        xp = self.xp
        n, count = self._float_n_and_count()
        p = n / xp.where(count > 0, count, xp.ones_like(count))
        return xp.where(self.mask, p[..., None] * xp.ones(self.mask.shape, dtype=p.dtype,
                                                         device=self.device),
                        xp.zeros(self.mask.shape, dtype=p.dtype, device=self.device))

    def joint_inclusion_probabilities(self) -> Array:
        r""":math:`\pi_{kl} = n(n-1)/(N(N-1))` for eligible :math:`k \ne l`; ``(..., N, N)``."""
        xp = self.xp
        n, count = self._float_n_and_count()
        denom = count * (count - 1)
        p2 = n * (n - 1) / xp.where(denom > 0, denom, xp.ones_like(denom))
        pi = self.inclusion_probabilities()
        both = self.mask[..., :, None] & self.mask[..., None, :]
        eye = xp.eye(self.num_units, dtype=xp.bool, device=self.device)
        off = xp.where(both, p2[..., None, None] * xp.ones(both.shape, dtype=pi.dtype,
                                                           device=self.device),
                       xp.zeros(both.shape, dtype=pi.dtype, device=self.device))
        return xp.where(eye, pi[..., :, None] * xp.ones_like(off), off)

    def expected_size(self) -> Array:
        """The fixed size ``n`` per row (as float)."""
        return self._float_n_and_count()[0]

    def _sample(self, u: Array) -> Array:
        xp = self.xp
        # keys: the uniforms at eligible positions, 2 (> any uniform) elsewhere
        keys = xp.where(self.mask, u, 2 * xp.ones_like(u))
        # order among equal keys is irrelevant for the threshold: an unstable sort is much faster
        srt = sort_last(xp, keys)
        zero = xp.zeros_like(self.n)
        idx = xp.maximum(self.n - 1, zero)[..., None]
        thr = gather_last(xp, srt, idx)
        nxt_idx = xp.minimum(self.n, xp.full_like(self.n, self.num_units - 1))[..., None]
        nxt = gather_last(xp, srt, nxt_idx)
        count = self.eligible_count()
        tie = (nxt == thr)[..., 0] & (self.n > 0) & (self.n < count)
        if not is_traced(tie) and not bool(xp.any(tie)):
            # no tie at the threshold in any row: the n smallest keys are exactly `keys <= thr`
            return (keys <= thr) & (self.n > 0)[..., None]
        # Ties at the threshold (equal uniforms, e.g. low-precision or user-supplied u) would
        # select more than n tokens with `keys <= thr`; keep every key below the threshold and
        # only as many tied keys (leftmost first) as are needed to reach exactly n.
        below = (keys < thr) & self.mask
        tied = (keys == thr) & self.mask
        need = self.n - xp.sum(xp.astype(below, xp.int64), axis=-1)
        tie_rank = xp.cumulative_sum(xp.astype(tied, xp.int64), axis=-1)
        take = tied & (tie_rank <= need[..., None])
        return (below | take) & (self.n > 0)[..., None]

    # -------------------------------------------------------------- hooks
    def _refuse_impossible(self, sample: Array) -> None:
        xp = self.xp
        size = xp.sum(xp.astype(sample, xp.int64), axis=-1)
        if any_true(xp, size != self.n):
            raise ValueError(
                "sample does not have exactly n units in every row, so it is not a sample of this "
                "SimpleRandom design (every sample has size n); pass a sample drawn from it"
            )

    def _exact_variance(self, rows: _Rows, y: Array, cov: bool) -> Array:
        return _var_srs(rows, y, self, cov)

    def _variance_estimate(
        self, rows: _Rows, y: Array, sample: Array, *, method: str, cov: bool, centered: bool
    ) -> Array:
        return _est_srs(rows, y, sample, self, method, cov)

    def _row_support(self, row: int) -> list[tuple[float, Any]]:
        # the C(N_i, n_i) subsets, equally likely; the n smallest uniforms are kept
        _, mask = self._row_lists(row)
        elig = [k for k, m in enumerate(mask) if m]
        combos = list(itertools.combinations(elig, int(self.n[row, ...])))
        out = []
        for c in combos:
            u = [0.75] * len(mask)
            for k in c:
                u[k] = 0.25
            out.append((1.0 / len(combos), u))
        return out


# ---------------------------------------------------------------------------- variance formulas
def _var_srs(r: _Rows, y: Array, design: SimpleRandom, cov: bool) -> Array:
    # V = N^2 (1 - n/N) S^2 / n,  S^2 = sum (y - ybar)^2 / (N - 1)   (Sarndal et al. eq. 3.3.8)
    xp = r.xp
    dt = r.pi.dtype
    with eager_eval(xp):  # the design's sizes stay readable inside a JAX trace
        n = xp.reshape(xp.astype(design.n, dt), (r.n_rows,))
        cnt = xp.reshape(xp.astype(design.eligible_count(), dt), (r.n_rows,))
        n_zero = any_true(xp, (n == 0) & (cnt > 0))
    if n_zero:
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


def _est_srs(r: _Rows, y: Array, s: Array, design: SimpleRandom, method: str, cov: bool) -> Array:
    # Delta-check is constant off the diagonal: c = 1 - pi^2/pi_kl = (n - N) / (N (n - 1)), and
    # 1 - pi on it.  With m sampled units, a = ycheck, abar their mean and SS = sum_S (a - abar)^2:
    #   v_HT  = (1 - pi - c) SS + m ((1 - pi) + c (m - 1)) abar^2   (second term 0 when m = n)
    #   v_SYG = -c m SS
    # i.e. N^2 (1 - f) s^2 / n for a valid sample, computed from deviations (no cancellation).
    xp = r.xp
    dt = r.pi.dtype
    with eager_eval(xp):  # the design's sizes stay readable inside a JAX trace
        n = xp.reshape(xp.astype(design.n, dt), (r.n_rows,))
        cnt = xp.reshape(xp.astype(design.eligible_count(), dt), (r.n_rows,))
        n_one = any_true(xp, (n == 1) & (cnt > 1))
    one = xp.ones_like(n)
    if n_one:
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
