"""Deprecation of renamed names and keywords (private).

A renamed public name keeps working for one release: the old spelling calls the new one after a
:class:`DeprecationWarning` that says what to use instead.  Everything the package deprecates goes
through :func:`deprecated`, so the wording and the warning's target frame are the same
everywhere.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["deprecated", "positional_arrays"]

F = TypeVar("F", bound=Callable[..., Any])


def deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (``stacklevel`` 3: the caller's caller).

    Examples
    --------
    >>> import warnings
    >>> from nat_estimators._deprecation import deprecated
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     deprecated("f(mask)", "f(sample)", stacklevel=2)
    >>> print(caught[0].message)
    f(mask) is deprecated and will be removed in the next release; use f(sample) instead
    """
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new} instead",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def positional_arrays(
    *names: str, renamed: dict[str, str] | None = None, keyword_only: tuple[str, ...] = ()
) -> Callable[[F], F]:
    """Keep the former calls of a function whose leading arrays became positional-only.

    ``names`` are the positional-only parameters, in order.  Former calls still work, with a
    :class:`DeprecationWarning`:

    * the arrays passed by keyword, under their name or a former name (``renamed`` maps a former
      keyword to the current parameter: ``{"mask": "sample"}``); a former name is only taken for
      an array not already given positionally;
    * an option that was positional and is now keyword-only (``keyword_only``, in their former
      positional order after the arrays);
    * an option keyword that was renamed (``renamed`` entries whose target is not in ``names``).

    Calls in the current form pay one length test and one set test.
    """
    renamed = dict(renamed or {})
    old_of = {new: old for old, new in renamed.items() if new in names}
    option_renames = {old: new for old, new in renamed.items() if new not in names}
    watched = frozenset(names) | frozenset(renamed)

    def decorate(fn: F) -> F:
        current = f"{fn.__name__}({', '.join(names)}, *, ...)"

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(args) <= len(names) and (not kwargs or watched.isdisjoint(kwargs)):
                return fn(*args, **kwargs)
            given = list(args[: len(names)])
            extra = args[len(names) :]
            what = []
            if extra and len(extra) <= len(keyword_only):
                moved = keyword_only[: len(extra)]
                kwargs.update(zip(moved, extra, strict=True))
                what.append(f"{', '.join(moved)} as positional argument(s)")
                extra = ()
            for old, new in option_renames.items():
                if old in kwargs:
                    kwargs[new] = kwargs.pop(old)
                    what.append(f"the keyword {old}= (now {new}=)")
            for name in names[len(given) :]:
                former = old_of.get(name)
                if name in kwargs:
                    given.append(kwargs.pop(name))
                elif former is not None and former in kwargs:
                    given.append(kwargs.pop(former))
                else:
                    break
            if len(given) > len(args[: len(names)]):
                what.append("arrays by keyword")
            if what:
                deprecated(f"passing {' and '.join(what)} to {fn.__name__}", current)
            return fn(*given, *extra, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
