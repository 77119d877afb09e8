"""docs/rl/verl.md and the module's docstring examples run against the installed verl."""

from __future__ import annotations

import doctest
import os
import re
import warnings

import pytest

pytest.importorskip(
    "verl", reason="verl lives in its own environment; .ci/run builds it and runs these tests")

import nat_estimators.integrations.verl as nat_verl

PAGE = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "docs", "rl", "verl.md")


def test_doctests():
    result = doctest.testmod(nat_verl, optionflags=doctest.NORMALIZE_WHITESPACE
                             | doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_docs_page_code_blocks_run():
    """Every fenced block of docs/rl/verl.md is ``python`` and runs, in order, in one namespace."""
    with open(PAGE, encoding="utf-8") as f:
        text = f.read()
    fences = re.findall(r"^```(\S*)", text, re.MULTILINE)
    langs = fences[0::2]  # opening fences
    assert set(langs) <= {"python", "{admonition}"}, langs
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 5
    ns: dict[str, object] = {"__name__": "__docs_verl__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # verl's and Ray's imports warn about absent engines
        for code in blocks:
            exec(compile(code, PAGE, "exec"), ns)
    assert issubclass(ns["NATRayPPOTrainer"], nat_verl.NATTrainerMixin)
    assert ns["cropped"] < ns["full"]
