r"""Full-mask loss statistics: the denominators every micro-batch and rank must share.

A token-subsampled loss is unbiased only if its denominators are those of the *full* loss: the
global token count :math:`N`, the sequence count :math:`G` and the per-row lengths :math:`L_i`,
computed from the full response mask **before** any prefix cropping, token selection or
micro-batching (:doc:`/rl/overview`).  :class:`LossNormalizers` holds them, computed once per step
by :meth:`LossNormalizers.from_mask` (optionally all-reduced over a ``torch.distributed`` group),
and is handed to :func:`~nat_estimators.rl.agg_loss` with :meth:`LossNormalizers.rows` selecting
the micro-batch's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .._deprecation import deprecated
from ._checks import as_bool_mask, check_positive_number

__all__ = ["LossNormalizers", "loss_normalizers"]


@dataclass(frozen=True, eq=False)
class LossNormalizers:
    r"""Denominators of a loss aggregation, taken from the full response mask.

    Parameters
    ----------
    num_tokens : int
        :math:`N = \sum_{i,t} m_{it}`, eligible tokens in the (global) batch.
    num_seqs : int
        :math:`G`, rows with at least one eligible token in the (global) batch (verl's count).
    num_rows : int
        All rows of the (global) batch, empty ones included (TRL's ``.mean()`` / ``size(0)``).
    seq_lengths : torch.Tensor of int64, shape (B,)
        :math:`L_i = \sum_t m_{it}` for the *local* rows this record describes (see :meth:`rows`).
    const_len : int or float, optional
        The pinned constant :math:`C` of ``seq-mean-token-sum-norm`` (Dr. GRPO), e.g. the maximum
        completion length.
    world_size : int, default 1
        Number of ranks the counts were summed over; pass it as ``dp_size`` to
        :func:`~nat_estimators.rl.agg_loss` when gradients are averaged over those ranks.
    local_num_tokens : int, optional
        This rank's :math:`N` before any all-reduce (default ``num_tokens``): the denominator of
        the "local" token-mean aliases (``bnpo``, ``openrlhf_token_level``).  It is fixed per
        rank; the micro-batches of a packed plan are not the trainer's, and a per-micro-batch
        count would depend on the selection (and bias the estimate).

    Notes
    -----
    With :math:`m` the full response mask (before truncation or selection):

    .. math::

        N = \sum_{i,t} m_{it}, \qquad L_i = \sum_t m_{it}, \qquad
        G = \#\{i : L_i > 0\}.

    Replacing these by counts of the *selected* tokens turns the Horvitz–Thompson estimate into a
    ratio (Hájek-type) estimate, biased under prefix cutting.

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.rl import LossNormalizers
    >>> m = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    >>> s = LossNormalizers.from_mask(m, const_len=4)
    >>> s.num_tokens, s.num_seqs, s.num_rows, s.seq_lengths.tolist()
    (5, 2, 3, [2, 0, 3])
    >>> s.rows(torch.tensor([2])).seq_lengths.tolist()
    [3]
    """

    num_tokens: int
    num_seqs: int
    num_rows: int
    seq_lengths: torch.Tensor
    const_len: Any = field(default=None, kw_only=True)
    world_size: int = field(default=1, kw_only=True)
    local_num_tokens: Any = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.local_num_tokens is None:
            object.__setattr__(self, "local_num_tokens", self.num_tokens)
        check_positive_number(self.local_num_tokens, "local_num_tokens", allow_zero=True)
        for name in ("num_tokens", "num_seqs", "num_rows"):
            check_positive_number(getattr(self, name), name, allow_zero=True)
        if self.const_len is not None:
            check_positive_number(self.const_len, "const_len")
        if not isinstance(self.seq_lengths, torch.Tensor) or self.seq_lengths.ndim != 1:
            raise ValueError("seq_lengths must be a 1-D tensor of per-row lengths L_i")
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or (
            self.world_size < 1
        ):
            raise ValueError(f"world_size must be a positive int, got {self.world_size!r}")

    @classmethod
    def from_mask(
        cls,
        response_mask: torch.Tensor,
        *,
        const_len: Any = None,
        all_reduce: bool = False,
        group: Any = None,
    ) -> LossNormalizers:
        r"""Statistics of the full response mask, optionally summed over a process group.

        Call this once per optimisation step, on the untruncated mask, before cropping rows or
        splitting the batch into micro-batches.

        Parameters
        ----------
        response_mask : torch.Tensor, shape (B, T)
            The full response (loss) mask of this rank's rows; bool or 0/1.
        const_len : int or float, optional
            Pinned :math:`C` for ``seq-mean-token-sum-norm``.
        all_reduce : bool, default False
            Sum :math:`N`, :math:`G` and the row count over ``group`` with
            ``torch.distributed.all_reduce`` (one collective of 3 integers).  ``seq_lengths``
            stays local.
        group : ProcessGroup, optional
            The data-parallel group (default: the world group).

        Returns
        -------
        LossNormalizers

        Examples
        --------
        >>> import torch
        >>> from nat_estimators.rl import LossNormalizers
        >>> m = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1]])  # 0/1 is accepted
        >>> s = LossNormalizers.from_mask(m, const_len=8)
        >>> s.num_tokens, s.num_seqs, s.num_rows, s.seq_lengths.tolist()
        (5, 2, 3, [3, 0, 2])
        >>> s.world_size, s.local_num_tokens, s.const_len
        (1, 5, 8)
        """
        m = as_bool_mask(response_mask, "response_mask")
        lengths = m.sum(dim=-1, dtype=torch.int64)
        counts = torch.stack(
            [lengths.sum(), (lengths > 0).sum(), torch.tensor(m.shape[0], device=m.device)]
        ).to(torch.int64)
        world = 1
        local_n = int(counts[0])
        if all_reduce:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError(
                    "all_reduce=True needs an initialised torch.distributed process group "
                    "(torch.distributed.init_process_group)"
                )
            dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
            world = int(dist.get_world_size(group))
        n, g, r = (int(v) for v in counts.tolist())
        return cls(
            n, g, r, lengths, const_len=const_len, world_size=world, local_num_tokens=local_n
        )

    def rows(self, index: torch.Tensor) -> LossNormalizers:
        """The same global counts with ``seq_lengths`` restricted to ``index`` (a micro-batch)."""
        return LossNormalizers(
            self.num_tokens,
            self.num_seqs,
            self.num_rows,
            self.seq_lengths[index],
            const_len=self.const_len,
            world_size=self.world_size,
            local_num_tokens=self.local_num_tokens,
        )


def loss_normalizers(
    response_mask: torch.Tensor,
    *,
    const_len: Any = None,
    all_reduce: bool = False,
    group: Any = None,
) -> LossNormalizers:
    """Deprecated: use :meth:`~nat_estimators.rl.LossNormalizers.from_mask` (same arguments)."""
    deprecated("loss_normalizers(...)", "LossNormalizers.from_mask(...)")
    return LossNormalizers.from_mask(
        response_mask, const_len=const_len, all_reduce=all_reduce, group=group
    )
