"""The one registry helper: config name → entry, with metadata, and a one-line error for an unknown name.

Attention kernels, tasks, prompt strategies, baselines and quant modes are each a ``Registry``; a config says
``attn: relu`` and the code looks the name up here, so checkpoints and configs hold names, never classes.
Metadata rides on the entry (``slow`` baselines, ``regression_only`` strategies, a quant mode's stage…), so no
side table has to be kept in step with the registry.

    KERNELS = Registry("attention variant", "attn")

    @KERNELS.register("relu", pairwise=True)
    class ReLUAttention(...): ...

    KERNELS["relu"]            # the class; KERNELS["relu_"] raises ValueError listing the choices
    KERNELS.meta("relu")       # {"pairwise": True}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """An ordered mapping name → entry (registration order), plus per-entry metadata."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind  # what an entry is, for messages: "attention variant"
        self.key = key  # the config key that names one: "attn"
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def add(self, name: str, entry: T, **meta: Any) -> T:
        """Register ``entry`` as ``name`` (a second registration of one name is a bug, so it raises)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry
        self._meta[name] = meta
        return entry

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator form of ``add``."""
        return lambda entry: self.add(name, entry, **meta)

    def check(self, name: str) -> str:
        """``name`` if registered, else ``ValueError`` in one line listing the choices."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(self)} (config key: {self.key})")
        return name

    def __getitem__(self, name: str) -> T:
        return self._entries[self.check(name)]

    def meta(self, name: str, key: str | None = None, default: Any = None) -> Any:
        """All metadata of ``name`` (a dict), or one field of it (``default`` when unset)."""
        meta = self._meta[self.check(name)]
        return dict(meta) if key is None else meta.get(key, default)

    def where(self, **meta: Any) -> list[str]:
        """Names whose metadata has every given value, in registration order."""
        return [n for n in self._entries if all(self._meta[n].get(k) == v for k, v in meta.items())]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"
