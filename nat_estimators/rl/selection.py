r"""Token selection for NAT losses: one call from a response mask to a selection record.

:func:`select_tokens` builds a sampling design over the eligible tokens of every row (the response
mask, possibly non-contiguous), draws a selection with a ``torch.Generator`` on the mask's device
and returns a frozen :class:`Selection`: the sample :math:`I`, the inclusion probabilities
:math:`\pi`, the Horvitz–Thompson weights :math:`w = I/\pi` and, for prefix cutting, the cut and
crop lengths that let the forward pass stop early.

The selection must not depend on the parameters being differentiated: size measures (old-policy
entropy, :math:`|A|`) are detached.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from .. import Prefix
from .._compat import namespace
from .._deprecation import deprecated
from .._design import Design
from .._validation import trusted
from ..estimators import ht_weights
from ..inclusion import _capped_probabilities
from ._checks import (
    as_bool_mask,
    check_fraction,
    check_same_shape,
    check_shared,
    check_weight_dtype,
)

__all__ = ["DESIGNS", "Selection", "needs_sizes", "select_tokens"]

_PROPORTIONAL = "_proportional"
_OPTIMAL = "_optimal"


def _design_names() -> tuple[str, ...]:
    """Every registered design (:meth:`Design.registered`) that has ``from_fraction``, then the
    size-proportional variants ``<name>_proportional`` of those that have ``proportional``, then
    the variance-optimal variants ``<name>_optimal`` of those that have ``optimal``."""
    reg = Design.registered()
    plain = tuple(n for n, cls in reg.items() if hasattr(cls, "from_fraction"))
    return (plain + tuple(n + _PROPORTIONAL for n in plain if hasattr(reg[n], "proportional"))
            + tuple(n + _OPTIMAL for n in plain if hasattr(reg[n], "optimal")))


def needs_sizes(design: str) -> bool:
    """Whether the design name needs per-token ``sizes`` (the ``_proportional`` and ``_optimal``
    variants).

    Examples
    --------
    >>> from nat_estimators.rl import needs_sizes
    >>> needs_sizes("prefix"), needs_sizes("prefix_optimal"), needs_sizes("poisson_proportional")
    (False, True, True)
    """
    return design.endswith((_PROPORTIONAL, _OPTIMAL))


#: Design names :func:`select_tokens` accepts (the designs registered when
#: :mod:`nat_estimators.rl` is imported; :func:`select_tokens` also finds designs registered later).
DESIGNS: tuple[str, ...] = _design_names()


def _crop_lengths(sample: torch.Tensor) -> torch.Tensor:
    t = torch.arange(1, sample.shape[-1] + 1, device=sample.device, dtype=torch.int64)
    return torch.where(sample, t, torch.zeros_like(t)).amax(dim=-1)


@dataclass(frozen=True, eq=False)
class Selection:
    r"""A drawn token selection and everything the loss needs from it.

    Attributes
    ----------
    sample : torch.Tensor of bool, shape (B, T)
        Selected tokens :math:`I_{it}` (a subset of ``response_mask``).  (``mask`` is a
        deprecated alias.)
    pi : torch.Tensor of float64, shape (B, T)
        Inclusion probabilities :math:`\pi_{it}` (0 off the response mask).
    weights : torch.Tensor, shape (B, T)
        :math:`w_{it} = I_{it}/\pi_{it}`, float32 or float64, 0 where not selected.
    design : Design
        The sampling design (exact :math:`\pi_{kl}`, variance formulas).
    response_mask : torch.Tensor of bool, shape (B, T)
        The full response mask the design was built on.
    crop_lengths : torch.Tensor of int64, shape (B,)
        Position of the last selected token + 1, in the coordinates of the mask's last axis
        (0 for rows with nothing selected): a causal forward pass may stop there.
    cut_lengths : torch.Tensor of int64, shape (B,) or None
        Prefix designs: the cut :math:`L_i`, in eligible tokens (``None`` for other designs).

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import select_tokens
    >>> m = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    >>> sel = select_tokens(m, "poisson", keep=0.5, generator=torch.Generator().manual_seed(0))
    >>> sel.sample.int().tolist(), sel.crop_lengths.tolist(), sel.cut_lengths
    ([[0, 0, 1, 0], [0, 0, 1, 0]], [3, 3], None)
    >>> sel.pi.tolist(), sel.weights.tolist()
    ([[0.5, 0.5, 0.5, 0.5], [0.0, 0.5, 0.5, 0.0]], [[0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    >>> sel.rows(torch.tensor([1])).num_selected.tolist()
    [1]
    """

    sample: torch.Tensor
    pi: torch.Tensor
    weights: torch.Tensor
    design: Design
    response_mask: torch.Tensor
    crop_lengths: torch.Tensor
    cut_lengths: torch.Tensor | None = None

    @classmethod
    def from_sample(
        cls, design: Design, sample: torch.Tensor, *, weight_dtype: torch.dtype = torch.float32
    ) -> Selection:
        """The record of a given ``sample`` of ``design`` (for enumeration, replay, sharding).

        Examples
        --------
        >>> import torch
        >>> import nat_estimators as nat
        >>> from nat_estimators.rl import Selection
        >>> m = torch.ones(1, 4, dtype=torch.bool)
        >>> d = nat.Prefix(torch.tensor([[1.0, 0.5, 0.5, 0.25]], dtype=torch.float64), mask=m)
        >>> sel = Selection.from_sample(d, torch.tensor([[True, True, False, False]]))
        >>> sel.weights, sel.cut_lengths, sel.crop_lengths
        (tensor([[1., 2., 0., 0.]]), tensor([2]), tensor([2]))
        """
        if not isinstance(design, Design):
            raise TypeError(f"design must be a Design, got {type(design).__name__}")
        mask = design.mask
        if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
            raise ValueError("the design must be built on a 2-D torch mask [batch, tokens]")
        s = as_bool_mask(sample, "sample")
        check_same_shape(s, mask, "sample", "design.mask")
        pi = design.inclusion_probabilities().to(torch.float64)
        w = ht_weights(s, pi, mask=mask, dtype=weight_dtype)
        cut = design.cut_lengths(s) if isinstance(design, Prefix) else None
        return cls(s, pi, w, design, mask, _crop_lengths(s), cut)

    @property
    def mask(self) -> torch.Tensor:
        """Deprecated alias of :attr:`~nat_estimators.rl.Selection.sample`."""
        deprecated("Selection.mask", "Selection.sample")
        return self.sample

    @property
    def num_selected(self) -> torch.Tensor:
        """Selected tokens per row, int64 ``(B,)``."""
        return self.sample.sum(-1)

    def rows(self, index: torch.Tensor) -> Selection:
        """The selection restricted to rows ``index`` (e.g. this rank's shard)."""
        return Selection(
            self.sample[index],
            self.pi[index],
            self.weights[index],
            self.design.rows(index),
            self.response_mask[index],
            self.crop_lengths[index],
            None if self.cut_lengths is None else self.cut_lengths[index],
        )


def _proportional_pi(
    sizes: torch.Tensor, mask: torch.Tensor, keep: float
) -> torch.Tensor:
    r"""float64 :math:`\pi_k = \min(1, c x_k)` with :math:`\sum_k \pi_k = \kappa N_i` per row (0
    on rows without eligible tokens); ``sizes`` already checked finite and > 0 on ``mask``.

    All rows at once, through :func:`~nat_estimators.inclusion_probabilities`' capping (one
    sort, one cumulative sum): every eligible size is positive, so the number of positive sizes
    of a row is its eligible count :math:`N_i` and the input checks are not repeated.
    """
    count = mask.sum(-1, dtype=torch.float64)
    xs = sizes.to(torch.float64, copy=True).masked_fill_(~mask, 0.0)
    pi = _capped_probabilities(namespace(xs), xs, count * keep, count)
    # pi = 0 exactly off the mask, so every eligible pi is positive iff the counts agree
    if int((pi > 0).sum()) != int(count.sum()):
        raise ValueError(
            "sizes span too many orders of magnitude: pi = keep * N_i * x_k / sum(x) underflows "
            "to 0 on some eligible token (infinite weight). Floor the sizes, e.g. "
            "sizes.clamp_min(1e-6 * sizes.max())"
        )
    return pi


def _optimal_pi(
    cls: type, sizes: torch.Tensor, mask: torch.Tensor, keep: float, full_keep: float,
    shared: bool = False,
) -> torch.Tensor:
    """``cls.optimal`` on the rows with eligible tokens (second moments ``sizes``), 0 elsewhere.

    Prefix: the cut law minimising :math:`\\sum_t (1/S_t - 1) m_t` with floor ``full_keep``;
    Poisson / systematic: :math:`\\pi \\propto \\sqrt{m_t}` capped at 1.  ``shared``: one
    budget for the whole batch.
    """
    count = mask.sum(-1)
    rows = count > 0
    pi = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
    if bool(rows.any()):
        x = sizes[rows].to(torch.float64)
        opts: dict[str, Any] = {"full_keep": full_keep} if cls is Prefix else {}
        d = cls.optimal(x, keep, mask=mask[rows], shared=shared,  # type: ignore[attr-defined]
                        **opts)
        pi = pi.index_put((rows.nonzero()[:, 0],), d.inclusion_probabilities())
    return pi


def _build_design(
    m: torch.Tensor,
    design: str,
    keep: float,
    *,
    sizes: torch.Tensor | None = None,
    full_keep: float = 0.05,
    min_keep: float = 0.0,
    shared: bool = False,
) -> Design:
    """The design :func:`select_tokens` draws from for a design name (validated, not drawn)."""
    names = _design_names()
    if design not in names:
        raise ValueError(f"design must be one of {names} or a Design, got {design!r}")
    kappa = check_fraction(keep, "keep")
    proportional = design.endswith(_PROPORTIONAL)
    optimal = design.endswith(_OPTIMAL)
    check_shared(shared, design)
    if proportional or optimal:
        if sizes is None:
            raise ValueError(f"design={design!r} needs sizes= (per-token size measures)")
        if not isinstance(sizes, torch.Tensor) or not sizes.is_floating_point():
            raise ValueError("sizes must be a floating-point tensor")
        check_same_shape(sizes, m, "sizes", "response_mask")
        sizes = sizes.detach()
        # one pass and two reductions; NaN propagates through amin, so it fails "> 0"
        lo, hi = torch.aminmax(torch.where(m, sizes, 1.0)) if sizes.numel() else (1, 1)
        if not (bool(lo > 0) and bool(hi < torch.inf)):
            raise ValueError(
                "sizes must be finite and > 0 on every eligible token: a size of 0 gives "
                "pi = 0 (never sampled, infinite weight). Add a floor, e.g. "
                "sizes.clamp_min(1e-3 * sizes.max())"
            )
    elif sizes is not None:
        raise ValueError(
            f"sizes is only used by the proportional and optimal designs, not {design!r}"
        )
    cls = Design.registered()[design.removesuffix(_PROPORTIONAL).removesuffix(_OPTIMAL)]
    if proportional:
        assert sizes is not None
        # pi in (0, 1] on the mask and 0 off it by construction: skip re-validation
        d = trusted(cls, pi=_proportional_pi(sizes, m, kappa), mask=m)
    elif optimal:
        assert sizes is not None
        # the optimal constructors' pi, on the mask and 0 off it: skip re-validation
        d = trusted(cls, pi=_optimal_pi(cls, sizes, m, kappa, full_keep, shared), mask=m)
    else:
        accepted = inspect.signature(cls.from_fraction).parameters  # type: ignore[attr-defined]
        options = {k: v for k, v in (("full_keep", full_keep), ("min_keep", min_keep))
                   if k in accepted}
        d = cls.from_fraction(kappa, mask=m, **options)  # type: ignore[attr-defined]
    return d


def select_tokens(
    response_mask: torch.Tensor,
    design: str | Design = "prefix",
    keep: float = 0.5,
    *,
    sizes: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    full_keep: float = 0.05,
    min_keep: float = 0.0,
    weight_dtype: torch.dtype = torch.float32,
    shared: bool = False,
) -> Selection:
    r"""Draw a token selection over a response mask and return its :class:`Selection` record.

    Parameters
    ----------
    response_mask : torch.Tensor, shape (B, T)
        Eligible (loss) tokens; bool or 0/1; may be non-contiguous and rows may be empty.
    design : str or Design, default "prefix"
        ``"prefix"`` (random prefix cut, :meth:`Prefix.from_fraction
        <nat_estimators.Prefix.from_fraction>`), ``"poisson"`` (uniform, the paper's URS),
        ``"simple_random"`` (fixed size :math:`\mathrm{round}(\kappa N_i)`), ``"systematic"``
        (every :math:`1/\kappa`-th token, random start), ``"poisson_proportional"`` /
        ``"systematic_proportional"`` (:math:`\pi \propto` ``sizes``, capped at 1, expected size
        :math:`\kappa N_i`), the variance-optimal ``"prefix_optimal"`` / ``"poisson_optimal"`` /
        ``"systematic_optimal"`` (``sizes`` read as per-token second moments: the optimal cut law
        of :meth:`Prefix.optimal <nat_estimators.Prefix.optimal>`, :math:`\pi \propto
        \sqrt{\text{sizes}}` capped at 1); or a ready :class:`~nat_estimators.Design` on this
        mask.
    keep : float, default 0.5
        Expected keep fraction :math:`\kappa \in (0, 1]` per row (ignored for a ready design).
    sizes : torch.Tensor, shape (B, T), optional
        Size measures for the proportional designs (e.g. old-policy entropy, :math:`|A|`), or
        second-moment proxies for the optimal designs (e.g. :math:`(|A| H)^2`); finite and > 0 on
        eligible tokens, fixed before the draw.  Detached.
    generator : torch.Generator, optional
        On the mask's device; the same generator state gives the same selection.  ``None`` uses
        torch's global generator.
    full_keep, min_keep : float
        Prefix only: floor :math:`a` of :math:`\pi` (the probability of keeping a whole row, so
        weights are at most :math:`1/a`) and the always-kept leading fraction.
    weight_dtype : torch.dtype, default float32
        float32 or float64.
    shared : bool, default False
        Optimal designs only: one budget of :math:`\kappa \sum_i N_i` expected tokens for the
        whole batch instead of :math:`\kappa N_i` per row, so rows with larger second moments
        (e.g. larger :math:`|A_i|`) get more tokens and rows with none get the floor
        (:func:`~nat_estimators.allocation.optimal_survival` with ``shared=True``).

    Returns
    -------
    Selection

    Raises
    ------
    ValueError
        ``keep`` outside (0, 1]; missing, non-positive or misplaced ``sizes``; unknown design;
        a generator on another device; half ``weight_dtype``; infeasible prefix budget.

    Notes
    -----
    The weights are :math:`w_{it} = I_{it}/\pi_{it}` with :math:`E[I_{it}] = \pi_{it}`, so
    :math:`E[w_{it}] = m_{it}`: any loss linear in per-token terms, with denominators from the
    full mask, is estimated without bias (:func:`~nat_estimators.rl.agg_loss`).

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import select_tokens
    >>> m = torch.ones(2, 8, dtype=torch.bool)
    >>> g = torch.Generator().manual_seed(0)
    >>> sel = select_tokens(m, "systematic", keep=0.25, generator=g)
    >>> sel.sample.sum(-1).tolist(), sel.weights.max().item()
    ([2, 2], 4.0)
    >>> sel = select_tokens(m, "prefix", keep=0.5, generator=g)
    >>> bool((sel.cut_lengths == sel.sample.sum(-1)).all())
    True
    """
    m = as_bool_mask(response_mask, "response_mask")
    check_weight_dtype(weight_dtype, "weight_dtype")
    dev = m.device
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}"
            )
        if torch.device(generator.device) != dev and not (
            generator.device.type == dev.type == "cpu"
        ):
            raise ValueError(
                f"generator lives on {generator.device} but response_mask is on {dev}; create it "
                f"with torch.Generator(device={str(dev)!r})"
            )
    if isinstance(design, Design):
        d = design
        if not isinstance(d.mask, torch.Tensor) or tuple(d.mask.shape) != tuple(m.shape) or not (
            bool((d.mask == m).all())
        ):
            raise ValueError("design must be built on response_mask (design.mask != response_mask)")
        if sizes is not None or shared:
            raise ValueError("sizes and shared are only used when the design is given by name")
    else:
        d = _build_design(m, design, keep, sizes=sizes, full_keep=full_keep, min_keep=min_keep,
                          shared=shared)
    if generator is None:
        u = torch.rand(d.uniform_shape, dtype=torch.float64, device=dev)
        sample = d.sample(u)
    else:
        sample = d.draw(generator)
    return Selection.from_sample(d, sample, weight_dtype=weight_dtype)
