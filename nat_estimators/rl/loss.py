r"""Loss aggregation of verl / TRL / OpenRLHF, and its Horvitz–Thompson (NAT) version.

Every aggregation these trainers use is linear in the per-token loss :math:`\ell`:

.. math:: J = \sum_{i,t} a_{it}\, m_{it}\, \ell_{it},

where :math:`m` is the full response mask and :math:`a` depends only on :math:`m` and constants.
The NAT estimate of :math:`J` from a token selection :math:`S` multiplies each term by the
Horvitz–Thompson weight :math:`w_{it} = I_{it}/\pi_{it}`:

.. math:: \hat J = \sum_{i,t} a_{it}\, m_{it}\, w_{it}\, \ell_{it}, \qquad
          E_S[\hat J] = J \quad (\text{and } E_S[\nabla_\theta \hat J] = \nabla_\theta J),

provided :math:`a` is computed from the **full** mask — never from the selection — and the
selection does not depend on :math:`\theta`.

Scope
-----
This holds for objectives that are sums of per-token terms: token-level PPO/GRPO/DAPO/CISPO/
REINFORCE losses, per-token KL penalties and entropy bonuses.  It does **not** hold for
sequence-level nonlinear objectives such as GSPO or TRL's ``importance_sampling_level="sequence"``,
whose per-token loss contains :math:`s_i(\theta) = \exp\bigl(\tfrac1{L_i}\sum_t \log r_{it}\bigr)`,
a nonlinear function of *all* of a row's tokens: estimating the inner mean from a subsample and
exponentiating it is biased (Jensen), and prefix cropping does not even compute the tokens it
needs.  Those mode names are refused by :func:`agg_loss`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ._checks import (
    as_bool_mask,
    check_2d,
    check_positive_number,
    check_same_shape,
    check_weight_dtype,
)
from .stats import LossNormalizers

__all__ = ["LOSS_MODES", "agg_loss", "loss_coefficients", "openrlhf_mode", "resolve_mode"]

Normalizer = Literal["ht", "hajek"]

_CANONICAL = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)


@dataclass(frozen=True)
class _ModeSpec:
    canonical: str
    rows: Literal["nonempty", "all"]  # which row count G is by default
    tokens: Literal["global", "local"]  # token-mean: N global (verl, dapo) or local (bnpo)


_MODES: dict[str, _ModeSpec] = {
    # verl (verl/trainer/ppo/core_algos.py::agg_loss)
    "token-mean": _ModeSpec("token-mean", "nonempty", "global"),
    "token-sum": _ModeSpec("token-sum", "nonempty", "global"),
    "seq-mean-token-sum": _ModeSpec("seq-mean-token-sum", "nonempty", "global"),
    "seq-mean-token-mean": _ModeSpec("seq-mean-token-mean", "nonempty", "global"),
    "seq-mean-token-sum-norm": _ModeSpec("seq-mean-token-sum-norm", "nonempty", "global"),
    # TRL GRPOTrainer loss_type
    "grpo": _ModeSpec("seq-mean-token-mean", "all", "global"),
    "bnpo": _ModeSpec("token-mean", "all", "local"),
    "dr_grpo": _ModeSpec("seq-mean-token-sum-norm", "all", "global"),
    "dapo": _ModeSpec("token-mean", "all", "global"),
    "cispo": _ModeSpec("token-mean", "all", "global"),
    # OpenRLHF PolicyLoss(token_level_loss=True / False)
    "openrlhf_token_level": _ModeSpec("token-mean", "all", "local"),
    "openrlhf_seq_level": _ModeSpec("seq-mean-token-mean", "all", "global"),
}

#: Every mode name :func:`agg_loss` accepts (verl names, then TRL and OpenRLHF aliases).
LOSS_MODES: tuple[str, ...] = tuple(_MODES)

_SEQUENCE_LEVEL = {
    "gspo",
    "gspo_token",
    "gspo-token",
    "sequence",
    "seq",
    "sequence-level",
    "sequence_level",
    "seq-ratio",
}

_SEQ_LEVEL_MSG = (
    "sequence-level ratio objectives (GSPO, TRL importance_sampling_level='sequence') are not "
    "linear in per-token terms: their loss uses exp(mean_t log r_it) over the whole sequence, "
    "and a Horvitz–Thompson reweighted subsample of that mean, exponentiated, is biased; prefix "
    "cropping does not even compute the tokens it needs. Use token-level ratios with NAT, or "
    "train GSPO on full sequences"
)


def resolve_mode(mode: str) -> str:
    """The verl mode name an alias stands for (``"grpo"`` -> ``"seq-mean-token-mean"``).

    Raises
    ------
    ValueError
        For an unknown mode, or a sequence-level objective (GSPO), which HT weighting does not
        make unbiased.

    Examples
    --------
    >>> from nat_estimators.rl import resolve_mode
    >>> resolve_mode("dr_grpo")
    'seq-mean-token-sum-norm'
    """
    return _spec(mode).canonical


def openrlhf_mode(token_level_loss: bool) -> str:
    """The mode name for OpenRLHF's ``PolicyLoss(token_level_loss=...)`` flag.

    Examples
    --------
    >>> from nat_estimators.rl import openrlhf_mode
    >>> openrlhf_mode(True), openrlhf_mode(False)
    ('openrlhf_token_level', 'openrlhf_seq_level')
    """
    return "openrlhf_token_level" if token_level_loss else "openrlhf_seq_level"


def _spec(mode: Any) -> _ModeSpec:
    if not isinstance(mode, str):
        raise ValueError(f"mode must be a string, one of {LOSS_MODES}; got {mode!r}")
    if mode.lower() in _SEQUENCE_LEVEL:
        raise ValueError(f"mode={mode!r}: {_SEQ_LEVEL_MSG}")
    try:
        return _MODES[mode]
    except KeyError:
        raise ValueError(f"unknown mode {mode!r}; expected one of {LOSS_MODES}") from None


def _as_scalar(v: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(v, dtype=dtype, device=device)


def _safe_inv(x: torch.Tensor) -> torch.Tensor:
    """1/x where x > 0, else 0 (a zero count only ever multiplies zero terms)."""
    return torch.where(x > 0, 1 / torch.where(x > 0, x, torch.ones_like(x)), torch.zeros_like(x))


def loss_coefficients(
    response_mask: torch.Tensor,
    mode: str,
    *,
    weights: torch.Tensor | None = None,
    normalizer: Normalizer = "ht",
    num_tokens: Any = None,
    num_seqs: Any = None,
    const_len: Any = None,
    dp_size: int = 1,
    normalizers: LossNormalizers | None = None,
    dtype: torch.dtype | None = None,
    validate: bool = True,
) -> torch.Tensor:
    r"""Coefficients :math:`c` with ``agg_loss(l, ...) == (c * l).sum()`` (for trainers that sum).

    Parameters are those of :func:`agg_loss` (without the loss itself), plus ``dtype``: the
    float dtype of :math:`c` (default: ``weights.dtype`` or float32; half types are refused).

    Returns
    -------
    torch.Tensor, shape (B, T)
        :math:`c_{it} = d\, a_{it}\, m_{it}\, \tilde w_{it}`, zero outside the response mask and
        at unselected tokens (:math:`d` = ``dp_size``; see :func:`agg_loss`).

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import loss_coefficients
    >>> m = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    >>> loss_coefficients(m, "seq-mean-token-mean")
    tensor([[0.2500, 0.2500, 0.0000],
            [0.1667, 0.1667, 0.1667]])
    >>> w = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    >>> loss_coefficients(m, "token-sum", weights=w)
    tensor([[2., 0., 0.],
            [1., 1., 1.]])
    """
    spec = _spec(mode)
    m = as_bool_mask(response_mask, "response_mask", check_values=validate)
    B = m.shape[0]
    if normalizer not in ("ht", "hajek"):
        raise ValueError(f"normalizer must be 'ht' or 'hajek', got {normalizer!r}")
    if isinstance(dp_size, numbers.Integral) and not isinstance(dp_size, bool):
        dp_size = int(dp_size)  # numpy integers are fine
    if isinstance(dp_size, bool) or not isinstance(dp_size, int) or dp_size < 1:
        raise ValueError(f"dp_size must be a positive int, got {dp_size!r}")
    if normalizers is not None and not isinstance(normalizers, LossNormalizers):
        raise TypeError(
            f"normalizers must be a LossNormalizers record, got {type(normalizers).__name__}"
        )

    # ------------------------------------------------------------------ dtype
    if weights is not None:
        weights = check_2d(weights, "weights")
        check_same_shape(weights, m, "weights", "response_mask")
        check_weight_dtype(weights.dtype, "weights")
        if weights.device != m.device:
            raise ValueError(
                f"weights is on {weights.device} but response_mask is on {m.device}"
            )
    if dtype is None:
        dtype = weights.dtype if weights is not None else torch.float32
    check_weight_dtype(dtype, "dtype")
    dev = m.device
    mf = m.to(dtype)

    # ------------------------------------------------------------------ weights
    if weights is None:
        w = mf
    else:
        if validate:
            if bool(((weights != 0) & ~m).any()):
                raise ValueError(
                    "weights is nonzero at positions outside response_mask (ineligible "
                    "positions); a selection must be a subset of the response mask. If "
                    "response_mask is a cropped micro-batch mask, gather the weights with the "
                    "same plan"
                )
            bad = m & ~(torch.isfinite(weights) & (weights >= 0))
            if bool(bad.any()):
                raise ValueError("weights must be finite and >= 0 at eligible positions")
        w = torch.where(m, weights.to(dtype), torch.zeros((), dtype=dtype, device=dev))

    # ------------------------------------------------------------------ full-mask lengths
    if normalizers is not None:
        L = normalizers.seq_lengths
        if tuple(L.shape) != (B,):
            raise ValueError(
                f"normalizers.seq_lengths has shape {tuple(L.shape)} but the batch has {B} rows; "
                "select the micro-batch's rows with normalizers.rows(index)"
            )
        L = L.to(device=dev, dtype=dtype)
        if validate and bool((m.sum(-1).to(dtype) > L).any()):
            raise ValueError(
                "response_mask has more eligible tokens in some row than "
                "normalizers.seq_lengths records; the normalizers must come from the full "
                "(uncropped) mask of the same rows"
            )
    else:
        L = mf.sum(-1)

    if normalizer == "hajek":
        # separate ratio estimator: self-normalise each row so its weights sum to L_i
        Lhat = (w * mf).sum(-1)
        w = w * (L * _safe_inv(Lhat))[:, None]

    # ------------------------------------------------------------------ denominators
    canonical = spec.canonical
    if canonical == "token-mean":
        if num_tokens is not None:
            n_tok = _as_scalar(check_positive_number(num_tokens, "num_tokens", allow_zero=True),
                               dtype, dev)
        elif spec.tokens == "local":
            n_tok = L.sum() if normalizers is None else _as_scalar(
                normalizers.local_num_tokens, dtype, dev
            )
        elif normalizers is not None:
            n_tok = _as_scalar(normalizers.num_tokens, dtype, dev)
        else:
            n_tok = L.sum()
        row_scale = _safe_inv(n_tok) * torch.ones(B, dtype=dtype, device=dev)
    elif canonical == "token-sum":
        row_scale = torch.ones(B, dtype=dtype, device=dev)
    else:
        if num_seqs is not None:
            g = _as_scalar(check_positive_number(num_seqs, "num_seqs", allow_zero=True), dtype,
                           dev)
        elif normalizers is not None:
            g = _as_scalar(
                normalizers.num_seqs if spec.rows == "nonempty" else normalizers.num_rows,
                dtype,
                dev,
            )
        elif spec.rows == "nonempty":
            g = (L > 0).sum().to(dtype)
        else:
            g = _as_scalar(B, dtype, dev)
        row_scale = _safe_inv(g) * torch.ones(B, dtype=dtype, device=dev)
        if canonical == "seq-mean-token-mean":
            row_scale = row_scale * _safe_inv(L)
        elif canonical == "seq-mean-token-sum-norm":
            c = const_len
            if c is None and normalizers is not None:
                c = normalizers.const_len
            if c is None:
                raise ValueError(
                    f"mode {mode!r} (seq-mean-token-sum-norm, Dr. GRPO) needs const_len: a pinned "
                    "constant C such as the maximum response length. verl falls back to the "
                    "tensor width, which shrinks under prefix cropping and micro-batching and "
                    "would bias the loss"
                )
            c = check_positive_number(c, "const_len")
            row_scale = row_scale / _as_scalar(c, dtype, dev)
    return (dp_size * row_scale)[:, None] * w


def agg_loss(
    per_token_loss: torch.Tensor,
    response_mask: torch.Tensor,
    mode: str,
    *,
    weights: torch.Tensor | None = None,
    normalizer: Normalizer = "ht",
    num_tokens: Any = None,
    num_seqs: Any = None,
    const_len: Any = None,
    dp_size: int = 1,
    normalizers: LossNormalizers | None = None,
    validate: bool = True,
) -> torch.Tensor:
    r"""Aggregate a per-token loss as verl / TRL / OpenRLHF do, or its NAT (HT) estimate.

    Parameters
    ----------
    per_token_loss : torch.Tensor, shape (B, T)
        :math:`\ell_{it}`.  Values outside the response mask and at unselected tokens are ignored,
        even NaN (they are replaced by 0 before multiplying).
    response_mask : torch.Tensor, shape (B, T)
        :math:`m_{it}`: the response (loss) mask of these rows, bool or 0/1.  For a cropped
        micro-batch this is the cropped mask; the full-mask denominators then come from
        ``normalizers``.
    mode : str
        verl's ``token-mean``, ``token-sum``, ``seq-mean-token-sum``, ``seq-mean-token-mean``,
        ``seq-mean-token-sum-norm``; TRL's ``grpo``, ``bnpo``, ``dr_grpo``, ``dapo``, ``cispo``;
        OpenRLHF's ``openrlhf_token_level`` / ``openrlhf_seq_level`` (see
        :func:`openrlhf_mode`).  Sequence-level objectives (``gspo``) are refused.
    weights : torch.Tensor, shape (B, T), optional
        Horvitz–Thompson weights :math:`w_{it} = I_{it}/\pi_{it}` (0 where not selected), float32
        or float64.  ``None`` means the full loss (:math:`w = m`).
    normalizer : {"ht", "hajek"}, default "ht"
        ``"ht"``: unbiased.  ``"hajek"``: each row's weights are self-normalised to sum to
        :math:`L_i` (a separate ratio estimator), **biased**, sometimes lower variance; every
        selected token of a row must be in the tensors passed.  The bias is :math:`O(1/n_i)`
        only for designs whose sample is many independent draws (Poisson, simple random,
        systematic); under prefix cutting one cut decides the whole row and the bias does **not**
        shrink with the row length (for a loss rising linearly from 0 to 1 along the response,
        about -0.19 at keep 0.5 for rows of 10 or 1000 tokens, exact over every cut) — see
        :doc:`/theory/hajek`.
    num_tokens : int, float or 0-d tensor, optional
        Global :math:`N` for ``token-mean``/``dapo``/``cispo`` (default: from ``normalizers``,
        else the local full mask).  ``bnpo``/``openrlhf_token_level`` use the local count: of
        these rows, or ``normalizers.local_num_tokens`` (the rank's full-mask count).  TRL's
        ``bnpo`` counts each trainer micro-batch: pass that micro-batch's full mask (no
        ``normalizers``, or one built by :meth:`LossNormalizers.from_mask` on it).
    num_seqs : int, float or 0-d tensor, optional
        Global :math:`G` for the ``seq-mean-*`` modes (default: from ``normalizers``, else the
        local rows: non-empty rows for verl names, all rows for the TRL/OpenRLHF aliases).
    const_len : int or float, optional
        :math:`C` for ``seq-mean-token-sum-norm`` / ``dr_grpo`` (required; or in
        ``normalizers``).
    dp_size : int, default 1
        :math:`d`, data-parallel size: each rank's loss is multiplied by it, as in verl, so that
        gradients *averaged* over ranks equal the gradient of the global loss.
    normalizers : LossNormalizers, optional
        Full-mask statistics (global :math:`N`, :math:`G`, :math:`C`, the rows' :math:`L_i`);
        explicit ``num_tokens``/``num_seqs``/``const_len`` take precedence.
    validate : bool, default True
        Check values (0/1 mask, weights finite, non-negative and zero off the mask); each check
        synchronises once on an accelerator.

    Returns
    -------
    torch.Tensor
        0-d loss in the computation dtype: ``weights.dtype`` if given, else float32 (float64 if
        ``per_token_loss`` is float64).  A bf16/fp16 loss is cast up; its gradient flows back in
        its own dtype.

    Raises
    ------
    ValueError
        Shapes of loss, mask, weights or ``normalizers.seq_lengths`` disagree; weights nonzero
        off the mask, negative or non-finite; half-precision weights; unknown or sequence-level
        mode; ``seq-mean-token-sum-norm`` without ``const_len``; bad ``dp_size`` or counts.

    Notes
    -----
    With :math:`m` the full mask, :math:`L_i = \sum_t m_{it}`, :math:`N = \sum_i L_i`,
    :math:`G` the row count, :math:`C` = ``const_len``, :math:`d` = ``dp_size`` and
    :math:`w = m` when ``weights`` is None:

    .. math::

        \text{token-mean: } \frac{d}{N}\sum_{i,t} m w \ell, \quad
        \text{token-sum: } d\sum_{i,t} m w \ell, \quad
        \text{seq-mean-token-sum: } \frac{d}{G}\sum_{i,t} m w \ell,

    .. math::

        \text{seq-mean-token-mean: } \frac{d}{G}\sum_i \frac{1}{L_i}\sum_t m w \ell, \quad
        \text{seq-mean-token-sum-norm: } \frac{d}{G\,C}\sum_{i,t} m w \ell .

    Rows with :math:`L_i = 0` contribute 0; a zero :math:`N` or :math:`G` gives a zero loss.
    ``"hajek"`` replaces :math:`w_{it}` by :math:`w_{it} L_i / \hat L_i` with
    :math:`\hat L_i = \sum_t m_{it} w_{it}`.  Because :math:`E[w_{it}] = m_{it}` and every other
    factor is fixed by the full mask, :math:`E[\text{HT loss}] = \text{full loss}` for every
    mode, for gradients too.

    Conventions of the trainers (``weights=None`` reproduces them): verl's seq-mean modes count
    :math:`G` over non-empty rows and verl adds :math:`10^{-8}` to :math:`L_i` (we do not);
    TRL's ``grpo``/``dr_grpo`` divide by all rows (``.mean()``, ``size(0)``) and ``bnpo`` by the
    local token count; OpenRLHF's ``masked_mean`` gives NaN for empty rows where we give 0.
    TRL's further division by the gradient-accumulation steps is left to the caller.  Some verl
    versions compute ``seq-mean-token-sum-norm`` as :math:`\sum m\ell / C` without :math:`G`;
    we follow the Dr. GRPO paper and TRL (:math:`G C`).

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import agg_loss
    >>> l = torch.tensor([[1.0, 2.0, 9.0], [3.0, 4.0, 5.0]])
    >>> m = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    >>> agg_loss(l, m, "token-mean")
    tensor(3.)
    >>> agg_loss(l, m, "grpo")  # TRL: mean over rows of the row means
    tensor(2.7500)

    HT estimate from a selection keeping tokens with probability 1/2 (weight 2):

    >>> w = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 2.0]])
    >>> agg_loss(l, m, "token-mean", weights=w)
    tensor(4.)
    """
    loss = check_2d(per_token_loss, "per_token_loss")
    m = check_2d(response_mask, "response_mask")
    check_same_shape(loss, m, "per_token_loss", "response_mask")
    if not loss.is_floating_point():
        raise ValueError(f"per_token_loss must be a float tensor, got {loss.dtype}")
    dtype = torch.promote_types(loss.dtype, torch.float32)
    if weights is not None:
        check_2d(weights, "weights")
        check_weight_dtype(weights.dtype, "weights")
        dtype = torch.promote_types(dtype, weights.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    c = loss_coefficients(
        m,
        mode,
        weights=None if weights is None else weights.to(dtype),
        normalizer=normalizer,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        const_len=const_len,
        dp_size=dp_size,
        normalizers=normalizers,
        dtype=dtype,
        validate=validate,
    )
    if c.device != loss.device:
        raise ValueError(f"per_token_loss is on {loss.device} but response_mask is on {c.device}")
    lv = torch.where(c != 0, loss.to(dtype), torch.zeros((), dtype=dtype, device=c.device))
    return (c * lv).sum()
