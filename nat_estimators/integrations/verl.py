r"""NAT token subsampling for verl: a driver-side selector, an actor loss, a trainer mixin.

verl computes advantages on the driver (single controller) and the policy loss on the actor
workers.  NAT plugs in at those two places and nowhere else:

* **Driver** — :class:`NATSelector` draws one selection per step on the ``DataProto`` batch after
  the old log-probabilities and advantages are computed, from old-policy quantities only, with one
  ``torch.Generator`` per run.  It stores the Horvitz–Thompson weights :math:`w = I/\pi` as
  ``nat_weights`` (and, for prefix cutting, the crop lengths as ``nat_crop_lengths``) in the
  batch.  ``response_mask`` is never touched.  :meth:`NATSelector.cropped` returns a view of the
  batch whose ``attention_mask`` stops after each row's last kept token, so remove-padding packing
  and dynamic batch sizing forward only the kept prefixes during the update.
* **Actor** — :func:`nat_ppo_loss` is verl's ``ppo_loss`` with every per-token term (policy, KL,
  entropy) multiplied by the weights, aggregated by verl's own ``agg_loss`` with verl's global
  denominators (``batch_num_tokens``, ``global_batch_size``, ``dp_size``,
  ``loss_scale_factor``), which verl computes from the **full** response mask.  Install it with
  the worker's ``set_loss_fn``.
* **Switching it on** — :class:`NATTrainerMixin` (for ``RayPPOTrainer``) does both from a
  ``nat`` section of the verl config; :func:`nat_options` reads that section.

Every aggregation verl offers is linear in the per-token loss with coefficients fixed by the full
mask, :math:`J = \sum_{it} a_{it} m_{it} \ell_{it}`; NAT computes :math:`\hat J = \sum_{it}
a_{it} m_{it} w_{it} \ell_{it}` with the same :math:`a`.  Since the selection is drawn
independently of the parameters and :math:`E[w_{it}] = m_{it}`, :math:`E[\hat J] = J` and
:math:`E[\nabla\hat J] = \nabla J` (Horvitz and Thompson 1952); with ``keep=1``, :math:`w \equiv
1` and :math:`\hat J = J` exactly.

Refused, with the reason: sequence-level policy losses (``gspo``, ``geo_mean``), losses that
couple tokens across the batch through the current policy (``clip_cov``, ``kl_cov``) and
``bypass_mode`` (it ignores ``rollout_is_weights`` and rewrites the response mask).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from functools import partial
from typing import Any

try:
    import torch
    import verl
    from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn, kl_penalty
    from verl.utils.metric import AggregationType, Metric
    from verl.workers.utils.padding import no_padding_2_padding
except ImportError as _e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "nat_estimators.integrations.verl needs verl (with ray) and PyTorch: install the extra "
        "with pip install 'nat-estimators[verl]' (tested with verl>=0.9,<0.10; verl pins its own "
        "transformers range, so use an environment of its own)"
    ) from _e

from ..rl import KappaController, Selection, needs_sizes, select_tokens
from ..rl._checks import check_fraction, check_shared
from ..rl.batching import crop_mask
from ..rl.controller import _advantage_moment
from ..rl.selection import _design_names
from ._common import check_version, floored_sizes

__all__ = [
    "REFUSED_LOSS_MODES",
    "SIZE_SOURCES",
    "TESTED_VERL",
    "TOKEN_LEVEL_LOSS_MODES",
    "NATSelector",
    "NATTrainerMixin",
    "check_actor_config",
    "nat_options",
    "nat_ppo_loss",
    "route_into_rollout_is_weights",
]

#: The verl release range this integration is tested against (``[low, high)``).
TESTED_VERL: tuple[str, str] = ("0.9", "0.10")

_ALLOW_ENV = "NAT_ESTIMATORS_ALLOW_UNTESTED_VERL"


def _check_verl_version(version: str) -> None:
    check_version(
        "verl", version, TESTED_VERL, module="nat_estimators.integrations.verl", extra="verl",
        why="nat_ppo_loss mirrors verl's ppo_loss and the policy-loss registry, which change "
        "between verl releases", allow_env=_ALLOW_ENV,
    )


_check_verl_version(verl.__version__)

#: verl policy-loss modes (``actor.policy_loss.loss_mode``) whose loss is a sum of per-token
#: terms, each a function of that token's current and old log-probability and advantage only.
TOKEN_LEVEL_LOSS_MODES: tuple[str, ...] = (
    "vanilla", "dppo_tv", "dppo_kl", "sapo", "gpg", "dro", "cispo",
)

#: Modes NAT refuses, with the reason.
REFUSED_LOSS_MODES: dict[str, str] = {
    "gspo": "its ratio is exp(mean_t log r_it) over the whole response, a nonlinear function of "
    "every token's log-probability: no token subset estimates it without bias",
    "geo_mean": "its ratio is the geometric mean over the whole response, a nonlinear function "
    "of every token's log-probability: no token subset estimates it without bias",
    "clip_cov": "it picks the tokens to clip from the covariance of advantages and current "
    "log-probabilities over the whole micro-batch, so each token's term depends on the others",
    "kl_cov": "it picks the tokens to penalise from the top covariance of advantages and current "
    "log-probabilities over the whole micro-batch, so each token's term depends on the others",
    "bypass_mode": "it ignores rollout_is_weights and rewrites the response mask from the "
    "current policy (rejection sampling), so the weights never reach its loss",
}

#: Old-policy size measures of the proportional designs (``nat.sizes``).
SIZE_SOURCES: tuple[str, ...] = ("advantage", "entropy", "surprisal")

_OLD_ENTROPY = "nat_old_entropy"  # the old policy's entropy, kept by NATTrainerMixin

_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
              "seq-mean-token-sum-norm")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    getter = getattr(cfg, "get", None)
    if callable(getter):
        try:
            return getter(key, default)
        except (TypeError, KeyError, AttributeError):
            pass
    return getattr(cfg, key, default)


def check_actor_config(config: Any) -> None:
    """Refuse an actor config whose loss NAT cannot estimate without bias.

    Parameters
    ----------
    config : verl ``ActorConfig`` or a mapping with the same fields
        Reads ``policy_loss.loss_mode`` and ``loss_agg_mode``.

    Raises
    ------
    ValueError
        A sequence-level or batch-coupled policy loss (:data:`REFUSED_LOSS_MODES`), a mode not
        known to be token-level, or an unknown ``loss_agg_mode``.

    Examples
    --------
    >>> from nat_estimators.integrations.verl import check_actor_config
    >>> check_actor_config({"policy_loss": {"loss_mode": "vanilla"}, "loss_agg_mode": "token-mean"})
    >>> check_actor_config({"policy_loss": {"loss_mode": "gspo"}, "loss_agg_mode": "token-mean"})
    Traceback (most recent call last):
    ...
    ValueError: NAT cannot use policy_loss.loss_mode='gspo': its ratio is exp(mean_t log r_it) ...
    """
    policy_loss = _get(config, "policy_loss", None)
    mode = _get(policy_loss, "loss_mode", "vanilla") if policy_loss is not None else "vanilla"
    if mode in REFUSED_LOSS_MODES:
        raise ValueError(
            f"NAT cannot use policy_loss.loss_mode={mode!r}: {REFUSED_LOSS_MODES[mode]}. Use a "
            f"token-level mode, one of {TOKEN_LEVEL_LOSS_MODES}, or train it on full responses"
        )
    if mode not in TOKEN_LEVEL_LOSS_MODES:
        raise ValueError(
            f"policy_loss.loss_mode={mode!r} is not known to be token-level (a sum of per-token "
            f"terms); NAT supports {TOKEN_LEVEL_LOSS_MODES}"
        )
    agg = _get(config, "loss_agg_mode", "token-mean")
    if agg not in _AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {_AGG_MODES}, got {agg!r}")


# ---------------------------------------------------------------------------------- driver side
def nat_options(config: Any) -> dict[str, Any]:
    """The keyword arguments of :class:`NATSelector` from a verl config's ``nat`` section.

    Reads ``nat.design``, ``nat.keep``, ``nat.sizes``, ``nat.seed`` (default: ``data.seed`` or
    0), ``nat.full_keep``, ``nat.min_keep``, ``nat.crop``, ``nat.variance_ratio`` and
    ``nat.shared``; a missing section means NAT is off (``{}``).  On the command line:
    ``+nat.design=prefix +nat.keep=0.5``.

    Examples
    --------
    >>> from nat_estimators.integrations.verl import nat_options
    >>> nat_options({"nat": {"design": "systematic", "keep": 0.25}})
    {'design': 'systematic', 'keep': 0.25}
    >>> nat_options({"trainer": {}})
    {}
    """
    section = _get(config, "nat", None)
    if section is None:
        return {}
    keys = ("design", "keep", "sizes", "seed", "full_keep", "min_keep", "crop", "variance_ratio",
            "shared")
    out = {k: _get(section, k, None) for k in keys}
    unknown = set(section.keys() if hasattr(section, "keys") else ()) - set(keys)
    if unknown:
        raise ValueError(f"unknown nat options {sorted(unknown)}; expected some of {keys}")
    if out["seed"] is None:
        data = _get(config, "data", None)
        seed = _get(data, "seed", None) if data is not None else None
        if seed is not None:
            out["seed"] = seed
    return {k: v for k, v in out.items() if v is not None}


class NATSelector:
    r"""Draws the NAT selection on a verl ``DataProto`` batch, on the driver, once per step.

    Parameters
    ----------
    design : str, default "prefix"
        One of :data:`nat_estimators.rl.DESIGNS` (``"prefix"``, ``"poisson"``,
        ``"simple_random"``, ``"systematic"``, the ``*_proportional`` and the variance-optimal
        ``*_optimal`` designs).
    keep : float, default 0.5
        Expected kept fraction :math:`\kappa \in (0, 1]` of each response's tokens; ``1`` keeps
        every token (weights exactly 1: verl's loss unchanged).  With ``variance_ratio`` the
        upper bound of the chosen :math:`\kappa`.
    sizes : {"advantage", "entropy", "surprisal"}, optional
        Size measure of the proportional and optimal designs (for the optimal designs, read as
        a per-token second-moment proxy), from old-policy quantities already in the
        batch: :math:`|A|` (``advantages``), the old policy's entropy (``entropys``, or
        ``nat_old_entropy`` where :class:`NATTrainerMixin` keeps it) or :math:`-\log\pi_{old}`
        (``old_log_probs``).  Floored at :math:`10^{-3}` times their mean so every token keeps
        :math:`\pi > 0`.
    seed : int, default 0
        Seed of the run's one ``torch.Generator`` (CPU: the driver's batch lives on the CPU).
    full_keep, min_keep : float
        Prefix only: probability of keeping a whole response (weights are at most
        ``1/full_keep``) and the always-kept leading fraction.
    crop : bool, default True
        Prefix designs only: store ``nat_crop_lengths`` so that :meth:`cropped` can shorten the
        forward pass.
    variance_ratio : float, optional
        :math:`\varepsilon`: choose each step's keep fraction with
        :class:`~nat_estimators.rl.KappaController` (attribute ``controller``) so that NAT adds
        about :math:`\varepsilon` times the rollout-sampling variance, from the second-moment
        proxy :math:`(A\, x)^2` (:math:`x` the ``sizes`` measure or 1; fixed before the draw),
        :math:`\kappa` between ``max(full_keep, 0.05)`` (prefix; 0.05 otherwise) and ``keep``.
    shared : bool, default False
        Optimal designs only: one token budget for the whole batch instead of one per response.

    Notes
    -----
    The selection reads ``response_mask`` (never writes it) and, for sizes, old-policy fields
    only, so it is independent of the parameters the update differentiates.  One generator per
    run: the same seed and the same batches give the same selections.

    Examples
    --------
    >>> import torch
    >>> from verl import DataProto
    >>> from nat_estimators.integrations.verl import NATSelector
    >>> batch = DataProto.from_single_dict({
    ...     "responses": torch.ones(2, 4, dtype=torch.long),
    ...     "response_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
    ...     "advantages": torch.ones(2, 4)})
    >>> sel = NATSelector("systematic", keep=0.5, seed=0).select(batch)
    >>> batch.batch["nat_weights"].tolist()
    [[0.0, 2.0, 0.0, 2.0], [0.0, 2.0, 0.0, 0.0]]
    >>> batch.batch["response_mask"].tolist()  # untouched
    [[1, 1, 1, 1], [1, 1, 0, 0]]
    """

    def __init__(
        self,
        design: str = "prefix",
        keep: float = 0.5,
        *,
        sizes: str | None = None,
        seed: int = 0,
        full_keep: float = 0.05,
        min_keep: float = 0.0,
        crop: bool = True,
        variance_ratio: float | None = None,
        shared: bool = False,
    ) -> None:
        names = _design_names()
        if design not in names:
            raise ValueError(f"design must be one of {names}, got {design!r}")
        self.keep = check_fraction(keep, "keep")
        check_fraction(full_keep, "full_keep")
        if isinstance(min_keep, bool) or not isinstance(min_keep, (int, float)) or not (
            math.isfinite(min_keep) and 0 <= min_keep < 1
        ):
            raise ValueError(f"min_keep must lie in [0, 1), got {min_keep!r}")
        sized = needs_sizes(design)
        if sized and sizes is None:
            raise ValueError(f"design={design!r} needs sizes, one of {SIZE_SOURCES}")
        if sizes is not None and sizes not in SIZE_SOURCES:
            raise ValueError(f"sizes must be one of {SIZE_SOURCES}, got {sizes!r}")
        if sizes is not None and not sized:
            raise ValueError(
                f"sizes is only used by the proportional and optimal designs, not {design!r}")
        check_shared(shared, design)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if not isinstance(crop, bool):
            raise ValueError(f"crop must be a bool, got {crop!r}")
        self.design, self.sizes, self.seed = design, sizes, seed
        self.full_keep, self.min_keep = float(full_keep), float(min_keep)
        self.crop = crop and design.startswith("prefix")
        self.shared = shared
        self.generator = torch.Generator().manual_seed(seed)
        self.controller: KappaController | None = None
        if variance_ratio is not None:
            lo = max(self.full_keep, 0.05) if design.startswith("prefix") else 0.05
            self.controller = KappaController(
                epsilon=variance_ratio, kappa_min=min(lo, self.keep), kappa_max=self.keep,
                design=design, full_keep=self.full_keep, min_keep=self.min_keep, shared=shared)

    def __repr__(self) -> str:
        return (f"NATSelector(design={self.design!r}, keep={self.keep}, sizes={self.sizes!r}, "
                f"seed={self.seed})")

    @staticmethod
    def _fields(batch: Any) -> Any:
        td = getattr(batch, "batch", None)
        if td is None:
            raise TypeError(f"batch must be a verl DataProto with tensors, got {type(batch)}")
        for key, why in (("response_mask", "the eligible tokens"),
                         ("advantages", "advantages are computed before the selection")):
            if key not in td.keys():
                raise ValueError(
                    f"the batch has no {key!r} ({why}): call NATSelector.select after verl's "
                    "compute_advantage (and compute_response_mask)"
                )
        return td

    def _size_measure(self, td: Any, mask: torch.Tensor) -> torch.Tensor | None:
        if self.sizes is None:
            return None
        keys = {"advantage": ("advantages",), "entropy": ("entropys", _OLD_ENTROPY),
                "surprisal": ("old_log_probs",)}[self.sizes]
        key = next((k for k in keys if k in td.keys()), None)
        if key is None:
            raise ValueError(
                f"sizes={self.sizes!r} reads {' or '.join(map(repr, keys))} from the batch, "
                "which has none"
                + (" (RayPPOTrainer drops the old policy's entropy after logging it; "
                   "NATTrainerMixin keeps it as 'nat_old_entropy')" if self.sizes == "entropy"
                   else "")
            )
        x = td[key]
        x = x.abs() if self.sizes == "advantage" else (-x if self.sizes == "surprisal" else x)
        return floored_sizes(x, mask)

    def select(self, batch: Any) -> Selection:
        """Draw this step's selection; store ``nat_weights`` (and ``nat_crop_lengths``).

        Parameters
        ----------
        batch : verl.DataProto
            After ``compute_advantage``: needs ``response_mask`` and ``advantages``.

        Returns
        -------
        nat_estimators.rl.Selection
            The selection record (exact inclusion probabilities, the design).

        Raises
        ------
        ValueError
            Missing ``response_mask`` / ``advantages``, or a size field the design needs.
        """
        td = self._fields(batch)
        mask = td["response_mask"].bool()
        sizes = self._size_measure(td, mask)
        keep = self.keep
        if self.controller is not None:
            m2 = _advantage_moment(mask, td["advantages"], sizes)
            keep = self.controller.kappa(mask, m2, sizes=sizes)
        sel = select_tokens(
            mask, self.design, keep, sizes=sizes, generator=self.generator,
            full_keep=self.full_keep, min_keep=self.min_keep, shared=self.shared,
        )
        td["nat_weights"] = sel.weights
        if self.crop:
            td["nat_crop_lengths"] = sel.crop_lengths
        return sel

    @staticmethod
    def cropped(batch: Any) -> Any:
        """A shallow copy of ``batch`` whose attention mask stops at each row's crop.

        The response part of ``attention_mask`` is cut after each row's last kept token
        (``nat_crop_lengths``); the prompt stays whole; every other field, ``response_mask``
        included, is shared with ``batch``.  Pass the copy to the actor update *after* the old
        log-probs were computed on the full sequences: verl's remove-padding packing and dynamic
        batch sizing then forward only the kept prefixes.

        Raises
        ------
        ValueError
            No ``nat_crop_lengths`` in the batch (draw a prefix selection first) or no
            ``attention_mask`` / ``prompts``.
        """
        td = batch.batch
        if "nat_crop_lengths" not in td.keys():
            raise ValueError(
                "the batch has no 'nat_crop_lengths': draw a prefix selection with "
                "NATSelector('prefix', ..., crop=True).select(batch) first"
            )
        for key in ("attention_mask", "prompts", "responses"):
            if key not in td.keys():
                raise ValueError(f"cropping needs {key!r} in the batch")
        prompt_len = td["prompts"].shape[1]
        am = td["attention_mask"]
        if am.shape[1] != prompt_len + td["responses"].shape[1]:
            raise ValueError("attention_mask must span prompts + responses")
        resp = crop_mask(am[:, prompt_len:], td["nat_crop_lengths"])
        new_am = torch.cat([am[:, :prompt_len], resp.to(am.dtype)], dim=1)
        out = copy.copy(batch)
        out.batch = td.copy()
        out.batch["attention_mask"] = new_am
        return out


def route_into_rollout_is_weights(batch: Any, actor_config: Any = None) -> None:
    r"""The quick route: multiply ``nat_weights`` into ``rollout_is_weights`` (in place).

    verl's token-level policy losses multiply ``rollout_is_weights`` into the per-token policy
    loss before aggregating, so with this helper verl's unchanged ``ppo_loss`` computes the HT
    estimate of the **policy term** — with no custom loss function.

    Limits: verl's ``ppo_loss`` adds the entropy bonus and the KL loss *unweighted*.  They then
    need the current log-probabilities and entropies at every response token, so the update
    cannot skip any token (no saving for them, and a cropped forward would feed them padding);
    the helper refuses a config with ``entropy_coeff != 0`` or ``use_kl_loss`` so that it is
    only used where it is both unbiased and crop-safe — :func:`nat_ppo_loss` weights every term.
    Do not crop the update (:meth:`NATSelector.cropped`) with it either: verl's policy metrics
    would average padding.  ``bypass_mode`` ignores ``rollout_is_weights`` and is refused.

    Parameters
    ----------
    batch : verl.DataProto
        With ``nat_weights`` (from :meth:`NATSelector.select`).
    actor_config : verl ActorConfig or mapping, optional
        Checked as above when given (recommended).

    Examples
    --------
    >>> import torch
    >>> from verl import DataProto
    >>> from nat_estimators.integrations.verl import route_into_rollout_is_weights
    >>> batch = DataProto.from_single_dict({"nat_weights": torch.tensor([[2.0, 0.0]]),
    ...                                     "rollout_is_weights": torch.tensor([[0.5, 1.5]])})
    >>> route_into_rollout_is_weights(batch, {"entropy_coeff": 0.0, "use_kl_loss": False})
    >>> batch.batch["rollout_is_weights"].tolist()
    [[1.0, 0.0]]
    """
    if actor_config is not None:
        check_actor_config(actor_config)
        if _get(actor_config, "entropy_coeff", 0.0) or _get(actor_config, "use_kl_loss", False):
            raise ValueError(
                "the quick route weights only the policy term: verl's ppo_loss adds the entropy "
                "bonus (entropy_coeff != 0) and the KL loss (use_kl_loss) unweighted. Set them "
                "off, or use nat_ppo_loss, which weights every term"
            )
    td = batch.batch
    if "nat_weights" not in td.keys():
        raise ValueError("the batch has no 'nat_weights': call NATSelector.select(batch) first")
    w = td["nat_weights"]
    if "rollout_is_weights" in td.keys():
        td["rollout_is_weights"] = td["rollout_is_weights"] * w.to(td["rollout_is_weights"].dtype)
    else:
        td["rollout_is_weights"] = w.clone()


# ---------------------------------------------------------------------------------- actor side
def nat_ppo_loss(
    config: Any, model_output: Mapping[str, Any], data: Any, dp_group: Any = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    r"""verl's ``ppo_loss`` with every per-token term weighted by the NAT weights.

    Drop-in for ``verl.workers.utils.losses.ppo_loss`` (same signature): install it with
    ``worker.set_loss_fn(functools.partial(nat_ppo_loss, config=actor_config))``.

    Parameters
    ----------
    config : verl ActorConfig
        ``loss_agg_mode``, ``policy_loss.loss_mode`` (token-level only), ``entropy_coeff``,
        ``use_kl_loss``, ``kl_loss_type``, ``kl_loss_coef``, ``loss_scale_factor`` — as for
        ``ppo_loss``.
    model_output : mapping
        ``log_probs`` (and ``entropy``) from the engine, nested or padded.
    data : TensorDict
        The micro-batch: ``response_mask`` (full), ``old_log_probs``, ``advantages``,
        ``nat_weights`` (from :class:`NATSelector`), optionally ``rollout_is_weights`` and
        ``ref_log_prob``; verl's non-tensor ``dp_size``, ``batch_num_tokens`` and
        ``global_batch_size``.
    dp_group : optional
        Unused (as in ``ppo_loss``).

    Returns
    -------
    loss : torch.Tensor
        :math:`\hat J = \mathrm{pg}(w\ell^{pg}) - c_H\, \mathrm{agg}(wH) + c_{KL}\,
        \mathrm{agg}(w\,\mathrm{kl})`, where ``pg`` is verl's registered policy loss called with
        ``rollout_is_weights`` times :math:`w` and ``agg`` is verl's ``agg_loss`` with the global
        denominators, both over the **full** ``response_mask``.
    metrics : dict
        verl's metrics plus ``nat/kept_fraction`` and ``nat/max_weight``.

    Raises
    ------
    ValueError
        No ``nat_weights`` (the driver did not draw a selection), weights whose shape does not
        match the responses, negative or non-finite weights, or a policy loss mode NAT refuses.

    Notes
    -----
    At unselected positions the current log-prob is replaced by the old one (ratio 1, finite)
    and the entropy by 0: the update's forward may not have computed them (prefix cropping), and
    their weight is 0.  With every weight 1 the result equals ``ppo_loss`` bit for bit.  verl's
    policy metrics (``actor/pg_clipfrac``, ``actor/ppo_kl``) are averaged over the full mask with
    unselected tokens at ratio 1, so they shrink by about the kept fraction.

    Examples
    --------
    >>> import functools
    >>> from nat_estimators.integrations.verl import nat_ppo_loss
    >>> loss_fn = functools.partial(nat_ppo_loss, config=None)  # the actor's ActorConfig here
    >>> loss_fn.func.__name__
    'nat_ppo_loss'
    """
    check_actor_config(config)
    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    entropy = model_output.get("entropy", None)
    if entropy is not None:
        entropy = no_padding_2_padding(entropy, data)

    info = config.global_batch_info
    info["dp_size"] = data["dp_size"]
    info["batch_num_tokens"] = data["batch_num_tokens"]
    info["global_batch_size"] = data["global_batch_size"]
    info["loss_scale_factor"] = config.loss_scale_factor
    if (data["dp_size"] > 1 or data["batch_num_tokens"] is not None
            or data["global_batch_size"] is not None or config.loss_scale_factor is not None):
        aggregation = AggregationType.SUM
    else:
        aggregation = AggregationType.MEAN

    if "nat_weights" not in data.keys():
        raise ValueError(
            "the micro-batch has no 'nat_weights': draw the selection on the driver with "
            "NATSelector.select(batch) before update_actor (NATTrainerMixin does this)"
        )
    fields = ["response_mask", "old_log_probs", "advantages", "nat_weights"]
    if "rollout_is_weights" in data.keys():
        fields.append("rollout_is_weights")
    if "ref_log_prob" in data.keys():
        fields.append("ref_log_prob")
    td = data.select(*fields).to_padded_tensor()

    response_mask = td["response_mask"].to(bool)
    w = td["nat_weights"]
    if tuple(w.shape) != tuple(response_mask.shape):
        raise ValueError(
            f"nat_weights has shape {tuple(w.shape)} but the responses have shape "
            f"{tuple(response_mask.shape)}; draw the selection on this batch's response_mask"
        )
    if not w.is_floating_point() or bool((~torch.isfinite(w) | (w < 0)).any()):
        raise ValueError("nat_weights must be finite, non-negative floats (w = I/pi)")
    w = w.to(log_prob.dtype)
    selected = (w > 0) & response_mask
    old_log_prob = td["old_log_probs"]
    # unselected positions: ratio 1 (the old log-prob), weight 0; they may not have been forwarded
    log_prob = torch.where(selected, log_prob, old_log_prob.to(log_prob.dtype))
    rollout_is = td.get("rollout_is_weights", None)
    rollout_is = w if rollout_is is None else rollout_is * w.to(rollout_is.dtype)

    policy_loss_fn = get_policy_loss_fn(config.policy_loss.get("loss_mode", "vanilla"))
    pg_loss, pg_metrics = policy_loss_fn(
        old_log_prob=old_log_prob, log_prob=log_prob, advantages=td["advantages"],
        response_mask=response_mask, loss_agg_mode=config.loss_agg_mode, config=config,
        rollout_is_weights=rollout_is,
    )
    metrics: dict[str, Any] = dict(Metric.from_dict(pg_metrics, aggregation=AggregationType.MEAN))
    metrics["actor/pg_loss"] = Metric(value=pg_loss, aggregation=aggregation)
    loss = pg_loss
    if entropy is not None:
        ent = torch.where(selected, entropy, torch.zeros_like(entropy)) * w.to(entropy.dtype)
        entropy_loss = agg_loss(loss_mat=ent, loss_mask=response_mask,
                                loss_agg_mode=config.loss_agg_mode, **info)
        loss = loss - config.entropy_coeff * entropy_loss
        metrics["actor/entropy_loss"] = Metric(value=entropy_loss, aggregation=aggregation)
    if config.use_kl_loss:
        kld = kl_penalty(logprob=log_prob, ref_logprob=td["ref_log_prob"],
                         kl_penalty=config.kl_loss_type)
        kl_loss = agg_loss(loss_mat=kld * w.to(kld.dtype), loss_mask=response_mask,
                           loss_agg_mode=config.loss_agg_mode, **info)
        loss = loss + kl_loss * config.kl_loss_coef
        metrics["kl_loss"] = Metric(value=kl_loss, aggregation=aggregation)
        metrics["kl_coef"] = config.kl_loss_coef
    kept = selected.sum().item() / max(int(response_mask.sum().item()), 1)
    metrics["nat/kept_fraction"] = Metric(value=kept, aggregation=AggregationType.MEAN)
    metrics["nat/max_weight"] = Metric(value=float(w.max().item()) if w.numel() else 0.0,
                                       aggregation=AggregationType.MAX)
    return loss, metrics


# ---------------------------------------------------------------------------------- switching on
class NATTrainerMixin:
    """Switches NAT on in ``RayPPOTrainer`` from the config's ``nat`` section.

    Use as ``class NATRayPPOTrainer(NATTrainerMixin, RayPPOTrainer)`` with
    ``trainer.use_v1=false`` (``RayPPOTrainer`` is verl's trainer for that setting; the v1
    trainers move batches through a transfer queue and are refused).  After the workers are
    built it installs :func:`nat_ppo_loss` on the actor workers (``set_loss_fn``, the hook verl
    uses for the critic's loss); in every step, after the advantages, it draws the selection with
    :class:`NATSelector` and, for prefix cutting, hands the actor update a batch whose attention
    mask is cropped (the step's metrics still see the full batch).  Without a ``nat`` section the
    trainer is ``RayPPOTrainer`` unchanged.

    Examples
    --------
    >>> from nat_estimators.integrations.verl import NATTrainerMixin
    >>> [m for m in ("init_workers", "nat_setup", "_update_actor") if m in vars(NATTrainerMixin)]
    ['init_workers', 'nat_setup', '_update_actor']

    For ``sizes="entropy"`` it also keeps the old policy's entropy, which ``RayPPOTrainer``
    drops from the batch after logging it (``_compute_old_log_prob``).
    """

    config: Any
    actor_rollout_wg: Any
    nat_selector: NATSelector | None = None

    def init_workers(self) -> None:
        super().init_workers()  # type: ignore[misc]
        self.nat_setup()

    def nat_setup(self) -> None:
        """Read the ``nat`` section, build the selector, install the loss on the actor workers.

        Called by :meth:`init_workers` once the workers exist; a no-op without a ``nat``
        section.
        """
        options = nat_options(self.config)
        if not options:
            return
        trainer_cfg = _get(self.config, "trainer", None)
        if trainer_cfg is not None and _get(trainer_cfg, "use_v1", False):
            raise ValueError(
                "NATTrainerMixin extends RayPPOTrainer, verl's trainer for trainer.use_v1=false; "
                "the v1 trainers move batches through a transfer queue that it does not handle. "
                "Set trainer.use_v1=false"
            )
        from verl.utils.config import omega_conf_to_dataclass

        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        check_actor_config(actor_config)
        self.nat_selector = NATSelector(**options)
        self.actor_rollout_wg.set_loss_fn(partial(nat_ppo_loss, config=actor_config))

    def _compute_old_log_prob(self, batch: Any) -> Any:
        out = super()._compute_old_log_prob(batch)  # type: ignore[misc]
        sel = self.nat_selector
        if sel is not None and sel.sizes == "entropy":
            # RayPPOTrainer pops the old policy's entropy after logging it; the
            # entropy-proportional designs need it as their size measure
            old = out[0] if isinstance(out, tuple) else out
            self._nat_old_entropy = old.batch["entropys"].clone()
        return out

    def _update_actor(self, batch: Any) -> Any:
        sel = self.nat_selector
        ent = getattr(self, "_nat_old_entropy", None)
        if sel is not None and ent is not None:
            batch.batch[_OLD_ENTROPY] = ent
            self._nat_old_entropy = None
        if sel is None:
            return super()._update_actor(batch)  # type: ignore[misc]
        sel.select(batch)
        return super()._update_actor(  # type: ignore[misc]
            NATSelector.cropped(batch) if sel.crop else batch
        )

