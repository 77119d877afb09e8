"""Micro-batches in verl's actor-loss layout, built from generated numbers (no model, no data)."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPActorConfig, PolicyLossConfig

AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
             "seq-mean-token-sum-norm")


def actor_config(loss_mode="vanilla", agg="token-mean", *, kl=True, entropy=True,
                 loss_scale_factor=None):
    """An FSDP actor config with the KL loss and the entropy bonus on."""
    return FSDPActorConfig(
        strategy="fsdp", ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2, rollout_n=1,
        loss_agg_mode=agg, policy_loss=PolicyLossConfig(loss_mode=loss_mode, dro_beta=0.1),
        entropy_coeff=0.01 if entropy else 0.0, use_kl_loss=kl, kl_loss_type="low_var_kl",
        kl_loss_coef=0.1, loss_scale_factor=loss_scale_factor, clip_ratio_c=3.0,
    )


def micro_batch(lengths, *, prompt_len=3, width=None, seed=0, holes=True, dp_size=1,
                batch_num_tokens=None, global_batch_size=None, weights=None,
                response_mask=None, rollout_is=False, dtype=torch.float32, trend=0.0):
    """(data TensorDict, log_prob leaf (B, R), entropy leaf (B, R)) in verl's padded layout.

    Row i has a whole prompt of ``prompt_len`` tokens and ``lengths[i]`` response tokens
    (right-padded to ``width``); with ``holes`` some response tokens are masked out of the loss
    (tool outputs), as in multi-turn rollouts.
    """
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    R = width or max(lengths)
    P = prompt_len
    lengths_t = torch.tensor(lengths)
    t = torch.arange(R)
    resp_am = (t[None, :] < lengths_t[:, None]).long()
    if response_mask is None:
        response_mask = resp_am.clone()
        if holes:
            drop = torch.rand(B, R, generator=g) < 0.15
            response_mask = response_mask * (~drop).long()
    data = {
        "prompts": torch.randint(2, 40, (B, P), generator=g),
        "responses": torch.randint(2, 40, (B, R), generator=g) * resp_am,
        "attention_mask": torch.cat([torch.ones(B, P, dtype=torch.long), resp_am], 1),
        "response_mask": response_mask,
        "old_log_probs": -2 * torch.rand(B, R, generator=g, dtype=torch.float64).float(),
        "advantages": torch.randn(B, 1, generator=g).expand(B, R).contiguous()
        + 0.3 * torch.randn(B, R, generator=g),
        "ref_log_prob": -2 * torch.rand(B, R, generator=g),
    }
    if rollout_is:
        data["rollout_is_weights"] = 0.5 + torch.rand(B, R, generator=g)
    if weights is not None:
        data["nat_weights"] = weights
    # current log-probs: near the old ones (some ratios clipped), entropies positive
    log_prob = (data["old_log_probs"] + 0.4 * torch.randn(B, R, generator=g)).clamp_max(-1e-3)
    entropy = 0.5 + torch.rand(B, R, generator=g)
    if trend:  # advantages drift along the response: cutting late tokens then matters
        data["advantages"] = data["advantages"] + trend * t[None, :].float()
    for k in ("old_log_probs", "advantages", "ref_log_prob", "rollout_is_weights"):
        if k in data:
            data[k] = data[k].to(dtype)
    log_prob, entropy = log_prob.to(dtype), entropy.to(dtype)
    td = TensorDict(data, batch_size=[B])
    tu.assign_non_tensor(td, dp_size=dp_size, batch_num_tokens=batch_num_tokens,
                         global_batch_size=global_batch_size)
    return td, log_prob.requires_grad_(True), entropy.requires_grad_(True)


def model_output(td, log_prob, entropy):
    """The engine's output for ``td``: per-token values flattened over prompt + response.

    verl's ``no_padding_2_padding`` reads response token t of row i at offset
    ``P_i + t - 1`` of the row's packed sequence (the logit that predicts it).
    """
    am = td["attention_mask"]
    P = td["prompts"].shape[1]
    pl = am[:, :P].sum(1)
    rl = am[:, P:].sum(1)
    outs = []
    for x in (log_prob, entropy):
        parts = []
        for i in range(x.shape[0]):
            p_i, r_i = int(pl[i]), int(rl[i])
            z = torch.zeros(p_i + r_i, dtype=x.dtype)
            row = torch.cat([z[: p_i - 1], x[i, :r_i], z[p_i + r_i - 1:]])
            parts.append(row)
        outs.append(torch.cat(parts))
    return {"log_probs": outs[0], "entropy": outs[1]}
