r"""Small causal language models in pure PyTorch, split as *backbone + head*.

Meant for tests, examples, notebooks, benchmarks and the validation suite of the NAT plumbing,
not for modelling.  One pre-LayerNorm block, :class:`TransformerBlock` (multi-head causal
self-attention with a key-padding mask, GELU MLP), is shared by :class:`TinyCausalLM` and the
validation suite's policy.  Positions are derived from the attention mask
(``cumsum(attention_mask) - 1``), so left and right padding give the same outputs at real tokens,
and so does a cropped, re-packed row.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["TinyCausalLM", "TransformerBlock", "causal_key_mask"]


def causal_key_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    r"""Which keys each query may attend to, ``(B, T, T)`` bool, from a ``(B, T)`` mask.

    Query :math:`t` of row :math:`b` sees keys :math:`s \le t` with ``attention_mask[b, s]`` true,
    and always itself (so a padding query's softmax stays finite).
    """
    am = attention_mask.bool()
    T = am.shape[-1]
    idx = torch.arange(T, device=am.device)
    causal = idx[None, :] <= idx[:, None]
    eye = torch.eye(T, dtype=torch.bool, device=am.device)
    return causal[None] & (am[:, None, :] | eye[None])


class TransformerBlock(nn.Module):
    r"""Pre-LayerNorm transformer block: causal multi-head self-attention, then a GELU MLP.

    .. math::

        x \leftarrow x + W_o\,\mathrm{softmax}_{\text{allowed}}\!\left(
            \frac{Q K^\top}{\sqrt{d/h}}\right) V, \qquad
        x \leftarrow x + W_2\,\mathrm{GELU}(W_1\,\mathrm{LN}_2(x)),

    with :math:`Q, K, V` the ``qkv`` projection of :math:`\mathrm{LN}_1(x)` split into
    ``n_heads`` heads of width :math:`d/h`.

    Parameters
    ----------
    d_model, n_heads : int
        Width and number of heads (``d_model`` divisible by ``n_heads``).
    d_ff : int, optional
        MLP width (default ``4 * d_model``).
    **kw
        ``dtype`` / ``device`` of the parameters.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int | None = None, **kw: Any) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model, **kw)
        self.qkv = nn.Linear(d_model, 3 * d_model, **kw)
        self.proj = nn.Linear(d_model, d_model, **kw)
        self.ln2 = nn.LayerNorm(d_model, **kw)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_ff, **kw),
            nn.GELU(),
            nn.Linear(d_ff, d_model, **kw),
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, d_model)``; ``allowed`` ``(B, T, T)`` bool (:func:`causal_key_mask`)."""
        B, T, D = x.shape
        h = self.n_heads
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        q = q.view(B, T, h, D // h).transpose(1, 2)
        k = k.view(B, T, h, D // h).transpose(1, 2)
        v = v.view(B, T, h, D // h).transpose(1, 2)
        # softmax(q k^T / sqrt(d) masked) v; SDPA picks a memory-efficient kernel where it can
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        x = x + self.proj(att.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class TinyCausalLM(nn.Module):
    r"""Small causal language model with separate :meth:`backbone` and :meth:`head`.

    Parameters
    ----------
    vocab_size, d_model, n_heads, n_layers, max_len : int
        Sizes; ``d_model`` must be divisible by ``n_heads``; positions run up to ``max_len - 1``.
    dtype : torch.dtype, default float32
        Parameter dtype (float64 for exact tests).
    device : torch.device or str, optional

    Notes
    -----
    Token :math:`t` of row :math:`b` attends to keys :math:`s \le t` with
    ``attention_mask[b, s]`` true (and to itself, so padding queries stay finite).  Its output
    therefore depends only on the real tokens up to :math:`t`: cropping a row after position
    :math:`t` and packing its real tokens leaves the output at :math:`t` unchanged.

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.demo.models import TinyCausalLM
    >>> torch.manual_seed(0) and None
    >>> model = TinyCausalLM(vocab_size=11, d_model=8, n_heads=2, n_layers=1, max_len=16)
    >>> ids = torch.randint(0, 11, (2, 5))
    >>> model(ids).shape
    torch.Size([2, 5, 11])
    """

    def __init__(
        self,
        vocab_size: int = 64,
        d_model: int = 32,
        n_heads: int = 2,
        n_layers: int = 2,
        max_len: int = 256,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        kw: dict[str, Any] = {"dtype": dtype, "device": device}
        self.max_len = max_len
        self.tok = nn.Embedding(vocab_size, d_model, **kw)
        self.pos = nn.Embedding(max_len, d_model, **kw)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, **kw)
                                    for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, **kw)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False, **kw)

    def backbone(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last hidden states ``[B, T, d_model]``."""
        B, T = input_ids.shape
        if attention_mask is None:
            am = torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
        else:
            am = attention_mask.bool()
        pos = (am.long().cumsum(-1) - 1).clamp(min=0)
        if pos.numel() and int(pos.max()) >= self.max_len:
            raise ValueError(f"sequence longer than max_len={self.max_len}")
        x = self.tok(input_ids) + self.pos(pos)
        allowed = causal_key_mask(am)
        for blk in self.blocks:
            x = blk(x, allowed)
        return self.ln_f(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., vocab_size]`` from hidden states ``[..., d_model]``."""
        return self.lm_head(hidden)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Full logits ``[B, T, vocab_size]``."""
        return self.head(self.backbone(input_ids, attention_mask))
