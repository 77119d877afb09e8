r"""Training benchmark: does a NAT GRPO update learn as well as the full-token update, in less time?

A small-scale reproduction of the training claim of token subsampling ("matches full-token GRPO
with 50% of the tokens"): the same policy, the same warm start, the same prompts and the same
hyper-parameters, trained by GRPO with up to ten ways of building the update, paired over seeds.

Task and policy
---------------
:class:`~nat_estimators.demo.tasks.ModularWalk`: the prompt names a stride :math:`c` and a start
state; the answer is a walk of :math:`L` state tokens (:math:`L` uniform on the setup's range, so
rows are long and ragged) and the reward is the fraction of steps :math:`a_t \equiv a_{t-1} + c
\pmod{10}`, which depends on every token.  The policy is a
:class:`~nat_estimators.demo.models.TinyCausalLM` warm-started by supervised learning on noisy
demonstrations whose error rate grows along the answer, so it starts at a middling reward with its
errors concentrated late in long answers; GRPO then has to fix them.

Arms (same seeds, same hyper-parameters)
----------------------------------------
``full``
    every response token in the loss (the reference);
``prefix@0.5``, ``prefix@0.25``
    prefix cutting (random cut per row, HT weights :math:`1/\pi_t`, forward stopped at the cut);
``poisson@0.5``, ``systematic@0.5``
    uniform Poisson and systematic sampling of tokens (forward over the whole row, LM head and loss
    at the selected tokens only);
``shortcut@0.5`` (control)
    the prefix selection at 0.5 written into the response mask: weights 1 and loss normalisers from
    the selection (biased: late tokens are under-weighted);
``hajek@0.5`` (control)
    prefix cutting at 0.5 with each row's weights self-normalised to its length (a ratio
    estimator: biased);
``truncate@0.5`` (control)
    the first half of every response, always (deterministic: no variance, but the second half is
    never trained);
``prefix_optimal@0.5`` (budget study, ``--budget``)
    the variance-optimal cut law (:meth:`nat_estimators.Prefix.optimal`) at the same expected
    tokens, one budget for the batch (``shared=True``), second moments from the proxy
    :math:`m_{it} = (c_{it} A_i (1 - p_{it}))^2` (:func:`second_moment_proxy`: a no-grad pass of
    the policy that generated the batch, the pass a PPO pipeline makes for its ratio anyway,
    timed apart as ``proxy_s``);
``controlled@eps0.25`` (budget study)
    the same design with each step's keep fraction chosen by
    :class:`nat_estimators.rl.KappaController` (:math:`\varepsilon = 0.25`, :math:`\kappa \in
    [0.1, 1]`) from the same proxies, before the draw; every ``observe_every`` steps the
    realised ratio of that step (the decomposition below) refits the controller's calibration
    (:meth:`~nat_estimators.rl.KappaController.observe`), which only later steps use.  The
    :math:`\kappa` solve is timed in the arm's fwd+bwd time (and apart, ``control_s``).

Every arm runs :func:`nat_estimators.rl.grpo_backward` (the library's step: full-mask normalisers,
selection, crop, packing, selected-position LM head, ``seq-mean-token-mean`` GRPO loss) on a
:class:`~benchmarks.nat_step.VarlenCausalLM` view of the policy (padding removed inside the blocks,
as verl's ``use_remove_padding``), then gradient clipping and an Adam step.  The arms of one seed
run in lockstep: step :math:`s` of every arm runs before step :math:`s + 1` of any, in an order
that rotates every step, so load from other jobs on the machine hits them alike.

Measured per step and arm
-------------------------
reward of the step's rollouts (before the update); tokens in the loss and in the forward pass;
fwd+bwd time (selection draw, crop, packing, forward, loss, backward; the optimiser step and the
rollouts, the same for every arm, are timed apart); peak memory of the fwd+bwd
(:func:`benchmarks.timing.measure_peak_bytes`, every ``memory_every`` steps, on a replay of the
same selection); and, every ``variance_every`` steps, the variance decomposition below.

Variance decomposition
----------------------
Conditionally on the rollouts :math:`R`, the selection is drawn independently, so for a fixed
direction :math:`v` in parameter space the law of total variance gives

.. math::

    \operatorname{Var}(v^\top \hat g) = \underbrace{\operatorname{Var}_R(v^\top g)}_{\text{rollout}}
    + \underbrace{E_R \operatorname{Var}(v^\top \hat g \mid R)}_{\text{NAT-added}} ,

where :math:`g` is the full-token gradient and :math:`\hat g` the arm's (for unbiased arms
:math:`E[\hat g \mid R] = g`).  At ratio 1 on-policy the per-token GRPO gradient is
:math:`-A_i \nabla \log \pi(y_{it})`; forward-mode differentiation (:func:`torch.func.jvp`) gives
:math:`d_{it} = -A_i\, v^\top \nabla \log \pi(y_{it})` for every token at once, and with the loss
coefficients :math:`c_{it}` of :func:`nat_estimators.rl.loss_coefficients` the projected full
gradient is :math:`\sum_{it} y_{it}` with :math:`y_{it} = c_{it} d_{it}`.

* NAT-added variance, HT arms: the exact design variance :math:`\sum_{k,l} \Delta_{kl}
  \check y_k \check y_l` of the HT total of :math:`y` under the arm's design
  (:func:`nat_estimators.design_variance`, fast paths; rows are independent, so row variances
  add).  Controls (Hájek, shortcut): the variance over ``mc_draws`` selections of the arm's own
  estimate :math:`\sum_{it} c^{arm}_{it}(I) d_{it}`, and its squared bias against
  :math:`\sum y` (relative standard error of a variance from :math:`n` draws:
  :math:`\approx\sqrt{2/(n-1)}`).  Deterministic truncation: variance 0, squared bias exact.
* Rollout variance: the :math:`G` prompt groups of a batch are independent draws (advantages are
  standardised within a group, so rows of one group are not), so with :math:`z_g` the group sums
  of :math:`y`, :math:`\widehat{\operatorname{Var}}_R = G\, s_z^2`.

The reported ``variance_ratio`` is :math:`\sum \text{NAT-added} / \sum \text{rollout}` over the
directions, measured steps and seeds: an arm with ratio :math:`\rho` has the gradient noise of the
full-token update on a batch :math:`1 + \rho` times smaller.  ``bias_ratio`` is the same with
the squared bias in the numerator.

Summary (``--json``)
--------------------
Per arm, keys ``<arm>/<figure>``: ``final_reward`` (mean over seeds of the final policy's reward
on a fixed evaluation set of prompts, the same for every arm of a seed), ``final_reward_ci95``
(half-width, Student t), ``tost_p`` (paired two one-sided tests against ``full`` with the margin
``TrainingSetup.margin`` stated before the run; equivalence at 5% when ``tost_p < 0.05``),
``time_ratio`` (median over steps and seeds of the fwd+bwd time paired with ``full``'s at the same
step), ``token_ratio`` (tokens in the loss, total over the run, against ``full``),
``variance_ratio``; plus ``forward_token_ratio``, ``peak_memory_ratio``, ``bias_ratio``,
``time_to_target_s``, ``steps_to_target`` and ``loss_tokens_to_target`` (first step at which the
5-step moving average of the rollout reward reaches ``TrainingSetup.target``, mean over the seeds
that reach it, with ``reached_target`` counting them), ``keep_mean``.  Controlled arms add
``controller_variance_ratio_error`` (worst seed's :math:`|r/\varepsilon - 1|` with :math:`r` the
seed's NAT-added over rollout variance pooled over its observed steps), the per-step median and
maximum of :math:`|r_s/\varepsilon - 1|` and the measurement's relative standard error
:math:`\sqrt{2/(G-1)}` (:func:`_controller_summary`).

Run from the repository root::

    python benchmarks/training.py --quick                      # a few minutes
    python benchmarks/training.py --json benchmarks/results/training.json \
        --page docs/results/training.md                        # the full run
    python benchmarks/training.py --budget --json benchmarks/results/training_budget.json \
        --page docs/results/training_budget.md                 # the budget study
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

if __package__ in (None, ""):  # run as a script: import the benchmarks package from the root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.nat_step import VarlenCausalLM
from benchmarks.timing import loadavg, measure_peak_bytes, timed
from nat_estimators import design_variance
from nat_estimators.demo.models import TinyCausalLM
from nat_estimators.demo.rollouts import group_advantages, sample_responses
from nat_estimators.demo.tasks import ModularWalk
from nat_estimators.rl import (
    GRPOBatch,
    GRPOConfig,
    KappaController,
    Selection,
    grpo_backward,
    loss_coefficients,
    needs_sizes,
    select_tokens,
)

__all__ = [
    "ARMS",
    "FIGURES",
    "Arm",
    "TrainingSetup",
    "arm_update",
    "logprob_jvp",
    "paired_t_p",
    "run_seed",
    "run_training",
    "summarise",
    "variance_terms",
]

LOSS_MODE = "seq-mean-token-mean"


# --------------------------------------------------------------------------- arms
@dataclass(frozen=True)
class Arm:
    """One way of building the GRPO update.

    ``kind``: ``"full"`` (every token), ``"ht"`` (a design with HT weights), ``"hajek"`` (HT
    selection, self-normalised weights), ``"shortcut"`` (the selection written into the mask),
    ``"truncate"`` (the first ``keep`` of every response written into the mask).
    """

    name: str
    kind: str
    design: str = "poisson"
    keep: float = 1.0
    shared: bool = False
    epsilon: float | None = None

    @property
    def control(self) -> bool:
        """A control that is expected to look different from ``full``."""
        return self.kind in ("shortcut", "hajek", "truncate")

    @property
    def controlled(self) -> bool:
        """The keep fraction is chosen each step by a :class:`KappaController`."""
        return self.epsilon is not None

    @property
    def needs_proxy(self) -> bool:
        """The design is built from per-token second-moment proxies (old-policy quantities)."""
        return needs_sizes(self.design) or self.controlled


ARMS: tuple[Arm, ...] = (
    Arm("full", "full"),
    Arm("prefix@0.5", "ht", "prefix", 0.5),
    Arm("prefix@0.25", "ht", "prefix", 0.25),
    Arm("poisson@0.5", "ht", "poisson", 0.5),
    Arm("systematic@0.5", "ht", "systematic", 0.5),
    Arm("shortcut@0.5", "shortcut", "prefix", 0.5),
    Arm("hajek@0.5", "hajek", "prefix", 0.5),
    Arm("truncate@0.5", "truncate", "prefix", 0.5),
    Arm("prefix_optimal@0.5", "ht", "prefix_optimal", 0.5, shared=True),
    Arm("controlled@eps0.25", "ht", "prefix_optimal", shared=True, epsilon=0.25),
)
ARM_BY_NAME = {a.name: a for a in ARMS}
#: The paper's comparison (the full run, ``docs/results/training``).
PAPER_ARMS = ("full", "prefix@0.5", "prefix@0.25", "poisson@0.5", "systematic@0.5",
              "shortcut@0.5", "hajek@0.5", "truncate@0.5")
#: The budget study (``--budget``, ``docs/results/training_budget``): the paper's prefix cutting
#: at 0.5 against the variance-optimal cut law at the same expected tokens and a keep fraction
#: chosen each step by the controller.
BUDGET_ARMS = ("full", "prefix@0.5", "prefix_optimal@0.5", "controlled@eps0.25")
#: Bounds of the controller's keep fraction and its design's full-keep floor.
CONTROLLER_BOUNDS = (0.1, 1.0)
FULL_KEEP = 0.05

#: The figures of the machine-checkable summary, per arm (keys ``<arm>/<figure>``).
FIGURES = ("final_reward", "final_reward_ci95", "tost_p", "time_ratio", "token_ratio",
           "variance_ratio")


# --------------------------------------------------------------------------- setup
@dataclass(frozen=True)
class TrainingSetup:
    """Sizes and hyper-parameters of the run (:meth:`quick`, :meth:`full`, :meth:`tiny`).

    ``margin`` (TOST equivalence margin on the final reward, absolute) and ``target`` (reward
    for time-to-target) are stated here, before any run.
    """

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    steps: int = 30
    prompts: int = 8
    group: int = 4
    min_len: int = 64
    max_len: int = 160
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    warm_steps: int = 150
    warm_batch: int = 32
    warm_lr: float = 3e-3
    lr: float = 1e-3
    max_grad_norm: float = 1.0
    token_budget: int = 4096
    variance_every: int = 10
    directions: int = 3
    mc_draws: int = 32
    memory_every: int = 15
    eval_prompts: int = 128
    margin: float = 0.03
    target: float = 0.8
    arms: tuple[str, ...] = PAPER_ARMS
    observe_every: int = 2

    @classmethod
    def full(cls) -> TrainingSetup:
        """The full run: 5 seeds, the paper's comparison."""
        return cls()

    @classmethod
    def budget(cls) -> TrainingSetup:
        """The budget study: the full run's sizes, :data:`BUDGET_ARMS`."""
        return cls(arms=BUDGET_ARMS)

    @classmethod
    def quick(cls) -> TrainingSetup:
        """A few minutes: 2 seeds, shorter answers and fewer steps."""
        return cls(seeds=(0, 1), steps=12, min_len=32, max_len=96, warm_steps=100,
                   eval_prompts=64, variance_every=4, memory_every=6)

    @classmethod
    def tiny(cls) -> TrainingSetup:
        """Seconds: the smoke test's size (two steps per arm)."""
        return cls(seeds=(0,), steps=2, prompts=2, group=2, min_len=6, max_len=12, d_model=16,
                   warm_steps=2, warm_batch=4, variance_every=1, directions=2, mc_draws=4,
                   memory_every=1, eval_prompts=4, token_budget=256,
                   arms=tuple(a.name for a in ARMS), observe_every=1)

    def task(self) -> ModularWalk:
        return ModularWalk(min_len=self.min_len, max_len=self.max_len)


# --------------------------------------------------------------------------- pieces
def _generator(seed: int, stream: int, device: torch.device | None = None) -> torch.Generator:
    g = torch.Generator(device=device or "cpu")
    g.manual_seed(1_000_003 * seed + stream)
    return g


def make_policy(setup: TrainingSetup, task: ModularWalk, seed: int,
                device: torch.device) -> TinyCausalLM:
    torch.manual_seed(seed)
    return TinyCausalLM(vocab_size=task.vocab, d_model=setup.d_model, n_heads=setup.n_heads,
                        n_layers=setup.n_layers, max_len=task.prompt_len + task.max_len,
                        device=device)


def warm_start(model: TinyCausalLM, task: ModularWalk, setup: TrainingSetup, seed: int,
               device: torch.device) -> list[float]:
    """Supervised warm start on noisy demonstrations (cross-entropy on the response tokens)."""
    g = _generator(seed, 1)
    opt = torch.optim.Adam(model.parameters(), lr=setup.warm_lr)
    losses = []
    P = task.prompt_len
    for _ in range(setup.warm_steps):
        prompts, lengths = task.sample_prompts(setup.warm_batch, generator=g)
        demo = task.demonstrations(prompts, lengths, generator=g)
        ids = torch.cat([prompts, demo], -1).to(device)
        mask = task.response_mask(lengths, demo.shape[-1]).to(device)
        logits = model(ids)[:, P - 1 : -1]
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, P:],
                                               reduction="none")
        loss = (ce * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def rollout_batch(model: TinyCausalLM, task: ModularWalk, prompts: torch.Tensor,
                  lengths: torch.Tensor, group: int,
                  generator: torch.Generator) -> tuple[GRPOBatch, torch.Tensor]:
    """Sample ``group`` answers per prompt (episode ends after the prompt's length) and build the
    right-padded GRPO batch (prompt + answer) with group advantages; also the rewards."""
    pr = prompts.repeat_interleave(group, 0)
    ln = lengths.repeat_interleave(group, 0)
    resp, _, _ = sample_responses(model, pr, max_new=int(ln.max()), generator=generator)
    rm_resp = task.response_mask(ln, resp.shape[-1])
    resp = torch.where(rm_resp, resp, torch.zeros_like(resp))
    rewards = task.reward(pr, resp, ln)
    P = pr.shape[-1]
    ids = torch.cat([pr, resp], -1)
    rm = torch.cat([torch.zeros_like(pr, dtype=torch.bool), rm_resp], -1)
    am = rm.clone()
    am[:, :P] = True
    adv = group_advantages(rewards, group)
    return GRPOBatch(ids, am, rm, adv), rewards


def second_moment_proxy(model: TinyCausalLM, batch: GRPOBatch) -> torch.Tensor:
    r"""Per-token second-moment proxy :math:`m_{it} = (c_{it} A_i (1 - p_{it}))^2`, fixed before
    the draw (float64, 0 off the response mask).

    :math:`p_{it}` is the sampled token's probability under the policy that generated the batch
    (one no-grad forward, the old-policy pass a PPO/GRPO pipeline makes anyway),
    :math:`c_{it}` the full-mask loss coefficient of ``seq-mean-token-mean`` (:math:`1 / (B N_i)`)
    and :math:`A_i` the advantage: :math:`|A|(1 - p)` is the proxy that tracks
    :math:`\|\nabla \ell_t\|` best on the trained policies (``docs/results/benchmarks``).
    """
    rm = batch.response_mask
    with torch.no_grad():
        logits = model(batch.input_ids, batch.attention_mask)
        lp = torch.log_softmax(logits[:, :-1].double(), -1).gather(
            -1, batch.input_ids[:, 1:, None])[..., 0]
    p = torch.nn.functional.pad(lp.exp(), (1, 0))
    c = loss_coefficients(rm, LOSS_MODE, dtype=torch.float64)
    m = (c * batch.advantages.double()[:, None] * (1 - p)) ** 2
    return torch.where(rm, m, torch.zeros_like(m))


def design_sizes(m: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sizes for the optimal designs from a proxy: ``m`` floored at ``1e-6 * max`` on the mask
    (a row whose advantage is 0 contributes no gradient and gets the floor; sizes must be > 0).
    """
    top = float(m.max()) if m.numel() else 0.0
    floor = 1e-6 * top if top > 0 else 1.0
    return torch.where(mask, m.clamp_min(floor), torch.zeros_like(m))


def make_controller(arm: Arm) -> KappaController:
    """The controller of a controlled arm (its design, batch budget and bounds)."""
    assert arm.epsilon is not None
    lo, hi = CONTROLLER_BOUNDS
    return KappaController(epsilon=arm.epsilon, design=arm.design, shared=arm.shared,
                           kappa_min=lo, kappa_max=hi, full_keep=FULL_KEEP)


def _config(arm: Arm, setup: TrainingSetup, keep: float | None = None) -> GRPOConfig:
    if arm.kind in ("ht", "hajek"):
        return GRPOConfig(loss_mode=LOSS_MODE, design=arm.design,
                          keep=arm.keep if keep is None else keep, shared=arm.shared,
                          full_keep=FULL_KEEP,
                          normalizer="hajek" if arm.kind == "hajek" else "ht",
                          max_tokens=setup.token_budget)
    # full, shortcut, truncate: every token of the (possibly rewritten) mask, weight 1
    return GRPOConfig(loss_mode=LOSS_MODE, design="poisson", keep=1.0,
                      max_tokens=setup.token_budget)


def _first_fraction(response_mask: torch.Tensor, keep: float) -> torch.Tensor:
    """The first ``ceil(keep * L_i)`` response tokens of every row."""
    rank = response_mask.long().cumsum(-1)
    n = torch.ceil(keep * response_mask.sum(-1).double()).long()
    return response_mask & (rank <= n[:, None])


def arm_update(arm: Arm, batch: GRPOBatch, setup: TrainingSetup,
               generator: torch.Generator, keep: float | None = None,
               ) -> tuple[GRPOBatch, Selection, GRPOConfig]:
    """The batch, selection and config one arm's update runs on (``keep``: this step's keep
    fraction when a controller chose it; ``batch.sizes``: the optimal designs' proxies).

    The shortcut and truncation controls rewrite the response mask (their selection becomes the
    mask, every token of it with weight 1 and normalisers from it); the other arms keep the batch
    and draw their design's selection.
    """
    cfg = _config(arm, setup, keep)
    rm = batch.response_mask
    if arm.kind in ("shortcut", "truncate"):
        if arm.kind == "shortcut":
            sample = select_tokens(rm, arm.design, arm.keep, generator=generator).sample
        else:
            sample = _first_fraction(rm, arm.keep)
        batch = replace(batch, response_mask=sample)
        return batch, select_tokens(sample, "poisson", 1.0), cfg
    sizes = batch.sizes if needs_sizes(cfg.design) else None
    return batch, select_tokens(rm, cfg.design, cfg.keep, sizes=sizes, shared=cfg.shared,
                                full_keep=cfg.full_keep, generator=generator), cfg


def _token_logprobs(model: TinyCausalLM, params: dict[str, torch.Tensor],
                    batch: GRPOBatch) -> torch.Tensor:
    ids = batch.input_ids
    logits = torch.func.functional_call(model, params, (ids, batch.attention_mask))
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    return torch.nn.functional.pad(lp, (1, 0))


def logprob_jvp(model: TinyCausalLM, batch: GRPOBatch,
                direction: dict[str, torch.Tensor]) -> torch.Tensor:
    r""":math:`v^\top \nabla_\theta \log \pi(y_{it})` at every token (0 at position 0), one
    forward-mode pass (:func:`torch.func.jvp`), (B, T)."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    with warnings.catch_warnings():
        # torch's forward-AD decompositions script themselves on first use (a torch-internal
        # DeprecationWarning); forward-mode AD goes through the composite attention kernel
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated",
                                category=DeprecationWarning)
        with sdpa_kernel(SDPBackend.MATH):
            _, jv = torch.func.jvp(lambda p: _token_logprobs(model, p, batch), (params,),
                                   (direction,))
    return jv


def random_directions(model: TinyCausalLM, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` fixed random unit directions in parameter space (Gaussian, normalised)."""
    g = _generator(seed, 7)
    out = []
    for _ in range(n):
        d = {k: torch.randn(p.shape, generator=g).to(p) for k, p in model.named_parameters()}
        norm = math.sqrt(sum(float((v * v).sum()) for v in d.values()))
        out.append({k: v / norm for k, v in d.items()})
    return out


def variance_terms(arm: Arm, model: TinyCausalLM, batch: GRPOBatch, setup: TrainingSetup,
                   directions: list[dict[str, torch.Tensor]],
                   generator: torch.Generator, keep: float | None = None,
                   ) -> dict[str, list[float]]:
    """NAT-added variance, squared bias and rollout variance of the projected gradient (module
    notes), one value per direction (``keep``: this step's keep fraction for a controlled
    arm)."""
    rm = batch.response_mask
    adv = batch.advantages.float()
    D = [-adv[:, None] * logprob_jvp(model, batch, v) for v in directions]
    d = torch.stack(D, -1).double()  # (B, T, J)
    d = torch.where(rm[..., None], d, torch.zeros_like(d))
    c_full = loss_coefficients(rm, LOSS_MODE, dtype=torch.float64)
    y = c_full[..., None] * d
    total = y.sum((0, 1))
    z = y.sum(1).view(-1, setup.group, y.shape[-1]).sum(1)  # (G, J)
    G = z.shape[0]
    rollout = G * z.var(0, correction=1) if G > 1 else torch.zeros_like(total)
    J = y.shape[-1]
    if arm.kind == "full":
        nat = torch.zeros(J, dtype=torch.float64)
        bias2 = torch.zeros(J, dtype=torch.float64)
    elif arm.kind == "ht":
        cfg = _config(arm, setup, keep)
        sizes = batch.sizes if needs_sizes(cfg.design) else None
        design = select_tokens(rm, cfg.design, cfg.keep, sizes=sizes, shared=cfg.shared,
                               full_keep=cfg.full_keep).design
        nat = design_variance(y, design, axis=1).sum(0)
        bias2 = torch.zeros(J, dtype=torch.float64)
    elif arm.kind == "truncate":
        sample = _first_fraction(rm, arm.keep)
        est = (loss_coefficients(sample, LOSS_MODE, dtype=torch.float64)[..., None] * d).sum((0, 1))
        nat = torch.zeros(J, dtype=torch.float64)
        bias2 = (est - total) ** 2
    else:
        ests = []
        for _ in range(setup.mc_draws):
            sel = select_tokens(rm, arm.design, arm.keep, generator=generator,
                                weight_dtype=torch.float64)
            if arm.kind == "hajek":
                c = loss_coefficients(rm, LOSS_MODE, weights=sel.weights, normalizer="hajek")
            else:
                c = loss_coefficients(sel.sample, LOSS_MODE, dtype=torch.float64)
            ests.append((c[..., None] * d).sum((0, 1)))
        e = torch.stack(ests)
        nat = e.var(0, correction=1)
        bias2 = (e.mean(0) - total) ** 2
    return {"nat_var": nat.tolist(), "bias2": bias2.tolist(), "rollout_var": rollout.tolist()}


# --------------------------------------------------------------------------- one seed
def run_seed(setup: TrainingSetup, seed: int, device: str = "cpu",
             log: Any = None) -> dict[str, Any]:
    """Warm start, then every arm in lockstep for ``setup.steps`` GRPO steps; per-arm records."""
    dev = torch.device(device)
    task = setup.task()
    arms = [ARM_BY_NAME[n] for n in setup.arms]
    base = make_policy(setup, task, seed, dev)
    (warm_losses, warm_s) = timed(lambda: warm_start(base, task, setup, seed, dev), dev)
    directions = random_directions(base, setup.directions, seed)
    models = {a.name: copy.deepcopy(base) for a in arms}
    opts = {n: torch.optim.Adam(m.parameters(), lr=setup.lr) for n, m in models.items()}
    # paired streams: every arm gets the same prompts, sampling and selection seeds
    prompt_g = _generator(seed, 2)
    sample_g = {a.name: _generator(seed, 3, dev) for a in arms}
    select_g = {a.name: _generator(seed, 4, dev) for a in arms}
    mc_g = {a.name: _generator(seed, 5, dev) for a in arms}
    ctrls = {a.name: make_controller(a) for a in arms if a.controlled}
    rec: dict[str, dict[str, list[Any]]] = {
        a.name: {k: [] for k in ("reward", "loss_tokens", "forward_tokens", "full_tokens",
                                 "eligible_tokens", "fwd_bwd_s", "optimizer_s", "rollout_s",
                                 "proxy_s", "control_s", "keep", "peak_bytes", "grad_norm",
                                 "variance", "controller")}
        for a in arms
    }
    peak_method = None
    for step in range(setup.steps):
        prompts, lengths = task.sample_prompts(setup.prompts, generator=prompt_g, device=dev)
        order = arms[step % len(arms):] + arms[: step % len(arms)]
        for arm in order:
            model, r = models[arm.name], rec[arm.name]
            (batch, rewards), t_roll = timed(partial(
                rollout_batch, model, task, prompts, lengths, setup.group, sample_g[arm.name]),
                dev)
            r["reward"].append(float(rewards.mean()))
            r["rollout_s"].append(t_roll)
            r["eligible_tokens"].append(float(batch.response_mask.sum()))
            # old-policy proxies (the no-grad pass a PPO pipeline makes for its ratio anyway;
            # timed apart from the fwd+bwd)
            m = None
            if arm.needs_proxy:
                m, t_proxy = timed(partial(second_moment_proxy, model, batch), dev)
                batch = replace(batch, sizes=design_sizes(m, batch.response_mask))
                r["proxy_s"].append(t_proxy)
            else:
                r["proxy_s"].append(0.0)
            keep, t_keep = None, 0.0
            if arm.controlled:
                ctrl = ctrls[arm.name]
                keep, t_keep = timed(partial(ctrl.kappa, batch.response_mask, m,
                                             sizes=batch.sizes), dev)
            r["keep"].append(arm.keep if keep is None else keep)
            r["control_s"].append(t_keep)
            vt = None
            if step % setup.variance_every == 0:
                vt = variance_terms(arm, model, batch, setup, directions, mc_g[arm.name], keep)
                r["variance"].append({"step": step, **vt})
            if arm.controlled and step % setup.observe_every == 0:
                # the realised ratio of this step's design (after its kappa was chosen; only
                # later steps' kappas use the refitted calibration)
                if vt is None:
                    vt = variance_terms(arm, model, batch, setup, directions, mc_g[arm.name],
                                        keep)
                roll = sum(vt["rollout_var"])
                realised = sum(vt["nat_var"]) / roll if roll > 0 else float("nan")
                used = ctrl.history[-1]
                if math.isfinite(realised) and realised > 0 and used["ratio"] > 0:
                    ctrl.observe(realised)
                r["controller"].append({"step": step, "kappa": keep,
                                        "predicted": used["ratio"], "bound": used["bound"],
                                        "calibration_used": used["calibration"],
                                        "realised": realised, "nat_var": vt["nat_var"],
                                        "rollout_var": vt["rollout_var"]})
            (ub, sel, cfg), t_sel = timed(
                partial(arm_update, arm, batch, setup, select_g[arm.name], keep), dev)
            t_sel += t_keep
            backward = partial(grpo_backward, VarlenCausalLM(model), ub, cfg, selection=sel)
            if step % setup.memory_every == 0:
                opts[arm.name].zero_grad(set_to_none=True)
                peak, peak_method = measure_peak_bytes(backward, dev)
                r["peak_bytes"].append(peak)
            else:
                r["peak_bytes"].append(None)
            opts[arm.name].zero_grad(set_to_none=True)
            out, t_fb = timed(backward, dev)
            r["fwd_bwd_s"].append(t_sel + t_fb)
            r["loss_tokens"].append(out.metrics["selected_tokens"])
            r["forward_tokens"].append(out.metrics["forward_tokens"])
            r["full_tokens"].append(out.metrics["full_tokens"])

            def opt_step(m: TinyCausalLM = model, name: str = arm.name) -> float:
                norm = torch.nn.utils.clip_grad_norm_(m.parameters(), setup.max_grad_norm)
                opts[name].step()
                return float(norm)

            grad_norm, t_opt = timed(opt_step, dev)
            r["optimizer_s"].append(t_opt)
            r["grad_norm"].append(grad_norm)
        if log is not None:
            log(f"seed {seed} step {step + 1}/{setup.steps}: " + "  ".join(
                f"{a.name} {rec[a.name]['reward'][-1]:.3f}" for a in arms))
    # final evaluation: the same prompts and sampling seed for every arm
    eval_g = _generator(seed, 6)
    ep, el = task.sample_prompts(setup.eval_prompts, generator=eval_g, device=dev)

    def evaluate(m: TinyCausalLM) -> float:
        resp, _, _ = sample_responses(m, ep, max_new=int(el.max()),
                                      generator=_generator(seed, 8, dev))
        return float(task.reward(ep, resp, el).mean())

    out_arms = {}
    for a in arms:
        out_arms[a.name] = {**rec[a.name], "final_reward": evaluate(models[a.name])}
    return {"seed": seed, "warm_start_reward": evaluate(base), "warm_start_s": warm_s,
            "warm_loss_last": warm_losses[-1] if warm_losses else None,
            "peak_method": peak_method, "arms": out_arms}


# --------------------------------------------------------------------------- statistics
def _t_ppf(q: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df))


def _t_cdf(x: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.cdf(x, df))


def mean_ci95(xs: Iterable[float]) -> tuple[float, float]:
    """Mean and the half-width of its Student-t 95% interval (nan half-width for one value)."""
    v = list(xs)
    m = statistics.fmean(v)
    if len(v) < 2:
        return m, float("nan")
    return m, _t_ppf(0.975, len(v) - 1) * statistics.stdev(v) / math.sqrt(len(v))


def tost_paired(diffs: list[float], margin: float) -> float:
    r"""p-value of the paired two one-sided tests (Schuirmann 1987) for :math:`|\mu_d| < \delta`.

    :math:`t_\pm = (\bar d \pm \delta)/(s_d/\sqrt n)`, :math:`p = \max(1 - F_{n-1}(t_+),
    F_{n-1}(t_-))`; equivalence at level :math:`\alpha` when :math:`p < \alpha`.
    """
    n = len(diffs)
    if n < 2:
        return float("nan")
    m, s = statistics.fmean(diffs), statistics.stdev(diffs)
    if s == 0:
        return 0.0 if abs(m) < margin else 1.0
    se = s / math.sqrt(n)
    return max(1 - _t_cdf((m + margin) / se, n - 1), _t_cdf((m - margin) / se, n - 1))


def paired_t_p(diffs: list[float]) -> float:
    """Two-sided p-value of the paired t test of a zero mean difference (nan below 2 pairs)."""
    n = len(diffs)
    if n < 2:
        return float("nan")
    m, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0:
        return 1.0 if m == 0 else 0.0
    return 2 * (1 - _t_cdf(abs(m) / (sd / math.sqrt(n)), n - 1))


def _moving_average(xs: list[float], w: int) -> list[float]:
    return [statistics.fmean(xs[max(0, i - w + 1): i + 1]) for i in range(len(xs))]


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The ``<arm>/<figure>`` summary of a run (module notes)."""
    setup = TrainingSetup(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in result["setup"].items()})
    seeds = result["seeds"]
    out: dict[str, Any] = {}
    full = {s["seed"]: s["arms"]["full"] for s in seeds}
    for name in setup.arms:
        per = [(s["arms"][name], full[s["seed"]]) for s in seeds]
        finals = [a["final_reward"] for a, _ in per]
        m, ci = mean_ci95(finals)
        out[f"{name}/final_reward"] = m
        out[f"{name}/final_reward_ci95"] = ci
        diffs = [a["final_reward"] - f["final_reward"] for a, f in per]
        out[f"{name}/tost_p"] = tost_paired(diffs, setup.margin)
        dm, dci = mean_ci95(diffs)
        out[f"{name}/final_reward_diff"] = dm
        out[f"{name}/final_reward_diff_ci95"] = dci
        out[f"{name}/diff_p"] = paired_t_p(diffs)
        ratios = [x / y for a, f in per for x, y in zip(a["fwd_bwd_s"], f["fwd_bwd_s"],
                                                         strict=True)]
        out[f"{name}/time_ratio"] = statistics.median(ratios)
        out[f"{name}/token_ratio"] = _ratio(sum(sum(a["loss_tokens"]) for a, _ in per),
                                            sum(sum(f["loss_tokens"]) for _, f in per))
        out[f"{name}/forward_token_ratio"] = _ratio(
            sum(sum(a["forward_tokens"]) for a, _ in per),
            sum(sum(f["forward_tokens"]) for _, f in per))
        peaks = [(x, y) for a, f in per for x, y in zip(a["peak_bytes"], f["peak_bytes"],
                                                        strict=True) if x is not None and y]
        out[f"{name}/peak_memory_ratio"] = (statistics.median(x / y for x, y in peaks)
                                            if peaks else float("nan"))
        nat = sum(sum(v["nat_var"]) for a, _ in per for v in a["variance"])
        b2 = sum(sum(v["bias2"]) for a, _ in per for v in a["variance"])
        roll = sum(sum(v["rollout_var"]) for a, _ in per for v in a["variance"])
        out[f"{name}/variance_ratio"] = _ratio(nat, roll)
        out[f"{name}/bias_ratio"] = _ratio(b2, roll)
        hit_t, hit_s = [], []
        for a, _ in per:
            ma = _moving_average(a["reward"], 5)
            k = next((i for i, v in enumerate(ma) if v >= setup.target), None)
            if k is not None:
                hit_s.append(k + 1)
                hit_t.append(sum(a["fwd_bwd_s"][: k + 1]))
        out[f"{name}/reached_target"] = len(hit_s)
        out[f"{name}/steps_to_target"] = statistics.fmean(hit_s) if hit_s else float("nan")
        out[f"{name}/time_to_target_s"] = statistics.fmean(hit_t) if hit_t else float("nan")
        out[f"{name}/fwd_bwd_s_per_step"] = statistics.median(
            x for a, _ in per for x in a["fwd_bwd_s"])
        out[f"{name}/keep_mean"] = statistics.fmean(k for a, _ in per for k in a.get("keep", [1.0]))
        hit_tok = []
        for a, _ in per:
            ma = _moving_average(a["reward"], 5)
            k = next((i for i, v in enumerate(ma) if v >= setup.target), None)
            if k is not None:
                hit_tok.append(sum(a["loss_tokens"][: k + 1]))
        out[f"{name}/loss_tokens_to_target"] = (statistics.fmean(hit_tok) if hit_tok
                                                else float("nan"))
        arm = ARM_BY_NAME.get(name)
        if arm is not None and arm.epsilon is not None:
            out.update(_controller_summary(name, arm.epsilon, [a for a, _ in per], setup))
    return out


def _controller_summary(name: str, eps: float, recs: list[dict[str, Any]],
                        setup: TrainingSetup) -> dict[str, Any]:
    r"""How closely a controlled arm held NAT-added / rollout variance at ``eps``.

    Per observed step the realised ratio is a noisy estimate (the rollout variance comes from
    ``setup.prompts`` independent groups: relative standard error about
    :math:`\sqrt{2 / (G - 1)}`), so the run-level figure pools each seed's observations
    (:math:`\sum` NAT-added over :math:`\sum` rollout) and reports the worst seed.
    """
    obs = [[o for o in a["controller"] if math.isfinite(o["realised"])] for a in recs]
    per_seed = [_ratio(sum(sum(o["nat_var"]) for o in os_), sum(sum(o["rollout_var"])
                                                                  for o in os_))
                for os_ in obs if os_]
    steps = [abs(o["realised"] / eps - 1) for os_ in obs for o in os_]
    pooled = _ratio(sum(sum(o["nat_var"]) for os_ in obs for o in os_),
                    sum(sum(o["rollout_var"]) for os_ in obs for o in os_))
    finals = [a["controller"][-1]["calibration_used"] for a in recs if a["controller"]]
    return {
        f"{name}/controller_variance_ratio_error": (max(abs(r / eps - 1) for r in per_seed)
                                                    if per_seed else float("nan")),
        f"{name}/controller_pooled_ratio": pooled,
        f"{name}/controller_seed_ratios": per_seed,
        f"{name}/controller_step_error_median": (statistics.median(steps) if steps
                                                 else float("nan")),
        f"{name}/controller_step_error_max": max(steps) if steps else float("nan"),
        f"{name}/controller_observations": len(steps),
        f"{name}/controller_measurement_rse": math.sqrt(2 / max(setup.prompts - 1, 1)),
        f"{name}/controller_final_calibration": (statistics.fmean(finals) if finals
                                                 else float("nan")),
        f"{name}/controller_bound_hits": sum(o["bound"] != "" for os_ in obs for o in os_),
        f"{name}/control_time_share": (
            _ratio(sum(sum(a["control_s"]) for a in recs), sum(sum(a["fwd_bwd_s"]) for a in recs))
            if all("control_s" in a for a in recs) else float("nan")),
    }


# --------------------------------------------------------------------------- the run
def _run_seed_job(args: tuple[dict[str, Any], int, str]) -> dict[str, Any]:
    setup_d, seed, device = args
    torch.set_num_threads(1)
    setup = TrainingSetup(**setup_d)
    return run_seed(setup, seed, device,
                    log=lambda msg: print(msg, file=sys.stderr, flush=True))


def run_training(setup: TrainingSetup, *, device: str = "cpu", workers: int = 1,
                 log: Any = None) -> dict[str, Any]:
    """Every seed of ``setup`` (in ``workers`` processes), the records and the summary."""
    t0 = time.perf_counter()
    load0 = loadavg()
    if workers > 1 and len(setup.seeds) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        jobs = [(asdict(setup), s, device) for s in setup.seeds]
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            seeds = list(ex.map(_run_seed_job, jobs))
    else:
        seeds = [run_seed(setup, s, device, log=log) for s in setup.seeds]
    result: dict[str, Any] = {
        "setup": asdict(setup),
        "machine": {"device": device, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "workers": workers,
                    "cpu_count": os.cpu_count(), "loadavg_1min_start": load0,
                    "loadavg_1min_end": loadavg(),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "wall_s": time.perf_counter() - t0,
        "seeds": seeds,
    }
    result["summary"] = summarise(result)
    return result


def format_table(result: dict[str, Any]) -> str:
    s = result["summary"]
    rows = [f"{'arm':16s} {'final':>7s} {'±ci95':>6s} {'tost_p':>7s} {'time':>6s} "
            f"{'tokens':>6s} {'var':>7s} {'bias':>7s}"]
    for name in result["setup"]["arms"]:
        rows.append(
            f"{name:16s} {s[name + '/final_reward']:7.3f} {s[name + '/final_reward_ci95']:6.3f} "
            f"{s[name + '/tost_p']:7.3f} {s[name + '/time_ratio']:6.3f} "
            f"{s[name + '/token_ratio']:6.3f} {s[name + '/variance_ratio']:7.3f} "
            f"{s[name + '/bias_ratio']:7.3f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes (2 seeds, short answers)")
    ap.add_argument("--budget", action="store_true",
                    help="the budget study's arms (BUDGET_ARMS) instead of the paper's")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes running seeds in parallel (one torch thread each)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default: setup's)")
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps (default: setup's)")
    ap.add_argument("--json", type=Path, default=None, help="write records and summary here")
    ap.add_argument("--page", type=Path, default=None,
                    help="write the results page (markdown, figures beside it)")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="no training: recompute the summary (and --json, --page) from the "
                         "records of an earlier run")
    args = ap.parse_args(argv)
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text())
        result["summary"] = summarise(result)
        print(format_table(result))
        _write(result, args.json, args.page)
        return
    torch.set_num_threads(1)
    setup = TrainingSetup.quick() if args.quick else TrainingSetup.full()
    if args.budget:
        setup = replace(setup, arms=BUDGET_ARMS)
    if args.seeds is not None:
        setup = replace(setup, seeds=tuple(range(args.seeds)))
    if args.steps is not None:
        setup = replace(setup, steps=args.steps)
    result = run_training(setup, device=args.device, workers=args.workers,
                          log=lambda msg: print(msg, file=sys.stderr, flush=True))
    result["command"] = "python benchmarks/training.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print(format_table(result))
    print(f"wall time {result['wall_s']:.0f} s")
    _write(result, args.json, args.page)


def _write(result: dict[str, Any], json_path: Path | None, page: Path | None) -> None:
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1, allow_nan=True) + "\n")
    if page is not None:
        from benchmarks.training_report import write_page

        write_page(result, page)


if __name__ == "__main__":
    main()

