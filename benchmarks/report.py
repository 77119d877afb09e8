r"""Results page (markdown + PNG plots) from the JSON that ``benchmarks/run.py`` writes.

``python benchmarks/report.py benchmarks/results/latest.json benchmarks/results.md`` rebuilds the
page from a saved run; ``benchmarks/run.py --report FILE`` calls :func:`write_report` directly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

KEEPS = (0.25, 0.5, 0.75)


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return f"{v:.{nd}f}"
    return str(v)


def _rec(out: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in out["records"] if r.get("name") == name), None)


def _targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in out["records"] if str(r.get("name", "")).startswith("target/")]


def _target_bound(out: dict[str, Any], name: str) -> tuple[str, float] | None:
    """``("<=", 0.55)`` from the run's record ``target/<name>`` (``None`` if it has none)."""
    t = _rec(out, f"target/{name}")
    if not t:
        return None
    op, _, bound = str(t["target"]).partition(" ")
    return op, float(bound)


def _paper(proj: list[dict[str, Any]]) -> dict[str, float]:
    """The paper's figures (cited, not measured) the projection records carry; runs that did not
    record them get ``benchmarks.projection.PAPER``."""
    if not proj:
        return {}
    if "paper" in proj[0]:
        return dict(proj[0]["paper"])
    from benchmarks.projection import PAPER

    return dict(PAPER)


def _model_error(out: dict[str, Any], pairs: tuple[tuple[str, str], ...]) -> float | None:
    """Largest |measured - cost model| over the run's cost-model checks, for the given columns."""
    devs = [
        abs(c[a] - c[b])
        for c in out["records"]
        if str(c.get("name", "")).startswith("cost_model/check/")
        for a, b in pairs
        if c.get(a) is not None and c.get(b) is not None
    ]
    return max(devs) if devs else None


# --------------------------------------------------------------------------- plots
def _plots(out: dict[str, Any], plots_dir: Path) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # pragma: no cover
        return []
    plots_dir.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, str]] = []
    r = out["ratios"]
    if any(f"rpc_time_ratio@{k:g}" in r for k in KEEPS):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, what, title in (
            (axes[0], "time", "fwd+bwd time (token-budget micro-batches)"),
            (axes[1], "peak_memory", "peak memory above model state (fixed rows / micro-batch)"),
        ):
            for key, style, label in (
                ("rpc", "o-", "prefix cutting (RPC)"),
                ("urs", "s-", "uniform Poisson (URS)"),
            ):
                xs = [k for k in KEEPS if f"{key}_{what}_ratio@{k:g}" in r]
                ax.plot(xs, [r[f"{key}_{what}_ratio@{k:g}"] for k in xs], style, label=label)
            if what == "peak_memory" and "urs_head_memory_ratio@0.5" in r:
                hk = [k for k in KEEPS if f"urs_head_memory_ratio@{k:g}" in r]
                ax.plot(
                    hk,
                    [r[f"urs_head_memory_ratio@{k:g}"] for k in hk],
                    "s",
                    mfc="none",
                    color="C1",
                    label="URS: LM head + log-softmax only",
                )
            if what == "peak_memory" and "rpc_padded_peak_memory_ratio@0.5" in r:
                pk = [k for k in KEEPS if f"rpc_padded_peak_memory_ratio@{k:g}" in r]
                ax.plot(
                    pk,
                    [r[f"rpc_padded_peak_memory_ratio@{k:g}"] for k in pk],
                    "o",
                    mfc="none",
                    color="C0",
                    label="RPC, padded length-sorted layout",
                )
            ax.plot([0, 1], [0, 1], ":", color="grey", label="ratio = keep fraction")
            bound = _target_bound(out, f"rpc_{what}_ratio@0.5")
            if bound is not None:
                ax.plot([0.5], [bound[1]], "v", color="red", ms=9,
                        label=f"RPC target @0.5 ({bound[0]} {bound[1]:g})")
            ax.set_xlabel("keep fraction κ")
            ax.set_title(title, fontsize=10)
            ax.set_xlim(0.15, 0.85)
            ax.set_ylim(0, 1.1)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("NAT step / full-token step")
        axes[1].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(plots_dir / "nat_step_ratios.png", dpi=110)
        plt.close(fig)
        made.append(("nat_step_ratios.png", "NAT step / full-token step, measured"))

    checks = [
        x
        for x in out["records"]
        if str(x.get("name", "")).startswith("cost_model/check/") and "flops_ratio_model" in x
    ]
    if checks:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        for key, mk in (("time", "o"), ("memory", "s")):
            xs, ys = [], []
            for c in checks:
                if key == "time" and c.get("time_ratio_measured") is not None:
                    xs.append(c["flops_ratio_model"])
                    ys.append(c["time_ratio_measured"])
                if key == "memory" and c.get("peak_memory_ratio_measured") is not None:
                    xs.append(c["activation_memory_ratio_model"])
                    ys.append(c["peak_memory_ratio_measured"])
            ax.plot(xs, ys, mk, label=f"{key}: measured vs model")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_xlabel("cost model (realised selections)")
        ax.set_ylabel("measured")
        ax.set_title("Cost model check on the small model", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(plots_dir / "cost_model_check.png", dpi=110)
        plt.close(fig)
        made.append(("cost_model_check.png", "cost model against the measured ratios"))

    proj = [x for x in out["records"] if x.get("section") == "projection" and x["keep"] == 0.5]
    if proj:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, cols, title in (
            (axes[0], (("time_ratio", "FLOPs"),), "time (FLOPs)"),
            (
                axes[1],
                (
                    ("activation_memory_ratio", "activations + logits"),
                    ("peak_memory_ratio_fsdp8_recompute", "recompute + FSDP-8 model state"),
                    ("peak_memory_ratio_1row_mb",
                     f"1 row / micro-batch ({proj[0]['rows_for_1row_mb']} rows)"),
                ),
                "peak memory",
            ),
        ):
            for key, mk in (("rpc", "o"), ("urs", "s")):
                pts = sorted((x["response_len"], x) for x in proj if x["design"] == key)
                for j, (col, lab) in enumerate(cols):
                    ax.plot(
                        [p[0] for p in pts],
                        [p[1][col] for p in pts],
                        mk + ("-" if j == 0 else "--" if j == 1 else ":"),
                        color="C0" if key == "rpc" else "C1",
                        label=f"{key.upper()}: {lab}",
                    )
            paper = _paper(proj).get("time_ratio" if title.startswith("time")
                                     else "peak_memory_ratio")
            if paper is not None:
                ax.axhline(paper, color="red", ls="-.", lw=1,
                           label=f"paper, RPC ≈0.5: {paper:g}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(f"response tokens (prompt {proj[0]['prompt_len']})")
            ax.set_title(f"Qwen3-8B projection @κ=0.5: {title}", fontsize=10)
            ax.set_ylim(0, 1.1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
        axes[0].set_ylabel("NAT / full-token")
        fig.tight_layout()
        fig.savefig(plots_dir / "projection_qwen3_8b.png", dpi=110)
        plt.close(fig)
        made.append(("projection_qwen3_8b.png", "cost-model projection to Qwen3-8B"))
    return made


# --------------------------------------------------------------------------- text
def format_summary(out: dict[str, Any]) -> str:
    """Short text summary (printed by run.py)."""
    lines = ["ratio                                        value"]
    for k, v in out["ratios"].items():
        lines.append(f"{k:44s} {v:8.3f}")
    lines.append("")
    for t in _targets(out):
        lines.append(
            f"{t['name'][7:]:44s} {t['ratio']:8.3f}  {t['target']:>8s}  "
            f"{'met' if t['met'] else 'MISSED'}"
        )
    return "\n".join(lines)


def _explain(out: dict[str, Any], name: str) -> str:
    """A data-driven line on what sets a figure."""
    if name.startswith("rpc_time_ratio@") or name.startswith("rpc_peak_memory_ratio@"):
        k = name.split("@")[1]
        sel = _rec(out, f"nat_step/selections/rpc@{k}") or {}
        chk = _rec(out, f"cost_model/check/rpc@{k}") or {}
        acc = _rec(out, f"nat_step/accounting/rpc@{k}") or {}
        if "time" in name:
            return (
                f"the measured selections keep {_f(sel.get('mean_forward_token_ratio'))} of "
                f"the forward tokens (the prompt is never cut) and "
                f"{_f(sel.get('mean_head_token_ratio'))} of the LM-head tokens; the cost "
                f"model predicts a FLOPs ratio of {_f(chk.get('flops_ratio_model'))}"
            )
        return (
            f"expected peak micro-batch real tokens {_f(acc.get('peak_mb_real_token_ratio'))}"
            f", head tokens {_f(acc.get('peak_mb_head_token_ratio'))}; cost model "
            f"{_f(chk.get('activation_memory_ratio_model'))}"
        )
    if name.startswith("urs_time_ratio@"):
        k = name.split("@")[1]
        chk = _rec(out, f"cost_model/check/urs@{k}") or {}
        return (
            f"the body still runs over every token; cost model FLOPs ratio "
            f"{_f(chk.get('flops_ratio_model'))}"
        )
    if name.startswith("urs_head_memory_ratio@"):
        k = name.split("@")[1]
        rec = _rec(out, f"nat_step/head_memory/urs@{k}") or {}
        return f"head-token ratio {_f(rec.get('head_token_ratio'))}"
    return ""


def build_markdown(
    out: dict[str, Any], plots: list[tuple[str, str]], plots_rel: str, command: str
) -> str:
    m = out["machine"]
    r = out["ratios"]
    L: list[str] = []
    L.append("# Benchmark results")
    L.append("")
    run_cmd = m.get("command") or command or "python benchmarks/run.py"
    rebuilt = f" (page rebuilt by `{command}`)" if command and command != run_cmd else ""
    L.append(
        f"Generated by `{run_cmd}`{rebuilt} on {m.get('date', '?')} "
        f"({'quick' if m.get('quick') else 'full'} sizes, {m.get('wall_s', 0):.0f} s). "
        "Every figure is a **ratio of two configurations measured side by side in the same "
        "run** (interleaved rounds, medians); absolute values are in the JSON records only."
    )
    L.append("")
    cpu = m.get("cpu", "?")
    L.append(
        f"Machine: {cpu}, {m.get('cpu_count', m.get('cores', '?'))} cores, "
        f"Python {m.get('python', '?')}, torch "
        f"{m.get('torch', '?')}, numpy {m.get('numpy', '?')}; NAT step section on "
        f"`{m.get('nat_step_device')}` with {m.get('nat_step_torch_threads')} intra-op thread(s), "
        f"clock `{m.get('nat_step_clock')}`, peak memory by `{m.get('nat_step_memory_method')}`. "
        f"1-minute load average {_f((m.get('loadavg_at_start') or [None])[0], 2)} at start, "
        f"{_f((m.get('loadavg_at_end') or [None])[0], 2)} at end (other jobs shared the machine)."
    )
    L.append("")

    # ---- targets
    L.append("## Targets")
    L.append("")
    L.append("| figure | measured | target | status | what sets it |")
    L.append("|---|---|---|---|---|")
    for t in _targets(out):
        name = t["name"][7:]
        L.append(
            f"| `{name}` | {_f(t['ratio'])} | {t['target']} | "
            f"{'met' if t['met'] else '**missed**'} | {_explain(out, name)} |"
        )
    L.append("")

    # ---- NAT step
    setup = _rec(out, "nat_step/setup")
    if setup:
        s = setup["setup"]
        L.append("## NAT GRPO step against the full-token step")
        L.append("")
        L.append(
            f"`TinyCausalLM` (d_model {s['d_model']}, {s['n_layers']} layers, {s['n_heads']} heads,"
            f" vocabulary {s['vocab']}, {setup['params'] / 1e6:.1f} M parameters) run without "
            f"padding inside the blocks (`VarlenCausalLM`: per-row causal attention, as "
            f"flash-attention varlen / verl `use_remove_padding`); {s['rows']} rollouts of a "
            f"{s['prompt_len']}-token prompt and a {s['response_min']}–{s['response_max']}-token "
            f"response ({setup['real_tokens']} real tokens, {setup['response_tokens']} loss "
            f"tokens); on-policy GRPO loss `seq-mean-token-mean`; {s['n_selections']} pre-drawn "
            f"selections per design and κ (Latin hypercube: each an exact draw, jointly "
            f"stratified), {s['rounds']} timed rounds after a warm-up round."
        )
        L.append("")
        L.append(
            f"* **time**: one fwd+bwd step (crop, plan, forward, loss, backward; no optimiser "
            f"step) under token-budget micro-batching (`pack_rows(max_tokens={s['token_budget']})`"
            f", length-sorted, the same for both); ratio = mean over selections of the median "
            f"paired per-round ratio.\n"
            f"* **peak memory**: one step with {s['micro_rows']} rows per micro-batch "
            f"(`pack_rows(max_rows={s['micro_rows']}, balance=True)`, the same for both): peak "
            f"allocated bytes above the bytes live at the step's start (weights and persistent "
            f"gradient buffers). *total* adds the fp32 model state (weights, gradients, 2 Adam "
            f"moments: {setup['model_state_bytes'] / 2**20:.0f} MiB) to both.\n"
            f"* **head memory**: LM head + log-softmax + backward alone on fixed hidden states.\n"
            f"* **μ-batches**: micro-batch count under the token budget (expected over "
            f"{s['accounting_draws']} draws)."
        )
        L.append("")
        L.append(
            "| κ | RPC time | RPC peak mem | RPC total peak | RPC μ-batches | URS time | "
            "URS peak mem | URS total peak | URS head mem |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|")
        for k in KEEPS:

            def g(n: str, k: float = k) -> str:
                return _f(r.get(n.format(k=f"{k:g}")))

            L.append(
                f"| {k:g} | {g('rpc_time_ratio@{k}')} | {g('rpc_peak_memory_ratio@{k}')} | "
                f"{g('rpc_total_peak_memory_ratio@{k}')} | {g('rpc_microbatch_count_ratio@{k}')}"
                f" | {g('urs_time_ratio@{k}')} | {g('urs_peak_memory_ratio@{k}')} | "
                f"{g('urs_total_peak_memory_ratio@{k}')} | {g('urs_head_memory_ratio@{k}')} |"
            )
        L.append("")
        L.append(
            "Token accounting (no timing noise): realised ratios of the measured selections,"
            " and expectations over many draws of the micro-batch plans."
        )
        L.append("")
        L.append(
            "| config | fwd tokens (measured sel.) | head tokens (measured sel.) | "
            "E fwd tokens | E peak μ-batch tokens (balanced varlen) | E peak μ-batch "
            "tokens (padded, sorted) | measured padded peak mem |"
        )
        L.append("|---|---|---|---|---|---|---|")
        for key in ("rpc", "urs"):
            for k in KEEPS:
                sel = _rec(out, f"nat_step/selections/{key}@{k:g}") or {}
                acc = _rec(out, f"nat_step/accounting/{key}@{k:g}") or {}
                pad = r.get(f"{key}_padded_peak_memory_ratio@{k:g}")
                L.append(
                    f"| {key}@{k:g} | {_f(sel.get('mean_forward_token_ratio'))} | "
                    f"{_f(sel.get('mean_head_token_ratio'))} | "
                    f"{_f(acc.get('forward_token_ratio'))} | "
                    f"{_f(acc.get('peak_mb_real_token_ratio'))} | "
                    f"{_f(acc.get('padded_peak_mb_token_ratio'))} | {_f(pad)} |"
                )
        L.append("")

    # ---- cost model check
    checks = [
        x
        for x in out["records"]
        if str(x.get("name", "")).startswith("cost_model/check/") and "flops_ratio_model" in x
    ]
    if checks:
        L.append("## Cost model against the measurements")
        L.append("")
        L.append(
            "`nat_estimators.costmodel` with the small model's shape (GELU MLP, fp32 activations "
            "and logits): *realised* = `batch_step_cost` on the very rows and selections that "
            "were measured (activations of the largest balanced micro-batch); *expected* = "
            "`nat_step_cost_ratio` row by row (exact expectation over the design), summed over "
            "the batch's rows. Measured against realised is the model's error; realised against "
            "expected is the sampler noise left after stratification (and, for memory, the "
            "largest micro-batch holding a little more than the expected share)."
        )
        L.append("")
        L.append(
            "| config | measured time | model FLOPs (realised) | model FLOPs (expected) | "
            "measured peak mem | model activations (realised) | model activations (expected) |"
        )
        L.append("|---|---|---|---|---|---|---|")
        for c in checks:
            L.append(
                f"| {c['name'].split('/')[-1]} | {_f(c['time_ratio_measured'])} | "
                f"{_f(c['flops_ratio_model'])} | "
                f"{_f(c.get('expected_flops_ratio_nat_step_cost_ratio'))} | "
                f"{_f(c['peak_memory_ratio_measured'])} | "
                f"{_f(c['activation_memory_ratio_model'])} | "
                f"{_f(c.get('expected_memory_ratio_nat_step_cost_ratio'))} |"
            )
        ab = _rec(out, "cost_model/check/full_absolute")
        if ab:
            L.append("")
            L.append(
                "Absolute check, full-token step: measured peak "
                f"{ab['peak_bytes_measured'] / 2**20:.0f} MiB against the model's "
                f"{ab['activation_bytes_model'] / 2**20:.0f} MiB "
                f"(×{ab['measured_over_model']:.2f}; the model counts "
                f"{ab['model_config']['logit_copies']:g} fp32 copies of the logits and no "
                f"allocator or scratch bytes)."
            )
        L.append("")

    # ---- projection
    proj = [x for x in out["records"] if x.get("section") == "projection"]
    if proj:
        L.append("## Projection to Qwen3-8B (cost model)")
        L.append("")
        p0 = proj[0]
        paper = _paper(proj)
        cfg = p0.get("model")
        if cfg is None:  # runs that did not record it projected the published Qwen3-8B shape
            from dataclasses import asdict

            from nat_estimators.costmodel import TransformerConfig

            cfg = asdict(TransformerConfig.qwen3_8b())
        shape = (
            f"{cfg['layers']} layers, width {cfg['d_model']}, "
            f"{'SwiGLU' if cfg['mlp_matrices'] == 3 else 'MLP'} {cfg['d_ff']}, "
            f"GQA {cfg['n_heads']}/{cfg['n_kv_heads']}, vocabulary {cfg['vocab']:,}; "
            f"{cfg['act_bytes'] * 8}-bit activations, {cfg['logit_bytes'] * 8}-bit logits"
        )
        fk = f" with `full_keep={p0['full_keep']:g}`" if "full_keep" in p0 else ""
        paper_txt = (
            f" The paper reports {paper['time_ratio']:g} (time) and "
            f"{paper['peak_memory_ratio']:g} (peak memory) for prefix cutting at about half the "
            f"tokens." if paper else ""
        )
        L.append(
            f"Qwen3-8B shape ({shape}), prompt {p0['prompt_len']} tokens; prefix cutting{fk}. "
            f"*time* = FLOPs ratio (the cost model's time ratio; see its notes for what it leaves "
            f"out); *act. mem* = activations + logits of "
            f"the expected tokens (a micro-batch holding many rows, as the balanced varlen "
            f"layout above); *recompute+FSDP-8* adds block recomputation and "
            f"{p0['static_bytes_fsdp8'] / 2**30:.1f} GiB of sharded model state per GPU; "
            f"*1 row/μ-batch* is the peak over {p0['rows_for_1row_mb']} rows processed one at a "
            f"time (the longest kept row sets it).{paper_txt}"
        )
        L.append("")
        L.append(
            "| design | κ | response | time | act. mem | recompute+FSDP-8 peak | "
            "1 row/μ-batch peak |"
        )
        L.append("|---|---|---|---|---|---|---|")
        for x in proj:
            L.append(
                f"| {x['design'].upper()} | {x['keep']:g} | {x['response_len']} | "
                f"{_f(x['time_ratio'])} | {_f(x['activation_memory_ratio'])} | "
                f"{_f(x['peak_memory_ratio_fsdp8_recompute'])} | "
                f"{_f(x['peak_memory_ratio_1row_mb'])} |"
            )
        if paper:
            L.append(f"| paper (RPC) | ≈0.5 | – | {paper['time_ratio']:g} | – | "
                     f"{paper['peak_memory_ratio']:g} | – |")
        L.append("")
        half = [x for x in proj if x["design"] == "rpc" and x["keep"] == 0.5]
        dev = _model_error(out, (("time_ratio_measured", "flops_ratio_model"),
                                 ("peak_memory_ratio_measured", "activation_memory_ratio_model")))
        dev_txt = f"±{dev:.3f}" if dev is not None else "(not measured in this run)"
        if half and paper:

            def rng(col: str) -> str:
                v = [x[col] for x in half]
                return f"{min(v):.2f}–{max(v):.2f}"

            lens = sorted({x["response_len"] for x in half})
            gap = paper["time_ratio"] - max(x["time_ratio"] for x in half)
            L.append(
                f"Against the paper: at κ = 0.5 the model puts prefix cutting's fwd+bwd FLOPs at "
                f"{rng('time_ratio')} of the full step ({lens[0]}–{lens[-1]}-token responses) and "
                f"its activation memory at {rng('activation_memory_ratio')}; on the small model "
                f"the same formulas were within {dev_txt} of the measured time and memory ratios "
                f"(table above). The paper's {paper['time_ratio']:g} time therefore leaves at "
                f"least {gap:.2f} on the table: something in that step did not shrink with the "
                f"kept tokens (padding each micro-batch to its longest kept row, fixed per-step "
                f"costs). Its {paper['peak_memory_ratio']:g} peak memory compares with the model "
                f"with recomputation and sharded model state "
                f"({rng('peak_memory_ratio_fsdp8_recompute')}) and with one row per micro-batch "
                f"({rng('peak_memory_ratio_1row_mb')}), where the longest kept row sets the peak."
            )
            L.append("")

    # ---- samplers
    srat = {k: v for k, v in r.items() if not k.startswith(("rpc_", "urs_", "select_", "pack_"))}
    if srat or any(x.get("section") == "samplers" for x in out["records"]):
        L.append("## Samplers")
        L.append("")
        table = None
        try:
            from benchmarks.samplers import format_table

            srecs = [
                x
                for x in out["records"]
                if x.get("section") in ("batch", "R", "meta")
                or str(x.get("name", "")).startswith(("batch/", "R"))
            ]
            meta = [
                dict(x, name="meta") for x in out["records"] if x.get("name") == "samplers/meta"
            ]
            table = format_table({"ratios": srat, "records": srecs + meta})
        except Exception:
            table = None
        if table:
            L.append("```")
            L.append(table)
            L.append("```")
        else:
            L.append("| ratio | value |")
            L.append("|---|---|")
            for k, v in srat.items():
                L.append(f"| `{k}` | {_f(v, 2)} |")
        for x in out["records"]:
            if x.get("section") == "samplers" and x.get("skipped"):
                L.append(f"\nNote: {x['note']}")
        L.append("")

    # ---- select_tokens / pack_rows at batch scale
    if any(x.get("section") == "rl_selection" for x in out["records"]):
        from benchmarks.rl_selection import format_table as rl_table

        L.append("## RL selection at batch scale")
        L.append("")
        L.append("```")
        L.append(rl_table(out))
        L.append("```")
        L.append("")

    for x in out["records"]:
        if x.get("section") == "variance" and x.get("skipped"):
            L.append(f"Note: {x['note']}.")
            L.append("")

    if plots:
        L.append("## Plots")
        L.append("")
        for fn, cap in plots:
            L.append(f"![{cap}]({plots_rel}/{fn})")
            L.append("")
    L.append("## How to read these figures")
    L.append("")
    L.append(_method_notes(out))
    return "\n".join(L) + "\n"


def _method_notes(out: dict[str, Any]) -> str:
    """How to read the figures; every number in it comes from ``out`` (the run)."""
    setup = _rec(out, "nat_step/setup") or {}
    st = setup.get("setup", {})
    notes = [
        "* **Fair baselines.** The full-token step is the same code with the \"selection\" of "
        "every response token (weight 1): the same crop-and-pack plan builder, the same "
        "selected-position LM head (`token_logprobs` at the loss positions only, "
        "`logits_to_keep`-style), the same micro-batching (length-sorted token budget for time, "
        "balanced rows for memory).  A ratio therefore measures NAT, not the batching."
    ]
    noise = (
        "* **Noise.** Rollouts and selections are fixed before timing; configurations run in "
        "rotating interleaved rounds; on CPU the step time is the process CPU time with one "
        "intra-op thread, which other jobs on the machine barely move (the wall clock is "
        "recorded too; on a shared machine extra intra-op threads make it noisy, not faster)."
    )
    sel = _rec(out, "nat_step/selections/rpc@0.5") or {}
    shares = sel.get("head_token_ratio") or []
    means = [
        (k, rec["mean_head_token_ratio"])
        for key in ("rpc", "urs")
        for k in KEEPS
        if (rec := _rec(out, f"nat_step/selections/{key}@{k:g}"))
        and rec.get("mean_head_token_ratio") is not None
    ]
    if shares and means and st:
        worst = max(abs(m - k) for k, m in means)
        noise += (
            f"  With {st['rows']} rows one prefix draw keeps a widely varying share of the "
            f"tokens (the {len(shares)} selections drawn at κ = 0.5 in this run keep "
            f"{min(shares):.2f}–{max(shares):.2f} of the loss tokens), so the selections are "
            f"drawn as a Latin hypercube: each is an exact draw from the design, and in this run "
            f"their average kept κ of the loss tokens to within ±{worst:.3f}."
        )
    notes.append(noise)
    notes.append(
        "* **Peak memory, padded vs varlen.** At a fixed number of rows per micro-batch the peak "
        "is the largest micro-batch.  With padded rows (`TinyCausalLM.backbone`) a micro-batch "
        "costs rows × its longest row, and the micro-batch holding the longest *kept* row costs "
        "about as much as in the full step: prefix cuts are spread over the whole row (and the "
        "design keeps a few rows whole), so the longest of the batch's cuts is long.  That floor "
        "is the \"padded\" column.  Dropping padding inside the blocks and balancing the rows' "
        "real tokens across micro-batches (`pack_rows(..., balance=True)`) brings the peak down "
        "to about the kept-token ratio."
    )
    ab = _rec(out, "cost_model/check/full_absolute") or {}
    if ab.get("model_config"):
        notes.append(
            "* **LM-head memory.** `token_logprobs` computes the log-probability as "
            "`x_y - logsumexp(x)` with a fused backward, so the head and its log-softmax keep "
            f"{ab['model_config']['logit_copies']:g} fp32 `[K, V]` buffers at their peak (the "
            "cost model's `logit_copies`)."
        )
    gpu = []
    proj = [x for x in out["records"] if x.get("section") == "projection"]
    if ab.get("model_config") and setup.get("row_lengths") and st:
        from nat_estimators.costmodel import TransformerConfig, batch_step_cost, step_cost

        cfg = TransformerConfig(**ab["model_config"])
        tb = np.asarray(setup["row_lengths"], dtype=float)
        th = tb - st["prompt_len"]
        small = 1 - batch_step_cost(cfg, tb, 0 * th).flops / batch_step_cost(cfg, tb, th).flops
        big = ""
        if proj:
            x = min(proj, key=lambda x: x["response_len"])
            qwen = (TransformerConfig(**x["model"]) if "model" in x
                    else TransformerConfig.qwen3_8b())
            n = x["prompt_len"] + x["response_len"]
            frac = 1 - step_cost(qwen, n, 0).flops / step_cost(qwen, n, x["response_len"]).flops
            big = (f" than on Qwen3-8B, where the head is {frac:.0%} of the step FLOPs at "
                   f"{x['response_len']}-token responses (see the projection)")
        gpu.append(
            f"The small model spends {small:.0%} of its step FLOPs in the LM head (cost model; "
            f"vocabulary {st['vocab']:,} against width {st['d_model']}), so URS saves far more "
            f"time here{big}."
        )
    if setup.get("params") and st:
        dev = _model_error(out, (("time_ratio_measured", "flops_ratio_model"),))
        tail = (f"; in this run the measured time ratios were within ±{dev:.3f} of the cost "
                f"model's FLOPs ratio" if dev is not None else "")
        gpu.append(
            f"Fixed per-step costs (zeroing {setup['params'] / 1e6:.1f} M gradients, "
            f"per-micro-batch gradient accumulation of the {st['vocab']:,} × {st['d_model']} "
            f"embedding and head) do not shrink with κ{tail}."
        )
    if gpu:
        notes.append("* **Where the CPU figures differ from a GPU.** " + " ".join(gpu))
    return "\n".join(notes) + "\n"


def write_report(
    out: dict[str, Any], path: Path | str, plots_dir: Path | str, command: str = ""
) -> None:
    path = Path(path)
    plots_dir = Path(plots_dir)
    plots = _plots(out, plots_dir)
    try:
        rel = plots_dir.resolve().relative_to(path.parent.resolve()).as_posix()
    except ValueError:
        rel = plots_dir.as_posix()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_markdown(out, plots, rel, command), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print("usage: python benchmarks/report.py RESULTS.json PAGE.md [PLOTS_DIR]")
        return 2
    with open(argv[0], encoding="utf-8") as f:
        out = json.load(f)
    plots = Path(argv[2]) if len(argv) > 2 else Path(argv[1]).parent / "results"
    write_report(out, argv[1], plots, command=f"python benchmarks/report.py {' '.join(argv)}")
    return 0


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    sys.exit(main())
