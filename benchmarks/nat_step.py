r"""Benchmark: time and peak memory of NAT GRPO steps against the full-token step.

Every figure is a **ratio of two configurations measured side by side in the same run**: a NAT
step (prefix cutting "RPC" or uniform Poisson "URS" at keep fraction :math:`\kappa`) against the
full-token step of the same model, the same rollouts and the same micro-batching.

What is measured
----------------
* **Model.** :class:`~nat_estimators.demo.models.TinyCausalLM` (d_model 256, 4 layers, 4 heads,
  vocabulary 32,000, so the LM head and the log-softmax are a visible part of the cost), run through
  :class:`VarlenCausalLM`: the same weights and the same function, with padding removed inside
  the blocks (the rows of a micro-batch are concatenated and attention runs per row, as verl's
  ``use_remove_padding`` / flash-attention varlen).  Activations then follow the real tokens of a
  micro-batch, not its padded rectangle.
* **Rollouts.** ``rows`` sequences of a fixed prompt plus a ragged response (uniform lengths),
  right-padded; fixed for the whole run.  On-policy GRPO loss (``seq-mean-token-mean``).
* **Selections.** ``n_selections`` selections per design and :math:`\kappa` are drawn once before
  timing (``select_tokens``) and reused: repetition :math:`r` uses selection
  :math:`r \bmod S`, and a ratio is the mean over selections of the median over that selection's
  rounds of the paired per-round ratio.  The full-token step uses the "selection" of every
  response token with weight 1, so both steps run the same code
  (:func:`~nat_estimators.rl.crop_mask`, :func:`~nat_estimators.rl.pack_rows`,
  :func:`~nat_estimators.rl.grpo_micro_batches`: backbone on the kept rows, LM head and
  log-softmax only at the loss positions, ``agg_loss`` with full-mask normalisers, backward per
  micro-batch).  The selection draw itself is not timed (``examples/bench_rl_selection.py``
  measures it: well under 1% of a step).
* **Time** (``*_time_ratio@k``): one fwd+bwd step (zero the persistent gradient buffers, crop,
  plan, forward, loss, backward; no optimiser step, which costs the same in both) under
  **token-budget micro-batching** (``pack_rows(max_tokens=token_budget)``: rows sorted by kept
  length and cut greedily, the same for both).  The configurations run in interleaved rounds whose
  order rotates; the garbage collector is off while timing; one warm-up round is discarded.
  ``*_microbatch_count_ratio@k`` is the mean ratio of the number of micro-batches under that
  budget.
* **Peak memory** (``*_peak_memory_ratio@k``): one step at a **fixed micro-batch size in
  sequences** (``micro_rows`` rows per micro-batch, rows spread so that micro-batches hold about
  the same number of real tokens: ``pack_rows(max_rows=..., balance=True)``, the same for both).
  The figure is the step's peak of allocated bytes above the bytes live when the step starts
  (weights and persistent gradient buffers): on CUDA ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``; on CPU the torch profiler's allocator events
  (``profile_memory=True``: every allocation and free of the CPU allocator, kernels' scratch
  included), summed in time order.  ``*_total_peak_memory_ratio@k`` adds the model state (fp32
  weights, gradients and two Adam moments) to both.
* ``urs_head_memory_ratio@k``: the LM head + log-softmax + their backward alone
  (:func:`~nat_estimators.rl.token_logprobs` on fixed hidden states of the whole batch), at the
  selected positions against all response positions.
* Token accounting, free of timing noise: expected forward, head and peak-micro-batch token ratios
  over many draws, for this layout and for a padded one (``padded_*``: the library's length-sorted
  ``pack_rows(max_rows=...)`` on a padded backbone).

Run from the repository root: ``python benchmarks/run.py --quick`` (this section is
:func:`run_nat_step_benchmarks`).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.timing import loadavg, measure_peak_bytes, sync
from nat_estimators.costmodel import (
    TransformerConfig,
    batch_step_cost,
    nat_step_cost_ratio,
    step_cost,
)
from nat_estimators.demo.models import TinyCausalLM
from nat_estimators.rl import (
    GRPOBatch,
    GRPOConfig,
    LossNormalizers,
    Selection,
    crop_mask,
    grpo_micro_batches,
    pack_rows,
    select_tokens,
    token_logprobs,
)

__all__ = [
    "NatStepSetup",
    "VarlenCausalLM",
    "make_rollouts",
    "measure_peak_bytes",
    "run_nat_step_benchmarks",
    "tiny_model_cost_config",
]

KEEPS = (0.25, 0.5, 0.75)
DESIGN_OF = {"rpc": "prefix", "urs": "poisson"}

#: Targets on this section's ratios: name -> (comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "rpc_time_ratio@0.5": ("<=", 0.55),
    "rpc_peak_memory_ratio@0.5": ("<=", 0.60),
    "urs_head_memory_ratio@0.5": ("<=", 0.55),
    "urs_time_ratio@0.5": ("<=", 1.0),
}


@dataclass(frozen=True)
class NatStepSetup:
    """Sizes of the benchmark (see :meth:`quick` and :meth:`full`)."""

    rows: int
    prompt_len: int
    response_min: int
    response_max: int
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    vocab: int = 32000
    token_budget: int = 1024
    micro_rows: int = 4
    n_selections: int = 4
    rounds: int = 4
    accounting_draws: int = 64
    head_keeps: tuple[float, ...] = (0.5,)
    padded_memory_keeps: tuple[float, ...] = (0.5,)
    seed: int = 0

    @classmethod
    def quick(cls) -> NatStepSetup:
        return cls(rows=8, prompt_len=32, response_min=128, response_max=384)

    @classmethod
    def full(cls) -> NatStepSetup:
        return cls(
            rows=16,
            prompt_len=64,
            response_min=256,
            response_max=1024,
            token_budget=4096,
            n_selections=4,
            rounds=8,
            accounting_draws=256,
            head_keeps=KEEPS,
            padded_memory_keeps=KEEPS,
        )


# --------------------------------------------------------------------------- model
class VarlenCausalLM(nn.Module):
    r"""A :class:`~nat_estimators.demo.models.TinyCausalLM` run without padding inside its blocks.

    ``backbone(input_ids, attention_mask)`` takes the usual padded ``(B, T)`` micro-batch, keeps
    its real tokens only (row-major, ``[S, d]`` with :math:`S` the real tokens), runs the blocks on
    them with causal attention inside each row (one SDPA call per row, as flash-attention's varlen
    kernels) and scatters the last hidden states back to ``(B, T, d)`` (zeros at padding).  Same
    weights, same outputs at real tokens as ``lm.backbone``; activation memory and compute follow
    the real tokens.  ``head`` is ``lm.head``.
    """

    def __init__(self, lm: TinyCausalLM) -> None:
        super().__init__()
        self.lm = lm

    def backbone(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        lm = self.lm
        B, T = input_ids.shape
        am = (
            torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
            if attention_mask is None
            else attention_mask.bool()
        )
        where = am.nonzero(as_tuple=True)
        pos = (am.long().cumsum(-1) - 1)[where]
        if pos.numel() and int(pos.max()) >= lm.max_len:
            raise ValueError(f"sequence longer than max_len={lm.max_len}")
        x = lm.tok(input_ids[where]) + lm.pos(pos)
        seg = [int(v) for v in am.sum(-1).tolist()]
        for blk in lm.blocks:
            x = _varlen_block(blk, x, seg)
        x = lm.ln_f(x)
        return x.new_zeros(B, T, x.shape[-1]).index_put(where, x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.head(hidden)


def _varlen_block(blk: nn.Module, x: torch.Tensor, seg: list[int]) -> torch.Tensor:
    S, D = x.shape
    h = blk.n_heads
    q, k, v = blk.qkv(blk.ln1(x)).view(S, 3, h, D // h).permute(1, 2, 0, 3).unbind(0)
    outs = [
        F.scaled_dot_product_attention(qi[None], ki[None], vi[None], is_causal=True)[0]
        for qi, ki, vi in zip(q.split(seg, 1), k.split(seg, 1), v.split(seg, 1), strict=True)
        if qi.shape[1]
    ]
    att = torch.cat(outs, 1).transpose(0, 1).reshape(S, D)
    x = x + blk.proj(att)
    return x + blk.mlp(blk.ln2(x))


def tiny_model_cost_config(setup: NatStepSetup) -> TransformerConfig:
    """The cost model's shape for the benchmark's :class:`TinyCausalLM` (GELU MLP of width
    4·d, fp32 activations and logits)."""
    return TransformerConfig(
        layers=setup.n_layers,
        d_model=setup.d_model,
        d_ff=4 * setup.d_model,
        n_heads=setup.n_heads,
        n_kv_heads=setup.n_heads,
        head_dim=setup.d_model // setup.n_heads,
        vocab=setup.vocab,
        act_bytes=4,
        logit_bytes=4,
        mlp_matrices=2,
    )


# --------------------------------------------------------------------------- data
def make_rollouts(setup: NatStepSetup, device: torch.device) -> GRPOBatch:
    """Fixed rollouts: ``rows`` right-padded rows of a prompt plus a ragged response."""
    g = torch.Generator().manual_seed(setup.seed)
    B, P = setup.rows, setup.prompt_len
    R = torch.randint(setup.response_min, setup.response_max + 1, (B,), generator=g)
    T = P + int(R.max())
    pos = torch.arange(T)
    am = pos[None, :] < (P + R)[:, None]
    rm = am & (pos[None, :] >= P)
    ids = torch.randint(0, setup.vocab, (B, T), generator=g)
    adv = torch.randn(B, generator=g)
    return GRPOBatch(ids.to(device), am.to(device), rm.to(device), advantages=adv.to(device))


def full_selection(response_mask: torch.Tensor) -> Selection:
    """Every response token, weight 1 (the full-token step through the same code)."""
    return select_tokens(response_mask, "poisson", 1.0)


def draw_selections(
    response_mask: torch.Tensor, design: str, keep: float, n: int, seed: int
) -> list[Selection]:
    r"""``n`` selections of ``design`` at ``keep``, jointly stratified (Latin hypercube).

    Every selection is an exact draw from the design: it is ``design.sample(u)`` for uniforms
    :math:`u^{(s)} = (\sigma^{(s)} + V^{(s)})/n`, where, for every uniform the design consumes
    (one per row for prefix cutting, one per token for Poisson), :math:`\sigma` is a random
    permutation of :math:`0..n-1` over the ``n`` selections and :math:`V \sim U(0,1)`; so each
    :math:`u^{(s)}` is uniform on (0, 1).  Jointly, each row's cut visits every :math:`n`-quantile
    of its cut law once, so the *average* over the ``n`` selections (what the benchmark reports)
    carries little sampler noise: with 8 rows, one prefix draw at :math:`\kappa = 0.5` keeps
    between 30% and 67% of the tokens.
    """
    dev = response_mask.device
    g = torch.Generator(device=dev).manual_seed(seed)
    d = select_tokens(response_mask, design, keep, generator=g).design
    shape = (n, *d.uniform_shape)
    v = torch.rand(shape, generator=g, dtype=torch.float64, device=dev)
    perm = torch.argsort(torch.rand(shape, generator=g, device=dev), dim=0)
    u = (perm.to(torch.float64) + v) / n
    return [Selection.from_sample(d, d.sample(u[i])) for i in range(n)]


# --------------------------------------------------------------------------- measurement
# --------------------------------------------------------------------------- the step
def _step(
    model: nn.Module,
    batch: GRPOBatch,
    selection: Selection,
    normalizers: LossNormalizers,
    config: GRPOConfig,
    plan_kw: dict[str, Any],
) -> Callable[[], int]:
    def run() -> int:
        model.zero_grad(set_to_none=False)  # persistent gradient buffers (Megatron/FSDP style)
        keep = crop_mask(batch.attention_mask, selection.crop_lengths)
        plan = pack_rows(keep, **plan_kw)
        for terms in grpo_micro_batches(model, batch, selection, normalizers, config, plan):
            terms.loss(config.loss_mode).backward()
        return len(plan)

    return run


def _head_fn(
    hidden: torch.Tensor, head: Callable, ids: torch.Tensor, sel: Selection
) -> Callable[[], None]:
    def run() -> None:
        h = hidden.detach().requires_grad_(True)
        lp, _ = token_logprobs(h, head, ids, sel.sample)
        (lp * sel.weights.to(lp.dtype)).sum().backward()

    return run


def _plan_tokens(keep: torch.Tensor, sel_mask: torch.Tensor, **plan_kw: Any) -> dict[str, float]:
    plan = pack_rows(keep, **plan_kw)
    real = [int(mb.valid.sum()) for mb in plan]
    head = [int(mb.gather(sel_mask, fill=False).sum()) for mb in plan]
    padded = [mb.shape[0] * mb.shape[1] for mb in plan]
    return {
        "micro_batches": len(plan),
        "forward_tokens": float(sum(real)),
        "padded_tokens": float(sum(padded)),
        "head_tokens": float(sum(head)),
        "peak_mb_real_tokens": float(max(real)),
        "peak_mb_padded_tokens": float(max(padded)),
        "peak_mb_real_plus_head": float(max(r + h for r, h in zip(real, head, strict=True))),
    }


def _token_accounting(
    batch: GRPOBatch, setup: NatStepSetup, full: Selection, key: str, keep: float
) -> dict[str, float]:
    """Expected token ratios of a design over many draws (no model run)."""
    am = batch.attention_mask
    budget = {"max_tokens": setup.token_budget}
    rows_bal = {"max_rows": setup.micro_rows, "balance": True}
    rows_pad = {"max_rows": setup.micro_rows}
    f_keep = crop_mask(am, full.crop_lengths)
    fb = _plan_tokens(f_keep, full.sample, **budget)
    fr = _plan_tokens(f_keep, full.sample, **rows_bal)
    fp = _plan_tokens(f_keep, full.sample, **rows_pad)
    acc: dict[str, list[float]] = {}
    sels = draw_selections(
        batch.response_mask, DESIGN_OF[key], keep, setup.accounting_draws, setup.seed + 7919
    )
    for s in sels:
        k = crop_mask(am, s.crop_lengths)
        nb = _plan_tokens(k, s.sample, **budget)
        nr = _plan_tokens(k, s.sample, **rows_bal)
        npd = _plan_tokens(k, s.sample, **rows_pad)
        vals = {
            "forward_token_ratio": nb["forward_tokens"] / fb["forward_tokens"],
            "head_token_ratio": nb["head_tokens"] / fb["head_tokens"],
            "microbatch_count_ratio": nb["micro_batches"] / fb["micro_batches"],
            "peak_mb_real_token_ratio": nr["peak_mb_real_tokens"] / fr["peak_mb_real_tokens"],
            "peak_mb_head_token_ratio": max(
                int(mb.gather(s.sample, fill=False).sum()) for mb in pack_rows(k, **rows_bal)
            )
            / max(
                int(mb.gather(full.sample, fill=False).sum())
                for mb in pack_rows(f_keep, **rows_bal)
            ),
            "padded_peak_mb_token_ratio": npd["peak_mb_padded_tokens"]
            / fp["peak_mb_padded_tokens"],
            "padded_budget_token_ratio": nb["padded_tokens"] / fb["padded_tokens"],
        }
        for n, v in vals.items():
            acc.setdefault(n, []).append(v)
    return {n: float(np.mean(v)) for n, v in acc.items()}


# --------------------------------------------------------------------------- entry point
def run_nat_step_benchmarks(
    quick: bool = True,
    *,
    device: str | torch.device = "cpu",
    setup: NatStepSetup | None = None,
    clock: str = "auto",
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the NAT step benchmark; return ``{"ratios": {...}, "records": [...], "setup": ...}``.

    Parameters
    ----------
    quick : bool
        :meth:`NatStepSetup.quick` (about 2 minutes on 2 CPU cores) or :meth:`NatStepSetup.full`.
    device : str or torch.device
        ``"cpu"`` or ``"cuda"``: the model, the rollouts and the selections live there.
    setup : NatStepSetup, optional
        Overrides ``quick``.
    clock : {"auto", "cpu", "wall"}
        What a step's time is: ``"cpu"`` the process CPU time (``time.process_time``; with one
        intra-op thread it is the step's own work, unaffected by other processes taking the
        cores), ``"wall"`` the wall clock (CUDA: synchronised around the step).  ``"auto"``:
        ``"cpu"`` on a CPU device, ``"wall"`` on CUDA.  Both are recorded.
    verbose : bool
        Progress on stderr.
    """

    def log(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    dev = torch.device(device)
    if clock == "auto":
        clock = "wall" if dev.type == "cuda" else "cpu"
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'auto', 'cpu' or 'wall', got {clock!r}")
    st = setup or (NatStepSetup.quick() if quick else NatStepSetup.full())
    torch.manual_seed(st.seed)
    batch = make_rollouts(st, dev)
    B, T = batch.input_ids.shape
    lm = TinyCausalLM(
        vocab_size=st.vocab,
        d_model=st.d_model,
        n_heads=st.n_heads,
        n_layers=st.n_layers,
        max_len=T,
        device=dev,
    )
    model = VarlenCausalLM(lm)
    config = GRPOConfig(loss_mode="seq-mean-token-mean", design="poisson", keep=1.0)
    normalizers = LossNormalizers.from_mask(batch.response_mask)
    records: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}

    # the varlen backbone computes TinyCausalLM's function
    with torch.no_grad():
        sub = slice(0, min(B, 3))
        a = lm.backbone(batch.input_ids[sub], batch.attention_mask[sub])
        b = model.backbone(batch.input_ids[sub], batch.attention_mask[sub])
        m = batch.attention_mask[sub]
        err = float((a[m] - b[m]).abs().max())
    if err > 1e-3:
        raise RuntimeError(f"varlen backbone differs from TinyCausalLM.backbone: {err:.2e}")
    n_params = sum(p.numel() for p in lm.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())
    static_bytes = 4 * param_bytes  # weights + gradients + two Adam moments, fp32
    lengths = batch.attention_mask.sum(-1)
    records.append(
        {
            "name": "nat_step/setup",
            "section": "nat_step",
            "setup": asdict(st),
            "device": str(dev),
            "torch_threads": torch.get_num_threads(),
            "clock": clock,
            "batch_shape": [B, T],
            "row_lengths": lengths.tolist(),
            "response_tokens": int(batch.response_mask.sum()),
            "real_tokens": int(batch.attention_mask.sum()),
            "params": n_params,
            "model_state_bytes": static_bytes,
            "varlen_vs_padded_max_abs_diff": err,
        }
    )
    log(
        f"  nat_step: {B} rows x {T} (prompt {st.prompt_len}, responses "
        f"{st.response_min}-{st.response_max}, {int(batch.attention_mask.sum())} real tokens); "
        f"TinyCausalLM d={st.d_model} L={st.n_layers} V={st.vocab} ({n_params / 1e6:.1f} M params)"
        f" on {dev}, {torch.get_num_threads()} threads"
    )

    full = full_selection(batch.response_mask)
    sels: dict[str, list[Selection]] = {}
    for key, design in DESIGN_OF.items():
        for i, k in enumerate(KEEPS):
            sels[f"{key}@{k:g}"] = draw_selections(
                batch.response_mask,
                design,
                k,
                st.n_selections,
                st.seed + 101 * (i + 1) + (0 if key == "rpc" else 17),
            )
    budget_kw = {"max_tokens": st.token_budget}
    rows_kw = {"max_rows": st.micro_rows, "balance": True}
    f_fwd = float(batch.attention_mask.sum())
    f_head = float(batch.response_mask.sum())
    for name, ss in sels.items():
        fwd = [float(crop_mask(batch.attention_mask, x.crop_lengths).sum()) / f_fwd for x in ss]
        head = [float(x.sample.sum()) / f_head for x in ss]
        records.append(
            {
                "name": f"nat_step/selections/{name}",
                "section": "nat_step",
                "what": "the pre-drawn (Latin hypercube) selections: realised token ratios",
                "forward_token_ratio": fwd,
                "head_token_ratio": head,
                "mean_forward_token_ratio": float(np.mean(fwd)),
                "mean_head_token_ratio": float(np.mean(head)),
            }
        )

    # ---- token accounting (deterministic, many draws)
    acc: dict[str, dict[str, float]] = {}
    for key in DESIGN_OF:
        for k in KEEPS:
            acc[f"{key}@{k:g}"] = a_ = _token_accounting(batch, st, full, key, k)
            records.append(
                {
                    "name": f"nat_step/accounting/{key}@{k:g}",
                    "section": "nat_step",
                    "draws": st.accounting_draws,
                    **a_,
                }
            )
            ratios[f"{key}_microbatch_count_ratio@{k:g}"] = a_["microbatch_count_ratio"]
    log(f"  token accounting done ({time.perf_counter() - t_start:.0f} s)")

    # ---- time: interleaved rounds under the token budget
    cases: dict[str, list[Callable[[], int]]] = {
        "full": [_step(model, batch, full, normalizers, config, budget_kw)]
    }
    for name, ss in sels.items():
        cases[name] = [_step(model, batch, s, normalizers, config, budget_kw) for s in ss]
    names = list(cases)
    times: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
    walls: dict[str, list[float]] = {n: [] for n in names}
    mb_counts: dict[str, list[int]] = {n: [] for n in names}
    use_cpu_clock = clock == "cpu"
    gc_was = gc.isenabled()
    for r in range(st.rounds + 1):  # round 0: warm-up
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        gc.collect()
        gc.disable()
        try:
            for n in order:
                s_idx = (r - 1) % len(cases[n])
                fn = cases[n][s_idx]
                sync(dev)
                c0 = time.process_time()
                t0 = time.perf_counter()
                nmb = fn()
                sync(dev)
                wall = time.perf_counter() - t0
                dt = time.process_time() - c0 if use_cpu_clock else wall
                if r > 0:
                    times[n].append((s_idx, dt))
                    walls[n].append(wall)
                    mb_counts[n].append(nmb)
        finally:
            if gc_was:
                gc.enable()
        log(
            f"  time round {r}/{st.rounds} done ({time.perf_counter() - t_start:.0f} s, "
            f"load {loadavg()})"
        )
    full_t = [t for _, t in times["full"]]
    med_full = statistics.median(full_t)
    for name in names:
        rec: dict[str, Any] = {
            "name": f"nat_step/time/{name}",
            "section": "nat_step",
            "what": "fwd+bwd step, token-budget micro-batching",
            "token_budget": st.token_budget,
            "clock": clock,
            "times_s": [t for _, t in times[name]],
            "wall_s": walls[name],
            "selection_index": [s for s, _ in times[name]],
            "median_s": statistics.median(t for _, t in times[name]),
            "micro_batches": mb_counts[name],
        }
        if name != "full":
            paired = [t / tf for (_, t), tf in zip(times[name], full_t, strict=True)]
            per_sel = {}
            for s_idx in sorted({s for s, _ in times[name]}):
                per_sel[s_idx] = statistics.median(
                    p for (s, _), p in zip(times[name], paired, strict=True) if s == s_idx
                )
            ratio = float(np.mean(list(per_sel.values())))
            key, k = name.split("@")
            ratios[f"{key}_time_ratio@{k}"] = ratio
            rec.update(
                {
                    "paired_ratios": paired,
                    "ratio_per_selection": [per_sel[s] for s in sorted(per_sel)],
                    "ratio": ratio,
                    "ratio_of_medians": rec["median_s"] / med_full,
                    "full_median_s": med_full,
                    "wall_ratio_of_medians": statistics.median(walls[name])
                    / statistics.median(walls["full"]),
                }
            )
        records.append(rec)

    # ---- peak memory at a fixed micro-batch size in sequences (balanced, varlen)
    mem: dict[str, list[float]] = {}
    method = ""
    for name in names:
        ss = [full] if name == "full" else sels[name]
        vals = []
        for s in ss:
            fn = _step(model, batch, s, normalizers, config, rows_kw)
            peak, method = measure_peak_bytes(fn, dev)
            vals.append(peak)
        mem[name] = vals
    full_peak = mem["full"][0]
    for name in names:
        rec = {
            "name": f"nat_step/peak_memory/{name}",
            "section": "nat_step",
            "what": f"peak allocated bytes above the step's start, {st.micro_rows} rows per "
            "micro-batch (balanced, varlen backbone)",
            "method": method,
            "peak_bytes": mem[name],
            "model_state_bytes": static_bytes,
        }
        if name != "full":
            key, k = name.split("@")
            rs = [v / full_peak for v in mem[name]]
            ratios[f"{key}_peak_memory_ratio@{k}"] = float(np.mean(rs))
            tot = [(v + static_bytes) / (full_peak + static_bytes) for v in mem[name]]
            ratios[f"{key}_total_peak_memory_ratio@{k}"] = float(np.mean(tot))
            rec.update(
                {
                    "ratio_per_selection": rs,
                    "ratio": float(np.mean(rs)),
                    "total_ratio": float(np.mean(tot)),
                }
            )
        records.append(rec)
    log(f"  peak memory done ({time.perf_counter() - t_start:.0f} s)")

    # ---- peak memory with the padded backbone (library default: length-sorted, padded)
    pad_kw = {"max_rows": st.micro_rows}
    if st.padded_memory_keeps:
        pf, _ = measure_peak_bytes(_step(lm, batch, full, normalizers, config, pad_kw), dev)
        for k in st.padded_memory_keeps:
            vals = [
                measure_peak_bytes(_step(lm, batch, s, normalizers, config, pad_kw), dev)[0]
                for s in sels[f"rpc@{k:g}"]
            ]
            r_ = float(np.mean([v / pf for v in vals]))
            ratios[f"rpc_padded_peak_memory_ratio@{k:g}"] = r_
            records.append(
                {
                    "name": f"nat_step/padded_peak_memory/rpc@{k:g}",
                    "section": "nat_step",
                    "what": f"as peak_memory, but TinyCausalLM's padded backbone and the "
                    f"length-sorted pack_rows(max_rows={st.micro_rows})",
                    "method": method,
                    "peak_bytes": vals,
                    "full_peak_bytes": pf,
                    "ratio": r_,
                }
            )
        log(f"  padded peak memory done ({time.perf_counter() - t_start:.0f} s)")

    # ---- LM head + log-softmax memory alone (URS)
    with torch.no_grad():
        hidden = model.backbone(batch.input_ids, batch.attention_mask)
    hf, _ = measure_peak_bytes(_head_fn(hidden, lm.head, batch.input_ids, full), dev)
    for k in st.head_keeps:
        vals = [
            measure_peak_bytes(_head_fn(hidden, lm.head, batch.input_ids, s), dev)[0]
            for s in sels[f"urs@{k:g}"]
        ]
        r_ = float(np.mean([v / hf for v in vals]))
        ratios[f"urs_head_memory_ratio@{k:g}"] = r_
        records.append(
            {
                "name": f"nat_step/head_memory/urs@{k:g}",
                "section": "nat_step",
                "what": "LM head + log-softmax fwd+bwd on fixed hidden states of the whole batch",
                "method": method,
                "peak_bytes": vals,
                "full_peak_bytes": hf,
                "ratio": r_,
                "head_token_ratio": acc[f"urs@{k:g}"]["head_token_ratio"],
            }
        )
    del hidden
    log(f"  head memory done ({time.perf_counter() - t_start:.0f} s)")

    # ---- cost model on the realised selections (plug-in check)
    cfg = tiny_model_cost_config(st)
    records.extend(_cost_model_check(cfg, batch, full, sels, st, ratios, mem, static_bytes))

    for name, (op, bound) in TARGETS.items():
        if name in ratios:
            v = ratios[name]
            records.append(
                {
                    "name": f"target/{name}",
                    "section": "targets",
                    "ratio": v,
                    "target": f"{op} {bound:g}",
                    "met": bool(v <= bound if op == "<=" else v >= bound),
                }
            )
    records.append(
        {
            "name": "nat_step/meta",
            "section": "nat_step",
            "quick": quick,
            "wall_s": time.perf_counter() - t_start,
            "memory_method": method,
            "loadavg_1min_end": loadavg(),
        }
    )
    return {"ratios": ratios, "records": records, "setup": asdict(st)}


def _cost_model_check(
    cfg: TransformerConfig,
    batch: GRPOBatch,
    full: Selection,
    sels: dict[str, list[Selection]],
    st: NatStepSetup,
    ratios: dict[str, float],
    mem: dict[str, list[float]],
    static_bytes: float,
) -> list[dict[str, Any]]:
    """The cost model evaluated on the very rows and selections that were measured."""
    am = batch.attention_mask
    rows_kw = {"max_rows": st.micro_rows, "balance": True}

    def cost(sel: Selection) -> tuple[float, float]:
        body = crop_mask(am, sel.crop_lengths).sum(-1).cpu().numpy()
        head = sel.sample.sum(-1).cpu().numpy()
        flops = batch_step_cost(cfg, body, head).flops
        plan = pack_rows(crop_mask(am, sel.crop_lengths), **rows_kw)
        peak = 0.0
        for mb in plan:
            r = mb.rows.cpu().numpy()
            peak = max(peak, batch_step_cost(cfg, body[r], head[r]).activation_bytes)
        return flops, peak

    f_flops, f_act = cost(full)
    resp = [int(v) for v in batch.response_mask.sum(-1).tolist()]
    row_full = [step_cost(cfg, st.prompt_len + n, n) for n in resp]
    out = []
    for name, ss in sels.items():
        key, k = name.split("@")
        cs = [cost(s) for s in ss]
        fl = float(np.mean([c[0] / f_flops for c in cs]))
        ac = float(np.mean([c[1] / f_act for c in cs]))
        # the expectation over the design, row by row (nat_step_cost_ratio), summed over rows
        exp = [nat_step_cost_ratio(cfg, st.prompt_len, n, DESIGN_OF[key], float(k)) for n in resp]
        e_fl = sum(e["flops_ratio"] * c.flops for e, c in zip(exp, row_full, strict=True)) / sum(
            c.flops for c in row_full
        )
        e_ac = sum(
            e["peak_memory_ratio"] * c.activation_bytes for e, c in zip(exp, row_full, strict=True)
        ) / sum(c.activation_bytes for c in row_full)
        out.append(
            {
                "name": f"cost_model/check/{name}",
                "section": "cost_model",
                "flops_ratio_model": fl,
                "time_ratio_measured": ratios.get(f"{key}_time_ratio@{k}"),
                "activation_memory_ratio_model": ac,
                "peak_memory_ratio_measured": ratios.get(f"{key}_peak_memory_ratio@{k}"),
                "expected_flops_ratio_nat_step_cost_ratio": e_fl,
                "expected_memory_ratio_nat_step_cost_ratio": e_ac,
            }
        )
    out.append(
        {
            "name": "cost_model/check/full_absolute",
            "section": "cost_model",
            "activation_bytes_model": f_act,
            "peak_bytes_measured": mem["full"][0],
            "measured_over_model": mem["full"][0] / f_act,
            "model_config": asdict(cfg),
        }
    )
    return out


if __name__ == "__main__":
    import json

    torch.set_num_threads(1)
    res = run_nat_step_benchmarks(quick="--full" not in sys.argv)
    print(json.dumps(res["ratios"], indent=1))
