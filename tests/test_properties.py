r"""Hypothesis invariants of the designs and of ``inclusion_probabilities`` on random valid input.

For every design, on random batches (shapes (), (B,), (B1, B2); N <= 10; random ragged masks,
empty rows included; certainty units and tiny probabilities):

* :math:`0 \le \pi_k \le 1`, :math:`\pi_{kk} = \pi_k`, :math:`\pi_{kl} = \pi_{lk}`,
  :math:`0 \le \pi_{kl} \le \min(\pi_k, \pi_l)`, zeros at ineligible positions;
* :math:`\sum_k \pi_k` = ``expected_size()``;
* :math:`\sum_l \pi_{kl} = E[|S| I_k]`, which is :math:`n \pi_k` and gives
  :math:`\sum_l \Delta_{kl} = 0` for fixed-size designs (SimpleRandom, Systematic with an integer
  sum); for the random-size designs it is computed independently (Poisson, Prefix) or bracketed by
  :math:`\lfloor n \rfloor \pi_k` and :math:`\lceil n \rceil \pi_k` (Systematic);
* :math:`\Delta` is positive semi-definite (a covariance matrix);
* Systematic's :math:`\pi_{kl}` equals the enumeration of Madow's rule over the u-intervals.

The profile (``tests/conftest.py``) keeps 40 derandomized examples per test and no deadline.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import oracles
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nat_estimators as nat

BATCH_SHAPES = st.sampled_from([(), (1,), (3,), (2, 2)])
PROBS = st.one_of(st.just(1.0), st.floats(1e-6, 1.0), st.floats(0.05, 0.95))


@st.composite
def masks(draw: Any, nonempty: bool = False) -> np.ndarray:
    batch = draw(BATCH_SHAPES)
    n_units = draw(st.integers(1, 10))
    mask = draw(hnp.arrays(np.bool_, (*batch, n_units)))
    if nonempty:
        mask[..., draw(st.integers(0, n_units - 1))] = True
    return mask


@st.composite
def pi_and_mask(draw: Any) -> tuple[np.ndarray, np.ndarray]:
    mask = draw(masks())
    pi = draw(hnp.arrays(np.float64, mask.shape, elements=PROBS))
    return np.where(mask, pi, np.nan), mask


def _rows(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    return list(np.ndindex(*shape))


def check_joint(bk: Any, d: Any, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The invariants shared by every design; returns numpy (pi, pi2)."""
    pi = bk.to_numpy(d.inclusion_probabilities())
    pi2 = bk.to_numpy(d.joint_inclusion_probabilities())
    assert not np.isnan(pi).any() and not np.isnan(pi2).any()
    assert np.all((pi >= 0) & (pi <= 1))
    assert np.all(pi[~mask] == 0) and np.all(pi[mask] > 0)
    np.testing.assert_array_equal(np.diagonal(pi2, axis1=-2, axis2=-1), pi)
    np.testing.assert_allclose(pi2, np.swapaxes(pi2, -1, -2), rtol=0, atol=1e-12)
    assert np.all(pi2 >= 0)
    assert np.all(pi2 <= np.minimum(pi[..., :, None], pi[..., None, :]) + 1e-12)
    both = mask[..., :, None] & mask[..., None, :]
    assert np.all(pi2[~both] == 0)
    np.testing.assert_allclose(bk.to_numpy(d.expected_size()), pi.sum(-1), rtol=0, atol=1e-12)
    delta = pi2 - pi[..., :, None] * pi[..., None, :]
    assert np.linalg.eigvalsh(delta).min() >= -1e-9
    return pi, pi2


def check_fixed_size(pi: np.ndarray, pi2: np.ndarray, n: np.ndarray) -> None:
    np.testing.assert_allclose(pi2.sum(-1), n[..., None] * pi, rtol=0, atol=1e-10)
    delta = pi2 - pi[..., :, None] * pi[..., None, :]
    np.testing.assert_allclose(delta.sum(-1), 0, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------- Poisson
@given(data=pi_and_mask(), u_seed=st.integers(0, 2**32 - 1))
def test_poisson(backend: Any, data: tuple[np.ndarray, np.ndarray], u_seed: int) -> None:
    pi_in, mask = data
    d = nat.Poisson(backend.asarray(pi_in), mask=backend.asarray(mask))
    pi, pi2 = check_joint(backend, d, mask)
    # E[|S| I_k] = π_k (1 + Σ_{l≠k} π_l) for independent indicators
    np.testing.assert_allclose(pi2.sum(-1), pi * (1 + pi.sum(-1, keepdims=True) - pi),
                               rtol=0, atol=1e-12)
    u = np.random.default_rng(u_seed).random(d.uniform_shape)
    s = backend.to_numpy(d.sample(backend.asarray(u)))
    np.testing.assert_array_equal(s, mask & (u < np.nan_to_num(pi_in)))


# ---------------------------------------------------------------------------- SimpleRandom
@st.composite
def srs_input(draw: Any) -> tuple[np.ndarray, np.ndarray]:
    mask = draw(masks())
    cnt = mask.sum(-1)
    n = np.zeros(cnt.shape, dtype=np.int64)
    for idx in _rows(cnt.shape):
        if cnt[idx] > 0:
            n[idx] = draw(st.integers(1, int(cnt[idx])))
    return n, mask


@given(data=srs_input(), u_seed=st.integers(0, 2**32 - 1))
def test_simple_random(backend: Any, data: tuple[np.ndarray, np.ndarray], u_seed: int) -> None:
    n, mask = data
    d = nat.SimpleRandom(backend.asarray(n), mask=backend.asarray(mask))
    pi, pi2 = check_joint(backend, d, mask)
    check_fixed_size(pi, pi2, n.astype(float))
    np.testing.assert_allclose(pi, np.where(mask, (n / np.maximum(mask.sum(-1), 1))[..., None], 0),
                               rtol=1e-15)
    u = np.random.default_rng(u_seed).random(d.uniform_shape)
    s = backend.to_numpy(d.sample(backend.asarray(u)))
    np.testing.assert_array_equal(s.sum(-1), n)
    assert not s[~mask].any()
    # the kept tokens are those with the n smallest uniforms among the eligible
    for idx in _rows(n.shape):
        if n[idx]:
            keys = np.where(mask[idx], u[idx], np.inf)
            assert keys[s[idx]].max() < keys[~s[idx] & mask[idx]].min(initial=np.inf)


# ---------------------------------------------------------------------------- Systematic
@st.composite
def systematic_input(draw: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """pi from random sizes with certainty capping; integer or non-integer row sums."""
    mask = draw(masks())
    integer = draw(st.booleans())
    pi = np.full(mask.shape, np.nan)
    for idx in _rows(mask.shape[:-1]):
        m = mask[idx]
        cnt = int(m.sum())
        if cnt == 0:
            continue
        x = draw(hnp.arrays(np.float64, cnt, elements=st.one_of(
            st.floats(0.01, 1.0), st.floats(1.0, 100.0))))
        if integer:
            n = float(draw(st.integers(1, cnt)))
        else:
            n = draw(st.floats(0.05, float(cnt)))
        row = oracles.inclusion_probabilities_r(x, n)
        assume(np.all(row > 0))
        pi[idx][m] = np.minimum(row, 1.0)
    return pi, mask, integer


@given(data=systematic_input())
def test_systematic(backend: Any, data: tuple[np.ndarray, np.ndarray, bool]) -> None:
    pi_in, mask, integer = data
    d = nat.Systematic(backend.asarray(pi_in), mask=backend.asarray(mask))
    pi, pi2 = check_joint(backend, d, mask)
    n = pi.sum(-1)
    if integer:
        check_fixed_size(pi, pi2, np.round(n))
        assert d.has_fixed_size()
    else:
        lo = np.floor(n + 1e-9)[..., None] * pi - 1e-10
        hi = np.ceil(n - 1e-9)[..., None] * pi + 1e-10
        assert np.all((pi2.sum(-1) >= lo) & (pi2.sum(-1) <= hi))
    # exact: enumeration of Madow's rule (pure numpy) over the u-intervals of every row
    for idx in _rows(mask.shape[:-1]):
        row_pi, row_mask = np.nan_to_num(pi_in[idx]), mask[idx]
        mids, lengths = oracles.systematic_intervals(row_pi, row_mask)
        rule = np.stack([oracles.systematic_rule(row_pi, row_mask, float(u)) for u in mids])
        epi, epi2 = oracles.moments(rule, lengths)
        np.testing.assert_allclose(pi[idx], epi, rtol=0, atol=1e-11)
        np.testing.assert_allclose(pi2[idx], epi2, rtol=0, atol=1e-11)


# ---------------------------------------------------------------------------- Prefix
@st.composite
def prefix_input(draw: Any) -> tuple[np.ndarray, np.ndarray]:
    """A survival function from a random cut pmf with a full-keep atom (plateaus allowed)."""
    mask = draw(masks())
    pi = np.full(mask.shape, np.nan)
    for idx in _rows(mask.shape[:-1]):
        m = mask[idx]
        cnt = int(m.sum())
        inner = draw(st.lists(st.sampled_from([0.0, 0.0, 1e-6, 0.3, 1.0, 2.0]),
                              min_size=cnt, max_size=cnt))
        w = np.array([*inner, draw(st.floats(0.01, 2.0))])  # last: the full-keep mass > 0
        pmf = w / w.sum()
        surv = np.cumsum(pmf[::-1])[::-1][1:]
        pi[idx][m] = np.minimum(surv, 1.0)
    return pi, mask


@given(data=prefix_input(), u=st.floats(0.0, 1.0, exclude_max=True))
def test_prefix(backend: Any, data: tuple[np.ndarray, np.ndarray], u: float) -> None:
    pi_in, mask = data
    d = nat.Prefix(backend.asarray(pi_in), mask=backend.asarray(mask))
    pi, pi2 = check_joint(backend, d, mask)
    np.testing.assert_array_equal(pi2, np.minimum(pi[..., :, None], pi[..., None, :]))
    pmf = backend.to_numpy(d.cut_pmf())
    assert np.all(pmf >= -1e-15)
    np.testing.assert_allclose(pmf.sum(-1), 1, atol=1e-12)
    for idx in _rows(mask.shape[:-1]):
        samples, probs = oracles.prefix_support(oracles.prefix_pmf(pi[idx], mask[idx]),
                                                mask[idx])
        # E[|S| I_k] from the cut law
        np.testing.assert_allclose(pi2[idx].sum(-1),
                                   (probs * samples.sum(1)) @ samples.astype(float),
                                   rtol=0, atol=1e-12)
    s = backend.to_numpy(d.sample(backend.asarray(np.full(d.uniform_shape, u))))
    np.testing.assert_array_equal(s, mask & (u < np.nan_to_num(pi_in)))
    # the kept set is a prefix of the eligible tokens
    for idx in _rows(mask.shape[:-1]):
        kept = s[idx][mask[idx]]
        assert np.all(np.diff(kept.astype(int)) <= 0)


@given(
    mask=masks(),
    keep=st.floats(0.01, 1.0),
    full_keep=st.floats(0.001, 1.0),
    min_keep=st.one_of(st.just(0.0), st.floats(0.0, 0.9)),
)
def test_prefix_from_fraction(backend: Any, mask: np.ndarray, keep: float, full_keep: float,
                            min_keep: float) -> None:
    cnt = mask.sum(-1)
    m = np.floor(cnt * min_keep + 1e-9)
    need = np.where(cnt > 0, (m + full_keep * (cnt - m)) / np.maximum(cnt, 1), 0)
    mk = backend.asarray(mask)
    if np.any(keep < need - 1e-8):
        with pytest.raises(ValueError, match="keep"):
            nat.Prefix.from_fraction(keep, mask=mk, full_keep=full_keep, min_keep=min_keep)
        return
    assume(np.all(keep > need + 1e-8))
    d = nat.Prefix.from_fraction(keep, mask=mk, full_keep=full_keep, min_keep=min_keep)
    pi, _ = check_joint(backend, d, mask)
    np.testing.assert_allclose(backend.to_numpy(d.expected_size()), keep * cnt, rtol=0, atol=1e-9)
    assert np.all(backend.to_numpy(d.max_weight()) <= (1 / full_keep) * (1 + 1e-12))
    for idx in _rows(mask.shape[:-1]):
        p = pi[idx][mask[idx]]
        assert np.all(np.diff(p) <= 0)
        assert np.all(p >= full_keep * (1 - 1e-12))
        assert np.all(p[: int(m[idx])] == 1)


# ---------------------------------------------------------------------------- sizes -> pi
@st.composite
def sizes_input(draw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask = draw(masks(nonempty=True))
    x = draw(hnp.arrays(np.float64, mask.shape, elements=st.one_of(
        st.just(0.0), st.floats(1e-3, 1.0), st.floats(1.0, 1e4))))
    # at least one positive size per row
    first = np.argmax(mask, axis=-1)[..., None]
    np.put_along_axis(x, first, np.maximum(np.take_along_axis(x, first, -1), 0.5), -1)
    x = np.where(mask, x, np.nan)
    npos = (np.nan_to_num(x) > 0).sum(-1)
    frac = draw(hnp.arrays(np.float64, npos.shape, elements=st.floats(0.01, 1.0)))
    n = np.where(draw(st.booleans()), np.maximum(np.round(frac * npos), 1), frac * npos)
    return x, mask, n


@given(data=sizes_input())
def test_inclusion_probabilities(backend: Any, data: tuple[np.ndarray, ...]) -> None:
    x, mask, n = data
    pi = backend.to_numpy(nat.inclusion_probabilities(
        backend.asarray(x), backend.asarray(n), mask=backend.asarray(mask)))
    assert not np.isnan(pi).any()
    assert np.all((pi >= 0) & (pi <= 1)) and np.all(pi[~mask] == 0)
    np.testing.assert_allclose(pi.sum(-1), n, rtol=1e-12, atol=1e-12)
    xs = np.nan_to_num(x)
    for idx in _rows(n.shape):
        row, xr = pi[idx][mask[idx]], xs[idx][mask[idx]]
        free = (row < 1) & (xr > 0)
        # π = min(1, c x): a common c on the uncapped units, c x >= 1 on the capped ones
        if free.any():
            c = row[free] / xr[free]
            np.testing.assert_allclose(c, c.mean(), rtol=1e-9)
            np.testing.assert_allclose(row, np.minimum(1, c.mean() * xr), rtol=1e-9, atol=1e-12)
        assert np.all(row[xr == 0] == 0)
        np.testing.assert_allclose(row, oracles.inclusion_probabilities_r(xr, float(n[idx])),
                                   rtol=1e-9, atol=1e-12)


@given(x=hnp.arrays(np.float64, st.integers(1, 10), elements=st.floats(0.0, 1e3)))
def test_inclusion_probabilities_all_positive_at_full_size(backend: Any, x: np.ndarray) -> None:
    """n = number of positive sizes (the feasibility edge) keeps exactly those tokens."""
    npos = int((x > 0).sum())
    assume(npos > 0)
    if backend.name == "jax":  # XLA on CPU flushes subnormal sizes to zero
        assume(not np.any((x > 0) & (x < np.finfo(np.float64).tiny)))
    for n in (npos, npos * (1 + 1e-13)):
        pi = backend.to_numpy(nat.inclusion_probabilities(backend.asarray(x), n))
        np.testing.assert_array_equal(pi, (x > 0).astype(float))
    assert math.isclose(pi.sum(), npos)
