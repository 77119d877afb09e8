r"""JAX transformations: the pure paths trace under ``jax.jit``, ``jax.grad`` and ``jax.vmap``.

Every core test already runs on JAX eagerly (the ``jax`` entry of the ``backend`` fixture).  Here
the same tables of cases (``tests/cases.py``, ``tests/estimator_cases.py``) run through the
transformations and are compared with numpy, eagerly:

* ``design.sample(u)`` and ``inclusion_probabilities`` under ``jit`` and ``vmap`` (bit-exact
  samples, probabilities to rounding);
* ``ht_total``, ``hajek_mean``, ``design_variance``, ``variance_estimate`` under ``jit`` and
  ``vmap`` (values and the warnings that go with them);
* gradients under ``jax.grad`` against the analytic ones (:math:`\partial \hat Y/\partial y_k =
  I_k/\pi_k`, the Hájek and Poisson-variance derivatives) and against torch autograd on the same
  inputs;
* constructors given traced arrays work (value checks are skipped under a transformation: the
  caller's inputs are trusted), and the one method that must read values,
  ``Systematic.has_fixed_size``, refuses traced ``pi`` with a clear message.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from cases import ALL_CASES, PiCase
from conftest import _BACKENDS, JAX_MISSING
from estimator_cases import CASE_IDS, CASES, population_y
from test_inclusion import EXAMPLES

import nat_estimators as nat
from nat_estimators.random import uniforms

jax = pytest.importorskip("jax", reason=JAX_MISSING)
jnp = pytest.importorskip("jax.numpy", reason=JAX_MISSING)

JAX = _BACKENDS["jax"]
NP = _BACKENDS["numpy"]
TORCH = _BACKENDS["torch"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _np(x: Any) -> np.ndarray:
    return np.asarray(x)


def _recorded(fn: Callable[[], Any]) -> tuple[Any, list[type]]:
    """``fn()`` and the categories of the warnings it issued."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [w.category for w in caught]


# ---------------------------------------------------------------------------- designs
@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: f"{c.cls.__name__}-{c.id}")
def test_sample_under_jit_and_vmap(case: Any) -> None:
    """jit(design.sample)(u) and vmap over a stack of u give numpy's samples, bit for bit."""
    d_np, d = case.build(NP), case.build(JAX)
    u = uniforms(np.random.default_rng(11), (5, *d.uniform_shape), xp=np, device="cpu")
    expected = np.stack([d_np.sample(ui) for ui in u])
    uj = jnp.asarray(u)
    got_jit = np.stack([_np(jax.jit(d.sample)(ui)) for ui in uj])
    np.testing.assert_array_equal(got_jit, expected)
    np.testing.assert_array_equal(_np(jax.vmap(d.sample)(uj)), expected)
    pi = jax.jit(lambda: d.inclusion_probabilities())()
    np.testing.assert_allclose(_np(pi), _np(d_np.inclusion_probabilities()), rtol=1e-15)
    np.testing.assert_allclose(_np(jax.jit(d.expected_size)()), _np(d_np.expected_size()),
                               rtol=1e-13)


@pytest.mark.parametrize(
    "case", [c for c in ALL_CASES if isinstance(c, PiCase)],
    ids=lambda c: f"{c.cls.__name__}-{c.id}",
)
def test_constructor_on_traced_pi(case: Any) -> None:
    """A design built inside jit from traced pi (and mask) samples as the eager one."""
    d_np = case.build(NP)
    u = jnp.asarray(uniforms(3, d_np.uniform_shape, xp=np, device="cpu"))
    pi = JAX.asarray(case.pi)
    mask = None if case.mask is None else JAX.asarray(case.mask)

    @jax.jit
    def build_and_sample(pi: Any, mask: Any, u: Any) -> tuple[Any, Any]:
        d = case.cls(pi, mask=mask)
        return d.sample(u), d.inclusion_probabilities()

    s, p = build_and_sample(pi, mask, u)
    np.testing.assert_array_equal(_np(s), d_np.sample(np.asarray(u)))
    np.testing.assert_allclose(_np(p), d_np.inclusion_probabilities(), rtol=1e-15)


def test_alternative_constructors_under_jit() -> None:
    """from_fraction / from_cut_pmf / proportional / SimpleRandom with traced inputs."""
    mask_np = np.array([[1, 1, 1, 1, 0, 1], [1, 0, 1, 1, 1, 1]], dtype=bool)
    mask = jnp.asarray(mask_np)
    x = np.array([[0.5, 2.0, 1.0, 4.0, np.nan, 0.3], [1.0, np.nan, 1.0, 2.0, 3.0, 0.1]])
    pmf = np.array([[0.1, 0.2, 0.1, 0.1, 0.2, 0.3, 0.0], [0.0, 0.3, 0.1, 0.2, 0.1, 0.3, 0.0]])
    builders: dict[str, Callable[[Any, Any, Any], Any]] = {
        "poisson_fraction": lambda m, x, p: nat.Poisson.from_fraction(0.4, mask=m),
        "systematic_fraction": lambda m, x, p: nat.Systematic.from_fraction(0.5, mask=m),
        "prefix_fraction": lambda m, x, p: nat.Prefix.from_fraction(0.6, mask=m, full_keep=0.1),
        "prefix_pmf": lambda m, x, p: nat.Prefix.from_cut_pmf(p, mask=m),
        "poisson_proportional": lambda m, x, p: nat.Poisson.proportional(x, 2.5, mask=m),
        "systematic_proportional": lambda m, x, p: nat.Systematic.proportional(x, 2, mask=m),
        "simple_random": lambda m, x, p: nat.SimpleRandom.from_fraction(0.5, mask=m),
    }
    for name, build in builders.items():
        eager = build(mask_np, x, pmf)
        u_np = uniforms(5, eager.uniform_shape, xp=np, device="cpu")

        def run(m: Any, x: Any, p: Any, u: Any, build: Any = build) -> tuple[Any, Any]:
            d = build(m, x, p)
            return d.sample(u), d.inclusion_probabilities()

        s, pi = jax.jit(run)(mask, jnp.asarray(x), jnp.asarray(pmf), jnp.asarray(u_np))
        np.testing.assert_array_equal(_np(s), eager.sample(u_np), err_msg=name)
        np.testing.assert_allclose(_np(pi), eager.inclusion_probabilities(), rtol=1e-14,
                                   err_msg=name)


@pytest.mark.parametrize("i", range(len(EXAMPLES)))
def test_inclusion_probabilities_under_jit(i: int) -> None:
    x, n, expected = EXAMPLES[i]
    if min(v for v in x if v > 0) < np.finfo(np.float64).tiny:
        pytest.skip("XLA on CPU flushes subnormal numbers to zero")
    got = jax.jit(lambda x: nat.inclusion_probabilities(x, n))(jnp.asarray(x))
    np.testing.assert_allclose(_np(got), expected, rtol=1e-12, atol=0)


def test_inclusion_probabilities_grad_and_vmap() -> None:
    """d/dx sum_k c_k pi_k(x) (per-row n, a mask, capped units): JAX grad == torch autograd."""
    rng = np.random.default_rng(4)
    x = rng.lognormal(0, 1, (3, 8))
    x[0, 2] = 40.0  # a certainty unit
    mask = rng.random(x.shape) < 0.8
    mask[:, :2] = True
    n = np.array([2.5, 3.0, 1.5])
    c = rng.normal(size=x.shape)

    def f_jax(x: Any) -> Any:
        return jnp.sum(jnp.asarray(c) * nat.inclusion_probabilities(
            x, jnp.asarray(n), mask=jnp.asarray(mask)))

    g_jax = _np(jax.jit(jax.grad(f_jax))(jnp.asarray(x)))
    xt = torch.asarray(x).requires_grad_(True)
    (torch.asarray(c) * nat.inclusion_probabilities(
        xt, torch.asarray(n), mask=torch.asarray(mask))).sum().backward()
    assert xt.grad is not None
    np.testing.assert_allclose(g_jax, xt.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert np.all(g_jax[~mask] == 0)
    # vmap over rows = the batched call
    got = jax.vmap(lambda x, n, m: nat.inclusion_probabilities(x, n, mask=m))(
        jnp.asarray(x), jnp.asarray(n), jnp.asarray(mask))
    np.testing.assert_allclose(_np(got), nat.inclusion_probabilities(x, n, mask=mask),
                               rtol=1e-14)


# ---------------------------------------------------------------------------- estimators
def _sample(case: Any, d_np: Any) -> np.ndarray:
    """A sample of the case with at least one unit in every non-empty row (Hájek defined)."""
    for seed in range(200):
        s = np.asarray(d_np.draw(seed))
        if np.all(s.any(-1) | ~case.mask.any(-1)):
            return s
    raise AssertionError("no sample with every row non-empty")


def _estimates(xp_y: Any, s: Any, d: Any, pi: Any, empty: np.ndarray) -> dict[str, Any]:
    """Every estimator of the case; Hájek only where each row has a sampled unit."""
    out = {
        "ht_total": nat.ht_total(xp_y, s, pi, axis=1),
        "design_variance": nat.design_variance(xp_y, d, axis=1),
        "design_variance_dense": nat.design_variance(xp_y, d, axis=1, method="dense"),
        "variance_estimate": nat.variance_estimate(xp_y, s, d, axis=1),
    }
    if not empty.any():
        out["hajek_mean"] = nat.hajek_mean(xp_y, s, pi, axis=1)
        out["variance_estimate_hajek"] = nat.variance_estimate(xp_y, s, d, axis=1,
                                                               estimator="hajek")
    if d.has_fixed_size():
        out["variance_estimate_syg"] = nat.variance_estimate(xp_y, s, d, axis=1, method="syg")
    return out


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_estimators_under_jit_and_vmap(case: Any) -> None:
    """Values (and warnings) under jit equal numpy's eager ones; vmap over a stack of y."""
    d_np, d = case.build(NP), case.build(JAX)
    s_np = _sample(case, d_np)
    y_np = population_y(case)  # NaN at ineligible positions
    empty = ~s_np.any(-1)
    expected, warned = _recorded(
        lambda: _estimates(y_np, s_np, d_np, d_np.inclusion_probabilities(), empty))
    s, pi = jnp.asarray(s_np), d.inclusion_probabilities()
    got, warned_jit = _recorded(
        lambda: jax.jit(lambda y: _estimates(y, s, d, pi, empty))(jnp.asarray(y_np)))
    assert warned_jit == warned  # e.g. BiasedVarianceEstimateWarning survives jit
    assert set(got) == set(expected)
    for k, v in expected.items():
        np.testing.assert_allclose(_np(got[k]), v, rtol=1e-10, atol=1e-12, err_msg=k)
    ys = np.stack([y_np, 2 * y_np - 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nat.BiasedVarianceEstimateWarning)
        batched = jax.vmap(lambda y: _estimates(y, s, d, pi, empty))(jnp.asarray(ys))
        for j in range(2):
            ref = _estimates(ys[j], s_np, d_np, d_np.inclusion_probabilities(), empty)
            for k, v in ref.items():
                np.testing.assert_allclose(_np(batched[k][j]), v, rtol=1e-10, atol=1e-12,
                                           err_msg=k)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_sample_then_estimate_one_jit(case: Any) -> None:
    """uniforms -> sample -> HT total in one jitted function, vmapped over draws."""
    d_np, d = case.build(NP), case.build(JAX)
    y_np = population_y(case)
    pi = d.inclusion_probabilities()
    u = uniforms(8, (6, *d.uniform_shape), xp=np, device="cpu")

    @jax.jit
    def estimate(u: Any, y: Any) -> Any:
        return nat.ht_total(y, d.sample(u), pi, axis=1)

    got = jax.vmap(estimate, in_axes=(0, None))(jnp.asarray(u), jnp.asarray(y_np))
    for j in range(len(u)):
        ref = nat.ht_total(y_np, d_np.sample(u[j]), d_np.inclusion_probabilities(), axis=1)
        np.testing.assert_allclose(_np(got[j]), ref, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- gradients
def _grad_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    pi = rng.uniform(0.1, 1.0, (2, 8))
    s = rng.random((2, 8)) < 0.5
    s[:, 0] = True
    y = np.where(s[..., None], rng.normal(size=(2, 8, 3)), np.nan)  # NaN at unsampled units
    return y, s, pi


@pytest.mark.parametrize("jit", [False, True], ids=["grad", "jit-grad"])
def test_estimator_gradients_are_analytic(jit: bool) -> None:
    """dHT/dy_k = I_k/pi_k; dHajek/dy_k = I_k/(pi_k N-hat); dHT/dpi_k = -I_k y_k/pi_k^2."""
    y, s, pi = _grad_inputs()
    sj, pj = jnp.asarray(s), jnp.asarray(pi)

    def grad(f: Callable[..., Any], argnums: int = 0) -> Callable[..., Any]:
        g = jax.grad(f, argnums=argnums)
        return jax.jit(g) if jit else g

    g = _np(grad(lambda y: jnp.sum(nat.ht_total(y, sj, pj, axis=1)))(jnp.asarray(y)))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, np.broadcast_to((s / pi)[..., None], g.shape), rtol=1e-15)
    g = _np(grad(lambda y: jnp.sum(nat.hajek_mean(y, sj, pj, axis=1)))(jnp.asarray(y)))
    nhat = (s / pi).sum(-1, keepdims=True)
    np.testing.assert_allclose(g, np.broadcast_to((s / pi / nhat)[..., None], g.shape),
                               rtol=1e-13)
    y1 = np.nan_to_num(y[..., 0])
    g = _np(grad(lambda p: jnp.sum(nat.ht_total(jnp.asarray(y1), sj, p)))(pj))
    np.testing.assert_allclose(g, np.where(s, -y1 / pi**2, 0.0), rtol=1e-14)


@pytest.mark.parametrize("jit", [False, True], ids=["grad", "jit-grad"])
def test_poisson_variance_gradient_is_analytic(jit: bool) -> None:
    r"""Poisson V = sum_k (1 - pi_k) y_k^2 / pi_k.

    dV/dy_k = 2 (1 - pi_k) y_k / pi_k and dV/dpi_k = -y_k^2 / pi_k^2 (0 at ineligible units).
    """
    rng = np.random.default_rng(5)
    mask = rng.random((3, 9)) < 0.7
    pi = rng.uniform(0.1, 1.0, mask.shape)
    y = np.where(mask, rng.normal(size=mask.shape), np.nan)  # NaN padding
    d = nat.Poisson(jnp.asarray(pi), mask=jnp.asarray(mask))

    def grad(f: Callable[..., Any]) -> Callable[..., Any]:
        return jax.jit(jax.grad(f)) if jit else jax.grad(f)

    g = _np(grad(lambda y: jnp.sum(nat.design_variance(y, d)))(jnp.asarray(y)))
    y0 = np.nan_to_num(y)
    np.testing.assert_allclose(g, np.where(mask, 2 * (1 - pi) * y0 / pi, 0.0), rtol=1e-13)
    g = _np(grad(lambda p: jnp.sum(nat.design_variance(
        jnp.asarray(y), nat.Poisson(p, mask=jnp.asarray(mask)))))(jnp.asarray(pi)))
    np.testing.assert_allclose(g, np.where(mask, -(y0**2) / pi**2, 0.0), rtol=1e-13)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_match_torch_autograd(case: Any) -> None:
    """jax.grad of ht_total, hajek_mean, design_variance, variance_estimate == torch autograd."""
    d_np, d, d_t = case.build(NP), case.build(JAX), case.build(TORCH)
    s_np = _sample(case, d_np)
    y_np = population_y(case, pad=0.0)
    empty = ~s_np.any(-1)
    c = np.random.default_rng(1).normal(size=(case.n_rows, 2))  # a generic linear functional

    def losses(xp: Any, y: Any, s: Any, d: Any) -> dict[str, Callable[[Any], Any]]:
        pi = d.inclusion_probabilities()
        cc = xp.asarray(c)
        out = {
            "ht_total": lambda y: xp.sum(cc * nat.ht_total(y, s, pi, axis=1)),
            "design_variance": lambda y: xp.sum(cc * nat.design_variance(y, d, axis=1)),
            "variance_estimate": lambda y: xp.sum(cc * nat.variance_estimate(y, s, d, axis=1)),
        }
        if not empty.any():
            out["hajek_mean"] = lambda y: xp.sum(cc * nat.hajek_mean(y, s, pi, axis=1))
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nat.BiasedVarianceEstimateWarning)
        fj = losses(jnp, None, jnp.asarray(s_np), d)
        ft = losses(torch, None, torch.asarray(s_np), d_t)
        for k in fj:
            g_jax = _np(jax.jit(jax.grad(fj[k]))(jnp.asarray(y_np)))
            yt = torch.asarray(y_np).requires_grad_(True)
            ft[k](yt).backward()
            assert yt.grad is not None
            np.testing.assert_allclose(g_jax, yt.grad.numpy(), rtol=1e-10, atol=1e-12,
                                       err_msg=k)


# ---------------------------------------------------------------------------- trust and refusals
def test_value_checks_run_eagerly_and_are_skipped_under_jit() -> None:
    """Eagerly a bad pi is refused; under jit the caller's inputs are trusted (documented)."""
    bad = jnp.asarray([0.5, 1.5, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        nat.Poisson(bad)
    s = jax.jit(lambda p: nat.Poisson(p).sample(jnp.full(3, 0.4)))(bad)
    np.testing.assert_array_equal(_np(s), [True, True, False])  # u < pi, pi = 1.5 kept
    y, samp = jnp.ones(3), jnp.asarray([True, True, False])
    with pytest.raises(ValueError, match="pi"):
        nat.ht_total(y, samp, jnp.asarray([0.5, 0.0, 0.5]))
    assert np.isinf(_np(jax.jit(lambda p: nat.ht_total(y, samp, p))(jnp.asarray([0.5, 0.0, 0.5]))))


def test_type_and_shape_checks_still_run_under_jit() -> None:
    d = nat.Prefix(jnp.asarray([[1.0, 0.5, 0.25]]))
    with pytest.raises(ValueError, match="uniform_shape"):
        jax.jit(d.sample)(jnp.zeros((2,)))
    with pytest.raises(ValueError, match="real floating dtype"):
        jax.jit(lambda u: nat.Poisson(u))(jnp.asarray([1, 0]))


def test_has_fixed_size_on_traced_pi_is_refused_clearly() -> None:
    """Systematic.has_fixed_size reads pi: traced pi gives a TypeError that says what to do."""
    y, s = jnp.ones(4), jnp.asarray([True, False, True, False])

    def syg(pi: Any) -> Any:
        return nat.variance_estimate(y, s, nat.Systematic(pi), method="syg")

    with pytest.raises(TypeError, match="build the design outside"):
        jax.jit(syg)(jnp.full(4, 0.5))
    d = nat.Systematic(jnp.full(4, 0.5))  # built eagerly and closed over: fine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nat.BiasedVarianceEstimateWarning)
        got = jax.jit(lambda y: nat.variance_estimate(y, s, d, method="syg"))(y)
    assert np.isfinite(_np(got))
