r"""Project NAT step ratios to a Qwen3-8B-like model at 8k–32k response tokens (cost model).

Uses :mod:`nat_estimators.costmodel` (FLOPs and activation bytes of a fwd+bwd step, exact
expectation over the prefix cut law).  Columns:

* ``time_ratio``: FLOPs ratio (compute-bound regime; no activation recomputation);
* ``activation_memory_ratio``: activations + logits kept for the backward, expected tokens (what a
  micro-batch holding many rows' worth of tokens sees, e.g. balanced varlen micro-batches);
* ``peak_memory_ratio_fsdp8_recompute``: the same with per-block activation recomputation and the
  model state of FSDP over 8 GPUs (bf16 weights, fp32 master weights, gradients and two Adam
  moments: 18 bytes per parameter / 8) added to both;
* ``peak_memory_ratio_1row_mb``: one row per micro-batch, ``rows`` rows: the peak is the longest
  *kept* row (Monte Carlo over the cut law), so prefix cutting saves little peak memory there.

The paper's figures for prefix cutting on Qwen3-8B at about half the tokens are 0.71 (fwd+bwd time)
and 0.82 (peak memory).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import numpy as np

from nat_estimators import Prefix
from nat_estimators.costmodel import TransformerConfig, nat_step_cost_ratio, step_cost

#: The paper's figures for prefix cutting on Qwen3-8B at about half the tokens (Sang et al. 2026).
PAPER = {"time_ratio": 0.71, "peak_memory_ratio": 0.82}
#: Full-keep atom of the projected prefix design (``Prefix.from_fraction``'s default).
FULL_KEEP = 0.05
QWEN3_8B_PARAMS = 8.19e9


def _one_row_peak_ratio(
    cfg: TransformerConfig,
    prompt_len: int,
    response_len: int,
    design: str,
    keep: float,
    rows: int,
    draws: int,
    rng: np.random.Generator,
) -> float:
    full = step_cost(cfg, prompt_len + response_len, response_len).peak_bytes
    if design != "prefix":
        return step_cost(cfg, prompt_len + response_len, keep * response_len).peak_bytes / full
    d = Prefix.from_fraction(keep, mask=np.ones(response_len, dtype=bool), full_keep=FULL_KEEP)
    pmf = np.asarray(d.cut_pmf(), dtype=float)
    cuts = rng.choice(response_len + 1, size=(draws, rows), p=pmf / pmf.sum())
    peak = [step_cost(cfg, prompt_len + int(c.max()), int(c.max())).peak_bytes for c in cuts]
    return float(np.mean(peak)) / full


def qwen_projection(
    prompt_len: int = 1024,
    responses: tuple[int, ...] = (8192, 16384, 32768),
    keeps: tuple[float, ...] = (0.25, 0.5, 0.75),
    rows: int = 16,
    draws: int = 200,
) -> list[dict[str, Any]]:
    """Records of projected ratios for prefix cutting and uniform Poisson sampling."""
    rng = np.random.default_rng(0)
    cfg = TransformerConfig.qwen3_8b()
    static = 18 * QWEN3_8B_PARAMS / 8
    cfg_rc = replace(cfg, recompute=True, static_bytes=static)
    out = []
    for R in responses:
        for design, key in (("prefix", "rpc"), ("poisson", "urs")):
            for k in keeps:
                a = nat_step_cost_ratio(cfg, prompt_len, R, design, k, full_keep=FULL_KEEP)
                b = nat_step_cost_ratio(cfg_rc, prompt_len, R, design, k, full_keep=FULL_KEEP)
                out.append(
                    {
                        "name": f"projection/qwen3_8b/{key}@{k:g}/R={R}",
                        "section": "projection",
                        "design": key,
                        "keep": k,
                        "prompt_len": prompt_len,
                        "response_len": R,
                        "time_ratio": a["time_ratio"],
                        "activation_memory_ratio": a["peak_memory_ratio"],
                        "time_ratio_recompute": b["time_ratio"],
                        "peak_memory_ratio_fsdp8_recompute": b["peak_memory_ratio"],
                        "peak_memory_ratio_1row_mb": _one_row_peak_ratio(
                            cfg, prompt_len, R, design, k, rows, draws, rng
                        ),
                        "rows_for_1row_mb": rows,
                        "static_bytes_fsdp8": static,
                        "full_keep": FULL_KEEP,
                        "model": asdict(cfg),
                        "paper": PAPER,
                    }
                )
    return out
