r"""A complete NAT GRPO step for a causal *backbone + head* model: the template for custom loops.

One step, in order (each piece is public and usable on its own):

1. :meth:`LossNormalizers.from_mask <nat_estimators.rl.LossNormalizers.from_mask>` — global
   :math:`N, G, L_i` from the **full** response mask (all-reduced over the data-parallel group);
2. :func:`~nat_estimators.rl.select_tokens` — the token selection and HT weights (prefix cut,
   Poisson, systematic, SRS, size-proportional);
3. :func:`~nat_estimators.rl.crop_mask` + :func:`~nat_estimators.rl.pack_rows` — crop each row
   after its last selected token (prompt kept whole) and pack rows into token-budget
   micro-batches;
4. per micro-batch: backbone on the packed rows, LM head and log-softmax only at the selected
   positions (:func:`~nat_estimators.rl.token_logprobs`), clipped PPO/GRPO per-token loss plus
   per-token KL and entropy terms (:func:`grpo_per_token_loss`), aggregated by
   :func:`~nat_estimators.rl.agg_loss` with the HT weights and the full-mask normalizers, then
   ``backward()``;
5. (:func:`grpo_step`) gradient all-reduce (mean) over the group and the optimiser step.

Because every term is per-token and the weights satisfy :math:`E[w_{it}] = m_{it}`, the
accumulated gradient is an unbiased estimate of the full-batch GRPO gradient, for every loss mode.

Scope: token-level importance ratios only.  GSPO / ``importance_sampling_level="sequence"`` uses
:math:`\exp(\frac1{L_i}\sum_t \log r_{it})`, a nonlinear function of all of a row's tokens; HT
weighting does not make it unbiased and :class:`GRPOConfig` refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ._checks import as_bool_mask, check_2d, check_fraction, check_same_shape, check_shared
from .batching import MicroBatch, PackPlan, crop_mask, pack_rows
from .heads import token_logprobs
from .loss import _SEQ_LEVEL_MSG, agg_loss, resolve_mode
from .selection import Selection, _design_names, needs_sizes, select_tokens
from .stats import LossNormalizers

__all__ = [
    "BackboneHeadModel",
    "GRPOBatch",
    "GRPOConfig",
    "GRPOStepResult",
    "MicroBatchTerms",
    "grpo_backward",
    "grpo_micro_batches",
    "grpo_per_token_loss",
    "grpo_step",
    "plan_batch",
]


class BackboneHeadModel(Protocol):
    """A causal LM split as ``backbone(input_ids, attention_mask) -> hidden [B, T, H]`` and
    ``head(hidden [..., H]) -> logits [..., V]`` (for a Hugging Face model: ``model.model`` and
    ``model.lm_head``).

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.demo.models import TinyCausalLM
    >>> torch.manual_seed(0) and None
    >>> model = TinyCausalLM(vocab_size=11, d_model=8, n_heads=2, n_layers=1, max_len=16)
    >>> ids, am = torch.randint(0, 11, (2, 5)), torch.ones(2, 5, dtype=torch.bool)
    >>> hidden = model.backbone(ids, am)
    >>> hidden.shape, model.head(hidden).shape
    (torch.Size([2, 5, 8]), torch.Size([2, 5, 11]))
    """

    def backbone(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = ...
    ) -> torch.Tensor: ...

    def head(self, hidden: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class GRPOConfig:
    r"""Settings of :func:`grpo_backward` / :func:`grpo_step`.

    Parameters
    ----------
    loss_mode : str, default "seq-mean-token-mean"
        Any :data:`~nat_estimators.rl.LOSS_MODES` name (verl, TRL or OpenRLHF).
    design : str, default "prefix"
        Any :data:`~nat_estimators.rl.DESIGNS` name.
    keep : float, default 0.5
        Expected keep fraction in (0, 1].
    full_keep, min_keep : float
        Prefix design: floor of :math:`\pi` and always-kept fraction.
    shared : bool, default False
        Optimal designs: one token budget for the whole batch
        (:func:`~nat_estimators.rl.select_tokens`).
    clip_low, clip_high : float, default 0.2
        PPO clip range :math:`[1 - \epsilon_{low}, 1 + \epsilon_{high}]`.
    kl_coef : float, default 0
        :math:`\beta` of the per-token k3 KL to the reference policy.
    entropy_coef : float, default 0
        :math:`\alpha` of the per-token entropy bonus.
    normalizer : {"ht", "hajek"}, default "ht"
    max_tokens, max_rows : int, optional
        Micro-batch budget (padded tokens, rows); ``None``: one micro-batch.
    balance : bool, default False
        With ``max_rows`` (and no ``max_tokens``): spread the cropped rows over the fewest
        micro-batches so that each holds about the same number of real tokens
        (:func:`~nat_estimators.rl.pack_rows` with ``balance=True``).  Under prefix cutting this
        keeps the peak near the kept-token share instead of the longest kept row's micro-batch.
    const_len : int, optional
        :math:`C` for ``seq-mean-token-sum-norm`` / ``dr_grpo``.
    crop : bool, default True
        Stop each row's forward pass after its last selected token.
    temperature : float, default 1.0
    importance_sampling_level : {"token"}, default "token"
        ``"sequence"`` (GSPO) is refused: see the module notes.
    weight_dtype : torch.dtype, default float32

    Examples
    --------
    >>> from nat_estimators.rl import GRPOConfig
    >>> cfg = GRPOConfig(loss_mode="dr_grpo", design="poisson", keep=0.25, const_len=512)
    >>> cfg.design, cfg.keep, cfg.crop, cfg.max_tokens
    ('poisson', 0.25, True, None)
    >>> GRPOConfig(importance_sampling_level="sequence")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: importance_sampling_level='sequence': sequence-level ratio objectives ...
    """

    loss_mode: str = "seq-mean-token-mean"
    design: str = "prefix"
    keep: float = 0.5
    full_keep: float = 0.05
    min_keep: float = 0.0
    shared: bool = False
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    normalizer: str = "ht"
    max_tokens: int | None = None
    max_rows: int | None = None
    balance: bool = False
    const_len: int | None = None
    crop: bool = True
    temperature: float = 1.0
    importance_sampling_level: str = "token"
    weight_dtype: torch.dtype = field(default=torch.float32)

    def __post_init__(self) -> None:
        if self.importance_sampling_level != "token":
            raise ValueError(
                f"importance_sampling_level={self.importance_sampling_level!r}: {_SEQ_LEVEL_MSG}"
            )
        resolve_mode(self.loss_mode)
        if self.design not in (names := _design_names()):
            raise ValueError(f"design must be one of {names}, got {self.design!r}")
        check_fraction(self.keep, "keep")
        check_shared(self.shared, self.design)
        if self.normalizer not in ("ht", "hajek"):
            raise ValueError(f"normalizer must be 'ht' or 'hajek', got {self.normalizer!r}")
        if self.kl_coef < 0 or self.entropy_coef < 0 or self.clip_low < 0 or self.clip_high < 0:
            raise ValueError("kl_coef, entropy_coef, clip_low and clip_high must be >= 0")
        if not isinstance(self.balance, bool):
            raise ValueError(f"balance must be a bool, got {self.balance!r}")
        if self.balance and (self.max_rows is None or self.max_tokens is not None):
            raise ValueError(
                "balance=True needs max_rows and no max_tokens (it spreads rows over "
                "ceil(n / max_rows) micro-batches of about equal real tokens)"
            )


@dataclass(frozen=True, eq=False)
class GRPOBatch:
    """One rank's rollout batch: whole rows (prompt + response), left or right padded.

    Attributes
    ----------
    input_ids : torch.Tensor of int64, shape (B, T)
    attention_mask : torch.Tensor of bool, shape (B, T)
        Real tokens (one contiguous block per row).
    response_mask : torch.Tensor of bool, shape (B, T)
        Loss tokens (response tokens; tool/observation tokens excluded); inside the attention
        mask and never at position 0.
    advantages : torch.Tensor, shape (B,) or (B, T)
        GRPO advantages (per row or per token).
    old_log_probs : torch.Tensor, shape (B, T), optional
        Behaviour-policy log-probs; ``None``: on-policy (ratio 1, gradient of the current
        policy).
    ref_log_probs : torch.Tensor, shape (B, T), optional
        Reference-policy log-probs (needed when ``kl_coef > 0``).
    sizes : torch.Tensor, shape (B, T), optional
        Size measures for the proportional designs (e.g. old-policy entropy).

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import GRPOBatch
    >>> ids = torch.randint(0, 16, (2, 6), generator=torch.Generator().manual_seed(0))
    >>> am = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    >>> rm = am.clone(); rm[:, :3] = False  # prompt (and left padding) carry no loss
    >>> batch = GRPOBatch(ids, am, rm, advantages=torch.tensor([1.0, -1.0]))
    >>> batch.response_mask.sum(-1).tolist()
    [3, 3]
    >>> GRPOBatch(ids, am, am, advantages=torch.zeros(2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: response_mask marks a token with no real token before it ...
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    advantages: torch.Tensor
    old_log_probs: torch.Tensor | None = None
    ref_log_probs: torch.Tensor | None = None
    sizes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        ids = check_2d(self.input_ids, "input_ids")
        am = as_bool_mask(self.attention_mask, "attention_mask")
        rm = as_bool_mask(self.response_mask, "response_mask")
        check_same_shape(am, ids, "attention_mask", "input_ids")
        check_same_shape(rm, ids, "response_mask", "input_ids")
        if bool((rm & ~am).any()):
            raise ValueError("response_mask marks padding positions (outside attention_mask)")
        if bool(rm[:, 0].any()) or bool((rm[:, 1:] & ~am[:, :-1]).any()):
            raise ValueError(
                "response_mask marks a token with no real token before it (position 0 or right "
                "after padding): its log-probability needs a context; keep a non-empty prompt"
            )
        a = self.advantages
        if not isinstance(a, torch.Tensor) or a.shape not in ((ids.shape[0],), tuple(ids.shape)):
            raise ValueError(f"advantages must have shape ({ids.shape[0]},) or {tuple(ids.shape)}")
        for name in ("old_log_probs", "ref_log_probs", "sizes"):
            v = getattr(self, name)
            if v is not None:
                check_same_shape(check_2d(v, name), ids, name, "input_ids")
        object.__setattr__(self, "attention_mask", am)
        object.__setattr__(self, "response_mask", rm)


def grpo_per_token_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_log_probs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> torch.Tensor:
    r"""Clipped PPO/GRPO per-token loss with per-token KL and entropy terms.

    Parameters
    ----------
    log_probs, old_log_probs : torch.Tensor, shape (B, T)
        :math:`\log\pi_\theta` and :math:`\log\pi_{old}` of the taken tokens.
    advantages : torch.Tensor, shape (B, T) or broadcastable (e.g. (B, 1))
    clip_low, clip_high : float
    ref_log_probs : torch.Tensor, optional
        :math:`\log\pi_{ref}`; required when ``kl_coef > 0``.
    kl_coef : float
    entropy : torch.Tensor, optional
        Per-token entropy; required when ``entropy_coef > 0``.
    entropy_coef : float

    Returns
    -------
    torch.Tensor, shape (B, T)

    Notes
    -----
    With :math:`r = \exp(\log\pi_\theta - \log\pi_{old})` and :math:`\delta = \log\pi_{ref} -
    \log\pi_\theta`:

    .. math::

        \ell = -\min\bigl(r A,\ \mathrm{clip}(r, 1-\epsilon_{low}, 1+\epsilon_{high}) A\bigr)
               + \beta\,(e^{\delta} - \delta - 1) - \alpha H .

    Every term depends on token :math:`t` alone, so HT weighting is unbiased for their sum.

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import grpo_per_token_loss
    >>> lp = torch.log(torch.tensor([[0.5, 0.9]]))
    >>> old = torch.log(torch.tensor([[0.25, 0.9]]))
    >>> grpo_per_token_loss(lp, old, torch.tensor([[1.0, -1.0]]))
    tensor([[-1.2000,  1.0000]])
    """
    ratio = torch.exp(log_probs - old_log_probs)
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    loss = -torch.minimum(ratio * advantages, clipped * advantages)
    if kl_coef:
        if ref_log_probs is None:
            raise ValueError("kl_coef > 0 needs ref_log_probs")
        delta = ref_log_probs - log_probs
        loss = loss + kl_coef * (torch.exp(delta) - delta - 1)
    if entropy_coef:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs entropy")
        loss = loss - entropy_coef * entropy
    return loss


@dataclass(frozen=True, eq=False)
class MicroBatchTerms:
    """What :func:`grpo_micro_batches` yields: one micro-batch's per-token loss and its inputs to
    :func:`~nat_estimators.rl.agg_loss` (all in the micro-batch's packed layout ``(b, t)``).

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.demo.models import TinyCausalLM
    >>> from nat_estimators.rl import (GRPOBatch, GRPOConfig, LossNormalizers,
    ...                                grpo_micro_batches, select_tokens)
    >>> torch.manual_seed(0) and None
    >>> model = TinyCausalLM(vocab_size=16, d_model=8, n_heads=2, n_layers=1, max_len=16)
    >>> ids, am = torch.randint(0, 16, (2, 6)), torch.ones(2, 6, dtype=torch.bool)
    >>> rm = am.clone(); rm[:, :2] = False
    >>> batch = GRPOBatch(ids, am, rm, advantages=torch.tensor([1.0, -1.0]))
    >>> sel = select_tokens(rm, "poisson", 0.5, generator=torch.Generator().manual_seed(0))
    >>> norm, cfg = LossNormalizers.from_mask(rm), GRPOConfig(design="poisson")
    >>> terms = next(grpo_micro_batches(model, batch, sel, norm, cfg))
    >>> terms.per_token_loss.shape == terms.weights.shape, terms.normalizers.num_tokens
    (True, 8)
    >>> terms.loss("token-mean").ndim
    0
    """

    micro_batch: MicroBatch
    per_token_loss: torch.Tensor
    response_mask: torch.Tensor
    weights: torch.Tensor
    normalizers: LossNormalizers
    log_probs: torch.Tensor
    entropy: torch.Tensor | None

    def loss(
        self, mode: str, *, normalizer: str = "ht", dp_size: int | None = None
    ) -> torch.Tensor:
        """``agg_loss`` of this micro-batch with its weights and full-mask normalizers."""
        return agg_loss(
            self.per_token_loss,
            self.response_mask,
            mode,
            weights=self.weights,
            normalizer=normalizer,  # type: ignore[arg-type]
            normalizers=self.normalizers,
            dp_size=self.normalizers.world_size if dp_size is None else dp_size,
        )


def _forward_keep(batch: GRPOBatch, selection: Selection, crop: bool) -> torch.Tensor:
    if crop:
        return crop_mask(batch.attention_mask, selection.crop_lengths)
    return batch.attention_mask & selection.sample.any(-1, keepdim=True)


def plan_batch(batch: GRPOBatch, selection: Selection, config: GRPOConfig) -> PackPlan:
    """The crop-and-pack plan of a batch for a selection (rows with nothing selected dropped).

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import GRPOBatch, GRPOConfig, plan_batch, select_tokens
    >>> ids, am = torch.zeros(3, 8, dtype=torch.long), torch.ones(3, 8, dtype=torch.bool)
    >>> rm = am.clone(); rm[:, :2] = False
    >>> batch = GRPOBatch(ids, am, rm, advantages=torch.zeros(3))
    >>> sel = select_tokens(rm, "prefix", 0.5, generator=torch.Generator().manual_seed(0))
    >>> plan = plan_batch(batch, sel, GRPOConfig(max_tokens=8))
    >>> sel.crop_lengths.tolist(), [mb.rows.tolist() for mb in plan]
    ([0, 4, 5], [[2], [1]])
    >>> plan.real_tokens, plan.padded_tokens, int(am.sum())
    (9, 9, 24)
    """
    return pack_rows(
        _forward_keep(batch, selection, config.crop),
        max_tokens=config.max_tokens,
        max_rows=config.max_rows,
        balance=config.balance,
    )


def grpo_micro_batches(
    model: BackboneHeadModel,
    batch: GRPOBatch,
    selection: Selection,
    normalizers: LossNormalizers,
    config: GRPOConfig,
    plan: PackPlan | None = None,
) -> Iterator[MicroBatchTerms]:
    """Run the forward pass micro-batch by micro-batch and yield the per-token terms.

    The backbone sees only each row's kept (cropped) tokens; the head and log-softmax run only at
    the selected positions.  Call ``.loss(mode)`` on each item and ``backward()`` it before
    pulling the next one to keep one micro-batch's activations alive at a time.

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.demo.models import TinyCausalLM
    >>> from nat_estimators.rl import (GRPOBatch, GRPOConfig, LossNormalizers,
    ...                                grpo_micro_batches, select_tokens)
    >>> torch.manual_seed(0) and None
    >>> model = TinyCausalLM(vocab_size=16, d_model=8, n_heads=2, n_layers=1, max_len=16)
    >>> ids, am = torch.randint(0, 16, (3, 8)), torch.ones(3, 8, dtype=torch.bool)
    >>> rm = am.clone(); rm[:, :2] = False
    >>> batch = GRPOBatch(ids, am, rm, advantages=torch.tensor([1.0, -1.0, 0.5]))
    >>> sel = select_tokens(rm, "prefix", 0.5, generator=torch.Generator().manual_seed(0))
    >>> cfg, norm = GRPOConfig(max_tokens=8), LossNormalizers.from_mask(rm)
    >>> for terms in grpo_micro_batches(model, batch, sel, norm, cfg):
    ...     terms.loss(cfg.loss_mode).backward()  # frees this micro-batch's activations
    ...     print(terms.micro_batch.rows.tolist(), tuple(terms.per_token_loss.shape))
    [2] (1, 5)
    [1] (1, 4)
    """
    if plan is None:
        plan = plan_batch(batch, selection, config)
    adv = batch.advantages
    for mb in plan:
        ids = mb.gather(batch.input_ids)
        hidden = model.backbone(ids, mb.valid)
        pos = mb.gather(selection.sample, fill=False)
        lp, ent = token_logprobs(
            hidden,
            model.head,
            ids,
            pos,
            return_entropy=bool(config.entropy_coef),
            temperature=config.temperature,
        )
        old = lp.detach() if batch.old_log_probs is None else mb.gather(batch.old_log_probs)
        a = mb.gather(adv)
        a = a[:, None] if a.ndim == 1 else a
        ref = None if batch.ref_log_probs is None else mb.gather(batch.ref_log_probs)
        ell = grpo_per_token_loss(
            lp,
            old.to(lp.dtype),
            a.to(lp.dtype),
            clip_low=config.clip_low,
            clip_high=config.clip_high,
            ref_log_probs=None if ref is None else ref.to(lp.dtype),
            kl_coef=config.kl_coef,
            entropy=ent,
            entropy_coef=config.entropy_coef,
        )
        yield MicroBatchTerms(
            mb,
            ell,
            mb.gather(batch.response_mask, fill=False),
            mb.gather(selection.weights),
            normalizers.rows(mb.rows),
            lp,
            ent,
        )


@dataclass(frozen=True, eq=False)
class GRPOStepResult:
    """Outcome of :func:`grpo_backward` / :func:`grpo_step`.

    Attributes
    ----------
    loss : torch.Tensor
        The NAT loss of this rank (sum over micro-batches, detached).
    selection : Selection
    normalizers : LossNormalizers
    plan : PackPlan
    log_probs : torch.Tensor, shape (B, T)
        Current-policy log-probs at the selected tokens (0 elsewhere), detached.
    metrics : dict
        ``eligible_tokens``, ``selected_tokens``, ``forward_tokens`` (real tokens fed to the
        backbone), ``padded_tokens`` (incl. padding), ``full_tokens`` (real tokens of the batch),
        ``micro_batches``.

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.demo.models import TinyCausalLM
    >>> from nat_estimators.rl import GRPOBatch, GRPOConfig, grpo_backward
    >>> torch.manual_seed(0) and None
    >>> model = TinyCausalLM(vocab_size=16, d_model=8, n_heads=2, n_layers=1, max_len=16)
    >>> ids, am = torch.randint(0, 16, (3, 8)), torch.ones(3, 8, dtype=torch.bool)
    >>> rm = am.clone(); rm[:, :3] = False
    >>> batch = GRPOBatch(ids, am, rm, advantages=torch.tensor([1.0, 0.0, -1.0]))
    >>> out = grpo_backward(model, batch, GRPOConfig(), generator=torch.Generator().manual_seed(0))
    >>> out.log_probs.shape, out.loss.dtype, len(out.plan)
    (torch.Size([3, 8]), torch.float64, 1)
    >>> [int(out.metrics[k]) for k in ("selected_tokens", "forward_tokens", "full_tokens")]
    [4, 10, 24]
    """

    loss: torch.Tensor
    selection: Selection
    normalizers: LossNormalizers
    plan: PackPlan
    log_probs: torch.Tensor
    metrics: dict[str, float]


def grpo_backward(
    model: BackboneHeadModel,
    batch: GRPOBatch,
    config: GRPOConfig,
    *,
    generator: torch.Generator | None = None,
    selection: Selection | None = None,
    normalizers: LossNormalizers | None = None,
    all_reduce: bool = False,
    group: Any = None,
) -> GRPOStepResult:
    """Accumulate the NAT GRPO gradient of one batch into ``.grad`` (no optimiser step).

    Parameters
    ----------
    model : BackboneHeadModel
    batch : GRPOBatch
        This rank's rows.
    config : GRPOConfig
    generator : torch.Generator, optional
        For the selection (on the batch's device).
    selection : Selection, optional
        Use this selection instead of drawing one (replay, tests, sharding a global selection).
    normalizers : LossNormalizers, optional
        Precomputed full-mask statistics; default computed here from ``batch.response_mask``.
    all_reduce : bool, default False
        Sum the counts over ``group`` (data parallelism); the loss is then scaled by the world
        size so that *averaged* gradients are the global gradient.
    group : ProcessGroup, optional

    Returns
    -------
    GRPOStepResult

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.demo.models import TinyCausalLM
    >>> from nat_estimators.rl import GRPOBatch, GRPOConfig, grpo_backward
    >>> torch.manual_seed(0) and None
    >>> model = TinyCausalLM(vocab_size=16, d_model=8, n_heads=2, n_layers=1, max_len=16)
    >>> ids, am = torch.randint(0, 16, (4, 10)), torch.ones(4, 10, dtype=torch.bool)
    >>> rm = am.clone(); rm[:, :4] = False
    >>> batch = GRPOBatch(ids, am, rm, advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]))
    >>> cfg = GRPOConfig(design="poisson", keep=0.5, loss_mode="token-mean")
    >>> out = grpo_backward(model, batch, cfg, generator=torch.Generator().manual_seed(0))
    >>> all(p.grad is not None for p in model.parameters())
    True
    >>> out.metrics["selected_tokens"], out.metrics["eligible_tokens"]
    (12.0, 24.0)
    """
    if normalizers is None:
        normalizers = LossNormalizers.from_mask(
            batch.response_mask, const_len=config.const_len, all_reduce=all_reduce, group=group
        )
    if selection is None:
        selection = select_tokens(
            batch.response_mask,
            config.design,
            config.keep,
            sizes=batch.sizes if needs_sizes(config.design) else None,
            generator=generator,
            full_keep=config.full_keep,
            min_keep=config.min_keep,
            weight_dtype=config.weight_dtype,
            shared=config.shared,
        )
    elif not bool((selection.response_mask == batch.response_mask).all()):
        raise ValueError("selection was drawn on a different response_mask than the batch's")
    plan = plan_batch(batch, selection, config)
    total = torch.zeros((), dtype=torch.float64, device=batch.input_ids.device)
    lps = []
    for terms in grpo_micro_batches(model, batch, selection, normalizers, config, plan):
        loss = terms.loss(config.loss_mode, normalizer=config.normalizer)
        loss.backward()
        total = total + loss.detach().to(torch.float64)
        lps.append(terms.log_probs.detach())
    log_probs = (
        plan.scatter(lps)
        if lps
        else torch.zeros(batch.input_ids.shape, device=batch.input_ids.device)
    )
    metrics = {
        "eligible_tokens": float(batch.response_mask.sum()),
        "selected_tokens": float(selection.sample.sum()),
        "forward_tokens": float(plan.real_tokens),
        "padded_tokens": float(plan.padded_tokens),
        "full_tokens": float(batch.attention_mask.sum()),
        "micro_batches": float(len(plan)),
    }
    return GRPOStepResult(total, selection, normalizers, plan, log_probs, metrics)


def grpo_step(
    model: BackboneHeadModel,
    optimizer: torch.optim.Optimizer,
    batch: GRPOBatch,
    config: GRPOConfig,
    *,
    generator: torch.Generator | None = None,
    all_reduce: bool = False,
    group: Any = None,
    reduce_gradients: bool = True,
    max_grad_norm: float | None = None,
    parameters: Callable[[], Any] | None = None,
) -> GRPOStepResult:
    """One NAT GRPO update: zero grads, :func:`grpo_backward`, (all-reduce), clip, step.

    With ``all_reduce=True`` and ``reduce_gradients=True`` the gradients are averaged over
    ``group`` by hand (leave ``reduce_gradients=False`` for a DDP/FSDP-wrapped model, which
    averages them itself).

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.demo.models import TinyCausalLM
    >>> from nat_estimators.rl import GRPOBatch, GRPOConfig, grpo_step
    >>> torch.manual_seed(0) and None
    >>> model = TinyCausalLM(vocab_size=16, d_model=16, n_heads=2, n_layers=1, max_len=32)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> ids = torch.randint(0, 16, (4, 12))
    >>> am = torch.ones(4, 12, dtype=torch.bool)
    >>> rm = am.clone(); rm[:, :4] = False
    >>> batch = GRPOBatch(ids, am, rm, advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]))
    >>> cfg = GRPOConfig(design="prefix", keep=0.5, loss_mode="token-mean", max_tokens=24)
    >>> out = grpo_step(model, opt, batch, cfg, generator=torch.Generator().manual_seed(0))
    >>> out.metrics["forward_tokens"] <= out.metrics["full_tokens"]
    True
    """
    params = list(model.parameters() if parameters is None else parameters())  # type: ignore[attr-defined]
    optimizer.zero_grad(set_to_none=True)
    out = grpo_backward(
        model, batch, config, generator=generator, all_reduce=all_reduce, group=group
    )
    if all_reduce and reduce_gradients:
        import torch.distributed as dist

        world = dist.get_world_size(group)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)
            p.grad.div_(world)
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return out
