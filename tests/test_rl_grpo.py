"""The NAT GRPO step template: full-keep equivalence, updates, determinism, scope guard."""

from __future__ import annotations

import pytest
import torch

from nat_estimators.demo.models import TinyCausalLM
from nat_estimators.rl import (
    GRPOBatch,
    GRPOConfig,
    LossNormalizers,
    agg_loss,
    grpo_backward,
    grpo_per_token_loss,
    grpo_step,
    select_tokens,
)

V = 17


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = TinyCausalLM(vocab_size=V, d_model=16, n_heads=2, n_layers=2, max_len=32,
                         dtype=dtype)
    B, T = 6, 16
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.bool)
    am[1, :5] = False  # left padding
    am[3, 12:] = False  # right padding
    rm = am.clone()
    rm[:, :6] = False  # prompts
    rm[2, 9] = False  # a tool token
    rm[5] = False  # no response tokens
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, am), -1)
    lp = torch.zeros(B, T, dtype=dtype)
    lp[:, 1:] = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    noise = 0.2 * torch.randn(B, T, generator=g, dtype=dtype)
    batch = GRPOBatch(ids, am, rm, advantages=torch.linspace(-1, 1, B, dtype=dtype),
                      old_log_probs=lp + noise, ref_log_probs=lp - noise,
                      sizes=(-logp.exp() * logp).sum(-1).roll(1, -1))
    return model, batch


def flat_grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def full_gradient(model, batch, cfg):
    """Plain full-batch GRPO gradient: full forward, full head, agg_loss without weights."""
    model.zero_grad(set_to_none=True)
    logp = torch.log_softmax(model(batch.input_ids, batch.attention_mask), -1)
    lp = torch.zeros(batch.input_ids.shape, dtype=logp.dtype)
    lp[:, 1:] = logp[:, :-1].gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    ent = torch.zeros_like(lp)
    ent[:, 1:] = -(logp.exp() * logp).sum(-1)[:, :-1]
    ell = grpo_per_token_loss(lp, batch.old_log_probs, batch.advantages[:, None],
                              clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                              ref_log_probs=batch.ref_log_probs, kl_coef=cfg.kl_coef,
                              entropy=ent, entropy_coef=cfg.entropy_coef)
    agg_loss(ell, batch.response_mask, cfg.loss_mode, const_len=cfg.const_len).backward()
    return flat_grad(model)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "dr_grpo", "grpo"])
@pytest.mark.parametrize("design", ["prefix", "poisson", "systematic"])
def test_keep_all_equals_full_gradient(mode, design):
    model, batch = make()
    cfg = GRPOConfig(loss_mode=mode, design=design, keep=1.0, full_keep=1.0, kl_coef=0.05,
                     entropy_coef=0.01, max_tokens=40, const_len=10,
                     weight_dtype=torch.float64)
    want = full_gradient(model, batch, cfg)
    model.zero_grad(set_to_none=True)
    out = grpo_backward(model, batch, cfg, generator=torch.Generator().manual_seed(0))
    assert bool((out.selection.sample == batch.response_mask).all())
    assert out.metrics["micro_batches"] > 1
    torch.testing.assert_close(flat_grad(model), want, rtol=1e-10, atol=1e-12)


def test_step_updates_and_saves_tokens():
    model, batch = make(torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = GRPOConfig(design="prefix", keep=0.3, max_tokens=48, kl_coef=0.1,
                     entropy_coef=0.01)
    out = grpo_step(model, opt, batch, cfg, generator=torch.Generator().manual_seed(3),
                    max_grad_norm=1.0)
    assert torch.isfinite(out.loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    m = out.metrics
    assert m["forward_tokens"] < m["full_tokens"]
    assert m["selected_tokens"] < m["eligible_tokens"]
    assert out.log_probs.shape == batch.input_ids.shape
    assert (out.log_probs[~out.selection.sample] == 0).all()
    assert (out.log_probs[out.selection.sample] < 0).all()


@pytest.mark.parametrize("design", ["prefix", "poisson_proportional", "simple_random"])
def test_same_generator_same_gradient(design):
    model, batch = make()
    cfg = GRPOConfig(design=design, keep=0.5, loss_mode="token-mean", max_tokens=30)
    grads = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        grpo_backward(model, batch, cfg, generator=torch.Generator().manual_seed(5))
        grads.append(flat_grad(model))
    assert torch.equal(grads[0], grads[1])


def test_given_selection_and_normalizers_and_uncropped():
    model, batch = make()
    sel = select_tokens(batch.response_mask, "poisson", 0.5,
                        generator=torch.Generator().manual_seed(1), weight_dtype=torch.float64)
    stats = LossNormalizers.from_mask(batch.response_mask)
    res = []
    for crop in (True, False):
        model.zero_grad(set_to_none=True)
        cfg = GRPOConfig(design="poisson", loss_mode="seq-mean-token-sum", crop=crop,
                         max_tokens=40)
        out = grpo_backward(model, batch, cfg, selection=sel, normalizers=stats)
        assert out.selection is sel
        res.append(flat_grad(model))
    torch.testing.assert_close(res[0], res[1], rtol=1e-10, atol=1e-12)
    other = select_tokens(batch.attention_mask, "poisson", 0.5)
    with pytest.raises(ValueError, match="response_mask"):
        grpo_backward(model, batch, GRPOConfig(), selection=other)


def test_on_policy_without_old_log_probs():
    model, batch = make()
    b2 = GRPOBatch(batch.input_ids, batch.attention_mask, batch.response_mask,
                   batch.advantages)
    out = grpo_backward(model, b2, GRPOConfig(keep=0.5, design="systematic"),
                        generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(flat_grad(model)).all() and torch.isfinite(out.loss)


@pytest.mark.parametrize("level", ["sequence", "seq"])
def test_sequence_level_refused(level):
    with pytest.raises(ValueError, match="sequence-level"):
        GRPOConfig(importance_sampling_level=level)
    with pytest.raises(ValueError, match="sequence-level"):
        GRPOConfig(loss_mode="gspo")


def test_bad_config_and_batch():
    with pytest.raises(ValueError, match="design"):
        GRPOConfig(design="uniform")
    with pytest.raises(ValueError, match="keep"):
        GRPOConfig(keep=0.0)
    with pytest.raises(ValueError, match="normalizer"):
        GRPOConfig(normalizer="mean")
    with pytest.raises(ValueError, match="kl_coef"):
        GRPOConfig(kl_coef=-1.0)
    model, batch = make()
    ids, am, rm = batch.input_ids, batch.attention_mask, batch.response_mask
    adv = batch.advantages
    bad = rm.clone()
    bad[:, 0] = True
    with pytest.raises(ValueError, match="response_mask"):
        GRPOBatch(ids, am, bad, adv)
    bad = rm.clone()
    bad[1, 2] = True  # padding position
    with pytest.raises(ValueError, match="response_mask"):
        GRPOBatch(ids, am, bad, adv)
    bad = rm.clone()
    bad[1, 5] = True  # first real token of a left-padded row: no context
    with pytest.raises(ValueError, match="response_mask"):
        GRPOBatch(ids, am, bad, adv)
    with pytest.raises(ValueError, match="advantages"):
        GRPOBatch(ids, am, rm, adv[:3])
    with pytest.raises(ValueError, match="old_log_probs"):
        GRPOBatch(ids, am, rm, adv, old_log_probs=batch.old_log_probs[:, 1:])
    b2 = GRPOBatch(ids, am, rm, adv)
    with pytest.raises(ValueError, match="ref_log_probs"):
        grpo_backward(model, b2, GRPOConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="const_len"):
        grpo_backward(model, b2, GRPOConfig(loss_mode="dr_grpo"))


def test_balanced_micro_batches_give_the_same_gradient():
    """balance=True only regroups rows: same selection => same NAT gradient (float64)."""
    model, batch = make()
    sel = select_tokens(batch.response_mask, "prefix", 0.5,
                        generator=torch.Generator().manual_seed(4), weight_dtype=torch.float64)
    grads, plans = [], []
    for balance in (False, True):
        model.zero_grad(set_to_none=True)
        cfg = GRPOConfig(design="prefix", loss_mode="seq-mean-token-mean", max_rows=2,
                         balance=balance, kl_coef=0.05)
        out = grpo_backward(model, batch, cfg, selection=sel)
        grads.append(flat_grad(model))
        plans.append(out.metrics["micro_batches"])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    assert plans[0] == plans[1]
    with pytest.raises(ValueError, match="balance"):
        GRPOConfig(balance=True)
    with pytest.raises(ValueError, match="balance"):
        GRPOConfig(balance=True, max_rows=2, max_tokens=10)


def test_tiny_causal_lm_moved_to_demo_models() -> None:
    """``rl.TinyCausalLM`` (a demo model) moved to ``nat_estimators.demo.models``; the old name
    still works for one release, with a DeprecationWarning naming the new place."""
    import nat_estimators.rl as rl
    from nat_estimators.demo.models import TinyCausalLM as Demo

    assert "TinyCausalLM" not in rl.__all__
    with pytest.warns(DeprecationWarning, match="nat_estimators.demo.models.TinyCausalLM"):
        assert rl.TinyCausalLM is Demo
    with pytest.raises(AttributeError, match="no attribute 'NoSuchModel'"):
        rl.NoSuchModel  # noqa: B018
