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
(Kaplan et al. 2020; Korthikanti et al. 2023); with activation recomputation
(``recompute=True``) the body's forward runs twice: :math:`4 F_{\text{body}} + 3 F_{\text{head}}`.

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
compared with measurements that include them.  With ``recompute=True`` the body keeps
:math:`b_a (\ell d + 6 d + d_q + 2 d_{kv} + 4 d_{ff})` bytes per token (block inputs, plus one block
being recomputed).  A GELU MLP (``mlp_matrices=2``, as the benchmarks' ``TinyCausalLM``) has two
:math:`d \times d_{ff}` matrices and keeps :math:`2 d_{ff}` values per token.

:func:`batch_step_cost` sums the cost over the rows of a (micro-)batch with their realised body and
head tokens; ``benchmarks/nat_step.py`` uses it to check the model against measured ratios.

Designs
-------
* Full-token: :math:`T_b = P + R`, :math:`T_h = R`.
* Prefix cutting with cut :math:`L`: :math:`T_b = P + L`, :math:`T_h = L`; the expected cost is the
  exact expectation over the design's cut law (:meth:`~nat_estimators.Prefix.cut_pmf`), so the
  quadratic attention term uses :math:`E[A(P + L)]`, not :math:`A(P + E L)`.
* Poisson / systematic / simple random: the body still runs over every position
  (:math:`T_b = P + R`); only the selected positions need the LM head (:math:`T_h = E|S|`).

What the model leaves out
-------------------------
It counts matmul FLOPs and the activations kept for the backward, nothing else, so its *time*
ratio is its FLOPs ratio (``nat_step_cost_ratio(...)["time_ratio"] == ["flops_ratio"]``): a
step's time is assumed proportional to its FLOPs, as in a compute-bound regime.  Not modelled:

* memory-bandwidth-bound work — norms, activations, softmax, residual adds, the optimizer
  update — whose time follows the bytes moved, not FLOPs;
* attention kernels: the :math:`4 d_q A(T)` term is counted at the matmul rate, while a real
  (flash / varlen) kernel runs at its own efficiency and may or may not skip the masked half;
* matmul efficiency against shape: short rows or small micro-batches run below peak throughput;
* fixed costs per step or micro-batch — kernel launches, Python and framework overhead,
  gradient all-reduce and other communication, selection, cropping and packing themselves;
* memory beyond the activations and ``static_bytes``: allocator fragmentation, temporary
  workspaces (attention, log-softmax), the CUDA context; padding, unless passed as body tokens;
* rollout generation: only the training step is costed.

Most of these are costs that token selection does not shrink, or shrinks less than the FLOPs, so
measured ratios usually lie above the model's (closer to 1), the more so the smaller the model
and the shorter the rows; the repository's ``benchmarks/`` measure the ratios side by side with
the model's prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "StepCost",
    "TransformerConfig",
    "batch_step_cost",
    "expected_step_flops",
    "nat_step_cost_ratio",
    "step_cost",
]


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
    mlp_matrices : int
        3 for a SwiGLU MLP (gate, up, down), 2 for a GELU/ReLU MLP (up, down).
    recompute : bool
        Activation checkpointing per block (verl's ``enable_gradient_checkpointing``): the
        backward keeps only each block's input (:math:`d` values per token and layer) plus one
        block's activations while it is recomputed, and the body's forward runs twice (a step
        costs :math:`4 F_{\text{body}} + 3 F_{\text{head}}`).

    Examples
    --------
    >>> from nat_estimators.costmodel import TransformerConfig
    >>> cfg = TransformerConfig(layers=4, d_model=256, d_ff=1024, n_heads=4, n_kv_heads=4,
    ...                         head_dim=64, vocab=32000, act_bytes=4, mlp_matrices=2)
    >>> cfg.params_per_layer  # 4 d^2 attention + 2 d d_ff MLP
    786432
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
    mlp_matrices: int = 3
    recompute: bool = False

    @classmethod
    def qwen3_8b(cls, *, static_bytes: float = 0.0) -> TransformerConfig:
        """Qwen3-8B's published shape (36 layers, width 4096, SwiGLU 12288, 32/8 heads of 128,
        vocabulary 151,936).

        Examples
        --------
        >>> from nat_estimators.costmodel import TransformerConfig
        >>> cfg = TransformerConfig.qwen3_8b()
        >>> cfg.layers * cfg.params_per_layer / 1e9  # block weights, billions
        6.945767424
        """
        return cls(36, 4096, 12288, 32, 8, 128, 151936, static_bytes=static_bytes)

    @property
    def params_per_layer(self) -> int:
        """Weights of one block (attention projections and SwiGLU MLP; norms ignored)."""
        dq = self.n_heads * self.head_dim
        dkv = self.n_kv_heads * self.head_dim
        return (
            self.d_model * (dq + 2 * dkv)
            + dq * self.d_model
            + self.mlp_matrices * self.d_model * self.d_ff
        )

    @property
    def act_units_per_layer(self) -> int:
        """Stored activation elements per token and layer (module notes; SwiGLU keeps gate, up,
        activation and down input: :math:`4 d_{ff}`; a GELU MLP keeps up output and activation:
        :math:`2 d_{ff}`)."""
        dq = self.n_heads * self.head_dim
        dkv = self.n_kv_heads * self.head_dim
        mlp = 4 * self.d_ff if self.mlp_matrices == 3 else 2 * self.d_ff
        return 6 * self.d_model + dq + 2 * dkv + mlp

    @property
    def body_bytes_per_token(self) -> float:
        """Activation bytes the blocks keep per body token (all layers)."""
        if self.recompute:
            return self.act_bytes * (self.layers * self.d_model + self.act_units_per_layer)
        return self.act_bytes * self.layers * self.act_units_per_layer


@dataclass(frozen=True)
class StepCost:
    """FLOPs of a fwd+bwd step and the activation bytes kept for its backward.

    Attributes
    ----------
    flops : float
        Floating-point operations of the forward and backward passes.
    activation_bytes : float
        Activations and logits kept for the backward pass.
    static_bytes : float
        Token-independent bytes (``TransformerConfig.static_bytes``).

    Examples
    --------
    >>> from nat_estimators.costmodel import TransformerConfig, step_cost
    >>> c = step_cost(TransformerConfig.qwen3_8b(static_bytes=16e9), 1024, 512)
    >>> c.peak_bytes == c.activation_bytes + 16e9
    True
    """

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
    flops, act = _row_costs(cfg, tb, th)
    return StepCost(float(np.mean(flops)), float(np.mean(act)), cfg.static_bytes)


def _row_costs(cfg: TransformerConfig, tb: np.ndarray, th: np.ndarray) -> tuple[np.ndarray, ...]:
    dq = cfg.n_heads * cfg.head_dim
    body = cfg.layers * (2 * tb * cfg.params_per_layer + 4 * dq * _pairs(tb))
    head = 2 * th * cfg.d_model * cfg.vocab
    act = tb * cfg.body_bytes_per_token
    logits = th * cfg.vocab * cfg.logit_bytes * cfg.logit_copies
    return (4 if cfg.recompute else 3) * body + 3 * head, act + logits


def batch_step_cost(
    cfg: TransformerConfig, body_tokens: np.ndarray, head_tokens: np.ndarray
) -> StepCost:
    r"""Cost of a batch (or micro-batch) of sequences processed together: the **sums** over rows.

    ``body_tokens[i]`` tokens of row :math:`i` go through the blocks (attention is per row, so
    its quadratic term is :math:`\sum_i A(T_{b,i})`), ``head_tokens[i]`` through the LM head.
    ``activation_bytes`` is what a varlen ("remove padding") micro-batch of these rows keeps for
    its backward; for a padded micro-batch pass the padded width as every row's body tokens.
    Use it with realised selections (e.g. ``crop_lengths`` and ``mask.sum(-1)`` of a
    :class:`~nat_estimators.rl.Selection`) to predict a measured step.

    Examples
    --------
    >>> import numpy as np
    >>> from nat_estimators.costmodel import TransformerConfig, batch_step_cost, step_cost
    >>> cfg = TransformerConfig.qwen3_8b()
    >>> two = batch_step_cost(cfg, np.array([1000, 1000]), np.array([800, 800]))
    >>> bool(np.isclose(two.flops, 2 * step_cost(cfg, 1000, 800).flops))
    True
    """
    tb = np.asarray(body_tokens, dtype=float)
    th = np.asarray(head_tokens, dtype=float)
    if tb.shape != th.shape:
        raise ValueError(f"body_tokens {tb.shape} and head_tokens {th.shape} differ in shape")
    flops, act = _row_costs(cfg, tb, th)
    return StepCost(float(np.sum(flops)), float(np.sum(act)), cfg.static_bytes)


def expected_step_flops(
    cfg: TransformerConfig, design: Any, /, *, prompt_len: int = 0, full: bool = False
) -> float:
    r"""Expected FLOPs of a fwd+bwd step over a design's rows (the sum over rows).

    Prefix designs (eligible tokens contiguous from the response start): row :math:`i` costs
    :math:`\sum_L P(L)\, F(P + L, L)` — the exact expectation over its cut law, quadratic
    attention included.  Other designs run the whole row through the body and the LM head on
    the kept tokens: :math:`F(P + N_i, E|S_i|)` (linear in the head tokens, so exact).
    ``full=True`` gives the full-token step :math:`\sum_i F(P + N_i, N_i)`.

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> from nat_estimators.costmodel import TransformerConfig, expected_step_flops
    >>> cfg = TransformerConfig.qwen3_8b()
    >>> d = nat.Prefix.from_fraction(0.5, mask=np.ones((2, 4096), bool))
    >>> r = expected_step_flops(cfg, d, prompt_len=512) / expected_step_flops(
    ...     cfg, d, prompt_len=512, full=True)
    >>> 0.4 < r < 0.6
    True
    """
    from ._compat import to_numpy
    from .prefix import Prefix

    mask = np.asarray(to_numpy(design.mask), dtype=bool)
    count = mask.sum(-1).reshape(-1).astype(float)
    if full:
        return float(np.sum(_row_costs(cfg, prompt_len + count, count)[0]))
    if isinstance(design, Prefix):
        pmf = np.asarray(to_numpy(design.cut_pmf()), dtype=float).reshape(count.size, -1)
        cuts = np.arange(pmf.shape[-1], dtype=float)
        flops = _row_costs(cfg, prompt_len + cuts, cuts)[0]
        return float(np.sum(pmf * flops[None, :]))
    size = np.asarray(to_numpy(design.expected_size()), dtype=float).reshape(-1)
    return float(np.sum(_row_costs(cfg, prompt_len + count, size)[0]))


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
    design : str
        A registered design name (:meth:`~nat_estimators.Design.registered`): ``"prefix"``
        crops each row at its cut (the forward stops there); every other design runs the full
        forward and the LM head on the kept fraction.
    keep : float
        Expected keep fraction :math:`\kappa`.
    full_keep, min_keep : float
        Options of :meth:`~nat_estimators.Prefix.from_fraction` for ``design="prefix"``.

    Returns
    -------
    dict
        ``{"time_ratio": ..., "flops_ratio": ..., "peak_memory_ratio": ...}``.  ``time_ratio``
        equals ``flops_ratio``: the model takes time proportional to FLOPs (a compute-bound
        step) and leaves out bandwidth-bound work, attention-kernel efficiency and fixed
        per-step costs (see the module notes), so a measured time ratio lies between it and 1.
        Peak memory uses the expected tokens (the mean over the cut law for prefix).

    Examples
    --------
    >>> from nat_estimators.costmodel import TransformerConfig, nat_step_cost_ratio
    >>> r = nat_step_cost_ratio(TransformerConfig.qwen3_8b(), 512, 16384, "prefix", 0.5)
    >>> 0.35 < r["time_ratio"] < 0.5
    True
    """
    from ._design import Design
    from .prefix import Prefix

    registered = Design.registered()
    if design not in registered:
        raise ValueError(f"design must be one of {tuple(registered)}; got {design!r}")
    full = step_cost(cfg, prompt_len + response_len, response_len)
    if issubclass(registered[design], Prefix):
        d = Prefix.from_fraction(keep, mask=np.ones(response_len, dtype=bool), full_keep=full_keep,
                               min_keep=min_keep)
        pmf = np.asarray(d.cut_pmf())
        cuts = np.arange(response_len + 1, dtype=float)
        row_flops, _ = _row_costs(cfg, prompt_len + cuts, cuts)
        flops = float(np.sum(pmf * row_flops))
        el = float(np.sum(pmf * cuts))
        act = (prompt_len + el) * cfg.body_bytes_per_token + el * cfg.vocab * (
            cfg.logit_bytes * cfg.logit_copies
        )
        nat = StepCost(flops, act, cfg.static_bytes)
    else:
        nat = step_cost(cfg, prompt_len + response_len, keep * response_len)
    return {
        "time_ratio": nat.flops / full.flops,
        "flops_ratio": nat.flops / full.flops,
        "peak_memory_ratio": nat.peak_bytes / full.peak_bytes,
    }
