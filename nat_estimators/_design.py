r"""The common interface of all sampling designs.

A *design* is a probability law over subsets :math:`S` of the eligible tokens of every row of a
batch.  Rows live on the leading axes, tokens on the last axis; the boolean ``mask`` marks the
eligible positions (ragged batches, non-contiguous response masks).  Ineligible positions have
inclusion probability 0 and are never sampled.

Every design exposes the same five methods (:doc:`/theory/designs`):

* :meth:`Design.inclusion_probabilities` — :math:`\pi_k = P(k \in S)`, shape ``(..., N)``;
* :meth:`Design.joint_inclusion_probabilities` — :math:`\pi_{kl} = P(k, l \in S)`, dense
  ``(..., N, N)`` (meant for small ``N`` and tests);
* :meth:`Design.sample` — a pure function of uniforms ``u`` of shape :attr:`Design.uniform_shape`;
* :meth:`Design.draw` — the convenience path taking a numpy ``Generator``, ``torch.Generator``
  or int seed;
* :meth:`Design.expected_size` — :math:`E|S| = \sum_k \pi_k` per row.

A design is added by subclassing :class:`Design` in its own module: ``class Mine(Design,
name="mine")`` registers it under a name (:meth:`Design.registered`) that
:func:`~nat_estimators.rl.select_tokens`, the command line and the validation suite look up.
Besides the contract above, a subclass may override three hooks, numpyro-style:

* ``from_fraction(keep, *, mask, ...)`` — the design keeping a fraction of each row on average
  (needed for the name to be usable by :func:`~nat_estimators.rl.select_tokens`);
* :meth:`Design._exact_variance` / :meth:`Design._variance_estimate` — closed-form fast paths of
  :func:`~nat_estimators.design_variance` / :func:`~nat_estimators.variance_estimate` (default:
  the dense :math:`O(N^2)` formulas from :meth:`joint_inclusion_probabilities`);
* :meth:`Design._row_support` — the finite support of one row, for exact enumeration
  (:meth:`Design.enumerate_support`).
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import math
from collections.abc import Iterator
from typing import Any, ClassVar

from ._compat import Array, device_of, float64_or_best, is_floating, namespace, on_other_device
from ._validation import any_true, prepare_pi_and_mask, trusted
from .random import RNGLike, uniforms

__all__ = ["Design"]

_REGISTRY: dict[str, type[Design]] = {}


class Design(abc.ABC):
    """Abstract base class of the sampling designs (frozen values, keyword-only options).

    Subclasses implement :attr:`uniform_shape`, :meth:`inclusion_probabilities`,
    :meth:`joint_inclusion_probabilities` and the selection rule ``_sample(u)``; :meth:`sample`
    validates the uniforms and :meth:`draw` adapts a random number generator.

    A new design needs only its own module: ``class Mine(Design, name="mine")`` registers it
    (:meth:`registered`), and with a ``from_fraction(keep, *, mask, ...)`` constructor the name
    works in :func:`~nat_estimators.rl.select_tokens`, ``nat-estimators compare`` and the cost
    model.  Optional hooks: ``_exact_variance`` and ``_variance_estimate`` (closed-form fast
    paths of :func:`~nat_estimators.design_variance` and
    :func:`~nat_estimators.variance_estimate`; without them the dense :math:`O(N^2)` formulas
    built from :meth:`joint_inclusion_probabilities` are used) and ``_row_support`` (a row's
    finite support, for :meth:`enumerate_support`).

    Examples
    --------
    >>> import numpy as np
    >>> import nat_estimators as nat
    >>> d = nat.Prefix.from_fraction(0.5, mask=np.ones((2, 6), dtype=bool), full_keep=0.2)
    >>> isinstance(d, nat.Design), d.batch_shape, d.uniform_shape
    (True, (2,), (2,))
    >>> d.draw(0).shape
    (2, 6)
    """

    mask: Array

    #: Name the design is registered under (``class Mine(Design, name="mine")``); "" if none.
    name: ClassVar[str] = ""
    #: Extra hint appended to the error of the dense paths when a batch is too large for them.
    _dense_hint: ClassVar[str] = ""
    #: Whether the linearized variance of the Hájek mean is valid (many independent draws per
    #: row); ``False`` makes ``variance_estimate(..., estimator="hajek")`` warn.
    _hajek_linearizes: ClassVar[bool] = True

    def __init_subclass__(cls, *, name: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name:
            if name in _REGISTRY or name.endswith("_proportional"):
                raise ValueError(
                    f"a design named {name!r} is already registered (or the name ends with "
                    "'_proportional', reserved for the size-proportional variants); pick another"
                )
            cls.name = name
            _REGISTRY[name] = cls

    @classmethod
    def registered(cls) -> dict[str, type[Design]]:
        """The registered designs by name, in registration order (a copy).

        Examples
        --------
        >>> import nat_estimators as nat
        >>> nat.Design.registered()["prefix"] is nat.Prefix
        True
        >>> sorted(nat.Design.registered())
        ['poisson', 'prefix', 'simple_random', 'systematic']
        """
        return dict(_REGISTRY)

    # ------------------------------------------------------------------ array context
    @property
    def xp(self) -> Any:
        """Array namespace of the design's arrays."""
        return namespace(self.mask)

    @property
    def device(self) -> Any:
        """Device of the design's arrays."""
        return device_of(self.mask)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Shape of the leading (row) axes."""
        return tuple(self.mask.shape[:-1])

    @property
    def num_units(self) -> int:
        """Length ``N`` of the token axis (eligible or not)."""
        return int(self.mask.shape[-1])

    @property
    def eligible(self) -> Array:
        """Boolean ``(..., N)`` array of eligible positions."""
        return self.mask

    def eligible_count(self) -> Array:
        """Number of eligible tokens per row, integer array of shape ``batch_shape``."""
        xp = self.xp
        return xp.sum(xp.astype(self.mask, xp.int64), axis=-1)

    # ------------------------------------------------------------------ contract
    @property
    @abc.abstractmethod
    def uniform_shape(self) -> tuple[int, ...]:
        """Shape of the uniforms consumed by :meth:`sample`."""

    @abc.abstractmethod
    def inclusion_probabilities(self) -> Array:
        r"""First-order inclusion probabilities :math:`\pi_k`, shape ``(..., N)``."""

    @abc.abstractmethod
    def joint_inclusion_probabilities(self) -> Array:
        r"""Second-order inclusion probabilities :math:`\pi_{kl}`, dense ``(..., N, N)``."""

    @abc.abstractmethod
    def _sample(self, u: Array) -> Array:
        """Selection from validated uniforms."""

    def has_fixed_size(self) -> bool:
        """Whether every row's sample size is fixed (non-random)."""
        return False

    def sample(self, u: Array) -> Array:
        r"""Draw the sample determined by the uniforms ``u`` (a pure function).

        Parameters
        ----------
        u : array
            Uniforms on :math:`[0, 1)` of shape :attr:`uniform_shape`, in the design's namespace
            and on its device (float64 recommended).

        Returns
        -------
        array of bool
            Selection indicators :math:`I_k`, shape ``(..., N)``; never true at ineligible
            positions.
        """
        xp = self.xp
        try:
            xu = namespace(u)
        except TypeError:
            raise TypeError(f"u must be an array, got {type(u).__name__}") from None
        if xu is not xp and type(u) is not type(self.mask):
            raise TypeError(
                f"u comes from a different array library ({type(u).__name__}) than the design "
                f"({type(self.mask).__name__}); convert it first"
            )
        if not is_floating(xp, u):
            raise ValueError(f"u must have a real floating dtype, got {u.dtype}")
        if tuple(u.shape) != tuple(self.uniform_shape):
            raise ValueError(
                f"u has shape {tuple(u.shape)} but this design consumes uniforms of shape "
                f"{tuple(self.uniform_shape)} (see .uniform_shape)"
            )
        if on_other_device(u, self.device):
            raise ValueError(
                f"u is on device {device_of(u)} but the design's arrays are on {self.device}"
            )
        if any_true(xp, ~((u >= 0) & (u < 1))):
            raise ValueError("u must contain uniforms in [0, 1) (no NaN)")
        return self._sample(u)

    def draw(self, rng: RNGLike) -> Array:
        """Draw a sample using ``rng`` (numpy ``Generator``, ``torch.Generator`` or int seed).

        Equivalent to ``self.sample(uniforms(rng, self.uniform_shape, ...))``; see
        :func:`nat_estimators.random.uniforms` for how each kind of ``rng`` is used.
        """
        u = uniforms(rng, self.uniform_shape, xp=self.xp, device=self.device)
        return self._sample(u)

    def expected_size(self) -> Array:
        r"""Expected sample size per row, :math:`E|S| = \sum_k \pi_k`, shape ``batch_shape``."""
        return self.xp.sum(self.inclusion_probabilities(), axis=-1)

    def rows(self, index: Any) -> Design:
        """The same design restricted to the rows ``index`` of its leading (row) axis.

        ``index`` is anything the array library accepts as an index of the first axis (an int, a
        slice, an integer or boolean array).  Each row's design is unchanged, so the result needs
        no re-validation.

        Examples
        --------
        >>> import numpy as np
        >>> import nat_estimators as nat
        >>> d = nat.SimpleRandom(np.array([1, 2, 3]), mask=np.ones((3, 4), dtype=bool))
        >>> d.rows(np.array([2, 0])).n
        array([3, 1])
        """
        if not self.batch_shape:
            raise ValueError("rows() needs a design with a leading row axis (a batch of rows)")
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        try:
            return trusted(type(self), **{k: v[index, ...] for k, v in fields.items()})
        except IndexError:
            raise IndexError(
                f"rows({index!r}): index out of range for a design with {self.batch_shape[0]} "
                "rows on its leading axis"
            ) from None

    def max_weight(self) -> Array:
        r"""Largest Horvitz–Thompson weight :math:`\max_k 1/\pi_k` over eligible tokens per row.

        Rows without eligible tokens give 0.
        """
        xp = self.xp
        pi = self.inclusion_probabilities()
        w = xp.where(self.mask, 1 / xp.where(self.mask, pi, xp.ones_like(pi)), xp.zeros_like(pi))
        return xp.max(w, axis=-1)

    # ------------------------------------------------------------------ extension hooks
    def _exact_variance(self, rows: Any, y: Array, cov: bool) -> Array | None:
        """Fast path of :func:`~nat_estimators.design_variance`; ``None``: use the dense path.

        ``rows`` is the variance engine's view of the call (``nat_estimators._variance_engine.
        _Rows``: ``pi`` and ``mask`` flattened to ``(R, N)``), ``y`` the values ``(R, N, q)``;
        return ``(R, q)`` (or ``(R, q, q)`` with ``cov``).
        """
        return None

    def _variance_estimate(
        self, rows: Any, y: Array, sample: Array, *, method: str, cov: bool, centered: bool
    ) -> Array | None:
        """Fast path of :func:`~nat_estimators.variance_estimate`; ``None``: use the dense path.

        As :meth:`_exact_variance`, with the sample ``(R, N)`` (``y`` is 0 outside it),
        ``method`` ``"ht"`` or ``"syg"`` and ``centered`` when ``y`` are Hájek residuals (their
        HT total is exactly 0).
        """
        return None

    def _refuse_impossible(self, sample: Array) -> None:
        """Raise ``ValueError`` if ``sample`` is a sample this design never draws.

        ``sample`` is a validated boolean ``(..., N)`` subset of :attr:`mask`.  A variance
        estimate from a sample of probability 0 is meaningless (and can be infinite), so
        :func:`~nat_estimators.variance_estimate` refuses it.  Default: every subset of the
        eligible units is possible.
        """
        del sample

    def _row_support(self, row: int) -> list[tuple[float, Any]]:
        """Every outcome of row ``row`` (an index of the first axis) as ``(probability, u)``.

        ``u`` is a Python float (one uniform per row) or a list of floats (one per position) that
        :meth:`sample` maps to the outcome.  Overridden by designs with a small finite support.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not enumerate its support (it has no _row_support)"
        )

    def _row_lists(self, row: int) -> tuple[list[float], list[bool]]:
        """``pi`` and ``mask`` of row ``row`` as Python lists (for :meth:`_row_support`)."""
        pi = self.inclusion_probabilities()[row, ...]
        mask = self.mask[row, ...]
        n = self.num_units
        return [float(pi[k]) for k in range(n)], [bool(mask[k]) for k in range(n)]

    def enumerate_support(self) -> Iterator[tuple[float, Array]]:
        r"""Every sample of a small batch with its probability: ``(P(S), S)`` pairs.

        The batch's outcomes are the product of its rows' (each row is drawn independently);
        every sample is produced by :meth:`sample` from uniforms inside the outcome's region, so
        the enumeration checks the selection rule as well as the probabilities.  The number of
        outcomes grows as the product of the rows' support sizes: meant for a few short rows
        (exact checks and tests).  Samples may repeat (the probabilities then add up).

        Examples
        --------
        >>> import numpy as np
        >>> import nat_estimators as nat
        >>> d = nat.Prefix(np.array([[1.0, 0.5, 0.25]]))
        >>> [(p, s.astype(int).tolist()) for p, s in d.enumerate_support()]
        [(0.5, [[1, 0, 0]]), (0.25, [[1, 1, 0]]), (0.25, [[1, 1, 1]])]
        """
        if len(self.batch_shape) != 1:
            raise ValueError(
                "enumerate_support needs a design with one leading row axis, got batch shape "
                f"{self.batch_shape}"
            )
        xp = self.xp
        dtype = float64_or_best(xp, self.device)
        per_row = [self._row_support(i) for i in range(self.batch_shape[0])]
        for combo in itertools.product(*per_row):
            u = xp.asarray([c[1] for c in combo], dtype=dtype, device=self.device)
            yield math.prod(c[0] for c in combo), self.sample(u)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_shape={self.batch_shape}, num_units={self.num_units}, "
            f"backend={type(self.mask).__module__.split('.')[0]}, device={self.device})"
        )


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class _PiDesign(Design):
    """A design given by its first-order probabilities ``pi`` over the eligible ``mask``.

    The private base of Poisson, Systematic and Prefix: the two fields, their validation (``pi``
    in (0, 1] at eligible positions, set to 0 elsewhere) and :meth:`inclusion_probabilities`.
    """

    pi: Array
    mask: Array = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _, pi, mask = prepare_pi_and_mask(self.pi, self.mask)
        object.__setattr__(self, "pi", pi)
        object.__setattr__(self, "mask", mask)

    def inclusion_probabilities(self) -> Array:
        r""":math:`\pi_k` (0 at ineligible positions), shape ``(..., N)``."""
        return self.pi
