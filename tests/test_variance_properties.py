r"""Hypothesis: invariants of the exact variance and the estimators on random valid designs.

* every fast path equals the dense path (1e-9 relative to the scale of the quadratic form);
* the design variance is >= 0 (up to rounding), and so are the Poisson / SRS / prefix estimates;
* the variance is 0 when y is proportional to pi for fixed-size designs (SRS, Systematic with an
  integer sum), on the fast and the dense path;
* one-sample estimates equal the textbook double sum with the design's dense pi_kl.

Designs are drawn with ragged / non-contiguous masks (empty rows included), certainty units and
small pi; N up to 80 so that the blocked prefix scan of the fast paths is exercised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import nat_estimators as nat

KINDS = ["poisson", "srs", "prefix", "systematic_int", "systematic_nonint"]


@dataclass
class Drawn:
    kind: str
    mask: np.ndarray
    pi: np.ndarray | None
    n: np.ndarray | None
    y: np.ndarray  # (R, N, q), NaN at ineligible positions

    def build(self, bk: Any) -> Any:
        mb = bk.asarray(self.mask)
        if self.kind == "poisson":
            return nat.Poisson(bk.asarray(self.pi), mask=mb)
        if self.kind == "prefix":
            return nat.Prefix(bk.asarray(self.pi), mask=mb)
        if self.kind.startswith("systematic"):
            return nat.Systematic(bk.asarray(self.pi), mask=mb)
        return nat.SimpleRandom(bk.asarray(self.n), mask=mb)


@st.composite
def drawn(draw: Any, kinds: list[str] = KINDS, proportional: bool = False) -> Drawn:
    kind = draw(st.sampled_from(kinds))
    n_rows = draw(st.integers(1, 3))
    n_units = draw(st.sampled_from([1, 2, 3, 5, 8, 13, 33, 80]))
    q = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.sampled_from([0.5, 0.8, 1.0]))
    certainty = draw(st.booleans())
    tiny = draw(st.sampled_from([1.0, 1e-3, 1e-6]))
    rng = np.random.default_rng(seed)
    mask = rng.random((n_rows, n_units)) < density
    if kind != "poisson" or draw(st.booleans()):
        mask[:, 0] |= ~mask.any(-1)  # no empty rows (SRS/Prefix/Systematic need eligible tokens)
    pi = np.zeros(mask.shape)
    n = np.zeros(n_rows, dtype=np.int64)
    for r in range(n_rows):
        m = mask[r]
        ne = int(m.sum())
        if ne == 0:
            continue
        if kind == "poisson":
            p = rng.uniform(0.01, 1.0, ne)
            p[rng.random(ne) < 0.15] = tiny
            if certainty:
                p[rng.integers(ne)] = 1.0
        elif kind == "prefix":
            full = max(tiny, 1e-3) if tiny < 1 else 0.2
            pmf = rng.dirichlet(np.full(ne + 1, 0.7)) * (1 - full)
            pmf[-1] += full
            if certainty:  # the first token always kept
                pmf[1] += pmf[0]
                pmf[0] = 0.0
            p = np.minimum(np.cumsum(pmf[::-1])[::-1][1:], 1.0)
        elif kind == "srs":
            n[r] = int(rng.integers(1, ne + 1))
            continue
        else:
            x = rng.uniform(0.1, 1.0, ne)
            if certainty:
                x[rng.integers(ne)] = 50.0
            target = rng.uniform(0.2, 0.9) * ne
            if kind == "systematic_int":
                target = max(1.0, float(np.floor(target)))
            p = np.asarray(nat.inclusion_probabilities(x, target))
        pi[r, m] = p
    y = rng.normal(0.0, 1.0, (n_rows, n_units, q)) * rng.choice([1.0, 100.0])
    if proportional:  # y = c * pi (per component)
        pis = pi if kind != "srs" else np.where(mask, 1.0, 0.0)
        y = pis[..., None] * rng.normal(size=(n_rows, 1, q))
    y = np.where(mask[..., None], y, np.nan)
    return Drawn(kind, mask, None if kind == "srs" else pi, n if kind == "srs" else None, y)


def _scale(d_np: Any, y: np.ndarray) -> np.ndarray:
    """(sum_k |ycheck_k|)^2 per row and component: bounds every quadratic form of the test."""
    pi = np.asarray(d_np.inclusion_probabilities())
    yc = np.abs(np.nan_to_num(y)) / np.where(pi > 0, pi, 1)[..., None]
    return np.sum(yc, axis=-2) ** 2 + 1e-300


def _assert_close(a: np.ndarray, b: np.ndarray, scale: np.ndarray, rtol: float) -> None:
    np.testing.assert_array_less(np.abs(a - b), rtol * scale + 1e-300)


@given(case=drawn())
def test_fast_path_equals_dense_path(backend: Any, case: Drawn) -> None:
    from conftest import _BACKENDS

    d = case.build(backend)
    scale = _scale(case.build(_BACKENDS["numpy"]), case.y)
    y = backend.asarray(case.y)
    fast = backend.to_numpy(nat.design_variance(y, d, axis=1))
    dense = backend.to_numpy(nat.design_variance(y, d, axis=1, method="dense"))
    _assert_close(fast, dense, scale, 1e-9)
    assert np.all(fast >= -1e-12 * scale)
    cf = backend.to_numpy(nat.design_variance(y, d, axis=1, covariance=True))
    cd = backend.to_numpy(nat.design_variance(y, d, axis=1, covariance=True, method="dense"))
    smax = scale.max(-1)[:, None, None]
    _assert_close(cf, cd, np.broadcast_to(smax, cf.shape), 1e-9)
    np.testing.assert_allclose(np.diagonal(cf, axis1=1, axis2=2), fast, rtol=1e-9,
                               atol=1e-12 * smax.max())


@given(case=drawn(kinds=["srs", "systematic_int"], proportional=True))
def test_zero_variance_when_y_proportional_to_pi(backend: Any, case: Drawn) -> None:
    from conftest import _BACKENDS

    d = case.build(backend)
    assert d.has_fixed_size()
    scale = _scale(case.build(_BACKENDS["numpy"]), case.y)
    y = backend.asarray(case.y)
    for method in ("auto", "dense"):
        v = backend.to_numpy(nat.design_variance(y, d, axis=1, method=method))
        np.testing.assert_array_less(np.abs(v), 1e-10 * scale + 1e-300)


@given(case=drawn(kinds=["poisson", "srs", "prefix"]), seed=st.integers(0, 2**16))
def test_estimates_equal_double_sum_and_are_nonnegative(
    numpy_backend: Any, case: Drawn, seed: int
) -> None:
    bk = numpy_backend
    d = case.build(bk)
    s = np.asarray(d.draw(seed))
    y = np.where(s[..., None], np.nan_to_num(case.y), np.nan)
    p2 = np.asarray(d.joint_inclusion_probabilities())
    pi = np.asarray(d.inclusion_probabilities())
    both = s[:, :, None] & s[:, None, :]
    dchk = np.where(both, (p2 - pi[:, :, None] * pi[:, None, :]) / np.where(both, p2, 1), 0.0)
    a = np.where(s[..., None], np.nan_to_num(y) / np.where(s, pi, 1)[..., None], 0.0)
    ref = np.einsum("rkl,rkq,rlq->rq", dchk, a, a)
    if case.kind == "srs" and np.any((case.n == 1) & (case.mask.sum(-1) > 1)):
        import pytest

        with pytest.warns(nat.BiasedVarianceEstimateWarning):
            v = np.asarray(nat.variance_estimate(y, s, d, axis=1))
    else:
        v = np.asarray(nat.variance_estimate(y, s, d, axis=1))
    scale = np.sum(np.abs(a), axis=1) ** 2 + 1e-300
    _assert_close(v, ref, scale, 1e-9)
    assert np.all(v >= 0)  # sums of squares for these three designs
