r"""Design cases for the estimator / variance tests, with their enumerated sample spaces.

Every :class:`Case` is backend-free numpy data for a small batch of rows (``N <= 10``, ragged and
non-contiguous eligibility masks).  ``build(bk)`` makes the design on a backend;
``support()`` enumerates each row's whole sample space with the independent numpy oracles of
``tests/oracles.py``; ``stacked(bk)`` returns one big batch holding every sample of every row next
to a design whose rows repeat the case's rows, so that one vectorised call of an estimator gives
its value on the whole sample space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from oracles import (
    moments,
    poisson_support,
    prefix_pmf,
    prefix_support,
    srs_support,
    systematic_support,
)

import nat_estimators as nat

# (4, 8) eligibility: a full row, a non-contiguous row, an interior run, a single token
RAG = np.array(
    [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 0, 1, 1, 0, 1, 0, 1],
        [0, 0, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 0],
    ],
    dtype=bool,
)

_R = np.random.default_rng(20240607)


class _Numpy:
    """Minimal numpy stand-in for the conftest ``Backend`` (used to build reference designs)."""

    name = "numpy"

    @staticmethod
    def asarray(a: Any, dtype: Any = None) -> np.ndarray:
        return np.array(a, dtype=dtype)

    @staticmethod
    def dtype(name: str) -> Any:
        return np.dtype(name)


NUMPY = _Numpy()


def _fill(mask: np.ndarray, row_values: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(mask.shape)
    for i, v in enumerate(row_values):
        out[i, mask[i]] = v
    return out


def _scaled(n_elig: int, total: float, low: float = 0.3) -> np.ndarray:
    x = _R.uniform(low, 1.0, n_elig)
    p = total * x / x.sum()
    assert p.max() <= 1.0
    return p


def _pmf(n_elig: int, n_units: int, p0: float = 0.1, full: float = 0.15) -> np.ndarray:
    """Cut-length pmf over 0..n_units, zero beyond n_elig, with P(L=0)=p0, full-keep atom."""
    pm = np.zeros(n_units + 1)
    inner = _R.dirichlet(np.ones(n_elig)) * (1 - p0 - full)
    pm[1 : n_elig + 1] = inner
    pm[0] += p0
    pm[n_elig] += full
    return pm


@dataclass(frozen=True)
class Case:
    """A batch of design rows given by numpy parameters.

    kind: "poisson" | "srs" | "prefix_pmf" | "prefix_budget" | "systematic"
    """

    id: str
    kind: str
    mask: np.ndarray
    pi: np.ndarray | None = None  # poisson / systematic
    n: np.ndarray | None = None  # srs
    pmf: np.ndarray | None = None  # prefix_pmf
    budget: tuple[float, float, float] | None = None  # prefix_budget: keep, full_keep, min_keep
    all_pairs_positive: bool = True  # every eligible pair has pi_kl > 0
    fixed_size: bool = False

    # ------------------------------------------------------------------ construction
    def _make(self, bk: Any, reps: np.ndarray | None, dtype: Any = None) -> Any:
        def rows(a: np.ndarray) -> np.ndarray:
            return a if reps is None else a[reps]

        mask = bk.asarray(rows(self.mask))
        if self.kind == "poisson":
            return nat.Poisson(bk.asarray(rows(self.pi), dtype=dtype), mask=mask)
        if self.kind == "systematic":
            return nat.Systematic(bk.asarray(rows(self.pi), dtype=dtype), mask=mask)
        if self.kind == "srs":
            return nat.SimpleRandom(bk.asarray(rows(self.n)), mask=mask)
        if self.kind == "prefix_pmf":
            return nat.Prefix.from_cut_pmf(bk.asarray(rows(self.pmf), dtype=dtype), mask=mask)
        if self.kind == "prefix_budget":
            assert self.budget is not None
            keep, full, low = self.budget
            kw = {} if dtype is None else {"dtype": bk.dtype(np.dtype(dtype).name)}
            return nat.Prefix.from_fraction(keep, mask=mask, full_keep=full, min_keep=low, **kw)
        raise AssertionError(self.kind)

    def build(self, bk: Any, dtype: Any = None) -> Any:
        """The design on backend ``bk`` (``dtype``: float dtype of its probabilities)."""
        return self._make(bk, None, dtype)

    @property
    def n_rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def n_units(self) -> int:
        return int(self.mask.shape[1])

    def numpy_pi(self) -> np.ndarray:
        """First-order probabilities (numpy, from the package: the oracles enumerate from them)."""
        return np.asarray(self.build(NUMPY).inclusion_probabilities())

    # ------------------------------------------------------------------ enumeration
    def support(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row: (samples (M, N) bool, probabilities (M,)) of the whole sample space."""
        pi = self.numpy_pi()
        out = []
        for r in range(self.n_rows):
            m = self.mask[r]
            if self.kind == "poisson":
                s, p = poisson_support(pi[r], m)
            elif self.kind == "srs":
                assert self.n is not None
                s, p = srs_support(int(self.n[r]), m)
            elif self.kind in ("prefix_pmf", "prefix_budget"):
                s, p = prefix_support(prefix_pmf(pi[r], m), m)
            else:
                d = nat.Systematic(pi[r], mask=m)
                s, p, rule = systematic_support(pi[r], m, lambda u, d=d: d.sample(np.array(u)))
                assert np.array_equal(s, rule)
            keep = p > 0
            out.append((s[keep], p[keep]))
        return out

    def joint(self) -> np.ndarray:
        """Oracle pi_kl per row, (R, N, N), from the enumerated support."""
        return np.stack([moments(s, p)[1] for s, p in self.support()])

    def stacked(self, bk: Any) -> tuple[Any, Any, np.ndarray, np.ndarray]:
        """(design with rows repeated, samples on bk, row index per sample, probabilities)."""
        sup = self.support()
        rows = np.concatenate([np.full(len(p), r) for r, (_, p) in enumerate(sup)])
        samples = np.concatenate([s for s, _ in sup])
        probs = np.concatenate([p for _, p in sup])
        return self._make(bk, rows, None), bk.asarray(samples), rows, probs


def population_y(case: Case, q: int = 2, seed: int = 0, pad: float = np.nan) -> np.ndarray:
    """(R, N, q) values, ``pad`` (NaN by default) at ineligible positions."""
    rng = np.random.default_rng(seed)
    y = rng.normal(1.0, 2.0, size=(*case.mask.shape, q))
    y[..., 0] = np.abs(y[..., 0]) + 0.5  # one positive column, one of mixed sign
    return np.where(case.mask[..., None], y, pad)


def by_row(values: np.ndarray, rows: np.ndarray, probs: np.ndarray, n_rows: int) -> np.ndarray:
    """Expectation per row: sum_m probs_m values_m over the samples of that row."""
    out = np.zeros((n_rows, *values.shape[1:]))
    w = probs.reshape(-1, *([1] * (values.ndim - 1)))
    np.add.at(out, rows, w * values)
    return out


CASES: list[Case] = [
    Case(
        "poisson_ragged",
        "poisson",
        RAG,
        pi=_fill(RAG, [np.r_[1.0, 0.02, _R.uniform(0.1, 0.95, 6)], _R.uniform(0.1, 0.9, 5),
                       np.r_[0.5, 1.0, 0.3], np.array([0.4])]),
    ),
    Case("poisson_N10", "poisson", np.ones((1, 10), bool), pi=_R.uniform(0.05, 1.0, (1, 10))),
    Case("srs_ragged", "srs", RAG, n=np.array([3, 2, 3, 1]), fixed_size=True),
    Case(
        "srs_n1",
        "srs",
        RAG[:3],
        n=np.array([1, 1, 1]),
        all_pairs_positive=False,
        fixed_size=True,
    ),
    Case(
        "prefix_pmf",
        "prefix_pmf",
        RAG,
        pmf=np.stack([_pmf(int(m.sum()), RAG.shape[1]) for m in RAG]),
    ),
    Case("prefix_budget", "prefix_budget", RAG[:3], budget=(0.6, 0.1, 0.34)),
    Case(
        "systematic_int",
        "systematic",
        RAG,
        pi=_fill(RAG, [np.r_[1.0, _scaled(7, 2.0)], _scaled(5, 2.0), _scaled(3, 2.0, 0.6),
                       np.array([1.0])]),
        all_pairs_positive=False,
        fixed_size=True,
    ),
    Case(
        "systematic_nonint",
        "systematic",
        RAG,
        pi=_fill(RAG, [_scaled(8, 2.6), _scaled(5, 1.7), _scaled(3, 1.3), np.array([0.4])]),
        all_pairs_positive=False,
    ),
    Case(
        "systematic_all_pairs",
        "systematic",
        np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=bool),
        pi=np.array([[2 / 3, 2 / 3, 2 / 3, 0.0], [0.75, 0.75, 0.75, 0.75]]),
        fixed_size=True,
    ),
]

CASE_IDS = [c.id for c in CASES]


def case(case_id: str) -> Case:
    return next(c for c in CASES if c.id == case_id)
