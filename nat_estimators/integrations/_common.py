"""Pieces the trainer integrations share: version gates and old-policy size measures."""

from __future__ import annotations

import os
import re
import warnings

import torch

__all__ = ["check_version", "floored_sizes", "version_tuple"]


def version_tuple(v: str) -> tuple[int, ...]:
    """Leading numeric release components: ``"1.16.1.dev0+g1"`` -> ``(1, 16, 1)``."""
    out = []
    for part in v.split("+")[0].split("."):
        m = re.match(r"\d+", part)
        if m is None:
            break
        out.append(int(m.group(0)))
        if m.end() < len(part):
            break
    return tuple(out)


def check_version(
    package: str, version: str, tested: tuple[str, str], *, module: str, extra: str, why: str,
    allow_env: str,
) -> None:
    """Raise ImportError (or warn, when ``allow_env`` is set to 1) outside the tested range."""
    low, high = (version_tuple(x) for x in tested)
    if low <= version_tuple(version) < high:
        return
    msg = (
        f"{module} is tested with {package}>={tested[0]},<{tested[1]} but {package} {version} is "
        f"installed; {why}. Install the tested range with pip install 'nat-estimators[{extra}]', "
        f"or set {allow_env}=1 to try this version anyway (then run the integration tests first)"
    )
    if os.environ.get(allow_env) == "1":
        warnings.warn(msg, UserWarning, stacklevel=3)
        return
    raise ImportError(msg)


def floored_sizes(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Old-policy size measures made usable by the proportional designs.

    Non-finite values become 0, negatives are clipped to 0, and every eligible size is floored
    at :math:`10^{-3}` times the mean eligible size (at least :math:`10^{-12}`), so that every
    eligible token keeps :math:`\pi > 0` (a zero size would never be sampled: infinite weight).
    Positions off ``mask`` get 1 (ignored by the design).  The result is detached, float64.
    """
    x = torch.nan_to_num(x.detach().to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    x = x.clamp_min(0.0)
    mean = (x * mask).sum() / mask.sum().clamp_min(1)
    floor = torch.clamp_min(1e-3 * mean, 1e-12)
    return torch.where(mask, x.clamp_min(floor), torch.ones_like(x))
