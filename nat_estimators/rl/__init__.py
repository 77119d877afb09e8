r"""PyTorch plumbing for NAT ("Not All Tokens Are Needed") policy-gradient losses.

The one rule (:doc:`/rl/overview`): a token-subsampled loss is the full loss with each per-token
term multiplied by its Horvitz–Thompson weight :math:`w = I/\pi`, and **denominators come from the
full response mask, never from the selection**.

* :func:`agg_loss` / :func:`loss_coefficients` — verl's loss aggregation modes, TRL and OpenRLHF
  aliases, exact with ``weights=None``, unbiased HT estimates with weights;
* :class:`LossNormalizers` — global :math:`N, G, L_i` computed once from the full mask
  (optionally all-reduced), shared by every micro-batch and rank;
* :func:`select_tokens` / :class:`Selection` — draw a selection (prefix cut, Poisson, simple
  random, systematic, size-proportional) and its weights;
* :func:`crop_mask`, :func:`pack_rows`, :class:`PackPlan` — crop rows at their last selected
  token and pack them into token-budget micro-batches (the prefix saving), scatter results back;
* :func:`token_logprobs` — the LM head and log-softmax only at selected positions (the uniform
  sampling saving);
* :func:`grpo_backward`, :func:`grpo_step` — a complete NAT GRPO step built from these, for a
  *backbone + head* model such as :class:`nat_estimators.demo.models.TinyCausalLM`.

Scope: unbiased for objectives linear in per-token terms (token-level PPO/GRPO/DAPO/CISPO/
REINFORCE, per-token KL and entropy).  Sequence-level ratio objectives (GSPO) are refused.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as _e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "nat_estimators.rl needs PyTorch; install it with pip install 'nat-estimators[torch]' "
        "(on a CPU-only machine pin the CPU build, e.g. torch==2.13.0)"
    ) from _e

from ..estimators import ht_weights
from .batching import MicroBatch, PackPlan, crop_mask, pack_rows
from .controller import KappaController, default_second_moment
from .grpo import (
    BackboneHeadModel,
    GRPOBatch,
    GRPOConfig,
    GRPOStepResult,
    MicroBatchTerms,
    grpo_backward,
    grpo_micro_batches,
    grpo_per_token_loss,
    grpo_step,
    plan_batch,
)
from .heads import token_logprobs
from .loss import LOSS_MODES, agg_loss, loss_coefficients, openrlhf_mode, resolve_mode
from .selection import DESIGNS, Selection, needs_sizes, select_tokens
from .stats import LossNormalizers, loss_normalizers

__all__ = [
    "DESIGNS",
    "LOSS_MODES",
    "BackboneHeadModel",
    "GRPOBatch",
    "GRPOConfig",
    "GRPOStepResult",
    "KappaController",
    "LossNormalizers",
    "MicroBatch",
    "MicroBatchTerms",
    "PackPlan",
    "Selection",
    "agg_loss",
    "crop_mask",
    "default_second_moment",
    "grpo_backward",
    "grpo_micro_batches",
    "grpo_per_token_loss",
    "grpo_step",
    "ht_weights",
    "loss_coefficients",
    "loss_normalizers",
    "needs_sizes",
    "openrlhf_mode",
    "pack_rows",
    "plan_batch",
    "resolve_mode",
    "select_tokens",
    "token_logprobs",
]


def __getattr__(name: str) -> object:
    # ``rl.TinyCausalLM`` moved to the demo models (it is an example model, not RL plumbing); the
    # old name works, with a DeprecationWarning, for one release.
    if name == "TinyCausalLM":
        from .._deprecation import deprecated
        from ..demo.models import TinyCausalLM

        deprecated("nat_estimators.rl.TinyCausalLM", "nat_estimators.demo.models.TinyCausalLM")
        return TinyCausalLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
