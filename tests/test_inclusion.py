r"""``inclusion_probabilities(x, n)``: worked examples and regressions at the edges.

(R agreement: ``test_r_reference.py``; random-input invariants: ``test_properties.py``.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

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
