"""Driver side: NATSelector on verl DataProto batches, the cropped view, the quick route."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "verl", reason="verl lives in its own environment; .ci/run builds it and runs these tests")

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from verl import DataProto

import nat_estimators.integrations.verl as nat_verl
from nat_estimators.integrations.verl import (
    NATSelector,
    nat_options,
    route_into_rollout_is_weights,
)
from nat_estimators.rl import crop_mask


def _batch(seed=0, B=6, P=3, R=8):
    g = torch.Generator().manual_seed(seed)
    rlen = torch.randint(1, R + 1, (B,), generator=g)
    rm = (torch.arange(R)[None, :] < rlen[:, None]).long()
    am = torch.cat([torch.ones(B, P, dtype=torch.long), rm], 1)
    return DataProto.from_single_dict({
        "prompts": torch.randint(2, 9, (B, P), generator=g),
        "responses": torch.randint(2, 9, (B, R), generator=g) * rm,
        "attention_mask": am, "response_mask": rm.clone(),
        "advantages": torch.randn(B, 1, generator=g).expand(B, R) * rm,
        "old_log_probs": -torch.rand(B, R, generator=g),
        "entropys": torch.rand(B, R, generator=g),
    })


@pytest.mark.parametrize("design", ["prefix", "poisson", "systematic", "simple_random"])
def test_select_stores_weights_and_leaves_response_mask(design):
    b = _batch()
    before = b.batch["response_mask"].clone()
    sel = NATSelector(design, 0.5, seed=1).select(b)
    assert torch.equal(b.batch["response_mask"], before)
    w = b.batch["nat_weights"]
    assert torch.equal(w, sel.weights)
    assert bool(((w > 0) <= before.bool()).all())
    torch.testing.assert_close(w[w > 0], (1 / sel.pi)[w > 0].float())
    assert ("nat_crop_lengths" in b.batch.keys()) == (design == "prefix")


def test_one_generator_per_run_is_reproducible():
    a, b = NATSelector("poisson", 0.5, seed=7), NATSelector("poisson", 0.5, seed=7)
    draws_a = [a.select(_batch(s)).sample for s in range(3)]
    draws_b = [b.select(_batch(s)).sample for s in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(draws_a, draws_b, strict=True))
    assert not torch.equal(draws_a[0], NATSelector("poisson", 0.5, seed=8).select(_batch(0)).sample)
    # the generator advances: the same batch twice gives different selections
    c = NATSelector("poisson", 0.5, seed=7)
    assert not torch.equal(c.select(_batch(0)).sample, c.select(_batch(0)).sample)


@pytest.mark.parametrize("sizes", ["advantage", "entropy", "surprisal"])
def test_proportional_sizes_from_old_policy_fields(sizes):
    b = _batch(2)
    sel = NATSelector("poisson_proportional", 0.5, sizes=sizes, seed=0).select(b)
    m = b.batch["response_mask"].bool()
    assert bool((sel.pi[m] > 0).all())
    torch.testing.assert_close(sel.pi.sum(-1), 0.5 * m.sum(-1).double(), rtol=1e-9, atol=1e-9)


def test_cropped_view():
    b = _batch(3)
    sel = NATSelector("prefix", 0.5, seed=0, full_keep=0.1).select(b)
    am = b.batch["attention_mask"].clone()
    c = NATSelector.cropped(b)
    assert torch.equal(b.batch["attention_mask"], am)  # the original batch is untouched
    P = b.batch["prompts"].shape[1]
    assert torch.equal(c.batch["attention_mask"][:, :P], am[:, :P])
    assert torch.equal(c.batch["attention_mask"][:, P:].bool(),
                       crop_mask(am[:, P:], sel.crop_lengths))
    assert c.batch["response_mask"] is b.batch["response_mask"]
    # every selected token stays inside the cropped attention
    assert bool((sel.sample <= c.batch["attention_mask"][:, P:].bool()).all())
    assert int(c.batch["attention_mask"].sum()) < int(am.sum())


def test_bad_batches_are_refused():
    b = _batch()
    del b.batch["advantages"]
    with pytest.raises(ValueError, match="no 'advantages'"):
        NATSelector().select(b)
    b = _batch()
    del b.batch["response_mask"]
    with pytest.raises(ValueError, match="no 'response_mask'"):
        NATSelector().select(b)
    b = _batch()
    del b.batch["entropys"]
    with pytest.raises(ValueError, match="nat_old_entropy"):
        NATSelector("poisson_proportional", sizes="entropy").select(b)
    b.batch["nat_old_entropy"] = torch.rand(6, 8)  # where NATTrainerMixin keeps it
    NATSelector("poisson_proportional", sizes="entropy").select(b)
    with pytest.raises(ValueError, match="nat_crop_lengths"):
        NATSelector.cropped(_batch())
    with pytest.raises(TypeError, match="DataProto"):
        NATSelector().select({"response_mask": torch.ones(2, 2)})


@pytest.mark.parametrize("kwargs, match", [
    ({"design": "nope"}, "design must be one of"),
    ({"keep": 0.0}, "keep"),
    ({"keep": 1.5}, "keep"),
    ({"design": "poisson_proportional"}, "needs sizes"),
    ({"design": "poisson", "sizes": "entropy"}, "only used by the proportional"),
    ({"design": "poisson_proportional", "sizes": "x"}, "sizes must be one of"),
    ({"seed": 1.5}, "seed must be an int"),
    ({"min_keep": 1.0}, "min_keep"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NATSelector(**kwargs)


def test_quick_route():
    b = _batch()
    NATSelector("poisson", 0.5, seed=0).select(b)
    route_into_rollout_is_weights(b, {"entropy_coeff": 0.0, "use_kl_loss": False,
                                      "policy_loss": {"loss_mode": "vanilla"}})
    assert torch.equal(b.batch["rollout_is_weights"], b.batch["nat_weights"])
    for cfg in ({"entropy_coeff": 0.01}, {"use_kl_loss": True}):
        with pytest.raises(ValueError, match="only the policy term"):
            route_into_rollout_is_weights(b, cfg)
    with pytest.raises(ValueError, match="bypass_mode"):
        route_into_rollout_is_weights(b, {"policy_loss": {"loss_mode": "bypass_mode"}})
    with pytest.raises(ValueError, match="no 'nat_weights'"):
        route_into_rollout_is_weights(_batch())


def test_nat_options():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"nat": {"design": "prefix", "keep": 0.25}, "data": {"seed": 9}})
    assert nat_options(cfg) == {"design": "prefix", "keep": 0.25, "seed": 9}
    assert nat_options(OmegaConf.create({"data": {}})) == {}
    with pytest.raises(ValueError, match="unknown nat options"):
        nat_options(OmegaConf.create({"nat": {"kep": 0.5}}))
    NATSelector(**nat_options(cfg))


def test_untested_verl_version(monkeypatch):
    monkeypatch.delenv("NAT_ESTIMATORS_ALLOW_UNTESTED_VERL", raising=False)
    with pytest.raises(ImportError, match=r"verl>=0\.9,<0\.10 but verl 0\.10\.0 is installed"):
        nat_verl._check_verl_version("0.10.0")
    with pytest.raises(ImportError, match=r"nat-estimators\[verl\]"):
        nat_verl._check_verl_version("0.8.5")
    nat_verl._check_verl_version(__import__("verl").__version__)
    monkeypatch.setenv("NAT_ESTIMATORS_ALLOW_UNTESTED_VERL", "1")
    with pytest.warns(UserWarning, match="0.10.0"):
        nat_verl._check_verl_version("0.10.0")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=6), st.sampled_from(
    ["prefix", "poisson", "systematic", "simple_random"]), st.floats(0.05, 1.0),
    st.integers(0, 2**31 - 1))
def test_selection_invariants(lengths, design, keep, seed):
    """Weights live on the mask and equal 1/pi there; the cropped attention keeps the sample."""
    B, P, R = len(lengths), 2, 9
    rm = (torch.arange(R)[None, :] < torch.tensor(lengths)[:, None]).long()
    b = DataProto.from_single_dict({
        "prompts": torch.ones(B, P, dtype=torch.long), "responses": rm.clone(),
        "attention_mask": torch.cat([torch.ones(B, P, dtype=torch.long), rm], 1),
        "response_mask": rm.clone(), "advantages": torch.ones(B, R)})
    sel = NATSelector(design, keep, seed=seed).select(b)
    w = b.batch["nat_weights"]
    assert torch.equal(b.batch["response_mask"], rm)
    assert bool((w[~rm.bool()] == 0).all())
    assert torch.equal(w > 0, sel.sample)
    torch.testing.assert_close(w[sel.sample].double(), 1 / sel.pi[sel.sample], rtol=1e-6, atol=0)
    if design == "prefix":
        c = NATSelector.cropped(b).batch["attention_mask"][:, P:].bool()
        assert bool((sel.sample <= c).all())
        assert torch.equal(c.sum(-1), sel.crop_lengths)


# ----------------------------------------------------------------------------- optimal designs
@pytest.mark.parametrize("design", ["prefix_optimal", "poisson_optimal", "systematic_optimal"])
def test_optimal_designs_read_sizes_and_share_a_budget(design):
    """The variance-optimal designs take their sizes (second-moment proxies) from the batch;
    shared=True spends keep * sum N_i over the whole batch; prefix_optimal also crops."""
    b = _batch(3)
    sel = NATSelector(design, 0.5, sizes="surprisal", shared=True, seed=0).select(b)
    mask = b.batch["response_mask"].bool()
    pi = sel.design.inclusion_probabilities()
    torch.testing.assert_close(pi.sum().double(), 0.5 * mask.sum().double(), rtol=1e-9,
                               atol=1e-9)
    assert ("nat_crop_lengths" in b.batch.keys()) == design.startswith("prefix")
    per_row = NATSelector(design, 0.5, sizes="surprisal", seed=0).select(_batch(3))
    rows = per_row.design.inclusion_probabilities().sum(-1).double()
    torch.testing.assert_close(rows, 0.5 * mask.sum(-1).double(), rtol=1e-9, atol=1e-9)


def test_variance_ratio_controller_chooses_keep():
    """variance_ratio: each step's keep comes from the KappaController (between its bounds),
    predicted from the batch's advantages and sizes before the draw."""
    sel = NATSelector("prefix_optimal", 0.9, sizes="advantage", variance_ratio=0.5, shared=True,
                      seed=0)
    assert sel.controller is not None and sel.controller.shared
    for s in range(3):
        b = _batch(s)
        out = sel.select(b)
        rec = sel.controller.history[-1]
        assert 0.05 <= rec["kappa"] <= 0.9
        assert rec["bound"] != "" or abs(rec["ratio"] / 0.5 - 1) < 1e-4
        mask = b.batch["response_mask"].bool()
        torch.testing.assert_close(out.design.inclusion_probabilities().sum().double(),
                                   rec["kappa"] * mask.sum().double(), rtol=1e-9, atol=1e-9)
    assert nat_options({"nat": {"design": "prefix_optimal", "sizes": "advantage",
                                "variance_ratio": 0.5, "shared": True}})["shared"] is True


@pytest.mark.parametrize(("kw", "match"), [
    (dict(design="prefix", shared=True), "variance-optimal"),
    (dict(design="prefix_optimal"), "needs sizes"),
    (dict(design="prefix", sizes="advantage"), "proportional and optimal"),
    (dict(design="poisson", variance_ratio=0.0), "epsilon must be > 0"),
    (dict(design="poisson_optimal", sizes="entropy", shared=1), "shared must be a bool"),
])
def test_optimal_and_controller_options_are_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        NATSelector(**kw)
