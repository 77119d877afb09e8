"""Input checks shared by :mod:`nat_estimators.rl` (private).

Every check raises :class:`ValueError` (or :class:`TypeError` for a wrong kind of object) with a
message that names the argument.  Checks that inspect values reduce to a Python bool, so on an
accelerator they synchronise once each.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

# the core checks, shared (re-exported for the rl modules)
from .._validation import check_fraction, check_same_shape

__all__ = [
    "as_bool_mask",
    "check_2d",
    "check_fraction",
    "check_positive_number",
    "check_same_shape",
    "check_shared",
    "check_weight_dtype",
]

_WEIGHT_DTYPES = (torch.float32, torch.float64)


def check_shared(shared: Any, design: Any, *, name: str = "shared",
                 design_name: str = "design") -> None:
    """``shared`` (one token budget for the whole batch) is a bool, True only with a
    variance-optimal design (``*_optimal``)."""
    if not isinstance(shared, bool):
        raise ValueError(f"{name} must be a bool, got {shared!r}")
    if shared and not (isinstance(design, str) and design.endswith("_optimal")):
        raise ValueError(
            f"{name}=True (one token budget for the whole batch) needs a variance-optimal "
            f"design (*_optimal), not {design_name}={design!r}"
        )


def check_2d(x: Any, name: str) -> torch.Tensor:
    """``x`` must be a 2-D tensor ``[B, T]`` (rows, token positions)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [batch, tokens], got shape {tuple(x.shape)}")
    return x


def as_bool_mask(mask: Any, name: str, *, check_values: bool = True) -> torch.Tensor:
    """A 2-D boolean mask; 0/1 integer or float masks (verl passes float masks) are converted."""
    mask = check_2d(mask, name)
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise ValueError(f"{name} must be boolean or 0/1, got dtype {mask.dtype}")
    if check_values and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(f"{name} must be boolean or contain only 0 and 1")
    return mask != 0




def check_weight_dtype(dtype: Any, name: str) -> torch.dtype:
    """Weights live in float32 or float64, never in a half type (1/pi overflows or rounds)."""
    if dtype not in _WEIGHT_DTYPES:
        raise ValueError(
            f"{name} must be float32 or float64, got {dtype}: Horvitz–Thompson weights 1/pi "
            "lose precision (bf16 has 8 mantissa bits) or overflow (fp16) in half precision; "
            "keep the weights in float32 and let the loss be cast up"
        )
    return dtype




def check_positive_number(v: Any, name: str, *, allow_zero: bool = False) -> Any:
    """A finite positive (or non-negative) Python number, or a tensor (checked if not on GPU)."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(v.shape)}")
        if v.device.type == "cpu":
            val = float(v)
            ok = math.isfinite(val) and (val >= 0 if allow_zero else val > 0)
            if not ok:
                raise ValueError(f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}, "
                                 f"got {val}")
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    if float(v) < 0 or (not allow_zero and float(v) == 0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v}")
    return v
