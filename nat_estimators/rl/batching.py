r"""Crop rows at their last selected token, pack them into token-budget micro-batches, scatter back.

Prefix cutting makes the forward pass of row :math:`i` stop at its crop length :math:`c_i` (the
position of its last kept token + 1): a causal model's outputs at positions :math:`< c_i` do not
depend on later tokens.  The saving is real only if the cropped rows are re-batched so that
padding does not eat it: :func:`pack_rows` sorts rows by kept length and cuts the sorted list into
micro-batches of at most ``max_tokens`` padded tokens (rows :math:`\times` longest row).

Conventions
-----------
* Rows are whole sequences (prompt + response) on the last axis, left- or right-padded, each a
  single contiguous block of real tokens marked by ``attention_mask``.
* A packed row holds the row's real tokens in order, right-padded; ``MicroBatch.valid`` is its
  attention mask.  A model that derives position ids from the attention mask
  (``cumsum(attention_mask) - 1``, as Hugging Face models do for left padding) computes the same
  outputs at every kept token as on the full, uncropped batch.
* The prompt is kept whole: cropping only removes tokens after the last selected one.  Rows with
  nothing selected are dropped entirely (they contribute no loss term).
"""

from __future__ import annotations

import heapq
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._deprecation import positional_arrays
from ._checks import as_bool_mask

__all__ = ["MicroBatch", "PackPlan", "crop_mask", "pack_rows"]


def crop_mask(attention_mask: torch.Tensor, crop_lengths: torch.Tensor) -> torch.Tensor:
    r"""Real tokens before each row's crop: ``attention_mask & (t < crop_lengths[:, None])``.

    Parameters
    ----------
    attention_mask : torch.Tensor, shape (B, T)
        Real (non-padding) tokens, bool or 0/1.
    crop_lengths : torch.Tensor of int, shape (B,)
        :math:`c_i \in [0, T]` (e.g. :attr:`Selection.crop_lengths
        <nat_estimators.rl.Selection.crop_lengths>`).

    Raises
    ------
    ValueError
        A crop beyond the row length or negative, or a shape mismatch.

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import crop_mask
    >>> am = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    >>> crop_mask(am, torch.tensor([3, 2])).int()
    tensor([[0, 1, 1, 0, 0],
            [1, 1, 0, 0, 0]], dtype=torch.int32)
    """
    am = as_bool_mask(attention_mask, "attention_mask")
    if not isinstance(crop_lengths, torch.Tensor) or crop_lengths.shape != (am.shape[0],):
        raise ValueError(f"crop_lengths must be an integer tensor of shape ({am.shape[0]},)")
    if crop_lengths.is_floating_point() or crop_lengths.dtype == torch.bool:
        raise ValueError(f"crop_lengths must have an integer dtype, got {crop_lengths.dtype}")
    if bool(((crop_lengths < 0) | (crop_lengths > am.shape[1])).any()):
        raise ValueError(
            f"crop_lengths must lie in [0, {am.shape[1]}] (the row length); got a cut beyond a "
            "row's length"
        )
    t = torch.arange(am.shape[1], device=am.device)
    return am & (t[None, :] < crop_lengths.to(am.device)[:, None])


@dataclass(frozen=True, eq=False)
class MicroBatch:
    """One packed micro-batch: rows of the original batch, their kept positions, right-padded.

    Attributes
    ----------
    rows : torch.Tensor of int64, shape (b,)
        Row indices into the original batch.
    index : torch.Tensor of int64, shape (b, t)
        Source column of every packed slot (0 at padding slots).
    valid : torch.Tensor of bool, shape (b, t)
        Real slots: the micro-batch's attention mask.

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import pack_rows
    >>> am = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    >>> mb = pack_rows(am).micro_batches[0]
    >>> mb.rows.tolist(), mb.shape
    ([1, 0], (2, 4))
    >>> mb.index.tolist(), mb.valid.int().tolist()
    ([[0, 1, 2, 3], [1, 2, 0, 0]], [[1, 1, 1, 1], [1, 1, 0, 0]])
    >>> mb.gather(torch.arange(8).view(2, 4), fill=-1).tolist()
    [[4, 5, 6, 7], [1, 2, -1, -1]]
    """

    rows: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        """``(b, t)``: rows and padded width."""
        return (int(self.index.shape[0]), int(self.index.shape[1]))

    def gather(self, x: torch.Tensor, fill: Any = 0) -> torch.Tensor:
        """``x[rows, index]`` for a per-token tensor ``x`` of shape ``(B, T, ...)``, or
        ``x[rows]`` for a per-row tensor of shape ``(B,)``; padding slots get ``fill``."""
        if x.ndim == 1:
            return x[self.rows]
        out = x[self.rows[:, None], self.index]
        v = self.valid.reshape(*self.valid.shape, *([1] * (out.ndim - 2)))
        return torch.where(v, out, torch.as_tensor(fill, dtype=out.dtype, device=out.device))


@dataclass(frozen=True, eq=False)
class PackPlan:
    """How a ``(B, T)`` batch was cropped and packed; iterate over its micro-batches.

    Attributes
    ----------
    micro_batches : tuple of MicroBatch
    batch_shape : tuple of int
        ``(B, T)`` of the original batch.
    lengths : torch.Tensor of int64, shape (B,)
        Kept tokens per row (0 for dropped rows).

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import pack_rows
    >>> am = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    >>> plan = pack_rows(am, max_tokens=3)
    >>> len(plan), plan.batch_shape, plan.lengths.tolist()
    (2, (3, 4), [3, 2, 0])
    >>> plan.real_tokens, plan.padded_tokens
    (5, 5)
    >>> out = plan.scatter([mb.valid.float() for mb in plan])  # back to (B, T)
    >>> bool((out.bool() == am).all())
    True
    """

    micro_batches: tuple[MicroBatch, ...]
    batch_shape: tuple[int, int]
    lengths: torch.Tensor

    def __iter__(self) -> Iterator[MicroBatch]:
        return iter(self.micro_batches)

    def __len__(self) -> int:
        return len(self.micro_batches)

    @property
    def real_tokens(self) -> int:
        """Kept tokens in all micro-batches."""
        return int(self.lengths.sum())

    @property
    def padded_tokens(self) -> int:
        """Slots in all micro-batches, padding included (what a dense forward pass costs)."""
        return sum(mb.shape[0] * mb.shape[1] for mb in self.micro_batches)

    def scatter(self, values: Sequence[torch.Tensor], fill: Any = 0.0) -> torch.Tensor:
        """Put per-micro-batch results ``(b, t, ...)`` back at their ``(B, T, ...)`` positions.

        Differentiable; positions not in any micro-batch get ``fill``.
        """
        if len(values) != len(self.micro_batches):
            raise ValueError(
                f"values has {len(values)} entries but the plan has {len(self)} micro-batches"
            )
        if not values:
            raise ValueError("the plan is empty: nothing to scatter")
        r, c, v = [], [], []
        for mb, val in zip(self.micro_batches, values, strict=True):
            if tuple(val.shape[:2]) != mb.shape:
                raise ValueError(
                    f"a micro-batch result has shape {tuple(val.shape)}, expected {mb.shape}"
                )
            rr = mb.rows[:, None].expand(mb.shape)
            r.append(rr[mb.valid])
            c.append(mb.index[mb.valid])
            v.append(val[mb.valid])
        vals = torch.cat(v)
        out = torch.full(
            (*self.batch_shape, *vals.shape[1:]), fill, dtype=vals.dtype, device=vals.device
        )
        return out.index_put((torch.cat(r), torch.cat(c)), vals)


def _balanced_groups(sorted_len: list[int], max_rows: int) -> list[list[int]]:
    """Positions (into the descending ``sorted_len``) of each balanced group, longest first."""
    n = len(sorted_len)
    if n == 0:
        return []
    k = -(-n // max_rows)
    heap = [(0, g) for g in range(k)]  # (kept tokens, group) of groups with room
    groups: list[list[int]] = [[] for _ in range(k)]
    for pos, ln in enumerate(sorted_len):
        load, g = heapq.heappop(heap)
        groups[g].append(pos)
        if len(groups[g]) < max_rows:
            heapq.heappush(heap, (load + int(ln), g))
    return [g for g in groups if g]


@positional_arrays("attention_mask", renamed={"keep": "attention_mask"})
def pack_rows(
    attention_mask: torch.Tensor,
    /,
    *,
    max_tokens: int | None = None,
    max_rows: int | None = None,
    balance: bool = False,
) -> PackPlan:
    r"""Pack the kept positions of each row into micro-batches under a padded-token budget.

    Parameters
    ----------
    attention_mask : torch.Tensor of bool, shape (B, T)
        Positions each row must feed to the model: :func:`crop_mask` of the attention mask
        (prefix cutting) or the attention mask itself (no cropping).  Rows without such
        positions are dropped.
    max_tokens : int, optional
        Budget of padded tokens (rows :math:`\times` width) per micro-batch; a row longer than
        the budget gets a micro-batch of its own.  ``None``: one micro-batch.
    max_rows : int, optional
        At most this many rows per micro-batch.
    balance : bool, default False
        With ``max_rows`` (and no ``max_tokens``): spread the rows over
        :math:`k = \lceil n / \text{max\_rows} \rceil` micro-batches so that their *kept-token
        sums* are as even as possible, instead of cutting the sorted list.  Meant for backbones
        that drop padding (varlen / "remove padding" attention, as verl's
        ``use_remove_padding``), whose activation memory follows the real tokens of a
        micro-batch: the largest micro-batch, hence the peak memory, is then about
        :math:`1/k` of the kept tokens, whereas the sorted cut puts the ``max_rows`` longest
        rows together.  (With a padded backbone keep the default: the micro-batch holding the
        longest row costs ``max_rows`` times its length either way.)

    Returns
    -------
    PackPlan

    Notes
    -----
    Rows are sorted by kept length :math:`\ell_{(1)} \ge \ell_{(2)} \ge \dots` and cut greedily:
    a micro-batch starting at row :math:`j` takes
    :math:`\min(\lfloor \text{max\_tokens} / \ell_{(j)} \rfloor, \text{max\_rows})` rows (at least
    one), all no longer than :math:`\ell_{(j)}`.  Padding is therefore only the length spread
    inside a micro-batch.  The loop runs over micro-batches; the per-row work is vectorised.

    With ``balance=True`` the rows, longest first, each go to the micro-batch with the fewest
    kept tokens that still has room (longest-processing-time greedy, as verl's sequence-length
    balancing); the largest micro-batch is then within :math:`\ell_{(1)}` of the mean
    :math:`\sum_i \ell_i / k`.  Rows inside a micro-batch stay sorted by length.

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import pack_rows
    >>> am = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]]).bool()
    >>> plan = pack_rows(am, max_tokens=6)
    >>> [mb.rows.tolist() for mb in plan], plan.padded_tokens, plan.real_tokens
    ([[0, 2], [1]], 7, 7)
    >>> plan.micro_batches[0].index.tolist()
    [[0, 1, 2], [1, 2, 3]]

    Balanced rows for a backbone without padding: the largest micro-batch holds 4 kept tokens
    instead of the 6 of the two longest rows together.

    >>> am = torch.arange(4)[None, :] < torch.tensor([[3], [3], [1], [1]])
    >>> [mb.rows.tolist() for mb in pack_rows(am, max_rows=2)]
    [[0, 1], [2, 3]]
    >>> [mb.rows.tolist() for mb in pack_rows(am, max_rows=2, balance=True)]
    [[0, 2], [1, 3]]
    """
    k = as_bool_mask(attention_mask, "attention_mask")
    # numpy integers are fine (e.g. computed with numpy); bools are not
    if isinstance(max_tokens, numbers.Integral) and not isinstance(max_tokens, bool):
        max_tokens = int(max_tokens)
    if isinstance(max_rows, numbers.Integral) and not isinstance(max_rows, bool):
        max_rows = int(max_rows)
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
    if max_rows is not None and (
        isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1
    ):
        raise ValueError(f"max_rows must be a positive int or None, got {max_rows!r}")
    if not isinstance(balance, bool):
        raise ValueError(f"balance must be a bool, got {balance!r}")
    if balance and (max_rows is None or max_tokens is not None):
        raise ValueError(
            "balance=True spreads rows over ceil(n / max_rows) micro-batches: give max_rows and "
            "leave max_tokens=None"
        )
    B, T = k.shape
    lengths = k.sum(-1)
    # kept columns of every row first, in order (stable sort on "not kept")
    order_cols = torch.argsort((~k).to(torch.int8), dim=-1, stable=True)
    order_rows = torch.argsort(-lengths, stable=True)
    sorted_len = lengths[order_rows].tolist()
    n = sum(1 for v in sorted_len if v > 0)
    mbs: list[MicroBatch] = []
    if balance:
        assert max_rows is not None
        groups = _balanced_groups(sorted_len[:n], max_rows)
        for g in groups:
            rows = order_rows[torch.as_tensor(g, dtype=torch.int64, device=k.device)]
            width = int(sorted_len[g[0]])
            idx = order_cols[rows, :width]
            valid = torch.arange(width, device=k.device)[None, :] < lengths[rows][:, None]
            mbs.append(MicroBatch(rows, torch.where(valid, idx, torch.zeros_like(idx)), valid))
        return PackPlan(tuple(mbs), (B, T), lengths)
    i = 0
    while i < n:
        width = int(sorted_len[i])
        cap = n if max_tokens is None else max(1, max_tokens // width)
        if max_rows is not None:
            cap = min(cap, max_rows)
        j = min(n, i + cap)
        rows = order_rows[i:j]
        idx = order_cols[rows, :width]
        valid = torch.arange(width, device=k.device)[None, :] < lengths[rows][:, None]
        mbs.append(MicroBatch(rows, torch.where(valid, idx, torch.zeros_like(idx)), valid))
        i = j
    return PackPlan(tuple(mbs), (B, T), lengths)
