"""The main job works from an installed package, outside the repository.

Builds a wheel from the package's own files (``pyproject.toml``, ``README.md``,
``nat_estimators/``) copied to a temporary folder, installs it without dependencies into a fresh
virtual environment that sees the already installed dependencies (``--system-site-packages``),
and runs that environment's ``nat-estimators validate --quick`` console script from an empty
temporary directory: the suite, its trained policies and the report writer must all come from the
wheel.  About a minute (the quick suite itself).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _has_build_backend() -> bool:
    """Whether the installed setuptools satisfies ``pyproject.toml``'s ``build-system``."""
    try:
        import setuptools
    except ImportError:
        return False
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    need = re.search(r'requires = \["setuptools>=(\d+)"\]', text)
    return need is not None and int(setuptools.__version__.split(".")[0]) >= int(need.group(1))


@pytest.mark.slow
def test_validate_runs_from_an_installed_wheel(tmp_path: Path) -> None:
    # the environment of the subprocesses must not point back at the checkout
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env["OMP_NUM_THREADS"] = "1"
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "nat_estimators", src / "nat_estimators",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    # offline with the installed build backend when it is recent enough (pyproject's
    # build-system), else pip fetches it into an isolated build environment
    offline = ["--no-build-isolation", "--no-index"] if _has_build_backend() else []
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *offline,
          "-w", str(dist), str(src)], tmp_path, env, 300)
    (wheel,) = dist.glob("nat_estimators-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
         tmp_path, env, 120)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
         tmp_path, env, 300)

    work = tmp_path / "work"  # an empty directory outside the repository
    work.mkdir()
    where = _run([str(python), "-c", "import nat_estimators.validation as v; print(v.__file__)"],
                 work, env, 60).strip()
    assert Path(where).is_relative_to(venv), f"imported {where}, not the installed wheel"

    out = _run([str(bindir / "nat-estimators"), "validate", "--quick"], work, env, 900)
    assert "passed" in out and "failed" not in out, out
    report = work / "validation_report" / "report.md"
    assert report.is_file(), out
    assert "# NAT validation report" in report.read_text(encoding="utf-8")
