"""Crop + pack + scatter and the selected-position head reproduce the full forward pass."""

from __future__ import annotations

import pytest
import torch

from nat_estimators.demo.models import TinyCausalLM
from nat_estimators.rl import (
    crop_mask,
    pack_rows,
    select_tokens,
    token_logprobs,
)

V = 13


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_batch(seed=0):
    """Rows = prompt + response, mixed left/right padding, tool tokens, one empty response."""
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 14
    ids = torch.randint(0, V, (B, T), generator=g)
    am = torch.zeros(B, T, dtype=torch.bool)
    rm = torch.zeros(B, T, dtype=torch.bool)
    am[0, :12], rm[0, 3:12] = True, True
    rm[0, [5, 6]] = False  # tool tokens
    am[1, 4:], rm[1, 7:] = True, True  # left padded
    am[2, :], rm[2, 2:] = True, True
    am[3, 2:9], rm[3, 5:9] = True, True  # padded on both sides
    am[4, :5] = True  # prompt only
    am[5, 6:], rm[5, 8:] = True, True
    rm[5, 10] = False
    return ids, am, rm


def model64(seed=0):
    torch.manual_seed(seed)
    return TinyCausalLM(vocab_size=V, d_model=16, n_heads=2, n_layers=2, max_len=32,
                        dtype=torch.float64)


def full_logprobs(model, ids, am):
    """Reference: full forward, full head, shifted log-softmax (independent of the package)."""
    logits = model(ids, am)
    logp = torch.log_softmax(logits, -1)
    out = torch.zeros(ids.shape, dtype=logp.dtype)
    out[:, 1:] = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    return out


def coverage(plan, shape):
    """How many times each position appears in the plan's micro-batches."""
    seen = torch.zeros(shape, dtype=torch.long)
    for mb in plan:
        b, t = mb.shape
        rr = mb.rows[:, None].expand(b, t)
        seen.index_put_((rr[mb.valid], mb.index[mb.valid]), torch.ones(()).long(),
                        accumulate=True)
    return seen


def packed_logprobs(model, plan, ids, selected):
    """Packed forward, LM head only at the selected positions, scattered back to (B, T)."""
    parts = []
    for mb in plan:
        mids = mb.gather(ids)
        hidden = model.backbone(mids, mb.valid)
        lp, _ = token_logprobs(hidden, model.head, mids, mb.gather(selected, fill=False))
        parts.append(lp)
    return plan.scatter(parts)


@pytest.mark.parametrize("max_tokens", [None, 20, 1])
@pytest.mark.parametrize("design", ["prefix", "poisson", "systematic"])
def test_crop_pack_scatter_matches_full_forward(design, max_tokens):
    ids, am, rm = make_batch()
    model = model64()
    sel = select_tokens(rm, design, 0.5, generator=torch.Generator().manual_seed(2))
    keep = crop_mask(am, sel.crop_lengths)
    plan = pack_rows(keep, max_tokens=max_tokens)
    # every kept position appears exactly once; budget respected
    for mb in plan:
        b, t = mb.shape
        assert max_tokens is None or b * t <= max(max_tokens, t)
    assert torch.equal(coverage(plan, ids.shape), keep.long())
    # packed forward, head only at the selected positions
    got = packed_logprobs(model, plan, ids, sel.sample)
    want = full_logprobs(model, ids, am)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got[sel.sample], want[sel.sample], rtol=0, atol=1e-10)
    assert (got[~sel.sample] == 0).all()
    if design == "prefix":
        assert plan.real_tokens < int(am.sum())


def test_hidden_states_of_packed_rows_match():
    ids, am, _ = make_batch()
    model = model64(1)
    full = model.backbone(ids, am)
    crop = torch.tensor([10, 14, 6, 7, 3, 12])
    plan = pack_rows(crop_mask(am, crop), max_tokens=30)
    packed = plan.scatter([model.backbone(mb.gather(ids), mb.valid) for mb in plan])
    keep = crop_mask(am, crop)
    torch.testing.assert_close(packed[keep], full[keep], rtol=0, atol=1e-10)


def test_left_right_padding_invariance():
    model = model64(2)
    ids = torch.randint(0, V, (1, 6))
    right = torch.zeros(1, 9, dtype=torch.long)
    right[0, :6] = ids
    left = torch.zeros(1, 9, dtype=torch.long)
    left[0, 3:] = ids
    am_r = torch.zeros(1, 9, dtype=torch.bool)
    am_r[0, :6] = True
    am_l = torch.zeros(1, 9, dtype=torch.bool)
    am_l[0, 3:] = True
    hr = model.backbone(right, am_r)[0, :6]
    hl = model.backbone(left, am_l)[0, 3:]
    torch.testing.assert_close(hr, hl, rtol=0, atol=1e-12)


def test_selected_head_equals_full_head_with_entropy_and_grad():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, dtype=torch.float64)
    hidden = torch.randn(3, 7, 8, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 11, (3, 7))
    pos = torch.rand(3, 7) < 0.5
    pos[:, 0] = False
    lp, ent = token_logprobs(hidden, head, ids, pos, return_entropy=True, temperature=0.7)
    logp = torch.log_softmax(head(hidden) / 0.7, -1)
    want = torch.zeros(3, 7, dtype=torch.float64)
    want[:, 1:] = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    want_ent = torch.zeros(3, 7, dtype=torch.float64)
    want_ent[:, 1:] = -(logp.exp() * logp).sum(-1)[:, :-1]
    torch.testing.assert_close(lp[pos], want[pos], rtol=0, atol=1e-12)
    torch.testing.assert_close(ent[pos], want_ent[pos], rtol=0, atol=1e-12)
    assert (lp[~pos] == 0).all() and (ent[~pos] == 0).all()
    # gradient of a weighted sum equals the full-head gradient of the same sum
    w = torch.rand(3, 7, dtype=torch.float64) * pos
    g1 = torch.autograd.grad((w * lp).sum(), hidden)[0]
    g2 = torch.autograd.grad((w * want).sum(), hidden)[0]
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-12)


def test_bf16_head_gives_float32_logprobs():
    head = torch.nn.Linear(4, 5).to(torch.bfloat16)
    hidden = torch.randn(1, 3, 4, dtype=torch.bfloat16)
    lp, _ = token_logprobs(hidden, head, torch.tensor([[1, 2, 3]]),
                           torch.tensor([[False, True, True]]))
    assert lp.dtype == torch.float32


def test_scatter_is_differentiable():
    keep = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    plan = pack_rows(keep, max_tokens=2)
    vals = [torch.randn(*mb.shape, requires_grad=True) for mb in plan]
    out = plan.scatter(vals)
    out.sum().backward()
    for mb, v in zip(plan, vals, strict=True):
        assert torch.equal(v.grad, mb.valid.float())


def test_pack_sorting_and_limits():
    keep = torch.zeros(5, 10, dtype=torch.bool)
    for i, n in enumerate([3, 10, 0, 7, 2]):
        keep[i, :n] = True
    plan = pack_rows(keep, max_tokens=14, max_rows=2)
    assert [mb.rows.tolist() for mb in plan] == [[1], [3, 0], [4]]
    assert plan.padded_tokens == 10 + 14 + 2 and plan.real_tokens == 22
    assert len(pack_rows(keep)) == 1
    assert len(pack_rows(torch.zeros(2, 3, dtype=torch.bool))) == 0


def test_bad_input():
    am = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="crop_lengths"):
        crop_mask(am, torch.tensor([3, 6]))  # a cut beyond the row length
    with pytest.raises(ValueError, match="crop_lengths"):
        crop_mask(am, torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="crop_lengths"):
        crop_mask(am, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="crop_lengths"):
        crop_mask(am, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="max_tokens"):
        pack_rows(am, max_tokens=0)
    with pytest.raises(ValueError, match="max_rows"):
        pack_rows(am, max_rows=0)
    plan = pack_rows(am, max_tokens=5)
    with pytest.raises(ValueError, match="values"):
        plan.scatter([torch.zeros(1, 5)])
    head = torch.nn.Linear(4, 5)
    with pytest.raises(ValueError, match="positions"):
        token_logprobs(torch.randn(2, 5, 4), head, torch.zeros(2, 5, dtype=torch.long), am)
    with pytest.raises(ValueError, match="hidden"):
        token_logprobs(torch.randn(2, 4, 4), head, torch.zeros(2, 5, dtype=torch.long),
                       am & False)


@pytest.mark.parametrize("max_rows", [1, 2, 4])
@pytest.mark.parametrize("design", ["prefix", "poisson"])
def test_balanced_packing_matches_full_forward(design, max_rows):
    """balance=True: every kept position once, <= max_rows rows per micro-batch, the fewest
    micro-batches, loads within one row of each other (greedy LPT), and exact log-probs."""
    ids, am, rm = make_batch(3)
    model = model64(2)
    sel = select_tokens(rm, design, 0.5, generator=torch.Generator().manual_seed(5))
    keep = crop_mask(am, sel.crop_lengths)
    plan = pack_rows(keep, max_rows=max_rows, balance=True)
    n_rows = int((keep.sum(-1) > 0).sum())
    assert len(plan) == -(-n_rows // max_rows)
    assert all(mb.shape[0] <= max_rows for mb in plan)
    assert torch.equal(coverage(plan, ids.shape), keep.long())
    loads = [int(mb.valid.sum()) for mb in plan]
    if len(loads) > 1:
        assert max(loads) - min(loads) <= int(keep.sum(-1).max())
    got = packed_logprobs(model, plan, ids, sel.sample)
    want = full_logprobs(model, ids, am)
    torch.testing.assert_close(got[sel.sample], want[sel.sample], rtol=0, atol=1e-10)


def test_balance_needs_max_rows():
    _, am, _ = make_batch()
    with pytest.raises(ValueError, match="balance"):
        pack_rows(am, max_tokens=10, balance=True)
    with pytest.raises(ValueError, match="balance"):
        pack_rows(am, balance="yes")


def test_fused_target_logprob_value_and_gradients():
    """The hand-written backward of the selected-position log-prob equals autograd's
    log_softmax + gather: values, first and second derivatives (gradcheck/gradgradcheck), with
    and without create_graph."""
    from nat_estimators.rl.heads import _TargetLogProb

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 11, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 11, (7,), generator=g)
    got = _TargetLogProb.apply(logits, target)
    want = torch.log_softmax(logits, -1).gather(-1, target[:, None])[:, 0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    w = torch.randn(7, generator=g, dtype=torch.float64)
    (g1,) = torch.autograd.grad((got * w).sum(), logits)
    (g2,) = torch.autograd.grad((want * w).sum(), logits)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(lambda x: _TargetLogProb.apply(x, target), (logits,))
    assert torch.autograd.gradgradcheck(lambda x: _TargetLogProb.apply(x, target), (logits,))
