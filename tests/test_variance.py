r"""Variance formulas: R references, fast paths vs the dense path, successive differences,
float32, NaN handling, summaries and bad input.

R references (``tests/reference/r_estimators.json``): ``variance_estimate(method="ht")`` equals
``sampling::varHT(method = 1)`` and ``survey::svytotal``'s squared SE; ``method="syg"`` equals
``varHT(method = 2)`` for fixed-size designs; ``estimator="hajek"`` equals ``survey::svymean``'s
squared SE.  ``survey`` computes that SE as the HT-form variance (``htvar.matrix``) of
``(y_k - ybar_H) w_k / sum(w)`` with ``w_k = 1/pi_k`` — exactly our
:math:`z_k = (y_k - \bar y_H)/\hat N` (see ``survey:::svymean.pps``).
"""

from __future__ import annotations

import doctest
import itertools
import json
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nat_estimators as nat
from nat_estimators import _variance_engine as V

REF = json.loads((Path(__file__).parent / "reference" / "r_estimators.json").read_text())
R_CASES = REF["cases"]
R_IDS = [f"{i}-{c['design']}-N{c['N']}-q{len(c['y'][0])}" for i, c in enumerate(R_CASES)]


def _r_design(bk: Any, c: dict[str, Any]) -> Any:
    pik = bk.asarray(np.array(c["pik"]))
    if c["design"] == "poisson":
        return nat.Poisson(pik)
    if c["design"] == "systematic":
        return nat.Systematic(pik)
    n = round(sum(c["pik"]))
    return nat.SimpleRandom(n, mask=bk.asarray(np.ones(c["N"], dtype=bool)))


def _biased(c: dict[str, Any]) -> AbstractContextManager[Any]:
    if c["design"] == "systematic":
        return pytest.warns(nat.BiasedVarianceEstimateWarning)
    return nullcontext()


# ---------------------------------------------------------------------------- against R
@pytest.mark.parametrize("c", R_CASES, ids=R_IDS)
class TestAgainstR:
    def test_design_reproduces_the_case_probabilities(
        self, backend: Any, c: dict[str, Any]
    ) -> None:
        d = _r_design(backend, c)
        np.testing.assert_allclose(backend.to_numpy(d.inclusion_probabilities()), c["pik"],
                                   rtol=1e-15)
        np.testing.assert_allclose(backend.to_numpy(d.joint_inclusion_probabilities()), c["pi2"],
                                   rtol=1e-12, atol=1e-15)

    def test_varht_method1_and_svytotal_se(self, backend: Any, c: dict[str, Any]) -> None:
        d = _r_design(backend, c)
        y, s = backend.asarray(np.array(c["y"])), backend.asarray(np.array(c["s"], dtype=bool))
        with _biased(c):
            v = nat.variance_estimate(y, s, d, axis=0)
        backend.check_array(v, (len(c["y"][0]),))
        np.testing.assert_allclose(backend.to_numpy(v), c["varHT1"], rtol=1e-9)
        np.testing.assert_allclose(backend.to_numpy(v), np.square(c["svytotal_se"]), rtol=1e-9)

    def test_varht_method2(self, backend: Any, c: dict[str, Any]) -> None:
        d = _r_design(backend, c)
        y, s = backend.asarray(np.array(c["y"])), backend.asarray(np.array(c["s"], dtype=bool))
        if c["varHT2"] is None:  # Poisson: random size, SYG undefined
            with pytest.raises(ValueError, match="fixed-size"):
                nat.variance_estimate(y, s, d, method="syg", axis=0)
            return
        with _biased(c):
            v = nat.variance_estimate(y, s, d, method="syg", axis=0)
        np.testing.assert_allclose(backend.to_numpy(v), c["varHT2"], rtol=1e-9)

    def test_svymean_se(self, backend: Any, c: dict[str, Any]) -> None:
        d = _r_design(backend, c)
        y, s = backend.asarray(np.array(c["y"])), backend.asarray(np.array(c["s"], dtype=bool))
        with _biased(c):
            v = nat.variance_estimate(y, s, d, estimator="hajek", axis=0)
        np.testing.assert_allclose(backend.to_numpy(v), np.square(c["svymean_se"]), rtol=1e-9)
        # survey's linearization, written out: HT-form variance of z = (y - ybar_H) / N-hat
        pik, ys, sm = np.array(c["pik"]), np.array(c["y"]), np.array(c["s"], dtype=bool)
        nhat = np.sum(1 / pik[sm])
        z = np.where(sm[:, None], (ys - np.array(c["svymean"])) / nhat, np.nan)
        with _biased(c):
            vz = nat.variance_estimate(backend.asarray(z), s, d, axis=0)
        np.testing.assert_allclose(backend.to_numpy(vz), backend.to_numpy(v), rtol=1e-12)


# ---------------------------------------------------------------------------- fast vs dense
@pytest.fixture(params=["default", "tiny_chunks"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The fast paths with their default tuning, and with tiny row chunks and scan blocks."""
    if request.param == "tiny_chunks":
        monkeypatch.setattr(V, "_CHUNK_ELEMENTS", 50)
        monkeypatch.setattr(V, "_SCAN_BLOCK", 3)
    yield request.param


def _survival(rng: np.random.Generator, mask: np.ndarray, full: float) -> np.ndarray:
    pi = np.zeros(mask.shape)
    for idx in np.ndindex(*mask.shape[:-1]):
        ne = int(mask[idx].sum())
        pmf = rng.dirichlet(np.ones(ne + 1)) * (1 - full)
        pmf[-1] += full
        pi[idx][mask[idx]] = np.minimum(np.cumsum(pmf[::-1])[::-1][1:], 1.0)
    return pi


def _scaled_rows(rng: np.random.Generator, mask: np.ndarray, frac: float) -> np.ndarray:
    pi = np.zeros(mask.shape)
    for idx in np.ndindex(*mask.shape[:-1]):
        m = mask[idx]
        x = rng.uniform(0.2, 1.0, int(m.sum()))
        p = frac * m.sum() * x / x.sum()
        pi[idx][m] = np.minimum(p, 1.0)
    return pi


def _big_designs(
    bk: Any, seed: int = 0, empty_row: bool = True
) -> dict[str, tuple[Any, np.ndarray]]:
    """Designs with N = 150 (not a multiple of the scan block), batch (2, 3), ragged masks."""
    rng = np.random.default_rng(seed)
    n = 150
    mask = rng.random((2, 3, n)) < 0.8
    mask[0, 0] = np.arange(n) < 97  # a right-padded row
    if empty_row:
        mask[1, 2, :] = False  # a row without eligible tokens
    pi_p = np.where(mask, rng.uniform(0.02, 1.0, mask.shape), np.nan)  # NaN padding
    pi_p[0, 1, :5] = 1.0
    pi_s = _scaled_rows(rng, mask, 0.3)
    pi_s_int = pi_s.copy()
    counts = mask.sum(-1)
    for idx in np.ndindex(2, 3):
        if counts[idx]:  # make the sum an integer: scale to round(sum)
            tot = pi_s[idx].sum()
            pi_s_int[idx] = pi_s[idx] * max(1.0, np.round(tot)) / tot
    assert np.all(pi_s_int <= 1)
    mb = bk.asarray(mask)
    nn = np.maximum(np.round(0.3 * counts), np.minimum(counts, 2)).astype(np.int64)
    return {
        "poisson": (nat.Poisson(bk.asarray(pi_p), mask=mb), mask),
        "srs": (nat.SimpleRandom(bk.asarray(nn), mask=mb), mask),
        "prefix": (nat.Prefix(bk.asarray(_survival(rng, mask, 0.05)), mask=mb), mask),
        "prefix_budget": (nat.Prefix.from_fraction(0.4, mask=mb, full_keep=0.05), mask),
        "systematic_nonint": (nat.Systematic(bk.asarray(pi_s), mask=mb), mask),
        "systematic_int": (nat.Systematic(bk.asarray(pi_s_int), mask=mb), mask),
    }


def _rel_close(a: np.ndarray, b: np.ndarray, rtol: float) -> None:
    scale = np.max(np.abs(b)) + 1e-300
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("kind", ["poisson", "srs", "prefix", "prefix_budget",
                                  "systematic_nonint", "systematic_int"])
def test_fast_paths_equal_dense_path(backend: Any, engine: str, kind: str) -> None:
    d, mask = _big_designs(backend)[kind]
    rng = np.random.default_rng(1)
    y = rng.normal(0.5, 1.0, (*mask.shape, 2, 2))
    y = np.where(mask[..., None, None], y, np.nan)  # NaN at ineligible positions: ignored
    yb = backend.asarray(y)
    fast = nat.design_variance(yb, d, axis=2)
    dense = nat.design_variance(yb, d, axis=2, method="dense")
    backend.check_array(fast, (2, 3, 2, 2))
    _rel_close(backend.to_numpy(fast), backend.to_numpy(dense), 1e-9)
    cf = nat.design_variance(yb, d, axis=2, covariance=True)
    cd = nat.design_variance(yb, d, axis=2, covariance=True, method="dense")
    backend.check_array(cf, (2, 3, 2, 2, 2, 2))
    _rel_close(backend.to_numpy(cf), backend.to_numpy(cd), 1e-9)
    assert np.all(backend.to_numpy(fast) >= 0)
    assert np.all(backend.to_numpy(fast)[1, 2] == 0)  # the row without eligible tokens


def test_systematic_certainty_unit_after_rounded_cumulative_sum(backend: Any) -> None:
    # regression (found by hypothesis): the cumulative sum reaches 1 - 1e-16 just before a
    # certainty unit and exactly 2.0 after it, so that unit's rounded arc is longer than 1.  The
    # sampling rule selects it for every u; the breakpoint sweep once dropped it for almost all u.
    pi = np.array([0.14162498808578908, 0.30013677191722243, 0.0, 0.0, 0.5582382399969884, 1.0,
                   0.0, 0.0])
    mask = pi > 0
    assert np.cumsum(pi)[4] < 1.0 and np.cumsum(pi)[5] == 2.0
    d = nat.Systematic(backend.asarray(pi), mask=backend.asarray(mask))
    y = backend.asarray(np.where(mask, -0.3 * pi, np.nan))  # y proportional to pi: V = 0
    for method in ("auto", "dense"):
        assert abs(float(backend.to_numpy(nat.design_variance(y, d, method=method)))) < 1e-15
    assert bool(backend.to_numpy(d.sample(backend.asarray(np.array(0.5))))[5])


def _oracle_estimate(d_np: Any, y: np.ndarray, s: np.ndarray, method: str) -> np.ndarray:
    """Textbook double sum with the (numpy) design's dense pi_kl; y (..., N, q)."""
    p2 = np.asarray(d_np.joint_inclusion_probabilities())
    pi = np.asarray(d_np.inclusion_probabilities())
    both = s[..., :, None] & s[..., None, :]
    dchk = np.where(both, (p2 - pi[..., :, None] * pi[..., None, :]) / np.where(both, p2, 1), 0)
    a = np.where(s[..., None], np.nan_to_num(y) / np.where(s, pi, 1)[..., None], 0.0)
    if method == "ht":
        return np.einsum("...kl,...kq,...lq->...q", dchk, a, a)
    d2 = (a[..., :, None, :] - a[..., None, :, :]) ** 2
    return -0.5 * np.einsum("...kl,...klq->...q", dchk, d2)


# the algebra of the fast path, not the validity of the Hájek linearization under prefix
@pytest.mark.filterwarnings("ignore::nat_estimators.HajekLinearizationWarning")
@pytest.mark.parametrize("kind", ["poisson", "srs", "prefix", "prefix_budget"])
@pytest.mark.parametrize("estimator", ["ht", "hajek"])
def test_estimator_fast_paths_equal_double_sum(
    backend: Any, engine: str, kind: str, estimator: str
) -> None:
    from conftest import _BACKENDS

    hajek = estimator == "hajek"
    d, mask = _big_designs(backend, empty_row=not hajek)[kind]
    d_np, _ = _big_designs(_BACKENDS["numpy"], empty_row=not hajek)[kind]
    s = np.asarray(d_np.draw(3))
    if hajek:  # undefined on an empty sample: keep the first token there (a valid prefix too)
        first = mask & (np.cumsum(mask, -1) == 1)
        s = s | (first & ~s.any(-1, keepdims=True))
    y = np.random.default_rng(2).normal(0.5, 1.0, (*mask.shape, 3))
    y_nan = np.where(s[..., None], y, np.nan)
    z = y_nan
    if hajek:  # the linearization variable, computed independently
        pi = np.asarray(d_np.inclusion_probabilities())
        w = np.where(s, 1 / np.where(s, pi, 1), 0)
        nhat = w.sum(-1)
        ybar = np.einsum("...k,...kq->...q", w, np.nan_to_num(y_nan)) / nhat[..., None]
        z = np.where(s[..., None], (y - ybar[..., None, :]) / nhat[..., None, None], np.nan)
    for method in ("ht", "syg") if kind == "srs" else ("ht",):
        got = nat.variance_estimate(backend.asarray(y_nan), backend.asarray(s), d, axis=-2,
                                    method=method, estimator=estimator)
        backend.check_array(got, (2, 3, 3))
        _rel_close(backend.to_numpy(got), _oracle_estimate(d_np, z, s, method), 1e-9)
        cov = nat.variance_estimate(backend.asarray(y_nan), backend.asarray(s), d, axis=-2,
                                    method=method, estimator=estimator, covariance=True)
        backend.check_array(cov, (2, 3, 3, 3))
        _rel_close(np.diagonal(backend.to_numpy(cov), axis1=-2, axis2=-1),
                   backend.to_numpy(got), 1e-9)


def test_prefix_and_srs_estimates_are_nonnegative(backend: Any) -> None:
    # both have closed forms that are sums of squares (no cancellation)
    rng = np.random.default_rng(5)
    for kind in ("prefix", "srs", "poisson"):
        d, mask = _big_designs(backend, seed=7)[kind]
        for seed in range(3):
            s = d.draw(seed)
            y = backend.asarray(rng.normal(size=(*mask.shape, 2)))
            v = backend.to_numpy(nat.variance_estimate(y, s, d, axis=2))
            assert np.all(v >= 0), kind


# ------------------------------------------------------------------------ successive differences
def test_successive_differences_formula(backend: Any) -> None:
    rng = np.random.default_rng(6)
    mask = np.array([[1, 1, 0, 1, 1, 1, 0, 1, 1, 1]] * 2, dtype=bool)
    pi = np.where(mask, rng.uniform(0.2, 0.8, mask.shape), 0.0)
    d = nat.Poisson(backend.asarray(pi), mask=backend.asarray(mask))
    s = mask & (rng.random(mask.shape) < 0.6)
    s[:, :2] = True
    y = rng.normal(size=(2, 10, 2))
    v = backend.to_numpy(nat.variance_estimate(backend.asarray(np.where(s[..., None], y, np.nan)),
                                               backend.asarray(s), d, axis=1,
                                               method="successive_differences"))
    for r in range(2):
        idx = np.flatnonzero(s[r])
        a = y[r, idx] / pi[r, idx, None]
        n, big_n = len(idx), mask[r].sum()
        ref = (1 - n / big_n) * n / (2 * (n - 1)) * np.sum(np.diff(a, axis=0) ** 2, axis=0)
        np.testing.assert_allclose(v[r], ref, rtol=1e-12)


def test_successive_differences_full_sample_is_zero(backend: Any) -> None:
    mask = backend.asarray(np.ones((1, 6), dtype=bool))
    d = nat.Systematic(backend.asarray(np.ones((1, 6))))
    y = backend.asarray(np.arange(6.0)[None])
    v = nat.variance_estimate(y, mask, d, method="successive_differences")
    np.testing.assert_array_equal(backend.to_numpy(v), [0.0])


@pytest.mark.parametrize("n_units,keep", [(6, 0.5), (6, 1 / 3), (8, 0.25)])
def test_successive_differences_unbiased_over_random_orderings(
    backend: Any, n_units: int, keep: float
) -> None:
    # equal-probability systematic sampling of a randomly ordered population behaves like SRS,
    # and neighbouring sampled units are a random pair: E_perm E_design v_SD = E_perm V exactly
    rng = np.random.default_rng(7)
    y0 = rng.normal(size=n_units)
    perms = np.array(list(itertools.permutations(range(n_units))))
    if len(perms) > 5040:
        perms = perms[rng.choice(len(perms), 5040, replace=False)]
    ys = y0[perms]  # (P, N)
    k = round(1 / keep)
    mask = np.ones(ys.shape, dtype=bool)
    d = nat.Systematic.from_fraction(keep, mask=backend.asarray(mask))
    var = backend.to_numpy(nat.design_variance(backend.asarray(ys), d))
    # the k equally likely systematic samples {j, j + k, ...}
    ev = np.zeros(len(perms))
    for j in range(k):
        s = np.zeros(ys.shape, dtype=bool)
        s[:, j::k] = True
        ev += backend.to_numpy(nat.variance_estimate(backend.asarray(ys), backend.asarray(s), d,
                                                     method="successive_differences")) / k
    if len(perms) == math.factorial(n_units):
        np.testing.assert_allclose(ev.mean(), var.mean(), rtol=1e-10)
        # and the same average equals the SRS variance N^2 (1 - f) S^2 / n
        n = n_units // k
        srs = n_units**2 * (1 - n / n_units) * np.var(y0, ddof=1) / n
        np.testing.assert_allclose(var.mean(), srs, rtol=1e-10)
    else:
        np.testing.assert_allclose(ev.mean(), var.mean(), rtol=0.05)


def test_successive_differences_misses_the_trend_effect(backend: Any) -> None:
    # documented limitation: under a pure linear trend the systematic total varies with the start
    # position (an "end effect") that neighbouring differences do not see, so v_SD underestimates
    n_units = 64
    y = np.linspace(0.0, 10.0, n_units)[None]
    mask = np.ones((1, n_units), dtype=bool)
    d = nat.Systematic.from_fraction(0.25, mask=backend.asarray(mask))
    var = float(backend.to_numpy(nat.design_variance(backend.asarray(y), d))[0])
    np.testing.assert_allclose(var, (64 * 10 / 63) ** 2 * 1.25, rtol=1e-12)  # (N b)^2 Var(start)
    for seed in range(4):
        s = d.draw(seed)
        v = float(backend.to_numpy(nat.variance_estimate(backend.asarray(y), s, d,
                                                         method="successive_differences"))[0])
        np.testing.assert_allclose(v, 0.75 * 8 * (16 * 10 / 63) ** 2, rtol=1e-12)
        assert v < var / 3


# ---------------------------------------------------------------------------- float32, tiny pi
def _f32_designs(bk: Any, dtype: str) -> dict[str, Any]:
    rng = np.random.default_rng(8)
    n = 200
    mask = np.ones((3, n), dtype=bool)
    mask[1, 150:] = False
    mask[2, ::5] = False
    pi_p = np.where(mask, rng.uniform(0.05, 1.0, mask.shape), 0.0)
    pi_p[:, 7::13] = 1e-6
    pi_p = np.where(mask, pi_p, 0.0)
    pi_pref = _survival(rng, mask, 1e-6)  # full-keep atom 1e-6: pi_N ~ 1e-6
    pi_pref = np.where(mask & (np.cumsum(mask, -1) >= mask.sum(-1, keepdims=True) - 3),
                       np.minimum(pi_pref, 1e-6), pi_pref)  # the last 3 tokens at 1e-6
    pi_pref = np.where(mask, pi_pref, 0.0)
    pi_sys = _scaled_rows(rng, mask, 0.3)
    pi_sys[:, 11::17] = np.where(mask[:, 11::17], 1e-6, 0.0)
    mb = bk.asarray(mask)
    return {
        "poisson": nat.Poisson(bk.asarray(pi_p, dtype), mask=mb),
        "prefix": nat.Prefix(bk.asarray(pi_pref, dtype), mask=mb),
        "systematic": nat.Systematic(bk.asarray(pi_sys, dtype), mask=mb),
        "srs": nat.SimpleRandom(bk.asarray(np.array([40, 30, 20])), mask=mb),
        "mask": mask,
    }


@pytest.mark.filterwarnings("ignore::nat_estimators.HajekLinearizationWarning")
@pytest.mark.parametrize("kind", ["poisson", "prefix", "systematic", "srs"])
def test_float32_accuracy_with_tiny_pi(backend: Any, kind: str) -> None:
    d32 = _f32_designs(backend, "float32")
    d64 = _f32_designs(backend, "float64")
    mask = d32["mask"]
    rng = np.random.default_rng(9)
    y = rng.normal(0.0, 30.0, (*mask.shape, 3)) + 100.0
    y32, y64 = backend.asarray(y, "float32"), backend.asarray(y)
    f32 = backend.dtype("float32")
    v32 = nat.design_variance(y32, d32[kind], axis=1)
    v64 = backend.to_numpy(nat.design_variance(y64, d64[kind], axis=1))
    if kind != "srs":  # SimpleRandom's pi is float64 by construction
        assert v32.dtype == f32
    assert np.all(np.isfinite(backend.to_numpy(v32)))
    _rel_close(backend.to_numpy(v32), v64, 1e-4)
    c32 = nat.design_variance(y32, d32[kind], axis=1, covariance=True)
    _rel_close(backend.to_numpy(c32), backend.to_numpy(
        nat.design_variance(y64, d64[kind], axis=1, covariance=True)), 1e-4)
    # one-sample estimates (sampled tiny-pi units included for Poisson and prefix)
    s = np.asarray(backend.to_numpy(d64[kind].draw(10)))
    if kind == "poisson":
        s = s | (mask & (np.asarray(backend.to_numpy(d64[kind].inclusion_probabilities())) < 1e-5))
    if kind == "prefix":
        s = mask.copy()  # the whole row: every weight, up to 1e6, enters
    methods = ["ht"] if kind != "systematic" else ["successive_differences"]
    for method in methods:
        for est in ("ht", "hajek"):
            e32 = nat.variance_estimate(y32, backend.asarray(s), d32[kind], axis=1,
                                        method=method, estimator=est)
            e64 = nat.variance_estimate(y64, backend.asarray(s), d64[kind], axis=1,
                                        method=method, estimator=est)
            assert np.all(np.isfinite(backend.to_numpy(e32)))
            _rel_close(backend.to_numpy(e32), backend.to_numpy(e64), 1e-4)


# ---------------------------------------------------------------------------- NaN in y
def test_design_variance_ignores_padding_but_not_eligible_nan(backend: Any) -> None:
    rng = np.random.default_rng(11)
    mask = np.array([[1, 1, 0, 1, 1, 0], [1, 0, 1, 1, 1, 1]], dtype=bool)
    pi = np.where(mask, rng.uniform(0.2, 1.0, mask.shape), 0.0)
    y = rng.normal(size=(2, 6))
    for design in (nat.Poisson(backend.asarray(pi), mask=backend.asarray(mask)),
                   nat.Prefix(backend.asarray(_survival(rng, mask, 0.1)),
                              mask=backend.asarray(mask)),
                   nat.Systematic(backend.asarray(pi), mask=backend.asarray(mask))):
        ref = backend.to_numpy(nat.design_variance(backend.asarray(np.where(mask, y, 0.0)),
                                                   design))
        for bad in (np.nan, np.inf):
            got = nat.design_variance(backend.asarray(np.where(mask, y, bad)), design)
            np.testing.assert_allclose(backend.to_numpy(got), ref, rtol=1e-14)
            y_bad = y.copy()
            y_bad[1, 2] = bad  # eligible
            with pytest.raises(ValueError, match="NaN or Inf at eligible"):
                nat.design_variance(backend.asarray(y_bad), design)


def test_variance_estimate_rejects_nan_at_sampled_units(backend: Any) -> None:
    d = nat.Poisson(backend.asarray(np.array([0.5, 0.5, 1.0])))
    y = backend.asarray(np.array([1.0, np.nan, 3.0]))
    with pytest.raises(ValueError, match="NaN or Inf at sampled"):
        nat.variance_estimate(y, backend.asarray(np.array([True, True, True])), d)


# ---------------------------------------------------------------------------- summaries
def test_design_summary(backend: Any) -> None:
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=bool)
    d = nat.Poisson.from_fraction(0.25, mask=backend.asarray(mask))
    y = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, -1.0, np.nan, np.nan]])
    s = nat.design_summary(backend.asarray(y), d)
    np.testing.assert_allclose(backend.to_numpy(s.expected_size), [1.0, 0.5])
    np.testing.assert_allclose(backend.to_numpy(s.keep_fraction), [0.25, 0.25])
    np.testing.assert_allclose(backend.to_numpy(s.max_weight), [4.0, 4.0])
    np.testing.assert_allclose(backend.to_numpy(s.variance_inflation), [3.0, 3.0])  # 1/p - 1
    v = backend.to_numpy(nat.design_variance(backend.asarray(y), d))
    np.testing.assert_allclose(backend.to_numpy(s.variance), v)
    # row 2 has total 0 but V > 0: the relative variance is infinite (never a silent V / 1)
    np.testing.assert_allclose(backend.to_numpy(s.relative_variance), [v[0] / 100.0, np.inf])
    z = nat.design_summary(backend.asarray(np.zeros((2, 4))), d)
    np.testing.assert_array_equal(backend.to_numpy(z.relative_variance), [0.0, 0.0])
    np.testing.assert_array_equal(backend.to_numpy(z.variance_inflation), [0.0, 0.0])
    backend.check_array(s.relative_variance, (2,))
    s0 = nat.design_summary(None, d)
    assert s0.variance is None and s0.relative_variance is None


# ---------------------------------------------------------------------------- bad input
class TestBadInput:
    def _setup(self, bk: Any) -> tuple[Any, Any, Any]:
        mask = bk.asarray(np.array([[True, True, False, True]]))
        d = nat.Poisson(bk.asarray(np.array([[0.5, 0.5, 0.0, 1.0]])), mask=mask)
        y = bk.asarray(np.array([[1.0, 2.0, 3.0, 4.0]]))
        return d, y, bk.asarray(np.array([[True, False, False, True]]))

    def test_y_shape(self, backend: Any) -> None:
        d, _, s = self._setup(backend)
        bad = backend.asarray(np.ones((1, 3)))
        with pytest.raises(ValueError, match=r"y\.shape"):
            nat.design_variance(bad, d)
        with pytest.raises(ValueError, match=r"y\.shape"):
            nat.variance_estimate(bad, s, d)
        with pytest.raises(ValueError, match=r"y\.shape"):  # the value axis taken as units
            nat.design_variance(backend.asarray(np.ones((1, 4, 2))), d)

    @pytest.mark.parametrize("axis", [2, -3, 7])
    def test_axis_out_of_range(self, backend: Any, axis: int) -> None:
        d, y, s = self._setup(backend)
        with pytest.raises(ValueError, match="axis"):
            nat.design_variance(y, d, axis=axis)
        with pytest.raises(ValueError, match="axis"):
            nat.variance_estimate(y, s, d, axis=axis)

    def test_sample_shape_and_dtype(self, backend: Any) -> None:
        d, y, _ = self._setup(backend)
        with pytest.raises(ValueError, match="sample"):
            nat.variance_estimate(y, backend.asarray(np.array([[True, False, True]])), d)
        with pytest.raises(ValueError, match="sample"):
            nat.variance_estimate(y, backend.asarray(np.array([[1, 0, 0, 1]])), d)

    def test_sample_not_subset_of_eligible(self, backend: Any) -> None:
        d, y, _ = self._setup(backend)
        with pytest.raises(ValueError, match=r"sample.*not eligible"):
            nat.variance_estimate(y, backend.asarray(np.array([[True, False, True, False]])), d)

    def test_unknown_method_and_estimator(self, backend: Any) -> None:
        d, y, s = self._setup(backend)
        with pytest.raises(ValueError, match="method"):
            nat.variance_estimate(y, s, d, method="yg")
        with pytest.raises(ValueError, match="estimator"):
            nat.variance_estimate(y, s, d, estimator="ratio")
        with pytest.raises(ValueError, match="method"):
            nat.design_variance(y, d, method="fast")

    def test_not_a_design(self, backend: Any) -> None:
        _, y, s = self._setup(backend)
        with pytest.raises(TypeError, match="design"):
            nat.design_variance(y, object())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="design"):
            nat.variance_estimate(y, s, object())  # type: ignore[arg-type]

    def test_syg_needs_fixed_size(self, backend: Any) -> None:
        _, y, s = self._setup(backend)
        mask = backend.asarray(np.array([[True, True, False, True]]))
        designs = [
            nat.Poisson(backend.asarray(np.array([[0.5, 0.5, 0.0, 1.0]])), mask=mask),
            nat.Prefix(backend.asarray(np.array([[1.0, 0.5, 0.0, 0.25]])), mask=mask),
            nat.Systematic(backend.asarray(np.array([[0.5, 0.6, 0.0, 1.0]])), mask=mask),
        ]
        for d in designs:
            with pytest.raises(ValueError, match="method='syg' needs a fixed-size design"):
                nat.variance_estimate(y, s, d, method="syg")

    def test_empty_sample_hajek(self, backend: Any) -> None:
        _, y, _ = self._setup(backend)
        mask = backend.asarray(np.array([[True, True, False, True]]))
        d = nat.Poisson(backend.asarray(np.array([[0.5, 0.5, 0.0, 0.8]])), mask=mask)
        empty = backend.asarray(np.zeros((1, 4), dtype=bool))
        with pytest.raises(ValueError, match="empty sample"):
            nat.variance_estimate(y, empty, d, estimator="hajek")
        # the HT total's variance estimate of an empty sample is 0
        np.testing.assert_array_equal(
            backend.to_numpy(nat.variance_estimate(y, empty, d)), [0.0])

    def test_successive_differences_needs_two_units(self, backend: Any) -> None:
        d, y, _ = self._setup(backend)
        one = backend.asarray(np.array([[False, False, False, True]]))
        with pytest.raises(ValueError, match="at least 2 sampled units"):
            nat.variance_estimate(y, one, d, method="successive_differences")

    def test_srs_n0_variance_undefined(self, backend: Any) -> None:
        # pi = 0 on eligible tokens: refused (by the design, or by design_variance)
        with pytest.raises(ValueError, match=r"\bn\b"):
            d = nat.SimpleRandom(0, mask=backend.asarray(np.ones(3, dtype=bool)))
            nat.design_variance(backend.asarray(np.ones(3)), d)

    def test_srs_n1_warns(self, backend: Any) -> None:
        d = nat.SimpleRandom(1, mask=backend.asarray(np.ones(3, dtype=bool)))
        y = backend.asarray(np.array([1.0, 2.0, 3.0]))
        s = backend.asarray(np.array([False, True, False]))
        with pytest.warns(nat.BiasedVarianceEstimateWarning, match="n = 1"):
            v = nat.variance_estimate(y, s, d)
        np.testing.assert_allclose(backend.to_numpy(v), (1 - 1 / 3) * 36.0)
        with pytest.warns(nat.BiasedVarianceEstimateWarning, match="it is 0"):
            v = nat.variance_estimate(y, s, d, method="syg")
        np.testing.assert_allclose(backend.to_numpy(v), 0.0)


# ---------------------------------------------------------------------------- docs
@pytest.mark.parametrize("module", ["nat_estimators.estimators", "nat_estimators.variance"])
def test_doctests(module: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    with np.printoptions(legacy=False):
        res = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0 and res.attempted >= 5


# ---------------------------------------------------------------------------- devices
def test_results_stay_on_the_input_device(device_backend: Any) -> None:
    # array-api-strict's second device catches arrays silently created on the default device
    bk = device_backend
    for kind, (d, mask) in _big_designs(bk).items():
        y = bk.asarray(np.where(mask[..., None], 1.0 + np.arange(150.0)[:, None] / 50, np.nan)
                       * np.ones((2, 3, 150, 2)))
        for method in ("auto", "dense"):
            bk.check_array(nat.design_variance(y, d, axis=2, method=method), (2, 3, 2))
            bk.check_array(nat.design_variance(y, d, axis=2, method=method, covariance=True),
                           (2, 3, 2, 2))
        s = d.draw(0)
        ctx = (pytest.warns(nat.BiasedVarianceEstimateWarning) if kind.startswith("systematic")
               else nullcontext())
        with ctx:
            bk.check_array(nat.variance_estimate(y, s, d, axis=2), (2, 3, 2))
        pi = d.inclusion_probabilities()
        bk.check_array(nat.ht_total(y, s, pi, axis=2), (2, 3, 2))
        bk.check_array(nat.ht_weights(s, pi), (2, 3, 150))
        summ = nat.design_summary(y, d, axis=2)
        bk.check_array(summ.relative_variance, (2, 3))
        bk.check_array(summ.variance_inflation, (2, 3))


# ---------------------------------------------------------------------------- memory
@pytest.mark.parametrize("kind", ["poisson", "srs", "prefix", "systematic"])
def test_fast_paths_use_linear_memory(kind: str) -> None:
    # N = 200,000: an N x N float64 array would need 320 GB; peak extra memory must stay a small
    # multiple of y itself (numpy allocations are visible to tracemalloc)
    import tracemalloc

    rng = np.random.default_rng(12)
    n_rows, n, q = 2, 200_000, 2
    mask = rng.random((n_rows, n)) < 0.9
    y = rng.normal(size=(n_rows, n, q))
    if kind == "poisson":
        d = nat.Poisson(np.where(mask, rng.uniform(0.1, 1.0, mask.shape), 0.0), mask=mask)
    elif kind == "srs":
        d = nat.SimpleRandom(np.array([1000, 5000]), mask=mask)
    elif kind == "prefix":
        d = nat.Prefix.from_fraction(0.3, mask=mask, full_keep=0.05)
    else:
        d = nat.Systematic.from_fraction(0.3, mask=mask)
    s = d.draw(0)
    tracemalloc.start()
    try:
        nat.design_variance(y, d, axis=1)
        nat.design_variance(y, d, axis=1, covariance=True)
        if kind != "systematic":
            nat.variance_estimate(y, s, d, axis=1)
        else:
            nat.variance_estimate(y, s, d, axis=1, method="successive_differences")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * y.nbytes, (peak / y.nbytes)


def test_dense_paths_refuse_huge_matrices_with_advice() -> None:
    """A long systematic row would need an N x N matrix: a clear error, not an OOM."""
    mask = np.ones((4, 8192), dtype=bool)
    d = nat.Systematic.from_fraction(0.5, mask=mask)
    y = np.ones((4, 8192))
    s = d.draw(0)
    with pytest.raises(ValueError, match="successive_differences"):
        nat.variance_estimate(y, s, d)
    with pytest.raises(ValueError, match="dense"):
        nat.design_variance(y, d, method="dense")
    v = nat.variance_estimate(y, s, d, method="successive_differences")
    assert v.shape == (4,) and np.all(np.isfinite(v))
