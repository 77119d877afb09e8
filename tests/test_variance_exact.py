r"""Exactness by brute force: every design's whole sample space enumerated (N <= 10).

For each case of ``estimator_cases.CASES`` (Poisson, SimpleRandom, Prefix from a cut pmf and
from ``from_fraction``, Systematic with integer and non-integer sums; ragged, non-contiguous
masks) and on every backend:

* E[HT total] over the sample space equals the population total (1e-12 relative);
* the enumerated Var(HT) and covariance equal ``design_variance`` (fast path and dense path);
* the package's joint inclusion probabilities equal the enumerated ones (the dense path's input);
* E[v_HT] = V where every pi_kl > 0, E[v_SYG] = V for fixed-size designs with all pi_kl > 0, and
  per sample the estimators equal the textbook double sums with the *oracle* pi_kl;
* the estimators warn (BiasedVarianceEstimateWarning) and are visibly biased where some pi_kl = 0;
* the Hájek mean is unbiased-in-form for SRS (N-hat = N) and biased under prefix cutting.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import pytest
from estimator_cases import CASE_IDS, CASES, Case, by_row, case, population_y

import nat_estimators as nat

Q = 2


def _enum_ht(c: Case, bk: Any, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HT totals (M, q) on the whole sample space, the row of each sample and its probability."""
    design, samples, rows, probs = c.stacked(bk)
    pi = design.inclusion_probabilities()
    ht = bk.to_numpy(nat.ht_total(bk.asarray(y[rows]), samples, pi, axis=1))
    return ht, rows, probs


def _scale(y: np.ndarray, pi: np.ndarray) -> float:
    yc = np.where(pi[..., None] > 0, np.nan_to_num(y) / np.where(pi > 0, pi, 1)[..., None], 0.0)
    return float(np.sum(yc**2)) + 1e-300


def _warn_ctx(c: Case) -> AbstractContextManager[Any]:
    if c.all_pairs_positive:
        return nullcontext()
    return pytest.warns(nat.BiasedVarianceEstimateWarning, match="biased")


@pytest.mark.parametrize("cid", CASE_IDS)
class TestEnumeration:
    def test_ht_total_unbiased(self, backend: Any, cid: str) -> None:
        c = case(cid)
        y = population_y(c, Q)
        ht, rows, probs = _enum_ht(c, backend, y)
        mean = by_row(ht, rows, probs, c.n_rows)
        total = np.nansum(y, axis=1)
        np.testing.assert_allclose(mean, total, rtol=1e-12, atol=1e-12 * np.abs(total).max())

    def test_joint_probabilities_match_enumeration(self, backend: Any, cid: str) -> None:
        c = case(cid)
        d = c.build(backend)
        p2 = backend.to_numpy(d.joint_inclusion_probabilities())
        np.testing.assert_allclose(p2, c.joint(), rtol=0, atol=1e-12)

    @pytest.mark.parametrize("method", ["auto", "dense"])
    def test_design_variance_equals_enumerated_variance(
        self, backend: Any, cid: str, method: str
    ) -> None:
        c = case(cid)
        y = population_y(c, Q)
        ht, rows, probs = _enum_ht(c, backend, y)
        dev = ht - np.nansum(y, axis=1)[rows]
        var = by_row(dev**2, rows, probs, c.n_rows)
        cov = by_row(dev[:, :, None] * dev[:, None, :], rows, probs, c.n_rows)
        d = c.build(backend)
        yb = backend.asarray(y)
        v = nat.design_variance(yb, d, axis=1, method=method)
        backend.check_array(v, (c.n_rows, Q))
        tol = 1e-12 * _scale(y, c.numpy_pi())
        np.testing.assert_allclose(backend.to_numpy(v), var, rtol=1e-10, atol=tol)
        cv = nat.design_variance(yb, d, axis=1, method=method, covariance=True)
        backend.check_array(cv, (c.n_rows, Q, Q))
        np.testing.assert_allclose(backend.to_numpy(cv), cov, rtol=1e-10, atol=tol)
        # scalar y (no value axis) gives the first component
        v0 = nat.design_variance(backend.asarray(y[..., 0]), d, method=method)
        backend.check_array(v0, (c.n_rows,))
        np.testing.assert_allclose(backend.to_numpy(v0), var[:, 0], rtol=1e-10, atol=tol)

    @pytest.mark.parametrize("method", ["ht", "syg"])
    def test_variance_estimator_per_sample_and_expectation(
        self, backend: Any, cid: str, method: str
    ) -> None:
        c = case(cid)
        y = population_y(c, Q)
        design, samples, rows, probs = c.stacked(backend)
        if method == "syg" and not c.fixed_size:
            with pytest.raises(ValueError, match="fixed-size"):
                nat.variance_estimate(backend.asarray(y[rows]), samples, design, method=method,
                                      axis=1)
            return
        with _warn_ctx(c):
            v = nat.variance_estimate(backend.asarray(y[rows]), samples, design, method=method,
                                      axis=1)
        backend.check_array(v, (len(rows), Q))
        v = backend.to_numpy(v)
        # per sample: the textbook double sum with the enumerated (oracle) pi_kl
        p2 = c.joint()[rows]
        pi = np.diagonal(p2, axis1=1, axis2=2)
        s = backend.to_numpy(samples)
        both = s[:, :, None] & s[:, None, :]
        dchk = np.where(both, (p2 - pi[:, :, None] * pi[:, None, :]) / np.where(both, p2, 1), 0)
        a = np.where(s[..., None], np.nan_to_num(y[rows]) / np.where(s, pi, 1)[..., None], 0)
        if method == "ht":
            ref = np.einsum("mkl,mkq,mlq->mq", dchk, a, a)
        else:
            diff2 = (a[:, :, None, :] - a[:, None, :, :]) ** 2
            ref = -0.5 * np.einsum("mkl,mklq->mq", dchk, diff2)
        tol = 1e-12 * _scale(y, c.numpy_pi())
        np.testing.assert_allclose(v, ref, rtol=1e-9, atol=tol)
        # in expectation
        ev = by_row(v, rows, probs, c.n_rows)
        var = nat.design_variance(backend.asarray(y), c.build(backend), axis=1)
        var = backend.to_numpy(var)
        if c.all_pairs_positive:
            np.testing.assert_allclose(ev, var, rtol=1e-10, atol=tol)
        else:
            # biased: some row must be visibly off (a check that can fail)
            assert np.max(np.abs(ev - var)) > 1e-3 * np.max(np.abs(var))

    def test_covariance_estimate_expectation(self, backend: Any, cid: str) -> None:
        c = case(cid)
        y = population_y(c, Q)
        design, samples, rows, probs = c.stacked(backend)
        with _warn_ctx(c):
            cv = nat.variance_estimate(backend.asarray(y[rows]), samples, design, axis=1,
                                       covariance=True)
            v = nat.variance_estimate(backend.asarray(y[rows]), samples, design, axis=1)
        backend.check_array(cv, (len(rows), Q, Q))
        cv = backend.to_numpy(cv)
        tol = 1e-12 * _scale(y, c.numpy_pi())
        np.testing.assert_allclose(np.diagonal(cv, axis1=1, axis2=2), backend.to_numpy(v),
                                   rtol=1e-10, atol=tol)
        np.testing.assert_allclose(cv, np.swapaxes(cv, 1, 2), rtol=1e-12, atol=tol)
        if c.all_pairs_positive:
            full = nat.design_variance(backend.asarray(y), c.build(backend), axis=1,
                                       covariance=True)
            np.testing.assert_allclose(by_row(cv, rows, probs, c.n_rows),
                                       backend.to_numpy(full), rtol=1e-10, atol=tol)


class TestHajekUnderEnumeration:
    def test_srs_hajek_is_ht_over_n(self, backend: Any) -> None:
        # under SRS N-hat = N on every sample, so the Hájek mean is unbiased for the mean
        c = case("srs_ragged")
        y = population_y(c, Q)
        design, samples, rows, probs = c.stacked(backend)
        pi = design.inclusion_probabilities()
        m = backend.to_numpy(nat.hajek_mean(backend.asarray(y[rows]), samples, pi, axis=1))
        np.testing.assert_allclose(by_row(m, rows, probs, c.n_rows), np.nanmean(y, axis=1),
                                   rtol=1e-12)

    def test_prefix_hajek_is_biased(self, backend: Any) -> None:
        c = case("prefix_budget")
        first = c.numpy_pi()[c.mask & (np.cumsum(c.mask, axis=1) == 1)]
        assert np.all(first == 1.0), "the case must keep the first token (no empty sample)"
        y = population_y(c, Q)
        # a trend along the sequence: later tokens (rarely kept) differ from early ones
        y = y + np.arange(c.n_units)[None, :, None] * 2.0
        design, samples, rows, probs = c.stacked(backend)
        pi = design.inclusion_probabilities()
        m = backend.to_numpy(nat.hajek_mean(backend.asarray(y[rows]), samples, pi, axis=1))
        em = by_row(m, rows, probs, c.n_rows)
        mean = np.nanmean(y, axis=1)
        rows_off = np.abs(em - mean).max(axis=-1) > 1e-3 * np.abs(mean).max()
        assert rows_off[:2].all(), (em, mean)
        # while HT / N is unbiased on the same sample space
        ht = backend.to_numpy(nat.ht_mean(backend.asarray(y[rows]), samples, pi,
                                          backend.asarray(c.mask.sum(-1)[rows] * 1.0), axis=1))
        np.testing.assert_allclose(by_row(ht, rows, probs, c.n_rows), mean, rtol=1e-12)

    def test_hajek_linearized_variance_is_approximately_right(self, backend: Any) -> None:
        # large-sample approximation: on SRS with N-hat = N the linearization is exact
        c = case("srs_ragged")
        y = population_y(c, Q)
        design, samples, rows, probs = c.stacked(backend)
        pi = design.inclusion_probabilities()
        yb = backend.asarray(y[rows])
        m = backend.to_numpy(nat.hajek_mean(yb, samples, pi, axis=1))
        mean = np.nanmean(y, axis=1)
        true_var = by_row((m - mean[rows]) ** 2, rows, probs, c.n_rows)
        v = backend.to_numpy(nat.variance_estimate(yb, samples, design, estimator="hajek",
                                                   axis=1))
        np.testing.assert_allclose(by_row(v, rows, probs, c.n_rows), true_var, rtol=1e-10,
                                   atol=1e-14)


def test_enumeration_cases_cover_the_brief() -> None:
    kinds = {c.kind for c in CASES}
    assert kinds == {"poisson", "srs", "prefix_pmf", "prefix_budget", "systematic"}
    sys_sums = [c.numpy_pi().sum(-1) for c in CASES if c.kind == "systematic"]
    flat = np.concatenate(sys_sums)
    assert np.any(np.abs(flat - np.round(flat)) > 0.1)  # non-integer sums present
    assert all(c.n_units <= 10 for c in CASES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert any((~c.mask).any() and not c.mask[:, 0].all() for c in CASES)
