"""The ``nat-estimators`` command: compare output, argument errors, missing optional deps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nat_estimators.cli import main


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


def test_compare_costs_and_recommendation(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rec.json"
    assert main(["compare", "--rows", "3", "--length", "96", "--dim", "2",
                 "--target-variance", "0.05", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "recommendation (relative variance <= 0.05)" in text and "optimal" in text
    data = json.loads(out.read_text())
    rec = data["recommendation"]
    assert rec["relative_variance"] <= 0.05
    for r in data["designs"]:
        assert 0 < r["relative_cost"] <= 1
        assert r["variance_x_cost"] == pytest.approx(r["relative_variance"] * r["relative_cost"])
        if r["design"].startswith("prefix"):  # prefix saves body and head
            assert r["relative_cost"] < min(x["relative_cost"] for x in data["designs"]
                                            if x["design"].startswith("poisson"))


def test_recommend_is_the_best_grid_point() -> None:
    from nat_estimators.cli import compare_designs, gradient_profile, recommend

    y, mask = gradient_profile(rows=2, length=64, dim=2)
    grid = [(b, r) for b in (0.2, 0.5, 0.8) for r in compare_designs(b, y, mask)]
    rv = recommend(y, mask, target_variance=0.02, budgets=(0.2, 0.5, 0.8))
    ok = [r.relative_cost for _, r in grid if r.relative_variance <= 0.02]
    assert rv.relative_cost == pytest.approx(min(ok))
    rc = recommend(y, mask, target_cost=0.95, budgets=(0.2, 0.5, 0.8))
    ok = [r.relative_variance for _, r in grid if r.relative_cost <= 0.95]
    assert rc.relative_variance == pytest.approx(min(ok))
    with pytest.raises(ValueError, match="exactly one"):
        recommend(y, mask)
    with pytest.raises(ValueError, match="no design reaches"):
        recommend(y, mask, target_variance=1e-12, budgets=(0.2,))
    with pytest.raises(ValueError, match="no design costs"):
        recommend(y, mask, target_cost=1e-3, budgets=(0.5,))


@pytest.mark.parametrize("argv,match", [
    (["compare", "--target-variance", "0"], "positive number"),
    (["compare", "--target-cost", "-1"], "positive number"),
    (["compare", "--target-cost", "0.5", "--target-variance", "0.1"], "not allowed with"),
])
def test_bad_targets(argv: list[str], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert match in capsys.readouterr().err
