r"""Analytic cost model of a decoder-only transformer training step under NAT token selection.

What a fwd+bwd step costs, as a function of the prompt length :math:`P`, the number of tokens the
body must process :math:`T_b`, the number of positions that need the LM head :math:`T_h`, and the
model's shape.  Used to project the ratios measured on small models (``benchmarks/``) to
paper-scale models (Qwen3-8B-like) and long responses.

FLOPs (forward; a matmul of an :math:`m\times k` by :math:`k\times n` matrix costs :math:`2mkn`):

.. math::

    F_{\text{body}} = \ell \Bigl[ 2 T_b \bigl(d (d_q + 2 d_{kv}) + d_q d + 3 d\, d_{ff}\bigr)
                    + 4\, d_q\, A(T_b) \Bigr], \qquad
    F_{\text{head}} = 2\, T_h\, d\, V ,

with :math:`\ell` layers, width :math:`d`, query width :math:`d_q = h\, d_h`, key/value width
:math:`d_{kv} = h_{kv} d_h`, SwiGLU hidden width :math:`d_{ff}` (three matrices) and vocabulary
:math:`V`; :math:`A(T) = T(T+1)/2` is the number of (query, key) pairs under a causal mask (scores
and the weighted sum each cost :math:`2 d_q` per pair).  The backward pass costs twice the forward
(input and weight gradients), so a step costs :math:`3(F_{\text{body}} + F_{\text{head}})`
(Kaplan et al. 2020; Korthikanti et al. 2023).

Activation memory kept for the backward (bytes), with FlashAttention (no :math:`T^2` scores):

.. math::

    M = \ell\, T_b\, b_a \bigl(6 d + d_q + 2 d_{kv} + 4 d_{ff}\bigr) + T_h\, V\, b_\ell\, c_\ell ,

where :math:`b_a` is the activation byte width (2 for bf16): per layer and token the block keeps
two norm inputs and outputs, the attention input, Q/K/V, the attention output and the projection
input, and the SwiGLU gate, up, activation and down inputs (Korthikanti et al. 2023, §4, adapted
to SwiGLU and grouped-query attention).  The logits term counts :math:`c_\ell` float copies of
:math:`b_\ell` bytes per vocabulary entry (logits, log-softmax and their gradient; default
:math:`c_\ell = 2`, :math:`b_\ell = 4`).  ``static_bytes`` adds what does not scale with tokens
(weights, gradients, optimizer states — sharded or not), so that ratios of *peak* memory can be
compared with measurements that include them.

Designs
-------
* Full-token: :math:`T_b = P + R`, :math:`T_h = R`.
* Prefix cutting with cut :math:`L`: :math:`T_b = P + L`, :math:`T_h = L`; the expected cost is the
  exact expectation over the design's cut law (:meth:`~nat_estimators.Prefix.cut_pmf`), so the
  quadratic attention term uses :math:`E[A(P + L)]`, not :math:`A(P + E L)`.
* Poisson / systematic / simple random: the body still runs over every position
  (:math:`T_b = P + R`); only the selected positions need the LM head (:math:`T_h = E|S|`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["StepCost", "TransformerConfig", "nat_step_cost_ratio", "step_cost"]


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of a decoder-only transformer with SwiGLU MLP and grouped-query attention.

    Attributes
    ----------
    layers, d_model, d_ff, n_heads, n_kv_heads, head_dim, vocab : int
        Model shape.
    act_bytes : int
        Bytes per stored activation (2 for bf16).
    logit_bytes : int
        Bytes per logit entry (4: logits are upcast to float32 for the log-softmax).
    logit_copies : float
        Number of ``[T_h, V]`` float buffers alive at the peak.
    static_bytes : float
        Token-independent memory (weights, gradients, optimizer states).
    """

    layers: int
    d_model: int
    d_ff: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    act_bytes: int = 2
    logit_bytes: int = 4
    logit_copies: float = 2.0
    static_bytes: float = 0.0

    @classmethod
    def qwen3_8b(cls, *, static_bytes: float = 0.0) -> TransformerConfig:
        """Qwen3-8B's published shape (36 layers, width 4096, SwiGLU 12288, 32/8 heads of 128,
        vocabulary 151,936)."""
        return cls(36, 4096, 12288, 32, 8, 128, 151936, static_bytes=static_bytes)

    def with_static_bytes(self, static_bytes: float) -> TransformerConfig:
        """A copy with ``static_bytes`` set."""
        return replace(self, static_bytes=static_bytes)

    @property
    def params_per_layer(self) -> int:
        """Weights of one block (attention projections and SwiGLU MLP; norms ignored)."""
        dq = self.n_heads * self.head_dim
        dkv = self.n_kv_heads * self.head_dim
        return self.d_model * (dq + 2 * dkv) + dq * self.d_model + 3 * self.d_model * self.d_ff


@dataclass(frozen=True)
class StepCost:
    """FLOPs of a fwd+bwd step and the activation bytes kept for its backward."""

    flops: float
    activation_bytes: float
    static_bytes: float = 0.0

    @property
    def peak_bytes(self) -> float:
        """Activation bytes plus token-independent bytes."""
        return self.activation_bytes + self.static_bytes


def _pairs(t: np.ndarray) -> np.ndarray:
    return t * (t + 1) / 2


def step_cost(
    cfg: TransformerConfig, body_tokens: float | np.ndarray, head_tokens: float | np.ndarray
) -> StepCost:
    r"""Cost of one sequence's fwd+bwd with ``body_tokens`` through the blocks and ``head_tokens``
    through the LM head (see the module notes for the formulas).

    Arrays are averaged (an expectation over equally weighted cases); use
    :func:`nat_step_cost_ratio` for designs.

    Examples
    --------
    >>> from nat_estimators.costmodel import TransformerConfig, step_cost
    >>> cfg = TransformerConfig.qwen3_8b()
    >>> c = step_cost(cfg, 1024 + 8192, 8192)
    >>> round(c.flops / 1e15, 2)  # PFLOPs for one 9k-token sequence
    0.49
    """
    tb = np.asarray(body_tokens, dtype=float)
    th = np.asarray(head_tokens, dtype=float)
    dq = cfg.n_heads * cfg.head_dim
    dkv = cfg.n_kv_heads * cfg.head_dim
    body = cfg.layers * (2 * tb * cfg.params_per_layer + 4 * dq * _pairs(tb))
    head = 2 * th * cfg.d_model * cfg.vocab
    flops = 3 * (body + head)
    act = cfg.layers * tb * cfg.act_bytes * (6 * cfg.d_model + dq + 2 * dkv + 4 * cfg.d_ff)
    logits = th * cfg.vocab * cfg.logit_bytes * cfg.logit_copies
    return StepCost(float(np.mean(flops)), float(np.mean(act + logits)), cfg.static_bytes)


def nat_step_cost_ratio(
    cfg: TransformerConfig,
    prompt_len: int,
    response_len: int,
    design: str,
    keep: float,
    *,
    full_keep: float = 0.05,
    min_keep: float = 0.0,
) -> dict[str, float]:
    r"""Projected NAT/full-token ratios of step FLOPs and peak memory for one sequence.

    Parameters
    ----------
    cfg : TransformerConfig
        Model shape (``static_bytes`` enters the peak-memory ratio).
    prompt_len, response_len : int
        :math:`P` and :math:`R`.
    design : {"prefix", "poisson", "systematic", "simple_random"}
        Token selection scheme.
    keep : float
        Expected keep fraction :math:`\kappa`.
    full_keep, min_keep : float
        Options of :meth:`~nat_estimators.Prefix.from_budget` for ``design="prefix"``.

    Returns
    -------
    dict
        ``{"time_ratio": ..., "flops_ratio": ..., "peak_memory_ratio": ...}``.  Time is taken
        proportional to FLOPs (compute-bound regime).  Peak memory uses the expected tokens
        (the mean over the cut law for prefix).

    Examples
    --------
    >>> from nat_estimators.costmodel import TransformerConfig, nat_step_cost_ratio
    >>> r = nat_step_cost_ratio(TransformerConfig.qwen3_8b(), 512, 16384, "prefix", 0.5)
    >>> 0.35 < r["time_ratio"] < 0.5
    True
    """
    from .prefix import Prefix

    full = step_cost(cfg, prompt_len + response_len, response_len)
    if design == "prefix":
        d = Prefix.from_budget(keep, mask=np.ones(response_len, dtype=bool), full_keep=full_keep,
                               min_keep=min_keep)
        pmf = np.asarray(d.cut_pmf())
        cuts = np.arange(response_len + 1, dtype=float)
        dq = cfg.n_heads * cfg.head_dim
        dkv = cfg.n_kv_heads * cfg.head_dim
        tb = prompt_len + cuts
        body = cfg.layers * (2 * tb * cfg.params_per_layer + 4 * dq * _pairs(tb))
        head = 2 * cuts * cfg.d_model * cfg.vocab
        flops = float(np.sum(pmf * 3 * (body + head)))
        el = float(np.sum(pmf * cuts))
        act = (cfg.layers * (prompt_len + el) * cfg.act_bytes
               * (6 * cfg.d_model + dq + 2 * dkv + 4 * cfg.d_ff)
               + el * cfg.vocab * cfg.logit_bytes * cfg.logit_copies)
        nat = StepCost(flops, act, cfg.static_bytes)
    elif design in ("poisson", "systematic", "simple_random"):
        nat = step_cost(cfg, prompt_len + response_len, keep * response_len)
    else:
        raise ValueError(
            f"design must be one of 'prefix', 'poisson', 'systematic', 'simple_random'; "
            f"got {design!r}"
        )
    return {
        "time_ratio": nat.flops / full.flops,
        "flops_ratio": nat.flops / full.flops,
        "peak_memory_ratio": nat.peak_bytes / full.peak_bytes,
    }
