r"""Monte Carlo checks of ``draw`` and their negative controls.

The check (``oracles.binomial_reject``): with a fixed seed, ``reps`` independent draws, and for
every token (or pair) an exact two-sided binomial test of its inclusion count against
:math:`\pi_k` (or :math:`\pi_{kl}`); Bonferroni over the tested cells, so the family-wise
false-alarm rate of one check is at most ``ALPHA = 1e-4``.  Cells with probability 0 or 1 must match
exactly.  (``tests/test_designs.py`` runs the same check on every case of every design.)

A check that can never fail proves nothing, hence the negative controls: the same check, at the
same level and sample size, must REJECT frequencies tested against wrong probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import oracles

import nat_estimators as nat

ALPHA = 1e-4
REPS = 20_000

PI = np.array([0.9, 0.5, 0.3, 0.2, 0.75, 0.6, 0.45, 0.3])  # sum 4.0: Systematic has fixed size


def _tiled(bk: Any, cls: Any, pi: np.ndarray = PI, reps: int = REPS) -> Any:
    return cls(bk.asarray(np.broadcast_to(pi, (reps, pi.size))))


def _counts(bk: Any, design: Any, rng: Any) -> np.ndarray:
    """Inclusion counts of every token over the design's (tiled) rows."""
    return bk.to_numpy(design.draw(rng)).sum(axis=0)


def test_frequencies_match_pi_for_every_rng_kind(backend: Any) -> None:
    """Positive control for each source of randomness (seed, numpy and torch generators)."""
    pmf = np.array([0.05, 0.1, 0.05, 0.2, 0.1, 0.1, 0.1, 0.1, 0.2])
    surv = np.cumsum(pmf[::-1])[::-1][1:]
    designs = {
        "Poisson": (_tiled(backend, nat.Poisson), PI),
        "Systematic": (_tiled(backend, nat.Systematic), PI),
        "Prefix": (_tiled(backend, nat.Prefix, surv), surv),
        "SimpleRandom": (nat.SimpleRandom(3, mask=backend.asarray(np.ones((REPS, 8), bool))),
                         np.full(8, 3 / 8)),
    }
    for name, (d, pi) in designs.items():
        for rng in (123, np.random.default_rng(123), backend.torch_generator(123)):
            rejected, info = oracles.binomial_reject(_counts(backend, d, rng), REPS, pi, ALPHA)
            assert not rejected, (name, type(rng).__name__, info)


def test_negative_control_wrong_first_order(backend: Any) -> None:
    """Poisson(pi) frequencies tested against pi**0.8 (and one perturbed token) are rejected."""
    counts = _counts(backend, _tiled(backend, nat.Poisson), 7)
    assert not oracles.binomial_reject(counts, REPS, PI, ALPHA)[0]
    rejected, info = oracles.binomial_reject(counts, REPS, PI**0.8, ALPHA)
    assert rejected, info
    wrong = PI.copy()
    wrong[2] += 0.03  # a single token off by 0.03
    rejected, info = oracles.binomial_reject(counts, REPS, wrong, ALPHA)
    assert rejected, info


def test_negative_control_perturbed_design(backend: Any) -> None:
    """Frequencies of a design with a perturbed pi are rejected against the claimed pi."""
    perturbed = PI.copy()
    perturbed[[1, 5]] += [0.04, -0.04]  # same total, two tokens off
    for cls in (nat.Poisson, nat.Systematic):
        counts = _counts(backend, _tiled(backend, cls, perturbed), 11)
        rejected, info = oracles.binomial_reject(counts, REPS, PI, ALPHA)
        assert rejected, (cls.__name__, info)


def test_negative_control_wrong_second_order(backend: Any) -> None:
    """Systematic pair frequencies match its own pi_kl but not Poisson's pi_k pi_l."""
    d = _tiled(backend, nat.Systematic)
    s = backend.to_numpy(d.draw(5)).astype(np.float64)
    pairs = s.T @ s
    iu = np.triu_indices(PI.size, k=1)
    pi2 = backend.to_numpy(nat.Systematic(backend.asarray(PI)).joint_inclusion_probabilities())
    rejected, info = oracles.binomial_reject(pairs[iu], REPS, pi2[iu], ALPHA)
    assert not rejected, info
    rejected, info = oracles.binomial_reject(pairs[iu], REPS, np.outer(PI, PI)[iu], ALPHA)
    assert rejected, info


def test_negative_control_degenerate_cells() -> None:
    """Probability-0 cells (ineligible tokens) and probability-1 cells must match exactly."""
    assert oracles.binomial_reject(np.array([0, 100]), 100, np.array([0.0, 1.0]), ALPHA)[0] is False
    assert oracles.binomial_reject(np.array([1, 100]), 100, np.array([0.0, 1.0]), ALPHA)[0] is True
    assert oracles.binomial_reject(np.array([0, 99]), 100, np.array([0.0, 1.0]), ALPHA)[0] is True


def test_false_alarm_rate_is_controlled() -> None:
    """The check itself: on exact binomial data it rejects about ALPHA of the time, at most.

    (Pure numpy: 2,000 families of 50 cells at level 0.05 -> expect <= 5% rejections.)
    """
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 50)
    rejections = sum(oracles.binomial_reject(rng.binomial(500, p), 500, p, 0.05)[0]
                     for _ in range(2000))
    assert rejections / 2000 <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 2000)
