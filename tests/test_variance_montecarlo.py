r"""Monte Carlo: the one-sample variance estimators average to the exact design variance.

For Poisson and prefix designs on N = 200 tokens, R = 20,000 independent samples (fixed seeds) are
drawn as one batch; for each estimator and value component a two-sided z-test compares the mean of
the R estimates with ``design_variance``.  The family of all z-tests in this file has false-alarm
rate ALPHA = 1e-4 (Bonferroni over the M tests: each at ALPHA / M), so with fixed seeds a failure
is either a bug or a 1-in-10,000 event.

Negative controls (the test must reject them, showing it has power): the naive estimator
:math:`\sum_S \check y_k^2`; for prefix cutting, the Poisson formula
:math:`\sum_S (1 - \pi_k)\check y_k^2` that ignores the prefix design's positive covariances; and
the right formula with every :math:`\pi_k` mis-stated by 5% (z about 11 for prefix, 50 for
Poisson, against a critical value of about 4.4).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

import nat_estimators as nat

ALPHA = 1e-4
Q = 2
N_TESTS = 2 * 2 * Q  # designs x (HT total, variance estimate) x components (seeds fixed:
# every backend draws the same samples, so backends add no multiplicity)
Z_CRIT = float(stats.norm.isf(ALPHA / (2 * N_TESTS)))
REPS = 20_000
N_UNITS = 200


def _population(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones(N_UNITS, dtype=bool)
    mask[rng.choice(N_UNITS, 15, replace=False)] = False  # tool tokens: not eligible
    y = rng.normal(1.0, 1.0, (N_UNITS, Q)) + np.linspace(0, 2, N_UNITS)[:, None]
    pi = np.where(mask, rng.uniform(0.1, 1.0, N_UNITS), 0.0)
    return mask, y, pi


def _designs(bk: Any, kind: str) -> tuple[Any, Any, np.ndarray]:
    mask, y, pi = _population(0)
    if kind == "poisson":
        one = nat.Poisson(bk.asarray(pi), mask=bk.asarray(mask))
        many = nat.Poisson(bk.asarray(np.broadcast_to(pi, (REPS, N_UNITS)).copy()),
                           mask=bk.asarray(np.broadcast_to(mask, (REPS, N_UNITS)).copy()))
    else:
        one = nat.Prefix.from_fraction(0.5, mask=bk.asarray(mask), full_keep=0.2)
        many = nat.Prefix.from_fraction(0.5, mask=bk.asarray(np.broadcast_to(
            mask, (REPS, N_UNITS)).copy()), full_keep=0.2)
    return one, many, np.where(mask[:, None], y, np.nan)


def _z(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    se = values.std(axis=0, ddof=1) / np.sqrt(len(values))
    return (values.mean(axis=0) - target) / se


@pytest.mark.parametrize("kind", ["poisson", "prefix"])
def test_variance_estimate_is_unbiased(backend: Any, kind: str) -> None:
    one, many, y = _designs(backend, kind)
    var = backend.to_numpy(nat.design_variance(backend.asarray(y), one, axis=0))
    s = many.draw(12345 + (kind == "prefix"))
    ys = backend.asarray(np.broadcast_to(y, (REPS, *y.shape)).copy())
    # the HT total itself
    ht = backend.to_numpy(nat.ht_total(ys, s, many.inclusion_probabilities(), axis=1))
    z_tot = _z(ht, np.nansum(y, axis=0))
    assert np.all(np.abs(z_tot) < Z_CRIT), z_tot
    np.testing.assert_allclose(ht.var(axis=0, ddof=1), var, rtol=0.05)
    # the unbiased one-sample estimator
    v = backend.to_numpy(nat.variance_estimate(ys, s, many, axis=1))
    z = _z(v, var)
    assert np.all(np.abs(z) < Z_CRIT), (z, Z_CRIT)
    # negative controls: the same test must reject biased estimators
    s_np = backend.to_numpy(s)
    pi_np = backend.to_numpy(many.inclusion_probabilities())
    a = np.where(s_np[..., None], np.nan_to_num(y)[None] / np.where(s_np, pi_np, 1)[..., None],
                 0.0)
    naive = np.sum(a * a, axis=1)
    assert np.all(np.abs(_z(naive, var)) > Z_CRIT)
    if kind == "prefix":
        as_if_poisson = np.sum((1 - pi_np)[..., None] * a * a, axis=1)
        assert np.all(np.abs(_z(as_if_poisson, var)) > Z_CRIT)
    # a subtle one: the right formula with every pi mis-stated by 5% (the test has that power)
    mis = type(many)(many.inclusion_probabilities() * 0.95, mask=many.mask)
    v_mis = backend.to_numpy(nat.variance_estimate(ys, s, mis, axis=1))
    assert np.all(np.abs(_z(v_mis, var)) > Z_CRIT)


def test_critical_value() -> None:
    # what the file promises: family-wise false alarm ALPHA over N_TESTS two-sided tests
    assert 4.0 < Z_CRIT < 5.0
    assert np.isclose(2 * stats.norm.sf(Z_CRIT) * N_TESTS, ALPHA)
