r"""The ``nat-estimators`` command (also ``python -m nat_estimators``).

Sub-commands
------------
``compare``
    Compare the sampling designs at a token budget on a gradient profile: tokens kept, largest
    Horvitz–Thompson weight, exact design variance relative to the full-token answer and to
    uniform Poisson sampling, expected step cost (:mod:`nat_estimators.costmodel`) and the
    variance x cost product.  The variance-optimal designs (``Prefix.optimal``,
    ``Poisson.optimal``, ``Systematic.optimal``) are built on the profile itself (a pilot).
    ``--target-variance`` / ``--target-cost`` recommend the cheapest design and budget reaching a
    variance, or the lowest-variance one within a cost (:func:`recommend`).  Prints a table;
    ``--plot`` writes a PNG, ``--json`` the numbers.
``validate``
    Run the Monte Carlo unbiasedness suite (:mod:`nat_estimators.validation`, shipped with the
    package together with its trained policies) and write a report folder.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import Poisson, Prefix, Systematic
from ._design import Design
from .allocation import prefix_profile
from .costmodel import TransformerConfig, expected_step_flops
from .variance import design_variance

__all__ = ["Recommendation", "compare_designs", "gradient_profile", "main", "recommend"]

#: Keep fractions :func:`recommend` searches.
BUDGETS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def gradient_profile(
    rows: int = 8, length: int = 2048, dim: int = 8, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    r"""A synthetic per-token gradient profile of ragged rollouts (deterministic given ``seed``).

    Each row has a random length in ``[length/4, length]``; its per-token gradient vectors follow
    a smooth AR(1) process along the sequence (:math:`\rho = 0.98`) plus white noise, scaled by
    the row's advantage sign and a slowly varying magnitude — the structure that makes ordered
    (systematic) designs beat independent ones.

    Returns
    -------
    y : ndarray, shape (rows, length, dim)
        Gradient contributions (0 at padding).
    mask : ndarray of bool, shape (rows, length)
        Eligible (response) tokens, right padded.
    """
    rng = np.random.default_rng(seed)
    lens = rng.integers(max(1, length // 4), length + 1, size=rows)
    mask = np.arange(length)[None, :] < lens[:, None]
    rho = 0.98
    eps = rng.normal(size=(rows, length, dim))
    # AR(1) by a scan over time (vectorised over rows and dims)
    z = np.empty_like(eps)
    z[:, 0] = eps[:, 0]
    for t in range(1, length):
        z[:, t] = rho * z[:, t - 1] + math.sqrt(1 - rho**2) * eps[:, t]
    adv = rng.choice([-1.0, 1.0], size=(rows, 1, 1)) * rng.uniform(0.5, 1.5, size=(rows, 1, 1))
    frac = np.arange(length)[None, :, None] / length
    scale = 1.0 + 0.5 * np.sin(2 * np.pi * frac)
    y = adv * scale * (z + 0.3 * rng.normal(size=(rows, length, dim)))
    return np.where(mask[..., None], y, 0.0), mask


@dataclass(frozen=True)
class DesignComparison:
    """One design's figures at a budget (row-averaged)."""

    design: str
    keep_fraction: float
    max_weight: float
    relative_variance: float
    #: ``None`` where uniform Poisson's variance is exactly 0 (keep 1: every design keeps every
    #: token, so every variance is 0 and the ratio is undefined).
    variance_vs_poisson: float | None
    relative_cost: float = float("nan")
    variance_x_cost: float = float("nan")


def _designs(budget: float, mask: np.ndarray, y: np.ndarray) -> dict[str, Design]:
    """Every registered design at ``budget`` (and its size-proportional variant where it has
    one), uniform Poisson sampling (the paper's URS, the baseline) first."""
    norms = np.linalg.norm(y, axis=-1) + 1e-3
    count = mask.sum(-1).astype(float)
    options = {"full_keep": min(0.05, budget / 2)}  # prefix: the full-keep atom's floor
    out: dict[str, Design] = {"poisson (uniform, URS)": Poisson.from_fraction(budget, mask=mask)}
    for name, cls in Design.registered().items():
        if not hasattr(cls, "from_fraction"):
            continue
        accepted = inspect.signature(cls.from_fraction).parameters
        opts = {k: v for k, v in options.items() if k in accepted}
        label = f"{name} ({', '.join(f'{k}={v:g}' for k, v in opts.items()) or 'uniform'})"
        if name != Poisson.name:
            out[label] = cls.from_fraction(budget, mask=mask, **opts)
        if hasattr(cls, "proportional"):
            out[f"{name} (pi ~ |g|)"] = cls.proportional(norms, budget * count, mask=mask)
    # the variance-optimal designs on the profile itself (a pilot): exact d_t, ||g_t||^2
    floor = options["full_keep"]
    out["prefix (optimal)"] = Prefix.optimal(prefix_profile(y, mask=mask), budget, mask=mask,
                                             full_keep=floor)
    out["poisson (optimal)"] = Poisson.optimal(norms**2, budget, mask=mask)
    out["systematic (optimal)"] = Systematic.optimal(norms**2, budget, mask=mask)
    return out


def compare_designs(
    budget: float,
    y: np.ndarray,
    mask: np.ndarray,
    *,
    config: TransformerConfig | None = None,
    prompt_len: int = 512,
) -> list[DesignComparison]:
    r"""Exact figures of every design at keep fraction ``budget`` for per-token values ``y``.

    ``relative_variance`` is :math:`\sum_c V_c(\hat Y) / \lVert Y\rVert^2` summed over rows
    (noise-to-signal of the estimated gradient); ``variance_vs_poisson`` divides the design
    variance by uniform Poisson's at the same budget; ``relative_cost`` is the expected step
    FLOPs over the full-token step's (:func:`~nat_estimators.costmodel.expected_step_flops`,
    model ``config``, default Qwen3-8B, prompts of ``prompt_len`` tokens) — prefix cutting saves
    the body and the head of the dropped tokens, per-position designs the head only — and
    ``variance_x_cost`` their product (variance per unit of compute).

    Examples
    --------
    >>> from nat_estimators.cli import compare_designs, gradient_profile
    >>> y, mask = gradient_profile(rows=2, length=64, dim=2)
    >>> res = compare_designs(0.5, y, mask)
    >>> res[0].design, round(res[0].variance_vs_poisson, 6)
    ('poisson (uniform, URS)', 1.0)
    """
    cfg = TransformerConfig.qwen3_8b() if config is None else config
    out = []
    ytot = y.sum(axis=1)
    signal = float((ytot**2).sum())
    base = None
    full = None
    for name, d in _designs(budget, mask, y).items():
        # every pi = 1: the sample is the whole population, V = 0 exactly (no rounding residue)
        certain = bool(np.all(np.where(mask, d.inclusion_probabilities(), 1.0) == 1.0))
        v = 0.0 if certain else float(np.sum(design_variance(y, d, axis=1)))
        if base is None:
            base = v
            full = expected_step_flops(cfg, d, prompt_len=prompt_len, full=True)
        assert full is not None
        kf = float(d.expected_size().sum() / mask.sum())
        cost = expected_step_flops(cfg, d, prompt_len=prompt_len) / full
        out.append(DesignComparison(name, kf, float(np.max(d.max_weight())), v / signal,
                                    v / base if base > 0 else None, cost,
                                    v / signal * cost))
    return out


@dataclass(frozen=True)
class Recommendation:
    """The design and keep fraction :func:`recommend` picked, with its figures."""

    design: str
    keep: float
    relative_variance: float
    relative_cost: float
    target: str


def recommend(
    y: np.ndarray,
    mask: np.ndarray,
    *,
    target_variance: float | None = None,
    target_cost: float | None = None,
    budgets: Sequence[float] = BUDGETS,
    config: TransformerConfig | None = None,
    prompt_len: int = 512,
) -> Recommendation:
    r"""The cheapest (design, keep) whose variance is at most ``target_variance``, or the
    lowest-variance one whose relative cost is at most ``target_cost`` (exactly one target).

    Variances and costs are those of :func:`compare_designs` over the keep fractions
    ``budgets`` (a grid: the answer is the best grid point).

    Raises
    ------
    ValueError
        Both or neither target given, a non-positive target, or no grid point meeting it (the
        message gives the closest one).

    Examples
    --------
    >>> from nat_estimators.cli import gradient_profile, recommend
    >>> y, mask = gradient_profile(rows=2, length=64, dim=2)
    >>> r = recommend(y, mask, target_variance=0.05)
    >>> r.relative_variance <= 0.05
    True
    """
    if (target_variance is None) == (target_cost is None):
        raise ValueError("give exactly one of target_variance and target_cost")
    target = target_variance if target_variance is not None else target_cost
    assert target is not None
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"the target must be a positive number, got {target}")
    grid = [(b, r) for b in budgets
            for r in compare_designs(b, y, mask, config=config, prompt_len=prompt_len)]
    # the target bounds one figure; among the grid points within it, the other is minimised
    if target_variance is not None:
        bound, objective = "relative_variance", "relative_cost"
        label = f"relative variance <= {target:g}"
        missed = ("no design reaches relative variance {target:g} on keep fractions {budgets}; "
                  "the lowest is {best:.4g} ({design} at keep {keep:g}); raise the target or "
                  "allow larger keep fractions")
    else:
        bound, objective = "relative_cost", "relative_variance"
        label = f"relative cost <= {target:g}"
        missed = ("no design costs at most {target:g} of the full-token step on keep fractions "
                  "{budgets}; the cheapest is {best:.4g} ({design} at keep {keep:g}); raise the "
                  "target or allow smaller keep fractions")
    ok = [(b, r) for b, r in grid if getattr(r, bound) <= target]
    if not ok:
        b, r = min(grid, key=lambda g: getattr(g[1], bound))
        raise ValueError(missed.format(target=target, budgets=tuple(budgets),
                                       best=getattr(r, bound), design=r.design, keep=b))
    b, r = min(ok, key=lambda g: (getattr(g[1], objective), getattr(g[1], bound)))
    return Recommendation(r.design, b, r.relative_variance, r.relative_cost, label)


def _argument(convert: Any, ok: Any, kind: str, bad: str) -> Any:
    """An argparse ``type``: ``convert`` the text (else "expected <kind>"), then check ``ok``."""

    def parse(s: str) -> Any:
        try:
            v = convert(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {s!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{bad}, got {v}")
        return v

    return parse


_fraction = _argument(float, lambda v: math.isfinite(v) and 0 < v <= 1, "a number in (0, 1]",
                      "budget must be a keep fraction in (0, 1]")
_positive_int = _argument(int, lambda v: v >= 1, "a positive integer",
                          "expected a positive integer")
_seed = _argument(int, lambda v: v >= 0, "a non-negative integer",
                  "the seed must be a non-negative integer (numpy's generators take seeds >= 0)")


def _image_formats() -> dict[str, str]:
    """File suffixes matplotlib can write (``{}`` when matplotlib is missing)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return {}
    return dict(FigureCanvasBase.get_supported_filetypes())


def _output_file(kind: str, suffixes: Any = None) -> Any:
    """An argparse ``type`` for a file to write: its folder must exist, and with ``suffixes``
    (a callable giving the allowed suffixes) its suffix must be one of them."""

    def parse(s: str) -> Path:
        path = Path(s)
        folder = path.parent
        if not folder.is_dir():
            raise argparse.ArgumentTypeError(
                f"the folder {str(folder)!r} of {kind} {s!r} does not exist; create it first "
                f"(mkdir -p {folder}) or write somewhere else"
            )
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{s!r} is a folder; give a file name for {kind}")
        if not os.access(folder, os.W_OK):
            raise argparse.ArgumentTypeError(
                f"the folder {str(folder)!r} of {kind} {s!r} is not writable; write somewhere else"
            )
        if suffixes is not None:
            allowed = suffixes()
            if allowed and path.suffix.lower().lstrip(".") not in allowed:
                names = ", ".join(f".{k}" for k in sorted(allowed))
                raise argparse.ArgumentTypeError(
                    f"{s!r} " + (f"has suffix {path.suffix!r}, which is" if path.suffix else
                                 "has no suffix, so it is") + " not an image format matplotlib "
                    f"writes; end the file name with one of {names} (e.g. cmp.png)"
                )
        return path

    return parse


#: Keep fractions of the ``compare --plot`` curves (the chosen budget is added).
PLOT_BUDGETS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")
_LINESTYLES = ("-", "--", "-.", ":")


def comparison_figure(y: np.ndarray, mask: np.ndarray, budget: float, *, title: str) -> Any:
    r"""The ``compare --plot`` figure: relative variance against keep fraction, one line per design.

    Every design of :func:`compare_designs` at the keep fractions :data:`PLOT_BUDGETS` and at
    ``budget`` (marked by a vertical line and enlarged points).  Lines that coincide stay
    visible: each design has its own marker and line style, markers are hollow and shrink in
    drawing order, so a later line never covers an earlier one.  The legend keeps each design's
    options (prefix cutting's ``full_keep``).  A variance of exactly 0 (keep 1) has no place on
    the log axis and is left out, which the figure says.

    Returns
    -------
    matplotlib.figure.Figure
        Not attached to pyplot (no global state); ``fig.savefig(path)`` writes it.

    Raises
    ------
    ImportError
        Without matplotlib (``pip install "nat-estimators[all]"``).
    """
    from matplotlib.figure import Figure

    budgets = sorted({*PLOT_BUDGETS, float(budget)})
    curves: dict[str, list[float]] = {}
    options: dict[str, list[str]] = {}
    for b in budgets:
        for r in compare_designs(b, y, mask):
            name, _, opts = r.design.partition(" (")
            key = name if opts.startswith("full_keep") else r.design
            curves.setdefault(key, []).append(r.relative_variance)
            if opts.startswith("full_keep"):
                options.setdefault(key, []).append(f"{opts.rstrip(')')} at keep {b:g}")
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    at = budgets.index(float(budget))
    n = len(curves)
    for i, (key, vals) in enumerate(curves.items()):
        label = key
        if key in options:  # "full_keep=0.05", or "full_keep=0.05; 0.025 at keep 0.05"
            vals_at = [o.split(" at keep ") for o in options[key]]
            common = max({v for v, _ in vals_at}, key=[v for v, _ in vals_at].count)
            others = [f"{v.split('=')[-1]} at keep {b}" for v, b in vals_at if v != common]
            label += f" ({'; '.join([common, *others])})"
        v = np.array([x if x > 0 else np.nan for x in vals])
        size = 4.0 + 6.0 * (n - i) / n  # shrinking: later (drawn on top) markers are smaller
        line = ax.plot(budgets, v, marker=_MARKERS[i % len(_MARKERS)],
                       linestyle=_LINESTYLES[i % len(_LINESTYLES)], markersize=size,
                       markerfacecolor="none", label=label, zorder=2 + i)[0]
        ax.plot([budget], [v[at]], marker=line.get_marker(), markersize=size + 4,
                markerfacecolor="none", markeredgewidth=2.0, color=line.get_color(),
                linestyle="none", zorder=2 + i)
    ax.axvline(budget, color="0.3", linewidth=1, linestyle=":", zorder=1,
               label=f"chosen keep fraction {budget:g}")
    ax.set_yscale("log")
    ax.set_xlabel("keep fraction (expected share of response tokens kept)")
    ax.set_ylabel("V(HT gradient) / |full gradient|^2")
    if any(x == 0 for vals in curves.values() for x in vals):
        ax.text(0.99, 0.02, "keep 1: every variance is exactly 0 (not on a log axis)",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(alpha=0.3)
    return fig


def _ratio_text(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
_positive = _argument(float, lambda v: math.isfinite(v) and v > 0, "a positive number",
                      "the target must be a positive number")


def _cmd_compare(args: argparse.Namespace) -> int:
    y, mask = gradient_profile(args.rows, args.length, args.dim, seed=args.seed)
    res = compare_designs(args.budget, y, mask, prompt_len=args.prompt_len)
    print(f"Designs at keep fraction {args.budget:g} on a synthetic gradient profile "
          f"({args.rows} rows, <= {args.length} tokens, {args.dim}-dim gradients, "
          f"seed {args.seed})")
    hdr = (f"{'design':<28} {'kept':>6} {'max w':>8} {'V/|Y|^2':>10} {'V/V_URS':>9} "
           f"{'cost':>6} {'V x cost':>10}")
    print(hdr)
    print("-" * len(hdr))
    for r in res:
        print(f"{r.design:<28} {r.keep_fraction:>6.3f} {r.max_weight:>8.2f} "
              f"{r.relative_variance:>10.4g} {_ratio_text(r.variance_vs_poisson):>9} "
              f"{r.relative_cost:>6.3f} {r.variance_x_cost:>10.4g}")
    print("V/|Y|^2: exact design variance of the HT gradient over the squared full-token "
          "gradient (0 = full-token). V/V_URS: relative to uniform Poisson at the same budget. "
          f"cost: expected step FLOPs over the full-token step's (Qwen3-8B shape, "
          f"{args.prompt_len}-token prompts).")
    if any(r.variance_vs_poisson is None for r in res):
        print("V/V_URS is n/a: uniform Poisson's variance is exactly 0 at this budget (at keep 1 "
              "every design keeps every token and every variance is exactly 0); compare designs "
              "at a keep fraction below 1.")
    payload: dict[str, Any] | list[dict[str, Any]] = [r.__dict__ for r in res]
    if args.target_variance is not None or args.target_cost is not None:
        try:
            rec = recommend(y, mask, target_variance=args.target_variance,
                            target_cost=args.target_cost, prompt_len=args.prompt_len)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"recommendation ({rec.target}): {rec.design} at keep {rec.keep:g} — relative "
              f"variance {rec.relative_variance:.4g}, relative cost {rec.relative_cost:.3f}")
        payload = {"designs": payload, "recommendation": rec.__dict__}
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        try:
            fig = comparison_figure(y, mask, args.budget, title=(
                f"Exact variance of the HT gradient by design\n({args.rows} rows of <= "
                f"{args.length} tokens, {args.dim}-dim gradients, seed {args.seed})"))
        except ImportError:
            print("error: --plot needs matplotlib: pip install 'nat-estimators[all]'",
                  file=sys.stderr)
            return 2
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    import importlib.util

    needs = {"pytest": "test", "torch": "torch", "matplotlib": "all", "tqdm": "all"}
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        extras = sorted({needs[m] for m in missing})
        print(f"error: validate needs {', '.join(missing)}: pip install "
              f"'nat-estimators[{','.join(extras)}]'", file=sys.stderr)
        return 2
    import pytest

    suite = Path(__file__).resolve().parent / "validation"
    # no terminal reporter (the bar replaces it); its ini option "-ra" must go with it
    argv = [str(suite), "-p", "no:terminal", "-p", "no:cacheprovider",
            "-o", "addopts=--strict-markers"]
    if args.quick:
        argv += ["--nat-quick"]
    report = Path(args.report) if args.report else Path.cwd() / "validation_report"
    argv += [f"--nat-report={report}"]
    progress = _ProgressBar()
    code = int(pytest.main(argv, plugins=[progress]))
    for nodeid, text in progress.failures:
        print(f"\nFAILED {nodeid}\n{text}", file=sys.stderr)
    print("\n".join(progress.summary()))
    counts = ", ".join(f"{n} {k}" for k, n in sorted(progress.outcomes.items()))
    print(f"validation: {counts or 'no tests ran'} (exit status {code})")
    if (report / "report.md").exists():
        print(f"report: {(report / 'report.md').resolve()}")
    return code


class _ProgressBar:
    """pytest plugin for ``validate``: progress, outcome counts per suite, failures.

    On a terminal the progress is a tqdm bar.  Logged to a file or a pipe (``stream`` not a
    TTY) a bar is one endless line of carriage returns, so the plugin writes plain lines instead:
    what it is about to check (suites in words and their test counts), one line per finished
    test, and (:meth:`summary`, on every stream) the outcome counts of every suite.
    """

    def __init__(self, stream: Any = None, *, tty: bool | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty()) if tty is None else tty
        self.bar: Any = None
        self.total = 0
        self.done = 0
        self.outcomes: dict[str, int] = {}
        self.failures: list[tuple[str, str]] = []
        # suite (test module) -> its description; (suite, check) -> outcome counts
        self.suites: dict[str, str] = {}
        self.checks: dict[tuple[str, str], dict[str, int]] = {}
        self._outcome: dict[str, str] = {}

    @staticmethod
    def _suite_and_check(nodeid: str) -> tuple[str, str]:
        path, _, rest = nodeid.partition("::")
        check = rest.split("[")[0].split("::")[-1].removeprefix("test_").replace("_", " ")
        return Path(path).stem.removeprefix("test_").replace("_", " "), check

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def pytest_collection_finish(self, session: Any) -> None:
        self.total = len(session.items)
        for item in session.items:
            suite, check = self._suite_and_check(item.nodeid)
            doc = (getattr(getattr(item, "module", None), "__doc__", None) or "").strip()
            first = doc.split("\n\n")[0].replace("\n", " ").replace("``", "")
            self.suites.setdefault(suite, first)
            self.checks.setdefault((suite, check), {})
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc="validating", unit="test", file=self.stream)
            return
        self._print(f"validating: {self.total} tests in {len(self.suites)} suites")
        for suite, doc in self.suites.items():
            n = sum(1 for item in session.items
                    if self._suite_and_check(item.nodeid)[0] == suite)
            self._print(f"  {suite} ({n} tests): {doc}")

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[report.outcome] = self.outcomes.get(report.outcome, 0) + 1
            self._outcome[report.nodeid] = report.outcome
        elif report.failed:  # an error in teardown after a passed call
            self._outcome[report.nodeid] = "failed"
        if report.failed:
            self.failures.append((report.nodeid, report.longreprtext))

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        self.done += 1
        outcome = self._outcome.get(nodeid, "passed")
        counts = self.checks.setdefault(self._suite_and_check(nodeid), {})
        counts[outcome] = counts.get(outcome, 0) + 1
        if self.bar is not None:
            self.bar.set_postfix_str(nodeid.split("::")[-1][:40], refresh=False)
            self.bar.update(1)
        elif not self.tty:
            self._print(f"[{self.done}/{self.total}] {outcome:7s} {nodeid}")

    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        if self.bar is not None:
            self.bar.close()

    def summary(self) -> list[str]:
        """What was checked, in words: every suite, every check, its outcome counts."""
        lines = ["checked:"]
        for suite, doc in self.suites.items():
            lines.append(f"  {suite}: {doc}" if doc else f"  {suite}")
            for (s, check), counts in self.checks.items():
                if s == suite:
                    text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                    lines.append(f"    {check}: {text or 'not run'}")
        return lines


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nat-estimators``."""
    p = argparse.ArgumentParser(
        prog="nat-estimators",
        description="Unbiased token subsampling for RL on LLMs: compare designs, validate.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="compare the designs at a token budget")
    c.add_argument("--budget", type=_fraction, default=0.5,
                   help="keep fraction in (0, 1] (default 0.5)")
    c.add_argument("--rows", type=_positive_int, default=8, help="rollouts (default 8)")
    c.add_argument("--length", type=_positive_int, default=2048,
                   help="max response length (default 2048)")
    c.add_argument("--dim", type=_positive_int, default=8,
                   help="gradient dimensions (default 8)")
    c.add_argument("--seed", type=_seed, default=0, help="profile seed, >= 0 (default 0)")
    c.add_argument("--prompt-len", type=_positive_int, default=512,
                   help="prompt tokens per row for the cost model (default 512)")
    t = c.add_mutually_exclusive_group()
    t.add_argument("--target-variance", type=_positive, metavar="V",
                   help="recommend the cheapest design and keep with V/|Y|^2 <= V")
    t.add_argument("--target-cost", type=_positive, metavar="C",
                   help="recommend the lowest-variance design and keep costing <= C x full")
    c.add_argument("--plot", metavar="PNG", type=_output_file("the plot", _image_formats),
                   help="write variance-vs-budget curves to PNG (or .pdf, .svg, ...)")
    c.add_argument("--json", metavar="FILE", type=_output_file("the JSON output"),
                   help="write the table as JSON")
    c.set_defaults(func=_cmd_compare)
    v = sub.add_parser("validate", help="run the Monte Carlo unbiasedness suite")
    v.add_argument("--quick", action="store_true", help="short version (about a minute)")
    v.add_argument("--report", metavar="DIR", help="report folder (default: printed)")
    v.set_defaults(func=_cmd_validate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nat-estimators``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))
