"""The ``nat-estimators`` command: compare output, argument errors, missing optional deps."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nat_estimators.cli import compare_designs, comparison_figure, gradient_profile, main


def test_compare_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp.json"
    assert main(["compare", "--budget", "0.4", "--rows", "3", "--length", "128", "--dim", "2",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "systematic" in text and "prefix" in text
    rows = json.loads(out.read_text())
    assert {r["design"].split(" ")[0] for r in rows} >= {"poisson", "systematic", "prefix"}
    for r in rows:
        assert r["keep_fraction"] == pytest.approx(0.4, abs=0.03)
        assert r["relative_variance"] >= 0
    assert rows[0]["variance_vs_poisson"] == pytest.approx(1.0)


@pytest.mark.parametrize("argv,match", [
    (["compare", "--budget", "1.5"], "budget must be a keep fraction in \\(0, 1\\]"),
    (["compare", "--budget", "abc"], "expected a number"),
    (["compare", "--rows", "0"], "positive integer"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments(argv: list[str], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert pytest.importorskip("re").search(match, capsys.readouterr().err)


def test_missing_torch_names_the_extra() -> None:
    """Without torch, importing the rl subpackage says which extra to install."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import nat_estimators.rl\nexcept ImportError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "nat-estimators[torch]" in r.stdout


def test_validate_names_missing_extras(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["validate", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "nat-estimators[all]" in err


# ---------------------------------------------------------------------------- compare, edge cases
def test_compare_at_full_keep_has_exact_zeros_and_no_nan(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """keep 1: every design keeps every token, so every variance is exactly 0 (prefix gave a
    rounding residue of 1e-31) and the ratio to uniform Poisson is undefined: "n/a" with a line
    that says why, null in the JSON — never "nan"."""
    out = tmp_path / "cmp.json"
    assert main(["compare", "--budget", "1", "--rows", "3", "--length", "128", "--dim", "2",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "nan" not in text.lower()
    assert "n/a" in text and "exactly 0" in text
    rows = json.loads(out.read_text())
    assert all(r["relative_variance"] == 0.0 for r in rows)
    assert all(r["variance_vs_poisson"] is None for r in rows)


@pytest.mark.parametrize("argv,match", [
    (["compare", "--seed", "-1"], r"--seed: the seed must be a non-negative integer"),
    (["compare", "--seed", "1.5"], r"--seed: expected a non-negative integer"),
    (["compare", "--plot", "{tmp}/missing/cmp.png"], r"--plot: the folder .*missing.* does not "
                                                     r"exist; create it first \(mkdir -p "),
    (["compare", "--plot", "{tmp}/cmp.txt"], r"--plot: .*has suffix '.txt', which is not an "
                                             r"image format .*\.png"),
    (["compare", "--plot", "{tmp}/cmp"], r"--plot: .*has no suffix"),
    (["compare", "--plot", "{tmp}"], r"--plot: .* is a folder"),
    (["compare", "--json", "{tmp}/missing/cmp.json"], r"--json: the folder .* does not exist"),
])
def test_compare_output_and_seed_errors(argv: list[str], match: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Bad output paths and seeds end in an argparse error that says what to do (exit 2), before
    any work is done — not in a traceback from numpy or matplotlib."""
    with pytest.raises(SystemExit) as e:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert "Traceback" not in err


def test_compare_plot_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    for name in ("cmp.png", "cmp.svg"):
        assert main(["compare", "--budget", "0.4", "--rows", "2", "--length", "64", "--dim", "2",
                     "--plot", str(tmp_path / name)]) == 0
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "cmp.svg").read_bytes()[:2000]


@pytest.mark.parametrize("budget", [0.05, 0.4, 1.0])
def test_compare_figure(budget: float) -> None:
    """The plot has a title, marks the chosen budget (a vertical line and a point per design at
    it), shows prefix cutting's full_keep, and no design's line can hide another's: every line
    has its own (marker, line style), markers are hollow and shrink in drawing order."""
    pytest.importorskip("matplotlib")
    y, mask = gradient_profile(rows=2, length=64, dim=2)
    fig = comparison_figure(y, mask, budget, title="the title")
    ax = fig.axes[0]
    assert ax.get_title() == "the title"
    lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    marked = [ln for ln in lines if ln.get_label().startswith("chosen keep fraction")]
    assert len(marked) == 1 and list(marked[0].get_xdata()) == [budget, budget]
    designs = [ln for ln in lines if ln not in marked]
    names = [r.design for r in compare_designs(0.5, y, mask)]
    assert len(designs) == len(names)
    styles = [(ln.get_marker(), ln.get_linestyle()) for ln in designs]
    assert len(set(styles)) == len(styles)
    sizes = [ln.get_markersize() for ln in designs]
    assert all(a > b for a, b in itertools.pairwise(sizes))
    assert all(ln.get_markerfacecolor() == "none" for ln in designs)
    assert all(budget in list(ln.get_xdata()) for ln in designs)
    prefix = [ln.get_label() for ln in designs if ln.get_label().startswith("prefix")]
    assert prefix and all("full_keep=0.05" in lbl for lbl in prefix)
    if budget < 0.1:  # the floor follows the budget below 0.1 (full_keep = budget / 2)
        assert any(f"0.025 at keep {budget:g}" in lbl for lbl in prefix)
    # the chosen budget's points: one per design, hollow too
    points = [ln for ln in ax.get_lines() if ln.get_label().startswith("_")
              and list(ln.get_xdata()) == [budget]]
    assert len(points) == len(names)
    assert all(ln.get_markerfacecolor() == "none" for ln in points)


# ---------------------------------------------------------------------------- validate's progress
_SUITE = {
    "test_alpha_checks.py": '"""Alpha checks: the first suite."""\n'
                            "import pytest\n\n"
                            "@pytest.mark.parametrize('k', [1, 2])\n"
                            "def test_adds_up(k):\n    assert k > 0\n\n"
                            "def test_broken():\n    assert 1 == 2\n",
    "test_beta.py": '"""Beta: the second suite."""\n'
                    "import pytest\n\n"
                    "def test_skipped_one():\n    pytest.skip('not here')\n",
}
_RUNNER = """
import io, sys, pytest
from nat_estimators.cli import _ProgressBar
tty = sys.argv[2] == "tty"
stream = io.StringIO() if tty else sys.stderr
p = _ProgressBar(stream, tty=True if tty else None)
code = pytest.main([sys.argv[1], "-p", "no:terminal", "-p", "no:cacheprovider"],
                   plugins=[p])
if tty:
    sys.stderr.write(stream.getvalue())
print("\\n".join(p.summary()))
"""


def _validate_like_run(tmp_path: Path, mode: str) -> tuple[str, str]:
    """(stdout, stderr) of the plugin on a small suite, carriage returns kept (no text mode)."""
    suite = tmp_path / "suite"
    suite.mkdir()
    for name, text in _SUITE.items():
        (suite / name).write_text(text)
    r = subprocess.run([sys.executable, "-c", _RUNNER, str(suite), mode], capture_output=True,
                       timeout=120, cwd=tmp_path)
    return r.stdout.decode(), r.stderr.decode()


def test_validate_progress_in_a_log_is_plain_lines(tmp_path: Path) -> None:
    """Logged to a file or a pipe (not a TTY), ``validate`` prints lines, not a tqdm bar (one
    endless line of carriage returns), and says in words what it checked: the suites with their
    descriptions, each check with its outcome counts."""
    stdout, stderr = _validate_like_run(tmp_path, "pipe")
    assert "\r" not in stderr and "\r" not in stdout
    err = stderr.splitlines()
    assert err[0] == "validating: 4 tests in 2 suites"
    assert "  alpha checks (3 tests): Alpha checks: the first suite." in err
    assert "  beta (1 tests): Beta: the second suite." in err
    assert sum(line.startswith("[") for line in err) == 4
    assert any(line.startswith("[4/4]") for line in err)
    assert any("failed  " in line and "test_broken" in line for line in err)
    out = stdout.splitlines()
    assert "    adds up: 2 passed" in out
    assert "    broken: 1 failed" in out
    assert "    skipped one: 1 skipped" in out
    assert "  alpha checks: Alpha checks: the first suite." in out


def test_validate_progress_on_a_terminal_is_a_bar(tmp_path: Path) -> None:
    """Negative control of the check above: on a terminal the same run draws a tqdm bar, whose
    carriage returns the check would reject."""
    pytest.importorskip("tqdm")
    _, stderr = _validate_like_run(tmp_path, "tty")
    assert "\r" in stderr and "validating" in stderr
    assert not any(line.startswith("[1/4]") for line in stderr.splitlines())
