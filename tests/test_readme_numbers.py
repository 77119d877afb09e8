"""Every measured number in the README's "What has been measured" section comes from a run.

The README quotes a few figures from the generated result pages.  Each quoted phrase is rebuilt here
from the committed run it summarises (``benchmarks/results/latest.json`` for the savings, the
validation report for unbiasedness), so re-running a benchmark without updating the README fails
this test instead of leaving a stale number on the project's front page.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCH = ROOT / "benchmarks" / "results" / "latest.json"
VALIDATION = ROOT / "validation" / "results" / "report.md"
TRAINING = ROOT / "benchmarks" / "results" / "training.json"
ALLOCATION = ROOT / "benchmarks" / "results" / "allocation.json"
BUDGET = ROOT / "benchmarks" / "results" / "training_budget.json"
BENCH_PAGE = ROOT / "benchmarks" / "results.md"  # generated from BENCH by benchmarks/report.py


def measured_section(text: str) -> str:
    """The README's "What has been measured" section (up to the next second-level heading)."""
    match = re.search(r"^## What has been measured\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README has no '## What has been measured' section"
    return " ".join(match.group(1).split())  # line breaks in the prose do not matter


def _cells(line: str) -> list[str]:
    """A markdown table row's cells (``\\|`` is a literal bar inside a cell)."""
    inner = line.strip()[1:-1]
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def report_table(report: str, heading: str) -> list[dict[str, str]]:
    """Rows of the first markdown table after ``heading`` in the validation report."""
    section = report.split(heading, 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = _cells(lines[0])
    rows = []
    for line in lines[2:]:
        cells = _cells(line)
        if len(cells) != len(header):
            break
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def _bench() -> dict[str, float]:
    return json.loads(BENCH.read_text())["ratios"]


def _max_exact_error() -> float:
    rows = report_table(VALIDATION.read_text(), "## Exact proofs by enumeration")
    return max(float(row["max |E ĝ − g|"]) for row in rows)


def _min_control_z() -> float:
    rows = report_table(VALIDATION.read_text(), "## Negative controls")
    return min(float(row["min over modes of max |z|"]) for row in rows)


def _floor_tens(x: float) -> int:
    return int(math.floor(x / 10.0) * 10)


def _up_2sig(x: float) -> str:
    """x rounded up to two significant digits, in the report's ``1.4e-13`` style."""
    exponent = math.floor(math.log10(x))
    mantissa = math.ceil(x / 10**exponent * 10) / 10
    return f"{mantissa:.1f}e{exponent:03d}".replace("e-0", "e-")


def _train(key: str, fmt: str = ".2f") -> str:
    return format(json.loads(TRAINING.read_text())["summary"][key], fmt)


def _budget(key: str, fmt: str = ".2f", scale: float = 1.0) -> str:
    value = json.loads(BUDGET.read_text())["summary"][key]
    return format(value * scale if scale != 1.0 else value, fmt)


OPT_PREFIX = "optimal_prefix_variance_ratio_vs_rpc@0.5"
OPT_PREFIX_SHARED = "optimal_prefix_shared_variance_ratio_vs_rpc@0.5"
OPT_POISSON = "optimal_poisson_variance_ratio_vs_urs@0.5"
OPT_POISSON_SHARED = "optimal_poisson_shared_variance_ratio_vs_urs@0.5"
CONTROLLER = "controller_variance_ratio_error"


def _alloc(key: str, fmt: str = ".2f") -> str:
    return format(json.loads(ALLOCATION.read_text())["ratios"][key], fmt)


def _page(pattern: str) -> str:
    """A figure the generated benchmark page states (the page is rebuilt from its run)."""
    match = re.search(pattern, BENCH_PAGE.read_text())
    assert match, f"benchmarks/results.md no longer states {pattern!r}"
    return match.group(1)


def _ratio(key: str) -> str:
    return f"{_bench()[key]:.2f}"


#: (what the phrase says, how to build it from the committed runs)
PHRASES: list[tuple[str, Callable[[], str]]] = [
    ("exact unbiasedness error", lambda: f"gradient to ≤ {_up_2sig(_max_exact_error())}"),
    ("controls rejected", lambda: f"rejected with |z| > {_floor_tens(_min_control_z())}"),
    ("prefix time", lambda: f"costs {_ratio('rpc_time_ratio@0.5')}× the full-token step time"),
    ("prefix memory", lambda: f"and {_ratio('rpc_peak_memory_ratio@0.5')}× its peak memory"),
    ("URS head memory", lambda: f"the LM-head memory ({_ratio('urs_head_memory_ratio@0.5')}×)"),
    ("cost model agreement", lambda: "matches the measurements within "
                                     f"±{_page(r'the same formulas were within ±([0-9.]+)')}"),
    ("Qwen3-8B projection", lambda: f"projects {_page(r'FLOPs at ([0-9.]+–[0-9.]+) of the full')}× "
                                    "time for a Qwen3-8B-shaped model"),
    ("optimal prefix", lambda: f"has {_alloc(OPT_PREFIX)}× the variance of the paper's RPC"),
    ("optimal prefix shared", lambda: f"({_alloc(OPT_PREFIX_SHARED, '.3f')}× with one budget"),
    ("optimal Poisson", lambda: f"Neyman-optimal Poisson {_alloc(OPT_POISSON)}× that of URS "
                                f"({_alloc(OPT_POISSON_SHARED, '.3f')}× shared)"),
    ("controller error", lambda: f"misses by up to +{_alloc(CONTROLLER, '.0%')}"),
    ("training prefix time", lambda: f"costs {_train('prefix@0.5/time_ratio')}× the full-token "
                                     "fwd+bwd time"),
    ("training final rewards", lambda: f"ends at reward {_train('prefix@0.5/final_reward')} "
                                       f"against {_train('full/final_reward')} for full-token"),
    ("training TOST", lambda: f"(TOST p = {_train('prefix@0.5/tost_p')}: not equivalent)"),
    ("training variance", lambda: f"variance is {_train('prefix@0.5/variance_ratio', '.1f')}× the "
                                  "rollout variance"),
    ("budget variances", lambda: f"adds {_budget('prefix_optimal@0.5/variance_ratio')}× the "
                                 "rollout variance against "
                                 f"{_budget('prefix@0.5/variance_ratio')}× for the paper's"),
    ("budget final gap", lambda: "ends "
                                 f"{_budget('prefix_optimal@0.5/final_reward_diff', '.3f', -1)} "
                                 "below full-token training in final reward "
                                 f"({_budget('prefix_optimal@0.5/final_reward')} against "
                                 f"{_budget('full/final_reward')}"),
    ("budget prefix gap", lambda: "fixed prefix cutting's "
                                  f"{_budget('prefix@0.5/final_reward_diff', '.3f', -1)})"),
    ("budget controller error", lambda: "pooled variance ratio within ±"
     f"{_budget('controlled@eps0.25/controller_variance_ratio_error', '.0%')} of ε on every seed"),
    ("budget controller tokens", lambda: "back-propagating "
     f"{_budget('controlled@eps0.25/token_ratio')} of the full-token loss tokens"),
    ("budget controller steps", lambda: "(median deviation "
     f"{_budget('controlled@eps0.25/controller_step_error_median', '.0%')})"),
    ("budget measurement noise", lambda: "measured with about "
     f"{_budget('controlled@eps0.25/controller_measurement_rse', '.0%')} noise"),
    ("budget tokens to target", lambda: "full-token training needs "
     f"{_budget('full/loss_tokens_to_target', '.0f', 1e-3)}k loss tokens "
     f"({_budget('full/reached_target', 'd')}/5 seeds), the optimal cut law "
     f"{_budget('prefix_optimal@0.5/loss_tokens_to_target', '.0f', 1e-3)}k "
     f"({_budget('prefix_optimal@0.5/reached_target', 'd')}/5), the controller "
     f"{_budget('controlled@eps0.25/loss_tokens_to_target', '.0f', 1e-3)}k "
     f"({_budget('controlled@eps0.25/reached_target', 'd')}/5); fixed prefix cutting at 0.5 "
     f"never gets there ({_budget('prefix@0.5/reached_target', 'd')}/5)"),
    ("training Poisson", lambda: f"Poisson at 0.5 adds {_train('poisson@0.5/variance_ratio')}× and "
                                 f"ends closer ({_train('poisson@0.5/final_reward')})"),
]


@pytest.mark.parametrize(("what", "phrase"), PHRASES, ids=[what for what, _ in PHRASES])
def test_readme_number_comes_from_the_committed_run(what: str, phrase: Callable[[], str]) -> None:
    section = measured_section(README.read_text())
    expected = phrase()
    assert expected in section, f"README's {what} is stale: expected the phrase {expected!r}"


def test_a_changed_number_is_caught() -> None:
    """Negative control: the same check rejects a section whose number differs from the run."""
    section = measured_section(README.read_text())
    expected = PHRASES[2][1]()
    value = _ratio("rpc_time_ratio@0.5")
    stale = section.replace(expected, expected.replace(value, f"{float(value) + 0.01:.2f}"))
    assert expected in section and expected not in stale
