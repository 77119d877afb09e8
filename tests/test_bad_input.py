r"""Bad input is refused with a ValueError/TypeError whose message names the argument.

One table, ``BAD``, of (id, call, exception, regex); every call builds its input on the backend
under test.  The regex always contains the argument's name.  A few "not bad" neighbours check that
the refusals are not over-eager (NaN padding at ineligible positions, zero sizes off the mask, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import nat_estimators as nat

A = np.array
ROW = A([0.5, 0.25, 0.75])
MASK3 = A([True, True, True])

PI_DESIGNS = {"Poisson": nat.Poisson, "Systematic": nat.Systematic, "Prefix": nat.Prefix}


def _make(cls: Any, pi: Any, mask: Any = None, *, raw: bool = False) -> Callable[[Any], Any]:
    """``cls(pi, mask=mask)`` with ``pi``/``mask`` built on the backend (``raw``: pi as is)."""

    def call(bk: Any) -> Any:
        return cls(pi if raw else bk.asarray(pi), mask=None if mask is None else bk.asarray(mask))

    return call


def _pi_design_cases() -> list[tuple[str, Callable[[Any], Any], type, str]]:
    out: list[tuple[str, Callable[[Any], Any], type, str]] = []
    for name, cls in PI_DESIGNS.items():
        good = A([0.9, 0.5, 0.25]) if cls is nat.Prefix else ROW

        def pi_with(v: float, pos: int = 1, cls: Any = cls, good: np.ndarray = good) -> Any:
            p = good.copy()
            p[pos] = v
            return _make(cls, p)

        out += [
            (f"{name}-pi>1", pi_with(1.5), ValueError, r"pi must lie in \[0, 1\]"),
            (f"{name}-pi<0", pi_with(-0.1), ValueError, r"pi must lie in \[0, 1\]"),
            (f"{name}-pi-nan", pi_with(np.nan), ValueError, r"pi contains NaN or Inf"),
            (f"{name}-pi-inf", pi_with(np.inf), ValueError, r"pi contains NaN or Inf"),
            (f"{name}-pi-zero", pi_with(0.0, pos=2), ValueError,
             r"pi is 0 at an eligible position"),
            (f"{name}-pi-int", _make(cls, A([1, 1, 1])), ValueError,
             r"pi must have a real floating dtype"),
            (f"{name}-pi-bool", _make(cls, MASK3), ValueError,
             r"pi must have a real floating dtype"),
            (f"{name}-pi-0d", _make(cls, A(0.5)), ValueError, r"pi must have at least one axis"),
            (f"{name}-pi-empty-axis", _make(cls, np.zeros((2, 0))), ValueError,
             r"pi has an empty token axis"),
            (f"{name}-pi-list", _make(cls, [0.5, 0.5], raw=True), TypeError, r"array"),
            (f"{name}-mask-shape", _make(cls, good, A([True, True])), ValueError,
             r"mask has shape"),
            (f"{name}-mask-dtype", _make(cls, good, A([1, 1, 0])), ValueError,
             r"mask must have dtype bool"),
        ]
    return out


def _prefix_pmf(pmf: list[float], mask: list[bool] | None = None) -> Callable[[Any], Any]:
    return lambda bk: nat.Prefix.from_cut_pmf(
        bk.asarray(A(pmf)), mask=None if mask is None else bk.asarray(A(mask)))


def _budget(keep: Any, **kw: Any) -> Callable[[Any], Any]:
    mask = np.ones((2, 10), bool)
    mask[1, 4:] = False
    return lambda bk: nat.Prefix.from_fraction(keep, mask=bk.asarray(mask), **kw)


def _srs(n: Any, mask: np.ndarray = MASK3, n_array: bool = False) -> Callable[[Any], Any]:
    return lambda bk: nat.SimpleRandom(bk.asarray(n) if n_array else n, mask=bk.asarray(mask))


def _ip(x: Any, n: Any, mask: Any = None, n_array: bool = False) -> Callable[[Any], Any]:
    return lambda bk: nat.inclusion_probabilities(
        bk.asarray(A(x)), bk.asarray(A(n)) if n_array else n,
        mask=None if mask is None else bk.asarray(A(mask)))


def _sample(cls: Any, u: Any, *, as_array: bool = True) -> Callable[[Any], Any]:
    def call(bk: Any) -> Any:
        pi = np.tile(A([0.9, 0.5, 0.25]), (2, 1))
        d = cls(bk.asarray(pi)) if cls is not nat.SimpleRandom else cls(
            1, mask=bk.asarray(np.ones((2, 3), bool)))
        return d.sample(bk.asarray(u) if as_array else u)
    return call


BAD: list[tuple[str, Callable[[Any], Any], type, str]] = [
    *_pi_design_cases(),
    # Prefix: survival must be non-increasing over the eligible tokens
    ("Prefix-non-monotone", lambda bk: nat.Prefix(bk.asarray(A([0.5, 0.75, 0.25]))), ValueError,
     r"pi must be non-increasing"),
    ("Prefix-non-monotone-across-gap", lambda bk: nat.Prefix(
        bk.asarray(A([0.5, 0.9, 0.6])), mask=bk.asarray(A([True, False, True]))), ValueError,
     r"pi must be non-increasing"),
    ("Prefix-non-monotone-batched", lambda bk: nat.Prefix(
        bk.asarray(A([[1.0, 0.5, 0.2], [0.9, 0.3, 0.4]]))), ValueError,
     r"pi must be non-increasing"),
    # Prefix.from_cut_pmf
    ("pmf-sum", _prefix_pmf([0.2, 0.3, 0.3, 0.1]), ValueError, r"pmf must sum to 1"),
    ("pmf-negative", _prefix_pmf([0.6, -0.1, 0.2, 0.3]), ValueError, r"pmf contains negative"),
    ("pmf-nan", _prefix_pmf([0.5, np.nan, 0.2, 0.3]), ValueError, r"pmf contains NaN"),
    ("pmf-beyond-row", _prefix_pmf([0.2, 0.3, 0.2, 0.3], [True, False, True]), ValueError,
     r"pmf puts probability on a cut beyond"),
    ("pmf-no-full-keep", _prefix_pmf([0.2, 0.3, 0.5, 0.0]), ValueError,
     r"pmf gives probability 0 to keeping a whole row"),
    ("pmf-no-full-keep-ragged", _prefix_pmf([0.5, 0.5, 0.0, 0.0], [True, False, True]),
     ValueError, r"pmf gives probability 0 to keeping a whole row"),
    ("pmf-too-short", _prefix_pmf([1.0]), ValueError, r"pmf must have length N \+ 1"),
    ("pmf-int", lambda bk: nat.Prefix.from_cut_pmf(bk.asarray(A([0, 0, 1]))), ValueError,
     r"pmf must have a real floating dtype"),
    ("pmf-mask-shape", _prefix_pmf([0.5, 0.5], [True, True]), ValueError, r"mask has shape"),
    # Prefix.from_fraction
    ("budget-infeasible", _budget(0.04, full_keep=0.05), ValueError,
     r"keep=0.04 is below what full_keep=0.05 and min_keep=0.0 already cost"),
    ("budget-infeasible-min-keep", _budget(0.3, full_keep=0.05, min_keep=0.3), ValueError,
     r"keep=0.3 is below .* min_keep=0.3"),
    ("budget-keep-0", _budget(0.0), ValueError, r"keep must lie in \(0, 1\]"),
    ("budget-keep>1", _budget(1.5), ValueError, r"keep must lie in \(0, 1\]"),
    ("budget-keep-nan", _budget(float("nan")), ValueError, r"keep must be a finite number"),
    ("budget-keep-bool", _budget(True), ValueError, r"keep must be a finite number"),
    ("budget-keep-str", _budget("0.5"), ValueError, r"keep must be a finite number"),
    ("budget-full-keep-0", _budget(0.5, full_keep=0.0), ValueError,
     r"full_keep must lie in \(0, 1\]"),
    ("budget-min-keep<0", _budget(0.5, min_keep=-0.1), ValueError,
     r"min_keep must lie in \[0, 1\]"),
    ("budget-mask-int", lambda bk: nat.Prefix.from_fraction(0.5, mask=bk.asarray(A([1, 1]))),
     ValueError, r"mask must have dtype bool"),
    ("budget-mask-empty-axis", lambda bk: nat.Prefix.from_fraction(
        0.5, mask=bk.asarray(np.zeros((2, 0), bool))), ValueError, r"mask must have a non-empty"),
    # SimpleRandom
    ("srs-n>count", _srs(4), ValueError, r"n is larger than the number of eligible tokens"),
    ("srs-n>count-ragged", _srs(A([1, 3]), A([[1, 1, 1], [1, 0, 1]], bool), n_array=True),
     ValueError, r"n is larger than the number of eligible tokens"),
    ("srs-n<0", _srs(-1), ValueError, r"n must be >= 0"),
    ("srs-n-noninteger", _srs(1.5), ValueError, r"n must be an integer"),
    ("srs-n-noninteger-array", _srs(A([1.0, 1.5]), np.ones((2, 3), bool), n_array=True),
     ValueError, r"n must contain integer"),
    ("srs-n-nan", _srs(float("nan")), ValueError, r"n must be finite"),
    ("srs-n-bool", _srs(True), TypeError, r"n must be a number"),
    ("srs-n-str", _srs("2"), TypeError, r"n must be a number"),
    ("srs-n-shape", _srs(A([1, 1, 1]), np.ones((2, 3), bool), n_array=True), ValueError,
     r"n has shape"),
    ("srs-empty-row", _srs(1, A([[1, 1, 1], [0, 0, 0]], bool)), ValueError,
     r"a row has no eligible tokens but n > 0"),
    ("srs-n0-on-eligible-row", _srs(A([1, 0]), A([[1, 1, 1], [1, 0, 0]], bool), n_array=True),
     ValueError, r"n is 0 for a row that has eligible tokens"),
    ("srs-no-mask", lambda bk: nat.SimpleRandom(2), TypeError, r"needs mask="),
    ("srs-mask-int", lambda bk: nat.SimpleRandom(1, mask=bk.asarray(A([1, 1]))), ValueError,
     r"mask must have dtype bool"),
    ("srs-fraction-0", lambda bk: nat.SimpleRandom.from_fraction(0.0, mask=bk.asarray(MASK3)),
     ValueError, r"keep must be a fraction in \(0, 1\]"),
    # Poisson / Systematic uniform constructors
    ("poisson-uniform-p0", lambda bk: nat.Poisson.from_fraction(0.0, mask=bk.asarray(MASK3)),
     ValueError, r"p \(the keep fraction\) must lie in \(0, 1\]"),
    ("poisson-uniform-p>1", lambda bk: nat.Poisson.from_fraction(1.01, mask=bk.asarray(MASK3)),
     ValueError, r"p \(the keep fraction\) must lie in \(0, 1\]"),
    ("poisson-uniform-p-shape", lambda bk: nat.Poisson.from_fraction(
        bk.asarray(A([0.5, 0.5, 0.5])), mask=bk.asarray(np.ones((2, 3), bool))), ValueError,
     r"p has shape"),
    ("systematic-uniform-nan", lambda bk: nat.Systematic.from_fraction(
        float("nan"), mask=bk.asarray(MASK3)), ValueError, r"p must be finite"),
    # inclusion_probabilities
    ("ip-negative", _ip([1.0, -1.0, 2.0], 1), ValueError, r"x contains negative sizes"),
    ("ip-nan", _ip([1.0, np.nan, 2.0], 1), ValueError, r"x contains NaN or Inf"),
    ("ip-inf", _ip([1.0, np.inf, 2.0], 1), ValueError, r"x contains NaN or Inf"),
    ("ip-n>npos", _ip([1.0, 0.0, 2.0], 2.5), ValueError, r"n exceeds the number of eligible"),
    ("ip-n>npos-masked", _ip([1.0, 5.0, 2.0], 3, mask=[True, False, True]), ValueError,
     r"n exceeds the number of eligible"),
    ("ip-n>npos-row", _ip([[1.0, 5.0, 2.0], [1.0, 0.0, 0.0]], [2.0, 2.0], n_array=True),
     ValueError, r"n exceeds the number of eligible"),
    ("ip-empty-row", _ip([[1.0, 5.0], [1.0, 1.0]], 1, mask=[[True, True], [False, False]]),
     ValueError, r"n exceeds the number of eligible"),
    ("ip-n0", _ip([1.0, 2.0], 0), ValueError, r"n must be > 0"),
    ("ip-n-negative-row", _ip([[1.0, 2.0], [1.0, 1.0]], [1.0, -1.0], n_array=True),
     ValueError, r"n must be > 0"),
    ("ip-n-nan", _ip([1.0, 2.0], float("nan")), ValueError, r"n must be finite"),
    ("ip-n-shape", _ip([[1.0, 2.0], [1.0, 1.0]], [1.0, 1.0, 1.0], n_array=True), ValueError,
     r"n has shape"),
    ("ip-x-int", _ip([1, 2, 3], 1), ValueError, r"x must have a real floating dtype"),
    ("ip-x-list", lambda bk: nat.inclusion_probabilities([1.0, 2.0], 1), TypeError, r"array"),
    ("ip-mask-shape", _ip([1.0, 2.0], 1, mask=[True]), ValueError, r"mask has shape"),
    # sample(u)
    ("u-shape-systematic", _sample(nat.Systematic, np.full((3,), 0.5)), ValueError,
     r"u has shape \(3,\) but this design consumes uniforms of shape \(2,\)"),
    ("u-shape-poisson", _sample(nat.Poisson, np.full((2,), 0.5)), ValueError, r"u has shape"),
    ("u-shape-srs", _sample(nat.SimpleRandom, np.full((3, 2), 0.5)), ValueError, r"u has shape"),
    ("u-one", _sample(nat.Prefix, A([0.5, 1.0])), ValueError,
     r"u must contain uniforms in \[0, 1\)"),
    ("u-negative", _sample(nat.Systematic, A([-0.1, 0.5])), ValueError,
     r"u must contain uniforms in \[0, 1\)"),
    ("u-nan", _sample(nat.Poisson, np.full((2, 3), np.nan)), ValueError,
     r"u must contain uniforms in \[0, 1\)"),
    ("u-int", _sample(nat.Systematic, A([0, 0])), ValueError, r"u must have a real floating"),
    ("u-list", _sample(nat.Systematic, [0.5, 0.5], as_array=False), TypeError,
     r"u must be an array"),
    # draw(rng)
    ("rng-str", lambda bk: nat.Poisson(bk.asarray(ROW)).draw("seed"), TypeError,
     r"rng must be a numpy.random.Generator, a torch.Generator or an int seed"),
    ("rng-float", lambda bk: nat.Poisson(bk.asarray(ROW)).draw(1.5), TypeError, r"rng must be"),
    ("rng-bool", lambda bk: nat.Poisson(bk.asarray(ROW)).draw(True), TypeError, r"rng must be"),
    ("rng-legacy-randomstate", lambda bk: nat.Poisson(bk.asarray(ROW)).draw(
        np.random.RandomState(0)), TypeError, r"rng must be"),
]


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_refused(backend: Any, call: Callable[[Any], Any], exc: type,
                              match: str) -> None:
    with pytest.raises(exc, match=match):
        call(backend)


def test_table_names_the_argument() -> None:
    """Every expected message mentions the argument it is about (keeps the table honest)."""
    names = ("pi", "mask", "pmf", "keep", "full_keep", "min_keep", "n", "p", "x", "u", "rng",
             "needs mask=", "array")
    for id_, _, _, match in BAD:
        assert any(name in match for name in names), id_


# ---------------------------------------------------------------------------- not bad
def test_nan_padding_off_the_mask_is_ignored(backend: Any) -> None:
    """NaN/Inf/out-of-range values at ineligible positions are padding: accepted, never leak."""
    mask = A([[True, False, True, False], [False, False, False, False]])
    junk = A([[0.5, np.nan, 0.25, 7.0], [np.inf, -1.0, np.nan, 0.0]])
    for cls in PI_DESIGNS.values():
        pi = A([[0.5, np.nan, 0.25, 7.0], [np.inf, -1.0, np.nan, 0.0]])
        if cls is nat.Prefix:
            pi[0, 0], pi[0, 2] = 0.75, 0.25
        d = cls(backend.asarray(pi), mask=backend.asarray(mask))
        for out in (d.inclusion_probabilities(), d.joint_inclusion_probabilities(),
                    d.expected_size(), d.max_weight()):
            arr = backend.to_numpy(out)
            assert np.isfinite(arr).all(), cls.__name__
        assert not backend.to_numpy(d.draw(0))[~mask].any()
    got = backend.to_numpy(nat.inclusion_probabilities(
        backend.asarray(junk[:1]), 1, mask=backend.asarray(mask[:1])))
    np.testing.assert_allclose(got, [[2 / 3, 0, 1 / 3, 0]], rtol=1e-15)


def test_zero_sizes_and_empty_rows_that_are_fine(backend: Any) -> None:
    # zero sizes are fine when n does not need them; they get pi = 0
    pi = backend.to_numpy(nat.inclusion_probabilities(backend.asarray(A([0.0, 1.0, 3.0])), 2))
    np.testing.assert_array_equal(pi, [0.0, 1.0, 1.0])
    # empty rows are fine for the random-size designs and for SimpleRandom with n = 0
    mask = backend.asarray(A([[True, True, False], [False, False, False]]))
    pi = backend.asarray(np.full((2, 3), 0.5))
    for cls in PI_DESIGNS.values():
        d = cls(pi, mask=mask)
        np.testing.assert_array_equal(backend.to_numpy(d.expected_size()), [1.0, 0.0])
        np.testing.assert_array_equal(backend.to_numpy(d.max_weight()), [2.0, 0.0])
    d = nat.SimpleRandom(backend.asarray(A([1, 0])), mask=mask)
    np.testing.assert_array_equal(backend.to_numpy(d.draw(0)).sum(-1), [1, 0])
    # the whole-row cut on an empty row is L = 0
    d = nat.Prefix.from_cut_pmf(backend.asarray(A([[0.5, 0.25, 0.25, 0.0], [1.0, 0, 0, 0]])),
                                mask=mask)
    np.testing.assert_allclose(backend.to_numpy(d.inclusion_probabilities()),
                               [[0.5, 0.25, 0.0], [0.0, 0.0, 0.0]])
