r"""What a design costs and buys, per row: :class:`DesignSummary` and :func:`design_summary`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._compat import Array, device_of
from ._deprecation import deprecated, positional_arrays
from ._design import Design
from ._variance_engine import _rows
from .variance import design_variance

__all__ = ["DesignSummary", "design_summary"]


@dataclass(frozen=True)
class DesignSummary:
    r"""What a design costs and buys, per row.

    Attributes
    ----------
    expected_size : array (...)
        :math:`E|S|`.
    keep_fraction : array (...)
        :math:`E|S| / N_i` (0 for empty rows).
    max_weight : array (...)
        Largest HT weight :math:`\max_k 1/\pi_k`.
    variance : array (..., *V) or None
        :math:`V(\hat Y)` per component (given ``y``).
    relative_variance : array (...) or None
        :math:`\sum_c V_c / \lVert Y \rVert^2`: squared coefficient of variation of the
        estimated total (gradient) relative to the full-token answer :math:`Y`; ``inf`` when
        :math:`Y = 0` but :math:`V > 0`, 0 when :math:`V = 0`.
    variance_inflation : array (...) or None
        :math:`\sum_c V_c / \sum_k \lVert y_k\rVert^2`: design variance per unit of per-token
        energy; equals :math:`1/p - 1` for uniform Poisson sampling at keep rate :math:`p` (0 for
        an all-zero ``y``).

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> d = nat.Prefix.from_fraction(0.5, mask=np.ones((1, 8), dtype=bool), full_keep=0.25)
    >>> s = nat.design_summary(np.ones((1, 8)), d)
    >>> float(s.keep_fraction[0]), float(s.max_weight[0])
    (0.5, 4.0)
    """

    expected_size: Array
    keep_fraction: Array
    max_weight: Array
    variance: Array | None = None
    relative_variance: Array | None = None
    variance_inflation: Array | None = None


def _ratio(xp: Any, num: Array, den: Array) -> Array:
    """num / den for den > 0; else inf where num > 0 and 0 where num == 0 (never NaN)."""
    safe = xp.where(den > 0, den, xp.ones_like(den))
    inf = xp.full(num.shape, float("inf"), dtype=num.dtype, device=device_of(num))
    return xp.where(den > 0, num / safe, xp.where(num > 0, inf, xp.zeros_like(num)))


@positional_arrays("y", "design")
def design_summary(
    y: Array | None, design: Design | None = None, /, *, axis: int = -1
) -> DesignSummary:
    r"""Budget and variance summary of a design (see :class:`DesignSummary`).

    Parameters
    ----------
    y : array, shape (..., N, *V), or None
        Population values, as in :func:`design_variance`; ``None`` for the budget only (expected
        size, keep fraction, largest weight).
    design : Design
        The sampling design.
    axis : int, default -1
        Unit axis of ``y``.

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> d = nat.Poisson.from_fraction(0.5, mask=np.ones(4, dtype=bool))
    >>> s = nat.design_summary(np.array([1.0, 2.0, 3.0, 4.0]), d)
    >>> float(s.keep_fraction), float(s.max_weight), float(s.variance_inflation)
    (0.5, 2.0, 1.0)
    >>> float(nat.design_summary(None, d).expected_size)
    2.0
    """
    if isinstance(y, Design):  # the former argument order design_summary(design, y)
        deprecated(  # stacklevel 4: past the positional_arrays wrapper
            "design_summary(design, y)", "design_summary(y, design) (or (None, design))",
            stacklevel=4,
        )
        y, design = design, y
    if not isinstance(design, Design):
        raise TypeError(f"design must be a nat_estimators design, got {type(design).__name__}")
    xp = design.xp
    es = design.expected_size()
    cnt = xp.astype(design.eligible_count(), es.dtype)
    kf = xp.where(cnt > 0, es / xp.where(cnt > 0, cnt, xp.ones_like(cnt)), xp.zeros_like(cnt))
    mw = design.max_weight()
    if y is None:
        return DesignSummary(expected_size=es, keep_fraction=kf, max_weight=mw)
    var = design_variance(y, design, axis=axis)
    r = _rows(y, design, axis)
    yv = xp.where(r.mask[:, :, None], r.y, xp.zeros_like(r.y))
    vsum = xp.sum(xp.reshape(var, (r.n_rows, -1)), axis=-1)
    tot = xp.sum(yv, axis=-2)
    y2 = xp.sum(tot * tot, axis=-1)
    e2 = xp.sum(xp.sum(yv * yv, axis=-1), axis=-1)
    bshape = r.units.batch_shape
    rel = xp.reshape(_ratio(xp, vsum, y2), bshape)
    infl = xp.reshape(_ratio(xp, vsum, e2), bshape)
    return DesignSummary(es, kf, mw, var, rel, infl)
