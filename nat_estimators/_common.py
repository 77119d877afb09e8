"""Small helpers shared by the design modules (private)."""

from __future__ import annotations

from typing import Any

from ._compat import Array, device_of, namespace
from ._validation import check_bool_mask, check_float_array, check_probabilities

__all__ = ["eligible_rank", "prepare_pi_and_mask", "resolve_mask", "trusted"]


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
    if device_of(mask) != dev:
        raise ValueError(
            f"mask is on device {device_of(mask)} but pi is on {dev}; move one of them"
        )
    return mask


def prepare_pi_and_mask(pi: Array, mask: Array | None) -> tuple[Any, Array, Array]:
    """Validate ``pi`` in (0, 1] on eligible positions; return ``(xp, pi_clean, mask)``.

    ``pi_clean`` is ``pi`` with exact zeros at ineligible positions.
    """
    xp = namespace(pi, mask)
    pi = check_float_array(xp, pi, "pi")
    if pi.shape[-1] == 0:
        raise ValueError("pi has an empty token axis; there must be at least one token position")
    mask = resolve_mask(xp, mask, tuple(pi.shape), device_of(pi))
    check_probabilities(xp, pi, mask, "pi")
    return xp, xp.where(mask, pi, xp.zeros_like(pi)), mask


def eligible_rank(xp: Any, mask: Array) -> Array:
    """1-based rank of each position among its row's eligible positions (0 where ineligible)."""
    r = xp.cumulative_sum(xp.astype(mask, xp.int64), axis=-1)
    return xp.where(mask, r, xp.zeros_like(r))
