r"""Agreement with R's ``sampling`` package (values in ``tests/reference/r_designs.json``).

The JSON is produced by ``tests/reference/generate_r_references.R`` (see the README there); these
tests only read it, they never need R.  Doubles were written with ``%.17g`` and read back exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import oracles
import pytest

import nat_estimators as nat

REF = json.loads((Path(__file__).parent / "reference" / "r_designs.json").read_text())
RTOL = 1e-12


def _ids(prefix: str, cases: list[Any]) -> list[str]:
    return [f"{prefix}{i}" for i in range(len(cases))]


@pytest.mark.parametrize("case", REF["inclusionprobabilities"],
                         ids=_ids("ip", REF["inclusionprobabilities"]))
def test_inclusionprobabilities(backend: Any, case: dict[str, Any]) -> None:
    x, pik = np.array(case["x"]), np.array(case["pik"])
    pi = nat.inclusion_probabilities(backend.asarray(x), case["n"])
    backend.check_array(pi, x.shape)
    np.testing.assert_allclose(backend.to_numpy(pi), pik, rtol=RTOL, atol=1e-15)
    # and our independent port of R's loop agrees too (checks the oracle used by hypothesis)
    np.testing.assert_allclose(oracles.inclusion_probabilities_r(x, case["n"]), pik,
                               rtol=RTOL, atol=1e-15)


def test_inclusionprobabilities_batched(backend: Any) -> None:
    """All R cases at once, padded into one ragged batch with per-row n."""
    cases = REF["inclusionprobabilities"]
    width = max(len(c["x"]) for c in cases)
    x = np.full((len(cases), width), np.nan)
    mask = np.zeros(x.shape, bool)
    expect = np.zeros(x.shape)
    for i, c in enumerate(cases):
        k = len(c["x"])
        x[i, :k], mask[i, :k], expect[i, :k] = c["x"], True, c["pik"]
    n = np.array([c["n"] for c in cases])
    pi = nat.inclusion_probabilities(backend.asarray(x), backend.asarray(n),
                                     mask=backend.asarray(mask))
    np.testing.assert_allclose(backend.to_numpy(pi), expect, rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("case", REF["upsystematicpi2"], ids=_ids("sys", REF["upsystematicpi2"]))
def test_upsystematicpi2(backend: Any, case: dict[str, Any]) -> None:
    pik, pi2 = np.array(case["pik"]), np.array(case["pi2"])
    d = nat.Systematic(backend.asarray(pik))
    got = backend.to_numpy(d.joint_inclusion_probabilities())
    # relative 1e-12 on the entries, absolute 1e-12 for R's rounding residue on exact zeros
    np.testing.assert_allclose(got, pi2, rtol=RTOL, atol=1e-12)
    assert d.has_fixed_size()


def test_upsystematicpi2_batched(backend: Any) -> None:
    cases = REF["upsystematicpi2"]
    width = max(len(c["pik"]) for c in cases)
    pik = np.zeros((len(cases), width))
    mask = np.zeros(pik.shape, bool)
    expect = np.zeros((len(cases), width, width))
    for i, c in enumerate(cases):
        k = len(c["pik"])
        pik[i, :k], mask[i, :k], expect[i, :k, :k] = c["pik"], True, c["pi2"]
    d = nat.Systematic(backend.asarray(pik), mask=backend.asarray(mask))
    np.testing.assert_allclose(backend.to_numpy(d.joint_inclusion_probabilities()), expect,
                               rtol=RTOL, atol=1e-12)


def test_upsystematic_draws(backend: Any) -> None:
    """Same u => the same sample as R's ``UPsystematic``, draw by draw and all rows at once."""
    draws = REF["upsystematic_draws"]
    assert len(draws) == 40
    for c in draws:
        d = nat.Systematic(backend.asarray(np.array(c["pik"])))
        s = backend.to_numpy(d.sample(backend.asarray(np.array(c["u"]))))
        np.testing.assert_array_equal(s.astype(int), c["s"], err_msg=f"seed {c['seed']}")
        np.testing.assert_array_equal(
            oracles.systematic_rule(np.array(c["pik"]), None, c["u"]).astype(int), c["s"])
    width = max(len(c["pik"]) for c in draws)
    pik = np.zeros((len(draws), width))
    mask = np.zeros(pik.shape, bool)
    expect = np.zeros(pik.shape, int)
    for i, c in enumerate(draws):
        k = len(c["pik"])
        pik[i, :k], mask[i, :k], expect[i, :k] = c["pik"], True, c["s"]
    d = nat.Systematic(backend.asarray(pik), mask=backend.asarray(mask))
    u = np.array([c["u"] for c in draws])
    np.testing.assert_array_equal(backend.to_numpy(d.sample(backend.asarray(u))).astype(int),
                                  expect)


@pytest.mark.parametrize("case", REF["srswor_joint"], ids=_ids("srs", REF["srswor_joint"]))
def test_srswor_joint(backend: Any, case: dict[str, Any]) -> None:
    big_n, n = case["N"], case["n"]
    d = nat.SimpleRandom(n, mask=backend.asarray(np.ones(big_n, bool)))
    np.testing.assert_allclose(backend.to_numpy(d.inclusion_probabilities()), case["pik"],
                               rtol=RTOL)
    got = backend.to_numpy(d.joint_inclusion_probabilities())
    np.testing.assert_allclose(got, case["pi2"], rtol=RTOL)
    exact = np.full((big_n, big_n), n * (n - 1) / (big_n * (big_n - 1)))
    np.fill_diagonal(exact, n / big_n)
    np.testing.assert_allclose(got, exact, rtol=RTOL)
