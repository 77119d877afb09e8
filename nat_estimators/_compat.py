r"""Backend layer: the only module that imports :mod:`array_api_compat`.

Every public function of the package infers the array namespace of its array arguments with
:func:`namespace`, creates new arrays with explicit ``dtype=`` and ``device=`` and never moves data
between devices.  The helpers here cover the few operations the array API standard spells out
awkwardly (gathers along the last axis, float dtype choice, Python-bool reductions).

JAX transformations (``jax.jit``, ``jax.grad``, ``jax.vmap``) hand the functions *tracers*:
arrays with a shape and a dtype but, in general, no readable values and no device.
:func:`is_traced` recognises them; value checks are skipped on them
(:func:`nat_estimators._validation.any_true`) and device checks accept them
(:func:`on_other_device`): under a transformation the caller's inputs are trusted, as in
``array-api-extra``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import array_api_compat
from array_api_compat import array_namespace, device, is_array_api_obj

__all__ = [
    "Array",
    "at_least_float32",
    "device_of",
    "eager_eval",
    "float_dtype",
    "gather_last",
    "is_array",
    "is_floating",
    "is_half",
    "is_torch_namespace",
    "is_traced",
    "namespace",
    "on_other_device",
    "sort_last",
    "to_numpy",
]

#: Type alias for any array-API compatible array (numpy, torch, array-api-strict, ...).
Array = Any


def namespace(*arrays: Any, names: tuple[str, ...] | None = None) -> Any:
    """Array namespace shared by ``arrays`` (``None`` entries and Python scalars are ignored).

    ``names`` (one per argument) name the arguments in the error for mixed libraries.

    Raises
    ------
    TypeError
        If no argument is an array, or the arrays come from different libraries.
    """
    arrs = [a for a in arrays if a is not None and is_array_api_obj(a)]
    if not arrs:
        raise TypeError(
            "expected at least one array (numpy, torch, array-api-strict, ...); got "
            + ", ".join(type(a).__name__ for a in arrays)
        )
    try:
        return array_namespace(*arrs)
    except TypeError:
        labels = names if names is not None and len(names) == len(arrays) else tuple(
            f"argument {i + 1}" for i in range(len(arrays)))
        kinds = [f"{lab} is a {type(a).__module__.split('.')[0]} {type(a).__name__}"
                 for lab, a in zip(labels, arrays, strict=True)
                 if a is not None and is_array_api_obj(a)]
        raise TypeError(
            "the arrays of one call must come from one array library, but "
            + ", ".join(kinds)
            + "; convert them first (e.g. torch.as_tensor(a) or t.numpy())"
        ) from None


def is_array(x: Any) -> bool:
    """Whether ``x`` is an array of an array-API compatible library."""
    return bool(is_array_api_obj(x))


def device_of(x: Array) -> Any:
    """Device of ``x`` (``"cpu"`` for numpy; ``None`` for a JAX tracer, which has none)."""
    return device(x)


def is_traced(*arrays: Any) -> bool:
    """Whether any of ``arrays`` is a JAX tracer (inside ``jax.jit``, ``jax.grad``, ...).

    A tracer's values cannot be read (``bool(x)`` raises or forces a host round trip), so the
    package never branches on them.  Cheap for every other array (JAX is not even imported).
    """
    for a in arrays:
        if array_api_compat.is_jax_array(a):
            import jax

            if isinstance(a, jax.core.Tracer):
                return True
    return False


def eager_eval(xp: Any) -> contextlib.AbstractContextManager[Any]:
    """Context in which operations on concrete arrays give concrete arrays, even in a JAX trace.

    Inside ``jax.jit`` every operation is staged out, even on arrays closed over from outside
    (a design built eagerly); ``jax.ensure_compile_time_eval`` computes those now, so a property
    of the design (e.g. whether its sample size is fixed) can still be read.  A no-op elsewhere.
    """
    if array_api_compat.is_jax_namespace(xp):
        import jax

        return jax.ensure_compile_time_eval()
    return contextlib.nullcontext()


def on_other_device(x: Array, dev: Any) -> bool:
    """Whether ``x`` provably lives on a device other than ``dev``.

    ``False`` when either side is unknown: a JAX tracer (and an array built from one) has no
    device (``None``); under a transformation JAX places the data itself.
    """
    if dev is None or is_traced(x):
        return False
    d = device_of(x)
    return d is not None and d != dev


def is_floating(xp: Any, x: Array) -> bool:
    """Whether ``x`` has a real floating dtype."""
    return bool(xp.isdtype(x.dtype, "real floating"))


def float_dtype(xp: Any, *arrays: Array) -> Any:
    """Result float dtype for ``arrays``: their promoted real floating dtype.

    Non-floating arguments are ignored; with none floating, the default float dtype of ``xp``
    (float64 for numpy/torch-with-default) is returned.
    """
    dts = [a.dtype for a in arrays if a is not None and is_floating(xp, a)]
    if not dts:
        return xp.asarray(0.0).dtype
    return xp.result_type(*dts)


def at_least_float32(xp: Any, dtype: Any) -> Any:
    r"""``dtype`` promoted to at least float32 (half precision -> float32, others unchanged).

    Half precision (float16: 11 significant bits, largest value 65504; bfloat16: 8 bits) cannot
    hold the sums and reciprocals the estimators form — ``1/pi`` overflows float16 below
    :math:`\pi \approx 1.5 \cdot 10^{-5}` and a sum of a few thousand probabilities misses its
    budget by percents — so computations accumulate in at least float32.
    """
    return xp.result_type(dtype, xp.float32)


def is_half(xp: Any, dtype: Any) -> bool:
    """Whether ``dtype`` is a floating dtype narrower than float32 (float16, bfloat16)."""
    return bool(xp.isdtype(dtype, "real floating")) and xp.finfo(dtype).bits < 32


def float64_or_best(xp: Any, dev: Any) -> Any:
    """float64 where the backend/device supports it, else float32.

    JAX has float64 only with ``jax_enable_x64`` on (otherwise it would silently return float32
    with a warning).
    """
    if array_api_compat.is_jax_namespace(xp):
        import jax

        return xp.float64 if jax.config.read("jax_enable_x64") else xp.float32
    try:
        xp.zeros((1,), dtype=xp.float64, device=dev)
        return xp.float64
    except (TypeError, RuntimeError, ValueError):  # pragma: no cover - e.g. torch MPS
        return xp.float32




def gather_last(xp: Any, x: Array, idx: Array) -> Array:
    """``out[..., j] = x[..., idx[..., j]]`` (integer gather along the last axis).

    ``x`` and ``idx`` must have the same number of dimensions; leading axes broadcast.
    """
    shape = tuple(
        max(a, b) for a, b in zip(x.shape[:-1], idx.shape[:-1], strict=True)
    )
    x = xp.broadcast_to(x, (*shape, x.shape[-1]))
    idx = xp.broadcast_to(idx, (*shape, idx.shape[-1]))
    return xp.take_along_axis(x, idx, axis=-1)


def sort_last(xp: Any, x: Array) -> Array:
    """Unstable ascending sort along the last axis, with a fast path for CPU torch tensors.

    PyTorch's CPU sort of float64 is ~15x slower than numpy's; a CPU tensor that needs no
    gradient is sorted through a zero-copy numpy view (same device, same memory: nothing moves).
    """
    if (
        array_api_compat.is_torch_array(x)
        and x.device.type == "cpu"
        and not x.requires_grad
        and x.dtype.is_floating_point
    ):
        import numpy as np
        import torch

        return torch.from_numpy(np.sort(x.numpy(), axis=-1))
    return xp.sort(x, axis=-1, stable=False)




def is_torch_namespace(xp: Any) -> bool:
    """Whether ``xp`` is torch (or array_api_compat's torch wrapper)."""
    return bool(array_api_compat.is_torch_namespace(xp))


def to_numpy(x: Array) -> Any:
    """Copy ``x`` to a numpy array on the host (used by tests and reporting, never in the core)."""
    import numpy as np

    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_numpy_array(x):
        return x
    return np.from_dlpack(x)
