"""The training benchmark (benchmarks/training.py) and the shared demo task / rollout modules."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from benchmarks import training as tr  # noqa: E402
from benchmarks.training_report import write_page  # noqa: E402
from nat_estimators.demo.models import TinyCausalLM  # noqa: E402
from nat_estimators.demo.rollouts import (  # noqa: E402
    _KVCache,
    group_advantages,
    sample_responses,
)
from nat_estimators.demo.tasks import ModularWalk  # noqa: E402
from nat_estimators.rl import grpo_backward  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run() -> dict:
    torch.set_num_threads(1)
    return tr.run_training(tr.TrainingSetup.tiny())


# --------------------------------------------------------------------------- demo modules
def test_kv_cache_matches_full_forward() -> None:
    torch.manual_seed(0)
    model = TinyCausalLM(vocab_size=12, d_model=16, n_heads=2, n_layers=2, max_len=32,
                         dtype=torch.float64)
    prompts = torch.randint(0, 12, (3, 4))
    resp = torch.randint(0, 12, (3, 10))
    cache = _KVCache(model)
    logits = [cache.prefill(prompts)] + [cache.step(resp[:, i]) for i in range(9)]
    full = model(torch.cat([prompts, resp[:, :9]], -1))[:, 3:]
    torch.testing.assert_close(torch.stack(logits, 1), full, rtol=1e-10, atol=1e-10)


def test_sampler_same_law_with_and_without_cache() -> None:
    """Both paths feed identical probabilities to the same multinomial draws: same tokens."""
    torch.manual_seed(1)
    model = TinyCausalLM(vocab_size=7, d_model=16, n_heads=2, n_layers=1, max_len=32,
                         dtype=torch.float64)
    prompts = torch.randint(0, 7, (4, 3))
    a = sample_responses(model, prompts, max_new=12, generator=torch.Generator().manual_seed(0))
    b = sample_responses(model, prompts, max_new=12, generator=torch.Generator().manual_seed(0),
                         kv_cache=False)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_group_advantages_and_bad_input() -> None:
    a = group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), 2)
    assert torch.allclose(a[:2].sum(), torch.tensor(0.0)) and torch.equal(a[2:], torch.zeros(2))
    with pytest.raises(ValueError, match="divisible by group"):
        group_advantages(torch.ones(5), 2)


def test_modular_walk_reward_counts_rule_steps() -> None:
    task = ModularWalk(modulus=10, min_len=4, max_len=4)
    prompts = torch.tensor([[task.modulus + 3 - 1, 2, task.sep]])  # stride 3, start 2
    good = torch.tensor([[5, 8, 1, 4]])
    assert task.reward(prompts, good, torch.tensor([4])).item() == 1.0
    bad = torch.tensor([[5, 9, 2, 4]])  # step 2 wrong, step 3 follows 9, step 4 wrong
    assert task.reward(prompts, bad, torch.tensor([4])).item() == 0.5
    with pytest.raises(ValueError, match="min_len"):
        ModularWalk(min_len=10, max_len=5)


# --------------------------------------------------------------------------- the loop
def test_two_steps_per_arm_records_well_formed(tiny_run: dict) -> None:
    setup = tr.TrainingSetup.tiny()
    seed = tiny_run["seeds"][0]
    assert set(seed["arms"]) == {a.name for a in tr.ARMS}
    for name, rec in seed["arms"].items():
        for key in ("reward", "loss_tokens", "forward_tokens", "full_tokens", "fwd_bwd_s",
                    "optimizer_s", "rollout_s", "peak_bytes"):
            assert len(rec[key]) == setup.steps, (name, key)
        assert all(0.0 <= r <= 1.0 for r in rec["reward"])
        assert all(t > 0 and math.isfinite(t) for t in rec["fwd_bwd_s"])
        assert all(p is not None and p > 0 for p in rec["peak_bytes"])
        assert all(0 < s <= e for s, e in zip(rec["loss_tokens"], rec["eligible_tokens"],
                                               strict=True))
        assert all(f <= t for f, t in zip(rec["forward_tokens"], rec["full_tokens"],
                                          strict=True))
        assert len(rec["variance"]) == setup.steps
        for v in rec["variance"]:
            assert len(v["nat_var"]) == len(v["rollout_var"]) == setup.directions
            assert all(x >= 0 for x in v["nat_var"] + v["rollout_var"] + v["bias2"])
        assert 0.0 <= rec["final_reward"] <= 1.0
    full = seed["arms"]["full"]
    assert full["loss_tokens"] == full["eligible_tokens"]
    assert all(x == 0 for v in full["variance"] for x in v["nat_var"] + v["bias2"])
    # the first step's rollouts are identical across arms (paired seeds, same warm start)
    assert len({rec["reward"][0] for rec in seed["arms"].values()}) == 1


def test_summary_keys_and_json(tiny_run: dict, tmp_path) -> None:
    s = tiny_run["summary"]
    for arm in ("full", "prefix@0.5", "prefix@0.25", "poisson@0.5", "systematic@0.5",
                "shortcut@0.5", "hajek@0.5", "truncate@0.5"):
        for fig in ("final_reward", "final_reward_ci95", "tost_p", "time_ratio", "token_ratio",
                    "variance_ratio"):
            assert f"{arm}/{fig}" in s
    assert s["full/time_ratio"] == 1.0 and s["full/token_ratio"] == 1.0
    assert s["full/variance_ratio"] == 0.0
    assert s["prefix@0.25/token_ratio"] < s["full/token_ratio"]
    json.loads(json.dumps(tiny_run))  # serialisable
    page = tmp_path / "training.md"
    write_page(tiny_run, page)
    text = page.read_text()
    assert "quick run" in text and "prefix@0.5" in text
    assert (tmp_path / "training_curves.png").exists()


def test_same_seed_same_run(tiny_run: dict) -> None:
    again = tr.run_training(tr.TrainingSetup.tiny())
    for name, rec in tiny_run["seeds"][0]["arms"].items():
        other = again["seeds"][0]["arms"][name]
        for key in ("reward", "loss_tokens", "forward_tokens", "final_reward", "variance"):
            assert rec[key] == other[key], (name, key)


# --------------------------------------------------------------------------- controls
def _fixed_batch(seed: int = 0):
    setup = tr.TrainingSetup.tiny()
    task = setup.task()
    torch.manual_seed(seed)
    model = tr.make_policy(setup, task, seed, torch.device("cpu")).double()
    prompts, lengths = task.sample_prompts(3, generator=torch.Generator().manual_seed(seed))
    batch, _ = tr.rollout_batch(model, task, prompts, lengths, 2,
                                torch.Generator().manual_seed(seed))
    return setup, model, batch


def _grad(model, batch, cfg, sel) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    grpo_backward(model, batch, cfg, selection=sel)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_shortcut_gradient_differs_from_ht() -> None:
    """Same drawn selection: writing it into the mask changes the gradient (late tokens lose
    their 1/pi weights and the normalisers shrink); the HT arm with the same selection does not
    equal it."""
    setup, model, batch = _fixed_batch()
    arm_ht, arm_sc = tr.ARM_BY_NAME["prefix@0.5"], tr.ARM_BY_NAME["shortcut@0.5"]
    b_ht, sel_ht, cfg_ht = tr.arm_update(arm_ht, batch, setup, torch.Generator().manual_seed(3))
    b_sc, sel_sc, cfg_sc = tr.arm_update(arm_sc, batch, setup, torch.Generator().manual_seed(3))
    assert torch.equal(sel_sc.response_mask, sel_ht.sample)  # the same selection
    assert not torch.equal(sel_ht.sample, batch.response_mask)  # something was dropped
    g_ht, g_sc = _grad(model, b_ht, cfg_ht, sel_ht), _grad(model, b_sc, cfg_sc, sel_sc)
    assert (g_ht - g_sc).norm() > 1e-3 * g_ht.norm()
    # negative control: the same HT construction twice gives the same gradient
    torch.testing.assert_close(_grad(model, b_ht, cfg_ht, sel_ht), g_ht)


def test_projection_is_the_library_gradient() -> None:
    """The variance decomposition's per-token terms sum to the full-token gradient of
    grpo_backward projected on each direction (so the design variance is of the right terms)."""
    setup, model, batch = _fixed_batch(1)
    dirs = tr.random_directions(model, 2, 0)
    full = tr.ARM_BY_NAME["full"]
    b, sel, cfg = tr.arm_update(full, batch, setup, torch.Generator())
    g = _grad(model, b, cfg, sel)
    names = [n for n, _ in model.named_parameters()]
    for v in dirs:
        vv = torch.cat([v[n].flatten() for n in names])
        jv = tr.logprob_jvp(model, batch, v)
        y = tr.loss_coefficients(batch.response_mask, tr.LOSS_MODE, dtype=torch.float64) * (
            -batch.advantages[:, None] * jv)
        torch.testing.assert_close(y.sum(), (vv * g).sum(), rtol=1e-6, atol=1e-10)


def test_tost_accepts_equal_and_rejects_shifted() -> None:
    same = [0.001, -0.002, 0.0015, -0.001, 0.0005]
    assert tr.tost_paired(same, 0.03) < 0.05
    shifted = [x + 0.05 for x in same]
    assert tr.tost_paired(shifted, 0.03) > 0.5


def test_ht_arm_gradient_is_the_weighted_projection() -> None:
    """The prefix arm's update (grpo_backward on the padding-free VarlenCausalLM view) projected
    on a direction equals sum c_it w_it d_it with the selection's HT weights: the same per-token
    terms whose design variance the benchmark reports."""
    setup, model, batch = _fixed_batch(2)
    arm = tr.ARM_BY_NAME["prefix@0.5"]
    b, sel, cfg = tr.arm_update(arm, batch, setup, torch.Generator().manual_seed(5))
    model.zero_grad(set_to_none=True)
    grpo_backward(tr.VarlenCausalLM(model), b, cfg, selection=sel)
    names = [n for n, _ in model.named_parameters()]
    g = torch.cat([dict(model.named_parameters())[n].grad.flatten() for n in names])
    c = tr.loss_coefficients(batch.response_mask, tr.LOSS_MODE,
                             weights=sel.weights.double(), dtype=torch.float64)
    for v in tr.random_directions(model, 2, 1):
        vv = torch.cat([v[n].flatten() for n in names])
        d = -batch.advantages[:, None].double() * tr.logprob_jvp(model, batch, v)
        torch.testing.assert_close((c * d).sum(), (vv * g).sum(), rtol=1e-6, atol=1e-10)


# --------------------------------------------------------------------------- budget arms
def test_budget_arms_records_and_summary(tiny_run: dict) -> None:
    """The controlled arm chose kappa inside its bounds before each draw, observed every step
    of the tiny run (calibration refitted), and its summary has the controller figures."""
    setup = tr.TrainingSetup.tiny()
    rec = tiny_run["seeds"][0]["arms"]["controlled@eps0.25"]
    lo, hi = tr.CONTROLLER_BOUNDS
    assert all(lo <= k <= hi for k in rec["keep"]) and len(rec["keep"]) == setup.steps
    assert len(rec["controller"]) == setup.steps  # observe_every=1 in the tiny setup
    assert rec["controller"][0]["calibration_used"] == 1.0
    first = rec["controller"][0]
    expected = math.exp(math.log(first["realised"] / first["predicted"]))
    assert rec["controller"][1]["calibration_used"] == pytest.approx(expected)
    assert all(p > 0 for p in rec["proxy_s"]) and all(c > 0 for c in rec["control_s"])
    s = tiny_run["summary"]
    for fig in ("controller_variance_ratio_error", "controller_pooled_ratio",
                "controller_step_error_median", "controller_measurement_rse",
                "control_time_share"):
        assert f"controlled@eps0.25/{fig}" in s
    assert s["prefix_optimal@0.5/keep_mean"] == 0.5
    full = tiny_run["seeds"][0]["arms"]["full"]
    assert all(p == 0.0 for p in full["proxy_s"])


def test_second_moment_proxy_is_the_stated_formula() -> None:
    _, model, batch = _fixed_batch(3)
    m = tr.second_moment_proxy(model, batch)
    with torch.no_grad():
        logits = model(batch.input_ids, batch.attention_mask).double()
    p = torch.softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    p = torch.nn.functional.pad(p, (1, 0))
    c = tr.loss_coefficients(batch.response_mask, tr.LOSS_MODE, dtype=torch.float64)
    ref = torch.where(batch.response_mask,
                      (c * batch.advantages.double()[:, None] * (1 - p)) ** 2, 0.0)
    torch.testing.assert_close(m, ref)
    sizes = tr.design_sizes(m, batch.response_mask)
    assert bool((sizes[batch.response_mask] > 0).all())
    assert bool((sizes[~batch.response_mask] == 0).all())


def test_variance_terms_use_the_arms_design() -> None:
    """The budget arms' NAT-added variance is the exact design variance of their own design
    (optimal cut law with a batch budget, at the step's kappa), not RPC's: the same terms under
    RPC give a different number (negative control)."""
    setup, model, batch = _fixed_batch(4)
    m = tr.second_moment_proxy(model, batch)
    batch = tr.replace(batch, sizes=tr.design_sizes(m, batch.response_mask))
    dirs = tr.random_directions(model, 2, 0)
    arm = tr.ARM_BY_NAME["prefix_optimal@0.5"]
    got = tr.variance_terms(arm, model, batch, setup, dirs, torch.Generator(), 0.4)
    rm = batch.response_mask
    d = torch.stack([-batch.advantages[:, None].double() * tr.logprob_jvp(model, batch, v)
                     for v in dirs], -1)
    y = tr.loss_coefficients(rm, tr.LOSS_MODE, dtype=torch.float64)[..., None] * torch.where(
        rm[..., None], d, 0.0)
    des = tr.select_tokens(rm, "prefix_optimal", 0.4, sizes=batch.sizes, shared=True,
                           full_keep=tr.FULL_KEEP).design
    torch.testing.assert_close(torch.tensor(got["nat_var"], dtype=torch.float64),
                               tr.design_variance(y, des, axis=1).sum(0), rtol=1e-6, atol=0)
    rpc = tr.variance_terms(tr.ARM_BY_NAME["prefix@0.5"], model, batch, setup, dirs,
                            torch.Generator(), 0.4)
    assert got["nat_var"] != pytest.approx(rpc["nat_var"], rel=1e-3)
