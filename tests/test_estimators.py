r"""Horvitz–Thompson and Hájek estimators: R references, shapes, NaN safety, autograd, dtypes,
bad input.

R references (``tests/reference/r_estimators.json``, from ``generate_r_references.R``): the HT
total equals ``sampling::HTestimator`` and ``survey::svytotal``; the Hájek mean equals
``survey::svymean`` (which is :math:`\sum_S y_k/\pi_k \,/\, \sum_S 1/\pi_k`), for Poisson,
systematic and SRS samples with several y columns, certainty units and a tiny pi (1e-4).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import nat_estimators as nat

REF = json.loads((Path(__file__).parent / "reference" / "r_estimators.json").read_text())
R_CASES = REF["cases"]
R_IDS = [f"{i}-{c['design']}-N{c['N']}-q{len(c['y'][0])}" for i, c in enumerate(R_CASES)]


def _r_arrays(c: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.array(c["pik"]), np.array(c["y"]), np.array(c["s"], dtype=bool)


# ---------------------------------------------------------------------------- against R
@pytest.mark.parametrize("c", R_CASES, ids=R_IDS)
class TestAgainstR:
    def test_ht_total(self, backend: Any, c: dict[str, Any]) -> None:
        pik, y, s = _r_arrays(c)
        t = nat.ht_total(backend.asarray(y), backend.asarray(s), backend.asarray(pik), axis=0)
        backend.check_array(t, (y.shape[1],))
        np.testing.assert_allclose(backend.to_numpy(t), c["HTestimator"], rtol=1e-13)
        np.testing.assert_allclose(backend.to_numpy(t), c["svytotal"], rtol=1e-13)

    def test_hajek_mean(self, backend: Any, c: dict[str, Any]) -> None:
        pik, y, s = _r_arrays(c)
        m = nat.hajek_mean(backend.asarray(y), backend.asarray(s), backend.asarray(pik), axis=0)
        backend.check_array(m, (y.shape[1],))
        np.testing.assert_allclose(backend.to_numpy(m), c["svymean"], rtol=1e-13)

    def test_known_n_variants(self, backend: Any, c: dict[str, Any]) -> None:
        pik, y, s = _r_arrays(c)
        yb, sb, pb = backend.asarray(y), backend.asarray(s), backend.asarray(pik)
        n = float(c["N"])
        np.testing.assert_allclose(backend.to_numpy(nat.ht_mean(yb, sb, pb, n, axis=0)),
                                   np.array(c["HTestimator"]) / n, rtol=1e-13)
        np.testing.assert_allclose(backend.to_numpy(nat.hajek_total(yb, sb, pb, n, axis=0)),
                                   np.array(c["svymean"]) * n, rtol=1e-13)

    def test_weights(self, backend: Any, c: dict[str, Any]) -> None:
        pik, _, s = _r_arrays(c)
        w = nat.ht_weights(backend.asarray(s), backend.asarray(pik))
        backend.check_array(w, s.shape)
        np.testing.assert_allclose(backend.to_numpy(w), np.where(s, 1 / pik, 0.0), rtol=1e-15)


def test_r_cases_cover_certainty_and_tiny_pi() -> None:
    pik = np.concatenate([c["pik"] for c in R_CASES])
    assert np.any(pik == 1.0) and np.any(pik == 1e-4)
    assert {c["design"] for c in R_CASES} == {"poisson", "systematic", "srswor"}
    tiny_sampled = [c for c in R_CASES
                    if any(p == 1e-4 and si for p, si in zip(c["pik"], c["s"], strict=True))]
    assert tiny_sampled and max(len(c["y"][0]) for c in R_CASES) == 3


# ---------------------------------------------------------------------------- shapes, batching
def _loop_reference(y: np.ndarray, s: np.ndarray, pi: np.ndarray) -> tuple[Any, Any]:
    """Per-row numpy HT total and Hájek mean for y (..., N, *V)."""
    bshape = s.shape[:-1]
    vshape = y.shape[s.ndim :]
    tot = np.zeros((*bshape, *vshape))
    mean = np.zeros((*bshape, *vshape))
    for idx in np.ndindex(*bshape):
        w = np.where(s[idx], 1 / np.where(s[idx], pi[idx], 1), 0.0)
        yy = np.where(s[idx].reshape(-1, *([1] * len(vshape))), y[idx], 0.0)
        tot[idx] = np.tensordot(w, yy, axes=(0, 0))
        mean[idx] = tot[idx] / w.sum()
    return tot, mean


@pytest.mark.parametrize("vshape", [(), (3,), (2, 3)])
def test_batched_vector_valued(backend: Any, vshape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    bshape, n = (2, 3), 7
    pi = rng.uniform(0.1, 1.0, (*bshape, n))
    s = rng.random((*bshape, n)) < 0.6
    s[..., 0] = True  # no empty row
    y = rng.normal(size=(*bshape, n, *vshape))
    y = np.where(s.reshape(*s.shape, *([1] * len(vshape))), y, np.nan)  # NaN at unsampled
    tot, mean = _loop_reference(y, s, pi)
    axis = 2 if vshape else -1
    for ax in {axis, axis - y.ndim if axis >= 0 else axis + y.ndim}:
        yb, sb, pb = backend.asarray(y), backend.asarray(s), backend.asarray(pi)
        t = nat.ht_total(yb, sb, pb, axis=ax)
        m = nat.hajek_mean(yb, sb, pb, axis=ax)
        backend.check_array(t, (*bshape, *vshape))
        backend.check_array(m, (*bshape, *vshape))
        np.testing.assert_allclose(backend.to_numpy(t), tot, rtol=1e-13)
        np.testing.assert_allclose(backend.to_numpy(m), mean, rtol=1e-13)
        cnt = backend.asarray(np.full(bshape, float(n)))
        hm = nat.ht_mean(yb, sb, pb, cnt, axis=ax)
        ht = nat.hajek_total(yb, sb, pb, cnt, axis=ax)
        backend.check_array(hm, (*bshape, *vshape))
        np.testing.assert_allclose(backend.to_numpy(hm), tot / n, rtol=1e-13)
        np.testing.assert_allclose(backend.to_numpy(ht), mean * n, rtol=1e-13)


def test_empty_sample(backend: Any) -> None:
    y = backend.asarray(np.array([[1.0, 2.0], [3.0, 4.0]]))
    s = backend.asarray(np.array([[False, False], [True, False]]))
    pi = backend.asarray(np.array([[0.5, 0.5], [0.5, 0.5]]))
    np.testing.assert_array_equal(backend.to_numpy(nat.ht_total(y, s, pi)), [0.0, 6.0])
    with pytest.raises(ValueError, match="empty sample"):
        nat.hajek_mean(y, s, pi)
    with pytest.raises(ValueError, match="empty sample"):
        nat.hajek_total(y, s, pi, 2.0)


# ---------------------------------------------------------------------------- NaN / Inf safety
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_unsampled_values_are_never_read(backend: Any, bad: float) -> None:
    rng = np.random.default_rng(2)
    n = 9
    pi = rng.uniform(0.2, 1.0, (3, n))
    s = rng.random((3, n)) < 0.5
    s[:, :2] = True
    y = rng.normal(size=(3, n, 2))
    y_bad = np.where(s[..., None], y, bad)
    y_zero = np.where(s[..., None], y, 0.0)
    pb, sb = backend.asarray(pi), backend.asarray(s)
    for fn in (nat.ht_total, nat.hajek_mean):
        a = backend.to_numpy(fn(backend.asarray(y_bad), sb, pb, axis=1))
        b = backend.to_numpy(fn(backend.asarray(y_zero), sb, pb, axis=1))
        assert np.all(np.isfinite(a))
        np.testing.assert_array_equal(a, b)
    d = nat.Poisson(pb)
    for est in ("ht", "hajek"):
        a = backend.to_numpy(nat.variance_estimate(backend.asarray(y_bad), sb, d, axis=1,
                                                   estimator=est))
        b = backend.to_numpy(nat.variance_estimate(backend.asarray(y_zero), sb, d, axis=1,
                                                   estimator=est))
        assert np.all(np.isfinite(a))
        np.testing.assert_array_equal(a, b)


def _torch_backends(backend: Any) -> None:
    if backend.module is not torch:
        pytest.skip("autograd is a torch feature")


@pytest.mark.filterwarnings("ignore::nat_estimators.HajekLinearizationWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_autograd_gradient_is_mask_over_pi(backend: Any, bad: float) -> None:
    _torch_backends(backend)
    rng = np.random.default_rng(3)
    n = 8
    pi = rng.uniform(0.1, 1.0, (2, n))
    s = rng.random((2, n)) < 0.5
    s[:, 0] = True
    y = np.where(s[..., None], rng.normal(size=(2, n, 3)), bad)
    pb, sb = backend.asarray(pi), backend.asarray(s)
    yt = backend.asarray(y).requires_grad_(True)
    nat.ht_total(yt, sb, pb, axis=1).sum().backward()
    g = backend.to_numpy(yt.grad)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, np.broadcast_to((s / pi)[..., None], g.shape), rtol=1e-15)
    # Hájek mean: d ybar_H / d y_k = I_k / (pi_k N-hat)
    yt.grad = None
    nat.hajek_mean(yt, sb, pb, axis=1).sum().backward()
    nhat = (s / pi).sum(-1, keepdims=True)
    np.testing.assert_allclose(backend.to_numpy(yt.grad),
                               np.broadcast_to((s / pi / nhat)[..., None], g.shape), rtol=1e-13)
    # variance estimates: finite gradients, exactly zero at unsampled units
    # (a prefix design draws prefixes only: its sample is the leading run of s)
    lead = np.cumprod(s, axis=-1).astype(bool)
    prefix = nat.Prefix(backend.asarray(np.sort(pi)[:, ::-1].copy()))
    for est in ("ht", "hajek"):
        for design, ss in ((nat.Poisson(pb), s), (prefix, lead)):
            yt.grad = None
            nat.variance_estimate(yt, backend.asarray(ss), design, axis=1,
                                  estimator=est).sum().backward()
            gv = backend.to_numpy(yt.grad)
            assert np.all(np.isfinite(gv))
            assert np.all(gv[~ss] == 0)


# ---------------------------------------------------------------------------- dtypes
def test_float32_accuracy_with_tiny_pi(backend: Any) -> None:
    rng = np.random.default_rng(4)
    n = 64
    pi = rng.uniform(0.05, 1.0, (4, n))
    pi[:, ::7] = 1e-6
    pi[:, 3] = 1.0
    s = rng.random((4, n)) < 0.5
    s[:, ::7] = True  # the tiny-pi units are sampled: weights 1e6
    y = rng.normal(0.0, 100.0, (4, n, 3))
    ref_t = nat.ht_total(y, s, pi, axis=1)
    ref_m = nat.hajek_mean(y, s, pi, axis=1)
    y32, p32 = backend.asarray(y, "float32"), backend.asarray(pi, "float32")
    sb = backend.asarray(s)
    t = nat.ht_total(y32, sb, p32, axis=1)
    m = nat.hajek_mean(y32, sb, p32, axis=1)
    for got, ref in ((t, ref_t), (m, ref_m)):
        assert got.dtype == backend.dtype("float32")
        got_np = backend.to_numpy(got)
        assert np.all(np.isfinite(got_np))
        np.testing.assert_allclose(got_np, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_dtype_promotion(backend: Any) -> None:
    y = backend.asarray(np.array([1.0, 2.0, 3.0]), "float32")
    s = backend.asarray(np.array([True, False, True]))
    p64 = backend.asarray(np.array([0.5, 0.5, 1.0]))
    t = nat.ht_total(y, s, p64)
    assert t.dtype == backend.dtype("float64")
    assert float(backend.to_numpy(t)) == 5.0


# ---------------------------------------------------------------------------- bad input
class TestBadInput:
    def _ok(self, bk: Any) -> tuple[Any, Any, Any]:
        return (bk.asarray(np.array([[1.0, 2.0, 3.0]])),
                bk.asarray(np.array([[True, False, True]])),
                bk.asarray(np.array([[0.5, 0.5, 1.0]])))

    @pytest.mark.parametrize("fn", [nat.ht_total, nat.hajek_mean])
    def test_shape_mismatch(self, backend: Any, fn: Any) -> None:
        y, s, pi = self._ok(backend)
        with pytest.raises(ValueError, match="sample"):
            fn(y, backend.asarray(np.array([[True, False]])), pi)
        with pytest.raises(ValueError, match="pi"):
            fn(y, s, backend.asarray(np.array([[0.5, 0.5]])))
        with pytest.raises(ValueError, match=r"y\.shape"):
            fn(backend.asarray(np.array([[1.0, 2.0]])), s, pi)
        with pytest.raises(ValueError, match=r"y\.shape"):  # a value axis taken for the unit axis
            fn(backend.asarray(np.ones((1, 3, 2))), s, pi)

    @pytest.mark.parametrize("axis", [2, -3, 5])
    def test_axis_out_of_range(self, backend: Any, axis: int) -> None:
        y, s, pi = self._ok(backend)
        with pytest.raises(ValueError, match="axis"):
            nat.ht_total(y, s, pi, axis=axis)

    def test_axis_not_int(self, backend: Any) -> None:
        y, s, pi = self._ok(backend)
        with pytest.raises(TypeError, match="axis"):
            nat.ht_total(y, s, pi, axis=1.0)  # type: ignore[arg-type]

    @pytest.mark.parametrize("bad_pi", [0.0, -0.1, 1.5, np.nan])
    def test_pi_invalid_where_sampled(self, backend: Any, bad_pi: float) -> None:
        y, s, _ = self._ok(backend)
        pi = backend.asarray(np.array([[bad_pi, 0.5, 1.0]]))
        for fn in (nat.ht_total, nat.hajek_mean):
            with pytest.raises(ValueError, match="pi"):
                fn(y, s, pi)
        with pytest.raises(ValueError, match="pi"):
            nat.ht_weights(s, pi)

    def test_pi_zero_where_not_sampled_is_fine(self, backend: Any) -> None:
        y, s, _ = self._ok(backend)
        pi = backend.asarray(np.array([[0.5, 0.0, 1.0]]))
        np.testing.assert_allclose(backend.to_numpy(nat.ht_total(y, s, pi)), [5.0])

    def test_sample_dtype(self, backend: Any) -> None:
        y, _, pi = self._ok(backend)
        with pytest.raises(ValueError, match="sample"):
            nat.ht_total(y, backend.asarray(np.array([[1, 0, 1]])), pi)

    def test_y_dtype(self, backend: Any) -> None:
        _, s, pi = self._ok(backend)
        with pytest.raises(ValueError, match="y"):
            nat.ht_total(backend.asarray(np.array([[1, 2, 3]])), s, pi)

    def test_pi_dtype(self, backend: Any) -> None:
        y, s, _ = self._ok(backend)
        with pytest.raises(ValueError, match="pi"):
            nat.ht_total(y, s, backend.asarray(np.array([[1, 1, 1]])))

    @pytest.mark.parametrize("n", [0.0, -2.0, np.inf])
    def test_population_size(self, backend: Any, n: float) -> None:
        y, s, pi = self._ok(backend)
        for fn in (nat.ht_mean, nat.hajek_total):
            with pytest.raises(ValueError, match="population_size"):
                fn(y, s, pi, n)
        with pytest.raises(ValueError, match="population_size"):
            nat.ht_mean(y, s, pi, backend.asarray(np.array([3.0, 3.0])))
