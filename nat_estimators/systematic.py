r"""Systematic sampling with unequal probabilities (Madow 1949).

Let :math:`V_k = \pi_1 + \dots + \pi_k` (:math:`V_0 = 0`) along a row's tokens in order and draw
one :math:`u \sim U[0, 1)` per row.  Token :math:`k` is selected iff some integer :math:`j` has

.. math:: V_{k-1} < u + j \le V_k ,

equivalently :math:`\lfloor V_k - u \rfloor > \lfloor V_{k-1} - u \rfloor` (the rule of R's
``sampling::UPsystematic``, which writes it :math:`(V_{k-1} - u) \bmod 1 > (V_k - u) \bmod 1`).
Since :math:`\pi_k \le 1` at most one :math:`j` qualifies, so :math:`P(k \in S) = \pi_k`
exactly, for any :math:`\pi` (Tillé 2006, §7.2).  If :math:`\sum_k \pi_k = n` is an integer the size
is exactly :math:`n`; otherwise it is :math:`\lfloor n \rfloor` or :math:`\lceil n \rceil` and the
first-order probabilities are still exact.

Joint inclusion probabilities
-----------------------------
On the circle :math:`\mathbb{R}/\mathbb{Z}`, token :math:`k` is selected iff :math:`u` lies in the
arc :math:`A_k = (a_k, a_k + \pi_k]` with :math:`a_k = V_{k-1} \bmod 1`.  Hence

.. math::

    \pi_{kl} = |A_k \cap A_l|
    = \sum_{j \in \{-1, 0, 1\}} \bigl(\min(a_k + \pi_k,\, a_l + \pi_l + j)
      - \max(a_k,\, a_l + j)\bigr)_+ ,

exact for every :math:`\pi` (integer sum or not), computed for all pairs at once.  This is the
same quantity as enumerating the :math:`\le N + 1` breakpoints :math:`\{V_k \bmod 1\}` of the step
function :math:`u \mapsto S(u)` (Madow 1949; Tillé 2006, algorithm 7.1 / R's ``UPsystematicpi2``,
which is wrong for non-integer sums — this is not).  Many :math:`\pi_{kl}` are 0: the
Horvitz–Thompson variance estimator is then biased, and
:func:`~nat_estimators.variance_estimate` warns.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from ._compat import Array, device_of, eager_eval, float64_or_best, gather_last, is_traced
from ._deprecation import deprecated
from ._design import _PiDesign
from ._validation import any_true, trusted
from ._variance_engine import _lin, _Rows, _scan_sq, _weights
from .inclusion import inclusion_probabilities
from .poisson import Poisson

__all__ = ["Systematic"]


@dataclass(frozen=True, eq=False, repr=False)
class Systematic(_PiDesign, name="systematic"):
    r"""Madow's systematic sampling with inclusion probabilities ``pi``, one uniform per row.

    Parameters
    ----------
    pi : array, shape (..., N)
        :math:`\pi_k \in (0, 1]` at eligible positions, in the order tokens are to be swept
        (position order: "evenly spaced" samples).
    mask : array of bool, shape (..., N), optional
        Eligible positions (default: all).

    Notes
    -----
    See the module documentation for the selection rule and the exact :math:`\pi_{kl}`.  Order
    matters for the variance: for per-token values that vary smoothly along the sequence, sweeping
    in position order gives far lower variance than Poisson sampling at the same budget.

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> d = nat.Systematic(np.array([0.5, 0.5, 0.5, 0.5]))
    >>> d.sample(np.array(0.25))
    array([ True, False,  True, False])
    >>> d.joint_inclusion_probabilities()[0]
    array([0.5, 0. , 0.5, 0. ])
    """

    @classmethod
    def from_fraction(cls, keep: Any, *, mask: Array) -> Systematic:
        r"""Equal probabilities :math:`\pi_k = \kappa` ("every :math:`1/\kappa`-th token").

        The size is :math:`\lfloor \kappa N_i \rfloor` or :math:`\lceil \kappa N_i \rceil`.

        Examples
        --------
        >>> import numpy as np
        >>> import nat_estimators as nat
        >>> d = nat.Systematic.from_fraction(0.25, mask=np.ones(8, dtype=bool))
        >>> d.sample(np.array(0.1))
        array([ True, False, False, False,  True, False, False, False])
        """
        p = Poisson.from_fraction(keep, mask=mask)
        return trusted(cls, pi=p.pi, mask=p.mask)

    @classmethod
    def uniform(cls, keep: Any, *, mask: Array) -> Systematic:
        """Deprecated alias of :meth:`~nat_estimators.Systematic.from_fraction`."""
        deprecated("Systematic.uniform(keep, mask=...)", "Systematic.from_fraction(keep, mask=...)")
        return cls.from_fraction(keep, mask=mask)

    #: Neyman / PPS-optimal :math:`\pi \propto \sqrt{m_t}` capped at 1: the one constructor shared
    #: with :meth:`Poisson.optimal <nat_estimators.Poisson.optimal>` (same π, drawn systematically).
    optimal = Poisson.__dict__["optimal"]

    @classmethod
    def proportional(cls, x: Array, n: Any, *, mask: Array | None = None) -> Systematic:
        r""":math:`\pi_k = \min(1, c x_k)` with :math:`\sum_k \pi_k = n` (see
        :func:`~nat_estimators.inclusion_probabilities`).

        Examples
        --------
        >>> import numpy as np
        >>> import nat_estimators as nat
        >>> d = nat.Systematic.proportional(np.array([1.0, 1.0, 2.0, 4.0]), 2)
        >>> d.inclusion_probabilities()
        array([0.25, 0.25, 0.5 , 1.  ])
        >>> int(d.sample(np.array(0.3)).sum())
        2
        """
        return cls(inclusion_probabilities(x, n, mask=mask), mask=mask)

    @property
    def uniform_shape(self) -> tuple[int, ...]:
        """One uniform per row: ``batch_shape``."""
        return self.batch_shape

    def _cumsum(self) -> Array:
        r""":math:`V_k = \pi_1 + \dots + \pi_k` in float64, computed once and cached."""
        v = self.__dict__.get("_v")
        if v is None:
            xp = self.xp
            # sweep in float64 (where the device has it) whatever pi's dtype
            pi = xp.astype(self.pi, float64_or_best(xp, self.device))
            v = xp.cumulative_sum(pi, axis=-1)
            if not is_traced(v):  # a tracer cached on the design would leak out of its trace
                object.__setattr__(self, "_v", v)
        return v

    def _cumulative(self) -> tuple[Array, Array]:
        """:math:`V_k` and :math:`V_{k-1}` (the latter built from the same cumulative sum)."""
        xp = self.xp
        v = self._cumsum()
        zero = xp.zeros((*self.batch_shape, 1), dtype=v.dtype, device=self.device)
        vprev = xp.concat([zero, v[..., :-1]], axis=-1)
        return v, vprev

    def has_fixed_size(self) -> bool:
        """Whether :math:`\\sum_k \\pi_k` is an integer in every row (to :math:`10^{-9}`).

        Reads the values of ``pi``: refused for a design built from traced (JAX) arrays.
        """
        xp = self.xp
        if is_traced(self.pi):
            raise TypeError(
                "Systematic.has_fixed_size() reads the values of pi, which are traced here (the "
                "design was built inside a JAX transformation); build the design outside "
                "jax.jit/grad/vmap and close over it"
            )
        with eager_eval(xp):  # pi is concrete: readable even inside jax.jit
            n = self.expected_size()
            return bool(xp.all(xp.abs(n - xp.round(n)) <= 1e-9 * xp.maximum(xp.ones_like(n), n)))

    def joint_inclusion_probabilities(self) -> Array:
        r"""Exact :math:`\pi_{kl}` as arc intersections on the circle, ``(..., N, N)``.

        With the arcs shifted so that :math:`A_k = (0, \pi_k]` and
        :math:`d = (a_l - a_k) \bmod 1`, :math:`A_l = (d, d + \pi_l]` and

        .. math:: \pi_{kl} = \bigl(\min(\pi_k - d, \pi_l)\bigr)_+
                  + \bigl(\min(\pi_k, d + \pi_l - 1)\bigr)_+ ,

        the second term being the part of :math:`A_l` that wraps past 1.  This gives
        :math:`\pi_{kk} = \pi_k` and 0 for ineligible units on its own.

        Impossible pairs are exact zeros.  The arc starts :math:`a_k` are fractional parts of the
        float64 cumulative sums :math:`V_k` that the sampling rule itself uses (a fractional part
        is exact), and the arc lengths :math:`\pi_k` differ from the rounded
        :math:`V_k - V_{k-1}` by at most a few units of :math:`\varepsilon V_N`
        (:math:`\varepsilon = 2^{-52}`); each of the two overlap terms adds at most two more
        roundings of numbers in :math:`[-1, 2]`.  So every computed :math:`\pi_{kl}` is within
        :math:`\tau = 64\, \varepsilon \max(1, V_N)` of the overlap of the arcs the sampler
        uses, and a pair whose arcs only touch (true overlap 0) comes out in :math:`[0, \tau]`
        — e.g. :math:`2.8 \cdot 10^{-17}` instead of 0.  Values :math:`\le \tau` are set to 0:
        such a pair is (up to rounding) never sampled together, a variance estimate cannot use it
        (its weight :math:`1/\pi_{kl}` would exceed :math:`10^{13}`), and reporting it as 0 is
        what lets :func:`~nat_estimators.variance_estimate` warn that the estimate is biased.
        """
        xp = self.xp
        _, vprev = self._cumulative()
        a = vprev - xp.floor(vprev)
        p = xp.astype(self.pi, a.dtype)
        d = a[..., None, :] - a[..., :, None]
        d = d - xp.floor(d)
        pk, pl = p[..., :, None], p[..., None, :]
        zero = xp.zeros((1,), dtype=a.dtype, device=self.device)
        total = (xp.maximum(xp.minimum(pk - d, pl), zero)
                 + xp.maximum(xp.minimum(pk, d + pl - 1), zero))
        total = (total + xp.matrix_transpose(total)) / 2
        eps = float(xp.finfo(a.dtype).eps)
        vn = xp.max(xp.concat([vprev[..., -1:] + p[..., -1:],
                               xp.ones_like(vprev[..., -1:])], axis=-1), axis=-1)
        tau = 64 * eps * vn[..., None, None]
        total = xp.where(total <= tau, xp.zeros_like(total), total)
        total = xp.astype(total, self.pi.dtype)
        eye = xp.eye(self.num_units, dtype=xp.bool, device=self.device)
        return xp.where(eye, self.pi[..., :, None] * xp.ones_like(total), total)

    def _sample(self, u: Array) -> Array:
        xp = self.xp
        v = self._cumsum()
        uu = xp.astype(u, v.dtype)[..., None]
        f = xp.floor(v - uu)
        # V_0 = 0: the first token compares with floor(-u); pi = 0 keeps V flat, so ineligible
        # positions are never selected without an extra mask pass
        first = f[..., :1] > xp.floor(-uu)
        return xp.concat([first, f[..., 1:] > f[..., :-1]], axis=-1)

    # -------------------------------------------------------------- hooks
    _dense_hint = " For systematic samples use method='successive_differences' (O(N))."

    def _exact_variance(self, rows: _Rows, y: Array, cov: bool) -> Array:
        return _var_systematic(rows, y, self, cov)

    def _refuse_impossible(self, sample: Array) -> None:
        r"""Refuse a sample that no :math:`u` produces, in :math:`O(N)`.

        The points :math:`t + j` (:math:`j \ge 0`) select the tokens whose interval
        :math:`(V_{k-1}, V_k]` contains one, where :math:`t \in (0, 1]` is the first point
        above 0 (:math:`t = u`, or 1 for :math:`u = 0`).  A sample with :math:`n` units
        :math:`k_0 < \dots < k_{n-1}` comes from some :math:`t` iff
        :math:`V_{k_j - 1} < t + j \le V_{k_j}` for every :math:`j`, and no further point lies
        in :math:`(0, V_N]`, i.e. :math:`t + n > V_N`: the set of such :math:`t`,
        :math:`(\max(0, V_N - n, \max_j V_{k_j-1} - j),\ \min(1, \min_j V_{k_j} - j)]`, must
        be longer than the rounding tolerance :math:`\tau` of
        :meth:`joint_inclusion_probabilities` (shorter: the sample's probability is 0 up to
        rounding, and its pairs' :math:`\pi_{kl}` are reported as 0).
        """
        xp = self.xp
        v, vprev = self._cumulative()
        s = sample & self.mask
        j = xp.astype(xp.cumulative_sum(xp.astype(s, xp.int64), axis=-1) - 1, v.dtype)
        n = xp.sum(xp.astype(s, v.dtype), axis=-1)
        big = xp.full_like(v, float("inf"))
        vn = v[..., -1]
        lo = xp.max(xp.where(s, vprev - j, -big), axis=-1)
        lo = xp.maximum(lo, xp.maximum(vn - n, xp.zeros_like(vn)))
        hi = xp.minimum(xp.min(xp.where(s, v - j, big), axis=-1), xp.ones_like(vn))
        tau = 64 * float(xp.finfo(v.dtype).eps) * xp.maximum(vn, xp.ones_like(vn))
        if any_true(xp, hi - lo <= tau):
            raise ValueError(
                "sample is not one this Systematic design can draw (no start u selects exactly "
                "these units: e.g. two units closer than the sampling step, or the wrong size); "
                "pass a sample drawn from it (design.draw / design.sample)"
            )

    def _row_support(self, row: int) -> list[tuple[float, Any]]:
        # the sample is a step function of u with breakpoints frac(V_k): one u per interval
        pi, _ = self._row_lists(row)
        v = list(itertools.accumulate(pi, initial=0.0))
        br = sorted({0.0, 1.0, *(x - math.floor(x) for x in v)})
        return [(b - a, 0.5 * (a + b)) for a, b in itertools.pairwise(br) if b - a > 1e-15]


# ---------------------------------------------------------------------------- variance formulas
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
        z = xp.zeros((nr, 1, q), dtype=yc.dtype, device=device_of(yc))
        steps = xp.concat([yck, z], axis=1) - xp.concat([z, yck], axis=1)  # (nr, N + 1, q)
        idx = xp.broadcast_to(oc[:, :, None], (*oc.shape, q))
        ds = xp.take_along_axis(steps, idx, axis=1)
        start = _lin(xp, yc, w0c) - _lin(xp, yc, mc)  # HT total at u = 0 minus Y
        return _scan_sq(xp, ds, None, lc, start, cov)

    return r.run(chunk, y, w, w0, m, order, lengths)
