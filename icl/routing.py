"""A hook on the shared recurrences of the linear-cost mixers: a caller can run them in another form (quantised,
instrumented) for the calls made inside a ``with routed(...)`` block, in its own thread or task only.

The four primitives (``icl.attention.causal_linear_attention``, ``icl.scans.decay_linear_attention``,
``icl.scans.delta_rule`` and the two selective scans ``icl.scans.selective_scan``/``selective_scan_fused``) are
decorated with ``recurrence(name)``: each call looks up ``name`` in the routes set for the current context
(``contextvars``: every thread starts with none, and a route set in one thread is invisible to the others), and if
one is set calls ``route(plain, *args, **kwargs)`` with the undecorated primitive as ``plain``; otherwise the
primitive itself. No module global or class attribute is ever rebound.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
ROUTED = ("causal_linear_attention", "decay_linear_attention", "delta_rule", "selective_scan")
_routes: ContextVar[Mapping[str, Callable[..., Any]] | None] = ContextVar("icl_recurrence_routes", default=None)


def recurrence(name: str) -> Callable[[F], F]:
    """Decorate a shared recurrence so ``routed`` can replace it under ``name`` (one of ``ROUTED``)."""
    if name not in ROUTED:
        raise ValueError(f"unknown recurrence '{name}'; choose one of: {', '.join(ROUTED)}")

    def decorate(plain: F) -> F:
        @functools.wraps(plain)
        def call(*args: Any, **kwargs: Any) -> Any:
            route = (_routes.get() or {}).get(name)
            return plain(*args, **kwargs) if route is None else route(plain, *args, **kwargs)

        return call  # type: ignore[return-value]

    return decorate


@contextmanager
def routed(routes: Mapping[str, Callable[..., Any]]) -> Iterator[None]:
    """Inside: the recurrences named in ``routes`` run as ``routes[name](plain, *args, **kwargs)`` in this context
    (thread) only; nested blocks replace the outer routes for the names they give; restored on exit."""
    unknown = sorted(set(routes) - set(ROUTED))
    if unknown:
        raise ValueError(f"unknown recurrence(s) {unknown}; choose from: {', '.join(ROUTED)}")
    token = _routes.set({**(_routes.get() or {}), **routes})
    try:
        yield
    finally:
        _routes.reset(token)
