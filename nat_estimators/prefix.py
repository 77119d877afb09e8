r"""Random prefix cutting (the paper's RPC): keep a row's first :math:`L` eligible tokens.

A cut :math:`L \in \{0, \dots, N\}` is drawn per row and tokens :math:`1..L` (in eligible order)
are kept.  Any non-increasing :math:`1 \ge \pi_1 \ge \dots \ge \pi_N > 0` defines such a design
through its survival function,

.. math::

    \pi_k = P(L \ge k), \qquad P(L = k) = \pi_k - \pi_{k+1}\ (\pi_0 = 1, \pi_{N+1} = 0),

and since the sample is a prefix, :math:`k, l \in S \iff L \ge \max(k, l)`:

.. math:: \pi_{kl} = \pi_{\max(k, l)} = \min(\pi_k, \pi_l).

Sampling uses one uniform per row: keep :math:`k` iff :math:`u < \pi_k`
(:math:`P(u < \pi_k) = \pi_k`, and the kept set is a prefix because :math:`\pi` is
non-increasing).  Unbiasedness of the Horvitz–Thompson estimator needs :math:`\pi_N > 0`: the whole
row must be kept with positive probability, and the last tokens carry the largest weight
:math:`1/\pi_N` — :meth:`Prefix.from_fraction` bounds it with a full-keep atom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._compat import (
    Array,
    at_least_float32,
    device_of,
    float64_or_best,
    gather_last,
    is_half,
    is_traced,
    namespace,
)
from ._deprecation import deprecated
from ._design import _PiDesign
from ._validation import (
    any_true,
    check_bool_mask,
    check_float_array,
    check_fraction,
    eligible_rank,
    resolve_mask,
    trusted,
)
from ._variance_engine import _lin, _outer, _per_row, _Rows, _scan_sq, _weights
from .allocation import survival_pi

__all__ = ["Prefix"]


@dataclass(frozen=True, eq=False, repr=False)
class Prefix(_PiDesign, name="prefix"):
    r"""Random prefix cutting with survival function ``pi`` over each row's eligible tokens.

    Parameters
    ----------
    pi : array, shape (..., N)
        :math:`\pi_k = P(L \ge k)` at eligible positions; must be non-increasing along each row's
        eligible positions (in position order) and in :math:`(0, 1]`.
    mask : array of bool, shape (..., N), optional
        Eligible positions (default: all).  The cut counts eligible tokens only: ineligible
        positions between kept tokens are skipped, never sampled.

    Notes
    -----
    :math:`\pi_{kl} = \min(\pi_k, \pi_l)`; the cut length :math:`L` has pmf
    :math:`P(L = k) = \pi_k - \pi_{k+1}`.  See the module documentation.

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> d = nat.Prefix(np.array([1.0, 0.75, 0.5, 0.25]))
    >>> d.sample(np.array(0.6))
    array([ True,  True, False, False])
    >>> d.joint_inclusion_probabilities()[1]
    array([0.75, 0.75, 0.5 , 0.25])
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        xp, pi, mask = self.xp, self.pi, self.mask
        # non-increasing along eligible positions: compact the eligible values to the front
        order = xp.argsort(xp.astype(~mask, xp.int8), axis=-1, stable=True)
        pc = gather_last(xp, pi, order)
        count = xp.sum(xp.astype(mask, xp.int64), axis=-1)
        k = xp.arange(1, pi.shape[-1], dtype=xp.int64, device=device_of(pi))
        inside = k < count[..., None]
        if any_true(xp, inside & (pc[..., 1:] > pc[..., :-1])):
            raise ValueError(
                "pi must be non-increasing along each row's eligible tokens (a survival function "
                "P(L >= k)); found an increase. Build it from a cut-length pmf with "
                "Prefix.from_cut_pmf, or take a running minimum (np.minimum.accumulate)"
            )

    # -------------------------------------------------------------- constructors
    @classmethod
    def from_cut_pmf(cls, pmf: Array, *, mask: Array | None = None) -> Prefix:
        r"""Design from the law of the cut length :math:`L` (number of eligible tokens kept).

        Parameters
        ----------
        pmf : array, shape (..., N + 1)
            :math:`P(L = j)` for :math:`j = 0..N`; non-negative, summing to 1 per row, zero beyond
            each row's eligible count :math:`N_i`, and :math:`P(L = N_i) > 0` (the whole row must
            be kept with positive probability, else the last token's weight is infinite).
        mask : array of bool, shape (..., N), optional
            Eligible positions; default all (then :math:`N_i = N`).

        Notes
        -----
        :math:`\pi_k = \sum_{j \ge k} P(L = j)` for the :math:`k`-th eligible token.

        Examples
        --------
        >>> import numpy as np
        >>> import nat_estimators as nat
        >>> d = nat.Prefix.from_cut_pmf(np.array([0.0, 0.25, 0.25, 0.5]))
        >>> d.inclusion_probabilities()
        array([1.  , 0.75, 0.5 ])
        """
        xp = namespace(pmf, mask, names=("pmf", "mask"))
        pmf = check_float_array(xp, pmf, "pmf")
        out_dtype = at_least_float32(xp, pmf.dtype)
        N = pmf.shape[-1] - 1
        if N < 1:
            raise ValueError("pmf must have length N + 1 >= 2 along its last axis (cuts 0..N)")
        mask = resolve_mask(xp, mask, (*pmf.shape[:-1], N), device_of(pmf))
        if any_true(xp, ~xp.isfinite(pmf)):
            raise ValueError("pmf contains NaN or Inf")
        if any_true(xp, pmf < 0):
            raise ValueError("pmf contains negative probabilities")
        # the sum of N + 1 rounded entries is off by ~sqrt(N) ulps of pmf's dtype: a valid float32
        # pmf sums to 1 within ~1e-5, not 1e-9.  The survival function is then formed in float64
        # from the pmf divided by its sum (a correction within that tolerance).
        tol = max(1e-9, 16 * math.sqrt(N + 1) * float(xp.finfo(pmf.dtype).eps))
        pmf = xp.astype(pmf, float64_or_best(xp, device_of(pmf)))
        tot = xp.sum(pmf, axis=-1)
        if any_true(xp, xp.abs(tot - 1) > tol):
            raise ValueError(
                "pmf must sum to 1 along its last axis (cut lengths 0..N); a row is off by "
                f"{float(xp.max(xp.abs(tot - 1))):.3g}, beyond the rounding tolerance {tol:.2g} of "
                "its dtype"
            )
        pmf = pmf / tot[..., None]
        count = xp.sum(xp.astype(mask, xp.int64), axis=-1)
        j = xp.arange(N + 1, dtype=xp.int64, device=device_of(pmf))
        if any_true(xp, (j > count[..., None]) & (pmf > 0)):
            raise ValueError(
                "pmf puts probability on a cut beyond a row's number of eligible tokens "
                "(P(L = j) must be 0 for j > mask[i].sum())"
            )
        p_full = gather_last(xp, pmf, count[..., None])[..., 0]
        if any_true(xp, (count > 0) & (p_full <= 0)):
            raise ValueError(
                "pmf gives probability 0 to keeping a whole row (P(L = N_i) = 0), so the "
                "last token would never be sampled and its weight 1/pi would be infinite; "
                "add a full-keep atom (mass at L = N_i)"
            )
        surv = xp.flip(xp.cumulative_sum(xp.flip(pmf, axis=-1), axis=-1), axis=-1)
        surv = xp.minimum(surv, xp.ones_like(surv))
        rank = eligible_rank(xp, mask)
        pi = gather_last(xp, surv, rank)
        pi = xp.astype(xp.where(mask, pi, xp.zeros_like(pi)), out_dtype)
        # valid by construction (positive, non-increasing survival): skip re-validation
        return trusted(cls, pi=pi, mask=mask)

    @classmethod
    def from_fraction(
        cls,
        keep: float,
        *,
        mask: Array,
        full_keep: float = 0.05,
        min_keep: float = 0.0,
        dtype: Any = None,
    ) -> Prefix:
        r"""Budget-first prefix design: keep a fraction ``keep`` of each row's tokens on average.

        The survival function is piecewise linear: the first :math:`m_i = \lfloor \mu N_i \rfloor`
        eligible tokens are always kept, then :math:`\pi` decreases linearly and is floored at the
        full-keep probability :math:`a`:

        .. math::

            \pi_k = 1 \ (k \le m_i), \qquad
            \pi_{m_i + j} = \max\bigl(a,\, 1 - j\, t_i\bigr)\ (j = 1..R_i,\ R_i = N_i - m_i),

        with the slope :math:`t_i` solved in closed form so that
        :math:`\sum_k \pi_k = \kappa N_i` exactly.

        Parameters
        ----------
        keep : float
            Expected keep fraction :math:`\kappa \in (0, 1]` of every row's eligible tokens.
        mask : array of bool, shape (..., N)
            Eligible positions (the response mask).
        full_keep : float, default 0.05
            Full-keep probability :math:`a`: the floor of :math:`\pi`, so
            :math:`P(L = N_i) \ge a` and the largest Horvitz–Thompson weight is at most
            :math:`1/a` (see :meth:`max_weight`).
            Must be in (0, 1].
        min_keep : float, default 0.0
            :math:`\mu`: fraction of each row always kept, :math:`m_i = \lfloor \mu N_i \rfloor`
            tokens (a minimum prefix).
        dtype : dtype, optional
            Float dtype of :math:`\pi`: float32 or float64 (default float64 where available);
            half precision is refused.  The budget is solved in float64 either way.

        Raises
        ------
        ValueError
            If :math:`\kappa N_i < m_i + a R_i` for a row: the budget is below what ``full_keep``
            and ``min_keep`` already cost (the message gives the smallest feasible ``keep``).

        Notes
        -----
        Write :math:`T = \kappa N - m` for the expected number of kept tokens after the minimum
        prefix.  If :math:`j \le J` are the tokens above the floor,
        :math:`\sum_j \pi_j = J - tJ(J+1)/2 + a(R - J) = T` gives
        :math:`t = 2(J(1-a) + aR - T)/(J(J+1))`.  At the breakpoint :math:`t = (1-a)/J` the sum is
        :math:`G(J) = aR + (J - 1)(1 - a)/2`, linear in :math:`J`, so
        :math:`J = \mathrm{clip}(\lfloor 1 + 2(T - aR)/(1 - a) \rfloor, 1, R)`.

        Examples
        --------
        >>> import numpy as np
        >>> import nat_estimators as nat
        >>> d = nat.Prefix.from_fraction(0.5, mask=np.ones((2, 100), dtype=bool), full_keep=0.1)
        >>> np.round(d.expected_size(), 12)
        array([50., 50.])
        >>> d.max_weight()
        array([10., 10.])
        """
        xp = namespace(mask)
        mask = check_bool_mask(xp, mask, "mask")
        if mask.ndim < 1 or mask.shape[-1] == 0:
            raise ValueError("mask must have a non-empty token axis")
        kappa = check_fraction(keep, "keep")
        a = check_fraction(full_keep, "full_keep")
        mu = check_fraction(min_keep, "min_keep", low_open=False)
        dev = device_of(mask)
        dt = float64_or_best(xp, dev) if dtype is None else dtype
        if not xp.isdtype(dt, "real floating") or is_half(xp, dt):
            raise ValueError(
                f"dtype must be float32 or float64, got {dt}: in half precision the survival "
                "function cannot hit the budget (float16 keeps every token, bfloat16 keeps 1520 "
                "of 1500 asked); use float32 or float64"
            )
        out_dt, dt = dt, float64_or_best(xp, dev)  # the budget is solved in float64
        count = xp.astype(xp.sum(xp.astype(mask, xp.int64), axis=-1), dt)
        # floor (not ceil): then every row is feasible whenever keep >= mu + a (1 - mu)
        m = xp.floor(count * mu + 1e-9)
        m = xp.minimum(xp.maximum(m, xp.zeros_like(m)), count)
        R = count - m
        T = count * kappa - m
        if any_true(xp, T < a * R - 1e-9 * xp.maximum(count, xp.ones_like(count))):
            safe = xp.where(count > 0, count, xp.ones_like(count))
            need = float(xp.max(xp.where(count > 0, (m + a * R) / safe, xp.zeros_like(count))))
            raise ValueError(
                f"keep={kappa} is below what full_keep={a} and min_keep={mu} already cost "
                f"(the smallest feasible keep for this batch is {need:.6g}); raise keep or lower "
                "full_keep / min_keep"
            )
        T = xp.minimum(xp.maximum(T, a * R), R)
        one = xp.ones_like(R)
        if a < 1:
            J = xp.floor(1 + 2 * (T - a * R) / (1 - a))
            J = xp.minimum(xp.maximum(J, one), xp.maximum(R, one))
            t = 2 * (J * (1 - a) + a * R - T) / (J * (J + 1))
            t = xp.maximum(t, xp.zeros_like(t))
        else:
            t = xp.zeros_like(R)
        rank = xp.astype(eligible_rank(xp, mask), dt)
        j = rank - m[..., None]
        lin = xp.maximum(1 - j * t[..., None], a * xp.ones_like(j))
        pi = xp.where(j <= 0, xp.ones_like(j), xp.minimum(lin, xp.ones_like(lin)))
        pi = xp.where(mask, pi, xp.zeros_like(pi))
        pi = pi if pi.dtype == out_dt else xp.astype(pi, out_dt)
        # valid by construction (positive, non-increasing survival): skip re-validation
        return trusted(cls, pi=pi, mask=mask)

    @classmethod
    def optimal(
        cls,
        profile: Array,
        keep: float,
        *,
        mask: Array | None = None,
        full_keep: float = 0.05,
        shared: bool = False,
    ) -> Prefix:
        r"""The variance-optimal cut law at expected keep fraction ``keep`` for a profile.

        The survival minimising :math:`\sum_t (1/\pi_t - 1) d_t` over non-increasing
        :math:`\pi` with :math:`a \le \pi \le 1` and :math:`\sum_t \pi_t = \kappa N_i`
        (pool adjacent violators, then :math:`\pi_t = \mathrm{clip}(\sqrt{\tilde d_t /
        \lambda}, a, 1)`); see :func:`~nat_estimators.allocation.optimal_survival`, which also
        returns the optimality certificate, and :doc:`/theory/allocation`.

        Parameters
        ----------
        profile : array, shape (..., N)
            :math:`d_t = \|T_t\|^2 - \|T_{t+1}\|^2` from a pilot
            (:func:`~nat_estimators.allocation.prefix_profile`) or a per-token second-moment
            proxy (its expectation for uncorrelated tokens); fixed before the draw.
        keep : float
            Expected keep fraction :math:`\kappa \in [a, 1]`.
        mask : array of bool, shape (..., N), optional
            Eligible positions.
        full_keep : float, default 0.05
            The floor :math:`a` of :math:`\pi` (full-keep probability).
        shared : bool, default False
            One budget for the whole batch (:math:`\kappa \sum_i N_i` expected tokens) instead
            of :math:`\kappa N_i` per row.

        Examples
        --------
        >>> import numpy as np
        >>> import nat_estimators as nat
        >>> d = nat.Prefix.optimal(np.array([4.0, 1.0, 1.0, 0.25]), 0.5, full_keep=0.1)
        >>> np.round(d.inclusion_probabilities(), 4)
        array([0.8889, 0.4444, 0.4444, 0.2222])
        """
        pi, mask = survival_pi(profile, keep, mask=mask, full_keep=full_keep, shared=shared)
        # in [full_keep, 1] and non-increasing by construction: skip re-validation
        return trusted(cls, pi=pi, mask=mask)

    @classmethod
    def from_budget(cls, keep: float, *, mask: Array, **options: Any) -> Prefix:
        """Deprecated alias of :meth:`~nat_estimators.Prefix.from_fraction` (same options)."""
        deprecated("Prefix.from_budget(keep, mask=...)", "Prefix.from_fraction(keep, mask=...)")
        return cls.from_fraction(keep, mask=mask, **options)

    # -------------------------------------------------------------- contract
    @property
    def uniform_shape(self) -> tuple[int, ...]:
        """One uniform per row: ``batch_shape``."""
        return self.batch_shape

    def inclusion_probabilities(self) -> Array:
        r""":math:`\pi_k = P(L \ge k)` (0 at ineligible positions), shape ``(..., N)``."""
        return self.pi

    def joint_inclusion_probabilities(self) -> Array:
        r""":math:`\pi_{kl} = \min(\pi_k, \pi_l)`, dense ``(..., N, N)``."""
        xp = self.xp
        return xp.minimum(self.pi[..., :, None], self.pi[..., None, :])

    def cut_pmf(self) -> Array:
        r"""Law of the cut length: :math:`P(L = j)` for :math:`j = 0..N`, shape ``(..., N + 1)``.

        Entries beyond a row's eligible count are 0.
        """
        xp = self.xp
        # survival over ranks 0..N: s_0 = 1, s_k = pi of the k-th eligible token, 0 beyond N_i
        order = xp.argsort(xp.astype(~self.mask, xp.int8), axis=-1, stable=True)
        pc = gather_last(xp, self.pi, order)
        count = self.eligible_count()
        k = xp.arange(1, self.num_units + 1, dtype=xp.int64, device=self.device)
        pc = xp.where(k <= count[..., None], pc, xp.zeros_like(pc))
        one = xp.ones((*self.batch_shape, 1), dtype=pc.dtype, device=self.device)
        zero = xp.zeros((*self.batch_shape, 1), dtype=pc.dtype, device=self.device)
        s = xp.concat([one, pc], axis=-1)
        s_next = xp.concat([pc, zero], axis=-1)
        return s - s_next

    def cut_lengths(self, sample: Array) -> Array:
        """Cut length :math:`L` (number of kept eligible tokens) of a sample, per row."""
        xp = self.xp
        return xp.sum(xp.astype(sample & self.mask, xp.int64), axis=-1)

    def _sample(self, u: Array) -> Array:
        xp = self.xp
        return (xp.astype(u, float64_or_best(xp, self.device))[..., None] < self.pi) & self.mask

    # -------------------------------------------------------------- hooks
    # one uniform decides the whole row: the Hájek linearization does not apply
    _hajek_linearizes = False

    def _refuse_impossible(self, sample: Array) -> None:
        # the sample must be the first L eligible tokens, for a cut L with P(L) > 0
        xp = self.xp
        # a prefix: every sampled position comes before every eligible position left out
        out = self.mask & ~sample
        idx = xp.arange(self.num_units, dtype=xp.int32, device=self.device)
        last_kept = xp.max(xp.where(sample, idx, xp.full_like(idx, -1)), axis=-1)
        first_out = xp.min(xp.where(out, idx, xp.full_like(idx, self.num_units)), axis=-1)
        if any_true(xp, last_kept > first_out):
            raise ValueError(
                "sample is not a prefix of the eligible tokens (it skips an eligible token and "
                "keeps a later one), so this Prefix design never draws it; pass a sample drawn "
                "from it"
            )
        # P(L = cut) = pi_(cut) - pi_(cut + 1): the smallest kept pi (1 for an empty sample) minus
        # the largest pi left out (0 if none), pi being non-increasing along the eligible tokens
        one = xp.ones((1,), dtype=self.pi.dtype, device=self.device)
        pi_last = xp.min(xp.where(sample, self.pi, one), axis=-1)
        pi_next = xp.max(xp.where(out, self.pi, 0 * one), axis=-1)
        if any_true(xp, pi_last - pi_next <= 0):
            raise ValueError(
                "sample keeps a number of tokens that this Prefix design never keeps "
                "(P(L = cut) = 0, e.g. fewer than its always-kept minimum prefix); pass a sample "
                "drawn from it"
            )

    def _exact_variance(self, rows: _Rows, y: Array, cov: bool) -> Array:
        return _var_prefix(rows, y, cov)

    def _variance_estimate(
        self, rows: _Rows, y: Array, sample: Array, *, method: str, cov: bool, centered: bool
    ) -> Array | None:
        if method != "ht":
            return None  # "syg" is refused before (random size)
        return _est_prefix(rows, y, sample, cov, centered)

    def _row_support(self, row: int) -> list[tuple[float, Any]]:
        # the N_i + 1 cuts; cut L keeps token k iff u < pi_k: u between s_{L+1} and s_L
        pi, mask = self._row_lists(row)
        pmf = self.cut_pmf()[row, ...]
        s = [1.0, *(p for p, m in zip(pi, mask, strict=True) if m), 0.0]
        out = []
        for cut in range(len(s) - 1):
            p = float(pmf[cut])
            if p > 0:
                out.append((p, 0.5 * (s[cut] + s[cut + 1])))
        return out


# ---------------------------------------------------------------------------- variance formulas
def _by_rank(r: _Rows, *arrays: Array) -> tuple[Array, ...]:
    r"""Compact a call's per-unit arrays to the eligible ranks (column :math:`j - 1` = the
    :math:`j`-th eligible token of the row).

    Returns ``(p_cut, p0, *arrays_by_rank, inside)``: ``p_cut[:, j - 1]`` is the cut probability
    :math:`P(L = j) = \pi_{(j)} - \pi_{(j+1)} \ge 0` (:math:`\pi_{(j)}` the survival function at
    the :math:`j`-th eligible token, 0 beyond the row's eligible count), ``p0`` is
    :math:`P(L = 0) = 1 - \pi_{(1)}`, each of ``arrays`` ((R, N) or (R, N, q)) is gathered the
    same way along axis 1, and ``inside`` (R, N) is 1 on the first :math:`N_i` ranks.

    Working by rank, ineligible positions (tool tokens, padding inside a row) never enter the
    sum: every term is a cut probability times a square, so the variance is a sum of non-negative
    terms whose accuracy does not depend on where the gaps are.  (Splitting a cut probability into
    :math:`+\pi_k` at the last position before a gap and :math:`-\pi_{\mathrm{next}}` after it
    makes large terms cancel: -2e-7 instead of 0 in float64, -158 in float32, on 8192-token rows
    with every other position ineligible.)
    """
    xp = r.xp
    count = xp.sum(xp.astype(r.mask, xp.int64), axis=-1)
    k = xp.arange(int(r.pi.shape[1]), dtype=xp.int64, device=device_of(r.pi))
    inside = k < count[:, None]
    # right-padded rows (every row's eligible tokens first) are already in rank order
    # (traced: the mask's values are unknown, so always gather)
    gather = is_traced(r.mask, inside) or bool(xp.any(inside != r.mask))
    order = xp.argsort(xp.astype(~r.mask, xp.int8), axis=-1, stable=True) if gather else None

    def by_rank(a: Array) -> Array:
        if order is None:
            return a
        if a.ndim == 3:
            return xp.take_along_axis(a, xp.broadcast_to(order[:, :, None], tuple(a.shape)), axis=1)
        return xp.take_along_axis(a, order, axis=-1)

    pc = xp.where(inside, by_rank(r.pi), xp.zeros_like(r.pi))
    zero = xp.zeros((r.n_rows, 1), dtype=pc.dtype, device=device_of(pc))
    # pi is non-increasing along the ranks, so each difference is >= 0 in floating point too
    p_cut = pc - xp.concat([pc[:, 1:], zero], axis=-1)
    out: list[Array] = [p_cut, 1 - pc[:, 0]]
    out += [by_rank(a) for a in arrays]
    out.append(xp.astype(inside, r.pi.dtype))
    return tuple(out)


def _var_prefix(r: _Rows, y: Array, cov: bool) -> Array:
    # Sum over the N + 1 possible cuts L = j:  V = sum_j P(L = j) (C_j - Y)^2, where C_j is the
    # HT total of the first j eligible tokens (C_0 = 0).  Every term is >= 0 (no cancellation).
    xp = r.xp
    w = _weights(xp, r.pi, r.mask)
    p_pos, p0, yr, wr, m = _by_rank(r, y, w)

    def chunk(yc: Array, wc: Array, pc: Array, mc: Array, p0c: Array) -> Array:
        total = _lin(xp, yc, mc)
        return _scan_sq(xp, yc, wc, pc, -total, cov) + _per_row(p0c, cov) * _outer(xp, total, cov)

    return r.run(chunk, yr, wr, p_pos, m, p0)


def _est_prefix(r: _Rows, y: Array, s: Array, cov: bool, centered: bool) -> Array:
    # Delta-check_kl = 1 - max(pi_k, pi_l) = 1 - pi_min(k,l) (pi non-increasing).  Summing by parts
    # over the cuts: v_HT = sum_{j=0}^{N} P(L = j) (C_j - Yhat)^2, where C_j is the HT total of the
    # sample's first j eligible tokens — the exact-variance formula with the estimate Yhat in place
    # of Y.  Non-negative, and no cancellation (by eligible rank, see _by_rank).  ``centered``: y
    # are Hájek residuals, whose HT total is exactly 0 — use that 0 rather than a rounded sum of
    # large terms (float32, tiny pi).
    xp = r.xp
    w = _weights(xp, r.pi, s)
    p_pos, p0, yr, wr, _ = _by_rank(r, y, w)

    def chunk(yc: Array, wc: Array, pc: Array, p0c: Array) -> Array:
        total = _lin(xp, yc, wc)
        if centered:
            total = xp.zeros_like(total)
        return _scan_sq(xp, yc, wc, pc, -total, cov) + _per_row(p0c, cov) * _outer(xp, total, cov)

    return r.run(chunk, yr, wr, p_pos, p0)
