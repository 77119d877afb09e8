"""The verl integration without verl installed: a clear error naming the extra.

The integration itself is tested against the installed verl in its own environment
(``integration_tests/verl``, run by ``.ci/run``): verl pins a transformers range that the TRL
extra of this environment cannot share.
"""

from __future__ import annotations

import subprocess
import sys


def test_import_without_verl_names_the_extra():
    code = ("import sys; sys.modules['verl'] = None\n"
            "import nat_estimators.integrations.verl")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "nat-estimators[verl]" in r.stderr and "own" in r.stderr, r.stderr[-2000:]


def test_the_extra_pins_the_tested_range():
    from pathlib import Path

    import tomllib

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extra = meta["project"]["optional-dependencies"]["verl"]
    assert "verl>=0.9,<0.10" in extra and any(x.startswith("ray") for x in extra)

