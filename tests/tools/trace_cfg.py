"""How far the config travels: follow it from ``icl.run.train.train`` to eval.csv and list every project function
(``icl.*``) called with the config or a piece of it — a DictConfig, a JobSpec or one of its spec dataclasses
(names ending in Spec/Config, or ``Stage``), or a plain dict equal to a node of the resolved config.

A *stop* is such a function outside the one parse (``JobSpec.from_config``); a *return* is a call from ``icl.run``
down into the core with a piece, after the run layer has been entered. Run ``python -m tests.tools.trace_cfg``.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

PARSE = {"icl.run.spec.JobSpec.from_config"}
COMPREHENSIONS = ("<lambda>", "<genexpr>", "<listcomp>", "<dictcomp>", "<setcomp>")


@dataclasses.dataclass
class Trace:
    stops: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    returns: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    parsed: set[str] = dataclasses.field(default_factory=set)


def _nodes(value: Any, out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        if value:
            out.append(value)
        for v in value.values():
            _nodes(v, out)
    return out


def _layer(module: str) -> int:
    return 1 if module.startswith(("icl.run", "icl.analysis", "icl.bench", "icl.lab")) else 0


def _args(frame: FrameType) -> list[Any]:
    code = frame.f_code
    n = code.co_argcount + code.co_kwonlyargcount
    args = [frame.f_locals.get(name) for name in code.co_varnames[:n]]
    if code.co_flags & 0x08:  # **kwargs
        args += list((frame.f_locals.get(code.co_varnames[n + bool(code.co_flags & 0x04)]) or {}).values())
    return args[1:] if code.co_argcount and code.co_varnames[0] in ("self", "cls") else args


def trace(overrides: list[str], out: Path) -> Trace:
    """Train and evaluate one tiny job under ``overrides`` into ``out``, tracing where its config goes."""
    from icl.run.train import train
    from tests.helpers import compose_train

    cfg = compose_train(overrides, out)
    nodes = _nodes(OmegaConf.to_container(cfg, resolve=True), [])

    def is_piece(v: Any) -> bool:
        if isinstance(v, (DictConfig, ListConfig)):
            return True
        if dataclasses.is_dataclass(v) and not isinstance(v, type) and type(v).__module__.startswith("icl"):
            return type(v).__name__.endswith(("Spec", "Config")) or type(v).__name__ == "Stage"
        return isinstance(v, dict) and bool(v) and any(v == n for n in nodes)

    result, parsing, entered_run = Trace(), [], [False]

    def inside_parse(frame: FrameType) -> bool:
        f = frame.f_back
        while f is not None:
            if any(f is p for p in parsing):
                return True
            f = f.f_back
        return False

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        module = frame.f_globals.get("__name__", "")
        if event != "call" or not module.startswith("icl") or frame.f_code.co_name in COMPREHENSIONS:
            return
        name = f"{module}.{frame.f_code.co_qualname}"
        if name in PARSE:
            parsing.append(frame)
        if "__create_fn__" in name or not any(is_piece(a) for a in _args(frame)):
            return
        if name in PARSE or inside_parse(frame):
            result.parsed.add(name)
            return
        result.stops[name] += 1
        caller = frame.f_back
        while caller is not None and not caller.f_globals.get("__name__", "").startswith("icl"):
            caller = caller.f_back
        if caller is not None and entered_run[0] and _layer(module) < _layer(caller.f_globals["__name__"]):
            result.returns[(f"{caller.f_globals['__name__']}.{caller.f_code.co_qualname}", name)] += 1
        if _layer(module) == 1:
            entered_run[0] = True

    sys.setprofile(profile)
    try:
        train(cfg)
    finally:
        sys.setprofile(None)
    if not (out / "eval.csv").is_file():
        raise RuntimeError(f"the traced job wrote no eval.csv in {out}")
    return result


def main() -> None:
    from tests.helpers import FAST

    with tempfile.TemporaryDirectory() as out:
        result = trace([*FAST, "trainer.max_steps=2", "paths.store=null", "eval.cache=null"], Path(out))
    print(f"stops outside the parse (distinct functions): {len(result.stops)}; calls: {sum(result.stops.values())}")
    for name, n in sorted(result.stops.items()):
        print(f"  {n:3d}  {name}")
    print(f"calls from icl.run down into the core with a config piece: {len(result.returns)} distinct")
    for (a, b), n in sorted(result.returns.items()):
        print(f"  {n:3d}  {a} -> {b}")


if __name__ == "__main__":
    main()
