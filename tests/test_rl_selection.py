"""select_tokens / Selection / ht_weights: the record, reproducibility, devices, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import nat_estimators as nat
from nat_estimators.rl import DESIGNS, Selection, ht_weights, select_tokens

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def response_mask(device="cpu"):
    m = torch.zeros(5, 16, dtype=torch.bool, device=device)
    m[0, 3:15] = True
    m[0, [6, 7]] = False  # tool tokens
    m[1, 10:16] = True  # left padded
    m[2, 2:5] = True
    m[2, 9:13] = True
    m[4, 1:16] = True  # row 3 has no eligible token
    return m


def sizes_for(m):
    g = torch.Generator(device=m.device).manual_seed(3)
    return 0.1 + torch.rand(m.shape, generator=g, device=m.device, dtype=torch.float64)


def draw(name, m, seed=0, **kw):
    g = torch.Generator(device=m.device).manual_seed(seed)
    if name.endswith("_proportional"):
        kw.setdefault("sizes", sizes_for(m))
    return select_tokens(m, name, 0.4, generator=g, **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", DESIGNS)
def test_selection_record(name, device):
    m = response_mask(device)
    sel = draw(name, m)
    assert isinstance(sel, Selection)
    for t in (sel.sample, sel.pi, sel.weights, sel.crop_lengths):
        assert t.device.type == m.device.type
    assert sel.sample.dtype == torch.bool and sel.pi.dtype == torch.float64
    assert sel.weights.dtype == torch.float32
    assert not (sel.sample & ~m).any()
    assert (sel.pi[m] > 0).all() and (sel.pi[~m] == 0).all()
    expected_w = torch.where(sel.sample, 1 / sel.pi.clamp(min=1e-300), torch.zeros_like(sel.pi))
    torch.testing.assert_close(sel.weights.double(), expected_w, rtol=1e-7, atol=0)
    torch.testing.assert_close(sel.design.inclusion_probabilities(), sel.pi)
    # crop length = last selected position + 1 (0 for rows with nothing selected)
    for i in range(m.shape[0]):
        idx = sel.sample[i].nonzero()
        want = int(idx.max()) + 1 if len(idx) else 0
        assert int(sel.crop_lengths[i]) == want
    assert (sel.sample[3] == 0).all()
    # expected size = keep * N_i for the budgeted designs
    n_i = m.sum(-1).double()
    es = sel.pi.sum(-1)
    if name == "simple_random":
        torch.testing.assert_close(es, torch.round(0.4 * n_i).clamp(min=(n_i > 0).double()))
    else:
        torch.testing.assert_close(es, 0.4 * n_i, rtol=1e-12, atol=1e-12)
    if name == "prefix":
        assert sel.cut_lengths is not None
        assert torch.equal(sel.cut_lengths, sel.sample.sum(-1))
        # kept tokens are the first L eligible ones
        rank = torch.cumsum(m.long(), -1)
        assert torch.equal(sel.sample, m & (rank <= sel.cut_lengths[:, None]))
    else:
        assert sel.cut_lengths is None


@pytest.mark.parametrize("name", DESIGNS)
def test_same_generator_state_same_selection(name):
    m = response_mask()
    a, b = draw(name, m, seed=7), draw(name, m, seed=7)
    assert torch.equal(a.sample, b.sample) and torch.equal(a.weights, b.weights)
    g = torch.Generator().manual_seed(11)
    state = g.get_state()
    kw = {"sizes": sizes_for(m)} if name.endswith("_proportional") else {}
    c = select_tokens(m, name, 0.4, generator=g, **kw)
    g.set_state(state)
    d = select_tokens(m, name, 0.4, generator=g, **kw)
    assert torch.equal(c.sample, d.sample)
    masks = {tuple(draw(name, m, seed=s).sample.flatten().tolist()) for s in range(6)}
    assert len(masks) > 1


def test_global_generator_and_weight_dtype():
    m = response_mask()
    torch.manual_seed(0)
    a = select_tokens(m, "poisson", 0.5, weight_dtype=torch.float64)
    torch.manual_seed(0)
    b = select_tokens(m, "poisson", 0.5, weight_dtype=torch.float64)
    assert torch.equal(a.sample, b.sample) and a.weights.dtype == torch.float64


def test_proportional_pi_follows_sizes():
    m = response_mask()
    x = sizes_for(m)
    sel = draw("poisson_proportional", m, sizes=x)
    for i in range(m.shape[0]):
        if m[i].any():
            torch.testing.assert_close(sel.pi[i][m[i]],
                                       nat.inclusion_probabilities(x[i][m[i]], 0.4 * m[i].sum()))


def test_prefix_budget_options():
    m = response_mask()
    sel = select_tokens(m, "prefix", 0.6, full_keep=0.2, min_keep=0.25,
                        generator=torch.Generator().manual_seed(0))
    assert float(sel.weights.max()) <= 1 / 0.2 + 1e-6
    # the first floor(0.25 N_i) eligible tokens are always kept
    rank = torch.cumsum(m.long(), -1)
    must = m & (rank <= torch.floor(0.25 * m.sum(-1, keepdim=True).double()))
    assert (sel.pi[must] == 1).all()


def test_given_design_and_from_sample():
    m = response_mask()
    d = nat.Systematic.from_fraction(0.5, mask=m)
    sel = select_tokens(m, d, generator=torch.Generator().manual_seed(1))
    assert sel.design is d
    replay = Selection.from_sample(d, sel.sample)
    assert torch.equal(replay.weights, sel.weights)
    with pytest.raises(ValueError, match="design"):
        select_tokens(m[:, 1:], d)


def test_rows_subset():
    m = response_mask()
    for name in DESIGNS:
        sel = draw(name, m)
        idx = torch.tensor([4, 0, 2])
        sub = sel.rows(idx)
        assert torch.equal(sub.sample, sel.sample[idx])
        assert torch.equal(sub.weights, sel.weights[idx])
        torch.testing.assert_close(sub.design.inclusion_probabilities(), sel.pi[idx])


def test_ht_weights():
    s = torch.tensor([[True, False, True]])
    pi = torch.tensor([[0.5, 0.25, 0.125]], dtype=torch.float64)
    assert ht_weights(s, pi).tolist() == [[2.0, 0.0, 8.0]]
    with pytest.raises(ValueError, match="pi"):
        ht_weights(s, torch.tensor([[0.5, 0.0, 0.5]], dtype=torch.float64),
                   mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="sample"):
        ht_weights(s, pi, mask=torch.tensor([[True, True, False]]))
    with pytest.raises(ValueError, match="dtype"):
        ht_weights(s, pi, dtype=torch.bfloat16)


@pytest.mark.parametrize("keep", [0, -0.1, 1.5, math.nan, math.inf, "half", True])
def test_bad_keep(keep):
    with pytest.raises(ValueError, match="keep"):
        select_tokens(response_mask(), "poisson", keep)


def test_bad_input():
    m = response_mask()
    with pytest.raises(ValueError, match="design"):
        select_tokens(m, "bernoulli", 0.5)
    with pytest.raises(ValueError, match="sizes"):
        select_tokens(m, "poisson_proportional", 0.5)
    with pytest.raises(ValueError, match="sizes"):
        select_tokens(m, "poisson", 0.5, sizes=sizes_for(m))
    x = sizes_for(m)
    x[0, 4] = 0.0
    with pytest.raises(ValueError, match="sizes"):
        select_tokens(m, "systematic_proportional", 0.5, sizes=x)
    with pytest.raises(ValueError, match="sizes"):
        select_tokens(m, "systematic_proportional", 0.5, sizes=sizes_for(m)[:, 1:])
    with pytest.raises(ValueError, match="weight_dtype"):
        select_tokens(m, "poisson", 0.5, weight_dtype=torch.float16)
    with pytest.raises(TypeError, match="generator"):
        select_tokens(m, "poisson", 0.5, generator=0)
    with pytest.raises(ValueError, match="response_mask"):
        select_tokens(m[0], "poisson", 0.5)
    with pytest.raises(ValueError, match="keep"):
        select_tokens(m, "prefix", 0.01, full_keep=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["poisson_proportional", "systematic_proportional"])
def test_proportional_pi_is_inclusion_probabilities_bit_for_bit(name, dtype):
    """select_tokens skips the input checks it has already made and calls the capping core
    directly: its pi is exactly the public inclusion_probabilities on the same rows (heavy-tailed
    sizes, so rows have certainty units; gaps; an empty row gets pi = 0)."""
    m = response_mask()
    g = torch.Generator().manual_seed(5)
    x = torch.exp(2.0 * torch.randn(m.shape, generator=g, dtype=torch.float64)).to(dtype)
    for keep in (0.3, 0.7, 1.0):
        sel = select_tokens(m, name, keep, sizes=x, generator=g)
        rows = m.any(-1)
        want = nat.inclusion_probabilities(x[rows].double(), keep * m[rows].sum(-1).double(),
                                           mask=m[rows])
        assert torch.equal(sel.pi[rows], want)
        assert (sel.pi[~rows] == 0).all()
    assert (sel.pi[m] == 1).all()  # keep 1: every eligible token is certain, exactly


def test_proportional_pi_underflow_is_refused():
    """Sizes spanning ~320 orders of magnitude would give pi = 0 (an infinite weight) to an
    eligible token: refused with what to do."""
    m = torch.ones(1, 3, dtype=torch.bool)
    x = torch.tensor([[1.0, 1.0, 5e-324]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"orders of magnitude.*clamp_min"):
        select_tokens(m, "poisson_proportional", 0.01, sizes=x)
