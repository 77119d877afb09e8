"""Every number on the benchmark results page comes from the run that generated it.

The page is built twice, from the committed run (``benchmarks/results/latest.json``) and from a
copy whose measured values are all scaled; a line that reads the same on both pages may hold no
number beyond the fixed vocabulary below (keep fractions, names such as ``Qwen3-8B``, the paper's
cited figures).  Hand-written prose with a measured number in it fails, and the check itself is
shown to reject such a line.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.projection import PAPER

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "results" / "latest.json"

# names and labels with digits in them, and the inputs that are fixed by design rather than measured
_FIXED = re.compile(
    r"Qwen3-8B|FSDP-8|fp32|bf16|fp16|Adam|μ-batch|1 row|R=\d+|@\d+(\.\d+)?|"
    r"κ = 0\.5|≈0\.5|\[K, V\]|x_y|\d+-bit|logsumexp|`[^`]*`|\(\d+\)"
)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_ALLOWED = {f"{k:g}" for k in report.KEEPS} | {f"{v:g}" for v in PAPER.values()} | {"0", "1", "2"}
_KEEP_AS_IS = {"keep", "name", "section", "design", "target", "met", "date", "command"}


def _scaled(obj: Any, key: str = "") -> Any:
    """A copy of a run with every measured number changed (keep fractions and names kept)."""
    if key in _KEEP_AS_IS:
        return obj
    if isinstance(obj, dict):
        return {k: _scaled(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scaled(v, key) for v in obj]
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, float):
        return obj * 1.37 + 0.011
    if isinstance(obj, int):
        return obj * 3 + 1
    return obj


def _run_strings(obj: Any) -> set[str]:
    """Numbers inside the run's own strings (record names such as ``R100k``, notes): the run
    wrote them."""
    if isinstance(obj, dict):
        return set().union(*(_run_strings(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_run_strings(v) for v in obj)) if obj else set()
    return set(_NUMBER.findall(obj)) if isinstance(obj, str) else set()


def _static_numbers(page_a: str, page_b: str, written: set[str]) -> list[tuple[str, str]]:
    """(line, number) for numbers on lines that did not change between the two pages."""
    lines_b = set(page_b.splitlines())
    out = []
    for line in page_a.splitlines():
        if line not in lines_b or line.startswith(("![", "|---")):
            continue
        for num in _NUMBER.findall(_FIXED.sub(" ", line)):
            if num not in _ALLOWED and num not in written:
                out.append((line, num))
    return out


def _pages(tmp_path: Path, run: dict[str, Any] | None = None) -> tuple[str, str, set[str]]:
    if run is None:
        run = json.loads(RUN.read_text(encoding="utf-8"))
    pages = []
    for i, out in enumerate((run, _scaled(copy.deepcopy(run)))):
        path = tmp_path / f"page{i}.md"
        report.write_report(out, path, tmp_path / f"plots{i}", command="python benchmarks/run.py")
        pages.append(path.read_text(encoding="utf-8"))
    return pages[0], pages[1], _run_strings(run)


def test_every_number_on_the_page_comes_from_the_run(tmp_path: Path) -> None:
    a, b, written = _pages(tmp_path)
    assert a != b
    static = _static_numbers(a, b, written)
    assert not static, "numbers written into the page, not taken from the run:\n" + "\n".join(
        f"  {n!r} in: {line[:160]}" for line, n in static)


def test_the_check_rejects_a_hand_written_number(tmp_path: Path) -> None:
    a, b, written = _pages(tmp_path)
    prose = "The full-token step spends 66% of its time in matrix products."
    assert _static_numbers(a + "\n" + prose, b + "\n" + prose, written) == [(prose, "66")]


def test_rl_selection_section_numbers_come_from_the_run(tmp_path: Path) -> None:
    """The batch-scale selection section (a tiny real run added to the committed one) is on the
    page, and its numbers come from the run as well."""
    from benchmarks.rl_selection import run_rl_selection_benchmarks

    rl = run_rl_selection_benchmarks(True, shape=(4, 64), verbose=False)
    run = json.loads(RUN.read_text(encoding="utf-8"))
    run["ratios"].update(rl["ratios"])
    run["records"] += rl["records"]
    a, b, written = _pages(tmp_path, run)
    assert "## RL selection at batch scale" in a
    assert "select/poisson_proportional" in a and "pack/crop" in a
    static = _static_numbers(a, b, written)
    assert not static, "\n".join(f"  {n!r} in: {line[:160]}" for line, n in static)
