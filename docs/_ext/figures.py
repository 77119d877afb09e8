"""Variance-vs-budget figure and table for the "Choosing a design and a budget" guide.

Run by the docs extension (``nat_docs.py``) on every build (about a second); also runnable by
hand::

    python docs/_ext/figures.py [OUTDIR]      # default OUTDIR: docs/_generated

Writes ``variance_vs_budget.png`` (two panels: exact relative design variance of the
Horvitz–Thompson gradient, and the largest HT weight, against the keep fraction) and
``compare_table.md`` (the numbers at every budget) using
:func:`nat_estimators.cli.gradient_profile` and :func:`nat_estimators.cli.compare_designs` — the
same computation as ``nat-estimators compare``.
"""

from __future__ import annotations

import sys
from pathlib import Path

BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
PROFILE = {"rows": 8, "length": 2048, "dim": 8, "seed": 0}


def _label(name: str) -> str:
    return name.split(" (full_keep")[0] if name.startswith("prefix") else name


def compute() -> dict[str, dict[str, list[float]]]:
    """``{design: {"relative_variance": [...], "max_weight": [...], "keep": [...]}}`` per budget."""
    from nat_estimators.cli import compare_designs, gradient_profile

    y, mask = gradient_profile(PROFILE["rows"], PROFILE["length"], PROFILE["dim"],
                               seed=PROFILE["seed"])
    out: dict[str, dict[str, list[float]]] = {}
    for b in BUDGETS:
        for r in compare_designs(b, y, mask):
            d = out.setdefault(_label(r.design),
                               {"relative_variance": [], "max_weight": [], "keep": []})
            d["relative_variance"].append(r.relative_variance)
            d["max_weight"].append(r.max_weight)
            d["keep"].append(r.keep_fraction)
    return out


def write_table(res: dict[str, dict[str, list[float]]], path: Path) -> None:
    head = "| design | " + " | ".join(f"κ = {b:g}" for b in BUDGETS) + " |"
    sep = "|---|" + "---:|" * len(BUDGETS)
    lines = [head, sep]
    for name, d in res.items():
        cells = [f"{v:.3g} (w ≤ {w:.3g})"
                 for v, w in zip(d["relative_variance"], d["max_weight"], strict=True)]
        label = name.replace("|", "\\|")  # a pipe would split the table cell
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_figure(res: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, d in res.items():
        ax1.plot(BUDGETS, d["relative_variance"], marker="o", label=name)
        ax2.plot(BUDGETS, d["max_weight"], marker="o", label=name)
    ax1.set_yscale("log")
    ax1.set_xlabel("keep fraction κ")
    ax1.set_ylabel(r"$\sum_c V_c(\hat Y)\, /\, \|Y\|^2$")
    ax1.set_title("Exact variance of the HT gradient")
    ax2.set_yscale("log")
    ax2.set_xlabel("keep fraction κ")
    ax2.set_ylabel(r"largest weight $\max_k 1/\pi_k$")
    ax2.set_title("Largest Horvitz–Thompson weight")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(outdir: Path | str) -> None:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    res = compute()
    write_table(res, outdir / "compare_table.md")
    write_figure(res, outdir / "variance_vs_budget.png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "_generated")
