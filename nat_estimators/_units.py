"""Alignment of unit-indexed values ``y`` with masks and designs (private).

``axis`` is the unit axis of ``y``: axes before it are row (batch) axes, axes after it are value
axes (vector-valued ``y``, e.g. a per-token gradient).  Internally ``y`` is reshaped to
``(*batch, N, q)`` with the value axes flattened into ``q`` (``q = 1`` for scalar ``y``).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._compat import Array, device_of, is_array, is_floating, namespace, on_other_device

__all__ = ["Units", "align_units", "quiet_float_errors"]


@contextlib.contextmanager
def quiet_float_errors() -> Iterator[None]:
    """Silence numpy's floating-point warnings (``0 * inf``, overflow) inside the block.

    For code that computes optimistically on data that may hold NaN/Inf padding with weight 0 and
    checks the result afterwards.  Only numpy-backed namespaces (numpy, array-api-strict) warn;
    ``numpy.errstate`` is context-local and does not touch other backends.  numpy is a dependency
    of the package; it is imported here only for its error state, never for array computations.
    """
    import numpy

    with numpy.errstate(invalid="ignore", over="ignore", divide="ignore"):
        yield


@dataclass(frozen=True)
class Units:
    """``y`` reshaped to ``(*batch, N, q)`` plus what is needed to shape results back."""

    xp: Any
    y: Array
    batch_shape: tuple[int, ...]
    value_shape: tuple[int, ...]

    def restore(self, r: Array) -> Array:
        """``(*batch, q)`` -> ``(*batch, *value_shape)``."""
        return self.xp.reshape(r, (*self.batch_shape, *self.value_shape))

    def restore_cov(self, c: Array) -> Array:
        """``(*batch, q, q)`` -> ``(*batch, *value_shape, *value_shape)``."""
        return self.xp.reshape(c, (*self.batch_shape, *self.value_shape, *self.value_shape))


def align_units(
    y: Any,
    axis: int,
    unit_shape: tuple[int, ...] | None,
    *others: Any,
    names: tuple[str, ...] | None = None,
) -> Units:
    """Validate ``y`` against the expected ``(*batch, N)`` unit shape and flatten value axes.

    Parameters
    ----------
    y : array
        Values; must have a real floating dtype.
    axis : int
        Unit axis of ``y`` (negative values count from the end).
    unit_shape : tuple of int, optional
        Expected ``y.shape[:axis + 1]`` (the shape of the mask / the design's arrays).
    others : arrays
        Other arrays of the call (for namespace inference).
    names : tuple of str, optional
        The names of ``others`` (for the error on arrays from different libraries).
    """
    if not is_array(y):
        raise TypeError(f"y must be an array, got {type(y).__name__}")
    xp = namespace(y, *others, names=("y", *names) if names is not None else None)
    if not is_floating(xp, y):
        raise ValueError(f"y must have a real floating dtype, got {y.dtype}")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    axis = int(axis)  # numpy integers are fine
    nd = y.ndim
    if not -nd <= axis < nd:
        raise ValueError(f"axis={axis} is out of range for y with {nd} dimension(s)")
    a = axis % nd
    ushape = tuple(y.shape[: a + 1])
    if unit_shape is not None and ushape != tuple(unit_shape):
        raise ValueError(
            f"y.shape[:axis + 1] = {ushape} does not match the mask/design shape "
            f"{tuple(unit_shape)}; y must be aligned with them up to and including the unit axis "
            f"(axis={axis})"
        )
    for o in others:
        if o is not None and is_array(o) and on_other_device(o, device_of(y)):
            raise ValueError(
                f"arrays live on different devices ({device_of(y)} and {device_of(o)}); "
                "move them to one device first"
            )
    value_shape = tuple(y.shape[a + 1 :])
    q = math.prod(value_shape) if value_shape else 1
    y2 = xp.reshape(y, (*ushape, q))
    return Units(xp=xp, y=y2, batch_shape=ushape[:-1], value_shape=value_shape)
