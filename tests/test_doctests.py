"""Run the ``Examples`` sections of the public modules as doctests (numpy outputs).

The examples print numpy >= 2 reprs (``np.float64(1.75)``); on numpy 1.x they are skipped.
"""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

MODULES = [
    "nat_estimators",
    "nat_estimators._compat",
    "nat_estimators._deprecation",
    "nat_estimators._design",
    "nat_estimators._validation",
    "nat_estimators.allocation",
    "nat_estimators.inclusion",
    "nat_estimators.poisson",
    "nat_estimators.prefix",
    "nat_estimators.random",
    "nat_estimators.simple_random",
    "nat_estimators.systematic",
    "nat_estimators.estimators",
    "nat_estimators.variance",
    "nat_estimators._variance_engine",
    "nat_estimators.summary",
    "nat_estimators.costmodel",
    "nat_estimators.cli",
    "nat_estimators.demo.models",
    "nat_estimators.demo.rollouts",
    "nat_estimators.demo.tasks",
    "nat_estimators.rl",
    "nat_estimators.rl.batching",
    "nat_estimators.rl.controller",
    "nat_estimators.rl.grpo",
    "nat_estimators.rl.heads",
    "nat_estimators.rl.loss",
    "nat_estimators.rl.selection",
    "nat_estimators.rl.stats",
]

NUMPY2 = int(np.__version__.split(".")[0]) >= 2


@pytest.mark.skipif(not NUMPY2, reason="doctest outputs use numpy >= 2 scalar reprs")
@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    with np.printoptions(legacy=False):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest failure(s) in {name}"


def test_the_design_modules_have_examples() -> None:
    """The public designs document themselves with runnable examples."""
    finder = doctest.DocTestFinder()
    for name in ("inclusion", "poisson", "prefix", "random", "simple_random", "systematic"):
        module = importlib.import_module(f"nat_estimators.{name}")
        examples = sum(len(t.examples) for t in finder.find(module))
        assert examples >= 2, name
