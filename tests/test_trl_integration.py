"""``NATGRPOTrainer`` against the installed TRL ``GRPOTrainer`` (CI installs the ``[trl]`` extra).

A Qwen2-shaped model of a few thousand parameters is built in memory and saved to a temporary
folder (TRL rebuilds the reference model from the path when ``beta > 0``); the tokenizer is a local
character tokenizer.  What is proven:

* exactness at ``nat_keep=1``: loss and gradient of every token-level ``loss_type`` equal
  ``GRPOTrainer``'s on identical inputs, for gradient accumulation {1, 2} x steps per generation
  x ``beta`` {0, 0.04}, and with the options that enter the loss (``top_entropy_quantile``, the
  entropy bonus, ``delta``, the tool mask, the off-policy mask, the KL bias correction);
* unbiasedness at ``nat_keep=0.5`` for every design, by exact enumeration of each design's
  samples on a tiny batch: the probability-weighted mean gradient equals ``GRPOTrainer``'s; the same
  enumeration shows the shortcut of writing the selection into ``completion_mask`` biased;
* the savings are real (cropped forward widths, rows grouped by kept length, LM-head labels only
  at selected positions) without changing a window's gradient;
* two gloo processes give the single-process gradient for the same selections;
* short real trainings for every design, and ``GRPOTrainer``'s trajectory at ``nat_keep=1``;
* bad input is refused with the field named.
"""

from __future__ import annotations

import doctest
import math
import os
import socket
import subprocess
import sys

import pytest

trl = pytest.importorskip("trl", reason="the TRL integration needs the [trl] extra")
torch = pytest.importorskip("torch")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from nat_estimators.demo import hf_tiny  # noqa: E402
from nat_estimators.integrations import trl as nat_trl  # noqa: E402
from nat_estimators.integrations.trl import NATGRPOConfig, NATGRPOTrainer  # noqa: E402
from nat_estimators.rl import DESIGNS, Selection, needs_sizes  # noqa: E402

# transformers 5 deprecates the gradient_checkpointing names that TRL 1.16 still uses
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*checkpointing.*deprecated:FutureWarning",
                               "ignore:OMP_NUM_THREADS:UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo")
C = 6  # max completion length


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tok():
    return hf_tiny.char_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("tiny_qwen2")
    hf_tiny.tiny_qwen2(tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def reward(completions, **kwargs):
    return [float(sum(map(ord, c)) % 5) for c in completions]


def dataset(n=8):
    return Dataset.from_dict({"prompt": ["ab", "cd", "efg", "h"] * (n // 4)})


def make_trainer(cls, model_dir, tok, tmp, **kw):
    base = dict(output_dir=str(tmp), use_cpu=True, per_device_train_batch_size=4,
                num_generations=4, max_completion_length=C, report_to="none",
                save_strategy="no", disable_tqdm=True, logging_steps=1, seed=0)
    base.update(kw)
    cfg = (NATGRPOConfig if cls is NATGRPOTrainer else GRPOConfig)(**base)
    return cls(model=model_dir, reward_funcs=reward, args=cfg, train_dataset=dataset(),
               processing_class=tok)


def make_batch(trainer, *, B=8, P=3, seed=0, old=True, tool=False, lengths=None):
    """A scored generation batch as ``_generate_and_score_completions`` returns it."""
    g = torch.Generator().manual_seed(seed)
    V = trainer.model.config.vocab_size
    prompt_ids = torch.randint(2, V, (B, P), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[1, :1] = 0  # left padding
    prompt_mask[B - 3, :2] = 0 if B > 3 else 1
    prompt_ids = prompt_ids.masked_fill(prompt_mask == 0, 0)
    if lengths is None:
        lengths = [6, 3, 5, 1, 6, 2, 4, 6][:B]
    t = torch.arange(C)
    completion_mask = (t[None, :] < torch.tensor(lengths)[:, None]).long()
    completion_ids = torch.randint(2, V, (B, C), generator=g).masked_fill(completion_mask == 0, 0)
    out = {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "advantages": torch.randn(B, generator=g),
    }
    loss_mask = completion_mask
    if tool:
        tm = torch.ones(B, C, dtype=torch.long)
        tm[0, 2:4] = 0
        tm[4, 1] = 0
        out["tool_mask"] = tm
        loss_mask = completion_mask * tm
    out["num_items_in_batch"] = loss_mask.sum()
    ids = torch.cat([prompt_ids, completion_ids], 1)
    am = torch.cat([prompt_mask, completion_mask], 1)
    with torch.no_grad():
        lp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, am, C)
    if old:
        out["old_per_token_logps"] = lp + 0.3 * torch.randn(B, C, generator=g)
    out["ref_per_token_logps"] = lp + 0.3 * torch.randn(B, C, generator=g)
    return out


def split(batch, n):
    return trl.trainer.utils.split_tensor_dict(batch, n)


def flat_grad(model):
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
        for p in model.parameters()
    ])


def run_window(trainer, micro_batches, *, ga):
    """Losses and the summed gradient of consecutive micro-batches (one accumulation window)."""
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    trainer.current_gradient_accumulation_steps = ga
    losses = []
    for mb in micro_batches:
        loss = trainer.compute_loss(trainer.model, mb)
        loss.backward()
        losses.append(loss.detach())
    return torch.stack(losses), flat_grad(trainer.model)


def windows(n, ga, spg):
    if ga % spg == 0:
        return [list(range(n))]
    return [list(range(i, i + ga)) for i in range(0, n, ga)]


def set_schedule(trainer, loss_type, ga, spg):
    trainer.loss_type = loss_type
    trainer.args.gradient_accumulation_steps = ga
    trainer.args.steps_per_generation = spg


@pytest.fixture(scope="module")
def pairs(model_dir, tok, tmp_path_factory):
    """(GRPOTrainer, NATGRPOTrainer at keep 1) for each beta, built once."""
    tmp = tmp_path_factory.mktemp("pairs")
    out = {}
    for beta in (0.0, 0.04):
        out[beta] = (
            make_trainer(GRPOTrainer, model_dir, tok, tmp, beta=beta),
            make_trainer(NATGRPOTrainer, model_dir, tok, tmp, beta=beta, nat_keep=1.0,
                         nat_group_rows=False),
        )
    return out


def assert_same(a, b, what):
    torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-7, msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------- exactness
SCHEDULES = [(1, 1), (1, 2), (2, 2), (2, 1), (2, 4)]  # (gradient accumulation, steps per gen)


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("ga,spg", SCHEDULES)
def test_keep_one_equals_grpo_trainer(pairs, beta, ga, spg):
    """Every loss_type: per-micro-batch losses and window gradients equal GRPOTrainer's."""
    base, natt = pairs[beta]
    batch = make_batch(base, old=spg > ga, seed=ga * 10 + spg)
    sel = natt._nat_draw(batch)
    assert bool((sel.weights[batch["completion_mask"].bool()] == 1).all())
    nat_batch = {**batch, **natt._nat_fields(sel)}
    for loss_type in LOSS_TYPES:
        for t in (base, natt):
            set_schedule(t, loss_type, ga, spg)
        ref_mbs, nat_mbs = split(batch, spg), split(nat_batch, spg)
        for win in windows(spg, ga, spg):
            want_l, want_g = run_window(base, [ref_mbs[i] for i in win], ga=ga)
            got_l, got_g = run_window(natt, [nat_mbs[i] for i in win], ga=ga)
            assert_same(got_l, want_l, f"{loss_type} loss")
            assert_same(got_g, want_g, f"{loss_type} gradient")
            assert float(want_g.abs().max()) > 0


EXTRAS = {
    "entropy_quantile_bonus_tool": dict(top_entropy_quantile=0.5, entropy_coef=0.05),
    "delta_offpolicy_nobiascorr": dict(delta=1.2, off_policy_mask_threshold=0.05, beta=0.04,
                                       use_bias_correction_kl=False, epsilon=0.1),
    "entropy_bonus_cropped": dict(entropy_coef=0.05, beta=0.04),
}


@pytest.mark.parametrize("extra", list(EXTRAS))
def test_keep_one_equals_grpo_trainer_with_loss_options(model_dir, tok, tmp_path, extra):
    kw = EXTRAS[extra]
    base = make_trainer(GRPOTrainer, model_dir, tok, tmp_path, **kw)
    natt = make_trainer(NATGRPOTrainer, model_dir, tok, tmp_path, nat_keep=1.0, **kw)
    assert natt._nat_full_forward == (extra != "entropy_bonus_cropped")
    batch = make_batch(base, tool=True, seed=3)
    nat_batch = {**batch, **natt._nat_fields(natt._nat_draw(batch))}
    for loss_type in LOSS_TYPES:
        for t in (base, natt):
            set_schedule(t, loss_type, 2, 2)
        want_l, want_g = run_window(base, split(batch, 2), ga=2)
        got_l, got_g = run_window(natt, split(nat_batch, 2), ga=2)
        assert_same(got_l, want_l, f"{extra} {loss_type} loss")
        assert_same(got_g, want_g, f"{extra} {loss_type} gradient")
    # TRL's metrics are logged under the same names
    assert set(base._metrics["train"]) <= set(natt._metrics["train"])


def test_keep_one_training_follows_grpo_trainer(model_dir, tok, tmp_path):
    """Whole trainings (generation, shuffling, num_iterations=2, regrouped rows): same weights."""
    kw = dict(max_steps=2, gradient_accumulation_steps=2, steps_per_generation=4,
              per_device_train_batch_size=2, num_iterations=2, beta=0.04, learning_rate=1e-2)
    base = make_trainer(GRPOTrainer, model_dir, tok, tmp_path, **kw)
    base.train()
    natt = make_trainer(NATGRPOTrainer, model_dir, tok, tmp_path, nat_keep=1.0, **kw)
    natt.train()
    for (n, p), q in zip(base.model.named_parameters(), natt.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
    moved = sum(float((p - q).detach().abs().max()) for p, q in zip(
        base.model.parameters(), hf_tiny.tiny_qwen2(tok, seed=0).parameters(), strict=True))
    assert moved > 1e-3  # the trainings did update the weights
    logs = natt.state.log_history[0]
    assert logs["nat/kept_fraction"] == 1.0 and logs["nat/max_weight"] == 1.0
    assert "clip_ratio/region_mean" in logs and "entropy" in logs


# ----------------------------------------------------------------------------- unbiasedness
def _support(design):
    """Exact support of a design on a tiny mask: list of (sample (B, C) bool, probability)."""
    m = design.mask
    pi = design.inclusion_probabilities().to(torch.float64)
    support = [(s, p) for p, s in design.enumerate_support()]
    # the enumeration is the design: probabilities sum to 1 and reproduce pi
    total = sum(p for _, p in support)
    marg = sum(p * s.to(torch.float64) for s, p in support)
    assert abs(total - 1) < 1e-9
    torch.testing.assert_close(marg, pi * m, rtol=0, atol=1e-9)
    return support


@pytest.fixture(scope="module")
def unbiased_pair(model_dir, tok, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unbiased")
    # float32 arithmetic (no bf16 autocast, the CPU default): the expectation is then exact
    # up to float32 rounding instead of bf16's
    kw = dict(beta=0.04, entropy_coef=0.05, bf16=False)
    base = make_trainer(GRPOTrainer, model_dir, tok, tmp, **kw)
    natt = make_trainer(NATGRPOTrainer, model_dir, tok, tmp, nat_keep=0.5,
                        nat_design="poisson_proportional", nat_sizes="entropy", **kw)
    return base, natt


@pytest.mark.parametrize("design", DESIGNS)
def test_expected_gradient_equals_grpo_trainer(unbiased_pair, design):
    """E over the design's samples of the NAT gradient = GRPOTrainer's gradient, exactly."""
    base, natt = unbiased_pair
    natt.args.nat_design = design
    natt.args.nat_sizes = "entropy" if needs_sizes(design) else None
    natt.args.nat_full_keep = 0.2
    batch = make_batch(base, B=2, P=2, lengths=[3, 3], seed=7)
    for t in (base, natt):
        set_schedule(t, "dapo", 1, 1)
    want = run_window(base, [batch], ga=1)[1]
    d = natt._nat_draw(batch).design
    mean = torch.zeros_like(want)
    short = torch.zeros_like(want)
    for sample, p in _support(d):
        sel = Selection.from_sample(d, sample)
        mean += p * run_window(natt, [{**batch, **natt._nat_fields(sel)}], ga=1)[1]
        if design == "prefix":  # the shortcut: the selection written into completion_mask
            cut = {**batch, "completion_mask": sample.long(),
                   "num_items_in_batch": sample.sum()}
            short += p * run_window(base, [cut], ga=1)[1]
    torch.testing.assert_close(mean, want, rtol=1e-4, atol=1e-6)
    if design == "prefix":
        rel = float((short - want).norm() / want.norm())
        assert rel > 0.05, f"the completion_mask shortcut should be biased, rel. error {rel}"


def test_kept_fraction_and_weights_follow_the_design(model_dir, tok, tmp_path):
    natt = make_trainer(NATGRPOTrainer, model_dir, tok, tmp_path, nat_keep=0.25,
                        nat_design="systematic")
    batch = make_batch(natt)
    sel = natt._nat_draw(batch)
    m = batch["completion_mask"].bool()
    torch.testing.assert_close(sel.pi.sum(-1), 0.25 * m.sum(-1).double())
    assert bool((sel.sample <= m).all()) and float(sel.weights.max()) == 4.0
    a, b = natt._nat_draw(batch).sample, natt._nat_draw(batch).sample
    assert not bool((a == b).all())  # a fresh draw per generation batch


# ----------------------------------------------------------------------------- savings
def test_prefix_crops_and_groups_rows(model_dir, tok, tmp_path):
    kw = dict(gradient_accumulation_steps=2, steps_per_generation=2, beta=0.0, bf16=False)
    base = make_trainer(GRPOTrainer, model_dir, tok, tmp_path, **kw)
    natt = make_trainer(NATGRPOTrainer, model_dir, tok, tmp_path, nat_keep=0.3,
                        nat_full_keep=0.1, **kw)
    batch = make_batch(base)
    sel = Selection.from_sample(
        natt._nat_draw(batch).design,
        (torch.arange(C)[None, :] < torch.tensor([6, 1, 2, 1, 6, 1, 1, 1])[:, None])
        & batch["completion_mask"].bool(),
    )
    nat_batch = {**batch, **natt._nat_fields(sel)}
    mbs = split(nat_batch, 2)
    grouped = natt._nat_group_rows(mbs)
    widths = [int(mb["nat_crop"].max()) for mb in grouped]
    assert widths == [6, 1], widths  # both long rows in one micro-batch
    assert sorted(torch.cat([mb["nat_crop"] for mb in grouped]).tolist()) == sorted(
        sel.crop_lengths.tolist())
    for t in (base, natt):
        set_schedule(t, "dapo", 2, 2)
    natt._metrics["train"].clear()
    _, g_grouped = run_window(natt, grouped, ga=2)
    saved = natt._metrics["train"]["nat/forward_tokens_saved"]
    assert saved[0] == 0.0 and saved[1] == pytest.approx(1 - (3 + 1) / (3 + C))
    _, g_plain = run_window(natt, mbs, ga=2)
    torch.testing.assert_close(g_grouped, g_plain, rtol=2e-5, atol=1e-7)
    # bnpo normalises per micro-batch: no regrouping there
    natt.loss_type = "bnpo"
    assert natt._nat_group_rows(mbs) is mbs


def test_per_position_designs_score_only_selected_positions(model_dir, tok, tmp_path):
    natt = make_trainer(NATGRPOTrainer, model_dir, tok, tmp_path, nat_keep=0.5,
                        nat_design="poisson")
    batch = make_batch(natt)
    sel = natt._nat_draw(batch)
    seen = []
    model = natt.model

    def spy(*args, labels, **kwargs):
        seen.append(labels.clone())
        return model(*args, labels=labels, **kwargs)

    natt.model.train()
    natt.current_gradient_accumulation_steps = 1
    natt.compute_loss(spy, {**batch, **natt._nat_fields(sel)})
    scored = seen[0][:, -C:] != -100
    assert torch.equal(scored, sel.sample)


# ----------------------------------------------------------------------------- two processes
WORLD = 2
DIST_LOSSES = ("dapo", "grpo", "dr_grpo", "cispo", "bnpo")


def _dist_setup(model_dir, tok, tmp):
    natt = make_trainer(NATGRPOTrainer, model_dir, tok, tmp, nat_keep=0.5, beta=0.04,
                        per_device_train_batch_size=4, entropy_coef=0.0, bf16=False)
    batch = make_batch(natt, B=8, seed=11)
    design = natt._nat_draw(batch).design
    sel = Selection.from_sample(design, design.draw(torch.Generator().manual_seed(5)))
    return natt, {**batch, **natt._nat_fields(sel)}


def _dist_worker(rank, port, model_dir, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import warnings
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    tok = hf_tiny.char_tokenizer()
    natt, batch = _dist_setup(model_dir, tok, out_dir)
    assert natt.accelerator.num_processes == WORLD
    ddp = natt.accelerator.prepare_model(natt.model)
    shard = split(batch, WORLD)[rank]
    natt.model.train()
    natt.current_gradient_accumulation_steps = 1
    res = {"seed": natt._nat_generator.initial_seed()}
    for loss_type in DIST_LOSSES:
        set_schedule(natt, loss_type, 1, 1)
        ddp.zero_grad(set_to_none=True)
        natt.compute_loss(ddp, shard).backward()  # DDP averages the gradients over the ranks
        res[loss_type] = flat_grad(natt.model)
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    natt.accelerator.wait_for_everyone()


def test_two_gloo_processes_equal_one(model_dir, tok, tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dist_worker, args=(port, model_dir, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert [r["seed"] for r in ranks] == [0, 1]  # one generator per process: nat_seed + rank
    natt, batch = _dist_setup(model_dir, tok, tmp_path)
    for loss_type in DIST_LOSSES:
        set_schedule(natt, loss_type, 1, 1)
        want = run_window(natt, [batch], ga=1)[1]
        torch.testing.assert_close(ranks[0][loss_type], ranks[1][loss_type])
        if loss_type == "bnpo":  # TRL's bnpo divides by each rank's own token count
            assert float((ranks[0][loss_type] - want).abs().max()) > 1e-4
        else:
            torch.testing.assert_close(ranks[0][loss_type], want, rtol=2e-5, atol=1e-7)


# ----------------------------------------------------------------------------- real trainings
@pytest.mark.parametrize("design", DESIGNS)
def test_short_training_runs(model_dir, tok, tmp_path, design):
    sizes = {"poisson_proportional": "entropy", "systematic_proportional": "surprisal",
             "prefix_optimal": "advantage", "poisson_optimal": "entropy",
             "systematic_optimal": "surprisal"}
    natt = make_trainer(NATGRPOTrainer, model_dir, tok, tmp_path, max_steps=2,
                        nat_design=design, nat_sizes=sizes.get(design), nat_keep=0.5,
                        learning_rate=1e-2, gradient_accumulation_steps=2,
                        per_device_train_batch_size=2, steps_per_generation=2)
    before = [p.detach().clone() for p in natt.model.parameters()]
    natt.train()
    logs = [h for h in natt.state.log_history if "nat/kept_fraction" in h]
    assert len(logs) == 2
    for h in logs:
        assert 0 < h["nat/kept_fraction"] <= 1 and h["nat/max_weight"] >= 1
        assert math.isfinite(h["loss"]) and "entropy" in h
    assert any(not torch.equal(a, b) for a, b in zip(before, natt.model.parameters(),
                                                      strict=True))


def test_variance_ratio_controller_sets_the_keep_fraction(model_dir, tok, tmp_path):
    """nat_variance_ratio: each batch's keep fraction comes from KappaController (at most
    nat_keep), computed from the batch's advantages and sizes only, before the draw."""
    natt = make_trainer(NATGRPOTrainer, model_dir, tok, tmp_path, max_steps=2,
                        nat_design="prefix", nat_keep=0.9, nat_variance_ratio=2.0,
                        learning_rate=1e-2, per_device_train_batch_size=2,
                        gradient_accumulation_steps=2, steps_per_generation=2)
    natt.train()
    hist = natt._nat_kappa.history
    assert hist and all(0.05 <= h["kappa"] <= 0.9 for h in hist)
    assert all(h["bound"] != "" or abs(h["ratio"] / 2.0 - 1) <= 1e-4 for h in hist)
    logs = [h for h in natt.state.log_history if "nat/kept_fraction" in h]
    assert len(logs) == 2


def test_shared_budget_with_the_controller(model_dir, tok, tmp_path):
    """nat_shared with an optimal design: one budget over the process's batch (the drawn
    design's pi sums to kappa * sum N_i) and the controller predicts that same design."""
    natt = make_trainer(NATGRPOTrainer, model_dir, tok, tmp_path, max_steps=1,
                        nat_design="prefix_optimal", nat_sizes="advantage", nat_shared=True,
                        nat_keep=0.9, nat_variance_ratio=1.0, learning_rate=1e-2,
                        per_device_train_batch_size=2, gradient_accumulation_steps=2,
                        steps_per_generation=2)
    assert natt.args._nat_controller().shared
    natt.model.train()
    prompts = [{"prompt": "ab"}] * 4
    out = super(NATGRPOTrainer, natt)._generate_and_score_completions(prompts)
    sel = natt._nat_draw(out)
    k = natt._nat_kappa.history[-1]["kappa"]
    mask = sel.response_mask
    pi = sel.design.inclusion_probabilities()
    torch.testing.assert_close(pi.sum().double(), k * mask.sum().double(), rtol=1e-9, atol=1e-9)


def test_evaluation_uses_the_full_loss(model_dir, tok, tmp_path):
    base = make_trainer(GRPOTrainer, model_dir, tok, tmp_path)
    natt = make_trainer(NATGRPOTrainer, model_dir, tok, tmp_path, nat_keep=0.25)
    batch = make_batch(base)
    for t in (base, natt):
        t.model.eval()
        set_schedule(t, "dapo", 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(natt.compute_loss(natt.model, batch),
                                   base.compute_loss(base.model, batch))
    # the scoring step draws no selection in evaluation, one in training
    prompts = [{"prompt": "ab"}] * 4
    assert "nat_weights" not in natt._generate_and_score_completions(prompts)
    natt.model.train()
    out = natt._generate_and_score_completions(prompts)
    assert out["nat_weights"].shape == out["completion_mask"].shape


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,field", [
    (dict(nat_keep=0.0), "nat_keep"),
    (dict(nat_keep=1.5), "nat_keep"),
    (dict(nat_full_keep=0.0), "nat_full_keep"),
    (dict(nat_min_keep=1.0), "nat_min_keep"),
    (dict(nat_design="uniform"), "nat_design"),
    (dict(nat_design="poisson_proportional"), "nat_sizes"),
    (dict(nat_design="prefix", nat_sizes="entropy"), "nat_sizes"),
    (dict(nat_design="systematic_proportional", nat_sizes="logits"), "nat_sizes"),
    (dict(nat_seed=1.5), "nat_seed"),
    (dict(nat_shared=True), "nat_shared"),
    (dict(nat_design="poisson_optimal", nat_sizes="entropy", nat_shared=1), "nat_shared"),
    (dict(nat_variance_ratio=0.0), "epsilon must be > 0"),
    (dict(nat_variance_ratio=-1.0), "epsilon must be > 0"),
    (dict(importance_sampling_level="sequence"), "importance_sampling_level"),
    (dict(loss_type="vespo"), "vespo"),
])
def test_bad_config_names_the_field(tmp_path, kw, field):
    with pytest.raises(ValueError, match=field):
        NATGRPOConfig(output_dir=str(tmp_path), use_cpu=True, **kw)


def test_trainer_refuses_a_plain_grpo_config_and_gspo(model_dir, tok, tmp_path):
    cfg = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(TypeError, match="NATGRPOConfig"):
        NATGRPOTrainer(model=model_dir, reward_funcs=reward, args=cfg, processing_class=tok,
                       train_dataset=dataset())
    cfg = NATGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    cfg.importance_sampling_level = "sequence"  # changed after the config was built
    with pytest.raises(ValueError, match="GSPO"):
        NATGRPOTrainer(model=model_dir, reward_funcs=reward, args=cfg, processing_class=tok,
                       train_dataset=dataset())


def test_model_without_the_log_prob_path_is_refused(model_dir, tok, tmp_path):
    natt = make_trainer(NATGRPOTrainer, model_dir, tok, tmp_path)
    batch = make_batch(natt)
    plain = hf_tiny.tiny_qwen2(tok)  # no fused LM head: returns logits, not log_probs

    def forward(*args, fused_lm_head=False, **kwargs):
        return plain(*args, **kwargs)

    natt.model.train()
    natt.current_gradient_accumulation_steps = 1
    with pytest.raises(ValueError, match="log_probs"):
        natt.compute_loss(forward, {**batch, **natt._nat_fields(natt._nat_draw(batch))})


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_import_without_trl_names_the_extra():
    r = _run("import sys; sys.modules['trl'] = None\n"
             "import nat_estimators.integrations.trl")
    assert r.returncode != 0 and "nat-estimators[trl]" in r.stderr, r.stderr[-2000:]


def test_untested_trl_version_is_refused(monkeypatch):
    monkeypatch.delenv("NAT_ESTIMATORS_ALLOW_UNTESTED_TRL", raising=False)
    with pytest.raises(ImportError, match=r"trl>=1\.16,<1\.17 but trl 1\.17\.0 is installed"):
        nat_trl._check_trl_version("1.17.0")
    with pytest.raises(ImportError, match="nat-estimators\\[trl\\]"):
        nat_trl._check_trl_version("1.15.2")
    nat_trl._check_trl_version(trl.__version__)  # the installed one is in range
    monkeypatch.setenv("NAT_ESTIMATORS_ALLOW_UNTESTED_TRL", "1")
    with pytest.warns(UserWarning, match="1.17.0"):
        nat_trl._check_trl_version("1.17.0")


def test_version_parsing():
    assert nat_trl._version_tuple("1.16.0") == (1, 16, 0)
    assert nat_trl._version_tuple("1.16.1.dev0+g123") == (1, 16, 1)
    assert nat_trl._version_tuple("1.17.0rc1") == (1, 17, 0)


# ----------------------------------------------------------------------------- doctests
@pytest.mark.parametrize("module", [nat_trl, hf_tiny], ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- docs and example
DOCS_PAGE = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "rl", "trl.md")


def test_docs_page_code_blocks_run():
    """Every ``python`` block of docs/rl/trl.md runs, in order, in one namespace."""
    import re

    with open(DOCS_PAGE, encoding="utf-8") as f:
        blocks = re.findall(r"^```python\n(.*?)^```", f.read(), re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 3
    ns: dict[str, object] = {"__name__": "__docs_trl__"}
    for code in blocks:
        exec(compile(code, DOCS_PAGE, "exec"), ns)
    assert isinstance(ns["trainer"], NATGRPOTrainer)
    assert 0 < ns["step"]["nat/kept_fraction"] <= 1


def test_example_runs(tmp_path, monkeypatch):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "trl_grpo.py")
    spec = importlib.util.spec_from_file_location("trl_grpo_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    last = mod.main(max_steps=2, output_dir=str(tmp_path))
    assert 0 < last["nat/kept_fraction"] <= 1 and last["nat/max_weight"] >= 1
