r"""Exact unbiasedness of the NAT gradient, by enumerating every selection of a small batch.

For a tiny causal policy in float64 and each design, every possible selection :math:`S` of a
3-row batch (all cut combinations for prefix cutting, all subsets for Poisson, all
:math:`n`-subsets for simple random sampling, all :math:`u`-intervals for systematic sampling:
the designs' own :meth:`~nat_estimators.Design.enumerate_support`) is
run through the real pipeline — crop at the last selected token, pack into micro-batches, backbone
on the packed rows, head only at the selected positions, :func:`agg_loss` with HT weights and
full-mask normalizers — and

.. math:: \sum_S P(S)\, \nabla_\theta \hat J_S = \nabla_\theta J_{\text{full}}

is checked to 1e-9 for every loss mode, where :math:`J_{\text{full}}` comes from an uncropped
full forward pass with the full LM head.  Negative controls: the Hájek normalizer and the
"replace the response mask by the selection" shortcut are biased under prefix cutting.
"""

from __future__ import annotations

import pytest
import torch

import nat_estimators as nat
from nat_estimators.demo.models import TinyCausalLM
from nat_estimators.rl import (
    LOSS_MODES,
    GRPOBatch,
    GRPOConfig,
    LossNormalizers,
    Selection,
    agg_loss,
    grpo_micro_batches,
    grpo_per_token_loss,
    plan_batch,
)

VERL_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
CONST_LEN = 8
V = 9


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def setup():
    torch.manual_seed(0)
    model = TinyCausalLM(vocab_size=V, d_model=8, n_heads=2, n_layers=1, max_len=16,
                         dtype=torch.float64)
    T = 10
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (3, T), generator=g)
    am = torch.zeros(3, T, dtype=torch.bool)
    rm = torch.zeros(3, T, dtype=torch.bool)
    am[0, :9], rm[0, 2:7] = True, True
    rm[0, 4] = False  # tool token: 4 eligible, non-contiguous; 2 trailing non-loss tokens
    am[1, 3:], rm[1, 6:] = True, True  # left padded, 4 eligible
    rm[1, 8] = False  # 3 eligible
    am[2, :4] = True  # prompt only: no eligible token
    with torch.no_grad():
        lp = full_logprobs(model, ids, am)
    noise = 0.3 * torch.randn(3, T, generator=g, dtype=torch.float64)
    batch = GRPOBatch(
        ids, am, rm,
        advantages=torch.tensor([1.0, -0.7, 0.4], dtype=torch.float64),
        old_log_probs=(lp + noise) * rm,
        ref_log_probs=(lp - noise.flip(-1)) * rm,
    )
    return model, batch


def full_logprobs(model, ids, am):
    logp = torch.log_softmax(model(ids, am), -1)
    out = torch.zeros(ids.shape, dtype=logp.dtype)
    out[:, 1:] = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    return out


def config(**kw):
    return GRPOConfig(kl_coef=0.1, entropy_coef=0.05, clip_low=0.2, clip_high=0.28,
                      const_len=CONST_LEN, max_tokens=kw.pop("max_tokens", 12),
                      weight_dtype=torch.float64, **kw)


def full_per_token_loss(model, batch, cfg):
    """Uncropped full forward and full head (independent of the packing code)."""
    logits = model(batch.input_ids, batch.attention_mask)
    logp = torch.log_softmax(logits, -1)
    lp = torch.zeros(batch.input_ids.shape, dtype=logp.dtype)
    lp[:, 1:] = logp[:, :-1].gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    ent = torch.zeros_like(lp)
    ent[:, 1:] = -(logp.exp() * logp).sum(-1)[:, :-1]
    return grpo_per_token_loss(
        lp, batch.old_log_probs, batch.advantages[:, None], clip_low=cfg.clip_low,
        clip_high=cfg.clip_high, ref_log_probs=batch.ref_log_probs, kl_coef=cfg.kl_coef,
        entropy=ent, entropy_coef=cfg.entropy_coef,
    )


def grads(model, loss):
    params = list(model.parameters())
    g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if x is None else x).flatten()
                      for p, x in zip(params, g, strict=True)])


def make_design(name, rm):
    if name == "prefix":
        return nat.Prefix.from_fraction(0.5, mask=rm, full_keep=0.1)
    if name == "prefix_min_keep":
        return nat.Prefix.from_fraction(0.6, mask=rm, full_keep=0.2, min_keep=0.3)
    sizes = torch.linspace(0.5, 2.0, rm.shape[1], dtype=torch.float64).expand(rm.shape)
    n = 0.5 * rm.sum(-1).double()
    if name == "poisson":
        pi = torch.zeros(rm.shape, dtype=torch.float64)
        pi[:2] = nat.inclusion_probabilities(sizes[:2], n[:2], mask=rm[:2])
        return nat.Poisson(pi, mask=rm)
    if name == "systematic":
        pi = torch.zeros(rm.shape, dtype=torch.float64)
        pi[:2] = nat.inclusion_probabilities(sizes[:2], n[:2], mask=rm[:2])
        return nat.Systematic(pi, mask=rm)
    if name == "simple_random":
        return nat.SimpleRandom.from_fraction(0.5, mask=rm)
    raise AssertionError(name)


def expected_nat_gradients(model, batch, design, cfg, modes, *, extra=None):
    """sum_S P(S) grad(loss_S) for each mode through the cropped/packed/selected-head path."""
    stats = LossNormalizers.from_mask(batch.response_mask, const_len=CONST_LEN)
    total = {m: 0.0 for m in modes}
    extra_total = {k: 0.0 for k in (extra or {})}
    mass = 0.0
    for p, sample in design.enumerate_support():
        mass += p
        sel = Selection.from_sample(design, sample, weight_dtype=torch.float64)
        plan = plan_batch(batch, sel, cfg)
        if len(plan) == 0:
            continue  # nothing selected: every loss is 0
        terms = list(grpo_micro_batches(model, batch, sel, stats, cfg, plan))
        for m in modes:
            total[m] = total[m] + p * grads(model, sum(t.loss(m) for t in terms))
        for k, fn in (extra or {}).items():
            extra_total[k] = extra_total[k] + p * grads(model, fn(terms, sel, plan, stats))
    assert abs(mass - 1) < 1e-12
    return total, extra_total


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(
    "name", ["prefix", "prefix_min_keep", "poisson", "systematic", "simple_random"]
)
def test_nat_gradient_is_exactly_unbiased(name):
    model, batch = setup()
    design = make_design(name, batch.response_mask)
    cfg = config(crop=True)
    stats = LossNormalizers.from_mask(batch.response_mask, const_len=CONST_LEN)
    ell = full_per_token_loss(model, batch, cfg)
    modes = LOSS_MODES
    got, _ = expected_nat_gradients(model, batch, design, cfg, modes)
    for m in modes:
        want = grads(model, agg_loss(ell, batch.response_mask, m, normalizers=stats))
        assert float(want.abs().max()) > 1e-3
        err = float((got[m] - want).abs().max())
        assert err <= 1e-9 * max(1.0, float(want.abs().max())), (m, err)


def test_uncropped_path_is_unbiased_too():
    """Without cropping (full backbone, selected head) the estimate is unbiased as well."""
    model, batch = setup()
    design = make_design("prefix", batch.response_mask)
    cfg = config(crop=False, max_tokens=None)
    stats = LossNormalizers.from_mask(batch.response_mask, const_len=CONST_LEN)
    ell = full_per_token_loss(model, batch, cfg)
    got, _ = expected_nat_gradients(model, batch, design, cfg, VERL_MODES)
    for m in VERL_MODES:
        want = grads(model, agg_loss(ell, batch.response_mask, m, normalizers=stats))
        assert float((got[m] - want).abs().max()) <= 1e-9


def test_negative_controls_are_biased_under_prefix_cutting():
    model, batch = setup()
    design = make_design("prefix", batch.response_mask)
    cfg = config(crop=True)
    stats = LossNormalizers.from_mask(batch.response_mask, const_len=CONST_LEN)
    ell = full_per_token_loss(model, batch, cfg)

    def hajek(mode):
        return lambda terms, sel, plan, st: sum(t.loss(mode, normalizer="hajek") for t in terms)

    def mask_replaced(mode):
        # what a trainer computes if its response mask is replaced by the selection
        def fn(terms, sel, plan, st):
            per_token = plan.scatter([t.per_token_loss for t in terms])
            return agg_loss(per_token, sel.sample, mode, const_len=CONST_LEN)
        return fn

    def scattered_ht(mode):
        # positive control: the same scattered loss with the full mask, weights and normalizers
        def fn(terms, sel, plan, st):
            per_token = plan.scatter([t.per_token_loss for t in terms])
            return agg_loss(per_token, batch.response_mask, mode, weights=sel.weights,
                            normalizers=st)
        return fn

    extra = {}
    for m in VERL_MODES:
        extra[("hajek", m)] = hajek(m)
        extra[("mask", m)] = mask_replaced(m)
        extra[("scattered", m)] = scattered_ht(m)
    _, got = expected_nat_gradients(model, batch, design, cfg, (), extra=extra)
    for m in VERL_MODES:
        want = grads(model, agg_loss(ell, batch.response_mask, m, normalizers=stats))
        assert rel_err(got[("scattered", m)], want) < 1e-9
        assert rel_err(got[("hajek", m)], want) > 1e-3, m
        assert rel_err(got[("mask", m)], want) > 1e-3, m
