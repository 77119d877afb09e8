r"""``inclusion_probabilities(x, n)``: worked examples and regressions at the edges.

(R agreement: ``test_r_reference.py``; random-input invariants: ``test_properties.py``.)
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nat_estimators as nat

EXAMPLES = [
    # (x, n, expected pi)
    ([1.0, 1.0, 2.0, 20.0], 2, [0.25, 0.25, 0.5, 1.0]),
    ([1.0, 2.0, 3.0], 1.5, [0.25, 0.5, 0.75]),
    ([1000.0, 100.0, 1.0, 1.0], 3, [1.0, 1.0, 0.5, 0.5]),  # two capping rounds
    ([4.0, 0.0, 4.0], 2, [1.0, 0.0, 1.0]),  # n = number of positive sizes
    ([1.0, 2.0, 3.0], 3, [1.0, 1.0, 1.0]),
    ([7.11703311] * 5, 5, [1.0] * 5),  # equal sizes at n = N: exactly 1, not 1 - 1e-16
    # regression: n within the feasibility tolerance above #positive sizes gave [0.5, 1, 1]
    ([1.0, 2.0, 3.0], 3 + 1e-13, [1.0, 1.0, 1.0]),
    # regression: huge sizes overflowed the sums (RuntimeWarning, garbage)
    ([1e308, 1e308, 1e307], 2, [20 / 21, 20 / 21, 2 / 21]),
    # regression: subnormal sizes overflowed c = n / T (RuntimeWarning)
    ([3e-320, 1e-320, 2e-320], 2, [1.0, 1 / 3, 2 / 3]),
    ([1.0, 5e-324], 2, [1.0, 1.0]),
    ([1.0, 1e-300, 1e-300], 1.5, [1.0, 0.25, 0.25]),
]


@pytest.mark.parametrize("x,n,expected", EXAMPLES, ids=[str(i) for i in range(len(EXAMPLES))])
def test_examples(backend: Any, x: list[float], n: float, expected: list[float]) -> None:
    if backend.name == "jax" and min(v for v in x if v > 0) < np.finfo(np.float64).tiny:
        pytest.skip("XLA on CPU flushes subnormal numbers to zero (JAX counts them as 0)")
    pi = nat.inclusion_probabilities(backend.asarray(np.array(x)), n)
    backend.check_array(pi, (len(x),))
    got = backend.to_numpy(pi)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(got == 1.0, np.array(expected) == 1.0)  # exact certainties


def test_rows_are_independent(backend: Any) -> None:
    """A batch gives, row by row, what each row gives alone (masks, per-row n, (B1, B2))."""
    rng = np.random.default_rng(3)
    x = rng.lognormal(0, 2, (2, 3, 9))
    mask = rng.random(x.shape) < 0.7
    mask[..., 0] = True
    x[0, 1, :] = 0.0
    x[0, 1, 0] = 5.0  # a row with a single positive size
    npos = (np.where(mask, x, 0) > 0).sum(-1)
    n = np.maximum(1.0, np.floor(npos * 0.6)) - 0.25 * (npos > 1)
    xin = np.where(mask, x, np.nan)
    pi = backend.to_numpy(nat.inclusion_probabilities(
        backend.asarray(xin), backend.asarray(n), mask=backend.asarray(mask)))
    for idx in np.ndindex(2, 3):
        alone = nat.inclusion_probabilities(x[idx][mask[idx]], float(n[idx]))
        np.testing.assert_allclose(pi[idx][mask[idx]], alone, rtol=1e-14)
        assert np.all(pi[idx][~mask[idx]] == 0)
    np.testing.assert_allclose(pi.sum(-1), n, rtol=1e-12)


def test_scale_invariance(backend: Any) -> None:
    x = np.array([0.3, 2.0, 7.0, 0.01, 40.0])
    base = backend.to_numpy(nat.inclusion_probabilities(backend.asarray(x), 2.5))
    for scale in (1e-200, 1e-3, 1e3, 1e200):
        got = backend.to_numpy(nat.inclusion_probabilities(backend.asarray(x * scale), 2.5))
        np.testing.assert_allclose(got, base, rtol=1e-12)


# ---------------------------------------------------------------------------- one sort, all rows
def _descending_closed_form(x: Any, n: Any, mask: Any) -> Any:
    """The previous implementation, verbatim on any array namespace: sort descending, reverse
    cumulative sum, first m with ``(n - m) x_(m+1) <= T_m`` (the reference the ascending one-sort
    path must equal to the last bit, on the same backend)."""
    xp = array_api_compat.array_namespace(x)
    dtype = x.dtype
    xs = xp.where(mask, x, xp.zeros_like(x))
    n_pos = xp.sum(xp.astype(xs > 0, dtype), axis=-1)
    nn = xp.minimum(xp.asarray(n, dtype=dtype), n_pos)[..., None]
    N = x.shape[-1]
    xsort = xp.sort(xs, axis=-1, descending=True)
    suffix = xp.flip(xp.cumulative_sum(xp.flip(xsort, axis=-1), axis=-1), axis=-1)
    m = xp.arange(N, dtype=dtype)
    flags = (nn - m) * xsort <= suffix
    mstar = xp.argmax(xp.astype(flags, xp.int8), axis=-1, keepdims=True)
    t_m = xp.take_along_axis(suffix, mstar, axis=-1)
    kth = xp.take_along_axis(xsort, xp.maximum(mstar - 1, xp.zeros_like(mstar)), axis=-1)
    capped = (mstar > 0) & (xs >= kth)
    free = xp.where(capped, xp.zeros_like(xs), xs)
    ratio = free / xp.where(t_m > 0, t_m, xp.ones_like(t_m))
    pi = xp.minimum(xp.ones_like(xs), (nn - xp.astype(mstar, dtype)) * ratio)
    capped = capped | ((nn >= n_pos[..., None]) & (xs > 0))
    pi = xp.where(capped, xp.ones_like(pi), pi)
    return xp.where(mask, pi, xp.zeros_like(pi))


@st.composite
def _batches(draw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    shape = draw(st.tuples(st.integers(1, 4), st.integers(1, 40)))
    # few distinct values: ties at the capping threshold are common
    levels = draw(st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=6))
    x = np.asarray(draw(hnp.arrays(np.float64, shape, elements=st.one_of(
        st.sampled_from([0.0, *levels]), st.floats(1e-6, 1e6)))), dtype=dtype)
    mask = draw(hnp.arrays(np.bool_, shape, elements=st.booleans()))
    first = np.argmax(mask, axis=-1)
    mask[np.arange(shape[0]), first] = True
    x[np.arange(shape[0]), first] = np.maximum(x[np.arange(shape[0]), first], 1.0)
    npos = (np.where(mask, x, 0) > 0).sum(-1)
    frac = draw(hnp.arrays(np.float64, shape[:1], elements=st.floats(0.01, 1.0)))
    n = np.where(draw(st.booleans()), np.maximum(np.round(frac * npos), 1), frac * npos)
    return x, mask, n.astype(dtype)


@given(data=_batches())
@settings(max_examples=150)
def test_equals_descending_closed_form(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """The one-ascending-sort path gives, bit for bit, what the descending closed form gave (ties,
    zeros, masks, integer and fractional n, float32 and float64), on numpy and CPU torch."""
    x, mask, n = data
    got = nat.inclusion_probabilities(np.where(mask, x, np.nan), n, mask=mask)
    np.testing.assert_array_equal(got, _descending_closed_form(x, n, mask))
    assert got.dtype == x.dtype
    xt, nt, mt = torch.from_numpy(x), torch.from_numpy(n), torch.from_numpy(mask)
    got_t = nat.inclusion_probabilities(xt, nt, mask=mt)
    np.testing.assert_array_equal(got_t.numpy(), _descending_closed_form(xt, nt, mt).numpy())


# Heavy tails (every row capped), no capping at all, a single certainty unit, n = N - 1/2, rows of
# one eligible token, all-equal sizes: the table the closed forms must agree on.
_TABLE = [
    ("lognormal-3", lambda r: r.lognormal(0, 3, (6, 300)), 0.5),
    ("uniform", lambda r: r.uniform(0.5, 1.0, (6, 300)), 0.3),
    ("one-giant", lambda r: np.concatenate([[1e9], r.uniform(1, 2, 99)])[None, :], 0.2),
    ("near-full", lambda r: r.exponential(1.0, (4, 50)), (49.5 / 50)),
    ("equal", lambda r: np.full((3, 17), 0.7), 9 / 17),
    ("single", lambda r: np.array([[3.0], [1e-300]]), 1.0),
]


@pytest.mark.parametrize("name,make,keep", _TABLE, ids=[t[0] for t in _TABLE])
def test_equals_descending_closed_form_table(backend: Any, name: str, make: Any,
                                             keep: float) -> None:
    x = make(np.random.default_rng(11))
    mask = np.ones(x.shape, dtype=bool)
    n = np.full(x.shape[:1], keep * x.shape[1])
    xb, nb, mb = backend.asarray(x), backend.asarray(n), backend.asarray(mask)
    got = backend.to_numpy(nat.inclusion_probabilities(xb, nb, mask=mb))
    np.testing.assert_array_equal(got, backend.to_numpy(_descending_closed_form(xb, nb, mb)))
