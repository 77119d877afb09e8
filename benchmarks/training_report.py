"""Results page of the training benchmark, generated from one run's JSON (every number from it).

``python benchmarks/training_report.py RESULT.json PAGE.md`` (or ``benchmarks/training.py --page``)
writes ``PAGE.md`` and its figures ``<page stem>_*.png`` beside it.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

__all__ = ["verdicts", "write_page"]

#: Goal of the reproduction: prefix cutting at 0.5 equivalent in final reward (TOST, 5%) at
#: <= this fwd+bwd time ratio.
TIME_GOAL = 0.6
ALPHA = 0.05


def _curves(result: dict[str, Any], arm: str, key: str) -> list[list[float]]:
    return [s["arms"][arm][key] for s in result["seeds"]]


def _mean_band(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    from benchmarks.training import mean_ci95

    cols = list(zip(*rows, strict=True))
    stats = [mean_ci95(c) for c in cols]
    return [m for m, _ in stats], [0.0 if math.isnan(h) else h for _, h in stats]


def _figures(result: dict[str, Any], stem: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = result["setup"]["arms"]
    s = result["summary"]
    colours = dict(zip(arms, plt.get_cmap("tab10").colors, strict=False))
    styles = {a: ("--" if a.split("@")[0] in ("shortcut", "hajek", "truncate") else "-")
              for a in arms}
    files = {}

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for a in arms:
        m, h = _mean_band(_curves(result, a, "reward"))
        x = list(range(1, len(m) + 1))
        ax1.plot(x, m, styles[a], color=colours[a], label=a, lw=1.4)
        # rewards lie in [0, 1]: the band is clipped there
        ax1.fill_between(x, [max(0.0, u - v) for u, v in zip(m, h, strict=True)],
                         [min(1.0, u + v) for u, v in zip(m, h, strict=True)],
                         color=colours[a], alpha=0.12)
        cum = [[sum(r[: i + 1]) for i in range(len(r))] for r in _curves(result, a, "fwd_bwd_s")]
        tm = [statistics.fmean(c) for c in zip(*cum, strict=True)]
        ax2.plot(tm, m, styles[a], color=colours[a], label=a, lw=1.4)
    for ax in (ax1, ax2):
        ax.axhline(result["setup"]["target"], color="grey", lw=0.8, ls=":")
        ax.set_ylabel("rollout reward (mean over seeds)")
        ax.grid(alpha=0.3)
    ax1.set_xlabel("GRPO step")
    ax1.set_title("reward against step (band: 95% CI over seeds)")
    ax2.set_xlabel("cumulative fwd+bwd time of the update (s)")
    ax2.set_title("reward against measured update time")
    ax2.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    files["curves"] = f"{stem.name}_curves.png"
    fig.savefig(stem.parent / files["curves"], dpi=110)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    y = range(len(arms))
    full = s["full/final_reward"]
    margin = result["setup"]["margin"]
    ax1.axvspan(full - margin, full + margin, color="grey", alpha=0.15,
                label=f"full ± margin {margin}")
    for i, a in enumerate(arms):
        ci = s[f"{a}/final_reward_ci95"]
        ax1.errorbar(s[f"{a}/final_reward"], i, xerr=0 if math.isnan(ci) else ci, fmt="o",
                     color=colours[a])
    ax1.axvline(result["warm_start_reward_mean"], color="black", lw=0.8, ls=":",
                label="warm start")
    ax1.set_yticks(list(y), arms)
    ax1.invert_yaxis()
    ax1.set_xlim(0.0, 1.0)
    ax1.set_xlabel("final reward (evaluation set), mean ± 95% CI (clipped to [0, 1])")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ratios = [s[f"{a}/variance_ratio"] for a in arms]
    bias = [s[f"{a}/bias_ratio"] for a in arms]
    ax2.barh(list(y), ratios, color=[colours[a] for a in arms], label="NAT-added variance")
    ax2.barh(list(y), bias, left=ratios, color="none", edgecolor="black", hatch="//",
             label="squared bias")
    ax2.set_yticks(list(y), arms)
    ax2.invert_yaxis()
    ax2.set_xlabel("÷ rollout variance of the full-token gradient (projected)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    files["final"] = f"{stem.name}_final.png"
    fig.savefig(stem.parent / files["final"], dpi=110)
    plt.close(fig)
    return files


def verdicts(result: dict[str, Any]) -> dict[str, Any]:
    """Plain outcomes per arm against ``full`` (equivalent by TOST, different by the paired t
    test, or neither), and the goal for ``prefix@0.5``."""
    s = result["summary"]
    out: dict[str, Any] = {}
    for a in result["setup"]["arms"]:
        if a == "full":
            continue
        if s[f"{a}/tost_p"] < ALPHA:
            out[a] = "equivalent to full"
        elif s.get(f"{a}/diff_p", float("nan")) < ALPHA:
            out[a] = ("worse than full" if s[f"{a}/final_reward_diff"] < 0
                      else "better than full")
        else:
            out[a] = "inconclusive (neither shown equivalent nor shown different)"
    p, t = s.get("prefix@0.5/tost_p"), s.get("prefix@0.5/time_ratio")
    if p is not None and t is not None:
        out["goal"] = bool(p < ALPHA and t <= TIME_GOAL)
    return out


def _budget_section(result: dict[str, Any], files: dict[str, str]) -> list[str]:
    """The budget study's outcome: the optimal cut law against RPC at equal expected tokens, and
    the controlled keep fraction (its variance ratio against epsilon, tokens to target)."""
    from benchmarks.training import ARM_BY_NAME, CONTROLLER_BOUNDS, FULL_KEEP

    st, s, n = result["setup"], result["summary"], len(result["seeds"])
    arms = st["arms"]
    L = ["## Budgets\n"]
    opt, rpc = "prefix_optimal@0.5", "prefix@0.5"
    if opt in arms and rpc in arms:
        L.append(
            f"* **Variance-optimal cut law** (`{opt}`: `Prefix.optimal` with one token budget "
            "for the batch, second moments from the proxy "
            "(c·A·(1 − p))² of an old-policy pass): variance ratio "
            f"{_f(s[opt + '/variance_ratio'])} against {_f(s[rpc + '/variance_ratio'])} for the "
            f"paper's prefix cutting at the same expected tokens (loss-token ratios "
            f"{_f(s[opt + '/token_ratio'])} and {_f(s[rpc + '/token_ratio'])}): "
            f"**{_f(s[opt + '/variance_ratio'] / s[rpc + '/variance_ratio'], 3)}×** the "
            f"NAT-added variance, at fwd+bwd time ratio {_f(s[opt + '/time_ratio'])} "
            f"(RPC {_f(s[rpc + '/time_ratio'])}). Final reward {_f(s[opt + '/final_reward'])} "
            f"against {_f(s[rpc + '/final_reward'])} (RPC) and {_f(s['full/final_reward'])} "
            f"(full).")
    for a in arms:
        arm = ARM_BY_NAME.get(a)
        if arm is None or arm.epsilon is None:
            continue
        eps = arm.epsilon
        seeds = ", ".join(_f(r, 2) for r in s[a + "/controller_seed_ratios"])
        L.append(
            f"* **Keep fraction chosen by the data** (`{a}`: `KappaController`, design "
            f"`{arm.design}` with a batch budget, ε = {eps}, κ in {list(CONTROLLER_BOUNDS)}, "
            f"full_keep {FULL_KEEP}; calibration refitted by `observe` every "
            f"{st['observe_every']} steps from the measured ratio): mean κ "
            f"{_f(s[a + '/keep_mean'])}, loss-token ratio {_f(s[a + '/token_ratio'])}. "
            f"Realised NAT-added / rollout variance pooled over each run: {seeds} "
            f"(ε = {eps}); worst seed off by "
            f"**{_f(100 * s[a + '/controller_variance_ratio_error'], 0)}%** "
            f"(`controller_variance_ratio_error`), all seeds pooled "
            f"{_f(s[a + '/controller_pooled_ratio'])}. Per observed step the deviation has "
            f"median {_f(100 * s[a + '/controller_step_error_median'], 0)}% and maximum "
            f"{_f(100 * s[a + '/controller_step_error_max'], 0)}% over "
            f"{s[a + '/controller_observations']} observations — a single step's ratio is "
            "measured with a relative standard error of about "
            f"{_f(100 * s[a + '/controller_measurement_rse'], 0)}% (its rollout variance comes "
            f"from {st['prompts']} prompt groups), so per-step deviations are dominated by "
            f"measurement noise. κ hit a bound {s[a + '/controller_bound_hits']} times; final "
            f"calibration {_f(s[a + '/controller_final_calibration'])}. Its fwd+bwd time "
            f"ratio {_f(s[a + '/time_ratio'])} includes solving for κ each step"
            + ("" if math.isnan(s[a + "/control_time_share"]) else
               f" ({_f(100 * s[a + '/control_time_share'], 0)}% of the arm's fwd+bwd time "
               "on this tiny policy: 5–8 design solves over the batch per step, each a "
               "pooled isotonic fit per row and a budget bisection, a cost that does not grow "
               "with the model)") + ".")
        L.append(
            f"* **Tokens to the target reward {st['target']}** (loss tokens summed until the "
            "5-step moving average of the rollout reward first reaches it, mean over the seeds "
            "that reach it): " + "; ".join(
                f"`{b}` {_f(s[b + '/loss_tokens_to_target'], 0)} "
                f"({s[b + '/reached_target']}/{n} seeds)" for b in arms) + ".")
    L.append("")
    if "controller" in files:
        L.append(f"![controller]({files['controller']})\n")
    return L


def _controller_figure(result: dict[str, Any], stem: Path) -> str | None:
    """Per observed step, mean over seeds: the chosen kappa and the realised ratio over eps."""
    from benchmarks.training import ARM_BY_NAME

    ctrl = [a for a in result["setup"]["arms"]
            if a in ARM_BY_NAME and ARM_BY_NAME[a].epsilon is not None]
    if not ctrl:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8))
    for a in ctrl:
        eps = ARM_BY_NAME[a].epsilon
        assert eps is not None
        for sd in result["seeds"]:
            obs = sd["arms"][a]["controller"]
            ax1.plot([o["step"] + 1 for o in obs], [o["kappa"] for o in obs], lw=1, alpha=0.7,
                     label=f"seed {sd['seed']}")
            ax2.plot([o["step"] + 1 for o in obs], [o["realised"] / eps for o in obs], "o-",
                     lw=0.8, ms=3, alpha=0.7)
        ax2.axhline(1.0, color="black", lw=1)
        ax2.axhspan(0.8, 1.2, color="grey", alpha=0.15, label="±20%")
    ax1.set_xlabel("GRPO step")
    ax1.set_ylabel("κ chosen")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    ax2.set_xlabel("GRPO step")
    ax2.set_ylabel("realised ratio / ε")
    ax2.set_yscale("log")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    ax2.set_title("measured NAT-added / rollout variance per observed step")
    fig.tight_layout()
    name = f"{stem.name}_controller.png"
    fig.savefig(stem.parent / name, dpi=110)
    plt.close(fig)
    return name


def _f(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def write_page(result: dict[str, Any], page: Path | str) -> None:
    """Write the results page and its figures."""
    from benchmarks.training import ARM_BY_NAME, summarise

    page = Path(page)
    page.parent.mkdir(parents=True, exist_ok=True)
    result = {**result, "summary": summarise(result)}
    st = result["setup"]
    budget = any(ARM_BY_NAME[a].needs_proxy for a in st["arms"] if a in ARM_BY_NAME)
    flag = " --budget" if budget else ""
    stem = "training_budget" if budget else "training"
    s = result["summary"]
    seeds = result["seeds"]
    result = {**result, "warm_start_reward_mean": statistics.fmean(
        x["warm_start_reward"] for x in seeds)}
    files = _figures(result, page.with_suffix(""))
    ctrl_fig = _controller_figure(result, page.with_suffix(""))
    if ctrl_fig is not None:
        files["controller"] = ctrl_fig
    v = verdicts(result)
    n = len(seeds)
    quick = st["steps"] < 30 or n < 5
    m = result["machine"]
    L = []
    L.append("# Token budgets chosen by the data: GRPO on a long-answer task\n" if budget else
             "# Training with token subsampling: GRPO on a long-answer task\n")
    if quick:
        L.append("```{note}\nThis page comes from a **quick run** "
                 f"({n} seeds, {st['steps']} steps, answers of {st['min_len']}–{st['max_len']} "
                 "tokens): a smoke test of the pipeline, too small for the equivalence test to "
                 f"have power. The full run is `python benchmarks/training.py{flag} --json "
                 f"benchmarks/results/{stem}.json --page docs/results/{stem}.md`.\n```\n")
    L.append(
        f"Generated by `{result.get('command', 'python benchmarks/training.py')}` on "
        f"{m['date']} ({result['wall_s'] / 60:.1f} min wall, device `{m['device']}`, torch "
        f"{m['torch']}, {m['workers']} worker process(es) × 1 thread on {m['cpu_count']} cores; "
        f"1-minute load average {_f(m['loadavg_1min_start'], 2)} at start, "
        f"{_f(m['loadavg_1min_end'], 2)} at end — other jobs shared the machine). Every number "
        "and figure below comes from that run; `benchmarks/training.py` documents the method.\n")
    L.append("## Setup\n")
    L.append(
        f"* **Task**: modular walk (`nat_estimators.demo.tasks.ModularWalk`), answers of "
        f"{st['min_len']}–{st['max_len']} tokens, reward = fraction of steps that follow the "
        "rule (depends on every token).\n"
        f"* **Policy**: `TinyCausalLM` (d_model {st['d_model']}, {st['n_layers']} layers, "
        f"{st['n_heads']} heads), warm-started by {st['warm_steps']} supervised steps on noisy "
        f"demonstrations: mean evaluation reward {_f(result['warm_start_reward_mean'])} "
        "at the start of GRPO.\n"
        f"* **GRPO**: {st['steps']} steps of {st['prompts']} prompts × {st['group']} answers, "
        f"on-policy, `seq-mean-token-mean`, Adam lr {st['lr']}, gradient clipping "
        f"{st['max_grad_norm']}, micro-batches of ≤ {st['token_budget']} tokens; {n} seeds "
        "paired across arms (same warm start, prompts and sampling seeds).\n"
        f"* **Stated before the run**: equivalence margin ±{st['margin']} on the final reward "
        f"(TOST against `full`, paired over seeds, level {ALPHA}); target reward "
        f"{st['target']} (5-step moving average of the rollout reward) for time-to-target; goal "
        f"for `prefix@0.5`: equivalent at ≤ {TIME_GOAL}× the full-token fwd+bwd time.\n")
    L.append("## Outcome\n")
    p5 = "prefix@0.5"
    if p5 in st["arms"]:
        L.append(
            f"* `prefix@0.5`: final reward {_f(s[p5 + '/final_reward'])} ± "
            f"{_f(s[p5 + '/final_reward_ci95'])} against {_f(s['full/final_reward'])} ± "
            f"{_f(s['full/final_reward_ci95'])} for `full` (paired difference "
            f"{_f(s[p5 + '/final_reward_diff'])} ± {_f(s[p5 + '/final_reward_diff_ci95'])}); "
            f"TOST p = {_f(s[p5 + '/tost_p'])} at margin ±{st['margin']} → **{v[p5]}**; "
            f"variance ratio {_f(s[p5 + '/variance_ratio'])}; fwd+bwd time ratio "
            f"{_f(s[p5 + '/time_ratio'])} with {_f(s[p5 + '/token_ratio'])} of the loss tokens. "
            f"Goal (equivalent and ≤ {TIME_GOAL}× time): **{'met' if v['goal'] else 'not met'}**."
            "\n")
    for a in st["arms"]:
        if a in ("full", p5):
            continue
        L.append(f"* `{a}`: **{v[a]}** — final reward {_f(s[a + '/final_reward'])} ± "
                 f"{_f(s[a + '/final_reward_ci95'])}, paired difference "
                 f"{_f(s[a + '/final_reward_diff'])} ± {_f(s[a + '/final_reward_diff_ci95'])} "
                 f"(TOST p = {_f(s[a + '/tost_p'])}, difference p = {_f(s[a + '/diff_p'])}); "
                 f"time ratio {_f(s[a + '/time_ratio'])}; variance ratio "
                 f"{_f(s[a + '/variance_ratio'])}, squared-bias ratio "
                 f"{_f(s[a + '/bias_ratio'])}.")
    L.append("")
    ranked = sorted((a for a in st["arms"] if a != "full" and not a.startswith(
        ("shortcut", "hajek", "truncate"))), key=lambda a: s[a + "/variance_ratio"])
    L.append(
        "What explains it: the unbiased arms differ only in the gradient noise their selection "
        "adds. Ranked by the variance ratio ρ (NAT-added over rollout variance; the arm's update "
        "is as noisy as the full-token update on a batch 1 + ρ times smaller): " + ", ".join(
            f"`{a}` {_f(s[a + '/variance_ratio'], 2)}" for a in ranked) + ". If the per-token "
        "score terms of a response were uncorrelated, Poisson sampling at κ would add "
        "(1 − κ)/κ of the rollout variance (1 at κ = 0.5); prefix cutting adds more because "
        "its late tokens carry weights up to 1/`full_keep` and their inclusions are nested. "
        "The controls add bias instead (squared-bias ratio in the table), which more steps do "
        "not remove.\n")
    if budget:
        L.extend(_budget_section(result, files))
    L.append(f"![reward curves]({files['curves']})\n")
    L.append(f"![final reward and variance ratio]({files['final']})\n")
    L.append("## Per arm\n")
    L.append("| arm | final reward | ±95% CI | TOST p | fwd+bwd time ratio | loss-token ratio "
             "| forward-token ratio | peak-memory ratio | variance ratio | squared-bias ratio "
             "| seeds at target | steps to target | fwd+bwd s to target |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for a in st["arms"]:
        L.append(
            f"| `{a}` | {_f(s[a + '/final_reward'])} | {_f(s[a + '/final_reward_ci95'])} | "
            f"{'reference' if a == 'full' else _f(s[a + '/tost_p'])} | "
            f"{_f(s[a + '/time_ratio'])} | "
            f"{_f(s[a + '/token_ratio'])} | {_f(s[a + '/forward_token_ratio'])} | "
            f"{_f(s[a + '/peak_memory_ratio'])} | {_f(s[a + '/variance_ratio'])} | "
            f"{_f(s[a + '/bias_ratio'])} | {s[a + '/reached_target']}/{n} | "
            f"{_f(s[a + '/steps_to_target'], 1)} | {_f(s[a + '/time_to_target_s'], 2)} |")
    L.append("")
    L.append(
        "How to read it. *Time ratio*: median over steps and seeds of the arm's fwd+bwd time "
        "over `full`'s at the same step (the arms run in lockstep). *Variance ratio*: NAT-added "
        "variance of the gradient projected on "
        f"{st['directions']} fixed random directions, over the rollout (between-group) variance "
        "the full-token gradient already has; an arm with ratio ρ behaves like the full-token "
        "update on a batch 1 + ρ times smaller. *Squared-bias ratio*: the controls' systematic "
        "error on the same scale (0 for the HT arms by construction). The rollouts, identical "
        "in cost for every arm, took a median "
        f"{_f(statistics.median(x for sd in seeds for x in sd['arms']['full']['rollout_s']), 3)}"
        " s per step and are not in the time ratios.\n")
    page.write_text("\n".join(L) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: python benchmarks/training_report.py RESULT.json PAGE.md")
    write_page(json.loads(Path(args[0]).read_text()), args[1])


if __name__ == "__main__":
    main()
