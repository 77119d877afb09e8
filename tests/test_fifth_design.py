r"""A fifth design needs only its own file: every layer picks up a design defined here.

``Interleaved`` (defined below, and nowhere in the package) keeps every :math:`m`-th eligible token
from a random residue: the eligible tokens of a row are split into :math:`m` interleaved clusters
(rank mod :math:`m`) and one cluster is drawn with probability :math:`1/m` (one uniform per row).
Then :math:`\pi_k = 1/m`, :math:`\pi_{kl} = 1/m` within a cluster and 0 across clusters, and with
:math:`Y_r` the total of cluster :math:`r` the HT total is :math:`m Y_r`, so

.. math:: V(\hat Y) = \frac1m \sum_{r=0}^{m-1} (m Y_r - Y)^2 .

The class registers itself (``name="interleaved"``) and implements the contract plus two hooks:
the exact-variance fast path above and its row support (:math:`m` outcomes).  The tests show that
:func:`~nat_estimators.design_variance` uses the hook (and agrees with the dense path and with
enumeration), :func:`~nat_estimators.variance_estimate` falls back to the dense formulas,
:func:`~nat_estimators.rl.select_tokens` and :class:`~nat_estimators.rl.GRPOConfig` accept the
name, ``nat-estimators compare`` lists it, the cost model accepts it, and exact enumeration
(what the validation suite runs) gives an unbiased HT total.  Negative controls: a design with the
same :math:`\pi_k` but another second-order law (Poisson) has another variance, and an
unregistered name is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from array_api_compat import array_namespace

import nat_estimators as nat
from nat_estimators import _design
from nat_estimators.cli import main
from nat_estimators.costmodel import TransformerConfig, nat_step_cost_ratio
from nat_estimators.rl import GRPOConfig, Selection, select_tokens


def _define() -> type[nat.Design]:
    @dataclass(frozen=True, eq=False, repr=False)
    class Interleaved(nat.Design, name="interleaved"):
        """Every m-th eligible token from a random residue (m interleaved clusters)."""

        pi: Any
        mask: Any = field(kw_only=True)
        hook_calls: list[int] = field(default_factory=list, kw_only=True, compare=False)

        @classmethod
        def from_fraction(cls, keep: float, *, mask: Any) -> Interleaved:
            m = round(1 / keep)
            xp = array_namespace(mask)
            pi = xp.where(mask, xp.full(mask.shape, 1 / m, dtype=xp.float64), 0.0)
            return cls(pi, mask=mask)

        @property
        def m(self) -> int:
            xp = array_namespace(self.pi)
            return round(1 / float(xp.max(self.pi)))

        def _residue(self, mask: Any) -> Any:
            xp = array_namespace(mask)
            return (xp.cumulative_sum(xp.astype(mask, xp.int64), axis=-1) - 1) % self.m

        @property
        def uniform_shape(self) -> tuple[int, ...]:
            return self.batch_shape

        def inclusion_probabilities(self) -> Any:
            return self.pi

        def joint_inclusion_probabilities(self) -> Any:
            xp = array_namespace(self.pi)
            r = self._residue(self.mask)
            same = (r[..., :, None] == r[..., None, :]) & self.mask[..., :, None] & (
                self.mask[..., None, :])
            return xp.where(same, 1 / self.m, 0.0)

        def _sample(self, u: Any) -> Any:
            xp = array_namespace(u)
            pick = xp.astype(xp.floor(u * self.m), xp.int64)
            return self.mask & (self._residue(self.mask) == pick[..., None])

        def _exact_variance(self, rows: Any, y: Any, cov: bool) -> Any:
            # V = (1/m) sum_r (m Y_r - Y)^2 with Y_r the total of cluster r
            self.hook_calls.append(1)
            xp = rows.xp
            m = self.m
            r = self._residue(rows.mask)
            onehot = xp.astype((r[:, :, None] == xp.arange(m)) & rows.mask[:, :, None], y.dtype)
            yr = xp.matmul(xp.matrix_transpose(onehot), y)  # (R, m, q)
            d = m * yr - xp.sum(yr, axis=1)[:, None, :]
            if cov:
                return xp.matmul(xp.matrix_transpose(d), d) / m
            return xp.sum(d * d, axis=1) / m

        def _row_support(self, row: int) -> list[tuple[float, Any]]:
            return [(1 / self.m, (r + 0.5) / self.m) for r in range(self.m)]

    return Interleaved


@pytest.fixture
def interleaved() -> Iterator[type[nat.Design]]:
    cls = _define()
    try:
        yield cls
    finally:
        _design._REGISTRY.pop("interleaved", None)  # the next test sees the package's four


def _ragged(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((3, 11), dtype=bool)
    mask[0, 7:] = False
    mask[1, [2, 5]] = False
    y = np.where(mask[..., None], rng.normal(1.0, 1.0, size=(3, 11, 2)), np.nan)
    return y, mask


def test_it_is_registered_only_while_defined(interleaved: type[nat.Design]) -> None:
    assert nat.Design.registered()["interleaved"] is interleaved
    assert list(nat.Design.registered())[:4] == ["poisson", "prefix", "simple_random",
                                                 "systematic"]
    with pytest.raises(ValueError, match="already registered"):
        type("Again", (nat.Design,), {}, name="interleaved")


def test_variance_uses_its_hook_and_agrees_with_dense_and_enumeration(
    interleaved: type[nat.Design],
) -> None:
    y, mask = _ragged()
    d = interleaved.from_fraction(1 / 3, mask=mask)
    fast = nat.design_variance(y, d, axis=1)
    assert d.hook_calls  # type: ignore[attr-defined]  # (twice: y has NaN padding)
    dense = nat.design_variance(y, d, axis=1, method="dense")
    np.testing.assert_allclose(fast, dense, rtol=1e-12)
    np.testing.assert_allclose(nat.design_variance(y, d, axis=1, covariance=True),
                               nat.design_variance(y, d, axis=1, method="dense", covariance=True),
                               rtol=1e-12)
    # by enumeration of the support: sum_S P(S) (Yhat_S - Y)^2, row by row
    total = np.nansum(y, axis=1)
    pi = d.inclusion_probabilities()
    mass, mean, var = 0.0, np.zeros_like(total), np.zeros_like(total)
    for p, s in d.enumerate_support():
        est = nat.ht_total(y, s, pi, axis=1)
        mass, mean, var = mass + p, mean + p * est, var + p * (est - total) ** 2
    assert mass == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(mean, total, rtol=1e-12)  # HT is unbiased
    np.testing.assert_allclose(fast, var, rtol=1e-12)
    # negative control: the same pi_k with independent draws (Poisson) has another variance
    other = nat.design_variance(y, nat.Poisson(pi, mask=mask), axis=1)
    assert not np.allclose(other, fast, rtol=1e-3)


def test_variance_estimate_falls_back_to_the_dense_formulas(
    interleaved: type[nat.Design],
) -> None:
    y, mask = _ragged(1)
    d = interleaved.from_fraction(0.5, mask=mask)
    s = d.sample(np.array([0.2, 0.7, 0.4]))
    # pi_kl = 0 across clusters: the dense estimator says it is biased for this design
    with pytest.warns(nat.BiasedVarianceEstimateWarning):
        v = nat.variance_estimate(y, s, d, axis=1)
    pi, p2 = d.inclusion_probabilities(), d.joint_inclusion_probabilities()
    a = np.where(s[..., None], y, 0.0) / np.where(mask, pi, 1.0)[..., None]
    both = s[:, :, None] & s[:, None, :]
    dchk = np.where(both, (p2 - pi[:, :, None] * pi[:, None, :]) / np.where(both, p2, 1), 0)
    np.testing.assert_allclose(v, np.einsum("rkq,rkl,rlq->rq", a, dchk, a), rtol=1e-12)


def test_rl_selection_and_grpo_config_accept_its_name(interleaved: type[nat.Design]) -> None:
    m = torch.as_tensor(_ragged()[1])
    sel = select_tokens(m, "interleaved", keep=0.25, generator=torch.Generator().manual_seed(0))
    assert isinstance(sel.design, interleaved)
    assert torch.equal(sel.weights[sel.sample], torch.full_like(sel.weights[sel.sample], 4.0))
    assert (sel.sample.sum(-1) >= 1).all() and not (sel.sample & ~m).any()
    GRPOConfig(design="interleaved", keep=0.25)
    # the exact-enumeration path of the unbiasedness checks (validation suite, test_rl_unbiased)
    expected_w = torch.zeros(m.shape, dtype=torch.float64)
    for p, s in sel.design.enumerate_support():
        expected_w += p * Selection.from_sample(sel.design, s, weight_dtype=torch.float64).weights
    torch.testing.assert_close(expected_w, m.double(), rtol=0, atol=1e-12)  # E[w] = m
    with pytest.raises(ValueError, match="design must be one of"):
        select_tokens(m, "interleaved_typo", keep=0.25)


def test_cli_and_cost_model_list_it(interleaved: type[nat.Design], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp.json"
    assert main(["compare", "--budget", "0.25", "--rows", "2", "--length", "64", "--dim", "2",
                 "--json", str(out)]) == 0
    rows = {r["design"]: r for r in json.loads(out.read_text())}
    assert rows["interleaved (uniform)"]["keep_fraction"] == pytest.approx(0.25, abs=0.02)
    assert "interleaved" in capsys.readouterr().out
    r = nat_step_cost_ratio(TransformerConfig.qwen3_8b(), 64, 512, "interleaved", 0.25)
    assert r["flops_ratio"] == nat_step_cost_ratio(TransformerConfig.qwen3_8b(), 64, 512,
                                                   "poisson", 0.25)["flops_ratio"]


def test_unregistered_after_the_fixture() -> None:
    assert "interleaved" not in nat.Design.registered()
    with pytest.raises(ValueError, match="design must be one of"):
        nat_step_cost_ratio(TransformerConfig.qwen3_8b(), 64, 512, "interleaved", 0.25)
