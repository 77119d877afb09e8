r"""Log-probabilities (and entropies) at selected positions only: the LM head on a gather.

For a causal LM given as *backbone + head*, the ``[B, T, V]`` logits tensor is the memory hog at
large vocabularies.  With a token selection only the selected positions need the head and the
log-softmax: gather their hidden states (``logits_to_keep``-style, but with an arbitrary index),
apply the head to ``[K, H]`` and scatter the ``K`` log-probabilities back to ``[B, T]``.

Position convention: ``positions[b, t]`` marks *target* tokens; their log-probability
:math:`\log p_\theta(x_{b,t} \mid x_{b,<t})` comes from the hidden state at :math:`t - 1`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._checks import as_bool_mask, check_2d, check_positive_number, check_same_shape

__all__ = ["token_logprobs"]


def token_logprobs(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    *,
    return_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Per-token log-probabilities (and entropies) at ``positions``, scattered to ``[B, T]``.

    Parameters
    ----------
    hidden : torch.Tensor, shape (B, T, H)
        Backbone output (last hidden states).
    head : callable
        ``[K, H] -> [K, V]`` logits (e.g. ``model.lm_head``).
    input_ids : torch.Tensor of int, shape (B, T)
        Token ids; the targets are ``input_ids[b, t]``.
    positions : torch.Tensor of bool, shape (B, T)
        Target positions (selected tokens); ``positions[:, 0]`` must be False.
    return_entropy : bool, default False
        Also return the entropy :math:`H_{bt} = -\sum_v p_v \log p_v` of the predictive
        distribution at each target position.
    temperature : float, default 1.0
        Logits are divided by it (as rollout samplers do); a finite number > 0 (temperature 0 is
        greedy decoding, whose log-probabilities are not defined).

    Returns
    -------
    log_probs : torch.Tensor, shape (B, T)
        :math:`\log p_\theta(x_{bt} \mid x_{b,<t})` at ``positions``, 0 elsewhere; float32 at
        least (the logits are cast up before the log-softmax).
    entropy : torch.Tensor of shape (B, T), or None

    Raises
    ------
    ValueError
        ``hidden`` not a floating ``(B, T, H)`` tensor; ``input_ids`` not integer, or a target
        id negative or not below the head's vocabulary size; ``temperature`` not finite and
        > 0; ``head`` failing on ``[K, H]`` hidden states (wrong input size, dtype or device)
        or not returning floating ``[K, V]`` logits.

    Notes
    -----
    With :math:`K` selected positions the head costs :math:`O(K H V)` instead of
    :math:`O(B T H V)` and the logits take :math:`K V` instead of :math:`B T V` memory.  The
    result equals the full-head computation at the selected positions (the same arithmetic on the
    same rows, up to rounding).  Without entropies the log-probability of the target is computed
    as :math:`x_y - \operatorname{logsumexp}(x)` with a fused backward (two ``[K, V]`` buffers
    at the backward's peak instead of three, and fewer passes over them).

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import token_logprobs
    >>> torch.manual_seed(0) and None
    >>> head = torch.nn.Linear(4, 5)
    >>> hidden = torch.randn(2, 3, 4)
    >>> ids = torch.tensor([[0, 1, 2], [3, 4, 0]])
    >>> pos = torch.tensor([[False, True, False], [False, False, True]])
    >>> lp, _ = token_logprobs(hidden, head, ids, pos)
    >>> full = torch.log_softmax(head(hidden), -1)
    >>> bool(torch.allclose(lp[0, 1], full[0, 0, 1])), bool(torch.allclose(lp[1, 2], full[1, 1, 0]))
    (True, True)
    """
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3:
        raise ValueError("hidden must be a tensor of shape (B, T, H)")
    if not hidden.is_floating_point():
        raise ValueError(f"hidden must have a floating dtype (hidden states), got {hidden.dtype}")
    check_positive_number(temperature, "temperature")
    ids = check_2d(input_ids, "input_ids")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(
            f"input_ids must hold integer token ids, got dtype {ids.dtype}; convert with "
            "input_ids.long() if they are exact integers"
        )
    pos = as_bool_mask(positions, "positions")
    check_same_shape(ids, pos, "input_ids", "positions")
    if tuple(hidden.shape[:2]) != tuple(pos.shape):
        raise ValueError(
            f"hidden has shape {tuple(hidden.shape)} but positions has {tuple(pos.shape)}"
        )
    if bool(pos[:, 0].any()):
        raise ValueError(
            "positions[:, 0] is set: the first token of a row has no context to predict it from"
        )
    b, t = pos.nonzero(as_tuple=True)
    h_sel = hidden[b, t - 1]
    try:
        logits = head(h_sel)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"head failed on the selected hidden states (shape {tuple(h_sel.shape)}, dtype "
            f"{h_sel.dtype}, device {h_sel.device}): it must map [K, H] -> [K, V] logits; check "
            f"its input size, dtype and device against hidden's ({err})"
        ) from err
    if (not isinstance(logits, torch.Tensor) or logits.ndim != 2
            or logits.shape[0] != h_sel.shape[0] or not logits.is_floating_point()):
        got = (f"shape {tuple(logits.shape)}, dtype {logits.dtype}"
               if isinstance(logits, torch.Tensor) else type(logits).__name__)
        raise ValueError(
            f"head must return floating [K, V] logits for [K, H] = {tuple(h_sel.shape)} hidden "
            f"states, got {got}"
        )
    vocab = int(logits.shape[1])
    target = ids[b, t]
    if target.numel() and bool(((target < 0) | (target >= vocab)).any()):
        raise ValueError(
            f"input_ids has target ids outside [0, {vocab}) (the head's vocabulary) at selected "
            f"positions: min {int(target.min())}, max {int(target.max())}"
        )
    dt = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.to(dt)
    if not (isinstance(temperature, (int, float)) and temperature == 1.0):
        logits = logits / temperature
    ent = None
    if return_entropy:
        logp_all = torch.log_softmax(logits, dim=-1)
        lp = logp_all.gather(-1, target[:, None])[:, 0]
        h = -(logp_all.exp() * logp_all).sum(-1)
        ent = torch.zeros(pos.shape, dtype=dt, device=hidden.device).index_put((b, t), h)
    else:
        lp = _TargetLogProb.apply(logits, target)
    out = torch.zeros(pos.shape, dtype=dt, device=hidden.device).index_put((b, t), lp)
    return out, ent


class _TargetLogProb(torch.autograd.Function):
    r""":math:`\log\operatorname{softmax}(x)_y = x_y - \operatorname{logsumexp}(x)` for rows
    ``x`` of ``[K, V]`` logits and targets ``y``, with a hand-written backward.

    Autograd's ``log_softmax`` + ``gather`` keeps the ``[K, V]`` log-softmax for the backward
    and then materialises two more ``[K, V]`` tensors (the scattered gradient of ``gather``,
    zero-filled, and the log-softmax gradient).  Here the forward keeps the logits and the ``K``
    log-sum-exps, and the backward writes its one ``[K, V]`` gradient in place:
    :math:`\partial / \partial x = g\,(\mathbb 1_y - \operatorname{softmax}(x))`.  Peak
    ``[K, V]`` buffers in the backward: 2 instead of 3, and three fewer passes over them.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, lse, target)
        return logits.gather(-1, target[:, None])[:, 0] - lse

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, lse, target = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: out of place, twice differentiable
            g = -torch.softmax(logits, dim=-1) * grad[:, None]
            return g.scatter_add(-1, target[:, None], grad[:, None]), None
        g = torch.sub(logits, lse[:, None]).exp_()  # softmax
        g.mul_(-grad[:, None])
        g.scatter_add_(-1, target[:, None], grad[:, None])
        return g, None
