"""Tables of design cases (numpy data), shared by the per-design test classes.

Each case is backend-free: ``build(backend)`` makes the design on a backend, ``tile(reps)`` the same
law repeated ``reps`` times on a new leading axis (for Monte Carlo), and ``row_params(idx)`` hands
one row's numpy parameters to the enumeration oracles.  Ineligible positions carry NaN padding
wherever the design allows it (it must be ignored, never propagate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import nat_estimators as nat
from nat_estimators.allocation import prefix_profile

# ragged (4, 7) eligibility: full row, non-contiguous row, a single token, an empty row
RAGGED_MASK = np.array(
    [
        [1, 1, 1, 1, 1, 1, 1],
        [1, 0, 1, 0, 0, 1, 1],
        [0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=bool,
)
# (2, 3, 6) eligibility, every row non-empty and non-contiguous somewhere
B1B2_MASK = np.array(
    [
        [[1, 1, 0, 1, 1, 1], [0, 1, 1, 1, 0, 1], [1, 0, 1, 0, 1, 0]],
        [[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 1, 1], [0, 0, 1, 1, 1, 0]],
    ],
    dtype=bool,
)


def _pad(values: np.ndarray, mask: np.ndarray | None, fill: float = np.nan) -> np.ndarray:
    """Put NaN (padding) at the ineligible positions of ``values``."""
    if mask is None:
        return values
    return np.where(mask, values, fill)


def _rows(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    return list(np.ndindex(*shape))


def _scaled(
    rng: np.random.Generator, mask: np.ndarray, total: float, low: float = 0.3
) -> np.ndarray:
    """Unequal probabilities on a 1-D mask with sum ``total`` and all values <= 1."""
    x = rng.uniform(low, 1.0, size=mask.shape)
    pi = np.zeros(mask.shape)
    pi[mask] = total * x[mask] / x[mask].sum()
    assert pi.max() <= 1.0
    return pi


# ---------------------------------------------------------------------------- designs by pi
@dataclass(frozen=True)
class PiCase:
    """A design given by ``pi`` (Poisson, Systematic, Prefix) with an optional ``mask``."""

    id: str
    cls: type
    pi: np.ndarray
    mask: np.ndarray | None = None
    fixed_size: bool = False

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.pi.shape[:-1])

    @property
    def full_mask(self) -> np.ndarray:
        return np.ones(self.pi.shape, dtype=bool) if self.mask is None else self.mask

    @property
    def clean_pi(self) -> np.ndarray:
        return np.where(self.full_mask, np.nan_to_num(self.pi), 0.0)

    def build(self, bk: Any, dtype: Any = None) -> Any:
        mask = None if self.mask is None else bk.asarray(self.mask)
        return self.cls(bk.asarray(self.pi, dtype=dtype), mask=mask)

    def tile(self, bk: Any, reps: int) -> Any:
        pi = np.broadcast_to(self.pi, (reps, *self.pi.shape))
        mask = np.broadcast_to(self.full_mask, (reps, *self.pi.shape))
        return self.cls(bk.asarray(pi), mask=bk.asarray(mask))

    def rows(self) -> list[tuple[int, ...]]:
        return _rows(self.batch_shape)

    def row_params(self, idx: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        return self.clean_pi[idx], self.full_mask[idx]


def _survival(rng: np.random.Generator, mask: np.ndarray, full: float = 0.1) -> np.ndarray:
    """A random non-increasing survival function over the eligible tokens of a 1-D mask."""
    ne = int(mask.sum())
    pmf = rng.dirichlet(np.ones(ne + 1))
    pmf = (1 - full) * pmf
    pmf[-1] += full  # full-keep atom: pi_N >= full > 0
    surv = np.cumsum(pmf[::-1])[::-1][1:]
    pi = np.zeros(mask.shape)
    pi[mask] = np.minimum(surv, 1.0)
    return pi


def _batch(fn: Any, mask: np.ndarray) -> np.ndarray:
    out = np.zeros(mask.shape)
    for idx in _rows(mask.shape[:-1]):
        out[idx] = fn(mask[idx])
    return out


_R = np.random.default_rng(7)


def _surv_row(m: np.ndarray) -> np.ndarray:
    return _survival(_R, m)


def _optimal_prefix(mask: np.ndarray, keep: float) -> np.ndarray:
    """Prefix.optimal's survival for the profile of random per-token vectors (signed d_t)."""
    y = _R.normal(size=(*mask.shape, 2)) * _R.uniform(0.1, 3.0, size=(*mask.shape, 1))
    d = prefix_profile(np.where(mask[..., None], y, 0.0), mask=mask)
    return np.asarray(nat.Prefix.optimal(d, keep, mask=mask, full_keep=0.1).pi)


def _optimal_pi(mask: np.ndarray, keep: float, floor: float) -> np.ndarray:
    """Neyman-optimal pi (Poisson.optimal) for heavy-tailed second moments."""
    m = _R.exponential(size=mask.shape) ** 3 + 1e-3
    return np.asarray(nat.Poisson.optimal(m, keep, mask=mask, floor=floor).pi)


POISSON_CASES = [
    PiCase("N1", nat.Poisson, np.array([0.3])),
    PiCase("N5", nat.Poisson, _R.uniform(0.05, 0.95, 5)),
    PiCase("certainty", nat.Poisson, np.array([1.0, 0.4, 1.0, 0.2, 0.7, 1.0])),
    PiCase("ragged_B", nat.Poisson,
           _pad(_R.uniform(0.05, 1.0, RAGGED_MASK.shape), RAGGED_MASK), RAGGED_MASK),
    PiCase("batch_B1B2", nat.Poisson,
           _pad(np.where(_R.random(B1B2_MASK.shape) < 0.2, 1.0,
                         _R.uniform(0.1, 0.9, B1B2_MASK.shape)), B1B2_MASK), B1B2_MASK),
    PiCase("N10", nat.Poisson, _R.uniform(0.02, 0.98, 10)),
    PiCase("optimal_ragged_B", nat.Poisson,
           _pad(_optimal_pi(RAGGED_MASK, 0.5, 0.05), RAGGED_MASK), RAGGED_MASK),
    PiCase("optimal_N8", nat.Poisson, _optimal_pi(np.ones((8,), bool), 0.4, 0.0)),
]

SYSTEMATIC_CASES = [
    PiCase("N1_certain", nat.Systematic, np.array([1.0]), fixed_size=True),
    PiCase("equal_half", nat.Systematic, np.array([0.5, 0.5, 0.5, 0.5]), fixed_size=True),
    PiCase("int_sum_3", nat.Systematic, _scaled(_R, np.ones(7, bool), 3.0), fixed_size=True),
    PiCase("nonint_sum", nat.Systematic, _scaled(_R, np.ones(6, bool), 2.35)),
    PiCase("dyadic_nonint", nat.Systematic, np.array([0.25, 0.75, 0.5, 0.125, 0.625])),
    PiCase("certainty", nat.Systematic, np.array([0.3, 1.0, 0.45, 0.25, 1.0]), fixed_size=True),
    PiCase("sum_below_1", nat.Systematic, np.array([0.1, 0.2, 0.3])),
    PiCase("ragged_B", nat.Systematic,
           _pad(_batch(lambda m: _scaled(_R, m, min(2.5, m.sum() * 0.6)) if m.any()
                       else np.zeros(m.shape), RAGGED_MASK), RAGGED_MASK), RAGGED_MASK),
    PiCase("batch_B1B2_int", nat.Systematic,
           _pad(_batch(lambda m: _scaled(_R, m, 2.0), B1B2_MASK), B1B2_MASK), B1B2_MASK,
           fixed_size=True),
    PiCase("N10_int", nat.Systematic, _scaled(_R, np.ones(10, bool), 4.0), fixed_size=True),
    PiCase("N10_nonint", nat.Systematic, _scaled(_R, np.ones(10, bool), 3.7)),
    PiCase("optimal_ragged_B", nat.Systematic,
           _pad(_optimal_pi(RAGGED_MASK, 0.5, 0.05), RAGGED_MASK), RAGGED_MASK),
    PiCase("optimal_N8", nat.Systematic, _optimal_pi(np.ones((8,), bool), 0.5, 0.0),
           fixed_size=True),
]

PREFIX_CASES = [
    PiCase("N1", nat.Prefix, np.array([0.4])),
    PiCase("N6", nat.Prefix, _survival(_R, np.ones(6, bool))),
    PiCase("plateaus", nat.Prefix, np.array([1.0, 1.0, 0.5, 0.5, 0.5, 0.2])),
    PiCase("all_kept", nat.Prefix, np.ones(4)),
    PiCase("ragged_B", nat.Prefix, _pad(_batch(_surv_row, RAGGED_MASK), RAGGED_MASK), RAGGED_MASK),
    PiCase("batch_B1B2", nat.Prefix, _pad(_batch(_surv_row, B1B2_MASK), B1B2_MASK), B1B2_MASK),
    PiCase("N10", nat.Prefix, _survival(_R, np.ones(10, bool), full=0.02)),
    # the variance-optimal cut law (pooled blocks, floor and cap active) of a signed profile
    PiCase("optimal_ragged_B", nat.Prefix,
           _pad(_optimal_prefix(RAGGED_MASK, 0.5), RAGGED_MASK), RAGGED_MASK),
    PiCase("optimal_N8", nat.Prefix, _optimal_prefix(np.ones((8,), bool), 0.35)),
]


# ---------------------------------------------------------------------------- simple random
@dataclass(frozen=True)
class SRSCase:
    """SimpleRandom(n, mask=mask); ``n`` a Python int or a per-row numpy array."""

    id: str
    n: Any
    mask: np.ndarray
    cls: type = field(default=nat.SimpleRandom)
    fixed_size: bool = True

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape[:-1])

    @property
    def full_mask(self) -> np.ndarray:
        return self.mask

    @property
    def n_rows(self) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.n), self.batch_shape)

    @property
    def clean_pi(self) -> np.ndarray:
        cnt = self.mask.sum(axis=-1)
        return np.where(self.mask, (self.n_rows / np.maximum(cnt, 1))[..., None], 0.0)

    def _n_on(self, bk: Any, n: Any) -> Any:
        return bk.asarray(n) if isinstance(n, np.ndarray) else n

    def build(self, bk: Any, dtype: Any = None) -> Any:
        return nat.SimpleRandom(self._n_on(bk, self.n), mask=bk.asarray(self.mask))

    def tile(self, bk: Any, reps: int) -> Any:
        mask = np.broadcast_to(self.mask, (reps, *self.mask.shape))
        n = np.broadcast_to(self.n_rows, (reps, *self.batch_shape)).copy()
        return nat.SimpleRandom(bk.asarray(n), mask=bk.asarray(mask))

    def rows(self) -> list[tuple[int, ...]]:
        return _rows(self.batch_shape)

    def row_params(self, idx: tuple[int, ...]) -> tuple[int, np.ndarray]:
        return int(self.n_rows[idx]), self.mask[idx]


SRS_CASES = [
    SRSCase("N1_n1", 1, np.ones(1, bool)),
    SRSCase("N6_n2", 2, np.ones(6, bool)),
    SRSCase("n_equals_N", 4, np.ones(4, bool)),
    SRSCase("empty_row_n0", 0, np.zeros(5, bool)),
    SRSCase("ragged_per_row_n", np.array([3, 2, 1, 0]), RAGGED_MASK),
    SRSCase("batch_B1B2", np.array([[2, 1, 3], [4, 2, 1]]), B1B2_MASK),
    SRSCase("batch_B1B2_scalar_n", 2, B1B2_MASK),
    SRSCase("float_n_array", np.array([2.0, 3.0]), np.array([[1, 1, 0, 1, 1],
                                                              [1, 1, 1, 1, 0]], bool)),
    SRSCase("N10_n5", 5, np.ones(10, bool)),
]

ALL_CASES = POISSON_CASES + SYSTEMATIC_CASES + PREFIX_CASES + SRS_CASES
