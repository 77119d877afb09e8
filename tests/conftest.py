"""Shared fixtures: the array backends every test runs on.

``backend`` parametrizes a test over numpy, torch (CPU), array-api-strict, JAX (CPU, with
``jax_enable_x64`` on; skipped with the reason when JAX is not installed) and, when a GPU is
present, torch on CUDA.  A :class:`Backend` knows its namespace and device, builds arrays there
from numpy data (:meth:`Backend.asarray`) and copies results back (:meth:`Backend.to_numpy`), so a
test body is written once, in numpy terms, and checks the library on every backend.

``device_backend`` adds array-api-strict's second, non-default device (``Device("device1")``),
which catches code that silently creates arrays on the default device even without a GPU.

The array-api-strict backend runs with ``boolean_indexing`` and ``data_dependent_shapes``
disabled: the core must not use either (the array API conventions of the core).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import array_api_strict
import numpy as np
import pytest
import torch
from hypothesis import settings

from nat_estimators._compat import device_of, namespace, to_numpy

# Hypothesis: modest, deterministic runs (`deadline=None`: array-api-strict and the first torch
# call are slow to warm up).  HYPOTHESIS_PROFILE=thorough runs long, randomized searches.
settings.register_profile("nat", max_examples=40, deadline=None, derandomize=True, database=None)
settings.register_profile("thorough", max_examples=1000, deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "nat"))

# When a hypothesis test fails, hypothesis imports its patch writer, which imports libcst, which
# (in some versions) trips a DeprecationWarning from mypy_extensions; with `filterwarnings =
# error` that turns the failure report into an INTERNALERROR.  Import it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:  # pragma: no cover - libcst absent: nothing to pre-import
        pass

HAS_CUDA = bool(torch.cuda.is_available())

try:  # optional backend (the [jax] extra); float64 as on the other backends
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
except ImportError:  # pragma: no cover - JAX not installed: its cases skip
    jax = None
    jnp = None
JAX_MISSING = "JAX is not installed (pip install -e '.[jax]')"


@dataclass(frozen=True)
class Backend:
    """An array library on one device, with helpers to move numpy test data in and out."""

    name: str
    module: Any  # the library itself (numpy, torch, array_api_strict, jax.numpy)
    device: Any

    @property
    def xp(self) -> Any:
        """The library's array-API namespace (as the package itself sees it)."""
        return namespace(self.asarray(np.zeros(1)))

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Array on this backend/device from numpy data; keeps the numpy dtype unless ``dtype``.

        ``dtype`` may be a numpy dtype (``np.float32``) or a dtype name (``"float32"``).
        """
        arr = np.asarray(a)
        if dtype is not None:
            arr = arr.astype(np.dtype(dtype))
        if self.module is np:
            return arr.copy()
        if self.module is torch:
            return torch.asarray(arr.copy(), device=self.device)
        if jnp is not None and self.module is jnp:
            return jnp.asarray(arr, device=self.device)
        return array_api_strict.asarray(arr, device=self.device)

    def dtype(self, name: str) -> Any:
        """This backend's dtype called ``name`` (``"float32"``, ``"bool"``, ...)."""
        return getattr(self.xp, name)

    def to_numpy(self, x: Any) -> np.ndarray:
        """Host numpy copy of ``x`` (via :func:`nat_estimators._compat.to_numpy`)."""
        return np.asarray(to_numpy(x))

    def check_array(self, x: Any, shape: tuple[int, ...] | None = None) -> None:
        """Assert ``x`` is this backend's array, on this backend's device (and of ``shape``)."""
        if self.module is np:  # numpy reductions to 0-d give numpy scalars (np.float64, ...)
            assert isinstance(x, (np.ndarray, np.generic)), (type(x), self.name)
        else:
            assert type(x) is type(self.asarray(np.zeros(1))), (type(x), self.name)
        assert device_of(x) == self.device, (device_of(x), self.device)
        if shape is not None:
            assert tuple(x.shape) == tuple(shape), (tuple(x.shape), shape)

    def torch_generator(self, seed: int) -> torch.Generator:
        """A seeded ``torch.Generator`` usable with this backend (on its device for torch)."""
        dev = self.device if self.module is torch else "cpu"
        return torch.Generator(device=dev).manual_seed(seed)

    def __repr__(self) -> str:
        return f"Backend({self.name})"


_STRICT_CPU = array_api_strict.Device("CPU_DEVICE")

_BACKENDS: dict[str, Backend] = {
    "numpy": Backend("numpy", np, "cpu"),
    "torch": Backend("torch", torch, torch.device("cpu")),
    "array_api_strict": Backend("array_api_strict", array_api_strict, _STRICT_CPU),
}
_JAX_CPU = jax.devices("cpu")[0] if jax is not None else None
_BACKENDS["jax"] = Backend("jax", jnp, _JAX_CPU)
if HAS_CUDA:  # pragma: no cover - only on GPU machines
    _BACKENDS["torch-cuda"] = Backend("torch-cuda", torch, torch.device("cuda", 0))

_DEVICE_BACKENDS = dict(_BACKENDS)
_DEVICE_BACKENDS["array_api_strict-device1"] = Backend(
    "array_api_strict-device1", array_api_strict, array_api_strict.Device("device1")
)

BACKEND_NAMES = list(_BACKENDS)


def _activate(name: str, backends: dict[str, Backend]) -> Iterator[Backend]:
    bk = backends[name]
    if name == "jax" and jax is None:
        pytest.skip(JAX_MISSING)
    if bk.module is array_api_strict:
        with array_api_strict.ArrayAPIStrictFlags(boolean_indexing=False,
                                                  data_dependent_shapes=False):
            yield bk
    else:
        yield bk


@pytest.fixture(scope="session", params=list(_BACKENDS))
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Every array backend: numpy, torch, array_api_strict, jax (and torch-cuda when available)."""
    yield from _activate(request.param, _BACKENDS)


@pytest.fixture(scope="session", params=list(_DEVICE_BACKENDS))
def device_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """``backend`` plus array-api-strict on its non-default device ``device1``."""
    yield from _activate(request.param, _DEVICE_BACKENDS)


#: Hypothesis examples per test on JAX: every new shape compiles each XLA primitive again (eager
#: JAX), so the random-shape property tests run fewer examples there (the same strategies).
JAX_MAX_EXAMPLES = 10


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Run hypothesis tests on the ``jax`` backend with at most ``JAX_MAX_EXAMPLES`` examples."""
    fn = getattr(item, "obj", None)
    callspec = getattr(item, "callspec", None)
    current = getattr(fn, "_hypothesis_internal_use_settings", None)
    on_jax = callspec is not None and any(
        isinstance(v, str) and v == "jax" for v in callspec.params.values())
    if current is None or not on_jax or current.max_examples <= JAX_MAX_EXAMPLES:
        yield
        return
    fn._hypothesis_internal_use_settings = settings(current, max_examples=JAX_MAX_EXAMPLES)
    try:
        yield
    finally:
        fn._hypothesis_internal_use_settings = current


@pytest.fixture(scope="session")
def numpy_backend() -> Backend:
    """The numpy backend alone (reference computations)."""
    return _BACKENDS["numpy"]


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: torch intra-op threads only add synchronisation (badly so on a loaded
    machine); modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
