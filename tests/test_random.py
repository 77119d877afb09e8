r"""The RNG adapter (:func:`nat_estimators.uniforms`), ``draw``, devices, namespaces and dtypes.

``device_backend`` adds array-api-strict's second device (``Device("device1")``) to the backends,
so "stays on the input's device" is tested even without a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import HAS_CUDA

import nat_estimators as nat
from nat_estimators._compat import device_of

SHAPE = (3, 4)


def _designs(bk: Any) -> dict[str, Any]:
    """One design of each kind on ``bk`` (ragged (2, 5) batch)."""
    mask = np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 0]], bool)
    pi = np.where(mask, np.array([0.9, 0.7, 0.5, 0.3, 0.2]), 0.0)
    m, p = bk.asarray(mask), bk.asarray(pi)
    return {
        "Poisson": nat.Poisson(p, mask=m),
        "SimpleRandom": nat.SimpleRandom(2, mask=m),
        "Systematic": nat.Systematic(p, mask=m),
        "Prefix": nat.Prefix(p, mask=m),
        "Prefix.from_fraction": nat.Prefix.from_fraction(0.5, mask=m, full_keep=0.2),
        "Prefix.from_cut_pmf": nat.Prefix.from_cut_pmf(
            bk.asarray(np.array([[0.2, 0.2, 0.2, 0.1, 0.3, 0.0],
                                 [0.3, 0.2, 0.2, 0.3, 0.0, 0.0]])),
            mask=m),
        "Poisson.from_fraction": nat.Poisson.from_fraction(0.5, mask=m),
        "Systematic.from_fraction": nat.Systematic.from_fraction(0.5, mask=m),
        "SimpleRandom.from_fraction": nat.SimpleRandom.from_fraction(0.5, mask=m),
        "Poisson.proportional": nat.Poisson.proportional(
            bk.asarray(np.where(mask, 1.0, np.nan)), 1, mask=m),
    }


# ---------------------------------------------------------------------------- uniforms
def test_uniforms_from_seed_identical_everywhere(device_backend: Any) -> None:
    bk = device_backend
    u = nat.uniforms(42, SHAPE, xp=bk.xp, device=bk.device)
    bk.check_array(u, SHAPE)
    assert u.dtype == bk.xp.float64
    np.testing.assert_array_equal(bk.to_numpy(u), np.random.default_rng(42).random(SHAPE))


def test_uniforms_from_numpy_generator(device_backend: Any) -> None:
    bk = device_backend
    g = np.random.default_rng(3)
    u1 = nat.uniforms(g, SHAPE, xp=bk.xp, device=bk.device)
    u2 = nat.uniforms(g, SHAPE, xp=bk.xp, device=bk.device)  # the generator advances
    ref = np.random.default_rng(3)
    np.testing.assert_array_equal(bk.to_numpy(u1), ref.random(SHAPE))
    np.testing.assert_array_equal(bk.to_numpy(u2), ref.random(SHAPE))
    bk.check_array(u2, SHAPE)


def test_uniforms_from_torch_generator(device_backend: Any) -> None:
    bk = device_backend
    dev = bk.device if bk.module is torch else "cpu"
    u = nat.uniforms(bk.torch_generator(8), SHAPE, xp=bk.xp, device=bk.device)
    bk.check_array(u, SHAPE)
    assert u.dtype == bk.xp.float64
    ref = torch.rand(SHAPE, generator=torch.Generator(device=dev).manual_seed(8),
                     dtype=torch.float64, device=dev)
    np.testing.assert_array_equal(bk.to_numpy(u), ref.cpu().numpy())
    u = bk.to_numpy(nat.uniforms(bk.torch_generator(8), (1000,), xp=bk.xp, device=bk.device))
    assert u.min() >= 0 and u.max() < 1 and len(np.unique(u)) == 1000


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_torch_generator_on_the_wrong_device() -> None:  # pragma: no cover - GPU only
    pi = torch.full((4,), 0.5, dtype=torch.float64, device="cuda")
    with pytest.raises(ValueError, match=r"torch.Generator lives on cpu"):
        nat.Poisson(pi).draw(torch.Generator(device="cpu"))
    with pytest.raises(ValueError, match=r"cannot feed a non-torch array"):
        nat.Poisson(np.full(4, 0.5)).draw(torch.Generator(device="cuda"))


# ---------------------------------------------------------------------------- draw
def test_every_constructor_stays_on_the_device(device_backend: Any) -> None:
    """Outputs of every design and constructor: input's namespace, device, documented shapes."""
    bk = device_backend
    for name, d in _designs(bk).items():
        b, n = d.batch_shape, d.num_units
        assert (b, n) == ((2,), 5), name
        for out, shape in [
            (d.inclusion_probabilities(), (*b, n)),
            (d.joint_inclusion_probabilities(), (*b, n, n)),
            (d.expected_size(), b),
            (d.max_weight(), b),
            (d.draw(0), (*b, n)),
            (d.draw(np.random.default_rng(0)), (*b, n)),
            (d.draw(bk.torch_generator(0)), (*b, n)),
            (d.sample(nat.uniforms(1, d.uniform_shape, xp=bk.xp, device=bk.device)), (*b, n)),
        ]:
            bk.check_array(out, shape)
        if isinstance(d, nat.Prefix):
            bk.check_array(d.cut_pmf(), (*b, n + 1))
            bk.check_array(d.cut_lengths(d.draw(0)), b)
    bk.check_array(nat.inclusion_probabilities(bk.asarray(np.ones((2, 3))), 1.5), (2, 3))


def test_draw_is_reproducible_and_seed_sensitive(backend: Any) -> None:
    for name, d in _designs(backend).items():
        a = np.stack([backend.to_numpy(d.draw(s)) for s in range(20)])
        b = np.stack([backend.to_numpy(d.draw(s)) for s in range(20)])
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert len({x.tobytes() for x in a}) > 1, name  # 20 seeds do not all agree
        g = backend.torch_generator(5)
        c = [backend.to_numpy(d.draw(g)) for _ in range(20)]  # the generator advances
        assert len({x.tobytes() for x in c}) > 1, name


def test_draw_equals_sample_of_uniforms(backend: Any) -> None:
    for name, d in _designs(backend).items():
        u = nat.uniforms(np.random.default_rng(9), d.uniform_shape, xp=backend.xp,
                         device=backend.device)
        np.testing.assert_array_equal(backend.to_numpy(d.draw(np.random.default_rng(9))),
                                      backend.to_numpy(d.sample(u)), err_msg=name)


def test_float32_uniforms_are_accepted(backend: Any) -> None:
    """sample(u) takes any real floating u; float32 u gives the same sample as float64 u here."""
    u64 = np.array([0.13, 0.61])  # away from every breakpoint of these designs
    for name, d in _designs(backend).items():
        if d.uniform_shape != (2,):
            continue
        s32 = d.sample(backend.asarray(u64, dtype="float32"))
        s64 = d.sample(backend.asarray(u64))
        np.testing.assert_array_equal(backend.to_numpy(s32), backend.to_numpy(s64), err_msg=name)


# ---------------------------------------------------------------------------- mixing
def test_u_from_another_library_is_refused(backend: Any) -> None:
    d = nat.Systematic(backend.asarray(np.full((2, 3), 0.5)))
    other = torch.asarray([0.5, 0.5], dtype=torch.float64) if backend.module is not torch \
        else np.array([0.5, 0.5])
    with pytest.raises(TypeError, match=r"u comes from a different array library"):
        d.sample(other)


def test_other_device_is_refused() -> None:
    import array_api_strict as xs

    dev1 = xs.Device("device1")
    pi = xs.asarray(np.full((2, 3), 0.5), device=dev1)
    d = nat.Poisson(pi)
    assert device_of(d.draw(0)) == dev1
    with pytest.raises(ValueError, match=r"u is on device"):
        d.sample(xs.asarray(np.full((2, 3), 0.5)))
    with pytest.raises(ValueError, match=r"mask is on device"):
        nat.Poisson(pi, mask=xs.asarray(np.ones((2, 3), bool)))


def test_mixed_libraries_are_refused() -> None:
    with pytest.raises(TypeError):
        nat.Poisson(np.full(3, 0.5), mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError):
        nat.inclusion_probabilities(torch.ones(3, dtype=torch.float64),
                                    1, mask=np.ones(3, bool))


# ---------------------------------------------------------------------------- dtypes
def test_float32_probabilities_stay_float32(backend: Any) -> None:
    x = backend.asarray(np.array([[1.0, 2.0, 3.0, 100.0], [1.0, 1.0, 1.0, 1.0]]), dtype="float32")
    pi = nat.inclusion_probabilities(x, 2)
    assert pi.dtype == backend.xp.float32
    np.testing.assert_allclose(backend.to_numpy(pi), [[1 / 6, 1 / 3, 1 / 2, 1], [0.5] * 4],
                               rtol=1e-6)
    for cls in (nat.Poisson, nat.Systematic):
        d = cls(pi)
        assert d.inclusion_probabilities().dtype == backend.xp.float32
        assert d.joint_inclusion_probabilities().dtype == backend.xp.float32
    d = nat.Prefix.from_fraction(0.5, mask=backend.asarray(np.ones((2, 6), bool)),
                               dtype=backend.xp.float32)
    assert d.inclusion_probabilities().dtype == backend.xp.float32
    d = nat.Prefix.from_cut_pmf(backend.asarray(np.array([0.25, 0.25, 0.5]), dtype="float32"))
    assert d.inclusion_probabilities().dtype == backend.xp.float32
    d = nat.SimpleRandom(1, mask=backend.asarray(np.ones(3, bool)))
    assert d.inclusion_probabilities().dtype == backend.xp.float64
