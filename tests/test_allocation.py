"""Variance-optimal allocations (nat_estimators.allocation): the variance identity, optimality
against a generic solver and brute force, the certificate, backends, constructors and bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize

import nat_estimators as nat
from nat_estimators.allocation import (
    optimal_inclusion,
    optimal_survival,
    prefix_profile,
)


def _survival_from(u: np.ndarray, floor: float, budget: float) -> np.ndarray:
    """A random feasible survival: non-increasing, in [floor, 1], sum = budget (or None)."""
    return _to_budget(floor + (1 - floor) * np.sort(u)[::-1], floor, budget)


def _to_budget(s: np.ndarray, floor: float, budget: float) -> np.ndarray:
    """Move a non-increasing ``s`` in [floor, 1] towards floor or 1 until it sums to budget."""
    tot = s.sum()
    if tot > budget:
        t = (tot - budget) / (tot - floor * len(s))
        s = s - t * (s - floor)
    else:
        t = (budget - tot) / (len(s) - tot)
        s = s + t * (1 - s)
    return s


# ---------------------------------------------------------------------------- the identity
@pytest.mark.parametrize("q", [1, 3])
def test_prefix_variance_identity(backend: Any, q: int) -> None:
    """design_variance(y, Prefix(S)) == sum_t (1/S_t - 1) d_t, on a ragged mask."""
    rng = np.random.default_rng(1)
    mask = rng.random((4, 9)) < 0.75
    mask[:, 0] = True
    y = rng.normal(size=(4, 9, q))
    S = np.zeros((4, 9))
    for i in range(4):
        k = int(mask[i].sum())
        S[i, mask[i]] = np.sort(rng.uniform(0.1, 1, k))[::-1]
    d = backend.to_numpy(prefix_profile(backend.asarray(y), mask=backend.asarray(mask)))
    des = nat.Prefix(backend.asarray(S), mask=backend.asarray(mask))
    v = backend.to_numpy(nat.design_variance(backend.asarray(np.where(mask[..., None], y, 0.0)),
                                             des, axis=1)).sum(-1)
    ratio = np.where(mask, 1 / np.where(mask, S, 1) - 1, 0.0)
    np.testing.assert_allclose(v, (ratio * d).sum(-1), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- optimality
def _slsqp_survival(d: np.ndarray, floor: float, budget: float, x0: np.ndarray) -> float:
    n = len(d)
    cons = [{"type": "eq", "fun": lambda s: s.sum() - budget}]
    cons += [{"type": "ineq", "fun": (lambda s, t=t: s[t] - s[t + 1])} for t in range(n - 1)]
    res = minimize(lambda s: float(((1 / s - 1) * d).sum()), x0, method="SLSQP",
                   bounds=[(floor, 1.0)] * n, constraints=cons,
                   options={"ftol": 1e-14, "maxiter": 500})
    # SLSQP ends with order violations ~1e-7, which a signed profile exploits: make it feasible
    s = _to_budget(np.minimum.accumulate(np.clip(res.x, floor, 1)), floor, budget)
    return float(((1 / s - 1) * d).sum())


@pytest.mark.parametrize("seed", range(8))
def test_optimal_survival_beats_generic_solver_and_brute_force(seed: int) -> None:
    """Statistic: optimum <= SLSQP from 5 starts and <= 2000 random feasible survivals (+1e-9
    relative).  Deterministic (seeded); a wrong pooling or budget solve fails it."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 8))
    y = rng.normal(size=(n, 2)) * rng.uniform(0.1, 3, size=(n, 1))
    d = prefix_profile(y[None], mask=np.ones((1, n), bool))[0]
    floor, keep = 0.05, float(rng.uniform(0.1, 0.9))
    a = optimal_survival(d, keep, full_keep=floor)
    a.check()
    best = float(a.variance)
    budget = keep * n
    assert abs(a.pi.sum() - budget) < 1e-9 and np.all(np.diff(a.pi) <= 1e-15)
    for _ in range(5):
        x0 = _survival_from(rng.random(n), floor, budget)
        assert best <= _slsqp_survival(d, floor, budget, x0) + 1e-7 * max(1.0, abs(best))
    for _ in range(2000):
        s = _survival_from(rng.random(n), floor, budget)
        assert best <= float(((1 / s - 1) * d).sum()) + 1e-9 * max(1.0, abs(best))
    assert best >= float(a.lower_bound) - 1e-9 * max(1.0, abs(best))


def test_optimal_survival_negative_control() -> None:
    """The same brute-force comparison rejects a non-optimal law (from_fraction's linear one)."""
    rng = np.random.default_rng(3)
    y = rng.normal(size=(1, 12)) * np.linspace(3, 0.2, 12)
    d = prefix_profile(y)
    lin = nat.Prefix.from_fraction(0.4, mask=np.ones((1, 12), bool), full_keep=0.05).pi
    a = optimal_survival(d, 0.4, full_keep=0.05)
    v_lin = float(((1 / lin - 1) * d).sum())
    assert v_lin > float(a.variance[0]) * 1.05  # the check above would fail on it
    assert v_lin >= float(a.lower_bound[0])


@pytest.mark.parametrize("seed", range(6))
def test_optimal_inclusion_beats_generic_solver(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    m = rng.exponential(size=n) ** 3
    floor = [0.0, 0.02][seed % 2]
    keep = float(rng.uniform(max(floor, 0.1), 0.9))
    a = optimal_inclusion(m, keep, floor=floor)
    a.check()
    budget = keep * n
    cons = [{"type": "eq", "fun": lambda p: p.sum() - budget}]
    res = minimize(lambda p: float(((1 / p - 1) * m).sum()), np.full(n, keep), method="SLSQP",
                   bounds=[(max(floor, 1e-6), 1.0)] * n, constraints=cons,
                   options={"ftol": 1e-14, "maxiter": 500})
    assert float(a.variance) <= float(((1 / res.x - 1) * m).sum()) + 1e-9
    # Neyman: pi proportional to sqrt(m) where not at a bound
    free = (a.pi > floor + 1e-12) & (a.pi < 1 - 1e-12)
    if free.sum() > 1:
        r = a.pi[free] / np.sqrt(m[free])
        np.testing.assert_allclose(r, r[0], rtol=1e-10)


def test_floor_zero_matches_inclusion_probabilities_and_box_solver() -> None:
    rng = np.random.default_rng(0)
    m = rng.exponential(size=(3, 10)) ** 2
    a = optimal_inclusion(m, 0.4)
    np.testing.assert_allclose(a.pi, nat.inclusion_probabilities(np.sqrt(m), 4.0), atol=1e-12)
    b = optimal_inclusion(m, 0.4, floor=1e-9)
    np.testing.assert_allclose(a.pi, b.pi, atol=1e-7)
    np.testing.assert_allclose(a.multiplier, b.multiplier, rtol=1e-6)


@given(
    st.lists(st.floats(-3, 3), min_size=1, max_size=12),
    st.floats(0.05, 1.0),
    st.floats(0.0, 0.3),
)
def test_certificate_holds(values: list[float], keep: float, floor: float) -> None:
    """Invariant: for any vector profile, the optimum is feasible, non-increasing, meets the
    budget, and its certificate checks (gap, stationarity, signs of the multipliers)."""
    floor = min(floor, keep) if floor > 0 else 0.01
    y = np.array(values)[None, :]
    d = prefix_profile(y)
    a = optimal_survival(d, keep, full_keep=min(floor, keep))
    a.check()
    assert np.all(np.diff(a.pi[0]) <= 1e-15)
    assert np.all(a.pi >= min(floor, keep) - 1e-15) and np.all(a.pi <= 1)


def test_zero_profile_tail_takes_spare_budget() -> None:
    """Tokens with a zero profile cost nothing; when the budget exceeds what the others can take,
    they share it (the budget does not bind: lambda = 0)."""
    a = optimal_survival(np.array([1.0, 1.0, 0.0, 0.0]), 0.75, full_keep=0.1)
    np.testing.assert_allclose(a.pi, [1, 1, 0.5, 0.5])
    assert float(a.multiplier) == 0.0
    a.check()


def test_ragged_rows_match_per_row_solution(backend: Any) -> None:
    rng = np.random.default_rng(2)
    mask = rng.random((3, 2, 8)) < 0.7
    mask[..., 0] = True
    d = rng.exponential(size=mask.shape)
    d = np.where(mask, d, np.nan)
    a = optimal_survival(backend.asarray(d), 0.5, mask=backend.asarray(mask), full_keep=0.1)
    pi = backend.to_numpy(a.pi)
    for idx in np.ndindex(3, 2):
        r = optimal_survival(d[idx][mask[idx]], 0.5, full_keep=0.1)
        np.testing.assert_allclose(pi[idx][mask[idx]], r.pi, rtol=1e-12, atol=1e-14)
        assert np.all(pi[idx][~mask[idx]] == 0)
    a.check()
    p = optimal_inclusion(backend.asarray(np.where(mask, d, 0.0)), 0.5,
                          mask=backend.asarray(mask), floor=0.05)
    p.check()
    np.testing.assert_allclose(backend.to_numpy(p.pi).sum(-1), 0.5 * mask.sum(-1), rtol=1e-12)


def test_constructors(backend: Any) -> None:
    mask = backend.asarray(np.array([[1, 1, 0, 1, 1], [1, 1, 1, 1, 0]], bool))
    prof = backend.asarray(np.array([[4.0, 1.0, np.nan, 1.0, 0.25], [1.0, 2.0, 3.0, 0.5, 9.0]]))
    d = nat.Prefix.optimal(prof, 0.5, mask=mask, full_keep=0.1)
    assert isinstance(d, nat.Prefix)
    np.testing.assert_allclose(backend.to_numpy(d.expected_size()), [2.0, 2.0], rtol=1e-12)
    m2 = backend.asarray(np.array([[1.0, 1.0, 0.0, 4.0, 400.0], [1.0, 2.0, 3.0, 4.0, 0.0]]))
    for cls in (nat.Poisson, nat.Systematic):
        e = cls.optimal(m2, 0.5, mask=mask)
        assert isinstance(e, cls)
        np.testing.assert_allclose(backend.to_numpy(e.inclusion_probabilities())[0],
                                   [0.25, 0.25, 0, 0.5, 1.0], rtol=1e-12)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("call", "match"), [
    (lambda: optimal_survival(np.array([1.0, np.nan]), 0.5), "NaN"),
    (lambda: optimal_survival(np.array([1.0, -2.0]), 0.5), "negative tail sum"),
    (lambda: optimal_survival(np.array([1.0, 1.0]), 0.04, full_keep=0.05), "below the full_keep"),
    (lambda: optimal_survival(np.array([1.0, 1.0]), 1.5), "keep"),
    (lambda: optimal_survival(np.array([1, 2]), 0.5), "floating"),
    (lambda: optimal_inclusion(np.array([1.0, -1.0]), 0.5), "negative"),
    (lambda: optimal_inclusion(np.array([1.0, np.inf]), 0.5), "NaN or Inf"),
    (lambda: optimal_inclusion(np.array([1.0, 0.0]), 0.5), "floor > 0"),
    (lambda: optimal_inclusion(np.array([1.0, 1.0]), 0.1, floor=0.2), "below the floor"),
    (lambda: nat.Prefix.optimal(np.array([1.0, -2.0]), 0.5), "negative tail sum"),
    (lambda: nat.Poisson.optimal(np.array([1.0, -2.0]), 0.5), "negative"),
    (lambda: nat.Systematic.optimal(np.array([np.nan, 2.0]), 0.5), "NaN"),
])
def test_bad_input(call: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_shared_budget(backend: Any) -> None:
    """One budget for the batch: meets the total, certificate holds, never worse than per-row
    budgets (which are feasible for it), and Poisson's equals the flattened batch."""
    rng = np.random.default_rng(5)
    mask = rng.random((4, 9)) < 0.8
    mask[:, 0] = True
    y = rng.normal(size=(4, 9, 2)) * rng.uniform(0.1, 4, size=(4, 1, 1))
    d = prefix_profile(np.where(mask[..., None], y, 0.0), mask=mask)
    bd, bm = backend.asarray(d), backend.asarray(mask)
    row = optimal_survival(bd, 0.4, mask=bm, full_keep=0.05)
    sh = optimal_survival(bd, 0.4, mask=bm, full_keep=0.05, shared=True)
    sh.check()
    pi = backend.to_numpy(sh.pi)
    assert abs(pi.sum() - 0.4 * mask.sum()) < 1e-9
    assert float(backend.to_numpy(sh.variance)[0]) <= backend.to_numpy(row.variance).sum() + 1e-9
    des = nat.Prefix.optimal(bd, 0.4, mask=bm, full_keep=0.05, shared=True)
    np.testing.assert_allclose(backend.to_numpy(des.inclusion_probabilities()), pi)
    m = np.where(mask, rng.exponential(size=mask.shape) ** 2 + 1e-3, 0.0)
    p = optimal_inclusion(backend.asarray(m), 0.4, mask=bm, shared=True)
    p.check()
    flat = optimal_inclusion(m[mask][None, :], 0.4)
    np.testing.assert_allclose(backend.to_numpy(p.pi)[mask], flat.pi[0], rtol=1e-12)


def test_results_stay_on_the_input_device(device_backend: Any) -> None:
    """Every array of the allocation lives on the profile's device (no silent device moves)."""
    from nat_estimators._compat import device_of

    bk = device_backend
    mask = bk.asarray(np.array([[1, 1, 0, 1], [1, 1, 1, 1]], bool))
    prof = bk.asarray(np.array([[3.0, 1.0, 0.0, 2.0], [1.0, 2.0, 0.5, 0.5]]))
    for a in (optimal_survival(prof, 0.5, mask=mask, full_keep=0.1),
              optimal_inclusion(prof, 0.5, mask=mask, floor=0.1),
              optimal_survival(prof, 0.5, mask=mask, full_keep=0.1, shared=True)):
        for f in ("pi", "multiplier", "pooled", "variance", "gap", "order_multipliers"):
            assert device_of(getattr(a, f)) == device_of(prof), f
        a.check()
    d = nat.Prefix.optimal(prof, 0.5, mask=mask, full_keep=0.1)
    assert device_of(d.pi) == device_of(prof)


# ------------------------------------------------------- constructors' certificate-free path
@pytest.mark.parametrize("shared", [False, True])
def test_constructors_equal_the_certified_allocation(backend: Any, shared: bool) -> None:
    """The design constructors skip the certificate and re-validation; their pi is the certified
    allocation's, and it passes the validating constructor (non-increasing, in (0, 1])."""
    rng = np.random.default_rng(11)
    mask = rng.random((5, 40)) < 0.7
    mask[:, 0] = True
    prof = np.where(mask, rng.lognormal(0, 2, size=mask.shape), 0.0)
    bp, bm = backend.asarray(prof), backend.asarray(mask)
    a = optimal_survival(bp, 0.3, mask=bm, full_keep=0.02, shared=shared)
    a.check()
    d = nat.Prefix.optimal(bp, 0.3, mask=bm, full_keep=0.02, shared=shared)
    np.testing.assert_array_equal(backend.to_numpy(d.inclusion_probabilities()),
                                  backend.to_numpy(a.pi))
    nat.Prefix(d.pi, mask=d.mask)  # the validating path accepts it
    for floor in (0.0, 0.01):
        b = optimal_inclusion(bp + 1e-3, 0.3, mask=bm, floor=floor, shared=shared)
        b.check()
        for cls in (nat.Poisson, nat.Systematic):
            e = cls.optimal(bp + 1e-3, 0.3, mask=bm, floor=floor, shared=shared)
            np.testing.assert_array_equal(backend.to_numpy(e.inclusion_probabilities()),
                                          backend.to_numpy(b.pi))
            cls(e.pi, mask=e.mask)


def test_optimal_pi_underflow_is_an_error() -> None:
    """A second moment so small that 1/pi = 1/(c sqrt(m)) overflows (an infinite weight) is
    refused with floor=0, and fine with a floor."""
    m = np.array([5e-324, 1e300, 1e300, 1e300, 1e300])
    for call in (lambda: optimal_inclusion(m, 0.5), lambda: nat.Poisson.optimal(m, 0.5)):
        with pytest.raises(ValueError, match="overflows"):
            call()
    d = nat.Poisson.optimal(m, 0.5, floor=0.01)
    assert float(d.inclusion_probabilities()[0]) == pytest.approx(0.01)


@pytest.mark.parametrize("round_", [1, 3])
def test_bisection_rounds_reach_the_same_certified_optimum(monkeypatch: Any, round_: int) -> None:
    """The box solver bisects in rounds and stops once the exact step verifies the active set;
    on rows with a huge dynamic range and ties at the box edges, shorter rounds (more
    verifications, more rounds) give the same allocation and every one passes its certificate."""
    import nat_estimators.allocation as alloc

    rng = np.random.default_rng(3)
    m = 10.0 ** rng.uniform(-12, 12, size=(6, 300))
    m[:, :50] = 1.0  # a block of ties
    m[0, :] = 1.0  # all ties
    ref = optimal_inclusion(m, 0.2, floor=1e-4)
    ref.check()
    monkeypatch.setattr(alloc, "_BISECT_ROUND", round_)
    a = optimal_inclusion(m, 0.2, floor=1e-4)
    a.check()
    np.testing.assert_allclose(a.pi, ref.pi, rtol=1e-9, atol=1e-12)
    s = optimal_survival(np.sort(m, axis=-1)[:, ::-1].copy(), 0.2, full_keep=1e-4)
    s.check()
