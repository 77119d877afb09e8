"""Options, shared settings and the report of the validation suite.

Options
-------
``--nat-quick``
    Fewer Monte Carlo draws and only the verl loss modes in the exact proofs (about a minute).
``--nat-report=DIR``
    Report folder (default ``validation_report/`` in the directory pytest was started from);
    printed at the end.
``--nat-scale=K``
    Multiply the number of Monte Carlo draws by ``K`` (a GPU run).
``--nat-device=DEV``
    Device of the gradient computations (default ``cuda`` when present, else ``cpu``).  Rollouts
    are always sampled on the CPU, so every machine validates the same batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from .report import REGISTRY, write_report
from .world import (  # every seed and size of the suite lives in world.py
    ALPHA_MEAN,
    ALPHA_TOTAL,
    ALPHA_VAR,
    CONTROL_DRAWS_FULL,
    CONTROL_DRAWS_QUICK,
    DRAWS_FULL,
    DRAWS_QUICK,
    POWER_REPS,
    World,
)


@dataclass(frozen=True)
class Settings:
    quick: bool
    scale: float
    device: torch.device
    report_dir: Path
    draws: int
    control_draws: int
    power_reps: int = POWER_REPS


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nat", "nat_estimators validation suite")
    group.addoption("--nat-quick", action="store_true", default=False,
                    help="short run: fewer Monte Carlo draws, verl modes only in exact proofs")
    group.addoption("--nat-report", metavar="DIR", default=None,
                    help="report folder (default: validation_report/ in the current directory)")
    group.addoption("--nat-scale", metavar="K", type=float, default=1.0,
                    help="multiply the number of Monte Carlo draws by K (e.g. on a GPU)")
    group.addoption("--nat-device", metavar="DEV", default=None,
                    help="device for gradients (default: cuda if available, else cpu)")


def _settings(config: pytest.Config) -> Settings:
    quick = bool(config.getoption("--nat-quick"))
    scale = float(config.getoption("--nat-scale"))
    if not scale > 0:
        raise pytest.UsageError("--nat-scale must be > 0")
    dev = config.getoption("--nat-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    report = config.getoption("--nat-report")
    report_dir = Path(report) if report else config.invocation_params.dir / "validation_report"
    base = DRAWS_QUICK if quick else DRAWS_FULL
    cbase = CONTROL_DRAWS_QUICK if quick else CONTROL_DRAWS_FULL
    draws = max(POWER_REPS * 50, round(base * scale))
    draws -= draws % POWER_REPS
    return Settings(quick, scale, torch.device(dev), report_dir.resolve(), draws,
                    max(100, round(cbase * scale)))


_START = pytest.StashKey[float]()
_REPORT = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_START] = time.perf_counter()
    _settings(config)  # bad option values stop the run here, once


@pytest.fixture(scope="session")
def nat_settings(request: pytest.FixtureRequest) -> Settings:
    s = _settings(request.config)
    REGISTRY.meta.update(
        mode="quick" if s.quick else "full", scale=s.scale, device=str(s.device),
        torch=torch.__version__, draws=s.draws, control_draws=s.control_draws,
        power_reps=s.power_reps, alpha_total=ALPHA_TOTAL, alpha_mean=ALPHA_MEAN,
        alpha_var=ALPHA_VAR,
    )
    return s


@pytest.fixture(scope="session")
def world(nat_settings: Settings) -> Any:
    """Lazily built batches, per-token gradients and Monte Carlo draws, shared by the tests."""
    return World(nat_settings)


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Any:
    """Tiny models: intra-op threads only add synchronisation (badly on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REGISTRY.empty():
        return
    s = _settings(session.config)
    REGISTRY.meta["seconds"] = time.perf_counter() - session.config.stash.get(_START, 0.0)
    REGISTRY.meta["exit_status"] = int(exitstatus)
    path = write_report(s.report_dir, REGISTRY)
    session.config.stash[_REPORT] = str(path)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    path = config.stash.get(_REPORT, None)
    if path:
        terminalreporter.write_sep("-", "NAT validation report")
        terminalreporter.write_line(f"report: {path}")
        terminalreporter.write_line(f"folder: {Path(path).parent}")
