"""The committed policies: small, loadable with ``weights_only=True``, trained (reward clearly up),
causal (cropping cannot change a kept token's log-probability), and fixed-seed rollouts are
reproducible."""

from __future__ import annotations

import pytest
import torch

from .policies import (
    POLICY_DIR,
    build_policy,
    load_manifest,
    load_policy,
    make_prompts,
    rollout,
)
from .train_policies import evaluate
from .world import POLICIES

MIN_GAIN = 0.3  # reward_after - reward_before recorded in the manifest
REPRO_TOL = 0.1  # |re-evaluated reward - manifest| (about 5 standard errors of a 480-answer mean)


@pytest.mark.parametrize("policy", POLICIES)
def test_manifest_and_weights(policy):
    """Statistic: manifest reward gain; threshold >= 0.3; weights < 1 MB, weights_only load."""
    entry = load_manifest()["policies"][policy]
    for key in ("architecture", "config", "seed", "steps", "device", "reward_before",
                "reward_after", "torch_version", "weights"):
        assert key in entry, key
    path = POLICY_DIR / entry["weights"]
    assert path.stat().st_size < 1_000_000
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values())
    assert entry["reward_after"] - entry["reward_before"] >= MIN_GAIN, entry


@pytest.mark.parametrize("policy", POLICIES)
def test_reward_reproduces(policy):
    """Statistic: mean reward of 8 sampled answers per target 1..60 (evaluation seed 1234) of the
    loaded policy and of its seeded initialisation; threshold |. - manifest| <= 0.1."""
    entry = load_manifest()["policies"][policy]
    model = load_policy(policy, dtype=torch.float32)
    assert abs(evaluate(model, torch.device("cpu")) - entry["reward_after"]) <= REPRO_TOL
    torch.manual_seed(entry["seed"])
    init = build_policy(entry["architecture"], entry["config"]).eval()
    assert abs(evaluate(init, torch.device("cpu")) - entry["reward_before"]) <= REPRO_TOL


@pytest.mark.parametrize("policy", POLICIES)
def test_causal_and_reproducible(policy):
    """Outputs at a position do not depend on later tokens (exact, float64); the same rollout
    seed gives the same batch."""
    model = load_policy(policy)
    g = torch.Generator().manual_seed(3)
    ids = torch.cat([make_prompts(torch.tensor([17, 42])),
                     torch.randint(0, 10, (2, 9), generator=g)], -1)
    full = model(ids)
    for cut in (4, 7, 11):
        assert torch.equal(model(ids[:, :cut]), full[:, :cut]) or torch.allclose(
            model(ids[:, :cut]), full[:, :cut], rtol=0, atol=1e-12)
    a = rollout(model, torch.tensor([5, 30]), group=3, generator=torch.Generator().manual_seed(9))
    b = rollout(model, torch.tensor([5, 30]), group=3, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.responses, b.responses) and torch.equal(a.advantages, b.advantages)
