r"""Poisson sampling: independent Bernoulli trials, one per eligible token.

With :math:`I_k \sim \mathrm{Bernoulli}(\pi_k)` independent,

.. math::

    \pi_{kl} = \pi_k \pi_l \ (k \ne l), \qquad \pi_{kk} = \pi_k, \qquad
    E|S| = \sum_k \pi_k ,

and the size :math:`|S|` is random (Särndal, Swensson & Wretman 1992, §3.5; Tillé 2006, §5.5).
Uniform :math:`\pi_k = p` is the paper's *Uniform Random Sampling*; unequal :math:`\pi` from size
measures comes from :func:`~nat_estimators.inclusion_probabilities`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, TypeVar

from ._compat import Array, device_of, float64_or_best, is_array, namespace, on_other_device
from ._deprecation import deprecated
from ._design import _PiDesign
from ._validation import any_true, check_bool_mask, check_scalar_or_row_array, trusted
from ._variance_engine import _quad, _Rows, _weights
from .allocation import inclusion_pi
from .inclusion import inclusion_probabilities

__all__ = ["Poisson"]


_P = TypeVar("_P", bound="Poisson")


@dataclass(frozen=True, eq=False, repr=False)
class Poisson(_PiDesign, name="poisson"):
    r"""Poisson sampling design with inclusion probabilities ``pi``.

    Parameters
    ----------
    pi : array, shape (..., N)
        :math:`\pi_k \in (0, 1]` at eligible positions (floating dtype); rows on leading axes.
    mask : array of bool, shape (..., N), optional
        Eligible positions (default: all).  ``pi`` is ignored elsewhere and set to 0.

    Notes
    -----
    Sampling keeps token :math:`k` iff :math:`u_k < \pi_k` for independent uniforms
    :math:`u_k`, so :math:`P(I_k = 1) = \pi_k` and distinct tokens are independent:
    :math:`\pi_{kl} = \pi_k \pi_l` for :math:`k \ne l`.  The expected size is
    :math:`\sum_k \pi_k`; the size itself is random (a Poisson-binomial variable).

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> d = nat.Poisson(np.array([0.5, 0.25, 1.0]))
    >>> d.expected_size()
    np.float64(1.75)
    >>> d.sample(np.array([0.4, 0.3, 0.99]))
    array([ True, False,  True])
    """

    # -------------------------------------------------------------- constructors
    @classmethod
    def from_fraction(cls, keep: Any, *, mask: Array) -> Poisson:
        r"""Uniform Random Sampling: each eligible token kept independently, with probability
        ``keep``.

        Parameters
        ----------
        keep : float or array of shape (...)
            Keep fraction in :math:`(0, 1]`, scalar or one per row.
        mask : array of bool, shape (..., N)
            Eligible positions (e.g. the response mask).

        Examples
        --------
        >>> import numpy as np
        >>> import nat_estimators as nat
        >>> d = nat.Poisson.from_fraction(0.5, mask=np.array([True, True, False, True]))
        >>> d.inclusion_probabilities()
        array([0.5, 0.5, 0. , 0.5])
        """
        xp = namespace(mask, keep if not isinstance(keep, (int, float)) else None)
        mask = check_bool_mask(xp, mask, "mask")
        if mask.ndim < 1 or mask.shape[-1] == 0:
            raise ValueError("mask must have a non-empty token axis (tokens on the last axis)")
        keep = check_scalar_or_row_array(xp, keep, "keep", tuple(mask.shape[:-1]))
        if is_array(keep) and on_other_device(keep, device_of(mask)):
            raise ValueError(
                f"keep is on device {device_of(keep)} but mask is on {device_of(mask)}"
            )
        dtype = float64_or_best(xp, device_of(mask))
        p_arr = xp.asarray(keep, dtype=dtype, device=device_of(mask))
        if any_true(xp, ~((p_arr > 0) & (p_arr <= 1))):
            raise ValueError("keep (the keep fraction) must lie in (0, 1]")
        if p_arr.ndim:
            p_arr = p_arr[..., None]
        pi = xp.where(mask, xp.ones(mask.shape, dtype=dtype, device=device_of(mask)) * p_arr,
                      xp.zeros(mask.shape, dtype=dtype, device=device_of(mask)))
        # pi is valid by construction (keep checked above): skip re-validation
        return trusted(cls, pi=pi, mask=mask)

    @classmethod
    def uniform(cls, p: Any, *, mask: Array) -> Poisson:
        """Deprecated alias of :meth:`~nat_estimators.Poisson.from_fraction`."""
        deprecated("Poisson.uniform(p, mask=...)", "Poisson.from_fraction(keep, mask=...)")
        return cls.from_fraction(p, mask=mask)

    @classmethod
    def optimal(
        cls: type[_P],
        second_moment: Array,
        keep: Any,
        *,
        mask: Array | None = None,
        floor: float = 0.0,
        shared: bool = False,
    ) -> _P:
        r"""Neyman / PPS-optimal :math:`\pi \propto \sqrt{m_t}` capped at 1, at keep fraction
        ``keep``.

        Minimises :math:`\sum_t (1/\pi_t - 1) m_t` (the Poisson variance of the total; for
        systematic sampling its expectation under uncorrelated tokens with second moments
        :math:`m_t`) at :math:`\sum_t \pi_t = \kappa N_i`, :math:`\text{floor} \le \pi \le 1`;
        see :func:`~nat_estimators.allocation.optimal_inclusion` (with the certificate) and
        :doc:`/theory/allocation`.

        Parameters
        ----------
        second_moment : array, shape (..., N)
            Per-token second moments :math:`m_t \ge 0` or a proxy, fixed before the draw
            (e.g. :math:`(|A_t| H_t)^2`).
        keep : float
            Expected keep fraction :math:`\kappa \in (0, 1]`, at least ``floor``.
        mask : array of bool, shape (..., N), optional
            Eligible positions.
        floor : float, default 0.0
            Smallest :math:`\pi` (bounds the weights by ``1/floor``); with 0 every eligible
            :math:`m_t` must be positive.
        shared : bool, default False
            One budget for the whole batch (:math:`\kappa \sum_i N_i` expected tokens) instead
            of :math:`\kappa N_i` per row.

        Examples
        --------
        >>> import numpy as np
        >>> import nat_estimators as nat

        The same constructor builds both fixed-π designs (Poisson and systematic):

        >>> d = nat.Poisson.optimal(np.array([1.0, 1.0, 4.0, 400.0]), 0.5)
        >>> d.inclusion_probabilities()
        array([0.25, 0.25, 0.5 , 1.  ])
        >>> s = nat.Systematic.optimal(np.array([1.0, 1.0, 4.0, 400.0]), 0.5)
        >>> type(s).__name__, s.inclusion_probabilities()
        ('Systematic', array([0.25, 0.25, 0.5 , 1.  ]))
        """
        pi, mask = inclusion_pi(second_moment, keep, mask=mask, floor=floor, shared=shared)
        # in (0, 1] on the eligible tokens by construction: skip re-validation
        return trusted(cls, pi=pi, mask=mask)

    @classmethod
    def proportional(cls, x: Array, n: Any, *, mask: Array | None = None) -> Poisson:
        r"""Poisson design with :math:`\pi_k = \min(1, c x_k)`, :math:`\sum_k \pi_k = n` per row.

        See :func:`~nat_estimators.inclusion_probabilities`.  Tokens with size 0 would get
        :math:`\pi = 0`, which is refused for eligible tokens: add a small floor to ``x``.

        Examples
        --------
        >>> import numpy as np
        >>> import nat_estimators as nat
        >>> entropy = np.array([0.1, 0.4, 2.0, 0.5])
        >>> d = nat.Poisson.proportional(entropy, 2)
        >>> d.inclusion_probabilities()
        array([0.1, 0.4, 1. , 0.5])
        >>> float(d.expected_size())
        2.0
        """
        return cls(inclusion_probabilities(x, n, mask=mask), mask=mask)

    # -------------------------------------------------------------- contract
    @property
    def uniform_shape(self) -> tuple[int, ...]:
        """One uniform per token position: ``(..., N)``."""
        return tuple(self.pi.shape)

    def joint_inclusion_probabilities(self) -> Array:
        r""":math:`\pi_{kl} = \pi_k\pi_l` off the diagonal, :math:`\pi_k` on it; ``(..., N, N)``."""
        xp = self.xp
        pi = self.pi
        outer = pi[..., :, None] * pi[..., None, :]
        eye = xp.eye(self.num_units, dtype=xp.bool, device=self.device)
        return xp.where(eye, pi[..., :, None] * xp.ones_like(outer), outer)

    def _sample(self, u: Array) -> Array:
        return (u < self.pi) & self.mask

    # -------------------------------------------------------------- hooks
    def _refuse_impossible(self, sample: Array) -> None:
        # a unit with pi = 1 is in every sample
        if any_true(self.xp, self.mask & (self.pi >= 1) & ~sample):
            raise ValueError(
                "sample leaves out a unit with pi = 1, which this Poisson design always samples: "
                "it is not a sample of this design; pass a sample drawn from it"
            )

    def _exact_variance(self, rows: _Rows, y: Array, cov: bool) -> Array:
        return _var_poisson(rows, y, cov)

    def _variance_estimate(
        self, rows: _Rows, y: Array, sample: Array, *, method: str, cov: bool, centered: bool
    ) -> Array:
        return _est_poisson(rows, y, sample, cov)  # "syg" is refused before (random size)

    def _row_support(self, row: int) -> list[tuple[float, Any]]:
        # 2^N_i subsets; token k is in iff u_k < pi_k: u = pi/2 inside, (1 + pi)/2 outside
        pi, mask = self._row_lists(row)
        elig = [k for k, m in enumerate(mask) if m]
        out = []
        for bits in itertools.product((False, True), repeat=len(elig)):
            p = math.prod(pi[k] if b else 1 - pi[k] for k, b in zip(elig, bits, strict=True))
            if p > 0:
                u = [0.5] * len(mask)
                for k, b in zip(elig, bits, strict=True):
                    u[k] = pi[k] / 2 if b else (1 + pi[k]) / 2
                out.append((p, u))
        return out


# ---------------------------------------------------------------------------- variance formulas
def _var_poisson(r: _Rows, y: Array, cov: bool) -> Array:
    # Delta_kk = pi_k (1 - pi_k), Delta_kl = 0:  V = sum_k (1 - pi_k) y_k^2 / pi_k
    xp = r.xp
    c = xp.where(r.mask, (1 - r.pi) / xp.where(r.mask, r.pi, xp.ones_like(r.pi)),
                 xp.zeros_like(r.pi))
    return r.run(lambda yc, cc: _quad(xp, yc, cc, cov), y, c)


def _est_poisson(r: _Rows, y: Array, s: Array, cov: bool) -> Array:
    # v_HT = sum_{k in S} (1 - pi_k) ycheck_k^2   (Delta-check_kk = 1 - pi_k, 0 off the diagonal)
    xp = r.xp
    w = _weights(xp, r.pi, s)
    c = w * w * (1 - r.pi)
    return r.run(lambda yc, cc: _quad(xp, yc, cc, cov), y, c)
