r"""Unbiasedness of NAT through verl's own loss code; the response-mask shortcut as control.

* Exact: on a tiny batch every sample of the design is enumerated (``Design.enumerate_support``,
  checked against the design's inclusion probabilities) and :math:`\sum_S P(S)\,\hat J(S)` is
  compared with verl's ``ppo_loss`` on the full batch — value and gradient, every aggregation
  mode, every token-level policy loss, four designs.
* Monte Carlo: on a larger batch, selections drawn by :class:`NATSelector` (fixed seed); the
  mean of the NAT loss is within a Bonferroni-corrected :math:`z` bound of the full loss, and the
  same bound rejects the shortcut (selection written into ``response_mask``).
"""

from __future__ import annotations

import math

import pytest

verl = pytest.importorskip(
    "verl", reason="verl lives in its own environment; .ci/run builds it and runs these tests")

import torch  # noqa: E402
from helpers import AGG_MODES, actor_config, micro_batch, model_output  # noqa: E402
from scipy.stats import norm  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.workers.utils.losses import ppo_loss  # noqa: E402

from nat_estimators.integrations.verl import (  # noqa: E402
    TOKEN_LEVEL_LOSS_MODES,
    NATSelector,
    nat_ppo_loss,
)
from nat_estimators.rl import Selection  # noqa: E402

DESIGNS = ("prefix", "poisson", "systematic", "simple_random")


def _support(design):
    m = design.mask
    support = [(s, p) for p, s in design.enumerate_support()]
    assert abs(sum(p for _, p in support) - 1) < 1e-12
    marg = sum(p * s.to(torch.float64) for s, p in support)
    torch.testing.assert_close(marg, design.inclusion_probabilities().to(torch.float64) * m,
                               rtol=0, atol=1e-12)
    return support


def _value_grad(fn, cfg, td, lp, ent):
    loss, _ = fn(cfg, model_output(td, lp, ent), td)
    g = torch.autograd.grad(loss, [lp, ent])
    return torch.cat([loss.detach().reshape(1), g[0].flatten(), g[1].flatten()])


def _draw_design(td, design, keep):
    batch = DataProto.from_single_dict({k: td[k] for k in ("response_mask", "advantages",
                                                           "old_log_probs")})
    kw = {"sizes": "surprisal"} if design.endswith("_proportional") else {}
    sel = NATSelector(design, keep, seed=0, full_keep=0.2, **kw).select(batch)
    return sel.design


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("agg", AGG_MODES)
def test_exact_enumeration(design, agg):
    """E_S[NAT loss and gradient] = verl's full ppo_loss, to float64 rounding, every loss mode."""
    td, lp, ent = micro_batch([3, 4], seed=5, holes=False, dtype=torch.float64)
    d = _draw_design(td, design, 0.5)
    support = _support(d)
    for loss_mode in TOKEN_LEVEL_LOSS_MODES:
        cfg = actor_config(loss_mode, agg, loss_scale_factor=8)
        full = _value_grad(ppo_loss, cfg, td, lp, ent)
        expect = torch.zeros_like(full)
        shortcut, p_defined = torch.zeros(1, dtype=torch.float64), 0.0
        for s, p in support:
            td["nat_weights"] = Selection.from_sample(d, s, weight_dtype=torch.float64).weights
            expect += p * _value_grad(nat_ppo_loss, cfg, td, lp, ent)
            if loss_mode == "vanilla" and design == "prefix" and bool(s.any()):
                p_defined += p
                short = td.clone()
                short["response_mask"] = s.long()
                with torch.no_grad():
                    shortcut += p * ppo_loss(cfg, model_output(short, lp, ent), short)[0]
        del td["nat_weights"]
        torch.testing.assert_close(expect, full, rtol=1e-10, atol=1e-12, msg=loss_mode)
        if loss_mode == "vanilla" and design == "prefix":
            # negative control: the selection as response_mask is a biased (ratio) estimate
            # (given a non-empty selection: on an empty one verl's loss is 0/0)
            shortcut = shortcut / p_defined
            assert abs(float(shortcut[0] - full[0])) > 1e-3 * abs(float(full[0])), (
                float(shortcut[0]), float(full[0]))


def test_shortcut_biased_in_every_mode_under_prefix():
    """Exact: writing a prefix selection into response_mask biases every aggregation mode."""
    td, lp, ent = micro_batch([4, 5], seed=6, holes=False, dtype=torch.float64, trend=0.5)
    d = _draw_design(td, "prefix", 0.5)
    support = _support(d)
    for agg in AGG_MODES:
        cfg = actor_config("vanilla", agg, loss_scale_factor=8)
        with torch.no_grad():
            full = ppo_loss(cfg, model_output(td, lp, ent), td)[0]
            short, p_defined = 0.0, 0.0
            for s, p in support:
                if not bool(s.any()):
                    continue  # verl's loss is 0/0 on an empty selection
                p_defined += p
                t2 = td.clone()
                t2["response_mask"] = s.long()
                short += p * float(ppo_loss(cfg, model_output(t2, lp, ent), t2)[0])
        short /= p_defined
        assert abs(short - float(full)) > 0.05 * abs(float(full)), (agg, short, float(full))


N_DRAWS = 800
LEVEL = 1e-3  # family-wise false-alarm level of the Monte Carlo check


@pytest.mark.parametrize("design", ["prefix", "poisson_proportional"])
def test_monte_carlo_through_selector(design):
    """Mean of NAT losses over N_DRAWS selections vs the full loss; the shortcut rejected.

    Each mode is a z-test with the Monte Carlo standard error; Bonferroni over the 5 modes keeps
    the family-wise false-alarm level at LEVEL.  The same bound must reject the shortcut for
    prefix cutting (where it is biased by a large margin by construction: advantages drift).
    """
    lengths = [20, 12, 24, 7, 16, 24, 3, 18]
    td, lp, ent = micro_batch(lengths, seed=7, dtype=torch.float64, trend=0.15)
    lp, ent = lp.detach(), ent.detach()
    batch = DataProto.from_single_dict({k: td[k] for k in ("response_mask", "advantages",
                                                           "old_log_probs")})
    kw = {"sizes": "surprisal"} if design.endswith("_proportional") else {}
    selector = NATSelector(design, 0.4, seed=123, full_keep=0.1, **kw)
    cfgs = {agg: actor_config("vanilla", agg, loss_scale_factor=32) for agg in AGG_MODES}
    out = model_output(td, lp, ent)
    full = {agg: float(ppo_loss(cfg, out, td)[0]) for agg, cfg in cfgs.items()}
    nat = {agg: [] for agg in AGG_MODES}
    short = {agg: [] for agg in AGG_MODES}
    with torch.no_grad():
        for _ in range(N_DRAWS):
            sel = selector.select(batch)
            td["nat_weights"] = batch.batch["nat_weights"].to(torch.float64)
            t2 = td.clone()
            t2["response_mask"] = sel.sample.long()
            del t2["nat_weights"]
            for agg, cfg in cfgs.items():
                nat[agg].append(float(nat_ppo_loss(cfg, out, td)[0]))
                if design == "prefix":
                    short[agg].append(float(ppo_loss(cfg, out, t2)[0]))  # same attention
    z_crit = norm.ppf(1 - LEVEL / (2 * len(AGG_MODES)))
    for agg in AGG_MODES:
        x = torch.tensor(nat[agg], dtype=torch.float64)
        se = float(x.std()) / math.sqrt(N_DRAWS)
        z = (float(x.mean()) - full[agg]) / se
        assert abs(z) < z_crit, (agg, float(x.mean()), full[agg], z)
        if design == "prefix":
            y = torch.tensor(short[agg], dtype=torch.float64)
            z_short = (float(y.mean()) - full[agg]) / (float(y.std()) / math.sqrt(N_DRAWS))
            assert abs(z_short) > z_crit, (agg, float(y.mean()), full[agg], z_short)
