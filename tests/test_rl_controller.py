"""KappaController: the variance model, the solved keep fraction, its bounds, its inputs."""

from __future__ import annotations

import inspect
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import nat_estimators as nat
from nat_estimators.demo.models import TinyCausalLM
from nat_estimators.rl import (
    DESIGNS,
    GRPOBatch,
    GRPOConfig,
    KappaController,
    default_second_moment,
    grpo_step,
)
from nat_estimators.rl.controller import _RATIO_RTOL as RTOL


def _mask(seed: int = 0, B: int = 6, T: int = 14) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, T + 1, (B,), generator=g)
    return torch.arange(T)[None, :] < lengths[:, None]


def _moments(mask: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(mask.shape, generator=g, dtype=torch.float64) ** 3 + 0.01
    return torch.where(mask, m, torch.zeros_like(m))


def test_uniform_poisson_closed_form() -> None:
    """Uncorrelated tokens, uniform Poisson: ratio = 1/kappa - 1, so kappa = 1/(1 + eps)."""
    m = _mask()
    for eps in (0.25, 1.0, 3.0):
        k = KappaController(epsilon=eps, design="poisson", kappa_min=0.01).kappa(m, _moments(m))
        # the solve stops within RTOL of the target ratio: kappa within about RTOL * kappa
        assert abs(k - 1 / (1 + eps)) < RTOL


@pytest.mark.parametrize("design", ["prefix", "prefix_optimal", "poisson_optimal", "systematic"])
@pytest.mark.parametrize("rho", [0.0, 0.3])
def test_solution_meets_target(design: str, rho: float) -> None:
    m = _mask(2)
    mom = _moments(m, 3)
    ctrl = KappaController(epsilon=0.4, design=design, coherence=rho, kappa_min=0.1)
    k = ctrl.kappa(m, mom)
    rec = ctrl.history[-1]
    if rec["bound"] == "":
        assert abs(ctrl.predicted_ratio(m, mom, k) / 0.4 - 1) <= RTOL
    # more tolerance -> a smaller budget
    k2 = KappaController(epsilon=1.5, design=design, coherence=rho, kappa_min=0.1).kappa(m, mom)
    assert k2 <= k + 1e-12


def test_bounds_are_enforced() -> None:
    m = _mask()
    mom = _moments(m)
    c = KappaController(epsilon=1e-6, design="poisson", kappa_max=0.8)
    assert c.kappa(m, mom) == 0.8 and c.history[-1]["bound"] == "kappa_max"
    c = KappaController(epsilon=1e6, design="poisson", kappa_min=0.2)
    assert c.kappa(m, mom) == 0.2 and c.history[-1]["bound"] == "kappa_min"


def test_variance_model_matches_monte_carlo() -> None:
    """Statistic: mean over 4000 draws of the exact design variance of per-token vectors from the
    coherence model vs the controller's prediction; the tolerance is 5 standard errors
    (false alarm < 1e-6).  Negative control: the same check with coherence 0 in the prediction
    (but rho = 0.5 in the data) is rejected."""
    rng = np.random.default_rng(0)
    mask = _mask(4, B=3, T=8)
    mom = _moments(mask, 5)
    rho, p, draws = 0.5, 2, 4000
    d_design = nat.Prefix.from_fraction(0.5, mask=mask, full_keep=0.1)
    q = mom.sqrt().numpy()
    z = rng.normal(size=(draws, *mask.shape, p))
    w = rng.normal(size=(draws, mask.shape[0], 1, p))
    y = q[None, ..., None] * (np.sqrt(1 - rho) * z + np.sqrt(rho) * w) / np.sqrt(p)
    y = np.where(mask.numpy()[None, ..., None], y, 0.0)
    dnp = nat.Prefix(d_design.pi.numpy(), mask=mask.numpy())
    v = np.stack([nat.design_variance(y[i], dnp, axis=1).sum() for i in range(draws)])
    se = v.std(ddof=1) / np.sqrt(draws)
    good = KappaController(epsilon=1.0, design="prefix", coherence=rho, full_keep=0.1,
                           kappa_min=0.1)
    pred = good.nat_variance(mask, mom, 0.5)
    assert abs(v.mean() - pred) < 5 * se
    bad = KappaController(epsilon=1.0, design="prefix", coherence=0.0, full_keep=0.1,
                          kappa_min=0.1)
    assert abs(v.mean() - bad.nat_variance(mask, mom, 0.5)) > 5 * se
    # and the rollout model: E sum_i ||G_i||^2
    g = y.sum(axis=2)
    emp = (g ** 2).sum(axis=(1, 2))
    se_r = emp.std(ddof=1) / np.sqrt(draws)
    assert abs(emp.mean() - good.rollout_variance(mask, mom)) < 5 * se_r


def test_kappa_uses_only_pre_draw_quantities(monkeypatch: pytest.MonkeyPatch) -> None:
    """kappa is a deterministic function of (mask, second moments, sizes): no model, no
    parameters, no random numbers (torch.rand and Generator draws would raise here)."""
    params = set(inspect.signature(KappaController.kappa).parameters)
    assert params == {"self", "response_mask", "second_moment", "sizes"}
    m = _mask()
    mom = _moments(m)
    k0 = KappaController(epsilon=0.5, design="prefix").kappa(m, mom)

    def boom(*a, **k):  # pragma: no cover - must not be called
        raise AssertionError("the controller drew random numbers")

    monkeypatch.setattr(torch, "rand", boom)
    monkeypatch.setattr(torch, "randn", boom)
    torch.manual_seed(123)
    k1 = KappaController(epsilon=0.5, design="prefix").kappa(m, mom.clone())
    assert k0 == k1


def test_grpo_step_with_controller() -> None:
    torch.manual_seed(0)
    model = TinyCausalLM(vocab_size=16, d_model=16, n_heads=2, n_layers=1, max_len=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(0, 16, (4, 12))
    am = torch.ones(4, 12, dtype=torch.bool)
    rm = am.clone()
    rm[:, :4] = False
    batch = GRPOBatch(ids, am, rm, advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]),
                      sizes=torch.rand(4, 12, dtype=torch.float64) + 0.1)
    ctrl = KappaController(epsilon=0.5, design="prefix_optimal", kappa_min=0.1, coherence=0.2)
    cfg = ctrl.step_config(GRPOConfig(design="prefix_optimal"), batch)
    assert 0.1 <= cfg.keep <= 1.0
    assert cfg.keep == ctrl.kappa(batch.response_mask, default_second_moment(batch),
                                  sizes=batch.sizes)
    res = grpo_step(model, opt, batch, cfg, generator=torch.Generator().manual_seed(1))
    assert res is not None


@pytest.mark.parametrize(("kw", "match"), [
    (dict(epsilon=0.0), "epsilon must be > 0"),
    (dict(epsilon=-1.0), "epsilon must be > 0"),
    (dict(epsilon=float("nan")), "finite"),
    (dict(epsilon=1.0, kappa_min=0.0), "kappa bounds"),
    (dict(epsilon=1.0, kappa_max=1.5), "kappa bounds"),
    (dict(epsilon=1.0, kappa_min=0.6, kappa_max=0.5), "kappa bounds"),
    (dict(epsilon=1.0, coherence=1.5), "coherence"),
    (dict(epsilon=1.0, design="nope"), "design must be one of"),
    (dict(epsilon=1.0, design="prefix", kappa_min=0.01, full_keep=0.05), "full_keep"),
])
def test_bad_arguments(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KappaController(**kw)


def test_bad_second_moment() -> None:
    m = _mask()
    c = KappaController(epsilon=1.0, design="poisson")
    with pytest.raises(ValueError, match=">= 0"):
        c.kappa(m, -_moments(m))
    with pytest.raises(ValueError, match="floating"):
        c.kappa(m, m.long())


def test_every_design_name_is_accepted() -> None:
    m = _mask()
    for name in DESIGNS:
        KappaController(epsilon=1.0, design=name, kappa_min=0.1).kappa(m, _moments(m))


# ------------------------------------------------------------------ shared budgets
@pytest.mark.parametrize("design", ["prefix_optimal", "poisson_optimal", "systematic_optimal"])
def test_shared_budget_selection(design: str) -> None:
    """shared=True: one budget kappa * sum_i N_i for the batch (rows with large sizes get more),
    pi equal to the design constructor's with shared=True, HT weights unbiased for every row."""
    from nat_estimators.rl import select_tokens

    m = _mask(4, B=6, T=30)
    m[:, :3] = True
    sizes = _moments(m, 5)
    sizes[0] = sizes[0] * 100  # one row with much larger second moments
    sizes = torch.where(m, sizes, torch.zeros_like(sizes))
    kw = {"full_keep": 0.02} if design.startswith("prefix") else {}
    sel = select_tokens(m, design, 0.3, sizes=sizes, shared=True,
                        generator=torch.Generator().manual_seed(0), **kw)
    pi = sel.design.inclusion_probabilities()
    assert abs(float(pi.sum()) - 0.3 * float(m.sum())) < 1e-9
    per_row = select_tokens(m, design, 0.3, sizes=sizes, **kw).design.inclusion_probabilities()
    assert float(pi[0].sum()) > float(per_row[0].sum()) + 1e-6  # the budget moved to row 0
    cls = nat.Design.registered()[design.removesuffix("_optimal")]
    opts = {"full_keep": 0.02} if cls is nat.Prefix else {}
    ref = cls.optimal(sizes, 0.3, mask=m, shared=True, **opts).inclusion_probabilities()
    torch.testing.assert_close(pi, ref.to(pi.dtype))
    # unbiased: E[sum of weights over the row's sample] = N_i, by the exact first-order pi
    w = torch.where(m, 1 / torch.where(m, pi, torch.ones_like(pi)), torch.zeros_like(pi))
    torch.testing.assert_close((w * pi).sum(-1), m.sum(-1).to(pi.dtype))


def test_shared_needs_an_optimal_design() -> None:
    from nat_estimators.rl import select_tokens

    m = _mask()
    with pytest.raises(ValueError, match="needs a variance-optimal"):
        select_tokens(m, "prefix", 0.5, shared=True)
    with pytest.raises(ValueError, match="_optimal"):
        GRPOConfig(design="poisson", shared=True)
    with pytest.raises(ValueError, match="_optimal"):
        KappaController(epsilon=1.0, design="prefix", shared=True)
    with pytest.raises(ValueError, match="only used when the design is given by name"):
        select_tokens(m, nat.Poisson.from_fraction(0.5, mask=m), shared=True)


def test_controller_with_shared_budget_meets_target() -> None:
    m = _mask(2)
    mom = _moments(m, 3)
    ctrl = KappaController(epsilon=0.4, design="prefix_optimal", shared=True, kappa_min=0.1)
    k = ctrl.kappa(m, mom)
    assert ctrl.history[-1]["bound"] == ""
    assert abs(ctrl.predicted_ratio(m, mom, k) / 0.4 - 1) <= RTOL
    # one batch budget can only lower the variance at a given kappa: kappa no larger
    k_row = KappaController(epsilon=0.4, design="prefix_optimal", kappa_min=0.1).kappa(m, mom)
    assert k <= k_row + 1e-9
    cfg = GRPOConfig(design="prefix_optimal")
    rm = torch.nn.functional.pad(m, (1, 0))  # a one-token prompt before every response
    batch = GRPOBatch(torch.zeros(rm.shape, dtype=torch.long), torch.ones_like(rm), rm,
                      advantages=torch.linspace(-1, 1, m.shape[0]))
    with pytest.raises(ValueError, match="shared"):
        ctrl.step_config(cfg, batch)
    assert ctrl.step_config(replace(cfg, shared=True), batch).shared


# ------------------------------------------------------------------ observe
def test_observe_calibrates_to_the_geometric_mean() -> None:
    """c = geometric mean of realised / uncalibrated ratios; later kappas solve c r(k) = eps."""
    m = _mask()
    mom = _moments(m)
    ctrl = KappaController(epsilon=1.0, design="poisson", kappa_min=0.01)
    ctrl.kappa(m, mom)  # ratio 1 (uncalibrated)
    assert ctrl.observe(4.0) == pytest.approx(4.0)
    k = ctrl.kappa(m, mom)  # 4 (1/k - 1) = 1
    assert k == pytest.approx(0.8)
    assert ctrl.history[-1]["calibration"] == pytest.approx(4.0)
    # the second record predicted 1 with c = 4 (uncalibrated 0.25); realised 0.25 -> factor 1
    assert ctrl.observe(0.25) == pytest.approx(math.sqrt(4.0 * 1.0))
    assert ctrl.history[0]["realised"] == 4.0 and ctrl.history[1]["realised"] == 0.25
    # a model that is right stays put (negative control of the refit)
    right = KappaController(epsilon=1.0, design="poisson", kappa_min=0.01)
    right.kappa(m, mom)
    assert right.observe(1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True, "1"])
def test_observe_refuses_bad_ratios(bad: object) -> None:
    ctrl = KappaController(epsilon=1.0, design="poisson")
    with pytest.raises(ValueError, match="kappa\\(\\) call first"):
        ctrl.observe(1.0)
    ctrl.kappa(_mask(), _moments(_mask()))
    with pytest.raises(ValueError, match="finite number > 0"):
        ctrl.observe(bad)  # type: ignore[arg-type]
