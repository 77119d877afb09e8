r"""Sampling answers from a small causal policy and GRPO group advantages.

Shared by the validation suite, the benchmarks, the examples and the notebooks: one sampler
(:func:`sample_responses`), one log-probability scorer (:func:`response_logprobs`) and one advantage
rule (:func:`group_advantages`).

GRPO advantages (Shao et al. 2024, *DeepSeekMath*): the rewards of the :math:`G` answers sampled for
one prompt are standardised within that group,

.. math::

    A_i = \frac{r_i - \bar r}{s + \varepsilon}, \qquad
    \bar r = \frac1G \sum_{j} r_j,\quad s^2 = \frac{1}{G-1}\sum_j (r_j - \bar r)^2 ,

so a group with equal rewards carries no gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["group_advantages", "response_logprobs", "sample_responses"]


def group_advantages(rewards: torch.Tensor, group: int, /, *, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages: rewards standardised within consecutive groups of ``group`` rows.

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.demo.rollouts import group_advantages
    >>> group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), 2).tolist()
    [0.7071057558059692, -0.7071057558059692, 0.0, 0.0]
    """
    if group < 2 or rewards.ndim != 1 or rewards.shape[0] % group:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group >= 2; got shape "
            f"{tuple(rewards.shape)} and group={group}"
        )
    r = rewards.view(-1, group)
    a = (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + eps)
    return a.reshape(-1)


def response_logprobs(
    model: nn.Module, prompts: torch.Tensor, responses: torch.Tensor, /
) -> torch.Tensor:
    """Log-probabilities of the response tokens under ``model`` (one full forward), (B, T)."""
    ids = torch.cat([prompts, responses], dim=-1)
    logits = model(ids)[:, prompts.shape[-1] - 1 : -1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return torch.log_softmax(logits, -1).gather(-1, responses[..., None])[..., 0]


def _has_blocks(model: nn.Module) -> bool:
    """A learned-position transformer built from ``demo.models.TransformerBlock``."""
    from .models import TransformerBlock

    blocks = getattr(model, "blocks", None)
    return (
        isinstance(blocks, nn.ModuleList)
        and len(blocks) > 0
        and all(isinstance(b, TransformerBlock) for b in blocks)
        and all(hasattr(model, a) for a in ("tok", "pos", "ln_f", "head"))
    )


class _KVCache:
    """Incremental decoding for a transformer of :class:`~nat_estimators.demo.models.
    TransformerBlock` blocks on unpadded prompts: the keys and values of every past position are
    kept, so each new token costs one position's forward (plus attention over the past)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.t = 0

    def _run(self, ids: torch.Tensor, causal: bool) -> torch.Tensor:
        m: Any = self.model
        B, S = ids.shape
        pos = torch.arange(self.t, self.t + S, device=ids.device)
        if self.t + S > m.pos.num_embeddings:
            raise ValueError(f"sequence longer than the model's {m.pos.num_embeddings} positions")
        x = m.tok(ids) + m.pos(pos)[None]
        for i, blk in enumerate(m.blocks):
            D, h = x.shape[-1], blk.n_heads
            q, k, v = blk.qkv(blk.ln1(x)).split(D, dim=-1)
            q, k, v = (z.view(B, S, h, D // h).transpose(1, 2) for z in (q, k, v))
            if causal:
                self.k.append(k)
                self.v.append(v)
            else:
                self.k[i] = torch.cat([self.k[i], k], dim=2)
                self.v[i] = torch.cat([self.v[i], v], dim=2)
            att = torch.nn.functional.scaled_dot_product_attention(
                q, self.k[i], self.v[i], is_causal=causal
            )
            x = x + blk.proj(att.transpose(1, 2).reshape(B, S, D))
            x = x + blk.mlp(blk.ln2(x))
        self.t += S
        return m.head(m.ln_f(x[:, -1]))

    def prefill(self, prompts: torch.Tensor) -> torch.Tensor:
        return self._run(prompts, causal=True)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._run(tokens[:, None], causal=False)


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    prompts: torch.Tensor,
    /,
    *,
    max_new: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    eos: int | None = None,
    kv_cache: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Sample answers autoregressively from ``softmax(logits / temperature)``.

    Parameters
    ----------
    model : nn.Module
        Causal LM with ``model(ids) -> logits (B, T, V)``.
    prompts : torch.Tensor of int64, shape (B, P)
        Unpadded prompts of equal length.
    max_new : int
        Number of tokens to sample (the answer length when ``eos`` is None).
    generator : torch.Generator, optional
        On the prompts' device.
    temperature : float, default 1.0
    eos : int, optional
        End-of-answer token: a row stops after emitting it (the rest is padded with ``eos``) and
        sampling ends when every row has stopped.
    kv_cache : bool, optional
        Decode incrementally with a key/value cache (one position per new token).  Default: on
        for transformers built from :class:`~nat_estimators.demo.models.TransformerBlock`
        (:class:`~nat_estimators.demo.models.TinyCausalLM`), off otherwise (a full forward per
        token).  Both give the same distribution; the cached path is :math:`O(T)` forwards of one
        position instead of :math:`O(T^2)` positions.

    Returns
    -------
    responses : torch.Tensor of int64, shape (B, T), T <= max_new
    lengths : torch.Tensor of int64, shape (B,)
        Answer lengths (the ``EOS`` included when emitted).
    finished : torch.Tensor of bool, shape (B,)
        ``EOS`` emitted (all True when ``eos`` is None and ``max_new`` tokens were drawn).

    Examples
    --------
    >>> import torch
    >>> from nat_estimators.demo.models import TinyCausalLM
    >>> from nat_estimators.demo.rollouts import sample_responses
    >>> torch.manual_seed(0) and None
    >>> model = TinyCausalLM(vocab_size=8, d_model=8, n_heads=2, n_layers=1, max_len=16)
    >>> prompts = torch.zeros(3, 2, dtype=torch.int64)
    >>> resp, lengths, done = sample_responses(
    ...     model, prompts, max_new=5, generator=torch.Generator().manual_seed(0))
    >>> resp.shape, lengths.tolist(), done.tolist()
    (torch.Size([3, 5]), [5, 5, 5], [True, True, True])
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if max_new < 1:
        raise ValueError(f"max_new must be >= 1, got {max_new}")
    use_cache = _has_blocks(model) if kv_cache is None else bool(kv_cache)
    if use_cache and not _has_blocks(model):
        raise ValueError("kv_cache=True needs a transformer of demo.models.TransformerBlock blocks")
    dev = prompts.device
    B = prompts.shape[0]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    lengths = torch.zeros(B, dtype=torch.int64, device=dev)
    out: list[torch.Tensor] = []
    cache: Any = _KVCache(model) if use_cache else None
    ids = prompts
    logits = cache.prefill(prompts) if use_cache else model(ids)[:, -1]
    for i in range(max_new):
        probs = torch.softmax(logits.float() / temperature, -1)
        nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        if eos is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            lengths = lengths + (~done).long()
            done = done | (nxt == eos)
        out.append(nxt)
        if (eos is not None and bool(done.all())) or i == max_new - 1:
            break
        if use_cache:
            logits = cache.step(nxt)
        else:
            ids = torch.cat([ids, nxt[:, None]], dim=-1)
            logits = model(ids)[:, -1]
    responses = torch.stack(out, dim=-1)
    if eos is None:
        lengths = torch.full((B,), responses.shape[-1], dtype=torch.int64, device=dev)
        done = torch.ones(B, dtype=torch.bool, device=dev)
    return responses, lengths, done
