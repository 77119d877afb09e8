r"""Shared machinery of the validation suite: rollout batches from the committed policies, the
full-token reference, the NAT pipeline gradient, per-token gradients and the statistics (exact
enumeration of selections is the designs' own ``enumerate_support``).

Only public API of ``nat_estimators`` is used: designs (``inclusion_probabilities``, ``sample``,
``enumerate_support``, ``rows``), ``design_variance``, and from :mod:`nat_estimators.rl`:
``select_tokens``, ``Selection``, ``ht_weights``, ``agg_loss``, ``loss_coefficients``,
``LossNormalizers``, ``GRPOBatch``/``GRPOConfig``, ``plan_batch``/``grpo_micro_batches`` (crop +
pack, backbone on the packed rows, head at the selected positions).

The full-token reference is written here independently of the package: a full (uncropped)
forward pass with the full LM head, the clipped GRPO per-token loss with k3-KL and entropy terms
written out, and the trainers' aggregation formulas of docs/rl/overview.md written out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import nat_estimators as nat
from nat_estimators.rl import (
    DESIGNS,
    GRPOBatch,
    GRPOConfig,
    LossNormalizers,
    Selection,
    agg_loss,
    grpo_micro_batches,
    ht_weights,
    needs_sizes,
    plan_batch,
    select_tokens,
)

from .policies import (
    PROMPT_LEN,
    Rollouts,
    build_policy,
    load_manifest,
    load_policy,
    rollout,
)

__all__ = [
    "CANONICAL_MODES",
    "CLIP",
    "CONST_LEN",
    "DESIGN_NAMES",
    "ENTROPY_COEF",
    "KEEP",
    "KL_COEF",
    "Case",
    "flat",
    "full_gradients",
    "full_objective",
    "make_case",
    "pipeline_gradients",
    "reference_per_token_loss",
]

DTYPE = torch.float64
CLIP = 0.2
KL_COEF = 0.05
ENTROPY_COEF = 0.01
KEEP = 0.5
FULL_KEEP = 0.05
CONST_LEN = 32  # Dr. GRPO's pinned constant: the response length limit of the MC rollouts
PERTURB = 0.03  # theta = theta_old + PERTURB * std(param) * N(0, 1): ratios != 1, some clipping

#: The designs of :func:`nat_estimators.rl.select_tokens` in the Monte Carlo suite, at budget
#: ``KEEP``.  Of the variance-optimal ones only ``prefix_optimal`` (a new cut law): the Poisson and
#: systematic optima are unequal-probability Poisson / systematic designs, as the ``_proportional``
#: ones already checked here; all three are in the exact enumeration (``test_exact``).
DESIGN_NAMES = tuple(d for d in DESIGNS if not d.endswith("_optimal") or d == "prefix_optimal")
CANONICAL_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
# docs/rl/overview.md, written out independently of nat_estimators.rl: alias -> (verl mode,
# G counts all rows?, N local?).  With no empty rows and one batch, both G and N conventions
# coincide.
_ALIASES = {
    "token-mean": "token-mean",
    "token-sum": "token-sum",
    "seq-mean-token-sum": "seq-mean-token-sum",
    "seq-mean-token-mean": "seq-mean-token-mean",
    "seq-mean-token-sum-norm": "seq-mean-token-sum-norm",
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "token-mean",
    "cispo": "token-mean",
    "openrlhf_token_level": "token-mean",
    "openrlhf_seq_level": "seq-mean-token-mean",
}


def config(**kw: Any) -> GRPOConfig:
    """The per-token loss settings every validation run uses (clipped ratio, KL, entropy)."""
    base: dict[str, Any] = dict(
        clip_low=CLIP, clip_high=CLIP, kl_coef=KL_COEF, entropy_coef=ENTROPY_COEF,
        const_len=CONST_LEN, weight_dtype=DTYPE, keep=KEEP, full_keep=FULL_KEEP,
    )
    base.update(kw)
    return GRPOConfig(**base)


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True, eq=False)
class Case:
    """A validation batch: the policy at :math:`\theta`, a GRPO batch of its rollouts (ragged,
    group-normalised advantages), full-mask normalizers and old-policy entropies."""

    policy: str
    label: str
    model: nn.Module
    batch: GRPOBatch
    rollouts: Rollouts
    normalizers: LossNormalizers
    seed: int

    @property
    def response_mask(self) -> torch.Tensor:
        return self.batch.response_mask

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters()]

    def describe(self) -> str:
        L = self.response_mask.sum(-1)
        return (f"{self.policy}/{self.label}: {L.numel()} rows, lengths {int(L.min())}-"
                f"{int(L.max())}, {int(L.sum())} tokens, reward "
                f"{float(self.rollouts.rewards.mean()):.3f}")

    def selection(self, design: str, generator: torch.Generator, **kw: Any) -> Selection:
        """``select_tokens`` on this batch with the suite's budget and weight dtype."""
        sizes = self.batch.sizes if needs_sizes(design) else None
        return select_tokens(self.response_mask, design, kw.pop("keep", KEEP), sizes=sizes,
                             generator=generator, full_keep=kw.pop("full_keep", FULL_KEEP),
                             weight_dtype=DTYPE, **kw)


def _full_logprobs_entropy(model: nn.Module, ids: torch.Tensor,
                           am: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of every token given its prefix and the predictive entropy, aligned with ids
    (column 0 is 0): a full forward with the full head."""
    logp = torch.log_softmax(model(ids, am), -1)
    lp = torch.zeros(ids.shape, dtype=logp.dtype, device=ids.device)
    ent = torch.zeros(ids.shape, dtype=logp.dtype, device=ids.device)
    lp[:, 1:] = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    ent[:, 1:] = -(logp.exp() * logp).sum(-1)[:, :-1]
    return lp, ent


def make_case(
    policy: str,
    *,
    targets: Sequence[int],
    group: int,
    seed: int,
    max_new: int = CONST_LEN,
    rows: Sequence[int] | Callable[[Rollouts], Sequence[int]] | None = None,
    tool_token: int | None = None,
    device: Any = "cpu",
    label: str = "batch",
) -> Case:
    r"""Rollouts of ``policy`` (sampled on the CPU in float64 with ``seed``: identical batches on
    every machine) turned into a GRPO batch on ``device``.

    * advantages: group-normalised rewards of each group of ``group`` answers;
    * old log-probs: the committed policy :math:`\theta_{old}`; the gradient is taken at
      :math:`\theta = \theta_{old} + 0.03\,\mathrm{sd}(\cdot)\,\varepsilon` (fixed seed), so ratios
      differ from 1 and some tokens are clipped;
    * reference log-probs (KL term): the policy at its initialisation (the manifest's seed);
    * sizes (proportional designs): old-policy entropy plus 10% of its batch mean (a floor, so no
      token gets a vanishing :math:`\pi`);
    * ``rows`` keeps a subset of the rows (advantages stay those of the full groups);
      ``tool_token=i`` marks one answer token of row ``i`` as not eligible (a non-contiguous
      response mask, as with tool output).
    """
    manifest = load_manifest()["policies"][policy]
    old = load_policy(policy, dtype=DTYPE)
    g = torch.Generator().manual_seed(seed)
    ro = rollout(old, torch.as_tensor(list(targets), dtype=torch.int64), group=group,
                 max_new=max_new, generator=g)
    if rows is not None:
        ro = ro.rows(list(rows(ro) if callable(rows) else rows))
    ids = ro.input_ids
    B, W = ids.shape
    P = PROMPT_LEN
    am = torch.zeros(B, W, dtype=torch.bool)
    am[:, :P] = True
    am[:, P:] = ro.response_mask
    rm = torch.zeros(B, W, dtype=torch.bool)
    rm[:, P:] = ro.response_mask
    if tool_token is not None:
        L = int(ro.lengths[tool_token])
        if L < 3:
            raise ValueError("tool_token row needs an answer of at least 3 tokens")
        rm[tool_token, P + L // 2] = False
    with torch.no_grad():
        lp_old, ent_old = _full_logprobs_entropy(old, ids, am)
        torch.manual_seed(int(manifest["seed"]))
        ref = build_policy(manifest["architecture"], manifest["config"]).to(DTYPE).eval()
        lp_ref, _ = _full_logprobs_entropy(ref, ids, am)
    zero = torch.zeros((), dtype=DTYPE)
    sizes = torch.where(rm, ent_old + 0.1 * ent_old[rm].mean(), zero)
    model = load_policy(policy, dtype=DTYPE)
    gp = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(PERTURB * p.std() * torch.randn(p.shape, generator=gp, dtype=DTYPE))
    model = model.to(device).eval()
    dev = torch.device(device)
    batch = GRPOBatch(
        ids.to(dev), am.to(dev), rm.to(dev),
        advantages=ro.advantages.to(DTYPE).to(dev),
        old_log_probs=torch.where(rm, lp_old, zero).to(dev),
        ref_log_probs=torch.where(rm, lp_ref, zero).to(dev),
        sizes=sizes.to(dev),
    )
    norm = LossNormalizers.from_mask(batch.response_mask, const_len=CONST_LEN)
    return Case(policy, label, model, batch, ro, norm, seed)


# ----------------------------------------------------------------------------- reference
def reference_per_token_loss(model: nn.Module, batch: GRPOBatch, rows: Any = None) -> torch.Tensor:
    r"""Full-token per-token loss, written out: full forward, full head,

    .. math:: \ell = -\min(rA, \mathrm{clip}(r, 1 \pm \epsilon)A) + \beta(e^{\delta} - \delta - 1)
              - \alpha H, \quad r = e^{\log\pi_\theta - \log\pi_{old}},\
              \delta = \log\pi_{ref} - \log\pi_\theta .

    0 off the response mask.  ``rows`` restricts the computation to some rows.
    """
    ids, am, rm = batch.input_ids, batch.attention_mask, batch.response_mask
    old, ref, adv = batch.old_log_probs, batch.ref_log_probs, batch.advantages
    assert old is not None and ref is not None
    if rows is not None:
        ids, am, rm, old, ref, adv = (x[rows] for x in (ids, am, rm, old, ref, adv))
    lp, ent = _full_logprobs_entropy(model, ids, am)
    a = adv[:, None]
    ratio = torch.exp(lp - old)
    pg = -torch.minimum(ratio * a, ratio.clamp(1 - CLIP, 1 + CLIP) * a)
    delta = ref - lp
    ell = pg + KL_COEF * (torch.exp(delta) - delta - 1) - ENTROPY_COEF * ent
    return torch.where(rm, ell, torch.zeros((), dtype=ell.dtype, device=ell.device))


def full_objective(ell: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The trainers' full-token aggregation (docs/rl/overview.md), written out (no empty rows)."""
    m = _ALIASES[mode]
    L = mask.sum(-1).to(ell.dtype)
    if bool((L == 0).any()):
        raise ValueError("the reference formulas here assume no empty rows")
    N, G = L.sum(), float(mask.shape[0])
    rowsum = torch.where(mask, ell, torch.zeros_like(ell)).sum(-1)
    if m == "token-mean":
        return rowsum.sum() / N
    if m == "token-sum":
        return rowsum.sum()
    if m == "seq-mean-token-sum":
        return rowsum.sum() / G
    if m == "seq-mean-token-mean":
        return (rowsum / L).sum() / G
    return rowsum.sum() / (G * CONST_LEN)


def row_scales(mask: torch.Tensor, mode: str) -> torch.Tensor:
    r"""The per-row factor :math:`a_i` with :math:`J = \sum_i a_i \sum_t m_{it}\ell_{it}`
    (every mode has this form), from the formulas above."""
    m = _ALIASES[mode]
    L = mask.sum(-1).to(DTYPE)
    N, G = L.sum(), float(mask.shape[0])
    one = torch.ones_like(L)
    return {
        "token-mean": one / N,
        "token-sum": one,
        "seq-mean-token-sum": one / G,
        "seq-mean-token-mean": 1 / (L * G),
        "seq-mean-token-sum-norm": one / (G * CONST_LEN),
    }[m]


def flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([
        (torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params,
                                                                              strict=True)
    ])


def full_gradients(case: Case, modes: Sequence[str]) -> dict[str, torch.Tensor]:
    """Full-token gradient of every mode, from the independent reference."""
    params = case.params
    ell = reference_per_token_loss(case.model, case.batch)
    out = {}
    for mode in modes:
        J = full_objective(ell, case.response_mask, mode)
        out[mode] = flat(torch.autograd.grad(J, params, retain_graph=True, allow_unused=True),
                         params)
    return out


# ----------------------------------------------------------------------------- pipeline
LossFn = Callable[[Any, Selection], torch.Tensor]


def ht_loss(mode: str) -> LossFn:
    """NAT (HT) loss of a micro-batch: ``agg_loss`` with the HT weights and full-mask
    normalizers (``MicroBatchTerms.loss``)."""
    return lambda terms, sel: terms.loss(mode)


def hajek_loss(mode: str) -> LossFn:
    """The Hájek variant: ``normalizer="hajek"`` (rows self-normalised)."""
    return lambda terms, sel: terms.loss(mode, normalizer="hajek")


def shortcut_loss(mode: str) -> LossFn:
    """Negative control 1: the selection *replaces* the response mask and the loss is aggregated
    as the trainer would (no weights, denominators counted on the selection)."""
    def fn(terms: Any, sel: Selection) -> torch.Tensor:
        sel_norm = LossNormalizers.from_mask(sel.sample, const_len=CONST_LEN)
        mb = terms.micro_batch
        return agg_loss(terms.per_token_loss, mb.gather(sel.sample, fill=False), mode,
                        normalizers=sel_norm.rows(mb.rows))
    return fn


def misspecified(selection: Selection, power: float = 0.8) -> Selection:
    r"""Negative control 3: the same sample, weighted by :math:`1/\pi^{0.8}` instead of
    :math:`1/\pi` (``ht_weights`` with the wrong :math:`\pi`)."""
    bad = torch.where(selection.response_mask, selection.pi ** power, selection.pi)
    w = ht_weights(
        selection.sample, bad, mask=selection.response_mask, dtype=selection.weights.dtype
    )
    return dataclasses.replace(selection, pi=bad, weights=w)


def pipeline_gradients(
    case: Case,
    selection: Selection,
    losses: dict[str, LossFn],
    *,
    max_tokens: int | None = None,
) -> dict[str, torch.Tensor]:
    """The gradient of each named loss through the RL plumbing: crop each row after its last
    selected token, pack into micro-batches of at most ``max_tokens`` padded tokens, backbone
    on the packed rows, head only at the selected positions, per-token GRPO loss, then the
    micro-batch losses summed and differentiated."""
    cfg = config(max_tokens=max_tokens)
    params = case.params
    plan = plan_batch(case.batch, selection, cfg)
    totals: dict[str, torch.Tensor] = {}
    for terms in grpo_micro_batches(case.model, case.batch, selection, case.normalizers, cfg,
                                    plan):
        for name, fn in losses.items():
            v = fn(terms, selection)
            totals[name] = v if name not in totals else totals[name] + v
    out = {}
    for name in losses:
        if name not in totals:  # nothing selected anywhere: the loss is 0
            out[name] = torch.zeros(sum(p.numel() for p in params), dtype=DTYPE,
                                    device=params[0].device)
            continue
        out[name] = flat(torch.autograd.grad(totals[name], params, retain_graph=True,
                                             allow_unused=True), params)
    return out


# ----------------------------------------------------------------------------- per-token
@dataclass(frozen=True, eq=False)
class TokenGradients:
    r"""Per-token gradients :math:`\nabla_\theta \ell_{it}` of the reference loss, kept as
    projections on a set of unit directions, plus each row's exact covariance trace per design.

    ``trace_var[name][i]`` is
    :math:`\mathrm{tr}\,\mathrm{Cov}(\sum_t I_{it}\nabla\ell_{it}/\pi_{it})` for row :math:`i`
    under design ``name``: ``nat.design_variance`` of the row's per-token gradients replaced by
    :math:`Z = Q\Lambda^{1/2}` from the eigendecomposition of their Gram matrix
    :math:`YY^\top = Q\Lambda Q^\top` (the HT total's covariance trace depends on :math:`Y` only
    through :math:`YY^\top`, and :math:`ZZ^\top = YY^\top`).
    """

    proj: torch.Tensor  # (B, T, K) float64, 0 off the mask
    directions: torch.Tensor  # (P, K)
    trace_var: dict[str, torch.Tensor]  # design name -> (B,)


def token_gradients(case: Case, directions: torch.Tensor,
                    designs: dict[str, nat.Design]) -> TokenGradients:
    """Per-token backward of the reference loss, row by row (a row's graph is small), projected
    on ``directions``, and the exact covariance trace of every design, row by row."""
    params = case.params
    rm = case.response_mask
    B, W = rm.shape
    K = directions.shape[1]
    proj = torch.zeros(B, W, K, dtype=DTYPE, device=rm.device)
    trace = {name: torch.zeros(B, dtype=DTYPE, device=rm.device) for name in designs}
    for i in range(B):
        width = int(case.batch.attention_mask[i].nonzero().max()) + 1
        ell = reference_per_token_loss(case.model, _crop_batch(case.batch, width), rows=[i])[0]
        cols = rm[i].nonzero()[:, 0].tolist()
        Y = torch.zeros(W, directions.shape[0], dtype=DTYPE, device=rm.device)
        for t in cols:
            Y[t] = flat(torch.autograd.grad(ell[t], params, retain_graph=True,
                                            allow_unused=True), params)
        proj[i] = Y @ directions
        lam, Q = torch.linalg.eigh(Y @ Y.T)
        Z = (Q * lam.clamp(min=0).sqrt())[None]  # (1, W, W): Z Z^T = Y Y^T
        for name, d in designs.items():
            trace[name][i] = nat.design_variance(Z, d.rows(slice(i, i + 1)), axis=1).sum()
    return TokenGradients(proj, directions, trace)


def _crop_batch(batch: GRPOBatch, width: int) -> GRPOBatch:
    return GRPOBatch(*(x[:, :width] for x in (batch.input_ids, batch.attention_mask,
                                               batch.response_mask)),
                     advantages=batch.advantages,
                     old_log_probs=batch.old_log_probs[:, :width],  # type: ignore[index]
                     ref_log_probs=batch.ref_log_probs[:, :width])  # type: ignore[index]


# ----------------------------------------------------------------------------- statistics
def bonferroni_z(alpha: float, tests: int) -> float:
    """Two-sided normal threshold for family-wise level ``alpha`` over ``tests`` tests."""
    from scipy.stats import norm

    return float(norm.isf(alpha / (2 * tests)))


def pick_rows(ro: Rollouts, n: int, lengths: tuple[int, int], *, tokens: int | None = None,
              distinct: bool = True) -> list[int]:
    """The first ``n`` rows (in order) with a nonzero advantage, a response length in
    ``lengths`` (inclusive), pairwise distinct lengths (if ``distinct``) and at most ``tokens``
    tokens in all — a deterministic choice of a small ragged batch from fixed-seed rollouts."""
    out: list[int] = []
    seen: set[int] = set()
    total = 0
    for i in range(ro.lengths.numel()):
        L = int(ro.lengths[i])
        if float(ro.advantages[i]) == 0 or not lengths[0] <= L <= lengths[1] or (
            distinct and L in seen
        ):
            continue
        if tokens is not None and total + L > tokens:
            continue
        out.append(i)
        seen.add(L)
        total += L
        if len(out) == n:
            return out
    raise ValueError(f"could not pick {n} rows with lengths in {lengths} from these rollouts")


def short_rows(ro: Rollouts, n: int = 3, tokens: int = 8) -> list[int]:
    """``n - 1`` shortest rows plus the shortest remaining row with a nonzero advantage (ties in
    order), at most ``tokens`` tokens in all: a batch small enough for subset enumeration."""
    order = sorted(range(ro.lengths.numel()), key=lambda i: (int(ro.lengths[i]), i))
    out = order[: n - 1]
    out.append(next(i for i in order if i not in out and float(ro.advantages[i]) != 0))
    if sum(int(ro.lengths[i]) for i in out) > tokens:
        raise ValueError(f"the {n} shortest rows have more than {tokens} tokens")
    return sorted(out)
