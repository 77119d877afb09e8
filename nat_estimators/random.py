r"""Random number adapter.

The array API standard has no random number generator, so every design samples through a *pure*
function of uniforms, :meth:`Design.sample(u) <nat_estimators.Design.sample>`.  This module turns
what users hold — a :class:`numpy.random.Generator`, a :class:`torch.Generator` or an integer seed —
into float64 uniforms on ``[0, 1)`` in the caller's namespace and device.

Rules
-----
* ``numpy.random.Generator``: draws on the host, then ``xp.asarray(..., device=device)``.  For a
  torch/CUDA target this copies the freshly generated uniforms to the device (they are our own
  numbers, not user data).
* ``torch.Generator``: draws with ``torch.rand(..., generator=g, device=g.device)``.  The generator
  must live on the same device as the design's arrays; a mismatch is an error, never a silent
  transfer.  For a non-torch target the generator must be a CPU generator.
* ``int`` seed: ``numpy.random.default_rng(seed)`` — the same seed gives the same uniforms, hence
  the same sample, on every backend.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ._compat import Array, float64_or_best, is_torch_namespace

__all__ = ["RNGLike", "uniforms"]

#: What :meth:`Design.draw` accepts.
RNGLike = np.random.Generator | int | Any


def _is_torch_generator(rng: Any) -> bool:
    mod = type(rng).__module__
    return mod.startswith("torch") and type(rng).__name__ == "Generator"


def uniforms(rng: RNGLike, shape: tuple[int, ...], *, xp: Any, device: Any) -> Array:
    r"""Float64 uniforms on :math:`[0, 1)` of ``shape`` in namespace ``xp`` on ``device``.

    Parameters
    ----------
    rng : numpy.random.Generator, torch.Generator or int
        Source of randomness (see the module notes for how each is used).
    shape : tuple of int
        Shape of the result.
    xp : namespace
        Target array namespace (e.g. from :func:`array_api_compat.array_namespace`).
    device : device
        Target device; a ``torch.Generator`` must already be on it.

    Returns
    -------
    array
        Uniforms of ``shape`` with dtype float64 (float32 only where the device has no float64).

    Examples
    --------
    >>> import numpy as np
    >>> from nat_estimators.random import uniforms
    >>> u = uniforms(0, (2, 3), xp=np, device="cpu")
    >>> u.shape, u.dtype
    ((2, 3), dtype('float64'))
    """
    shape = tuple(int(s) for s in shape)
    dtype = float64_or_best(xp, device)
    if isinstance(rng, bool):
        raise TypeError("rng must be a numpy Generator, a torch.Generator or an int seed, got bool")
    if isinstance(rng, numbers.Integral):
        if int(rng) < 0:
            raise ValueError(f"an int seed must be >= 0, got {int(rng)}")
        rng = np.random.default_rng(int(rng))
    if isinstance(rng, np.random.Generator):
        u = rng.random(shape)
        return xp.asarray(u, dtype=dtype, device=device)
    if _is_torch_generator(rng):
        import torch

        gen: Any = rng  # a torch.Generator (RNGLike's int member is excluded above)
        gdev = gen.device
        if is_torch_namespace(xp):
            if torch.device(device) != gdev:
                raise ValueError(
                    f"the torch.Generator lives on {gdev} but the design's arrays are on {device}; "
                    "create the generator on the same device "
                    f"(torch.Generator(device={str(device)!r}))"
                )
            return torch.rand(shape, generator=gen, dtype=dtype, device=gdev)
        if gdev.type != "cpu":
            raise ValueError(
                f"a torch.Generator on {gdev} cannot feed a non-torch array; use a CPU generator, "
                "a numpy Generator or an int seed"
            )
        t = torch.rand(shape, generator=gen, dtype=torch.float64)
        return xp.asarray(t.numpy(), dtype=dtype, device=device)
    raise TypeError(
        "rng must be a numpy.random.Generator, a torch.Generator or an int seed, got "
        f"{type(rng).__name__}"
    )
