r"""Brute-force oracles in plain numpy, written from the definitions
(docs/theory/notation.md, docs/theory/designs.md) and independent of the package.

Each oracle works on ONE row: a float64 vector ``pi`` (or a size ``n``, or a cut pmf) and a boolean
``mask`` of eligible positions, and enumerates the design's whole sample space as a *support*: a
``(M, N)`` boolean matrix of samples and their ``(M,)`` probabilities.  :func:`moments` turns a
support into :math:`\pi_k = \sum_s p(s) I_k(s)` and :math:`\pi_{kl} = \sum_s p(s) I_k(s) I_l(s)`.

Nothing here calls the package, except that :func:`systematic_support` is handed the design's
``sample`` (the only way to enumerate the package's selection over ``u``); it is checked against
:func:`systematic_rule`, the selection rule re-implemented from docs/theory/designs.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "binomial_reject",
    "inclusion_probabilities_r",
    "moments",
    "poisson_support",
    "prefix_pmf",
    "prefix_support",
    "srs_support",
    "systematic_intervals",
    "systematic_rule",
    "systematic_support",
]


def _eligible(mask: np.ndarray | None, n_units: int) -> np.ndarray:
    if mask is None:
        return np.arange(n_units)
    return np.flatnonzero(np.asarray(mask, dtype=bool))


def _all_subsets(n: int) -> np.ndarray:
    """All 2^n subsets of range(n) as a (2^n, n) boolean matrix."""
    return np.array(list(itertools.product([False, True], repeat=n)), dtype=bool).reshape(2**n, n)


def _scatter(sub: np.ndarray, elig: np.ndarray, n_units: int) -> np.ndarray:
    full = np.zeros((sub.shape[0], n_units), dtype=bool)
    full[:, elig] = sub
    return full


def moments(samples: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""First- and second-order inclusion probabilities of a support."""
    ind = samples.astype(np.float64)
    pi = probs @ ind
    pi2 = ind.T @ (probs[:, None] * ind)
    return pi, pi2


def poisson_support(pi: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """All 2^N_e subsets of the eligible tokens, P(s) = prod pi^I (1 - pi)^(1 - I)."""
    pi = np.asarray(pi, dtype=np.float64)
    elig = _eligible(mask, pi.shape[-1])
    sub = _all_subsets(elig.size)
    p = pi[elig]
    probs = np.prod(np.where(sub, p, 1.0 - p), axis=1)
    return _scatter(sub, elig, pi.shape[-1]), probs


def srs_support(n: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All subsets of size n of the eligible tokens, each with probability 1/C(N_e, n)."""
    elig = _eligible(mask, len(mask))
    sub = _all_subsets(elig.size)
    sub = sub[sub.sum(axis=1) == n]
    probs = np.full(sub.shape[0], 1.0 / math.comb(elig.size, n))
    return _scatter(sub, elig, len(mask)), probs


def prefix_pmf(pi: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    r"""Cut-length law from the survival function: P(L = j) = pi_(j) - pi_(j+1), j = 0..N."""
    pi = np.asarray(pi, dtype=np.float64)
    elig = _eligible(mask, pi.shape[-1])
    surv = np.concatenate([[1.0], pi[elig], np.zeros(pi.shape[-1] - elig.size + 1)])
    return surv[:-1] - surv[1:]


def prefix_support(pmf: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The N + 1 prefixes: cut L = j keeps the first j eligible tokens, with probability pmf[j]."""
    pmf = np.asarray(pmf, dtype=np.float64)
    n_units = pmf.shape[-1] - 1
    elig = _eligible(mask, n_units)
    samples = np.zeros((n_units + 1, n_units), dtype=bool)
    for j in range(n_units + 1):
        samples[j, elig[:j]] = True
    return samples, pmf


def systematic_rule(pi: np.ndarray, mask: np.ndarray | None, u: float) -> np.ndarray:
    r"""Madow's rule, literally: k selected iff V_{k-1} < u + j <= V_k for some integer j."""
    pi = np.asarray(pi, dtype=np.float64)
    elig = _eligible(mask, pi.shape[-1])
    v = np.concatenate([[0.0], np.cumsum(pi[elig])])
    out = np.zeros(pi.shape[-1], dtype=bool)
    for i, k in enumerate(elig):
        for j in range(math.ceil(v[-1]) + 2):
            if v[i] < u + j <= v[i + 1]:
                out[k] = True
    return out


def systematic_intervals(
    pi: np.ndarray, mask: np.ndarray | None, tol: float = 1e-12
) -> tuple[np.ndarray, np.ndarray]:
    r"""Midpoints and lengths of the u-intervals between breakpoints {0, 1} ∪ {V_k mod 1}.

    Breakpoints closer than ``tol`` are merged (a sliver of length < tol changes no probability
    by more than tol, and its midpoint would sit within rounding error of a breakpoint).
    """
    pi = np.asarray(pi, dtype=np.float64)
    elig = _eligible(mask, pi.shape[-1])
    v = np.cumsum(pi[elig])
    pts = np.sort(np.concatenate([[0.0, 1.0], np.mod(v, 1.0)]))
    keep = [pts[0]]
    for p in pts[1:]:
        if p - keep[-1] > tol:
            keep.append(p)
    keep[-1] = 1.0
    b = np.array(keep)
    return (b[:-1] + b[1:]) / 2, np.diff(b)


def systematic_support(
    pi: np.ndarray, mask: np.ndarray | None, sample_at: Callable[[float], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Support of systematic sampling by enumerating the u-intervals.

    Returns ``(samples, probs, rule_samples)``: ``samples[i] = sample_at(mid_i)`` (the package's
    selection), ``probs[i]`` the interval length, ``rule_samples[i]`` :func:`systematic_rule`
    at the same midpoint.
    """
    mids, lengths = systematic_intervals(pi, mask)
    samples = np.stack([np.asarray(sample_at(float(m)), dtype=bool) for m in mids])
    rule = np.stack([systematic_rule(pi, mask, float(m)) for m in mids])
    return samples, lengths, rule


def inclusion_probabilities_r(x: np.ndarray, n: float) -> np.ndarray:
    r"""R's ``sampling::inclusionprobabilities`` loop: scale to n, cap at 1, repeat.

    Only for feasible input (n <= number of positive sizes).
    """
    x = np.asarray(x, dtype=np.float64)
    pik = n * x / x.sum()
    cert = np.zeros(x.shape, dtype=bool)
    for _ in range(x.size + 1):
        newc = ~cert & (pik >= 1)
        if not newc.any():
            break
        cert |= newc
        rest = ~cert & (x > 0)
        pik = np.where(cert, 1.0, pik)
        if rest.any():
            pik = np.where(rest, (n - cert.sum()) * x / x[rest].sum(), pik)
    return pik


def binomial_reject(
    counts: np.ndarray, reps: int, p: np.ndarray, alpha: float
) -> tuple[bool, dict[str, Any]]:
    r"""Exact two-sided binomial tests of ``counts ~ Bin(reps, p)``, Bonferroni over the cells.

    Cells with p in {0, 1} must match exactly (any miss rejects).  The other m cells are tested at
    level alpha/m each, so the family-wise false-alarm rate is at most ``alpha``.  Returns
    ``(rejected, details)``.
    """
    counts = np.asarray(counts, dtype=np.int64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    degenerate = (p <= 0) | (p >= 1)
    bad_degenerate = degenerate & (counts != np.round(p * reps))
    pc, cc = p[~degenerate], counts[~degenerate]
    m = max(int(pc.size), 1)
    pvals = np.minimum(1.0, 2 * np.minimum(stats.binom.cdf(cc, reps, pc),
                                           stats.binom.sf(cc - 1, reps, pc)))
    worst = float(pvals.min()) if pvals.size else 1.0
    rejected = bool(bad_degenerate.any()) or worst < alpha / m
    return rejected, {"min_p": worst, "threshold": alpha / m, "cells": int(pc.size),
                      "degenerate_misses": int(bad_degenerate.sum())}
