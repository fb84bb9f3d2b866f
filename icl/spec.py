"""Typed config specs: the helpers every concern's dataclass uses to turn one config node into itself.

Each concern's spec lives next to the code it configures (``icl.tasks.TaskSpec``, ``icl.transformer.ModelSpec``,
``icl.module.OptimSpec``, ``icl.data.DataSpec``, ``icl.evaluation.EvalConfig``, ``icl.quantize.QuantSpec``) and holds
types and range checks, never defaults: the YAML under ``configs/`` is the one source of each default.
``icl.run.spec.JobSpec`` builds them all once, at the Hydra boundary. Errors are one line naming the dotted key.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def require(ok: bool, key: str, allowed: str, value: Any) -> None:
    """One ``ValueError`` line naming the key, its value and what is allowed."""
    if not ok:
        raise ValueError(f"{key}={value} is not allowed: {allowed}")


def _matches(value: Any, hint: Any) -> bool:
    """Whether a plain config value fits a (simple) type hint; containers are checked by their consumers."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        return isinstance(value, (list, tuple))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def known_keys(node: dict[str, Any], known: set[str] | list[str], prefix: str) -> None:
    """An unknown key is an error naming its full dotted key (a misspelling, or an option of another group)."""
    unknown = sorted(set(node) - set(known))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ValueError(f"unknown config key '{key}': known {prefix or 'top-level'} keys are {', '.join(known)} "
                         "(check its spelling)")


def typed_fields(cls: type[T], node: dict[str, Any] | None, prefix: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``node``'s values for the fields of dataclass ``cls``: unknown keys, missing keys (the YAML holds every
    default) and wrongly typed values are one-line errors naming ``prefix.key``. Fields in ``skip`` are returned
    unchecked (their owner checks them)."""
    node = dict(node or {})
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    known_keys(node, names, prefix)
    missing = [n for n in names if n not in node]
    if missing:
        raise ValueError(f"config key '{prefix}.{missing[0]}' is missing: every default lives in configs/ "
                         "(start from the group's shipped YAML)")
    hints = typing.get_type_hints(cls)
    for name in names:
        if name not in skip and not _matches(node[name], hints[name]):
            raise ValueError(f"config key '{prefix}.{name}': {node[name]!r} is not of type "
                             f"{getattr(hints[name], '__name__', hints[name])}")
    return node
