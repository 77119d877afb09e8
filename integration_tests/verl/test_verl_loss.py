"""nat_ppo_loss against verl's own ppo_loss: exact at keep 1, unbiased below, bad input refused."""

from __future__ import annotations

import pytest

verl = pytest.importorskip(
    "verl", reason="verl lives in its own environment; .ci/run builds it and runs these tests")

import torch  # noqa: E402
from helpers import AGG_MODES, actor_config, micro_batch, model_output  # noqa: E402
from verl.workers.utils.losses import ppo_loss  # noqa: E402

from nat_estimators.integrations.verl import (  # noqa: E402
    REFUSED_LOSS_MODES,
    TOKEN_LEVEL_LOSS_MODES,
    check_actor_config,
    nat_ppo_loss,
)

LENGTHS = [5, 3, 6, 1]


def _loss_and_grads(fn, cfg, td, lp, ent):
    loss, metrics = fn(cfg, model_output(td, lp, ent), td)
    g_lp, g_ent = torch.autograd.grad(loss, [lp, ent])
    return loss.detach(), g_lp, g_ent, metrics


@pytest.mark.parametrize("loss_mode", TOKEN_LEVEL_LOSS_MODES)
@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("rollout_is", [False, True])
def test_keep_one_equals_ppo_loss(loss_mode, agg, rollout_is):
    """Every weight 1: the value and both gradients equal verl's ppo_loss bit for bit."""
    cfg = actor_config(loss_mode, agg)
    td, lp, ent = micro_batch(LENGTHS, seed=1, rollout_is=rollout_is, weights=None)
    ref = _loss_and_grads(ppo_loss, cfg, td, lp, ent)
    td["nat_weights"] = td["response_mask"].float()
    got = _loss_and_grads(nat_ppo_loss, cfg, td, lp, ent)
    for a, b in zip(ref[:3], got[:3], strict=True):
        assert torch.equal(a, b), (a, b)
    assert got[3]["nat/kept_fraction"].aggregate() == 1.0


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("dp", [(2, 40.0, 9.0), (1, 17.0, 4.0)])
def test_keep_one_with_global_denominators(agg, dp):
    """verl's global batch_num_tokens / global_batch_size / dp_size pass through unchanged."""
    dp_size, n_tok, n_seq = dp
    cfg = actor_config("vanilla", agg, loss_scale_factor=12)
    td, lp, ent = micro_batch(LENGTHS, seed=2, dp_size=dp_size, batch_num_tokens=n_tok,
                              global_batch_size=n_seq)
    ref = _loss_and_grads(ppo_loss, cfg, td, lp, ent)
    td["nat_weights"] = td["response_mask"].float()
    got = _loss_and_grads(nat_ppo_loss, cfg, td, lp, ent)
    for a, b in zip(ref[:3], got[:3], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", sorted(REFUSED_LOSS_MODES))
def test_refused_loss_modes(mode):
    with pytest.raises(ValueError, match=f"loss_mode='{mode}'"):
        check_actor_config(actor_config(mode if mode != "bypass_mode" else "bypass_mode"))
    td, lp, ent = micro_batch(LENGTHS, weights=torch.ones(4, 6))
    with pytest.raises(ValueError, match="NAT cannot use"):
        nat_ppo_loss(actor_config(mode), model_output(td, lp, ent), td)


def test_refused_unknown_mode():
    with pytest.raises(ValueError, match="not known to be token-level"):
        check_actor_config({"policy_loss": {"loss_mode": "my_custom"}})


def test_every_registered_mode_is_classified():
    """A verl release that registers a new policy loss must be classified before use."""
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    assert set(POLICY_LOSS_REGISTRY) == set(TOKEN_LEVEL_LOSS_MODES) | set(REFUSED_LOSS_MODES)


def test_missing_weights_and_bad_shape():
    cfg = actor_config()
    td, lp, ent = micro_batch(LENGTHS)
    with pytest.raises(ValueError, match="no 'nat_weights'"):
        nat_ppo_loss(cfg, model_output(td, lp, ent), td)
    td["nat_weights"] = torch.ones(4, 5, dtype=torch.float32)  # responses are (4, 6)
    with pytest.raises(ValueError, match=r"nat_weights has shape \(4, 5\)"):
        nat_ppo_loss(cfg, model_output(td, lp, ent), td)
    td2, _, _ = micro_batch(LENGTHS, width=7)
    bad = torch.ones(4, 7)
    bad[0, 0] = -1.0
    td2["nat_weights"] = bad
    lp2 = torch.zeros(4, 7, requires_grad=True)
    with pytest.raises(ValueError, match="finite, non-negative"):
        nat_ppo_loss(cfg, model_output(td2, lp2, lp2), td2)


def test_unselected_positions_are_never_read():
    """Garbage (inf, NaN) at unselected positions — what a cropped forward leaves — is ignored."""
    cfg = actor_config("vanilla", "seq-mean-token-mean")
    td, lp, ent = micro_batch(LENGTHS, seed=3)
    w = td["response_mask"].float() * 2.0
    w[:, 2:] = 0.0
    td["nat_weights"] = w
    clean = _loss_and_grads(nat_ppo_loss, cfg, td, lp, ent)
    lp2 = lp.detach().clone()
    ent2 = ent.detach().clone()
    lp2[:, 2:] = float("nan")
    ent2[:, 2:] = float("inf")
    lp2.requires_grad_(True)
    ent2.requires_grad_(True)
    dirty = _loss_and_grads(nat_ppo_loss, cfg, td, lp2, ent2)
    assert torch.equal(clean[0], dirty[0])
    assert torch.equal(clean[1][:, :2], dirty[1][:, :2])
    assert bool(torch.isfinite(dirty[1]).all()) and bool((dirty[1][:, 2:] == 0).all())
