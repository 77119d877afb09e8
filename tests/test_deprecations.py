"""Renamed names keep working for one release: each old spelling warns and gives the same result.

Every case of ``OLD_AND_NEW`` pairs a call in a former spelling with the same call in the current
one; the former must raise a :class:`DeprecationWarning` naming the replacement and return what
the current spelling returns.  A negative control checks that the current spellings do not warn.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import nat_estimators as nat
from nat_estimators import rl
from nat_estimators.demo.models import TinyCausalLM

MASK = np.array([[True, True, False, True, True, True], [True, False, True, True, False, False]])
Y = np.arange(12.0).reshape(2, 6) + 1
D = nat.Poisson(np.where(MASK, 0.5, 0.0), mask=MASK)
S = D.sample(np.full((2, 6), 0.3) * (np.arange(6) % 2 + 1))
PI = D.inclusion_probabilities()
TM = torch.as_tensor(MASK)


def _selection() -> rl.Selection:
    return rl.select_tokens(TM, "poisson", 0.5, generator=torch.Generator().manual_seed(0))


# (id, old call, new call, text the warning must contain)
OLD_AND_NEW: list[tuple[str, Callable[[], Any], Callable[[], Any], str]] = [
    ("Poisson.uniform", lambda: nat.Poisson.uniform(0.3, mask=MASK),
     lambda: nat.Poisson.from_fraction(0.3, mask=MASK), "Poisson.from_fraction"),
    ("Systematic.uniform", lambda: nat.Systematic.uniform(0.3, mask=MASK),
     lambda: nat.Systematic.from_fraction(0.3, mask=MASK), "Systematic.from_fraction"),
    ("Prefix.from_budget", lambda: nat.Prefix.from_budget(0.6, mask=MASK, full_keep=0.1),
     lambda: nat.Prefix.from_fraction(0.6, mask=MASK, full_keep=0.1), "Prefix.from_fraction"),
    ("ht_total(mask=)", lambda: nat.ht_total(Y, mask=S, pi=PI),
     lambda: nat.ht_total(Y, S, PI), "ht_total(y, sample, pi"),
    ("ht_mean(mask=)", lambda: nat.ht_mean(Y, mask=S, pi=PI, population_size=5),
     lambda: nat.ht_mean(Y, S, PI, 5), "ht_mean(y, sample, pi"),
    ("hajek_mean(y=, mask=)", lambda: nat.hajek_mean(y=Y, mask=S, pi=PI, axis=-1),
     lambda: nat.hajek_mean(Y, S, PI), "hajek_mean(y, sample, pi"),
    ("hajek_total(mask=)", lambda: nat.hajek_total(Y, mask=S, pi=PI, population_size=5),
     lambda: nat.hajek_total(Y, S, PI, 5), "hajek_total(y, sample, pi"),
    ("ht_weights(mask=)", lambda: nat.ht_weights(mask=S, pi=PI),
     lambda: nat.ht_weights(S, PI), "ht_weights(sample, pi"),
    ("variance_estimate(mask=)", lambda: nat.variance_estimate(Y, mask=S, design=D),
     lambda: nat.variance_estimate(Y, S, D), "variance_estimate(y, sample, design"),
    ("design_variance(design=)", lambda: nat.design_variance(Y, design=D),
     lambda: nat.design_variance(Y, D), "design_variance(y, design"),
    ("design_summary(design, y)", lambda: nat.design_summary(D, Y),
     lambda: nat.design_summary(Y, D), "design_summary(y, design)"),
    ("design_summary(design)", lambda: nat.design_summary(D),
     lambda: nat.design_summary(None, D), "design_summary(y, design)"),
    ("rl.ht_weights(s, pi, response_mask)",
     lambda: rl.ht_weights(torch.as_tensor(S), torch.as_tensor(PI), TM, dtype=torch.float32),
     lambda: rl.ht_weights(torch.as_tensor(S), torch.as_tensor(PI), mask=TM, dtype=torch.float32),
     "ht_weights(sample, pi"),
    ("rl.ht_weights(response_mask=)",
     lambda: rl.ht_weights(torch.as_tensor(S), torch.as_tensor(PI), response_mask=TM),
     lambda: rl.ht_weights(torch.as_tensor(S), torch.as_tensor(PI), mask=TM),
     "ht_weights(sample, pi"),
    ("rl.loss_normalizers", lambda: rl.loss_normalizers(TM, const_len=4),
     lambda: rl.LossNormalizers.from_mask(TM, const_len=4), "LossNormalizers.from_mask"),
    ("rl.pack_rows(keep=)", lambda: rl.pack_rows(keep=TM, max_tokens=8),
     lambda: rl.pack_rows(TM, max_tokens=8), "pack_rows(attention_mask"),
    ("Selection.mask", lambda: _selection().mask, lambda: _selection().sample,
     "Selection.sample"),
    ("rl.TinyCausalLM", lambda: rl.TinyCausalLM, lambda: TinyCausalLM,
     "nat_estimators.demo.models.TinyCausalLM"),
]


def _as_comparable(v: Any) -> Any:
    """Arrays, tensors, designs, records and plans as nested plain values."""
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, nat.Design) or dataclasses.is_dataclass(v):
        return {f.name: _as_comparable(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (tuple, list)):
        return [_as_comparable(x) for x in v]
    return v


@pytest.mark.parametrize(("old", "new", "hint"), [c[1:] for c in OLD_AND_NEW],
                         ids=[c[0] for c in OLD_AND_NEW])
def test_old_spelling_warns_and_agrees(old: Callable[[], Any], new: Callable[[], Any],
                                       hint: str) -> None:
    with pytest.warns(DeprecationWarning, match="deprecated") as caught:
        got = old()
    assert any(hint in str(w.message) for w in caught), [str(w.message) for w in caught]
    # the warning points at the caller (this file), not at the package's internals
    assert any(w.filename == __file__ for w in caught)
    assert _as_comparable(got) == _as_comparable(new())


@pytest.mark.parametrize("new", [c[2] for c in OLD_AND_NEW], ids=[c[0] for c in OLD_AND_NEW])
def test_current_spelling_does_not_warn(new: Callable[[], Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new()


def test_positional_calls_of_the_public_contract_still_work() -> None:
    # the documented positional form ht_total(y, mask, pi) is unchanged by the rename
    assert float(nat.ht_total(Y, S, PI)[0]) == float(np.sum(np.where(S, Y / 0.5, 0.0)[0]))
    with pytest.raises(TypeError):
        nat.ht_total(Y, S, PI, -1)  # options are keyword-only


def test_a_keyword_that_never_existed_is_still_refused() -> None:
    with pytest.raises(TypeError):
        nat.ht_total(Y, S, PI, weights=PI)
