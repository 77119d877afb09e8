"""Results registry of the validation suite and the report it writes (markdown + PNG plots)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["REGISTRY", "Registry", "write_report"]


@dataclass
class Registry:
    """What the tests measured, filled in as they run (one per pytest session)."""

    meta: dict[str, Any] = field(default_factory=dict)
    cases: list[dict[str, Any]] = field(default_factory=list)
    exact: list[dict[str, Any]] = field(default_factory=list)
    mc: list[dict[str, Any]] = field(default_factory=list)
    controls: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.exact or self.mc or self.controls)


REGISTRY = Registry()


def _f(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec)


def _table(header: list[str], rows: list[list[str]]) -> str:
    def row(cells: list[str]) -> str:
        # a literal "|" inside a cell (|z|, |E g - g|) would split the column: escape it
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [row(header), "|" + "|".join("---" for _ in header) + "|"]
    out += [row(r) for r in rows]
    return "\n".join(out)


def markdown(reg: Registry) -> str:
    m = reg.meta
    parts = [
        "# NAT validation report",
        "",
        f"Run: {m.get('mode', '?')} (draws per design M = {m.get('draws')}, shortcut draws "
        f"{m.get('control_draws')}, {m.get('directions')} directions per mode), device "
        f"{m.get('device')}, torch {m.get('torch')}, {m.get('seconds', 0):.0f} s for the tests "
        "that ran.",
        "",
        f"False-alarm budget: {m.get('alpha_total')} for the whole run, Bonferroni: mean tests "
        f"{m.get('alpha_mean')} over {m.get('mean_tests')} tests "
        f"(|z| > {_f(m.get('z_mean'), '.3f')}), variance tests {m.get('alpha_var')} over "
        f"{m.get('var_tests')} tests (|z| > {_f(m.get('z_var'), '.3f')}).  Exact proofs have no "
        "randomness: each compares within the tolerance (tol) listed in its table.",
        "",
    ]
    if reg.cases:
        parts += ["## Rollout batches", ""]
        parts.append(_table(
            ["policy", "batch", "rows", "lengths", "tokens", "reward", "nonzero adv."],
            [[c["policy"], c["label"], str(c["rows"]), c["lengths"], str(c["tokens"]),
              _f(c["reward"]), _f(c["nonzero_adv"])] for c in reg.cases]))
        parts.append("")
    if reg.exact:
        parts += ["## Exact proofs by enumeration (float64)", "",
                  "Every joint selection of a small batch, through the real pipeline (cropped "
                  "forward for prefix/systematic), weighted by its probability, against the "
                  "full-token gradient, for every `agg_loss` mode.  Hájek and the negative "
                  "controls: exact relative bias ‖E ĝ − g‖/‖g‖ (token-mean / "
                  "seq-mean-token-mean).", ""]
        parts.append(_table(
            ["policy", "design", "selections", "modes", "max |E ĝ − g|", "tol",
             "Hájek rel. bias", "shortcut rel. bias", "π^0.8 rel. bias"],
            [[e["policy"], e["design"], str(e["outcomes"]), str(e["modes"]),
              _f(e["max_err"], ".2e"), _f(e["tol"], ".1e"),
              " / ".join(_f(v) for v in e["hajek_bias"]),
              " / ".join(_f(v) for v in e.get("shortcut_bias", [])) or "–",
              " / ".join(_f(v) for v in e.get("pi08_bias", [])) or "–"] for e in reg.exact]))
        parts.append("")
    if reg.mc:
        parts += [
            "## Monte Carlo: bias z-scores and variance", "",
            "z(g): mean test along the mode's own full gradient direction; max |z|: over it and "
            "the random directions; z(var): sample vs exact variance (delta method with the "
            "sample 4th moment), max over directions; var/exact: mean ratio of sample to exact "
            "variance over directions.  Relative variance is exact: tr Cov(ĝ)/‖g‖² (vs full "
            "token: the full-token gradient has no sampling variance) and tr Cov(ĝ)/tr "
            "Cov(ĝ_uniform Poisson) at the same budget.", ""]
        parts.append(_table(
            ["policy", "design", "mode", "z(g)", "max |z|", "max |z(var)|", "var/exact",
             "tr Cov/‖g‖²", "vs Poisson", "kept"],
            [[r["policy"], r["design"], r["mode"], _f(r["z_g"], "+.2f"), _f(r["z_max"], ".2f"),
              _f(r["zvar_max"], ".2f"), _f(r["var_ratio"], ".3f"), _f(r["rel_var"], ".3g"),
              _f(r["vs_poisson"], ".3g"), _f(r["kept"], ".3f")] for r in reg.mc]))
        parts += ["", "## Hájek against HT (measured, not asserted)", "",
                  "Same draws; z(g) studentised along the full gradient direction; relative bias "
                  "(mean − g)·v/(g·v) along it; variance ratio = sample variance of Hájek / exact "
                  "HT variance along it; MSE ratio likewise with the squared bias added.", ""]
        parts.append(_table(
            ["policy", "design", "mode", "Hájek z(g)", "max |z|", "rel. bias", "var ratio",
             "MSE ratio"],
            [[r["policy"], r["design"], r["mode"], _f(r["hajek_z_g"], "+.1f"),
              _f(r["hajek_z_max"], ".1f"), _f(r["hajek_rel_bias"], "+.3f"),
              _f(r["hajek_var_ratio"], ".3f"), _f(r["hajek_mse_ratio"], ".3f")]
             for r in reg.mc if r["mode"] in ("token-mean", "seq-mean-token-mean")]))
        parts.append("")
    if reg.controls:
        parts += ["## Negative controls (must be rejected)", "",
                  "Studentised mean test, same threshold as the NAT tests; power = fraction of "
                  f"{reg.meta.get('power_reps')} disjoint replicates of M/"
                  f"{reg.meta.get('power_reps')} draws rejected (the smallest over modes).", ""]
        parts.append(_table(
            ["policy", "control", "design", "draws", "max |z|", "min over modes of max |z|",
             "power", "rejected"],
            [[c["policy"], c["control"], c["design"], str(c["draws"]), _f(c["z_max"], ".1f"),
              _f(c["z_min_mode"], ".1f"), _f(c["power"], ".2f"),
              "yes" if c["rejected"] else "**NO**"] for c in reg.controls]))
        parts.append("")
    if reg.checks:
        parts += ["## Pipeline identity (per draw, float64)", "",
                  "Real pipeline gradient (crop, pack, backbone, selected-position head, "
                  "`agg_loss`, backward) projected on the directions vs the coefficient formula "
                  "the Monte Carlo uses.", ""]
        parts.append(_table(
            ["policy", "design", "draws", "losses", "micro-batches", "max rel. error"],
            [[c["policy"], c["design"], str(c["draws"]), str(c["losses"]),
              str(c["micro_batches"]), _f(c["max_rel_err"], ".2e")] for c in reg.checks]))
        parts.append("")
    if m.get("plots"):
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in m["plots"]] + [""]
    return "\n".join(parts)


def _plots(reg: Registry, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names: list[str] = []
    if reg.mc:
        policies = sorted({r["policy"] for r in reg.mc})
        designs = list(dict.fromkeys(r["design"] for r in reg.mc))
        modes = list(dict.fromkeys(r["mode"] for r in reg.mc))
        zt = reg.meta.get("z_mean", 5.0)
        fig, axes = plt.subplots(1, len(policies), figsize=(6 * len(policies), 4), squeeze=False)
        for ax, pol in zip(axes[0], policies, strict=True):
            width = 0.8 / len(modes)
            for k, mode in enumerate(modes):
                ys = [next((r["z_max"] for r in reg.mc if r["policy"] == pol and
                            r["design"] == d and r["mode"] == mode), np.nan) for d in designs]
                ax.bar(np.arange(len(designs)) + k * width, ys, width, label=mode)
            ax.axhline(zt, color="k", ls="--", lw=1, label=f"threshold {zt:.2f}")
            ax.set_xticks(np.arange(len(designs)) + 0.4 - width / 2)
            ax.set_xticklabels(designs, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel("max |z| over directions")
            ax.set_title(f"{pol}: NAT bias z-scores")
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "bias_z.png", dpi=110)
        plt.close(fig)
        names.append("bias_z.png")

        def token_mean(pol: str, d: str, key: str, fn: Any = float) -> float:
            return next((fn(r[key]) for r in reg.mc if r["policy"] == pol and r["design"] == d
                         and r["mode"] == "token-mean"), np.nan)

        def paired_bars(keys: tuple[str, str], fn: Any, ylabels: tuple[str, str],
                        titles: tuple[str, str], name: str) -> None:
            """Two bar panels (one per key) of a token-mean figure per policy and design."""
            fig, axes = plt.subplots(1, 2, figsize=(12, 4))
            width = 0.8 / max(1, len(policies))
            for k, pol in enumerate(policies):
                for ax, key, f in zip(axes, keys, fn, strict=True):
                    ys = [token_mean(pol, d, key, f) for d in designs]
                    ax.bar(np.arange(len(designs)) + k * width, ys, width, label=pol)
            for ax, yl, title in zip(axes, ylabels, titles, strict=True):
                ax.set_ylabel(yl)
                ax.set_xticks(np.arange(len(designs)) + width * (len(policies) - 1) / 2)
                ax.set_xticklabels(designs, rotation=30, ha="right", fontsize=8)
                ax.legend(fontsize=8)
                ax.set_title(title)
            axes[1].axhline(1.0, color="k", lw=1)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            names.append(name)

        paired_bars(("rel_var", "vs_poisson"), (float, float),
                    ("tr Cov(ĝ) / ‖g‖²  (token-mean)", "tr Cov(ĝ) / tr Cov(uniform Poisson)"),
                    ("exact variance relative to the full-token gradient",
                     "exact variance relative to uniform Poisson, same budget"),
                    "variance.png")
        paired_bars(("hajek_rel_bias", "hajek_mse_ratio"), (abs, float),
                    ("|relative bias| of Hájek along g", "MSE(Hájek) / Var(HT) along g"),
                    ("Hájek bias (token-mean)", "Hájek MSE vs HT variance (token-mean)"),
                    "hajek.png")

        fig, ax = plt.subplots(figsize=(5, 4))
        ratios = [r["var_ratio"] for r in reg.mc]
        ax.hist(ratios, bins=30)
        ax.axvline(1.0, color="k", lw=1)
        ax.set_xlabel("sample variance / exact design variance (mean over directions)")
        ax.set_ylabel("design × mode × policy")
        fig.tight_layout()
        fig.savefig(out / "variance_check.png", dpi=110)
        plt.close(fig)
        names.append("variance_check.png")
    if reg.controls:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [f"{c['policy']}\n{c['control']}\n{c['design']}" for c in reg.controls]
        ax.bar(range(len(labels)), [c["z_max"] for c in reg.controls], color="tab:red")
        ax.axhline(reg.meta.get("z_mean", 5.0), color="k", ls="--", lw=1, label="threshold")
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=6, rotation=90)
        ax.set_ylabel("max |z| (studentised)")
        ax.set_title("negative controls")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "controls.png", dpi=110)
        plt.close(fig)
        names.append("controls.png")
    return names


def write_report(directory: Path | str, reg: Registry = REGISTRY) -> Path:
    """Write ``report.md``, ``results.json`` and the PNG plots into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    try:
        reg.meta["plots"] = _plots(reg, out)
    except Exception as exc:  # plots are a convenience; never lose the tables
        reg.meta["plots"] = []
        reg.meta["plot_error"] = repr(exc)
    (out / "report.md").write_text(markdown(reg) + "\n")
    payload = {k: getattr(reg, k) for k in ("meta", "cases", "exact", "mc", "controls", "checks")}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return out / "report.md"
