r"""Input checks shared by the designs and estimators, and the validated construction of designs.

Every check raises :class:`ValueError` (or :class:`TypeError` for a wrong kind of object) with a
message that names the argument, says what was wrong and what to do.  Checks reduce to Python
bools, so on an accelerator they synchronise once per check.

Every check of array *values* goes through :func:`any_true`, which reads values only from
concrete arrays: under a JAX transformation (``jax.jit``, ``jax.grad``, ``jax.vmap``) the arrays
are tracers, the value checks are skipped and the caller's inputs are trusted (as in
``array-api-extra``).  Checks of types, dtypes and shapes always run.  Run a function once
eagerly to have its inputs checked.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ._compat import (
    Array,
    at_least_float32,
    device_of,
    is_array,
    is_floating,
    is_half,
    is_traced,
    namespace,
    on_other_device,
)

__all__ = [
    "any_true",
    "check_bool_mask",
    "check_finite_result",
    "check_float_array",
    "check_fraction",
    "check_probabilities",
    "check_same_shape",
    "eligible_rank",
    "prepare_pi_and_mask",
    "resolve_mask",
    "trusted",
]


def any_true(xp: Any, cond: Array) -> bool:
    """``bool(xp.any(cond))`` for a concrete ``cond``; ``False`` for a traced one (trusted).

    The one guard of every value check: under a JAX transformation ``cond`` is a tracer whose
    values cannot be read, and the check is skipped.
    """
    if is_traced(cond):
        return False
    return bool(xp.any(cond))


def check_float_array(xp: Any, a: Any, name: str) -> Array:
    """``a`` must be an array with a real floating dtype (integer/bool probabilities refused)."""
    if not is_array(a):
        raise TypeError(
            f"{name} must be an array (numpy, torch, array-api-strict, ...), got {type(a).__name__}"
        )
    if not is_floating(xp, a):
        raise ValueError(
            f"{name} must have a real floating dtype, got {a.dtype}; convert it first "
            f"(e.g. {name}.astype(float64)) — integer or boolean probabilities are ambiguous"
        )
    if a.ndim < 1:
        raise ValueError(
            f"{name} must have at least one axis (tokens on the last), got a 0-d array"
        )
    return a


def check_bool_mask(xp: Any, mask: Any, name: str, shape: tuple[int, ...] | None = None) -> Array:
    """``mask`` must be a boolean array (of ``shape`` when given)."""
    if not is_array(mask):
        raise TypeError(f"{name} must be a boolean array, got {type(mask).__name__}")
    if mask.dtype != xp.bool:
        raise ValueError(
            f"{name} must have dtype bool, got {mask.dtype}; pass e.g. `{name} != 0` for a 0/1 mask"
        )
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)} but must have shape {tuple(shape)} "
            "(rows on leading axes, tokens on the last)"
        )
    return mask


def check_same_shape(a: Array, b: Array, name_a: str, name_b: str) -> None:
    """``a`` and ``b`` must have identical shapes."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
            "they must be equal"
        )


def check_probabilities(
    xp: Any,
    pi: Array,
    eligible: Array,
    name: str = "pi",
    *,
    allow_zero: bool = False,
) -> None:
    """Probabilities on eligible positions must be finite and in (0, 1] (or [0, 1]).

    Values at ineligible positions are ignored (they may be padding, even NaN).
    """
    # one pass on the happy path (NaN fails both comparisons); diagnose only on failure
    ok = (pi > 0) & (pi <= 1) if not allow_zero else (pi >= 0) & (pi <= 1)
    if not any_true(xp, eligible & ~ok):
        return
    bad = eligible & ~xp.isfinite(pi)
    if any_true(xp, bad):
        raise ValueError(f"{name} contains NaN or Inf at eligible positions; all must be finite")
    if any_true(xp, eligible & ((pi < 0) | (pi > 1))):
        raise ValueError(f"{name} must lie in [0, 1] at eligible positions; found values outside")
    raise ValueError(
        f"{name} is 0 at an eligible position: that token could never be sampled and its "
        "Horvitz–Thompson weight 1/pi would be infinite. Mark it ineligible with mask=, or "
        "give it a positive probability (e.g. add a small floor to the size measure)."
    )


def check_finite_result(xp: Any, out: Array, what: str) -> Array:
    """A result computed from finite inputs must be finite: otherwise it overflowed its dtype.

    Raises instead of returning Inf (or the NaN of Inf - Inf) quietly.
    """
    if any_true(xp, ~xp.isfinite(out)):
        raise ValueError(
            f"{what} overflows {out.dtype} (largest finite value {xp.finfo(out.dtype).max:.3g}): "
            "the inputs are finite but the result is not representable — tiny inclusion "
            "probabilities make 1/pi and its square huge. Pass y and pi (or the design's "
            "probabilities) in float64"
        )
    return out


def check_fraction(v: Any, name: str, *, low_open: bool = True) -> float:
    """A finite Python number in (0, 1] (``low_open``) or [0, 1], returned as float."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    v = float(v)
    ok = (0 < v <= 1) if low_open else (0 <= v <= 1)
    if not ok:
        rng = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must lie in {rng}, got {v}")
    return v


def check_scalar_or_row_array(xp: Any, v: Any, name: str, batch_shape: tuple[int, ...]) -> Any:
    """A Python number, or an array broadcastable to ``batch_shape``; returns it unchanged."""
    if isinstance(v, bool):
        raise TypeError(f"{name} must be a number or an array, got bool")
    if isinstance(v, numbers.Real):
        if not math.isfinite(float(v)):
            raise ValueError(f"{name} must be finite, got {v}")
        return v
    if is_array(v):
        if namespace(v) is not xp:
            raise TypeError(
                f"{name} is a {type(v).__module__.split('.')[0]} {type(v).__name__} but the other "
                "arrays of the call come from another array library; convert it first"
            )
        if not (xp.isdtype(v.dtype, "real floating") or xp.isdtype(v.dtype, "integral")):
            raise ValueError(f"{name} must have a real (integer or floating) dtype, got {v.dtype}")
        if v.ndim > len(batch_shape) or any(
            s not in (1, b) for s, b in zip(v.shape[::-1], batch_shape[::-1], strict=False)
        ):
            raise ValueError(
                f"{name} has shape {tuple(v.shape)}, which does not broadcast to the batch shape "
                f"{tuple(batch_shape)} (one value per row)"
            )
        return v
    raise TypeError(f"{name} must be a number or an array, got {type(v).__name__}")


# ---------------------------------------------------------------------------- designs
def trusted(cls: Any, **fields: Any) -> Any:
    """Build a design from arrays a constructor has already validated (skips ``__post_init__``).

    Only for the package's own constructors, whose output satisfies the design's invariants by
    construction; user input always goes through the validating ``__init__``.
    """
    obj = object.__new__(cls)
    for k, v in fields.items():
        object.__setattr__(obj, k, v)
    return obj


def resolve_mask(xp: Any, mask: Array | None, shape: tuple[int, ...], dev: Any) -> Array:
    """The eligible mask (all True when ``None``), validated against ``shape``."""
    if mask is None:
        return xp.ones(shape, dtype=xp.bool, device=dev)
    mask = check_bool_mask(xp, mask, "mask", shape=shape)
    if on_other_device(mask, dev):
        raise ValueError(
            f"mask is on device {device_of(mask)} but pi is on {dev}; move one of them"
        )
    return mask


def prepare_pi_and_mask(pi: Array, mask: Array | None) -> tuple[Any, Array, Array]:
    """Validate ``pi`` in (0, 1] on eligible positions; return ``(xp, pi_clean, mask)``.

    ``pi_clean`` is ``pi`` with exact zeros at ineligible positions, in at least float32 (a
    half-precision ``pi`` is widened exactly: sums and reciprocals of it are not formed in half
    precision).
    """
    xp = namespace(pi, mask, names=("pi", "mask"))
    pi = check_float_array(xp, pi, "pi")
    if is_half(xp, pi.dtype):
        pi = xp.astype(pi, at_least_float32(xp, pi.dtype))
    if pi.shape[-1] == 0:
        raise ValueError("pi has an empty token axis; there must be at least one token position")
    mask = resolve_mask(xp, mask, tuple(pi.shape), device_of(pi))
    check_probabilities(xp, pi, mask, "pi")
    return xp, xp.where(mask, pi, xp.zeros_like(pi)), mask


def eligible_rank(xp: Any, mask: Array) -> Array:
    """1-based rank of each position among its row's eligible positions (0 where ineligible)."""
    r = xp.cumulative_sum(xp.astype(mask, xp.int64), axis=-1)
    return xp.where(mask, r, xp.zeros_like(r))
