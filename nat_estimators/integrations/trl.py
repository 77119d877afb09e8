r"""NAT token subsampling for TRL's ``GRPOTrainer``: ``NATGRPOConfig`` and ``NATGRPOTrainer``.

A TRL user changes two names — ``GRPOConfig`` → :class:`NATGRPOConfig`, ``GRPOTrainer`` →
:class:`NATGRPOTrainer` — and the loss becomes a Horvitz–Thompson estimate of TRL's own loss
computed from a random subset of the completion tokens:

* **When.** One selection per generation batch, drawn in the scoring step
  (``_generate_and_score_completions``) from rollout (old-policy) quantities on the loss mask
  ``completion_mask`` (× ``tool_mask``), with one ``torch.Generator`` per process seeded
  ``nat_seed + process_index``.  It is reused for every ``num_iterations`` pass over the batch and
  never drawn during evaluation (evaluation is TRL's full loss).
* **What.** Every per-token term of TRL's loss — the clipped policy term of each token-level
  ``loss_type``, the KL penalty (``beta > 0``) and the entropy bonus — is multiplied by the weight
  :math:`w_{it} = I_{it}/\pi_{it}`, and **every denominator stays TRL's, computed from the full
  mask** (per-row lengths of ``grpo``, the micro-batch token count of ``bnpo``, the global
  ``num_items_in_batch`` of ``dapo``/``cispo``, ``max_completion_length`` of ``dr_grpo``, the
  gradient-accumulation factors).  Since :math:`E[w_{it}] = m_{it}`, the loss and its gradient are
  unbiased for TRL's, and equal to them when ``nat_keep=1``.
* **Savings.** Prefix cutting crops each micro-batch's forward pass after its longest kept prefix,
  and rows of similar kept length are grouped into the same micro-batches (inside each
  optimisation step, so each step's estimate stays unbiased).  The per-position designs ask TRL's
  fused LM head for the selected positions only (labels ``-100`` elsewhere): on devices where TRL
  compacts the head (Triton/CUDA) only those positions are projected on the vocabulary.

Refused at construction, with the reason: sequence-level importance sampling (GSPO,
``importance_sampling_level="sequence"``) and the sequence-level loss type ``vespo`` (their
per-sequence weights are nonlinear in all tokens' log-probabilities, so no token subset gives an
unbiased estimate), and the MoE load-balancing loss (not a per-token term of the completions).
Options that need every token's *current* log-probability or entropy (``top_entropy_quantile < 1``,
``off_policy_mask_threshold``) are supported exactly, with a full forward pass (no savings).

The theory (the estimator, why denominators come from the full mask) is on the documentation's
theory pages and in :mod:`nat_estimators.rl`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

try:
    import torch
    import trl
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer.utils import nanmax, nanmin, split_tensor_dict
except ImportError as _e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "nat_estimators.integrations.trl needs TRL (and PyTorch): install the extra with "
        "pip install 'nat-estimators[trl]' (tested with trl>=1.16,<1.17)"
    ) from _e

from ..rl import DESIGNS, KappaController, Selection, needs_sizes, select_tokens
from ..rl._checks import check_shared
from ..rl.controller import _advantage_moment
from ..rl.selection import _design_names
from ._common import check_version, floored_sizes
from ._common import version_tuple as _version_tuple  # noqa: F401 (kept for callers)

__all__ = ["TESTED_TRL", "NATGRPOConfig", "NATGRPOTrainer"]

#: The TRL release range this integration is tested against (``[low, high)``).
TESTED_TRL: tuple[str, str] = ("1.16", "1.17")

_ALLOW_ENV = "NAT_ESTIMATORS_ALLOW_UNTESTED_TRL"


def _check_trl_version(version: str) -> None:
    check_version(
        "trl", version, TESTED_TRL, module="nat_estimators.integrations.trl", extra="trl",
        why="NATGRPOTrainer overrides private GRPOTrainer methods that move between TRL releases",
        allow_env=_ALLOW_ENV,
    )


_check_trl_version(trl.__version__)

#: Size sources of the proportional designs (``nat_sizes``).
SIZE_SOURCES: tuple[str, ...] = ("entropy", "surprisal", "advantage")

# Multimodal inputs: their positions do not follow the text columns, so no cropping with them.
_MM_KEYS = (
    "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
    "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids",
)
_NAT_KEYS = ("nat_weights", "nat_crop", "nat_scored")


def _refusals(args: Any) -> list[str]:
    """Reasons why a config cannot give an unbiased NAT estimate (empty: fine)."""
    out = []
    if getattr(args, "importance_sampling_level", "token") != "token":
        out.append(
            f"importance_sampling_level={args.importance_sampling_level!r}: a sequence-level "
            "importance ratio (GSPO) is a nonlinear function of every token's log-probability, so "
            "no token subset gives an unbiased estimate. Use importance_sampling_level='token'"
        )
    if getattr(args, "loss_type", None) == "vespo":
        out.append(
            "loss_type='vespo': its gamma weights are a nonlinear function of the sequence-level "
            "ratio of all tokens, so a token subset cannot estimate it without bias. Use a "
            "token-level loss_type ('dapo', 'grpo', 'bnpo', 'dr_grpo', 'cispo', 'sapo', 'luspo')"
        )
    return out


@dataclass
class NATGRPOConfig(GRPOConfig):
    r"""``GRPOConfig`` plus the NAT token-subsampling options (``nat_*``).

    Every ``GRPOConfig`` field keeps its meaning.  The NAT fields:

    Parameters
    ----------
    nat_design : str, default "prefix"
        The sampling design over each completion's loss tokens (one of
        :data:`nat_estimators.rl.DESIGNS`): ``"prefix"`` (random prefix cut — the forward pass
        stops at the cut), ``"poisson"``, ``"simple_random"``, ``"systematic"`` (the LM head runs
        only at selected positions) and the size-proportional ``"poisson_proportional"``,
        ``"systematic_proportional"`` (:math:`\pi \propto` the ``nat_sizes`` measure), and the
        variance-optimal ``"prefix_optimal"``, ``"poisson_optimal"``, ``"systematic_optimal"``
        (``nat_sizes`` read as a per-token second-moment proxy).
    nat_keep : float, default 0.5
        Expected kept fraction :math:`\kappa \in (0, 1]` of each completion's loss tokens.
        ``1`` reproduces ``GRPOTrainer`` exactly.
    nat_full_keep : float, default 0.05
        Prefix only: the probability :math:`a` of keeping a whole completion, the floor of
        :math:`\pi`; weights are at most :math:`1/a`.
    nat_min_keep : float, default 0.0
        Prefix only: the leading fraction of each completion that is always kept.
    nat_sizes : str, optional
        Size measure of the proportional designs, from the rollout (old) policy:
        ``"entropy"`` (predictive entropy at each token), ``"surprisal"`` (:math:`-\log
        \pi_{old}` of the sampled token) — both cost one extra no-grad forward pass per
        generation batch when TRL has not computed the old log-probabilities — or
        ``"advantage"`` (:math:`|A|`; constant within a row unless the advantages are per token,
        so it matters only for per-token advantages).  Sizes are floored at :math:`10^{-3}` times
        their mean so every token keeps :math:`\pi > 0`.
    nat_variance_ratio : float, optional
        :math:`\varepsilon`: choose each generation batch's keep fraction with
        :class:`~nat_estimators.rl.KappaController` so that NAT adds about
        :math:`\varepsilon` times the rollout-sampling variance (second-moment proxy
        :math:`(A\, x)^2`, :math:`x` the ``nat_sizes`` measure or 1; fixed before the draw).
        ``nat_keep`` is then the upper bound of :math:`\kappa`, ``nat_full_keep`` (at least
        0.05) the lower.  Each process chooses for its own rows.
    nat_shared : bool, default False
        Variance-optimal designs (``*_optimal``) only: one token budget for the whole generation
        batch of this process (:math:`\kappa \sum_i N_i` expected tokens, spent where the
        second-moment proxies are large) instead of :math:`\kappa N_i` per completion; see
        :func:`~nat_estimators.rl.select_tokens`.  The controller then predicts that design.
    nat_seed : int, default 0
        Seed of the selection generator; process :math:`r` uses ``nat_seed + r``.
    nat_group_rows : bool, default True
        Prefix only: inside each optimisation step, sort the rows by kept length before they are
        cut into micro-batches, so each micro-batch's forward stops early.  Skipped where it would
        change TRL's estimand (``loss_type="bnpo"`` and the entropy bonus normalise per
        micro-batch).

    Raises
    ------
    ValueError
        A field out of range, an unknown design or size source, a proportional design without
        ``nat_sizes`` (or sizes for another design), or a sequence-level option (GSPO,
        ``loss_type="vespo"``); the message names the field.

    Examples
    --------
    >>> from nat_estimators.integrations.trl import NATGRPOConfig
    >>> cfg = NATGRPOConfig(output_dir="out", use_cpu=True, nat_design="systematic", nat_keep=0.25)
    >>> cfg.nat_design, cfg.nat_keep, cfg.loss_type
    ('systematic', 0.25, 'dapo')
    >>> NATGRPOConfig(output_dir="out", use_cpu=True, nat_keep=1.5)
    Traceback (most recent call last):
    ...
    ValueError: nat_keep must lie in (0, 1], got 1.5
    """

    nat_design: str = field(
        default="prefix", metadata={"help": f"NAT sampling design, one of {DESIGNS}."}
    )
    nat_keep: float = field(
        default=0.5, metadata={"help": "Expected kept fraction of each completion's loss tokens."}
    )
    nat_full_keep: float = field(
        default=0.05, metadata={"help": "Prefix: probability of keeping a whole completion."}
    )
    nat_min_keep: float = field(
        default=0.0, metadata={"help": "Prefix: leading fraction that is always kept."}
    )
    nat_sizes: str | None = field(
        default=None,
        metadata={"help": f"Size measure of the proportional designs, one of {SIZE_SOURCES}."},
    )
    nat_variance_ratio: float | None = field(
        default=None,
        metadata={"help": "If set, choose each batch's keep fraction (<= nat_keep) so that NAT "
                          "adds this fraction of the rollout variance (KappaController)."},
    )
    nat_shared: bool = field(
        default=False,
        metadata={"help": "Optimal designs: one token budget for the process's whole batch."},
    )
    nat_seed: int = field(default=0, metadata={"help": "Seed of the NAT selection generator."})
    nat_group_rows: bool = field(
        default=True, metadata={"help": "Prefix: group rows of similar kept length."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        names = _design_names()  # designs registered so far (a new design file adds its name)
        if self.nat_design not in names:
            raise ValueError(f"nat_design must be one of {names}, got {self.nat_design!r}")
        for name, low_open in (("nat_keep", True), ("nat_full_keep", True),
                               ("nat_min_keep", False)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            ok = (0 < v <= 1) if low_open else (0 <= v < 1)
            if not ok:
                rng = "(0, 1]" if low_open else "[0, 1)"
                raise ValueError(f"{name} must lie in {rng}, got {v}")
        proportional = needs_sizes(self.nat_design)
        if proportional and self.nat_sizes is None:
            raise ValueError(
                f"nat_design={self.nat_design!r} draws tokens proportionally to a size measure: "
                "set "
                f"nat_sizes to one of {SIZE_SOURCES}"
            )
        if self.nat_sizes is not None:
            if self.nat_sizes not in SIZE_SOURCES:
                raise ValueError(f"nat_sizes must be one of {SIZE_SOURCES}, got {self.nat_sizes!r}")
            if not proportional:
                raise ValueError(
                    f"nat_sizes is only used by the proportional designs, not "
                    f"nat_design={self.nat_design!r}; leave it None"
                )
        check_shared(self.nat_shared, self.nat_design, name="nat_shared",
                     design_name="nat_design")
        if self.nat_variance_ratio is not None:
            self._nat_controller()  # validates epsilon and the kappa bounds
        if isinstance(self.nat_seed, bool) or not isinstance(self.nat_seed, int):
            raise ValueError(f"nat_seed must be an int, got {self.nat_seed!r}")
        if not isinstance(self.nat_group_rows, bool):
            raise ValueError(f"nat_group_rows must be a bool, got {self.nat_group_rows!r}")
        reasons = _refusals(self)
        if reasons:
            raise ValueError("NATGRPOConfig: " + "; ".join(reasons))

    def _nat_controller(self) -> KappaController:
        """The keep-fraction controller of ``nat_variance_ratio`` (bounds from the options)."""
        lo = max(self.nat_full_keep, 0.05) if self.nat_design.startswith("prefix") else 0.05
        return KappaController(
            epsilon=self.nat_variance_ratio,  # type: ignore[arg-type]
            kappa_min=min(lo, self.nat_keep), kappa_max=self.nat_keep, design=self.nat_design,
            full_keep=self.nat_full_keep, min_keep=self.nat_min_keep, shared=self.nat_shared,
        )


class _ScoreSelected:
    """Calls the policy with labels ``-100`` outside ``scored`` and checks the log-prob path.

    TRL's fused LM head (installed on the policy by ``GRPOTrainer``) projects only the positions
    whose label is not ``-100`` onto the vocabulary where it compacts (Triton devices).
    """

    def __init__(self, model: Any, scored: torch.Tensor | None) -> None:
        self.model = model
        self.scored = scored

    def __call__(self, *args: Any, labels: torch.Tensor, **kwargs: Any) -> Any:
        if self.scored is not None:
            # label t is the token predicted at t-1: it is scored iff position t is selected
            labels = labels.masked_fill(~self.scored, -100)
        out = self.model(*args, labels=labels, **kwargs)
        if getattr(out, "log_probs", None) is None:
            raise ValueError(
                "the policy model's forward(..., fused_lm_head=True) returned no log_probs: "
                "NATGRPOTrainer reads per-token log-probabilities from TRL's fused LM head "
                "(trl.trainer.utils.add_fused_lm_head, installed by GRPOTrainer on the policy). "
                "Do not replace the model's forward after building the trainer"
            )
        return out


class NATGRPOTrainer(GRPOTrainer):
    r"""``GRPOTrainer`` whose loss is an unbiased NAT (Horvitz–Thompson) estimate from few tokens.

    Takes the same arguments as ``trl.GRPOTrainer``; ``args`` must be a :class:`NATGRPOConfig`
    (``None`` gives the default one).

    Notes
    -----
    TRL's per-token loss :math:`\ell_{it}` (clipped policy term, plus :math:`\beta` times the KL
    term) is aggregated by a rule linear in :math:`\ell`, :math:`J = \sum_{it} a_{it} m_{it}
    \ell_{it}`, whose coefficients :math:`a` depend only on the full loss mask :math:`m` and
    constants.  The trainer computes

    .. math::

        \hat J = \sum_{it} a_{it}\, m_{it}\, w_{it}\, \ell_{it}, \qquad
        w_{it} = \frac{I_{it}}{\pi_{it}},

    with the same :math:`a` (every denominator from :math:`m`), and the entropy bonus
    :math:`\sum_{it} m_{it} w_{it} H_{it} / \sum_{it} m_{it}` likewise.  The selection
    :math:`I` is drawn from rollout quantities only, independently of the parameters, so
    :math:`E[\hat J] = J` and :math:`E[\nabla \hat J] = \nabla J`; with ``nat_keep=1``,
    :math:`w \equiv 1` and :math:`\hat J = J`.  Replacing :math:`m` by the selection instead
    (writing it into ``completion_mask``) would divide by the *kept* counts: a ratio estimate,
    biased under prefix cutting.

    TRL's metrics keep their names; those computed from per-token values (``entropy``, ``kl``,
    clip ratios) are HT estimates of TRL's value.  NAT adds ``nat/kept_fraction`` (selected over
    eligible tokens), ``nat/max_weight`` (largest :math:`1/\pi` used) and
    ``nat/forward_tokens_saved`` (fraction of the loss step's forward positions not computed).

    Examples
    --------
    >>> import torch
    >>> from datasets import Dataset
    >>> from nat_estimators.integrations.trl import NATGRPOConfig, NATGRPOTrainer
    >>> from nat_estimators.demo.hf_tiny import char_tokenizer, tiny_qwen2
    >>> tok = char_tokenizer()
    >>> args = NATGRPOConfig(output_dir="/tmp/nat-trl-doctest", use_cpu=True, max_steps=1,
    ...                      per_device_train_batch_size=4, num_generations=4,
    ...                      max_completion_length=6, report_to="none", save_strategy="no",
    ...                      logging_steps=1, nat_design="prefix", nat_keep=0.5)
    >>> trainer = NATGRPOTrainer(model=tiny_qwen2(tok), args=args, processing_class=tok,
    ...                          reward_funcs=lambda completions, **kw: [c.count("a") + 0.0
    ...                                                                  for c in completions],
    ...                          train_dataset=Dataset.from_dict({"prompt": ["ab", "cd"] * 2}))
    >>> trainer.args.nat_design, trainer.loss_type
    ('prefix', 'dapo')

    ``trainer.train()`` then runs as with ``GRPOTrainer``; see ``examples/trl_grpo.py``.
    """

    # TRL's attributes, typed loosely here (the base classes declare TrainingArguments)
    args: Any
    model: Any
    _entropy_window_stats: Any

    def __init__(self, model: Any, reward_funcs: Any = None, args: NATGRPOConfig | None = None,
                 *rest: Any, **kwargs: Any) -> None:
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "")
            args = NATGRPOConfig(f"{str(name).split('/')[-1] or 'model'}-NAT-GRPO")
        if not isinstance(args, NATGRPOConfig):
            raise TypeError(
                f"args must be a NATGRPOConfig (it carries the nat_* options), got "
                f"{type(args).__name__}; build it with NATGRPOConfig(**your_grpo_kwargs)"
            )
        reasons = _refusals(args)  # fields may have been changed after the config was built
        if reasons:
            raise ValueError("NATGRPOTrainer: " + "; ".join(reasons))
        super().__init__(model, reward_funcs, args, *rest, **kwargs)
        if self.aux_loss_enabled:
            raise ValueError(
                "NATGRPOTrainer: the MoE load-balancing loss (router_aux_loss_coef with "
                "output_router_logits) is a function of the forwarded tokens, not a per-token "
                "term of the completions, so a token subset cannot estimate it without bias. Set "
                "the model's output_router_logits=False (or router_aux_loss_coef=0)"
            )
        self._nat_generator = torch.Generator(device=self.accelerator.device).manual_seed(
            int(args.nat_seed) + int(self.accelerator.process_index)
        )
        # quantities of every token's *current* forward: these options need the full forward
        self._nat_full_forward = (
            self.top_entropy_quantile < 1.0 or self.off_policy_mask_threshold is not None
        )

    # ------------------------------------------------------------------ selection
    def _nat_sizes(self, out: dict[str, Any], mask: torch.Tensor) -> torch.Tensor | None:
        """Old-policy size measures of the proportional designs, (B, C), floored to be > 0."""
        src = self.args.nat_sizes
        if src is None:
            return None
        if src == "advantage":
            adv = out["advantages"]
            x = adv.abs()[:, None].expand(mask.shape) if adv.dim() == 1 else adv.abs()
        else:
            old = out.get("old_per_token_logps")
            ent = None
            if src == "entropy" or old is None:
                ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
                am = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
                with torch.no_grad():
                    old, ent, _ = self._get_per_token_logps_and_entropies(
                        self.model, ids, am, out["completion_ids"].size(1),
                        batch_size=self.args.per_device_train_batch_size,
                        compute_entropy=src == "entropy",
                    )
            x = ent if src == "entropy" else -old
        return floored_sizes(x, mask)

    def _nat_draw(self, out: dict[str, Any]) -> Selection:
        """Draw this process's selection for a scored generation batch ``out``."""
        mask = out["completion_mask"].bool()
        if out.get("tool_mask") is not None:
            mask = mask & out["tool_mask"].bool()
        a = self.args
        design: str = a.nat_design
        sizes = self._nat_sizes(out, mask)
        keep = a.nat_keep
        if a.nat_variance_ratio is not None:
            if getattr(self, "_nat_kappa", None) is None:
                self._nat_kappa = a._nat_controller()
            m2 = _advantage_moment(mask, out["advantages"], sizes)
            keep = self._nat_kappa.kappa(mask, m2, sizes=sizes)
        return select_tokens(
            mask, design, keep, sizes=sizes,
            generator=self._nat_generator, full_keep=a.nat_full_keep, min_keep=a.nat_min_keep,
            shared=a.nat_shared,
        )

    def _nat_fields(self, selection: Selection) -> dict[str, torch.Tensor]:
        """The per-row entries the loss reads: HT weights and crop lengths (split with rows)."""
        return {"nat_weights": selection.weights, "nat_crop": selection.crop_lengths}

    def _nat_log_selection(self, selection: Selection) -> None:
        kept = selection.sample.sum().to(torch.float64)
        elig = selection.response_mask.sum().to(torch.float64)
        tot = self.accelerator.reduce(torch.stack([kept, elig]), reduction="sum")
        wmax = self.accelerator.gather(selection.weights.max().reshape(1).to(torch.float64))
        self._metrics["train"]["nat/kept_fraction"].append((tot[0] / tot[1].clamp_min(1)).item())
        self._metrics["train"]["nat/max_weight"].append(wmax.max().item())

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:  # never during evaluation: eval reports TRL's full loss
            sel = self._nat_draw(out)
            self._nat_log_selection(sel)
            out.update(self._nat_fields(sel))
        return out

    # ------------------------------------------------------------------ grouping rows
    def _nat_crops(self) -> bool:
        return self.args.nat_design.startswith("prefix") and not self._nat_full_forward

    def _nat_can_group(self, batches: list[dict[str, Any]]) -> bool:
        a = self.args
        if not (a.nat_group_rows and self._nat_crops()) or len(batches) < 2:
            return False
        # per-micro-batch denominators: the grouping would change TRL's estimand
        if self.loss_type == "bnpo" or self._entropy_bonus_enabled:
            return False
        if any(batches[0].get(k) is not None for k in _MM_KEYS):
            return False
        return all(
            v is None or isinstance(v, (torch.Tensor, list)) for v in batches[0].values()
        )

    def _nat_windows(self, n: int) -> list[range]:
        """Consecutive buffered micro-batches that always fall in one optimisation step."""
        spg, ga = self.args.steps_per_generation, self.args.gradient_accumulation_steps
        if ga % spg == 0:
            return [range(n)]
        if spg % ga == 0:
            return [range(i, i + ga) for i in range(0, n, ga)]
        return []

    def _nat_group_rows(self, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Within each optimisation step, sort rows by kept length before re-cutting micro-batches.

        The rows an optimisation step sees are TRL's (a random shuffle independent of the
        selection); only their split into that step's equal-size micro-batches changes, which
        leaves the step's loss sum unchanged for the loss types allowed here.
        """
        if not self._nat_can_group(batches):
            return batches
        out = list(batches)
        for win in self._nat_windows(len(batches)):
            if len(win) < 2:
                continue
            parts = [batches[i] for i in win]
            merged: dict[str, Any] = {}
            for k, v0 in parts[0].items():
                if v0 is None or (isinstance(v0, torch.Tensor) and v0.ndim == 0):
                    merged[k] = v0
                elif isinstance(v0, torch.Tensor):
                    merged[k] = torch.cat([p[k] for p in parts], dim=0)
                else:
                    merged[k] = [x for p in parts for x in p[k]]
            order = torch.argsort(-merged["nat_crop"], stable=True)
            for k, v in merged.items():
                if isinstance(v, torch.Tensor) and v.ndim > 0:
                    merged[k] = v[order.to(v.device)]
                elif isinstance(v, list):
                    merged[k] = [v[i] for i in order.tolist()]
            for i, chunk in zip(win, split_tensor_dict(merged, len(win)), strict=True):
                out[i] = chunk
        return out

    def _prepare_inputs(self, generation_batch: Any) -> dict[str, Any]:
        before = self._buffered_inputs
        inputs = super()._prepare_inputs(generation_batch)
        if self.model.training and self._buffered_inputs is not before:
            self._buffered_inputs = self._nat_group_rows(list(self._buffered_inputs))
            inputs = self._buffered_inputs[self._step % self.args.steps_per_generation]
        return inputs

    # ------------------------------------------------------------------ loss
    def _nat_forward(
        self, model: Any, inputs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Log-probs and entropies (B, C) at the scored positions (0 elsewhere) and the mask."""
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        B, C = completion_ids.shape
        w = inputs["nat_weights"]
        mm = {k: inputs.get(k) for k in _MM_KEYS}
        saving = not self._nat_full_forward and all(v is None for v in mm.values())
        width = C
        if saving and self.args.nat_design.startswith("prefix"):
            width = max(int(inputs["nat_crop"].max()), 1)
        head_only = saving and not self.args.nat_design.startswith("prefix")
        ids = torch.cat([prompt_ids, completion_ids[:, :width]], dim=1)
        am = torch.cat([prompt_mask, completion_mask[:, :width]], dim=1)
        scored_c = torch.ones(B, width, dtype=torch.bool, device=ids.device)
        if head_only:
            scored_c = w[:, :width] > 0
        scored_full = torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool), scored_c], 1)
        fn = _ScoreSelected(model, scored_full if head_only else None)
        logps, ent, aux = self._get_per_token_logps_and_entropies(
            fn, ids, am, width, compute_entropy=True, compute_aux_loss=self.aux_loss_enabled,
            **({} if saving else mm),
        )
        if self.model.training:
            full_pos = B * (prompt_ids.size(1) + C)
            self._metrics["train"]["nat/forward_tokens_saved"].append(
                1.0 - B * (prompt_ids.size(1) + width) / full_pos
            )
        if width < C:
            pad = torch.zeros(B, C - width, dtype=logps.dtype, device=logps.device)
            logps, ent = torch.cat([logps, pad], 1), torch.cat([ent, pad.to(ent.dtype)], 1)
            scored_c = torch.cat([scored_c, torch.zeros_like(pad, dtype=torch.bool)], 1)
        return logps, ent, scored_c, aux

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """TRL's ``_compute_loss`` with every per-token term weighted by the NAT weights.

        Without ``nat_weights`` in ``inputs`` (evaluation) this is TRL's method unchanged.
        """
        if inputs.get("nat_weights") is None:
            return super()._compute_loss(model, inputs)
        completion_mask = inputs["completion_mask"]
        mask = completion_mask
        if "tool_mask" in inputs:
            mask = completion_mask * inputs["tool_mask"]
        w = inputs["nat_weights"]
        per_token_logps, entropies, scored, _aux = self._nat_forward(model, inputs)

        if self.top_entropy_quantile < 1.0:  # full forward: TRL's own mask
            entropy_mask = self.get_high_entropy_mask(
                entropies, mask, 1 - self.top_entropy_quantile
            )
        else:
            entropy_mask = None

        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        old_per_token_logps = inputs.get("old_per_token_logps")
        # positions outside the forward: log-prob := old log-prob (ratio 1, finite), weight 0
        fill = (
            torch.zeros_like(per_token_logps) if old_per_token_logps is None
            else old_per_token_logps.to(per_token_logps.dtype)
        )
        per_token_logps = torch.where(scored, per_token_logps, fill)
        old_per_token_logps = (
            per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps
        )

        if self.off_policy_mask_threshold is not None:
            sampling_per_token_logps = inputs.get("sampling_per_token_logps", old_per_token_logps)
            off_policy_mask = self.get_off_policy_mask(
                advantages=advantages,
                per_token_logps=per_token_logps,
                sampling_per_token_logps=sampling_per_token_logps,
                mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold,
            )

        log_ratio = per_token_logps - old_per_token_logps
        coef_1 = torch.exp(log_ratio)  # token level only (sequence level is refused)

        if self.beta != 0.0:
            ref_per_token_logps = inputs["ref_per_token_logps"]
            per_token_kl = (
                torch.exp(ref_per_token_logps - per_token_logps)
                - (ref_per_token_logps - per_token_logps) - 1
            )
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * coef_1

        if self.loss_type == "cispo":
            clamped_ratios = torch.clamp(coef_1, max=self.epsilon_high).detach()
            per_token_loss = -clamped_ratios * advantages * per_token_logps
        elif self.loss_type in ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"]:
            coef_2 = torch.clamp(coef_1, 1 - self.epsilon_low, 1 + self.epsilon_high)
            if self.args.delta is not None:
                coef_1 = torch.clamp(coef_1, max=self.args.delta)
            per_token_loss1 = coef_1 * advantages
            per_token_loss2 = coef_2 * advantages
            per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
        elif self.loss_type == "sapo":
            temperatures = torch.where(
                advantages > 0, self.args.sapo_temperature_pos, self.args.sapo_temperature_neg
            )
            soft_coef_1 = torch.sigmoid(temperatures * (coef_1 - 1)) * 4 / temperatures
            per_token_loss = -soft_coef_1 * advantages
        else:
            raise ValueError(f"loss_type={self.loss_type!r} is not supported by NATGRPOTrainer")

        if self.off_policy_mask_threshold is not None:
            per_token_loss = per_token_loss * off_policy_mask
        if entropy_mask is not None:
            per_token_loss = per_token_loss * entropy_mask
        if self.use_vllm and self.vllm_importance_sampling_correction:
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]
        if self.beta != 0.0:
            per_token_loss = per_token_loss + self.beta * per_token_kl
        # the NAT step: every per-token term times w = I/pi; masks and denominators stay full
        per_token_loss = per_token_loss * w

        mode = "train" if self.model.training else "eval"
        accum = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if self.loss_type in ["grpo", "sapo"]:
            loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
            policy_loss = loss.detach()
            loss = loss / accum
        elif self.loss_type == "bnpo":
            loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
            policy_loss = loss.detach()
            loss = loss / accum
        elif self.loss_type == "dr_grpo":
            denom = per_token_loss.size(0) * self.max_completion_length
            loss = (per_token_loss * mask).sum() / denom
            policy_loss = loss.detach()
            loss = loss / accum
        elif self.loss_type in ["cispo", "dapo"]:
            nproc = self.accelerator.num_processes
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / nproc
            if mode == "train":  # num_items_in_batch spans the generation batch
                normalizer = normalizer * accum / self.args.steps_per_generation
            loss = (per_token_loss * mask).sum() / normalizer
            policy_loss = loss.detach()
        else:  # luspo
            loss = (per_token_loss * mask).sum(-1).mean()
            policy_loss = loss.detach()
            loss = loss / accum

        if self._entropy_bonus_enabled:
            effective_mask = mask if entropy_mask is None else mask * entropy_mask
            entropy_loss = (
                (entropies * w * effective_mask).sum() / effective_mask.sum().clamp(min=1.0) / accum
            )
            if self.use_adaptive_entropy:
                low = self._last_world_entropy <= self.args.entropy_target
                apply_coef = self.entropy_coef if low else 0.0
            else:
                apply_coef = self.entropy_coef
            loss = loss - apply_coef * entropy_loss
            self._metrics[mode]["policy_loss"].append(
                self.accelerator.gather(policy_loss).nanmean().item()
            )
            if self.use_adaptive_entropy and mode == "train":
                stats = torch.stack(
                    [(entropies * w * effective_mask).sum(), effective_mask.sum()]
                ).detach()
                prev = self._entropy_window_stats
                self._entropy_window_stats = stats if prev is None else prev + stats
                if self.accelerator.sync_gradients:
                    a = self.args
                    window = self.accelerator.reduce(self._entropy_window_stats, reduction="sum")
                    world_entropy = (window[0] / window[1].clamp(min=1.0)).item()
                    if world_entropy <= a.entropy_target:
                        self.entropy_coef = min(
                            self.entropy_coef + a.entropy_coef_delta, a.entropy_coef_max
                        )
                    else:
                        self.entropy_coef = max(
                            self.entropy_coef - a.entropy_coef_delta, a.entropy_coef_min
                        )
                    self._last_world_entropy = world_entropy
                    self._entropy_window_stats = None
            if mode == "train" and self.accelerator.sync_gradients:
                self._metrics[mode]["entropy_coef"].append(self.entropy_coef)

        self._nat_log_metrics(mode, mask, w, entropies, coef_1, advantages,
                              per_token_kl if self.beta != 0.0 else None)
        return loss

    def _nat_log_metrics(
        self, mode: str, mask: torch.Tensor, w: torch.Tensor, entropies: torch.Tensor,
        coef_1: torch.Tensor, advantages: torch.Tensor, per_token_kl: torch.Tensor | None,
    ) -> None:
        """TRL's per-token metrics as HT estimates: sums over selected tokens weighted by w."""
        wm = w.to(entropies.dtype) * mask

        def masked_seq_mean(x: torch.Tensor) -> torch.Tensor:
            return (x * wm).sum(-1) / mask.sum(-1)

        def global_masked_mean(x: torch.Tensor) -> float:
            totals = self.accelerator.reduce(
                torch.stack([(x * wm).sum(), mask.sum().float()]), reduction="sum"
            )
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        m = self._metrics[mode]
        if per_token_kl is not None:
            m["kl"].append(global_masked_mean(per_token_kl.detach()))
        m["entropy"].append(global_masked_mean(entropies.detach()))
        coef_1 = coef_1.detach()
        if self.loss_type in ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"]:
            low = ((coef_1 < 1 - self.epsilon_low) & (advantages < 0)).float()
            high = ((coef_1 > 1 + self.epsilon_high) & (advantages > 0)).float()
            region = ((low + high) > 0).float()
            m["clip_ratio/low_mean"].append(global_masked_mean(low))
            m["clip_ratio/high_mean"].append(global_masked_mean(high))
            m["clip_ratio/region_mean"].append(global_masked_mean(region))
            lows = self.accelerator.gather(masked_seq_mean(low))
            highs = self.accelerator.gather(masked_seq_mean(high))
            m["clip_ratio/low_min"].append(nanmin(lows).item())
            m["clip_ratio/high_max"].append(nanmax(highs).item())
        elif self.loss_type == "cispo":
            m["cispo_clip_ratio"].append(
                global_masked_mean(((coef_1 > self.epsilon_high) & (advantages > 0)).float())
            )
