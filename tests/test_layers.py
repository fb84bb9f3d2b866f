"""The architecture's rules, read off the source: layers, no import cycles, no torch in the analysis layer.

The library — core ``icl/*.py``, ``icl.run``, ``icl.analysis`` — never imports the lab (``icl.lab``, ``icl.bench``);
core imports neither ``icl.run`` nor ``icl.analysis``; ``icl.run`` no ``icl.analysis``; ``icl.analysis`` never torch
(checked by importing it in a fresh interpreter); ``icl.contract`` nothing of the project; in pipeline order,
quantisation and training never reach the evaluation stack; no module reaches itself through its imports (lazy
imports inside functions count too).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "icl"
ENTRY_SHIMS = {"icl.train", "icl.evaluate", "icl.figures", "icl.study", "icl.bench.__main__"}  # `python -m` forwarders only
FORBIDDEN = {  # layer -> packages it must not import
    "core": ("icl.run", "icl.analysis", "icl.bench", "icl.lab"),
    "icl.run": ("icl.analysis", "icl.bench", "icl.lab"),
    "icl.analysis": ("icl.bench", "icl.lab"),
    "icl.bench": (),  # lab: may import the library and icl.run
    "icl.lab": (),
}
EVALUATION_STACK = ("icl.evaluation", "icl.baselines", "icl.prompts", "icl.run.evaluate", "icl.solvers")
BEFORE_EVALUATION = ("icl.quantize", "icl.module", "icl.data", "icl.transformer", "icl.run.store")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def icl_imports(path: Path) -> set[str]:
    """Every ``icl`` module ``path`` imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from icl import prompts`
    known = modules()
    return {n for n in names if n in known}


def layer(name: str) -> str:
    for pkg in ("icl.run", "icl.analysis", "icl.bench", "icl.lab"):
        if name == pkg or name.startswith(pkg + "."):
            return pkg
    return "core"


def test_every_module_is_found():
    found = modules()
    assert {"icl.tasks", "icl.run.train", "icl.analysis.figures", "icl.bench.latency", "icl.run.job"} <= set(found)


@pytest.mark.parametrize("name", sorted(set(modules()) - ENTRY_SHIMS))
def test_layer_rules(name):
    bad = sorted(i for i in icl_imports(modules()[name]) if i.startswith(FORBIDDEN[layer(name)]))
    assert not bad, f"{name} ({layer(name)} layer) imports {bad}"


def test_entry_shims_only_forward():
    for name in ENTRY_SHIMS:
        imports = icl_imports(modules()[name])
        assert len(imports) == 1 and layer(next(iter(imports))) != "core", (name, imports)


def test_no_import_cycles():
    graph = {name: icl_imports(path) - {name} for name, path in modules().items()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.rsplit(".", 1)[0] == node or node.startswith(nxt + "."):
                continue  # a package and its own submodules (icl.bench.__init__ vs icl.bench.latency)
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_a_cycle_would_be_caught(tmp_path, monkeypatch):
    """The checker itself: a two-module cycle raises."""
    graph = {"a": {"b"}, "b": {"a"}}
    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: {k: tmp_path for k in graph})
    monkeypatch.setattr(sys.modules[__name__], "icl_imports", lambda path, _g=iter([{"b"}, {"a"}]): next(_g))
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycles()


def test_analysis_never_imports_torch():
    names = [n for n in modules() if layer(n) == "icl.analysis"]
    code = "import sys\n" + "".join(f"import {n}\n" for n in names) + "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False", f"importing {names} imports torch"


def reached(name: str) -> set[str]:
    """Every icl module ``name`` imports, directly or through others (lazy imports included)."""
    graph, seen, todo = {n: icl_imports(p) for n, p in modules().items()}, set(), [name]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen - {name}


def test_contract_imports_nothing_of_the_project():
    assert icl_imports(modules()["icl.contract"]) == set()
    code = "import sys, icl.contract; print(sorted(m for m in sys.modules if m.startswith(('icl.', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "['icl.contract']", out.stdout + out.stderr[-2000:]


@pytest.mark.parametrize("name", BEFORE_EVALUATION)
def test_quantisation_and_training_never_reach_evaluation(name):
    """Pipeline order: what runs before evaluation (training, the store's fingerprint, quantisation) does not
    import the evaluation stack, not even through another module."""
    bad = sorted(m for m in reached(name) if m in EVALUATION_STACK)
    assert not bad, f"{name} reaches the evaluation stack: {bad}"
