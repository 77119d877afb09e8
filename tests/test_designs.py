r"""The four designs against their brute-force oracles, one test class per design.

Every class runs the same contract (:class:`_DesignContract`) over its own table of cases
(``tests/cases.py``: various N, ragged masks with non-contiguous eligibility and empty rows, batch
shapes (B,) and (B1, B2), certainty units, integer and non-integer sums for Systematic) on every
backend:

* exhaustive enumeration (N <= 10): the support of the design, enumerated in plain numpy
  (``tests/oracles.py``), gives pi and pi_kl equal to the methods' output to 1e-12;
* the invariants of first/second-order probabilities on the case table;
* outputs in the input's namespace, on its device, with the documented shapes and dtypes;
* same uniforms => identical samples on every backend; ``draw`` reproducible per rng kind;
* Monte Carlo: inclusion frequencies (single tokens and pairs) of ``draw`` within exact binomial
  bounds, family-wise false-alarm rate 1e-4 (Bonferroni), fixed seed.

Design-specific behaviour (constructors, cut laws, sizes) is tested in each class.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import oracles
import pytest
from cases import POISSON_CASES, PREFIX_CASES, SRS_CASES, SYSTEMATIC_CASES, PiCase, SRSCase

import nat_estimators as nat

ATOL = 1e-12
MC_REPS = 12_000
MC_ALPHA = 1e-4  # family-wise false-alarm rate of each Monte Carlo check

#: {row index: (samples (M, N) bool, probs (M,), ...)} — a design's enumerated sample space
Support = dict[tuple[int, ...], tuple[Any, ...]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames and metafunc.cls is not None:
        table = metafunc.cls.CASES
        metafunc.parametrize("case", table, ids=[c.id for c in table])


def _sizes_n(case: Any) -> np.ndarray:
    """Expected size per row from the case data (numpy)."""
    return case.clean_pi.sum(axis=-1)


class _DesignContract:
    """Checks shared by all designs; subclasses set ``CASES`` and implement ``support``."""

    CASES: ClassVar[list[Any]]

    def support(self, case: Any, design: Any, bk: Any) -> Support:
        """``{row index: (samples (M, N) bool, probs (M,))}`` enumerating the sample space."""
        raise NotImplementedError

    # ------------------------------------------------------------------ exactness
    def test_enumeration_matches_pi_and_pi2(self, backend: Any, case: Any) -> None:
        d = case.build(backend)
        pi = backend.to_numpy(d.inclusion_probabilities())
        pi2 = backend.to_numpy(d.joint_inclusion_probabilities())
        esize = backend.to_numpy(d.expected_size())
        for idx, (samples, probs, *_) in self.support(case, d, backend).items():
            mask = case.full_mask[idx]
            assert abs(probs.sum() - 1.0) <= ATOL
            assert not samples[:, ~mask].any(), "an ineligible position is in the support"
            epi, epi2 = oracles.moments(samples, probs)
            np.testing.assert_allclose(pi[idx], epi, rtol=0, atol=ATOL)
            np.testing.assert_allclose(pi2[idx], epi2, rtol=0, atol=ATOL)
            sizes = samples.sum(axis=1)
            assert esize[idx] == pytest.approx(probs @ sizes, abs=ATOL)
            live = sizes[probs > ATOL]
            if case.fixed_size:
                assert np.all(live == live[0]), f"row {idx}: sizes {set(live.tolist())}"
                assert live[0] == pytest.approx(esize[idx], abs=1e-9)
            # Σ_l π_kl = E[|S| I_k] for every design (= n π_k when the size is fixed)
            e_size_ik = (probs * sizes) @ samples.astype(float)
            np.testing.assert_allclose(pi2[idx].sum(axis=-1), e_size_ik, rtol=0, atol=1e-11)

    # ------------------------------------------------------------------ invariants
    def test_invariants(self, backend: Any, case: Any) -> None:
        d = case.build(backend)
        pi = backend.to_numpy(d.inclusion_probabilities())
        pi2 = backend.to_numpy(d.joint_inclusion_probabilities())
        mask = case.full_mask
        np.testing.assert_allclose(pi, case.clean_pi, rtol=0, atol=ATOL)
        assert np.all((pi >= 0) & (pi <= 1)) and not np.isnan(pi2).any()
        assert np.all(pi[~mask] == 0)
        np.testing.assert_array_equal(np.diagonal(pi2, axis1=-2, axis2=-1), pi)
        np.testing.assert_allclose(pi2, np.swapaxes(pi2, -1, -2), rtol=0, atol=ATOL)
        assert np.all(pi2 >= 0)
        assert np.all(pi2 <= np.minimum(pi[..., :, None], pi[..., None, :]) + ATOL)
        both = mask[..., :, None] & mask[..., None, :]
        assert np.all(pi2[~both] == 0)
        np.testing.assert_allclose(backend.to_numpy(d.expected_size()), pi.sum(-1), atol=ATOL)
        delta = pi2 - pi[..., :, None] * pi[..., None, :]
        if case.fixed_size:
            n = _sizes_n(case)
            np.testing.assert_allclose(pi2.sum(-1), n[..., None] * pi, rtol=0, atol=1e-11)
            np.testing.assert_allclose(delta.sum(-1), 0, atol=1e-11)
            assert d.has_fixed_size()
        # Δ is the covariance matrix of the indicators: positive semi-definite
        assert np.linalg.eigvalsh(delta).min() >= -1e-10
        with np.errstate(divide="ignore"):
            w = np.where(mask, 1 / np.where(mask, pi, 1), 0).max(-1)
        np.testing.assert_allclose(backend.to_numpy(d.max_weight()), w, rtol=1e-12)

    # ------------------------------------------------------------------ arrays
    def test_outputs_namespace_device_shape(self, backend: Any, case: Any) -> None:
        d = case.build(backend)
        n_units = case.full_mask.shape[-1]
        batch = case.batch_shape
        pi = d.inclusion_probabilities()
        backend.check_array(pi, (*batch, n_units))
        backend.check_array(d.joint_inclusion_probabilities(), (*batch, n_units, n_units))
        backend.check_array(d.expected_size(), batch)
        backend.check_array(d.max_weight(), batch)
        s = d.draw(0)
        backend.check_array(s, (*batch, n_units))
        assert s.dtype == backend.xp.bool
        backend.check_array(d.eligible, (*batch, n_units))
        assert d.batch_shape == batch and d.num_units == n_units
        assert pi.dtype == backend.xp.float64
        assert type(d).__name__ in repr(d)
        with pytest.raises(AttributeError):
            d.mask = d.mask  # frozen value

    def test_same_uniforms_same_sample_across_backends(
        self, backend: Any, numpy_backend: Any, case: Any
    ) -> None:
        d, d_np = case.build(backend), case.build(numpy_backend)
        assert d.uniform_shape == d_np.uniform_shape
        rng = np.random.default_rng(11)
        for _ in range(5):
            u = rng.random(d.uniform_shape)
            s = backend.to_numpy(d.sample(backend.asarray(u)))
            np.testing.assert_array_equal(s, d_np.sample(u))
            assert not s[~case.full_mask].any()

    def test_draw_reproducible(self, backend: Any, numpy_backend: Any, case: Any) -> None:
        d, d_np = case.build(backend), case.build(numpy_backend)
        # int seed: the same sample on every backend
        s = backend.to_numpy(d.draw(1234))
        np.testing.assert_array_equal(s, d_np.draw(1234))
        # numpy Generator: draw == sample of the generator's uniforms
        u = np.random.default_rng(5).random(d.uniform_shape)
        np.testing.assert_array_equal(
            backend.to_numpy(d.draw(np.random.default_rng(5))),
            backend.to_numpy(d.sample(backend.asarray(u))),
        )
        # torch.Generator: reproducible for the same state
        a = backend.to_numpy(d.draw(backend.torch_generator(99)))
        b = backend.to_numpy(d.draw(backend.torch_generator(99)))
        np.testing.assert_array_equal(a, b)

    # ------------------------------------------------------------------ Monte Carlo
    def test_monte_carlo_frequencies(self, backend: Any, case: Any) -> None:
        d = case.tile(backend, MC_REPS)
        s = backend.to_numpy(d.draw(np.random.default_rng(2024)))
        pi = case.clean_pi
        pi2 = backend.to_numpy(case.build(backend).joint_inclusion_probabilities())
        counts = s.sum(axis=0)
        rejected, info = oracles.binomial_reject(counts, MC_REPS, pi, MC_ALPHA)
        assert not rejected, info
        ind = s.astype(np.float64)
        pair_counts = np.einsum("r...k,r...l->...kl", ind, ind)
        iu = np.triu_indices(pi.shape[-1], k=1)
        rejected, info = oracles.binomial_reject(pair_counts[..., iu[0], iu[1]], MC_REPS,
                                                 pi2[..., iu[0], iu[1]], MC_ALPHA)
        assert not rejected, info
        if case.fixed_size:
            np.testing.assert_array_equal(s.sum(-1), np.broadcast_to(
                np.round(_sizes_n(case)).astype(int), s.shape[:-1]))


class _PiDesignContract(_DesignContract):
    """Designs parametrized by ``pi`` (Poisson, Systematic, Prefix): dtype follows ``pi``."""

    def test_float32_stays_float32(self, backend: Any, case: Any) -> None:
        d = case.build(backend, dtype="float32")
        f32 = backend.xp.float32
        assert d.inclusion_probabilities().dtype == f32
        assert d.joint_inclusion_probabilities().dtype == f32
        assert d.expected_size().dtype == f32
        s = backend.to_numpy(d.draw(3))
        assert not s[~case.full_mask].any()
        np.testing.assert_allclose(backend.to_numpy(d.joint_inclusion_probabilities()),
                                   backend.to_numpy(case.build(backend)
                                                    .joint_inclusion_probabilities()),
                                   atol=1e-6)


# ====================================================================== Poisson
class TestPoisson(_PiDesignContract):
    CASES: ClassVar[list[Any]] = POISSON_CASES

    def support(self, case: PiCase, design: Any, bk: Any) -> Support:
        return {idx: oracles.poisson_support(*case.row_params(idx)) for idx in case.rows()}

    def test_sample_rule(self, backend: Any, case: PiCase) -> None:
        d = case.build(backend)
        u = np.random.default_rng(0).random(d.uniform_shape)
        expect = (u < case.clean_pi) & case.full_mask
        np.testing.assert_array_equal(backend.to_numpy(d.sample(backend.asarray(u))), expect)

    def test_uniform_constructor(self, backend: Any) -> None:
        mask = np.array([[1, 0, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]], bool)
        d = nat.Poisson.from_fraction(0.25, mask=backend.asarray(mask))
        np.testing.assert_array_equal(backend.to_numpy(d.inclusion_probabilities()),
                                      np.where(mask, 0.25, 0.0))
        p = np.array([0.5, 1.0, 0.1])
        d = nat.Poisson.from_fraction(backend.asarray(p), mask=backend.asarray(mask))
        np.testing.assert_allclose(backend.to_numpy(d.expected_size()), p * mask.sum(-1))
        backend.check_array(d.inclusion_probabilities(), mask.shape)

    def test_proportional_constructor(self, backend: Any) -> None:
        x = np.array([[1.0, 2.0, 3.0, 100.0, np.nan], [1.0, 1.0, 1.0, 1.0, 4.0]])
        mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
        d = nat.Poisson.proportional(backend.asarray(x), 2, mask=backend.asarray(mask))
        pi = backend.to_numpy(d.inclusion_probabilities())
        np.testing.assert_allclose(pi, [[1 / 6, 2 / 6, 3 / 6, 1, 0], [0.25, 0.25, 0.25, 0.25, 1]],
                                   atol=1e-15)


# ====================================================================== SimpleRandom
class TestSimpleRandom(_DesignContract):
    CASES: ClassVar[list[Any]] = SRS_CASES

    def support(self, case: SRSCase, design: Any, bk: Any) -> Support:
        return {idx: oracles.srs_support(*case.row_params(idx)) for idx in case.rows()}

    def test_closed_form(self, backend: Any, case: SRSCase) -> None:
        d = case.build(backend)
        n, cnt = case.n_rows.astype(float), case.mask.sum(-1).astype(float)
        pi2 = backend.to_numpy(d.joint_inclusion_probabilities())
        off = n * (n - 1) / np.maximum(cnt * (cnt - 1), 1)
        both = case.mask[..., :, None] & case.mask[..., None, :]
        eye = np.eye(case.mask.shape[-1], dtype=bool)
        np.testing.assert_allclose(pi2[both & ~eye],
                                   np.broadcast_to(off[..., None, None], pi2.shape)[both & ~eye],
                                   rtol=1e-15)
        np.testing.assert_array_equal(backend.to_numpy(d.expected_size()), n)

    def test_subsets_equally_likely(self, backend: Any) -> None:
        """Every 2-subset of 6 tokens (3 eligible patterns) drawn with frequency 1/C(N_e, 2)."""
        mask = np.array([1, 1, 0, 1, 1, 1, 0], bool)
        reps = 15_000
        d = nat.SimpleRandom(2, mask=backend.asarray(np.broadcast_to(mask, (reps, 7))))
        s = backend.to_numpy(d.draw(77))
        codes = s.astype(np.int64) @ (1 << np.arange(7))
        elig = np.flatnonzero(mask)
        subsets = [(1 << i) | (1 << j) for a, i in enumerate(elig) for j in elig[a + 1:]]
        assert set(np.unique(codes).tolist()) <= set(subsets)
        counts = np.array([(codes == c).sum() for c in subsets])
        rejected, info = oracles.binomial_reject(counts, reps, np.full(10, 1 / 10), MC_ALPHA)
        assert not rejected, info

    def test_ties_in_u_still_give_n(self, backend: Any) -> None:
        """Equal uniforms (user-supplied or low precision) must not select more than n tokens."""
        mask = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 1]], bool)
        d = nat.SimpleRandom(backend.asarray(np.array([2, 3])), mask=backend.asarray(mask))
        for u in (np.zeros((2, 5)), np.full((2, 5), 0.5), np.array([[0.1, 0.1, 0.1, 0.9, 0.1],
                                                                    [0.3, 0.0, 0.3, 0.2, 0.3]])):
            s = backend.to_numpy(d.sample(backend.asarray(u)))
            np.testing.assert_array_equal(s.sum(-1), [2, 3])
            assert not s[~mask].any()

    def test_from_fraction(self, backend: Any) -> None:
        mask = np.zeros((3, 9), bool)
        mask[0, :8] = True
        mask[1, [0, 4]] = True
        d = nat.SimpleRandom.from_fraction(0.3, mask=backend.asarray(mask))
        np.testing.assert_array_equal(backend.to_numpy(d.expected_size()), [2, 1, 0])
        backend.check_array(d.draw(0), mask.shape)


# ====================================================================== Systematic
class TestSystematic(_PiDesignContract):
    CASES: ClassVar[list[Any]] = SYSTEMATIC_CASES

    def support(self, case: PiCase, design: Any, bk: Any) -> Support:
        rows = case.rows()
        mids = {idx: oracles.systematic_intervals(*case.row_params(idx))[0] for idx in rows}
        # evaluate the design's own `sample` at every interval midpoint, all rows at once
        width = max(len(m) for m in mids.values())
        found: dict[tuple[int, ...], list[np.ndarray]] = {idx: [] for idx in rows}
        for i in range(width):
            u = np.zeros(case.batch_shape)
            for idx in rows:
                u[idx] = mids[idx][min(i, len(mids[idx]) - 1)]
            s = bk.to_numpy(design.sample(bk.asarray(u)))
            for idx in rows:
                if i < len(mids[idx]):
                    found[idx].append(s[idx])
        out: Support = {}
        for idx in rows:
            evaluated = iter(found[idx])  # the design's samples, in midpoint order

            def sample_at(_u: float, evaluated: Any = evaluated) -> np.ndarray:
                return next(evaluated)

            out[idx] = oracles.systematic_support(*case.row_params(idx), sample_at=sample_at)
        return out

    def test_sample_follows_madow_rule(self, backend: Any, case: PiCase) -> None:
        """The package's selection equals the rule re-implemented from docs/theory/designs.md."""
        d = case.build(backend)
        for idx, (samples, _, rule) in self.support(case, d, backend).items():
            np.testing.assert_array_equal(samples, rule, err_msg=f"row {idx}")

    def test_sizes_floor_or_ceil(self, backend: Any, case: PiCase) -> None:
        d = case.build(backend)
        for idx, (samples, probs, _) in self.support(case, d, backend).items():
            n = case.clean_pi[idx].sum()
            sizes = samples.sum(axis=1)[probs > ATOL]
            lo, hi = math.floor(n + 1e-9), math.ceil(n - 1e-9)
            assert set(sizes.tolist()) <= {lo, hi}
            # P(|S| = ceil n) = frac(n): the size has mean n
            assert probs @ samples.sum(axis=1) == pytest.approx(n, abs=1e-12)
        assert d.has_fixed_size() == case.fixed_size

    def test_uniform_and_proportional_constructors(self, backend: Any) -> None:
        mask = np.array([[1, 1, 0, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0, 1, 0]], bool)
        d = nat.Systematic.from_fraction(0.5, mask=backend.asarray(mask))
        np.testing.assert_array_equal(backend.to_numpy(d.inclusion_probabilities()),
                                      np.where(mask, 0.5, 0.0))
        u = np.array([0.25, 0.75])
        s = backend.to_numpy(d.sample(backend.asarray(u)))
        # every other eligible token, starting with the first (u = 0.25) or second (u = 0.75)
        np.testing.assert_array_equal(s, [[1, 0, 0, 1, 0, 1, 0, 1], [0, 0, 1, 0, 0, 0, 1, 0]])
        x = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0]])
        d = nat.Systematic.proportional(backend.asarray(x), 3)
        pi = backend.to_numpy(d.inclusion_probabilities())
        assert pi[0, -1] == 1.0 and pi.sum() == pytest.approx(3, abs=1e-12)
        np.testing.assert_allclose(pi[0, :-1], 2 * x[0, :-1] / 28, rtol=1e-14)

    def test_zero_joint_probabilities(self, backend: Any) -> None:
        """Equal pi = 1/2: the sample is every other token, so adjacent tokens never co-occur."""
        d = nat.Systematic(backend.asarray(np.full(6, 0.5)))
        pi2 = backend.to_numpy(d.joint_inclusion_probabilities())
        k = np.arange(6)
        expect = np.where((k[:, None] - k[None, :]) % 2 == 0, 0.5, 0.0)
        np.testing.assert_array_equal(pi2, expect)


# ====================================================================== Prefix
class TestPrefix(_PiDesignContract):
    CASES: ClassVar[list[Any]] = PREFIX_CASES

    def support(self, case: PiCase, design: Any, bk: Any) -> Support:
        pmf = bk.to_numpy(design.cut_pmf())
        return {idx: oracles.prefix_support(pmf[idx], case.full_mask[idx]) for idx in case.rows()}

    def test_cut_pmf_matches_survival(self, backend: Any, case: PiCase) -> None:
        d = case.build(backend)
        pmf = backend.to_numpy(d.cut_pmf())
        backend.check_array(d.cut_pmf(), (*case.batch_shape, case.full_mask.shape[-1] + 1))
        for idx in case.rows():
            np.testing.assert_allclose(pmf[idx], oracles.prefix_pmf(*case.row_params(idx)),
                                       rtol=0, atol=ATOL)
        assert np.all(pmf >= -ATOL)
        np.testing.assert_allclose(pmf.sum(-1), 1.0, atol=ATOL)

    def test_sample_is_the_cut(self, backend: Any, case: PiCase) -> None:
        """u inside (pi_{j+1}, pi_j) keeps exactly the first j eligible tokens, for every j."""
        d = case.build(backend)
        n_units = case.full_mask.shape[-1]
        for j in range(n_units + 1):
            u = np.full(case.batch_shape, np.nan)
            expect = np.zeros(case.pi.shape, bool)
            for idx in case.rows():
                pi, mask = case.row_params(idx)
                surv = np.concatenate([[1.0], pi[mask], [0.0]])
                if j < surv.size - 1 and surv[j] > surv[j + 1]:
                    u[idx] = (surv[j] + surv[j + 1]) / 2
                    expect[idx][np.flatnonzero(mask)[:j]] = True
            if np.isnan(u).all():
                continue
            live = ~np.isnan(u)
            s = backend.to_numpy(d.sample(backend.asarray(np.where(live, u, 0.0))))
            np.testing.assert_array_equal(s[live], expect[live])
            np.testing.assert_array_equal(backend.to_numpy(d.cut_lengths(
                backend.asarray(s)))[live], j)

    def test_from_cut_pmf_round_trip(self, backend: Any, case: PiCase) -> None:
        d = case.build(backend)
        mask = None if case.mask is None else backend.asarray(case.mask)
        d2 = nat.Prefix.from_cut_pmf(d.cut_pmf(), mask=mask)
        np.testing.assert_allclose(backend.to_numpy(d2.inclusion_probabilities()), case.clean_pi,
                                   rtol=0, atol=ATOL)

    @pytest.mark.parametrize("keep,full_keep,min_keep", [
        (0.5, 0.05, 0.0), (0.3, 0.1, 0.1), (0.9, 0.5, 0.0), (1.0, 0.05, 0.2), (0.2, 0.2, 0.0),
        (1.0, 1.0, 0.0), (0.25, 0.01, 0.2),
    ])
    def test_from_fraction(self, backend: Any, keep: float, full_keep: float,
                         min_keep: float) -> None:
        mask = np.zeros((2, 3, 40), bool)
        # a 1-token row is only feasible without a minimum prefix (ceil(min_keep * 1) = 1 token)
        lengths = np.array([[40, 1 if min_keep == 0 else 10, 17], [0, 5, 33]])
        for idx in np.ndindex(2, 3):
            mask[idx][: lengths[idx]] = True
        mask[0, 0, [3, 7, 11]] = False  # non-contiguous eligibility
        d = nat.Prefix.from_fraction(keep, mask=backend.asarray(mask), full_keep=full_keep,
                                   min_keep=min_keep)
        pi = backend.to_numpy(d.inclusion_probabilities())
        cnt = mask.sum(-1)
        np.testing.assert_allclose(backend.to_numpy(d.expected_size()), keep * cnt, atol=1e-9)
        w = backend.to_numpy(d.max_weight())
        assert np.all(w <= 1 / full_keep * (1 + 1e-12))
        for idx in np.ndindex(2, 3):
            p = pi[idx][mask[idx]]
            assert np.all(np.diff(p) <= 0) and np.all(p > 0) and np.all(p <= 1)
            assert np.all(p[: math.floor(min_keep * cnt[idx] + 1e-9)] == 1)
        assert np.all(pi[~mask] == 0)


def test_every_case_table_is_used() -> None:
    """Guard: the case tables cover the shapes the issue asks for."""
    for table in (POISSON_CASES, SYSTEMATIC_CASES, PREFIX_CASES, SRS_CASES):
        shapes = {len(c.batch_shape) for c in table}
        assert shapes >= {0, 1, 2}
        assert any((~c.full_mask).any() for c in table)
        assert max(c.full_mask.shape[-1] for c in table) == 10
    assert any(not c.fixed_size for c in SYSTEMATIC_CASES)
    assert any(c.fixed_size for c in SYSTEMATIC_CASES)
    for table in (POISSON_CASES, SYSTEMATIC_CASES, PREFIX_CASES):
        assert any((c.clean_pi == 1).any() for c in table)


def test_rows_restricts_every_design(backend: Any) -> None:
    """Design.rows(index) is the same design on a subset of rows (probabilities and samples)."""
    mask = np.array([[1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], dtype=bool)
    m = backend.asarray(mask)
    designs = [nat.Poisson.from_fraction(0.4, mask=m), nat.SimpleRandom.from_fraction(0.5, mask=m),
               nat.Systematic.from_fraction(0.6, mask=m), nat.Prefix.from_fraction(0.5, mask=m)]
    for d in designs:
        sub = d.rows(slice(1, 3))
        assert type(sub) is type(d) and sub.batch_shape == (2,)
        np.testing.assert_array_equal(backend.to_numpy(sub.inclusion_probabilities()),
                                      backend.to_numpy(d.inclusion_probabilities())[1:3])
        np.testing.assert_array_equal(backend.to_numpy(sub.joint_inclusion_probabilities()),
                                      backend.to_numpy(d.joint_inclusion_probabilities())[1:3])
        u = nat.uniforms(0, d.uniform_shape, xp=d.xp, device=d.device)
        np.testing.assert_array_equal(backend.to_numpy(sub.sample(u[1:3, ...])),
                                      backend.to_numpy(d.sample(u))[1:3])
    with pytest.raises(ValueError, match="row axis"):
        nat.Poisson.from_fraction(0.5, mask=backend.asarray(mask[0])).rows(0)
