"""One command-line style for the tools that are not Hydra apps: ``key=value`` arguments, as for every Hydra command.

A tool declares its options as a dataclass (defaults, and ``metadata={"help": ...}``); ``parse`` reads
``key=value`` words with OmegaConf's dotlist parser (the grammar Hydra uses: ``sweeps=[a,b]``, ``out=null``,
``rerun=true``), type-checks them against the dataclass, and answers ``--help`` with every key, its default and its
help. A bad word is one line naming it and pointing at ``--help``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


def usage(options: type[Any], prog: str, doc: str) -> str:
    """``--help``: the tool's one-line purpose, then each key=default and its help."""
    lines = [f"usage: {prog} [key=value ...]", "", doc.strip().splitlines()[0], "", "keys:"]
    for f in fields(options):
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else "???")  # ???: required
        value = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
        lines.append(f"  {f.name}={value}" + (f"    {f.metadata['help']}" if "help" in f.metadata else ""))
    return "\n".join(lines)


def parse(options: type[T], argv: Sequence[str] | None, prog: str, doc: str) -> T:
    """The ``options`` dataclass filled from ``key=value`` words (``sys.argv[1:]`` when ``argv`` is None)."""
    assert is_dataclass(options)
    words = list(sys.argv[1:] if argv is None else argv)
    if any(w in ("-h", "--help") for w in words):
        print(usage(options, prog, doc))
        raise SystemExit(0)
    for w in words:
        if "=" not in w or w.startswith("-"):
            raise SystemExit(f"error: {prog}: expected key=value, got {w!r} (keys: {prog} --help)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(options), OmegaConf.from_dotlist(words))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise SystemExit(f"error: {prog}: {', '.join(k + '=…' for k in missing)} is required (keys: {prog} --help)")
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = f"{err.full_key}: " if getattr(err, "full_key", None) else ""  # OmegaConf's line may not name it
        raise SystemExit(f"error: {prog}: {key}{str(err).splitlines()[0]} (keys: {prog} --help)") from None
