r"""Exact unbiasedness of NAT gradients on the trained policies, by enumeration (no randomness).

For a small batch of real rollouts (ragged, group-normalised advantages, clipped-ratio GRPO loss
with k3-KL and entropy terms, :math:`\theta \ne \theta_{old}`) and a design, every joint
selection :math:`S` of the batch is enumerated with its probability :math:`P(S)`:

* prefix and systematic designs: each row has at most :math:`N_i + 1` outcomes (the cuts; the
  intervals of :math:`u` between the breakpoints :math:`V_k \bmod 1`), produced by the design's
  own ``sample(u)``; the batch has 3 rows of 3-8 answer tokens, one of them with an ineligible
  token in the middle (a non-contiguous response mask);
* Poisson (uniform and entropy-proportional) and simple random sampling: every subset of 3 short
  rows (at most 8 tokens, :math:`2^8` joint outcomes).

Each selection's gradient is computed by the RL plumbing — the row is **cropped** after its last
selected token, rows are packed into micro-batches of at most 16 tokens, the backbone runs on the
packed rows and the LM head only at the selected positions, ``agg_loss`` applies the HT weights
with the full-mask normalizers — and the theorem

.. math:: \sum_S P(S)\, \nabla_\theta \hat J^{(m)}_S = \nabla_\theta J^{(m)}_{\text{full}}

is checked in float64 to :math:`10^{-9} \max(1, \|\nabla J\|_\infty)` for every aggregation mode
:math:`m` of ``agg_loss`` (verl names and TRL/OpenRLHF aliases; ``--nat-quick``: verl names),
against a full-token gradient computed independently (uncropped forward, full head, the
trainers' formulas written out in :mod:`validation.harness`).  The enumeration itself is checked
complete: :math:`\sum_S P(S) = 1` and :math:`\sum_S P(S) I_S = \pi`.

Measured, not asserted as unbiased: the Hájek normalizer (exact bias for every design);
negative controls (prefix design): the Hájek normalizer, the "replace the response mask"
shortcut and the mis-specified :math:`1/\pi^{0.8}` weights must each have a relative bias above
:math:`10^{-3}`.
"""

from __future__ import annotations

import pytest
import torch

from nat_estimators.rl import Selection

from . import harness as H
from .report import REGISTRY
from .world import CUT_DESIGNS, EXACT_MAX_TOKENS, POLICIES, SUBSET_DESIGNS

BIAS_MODES = ("token-mean", "seq-mean-token-mean")
TOL = 1e-9
CONTROL_MIN_BIAS = 1e-3


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("design", CUT_DESIGNS + SUBSET_DESIGNS)
@pytest.mark.parametrize("policy", POLICIES)
def test_enumeration_is_unbiased(world, policy, design):
    """Statistic: max |sum_S P(S) grad_S - grad_full| per mode; threshold 1e-9 * max(1, |g|_inf);
    no seed involved beyond the fixed rollout seed 0 (deterministic)."""
    kind = "cuts" if design in CUT_DESIGNS else "subsets"
    case, full = world.exact_case(policy, kind)
    gen = torch.Generator(device=case.response_mask.device).manual_seed(0)
    d = case.selection(design, gen).design  # the design select_tokens builds for this batch
    modes = world.exact_modes
    losses: dict = {("ht", m): H.ht_loss(m) for m in modes}
    losses.update({("hajek", m): H.hajek_loss(m) for m in BIAS_MODES})
    controls = design == "prefix"
    if controls:
        losses.update({("shortcut", m): H.shortcut_loss(m) for m in BIAS_MODES})
    acc = {k: torch.zeros_like(full["token-mean"]) for k in losses}
    acc_bad = {m: torch.zeros_like(full["token-mean"]) for m in BIAS_MODES}
    p_total, pi_hat, n = 0.0, torch.zeros_like(d.inclusion_probabilities()), 0
    for p, sample in d.enumerate_support():
        sel = Selection.from_sample(d, sample, weight_dtype=H.DTYPE)
        grads = H.pipeline_gradients(case, sel, losses, max_tokens=EXACT_MAX_TOKENS)
        for k, g in grads.items():
            acc[k] += p * g
        if controls:
            bad = H.pipeline_gradients(case, H.misspecified(sel),
                                       {m: H.ht_loss(m) for m in BIAS_MODES},
                                       max_tokens=EXACT_MAX_TOKENS)
            for m in BIAS_MODES:
                acc_bad[m] += p * bad[m]
        p_total += p
        pi_hat += p * sample.to(pi_hat.dtype)
        n += 1
    # the enumeration is complete and consistent with the design's inclusion probabilities
    assert abs(p_total - 1) < 1e-12, p_total
    assert float((pi_hat - d.inclusion_probabilities()).abs().max()) < 1e-12
    errs = {}
    for m in modes:
        g = full[m]
        errs[m] = float((acc[("ht", m)] - g).abs().max())
        tol = TOL * max(1.0, float(g.abs().max()))
        assert errs[m] <= tol, (m, errs[m], tol)
    rec = dict(
        policy=policy, design=design, outcomes=n, modes=len(modes),
        max_err=max(errs.values()), tol=TOL,
        hajek_bias=[_rel(acc[("hajek", m)], full[m]) for m in BIAS_MODES],
    )
    if controls:
        rec["shortcut_bias"] = [_rel(acc[("shortcut", m)], full[m]) for m in BIAS_MODES]
        rec["pi08_bias"] = [_rel(acc_bad[m], full[m]) for m in BIAS_MODES]
        # negative controls: the same enumeration must show a clear bias
        for name in ("hajek_bias", "shortcut_bias", "pi08_bias"):
            assert min(rec[name]) > CONTROL_MIN_BIAS, (name, rec[name])
    REGISTRY.exact.append(rec)


@pytest.mark.parametrize("policy", POLICIES)
def test_cropped_forward_matches_full(world, policy):
    """The pipeline's per-token losses under prefix cutting (cropped, packed rows) equal the
    full forward's at every selected token: threshold 1e-12, every cut of the 'cuts' batch."""
    from nat_estimators.rl import grpo_micro_batches, plan_batch

    case, _ = world.exact_case(policy, "cuts")
    ref = H.reference_per_token_loss(case.model, case.batch).detach()
    gen = torch.Generator(device=case.response_mask.device).manual_seed(0)
    d = case.selection("prefix", gen).design
    cfg = H.config(max_tokens=EXACT_MAX_TOKENS)
    worst, checked = 0.0, 0
    for _, sample in d.enumerate_support():
        sel = Selection.from_sample(d, sample, weight_dtype=H.DTYPE)
        plan = plan_batch(case.batch, sel, cfg)
        assert plan.real_tokens <= int(case.batch.attention_mask.sum())
        vals = [t.per_token_loss.detach() for t in
                grpo_micro_batches(case.model, case.batch, sel, case.normalizers, cfg, plan)]
        if not vals:
            continue
        ell = plan.scatter(vals)
        diff = (ell - ref).abs()[sel.sample]
        worst = max(worst, float(diff.max()))
        checked += int(sel.sample.sum())
    assert checked > 0
    assert worst <= 1e-12, worst
