"""Every command the README and docs/*.md quote exists: ``python -m icl.…`` modules, ``make`` targets and the
``icl-…`` console scripts (a renamed module or target fails here, not in a reader's shell)."""

import importlib.util
import re

import pytest

from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def quoted(pattern: str) -> set[tuple[str, str]]:
    return {(m, p.name) for p in DOCS for m in re.findall(pattern, p.read_text())}


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (REPO / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("module, doc", sorted(quoted(r"python -m (icl(?:\.\w+)*)")))
def test_quoted_modules_exist(module, doc):
    assert importlib.util.find_spec(module) is not None, f"{doc} quotes `python -m {module}`, which does not exist"


@pytest.mark.parametrize("target, doc", sorted(quoted(r"(?m)(?:^\s*|`)make ([a-z][A-Za-z0-9_.-]*)")))
def test_quoted_make_targets_exist(target, doc):
    assert target in make_targets(), f"{doc} quotes `make {target}`, not a target of the Makefile"


@pytest.mark.parametrize("script, doc", sorted(quoted(r"`(icl-[a-z-]+)")))
def test_quoted_console_scripts_are_declared(script, doc):
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = set(re.findall(r"^([\w-]+)\s*=", section, re.M))  # no tomllib: Python 3.10 is supported
    assert script in scripts, f"{doc} names `{script}`, not declared in pyproject.toml [project.scripts]"


def test_the_checks_see_the_docs():
    """The patterns still match the way the docs quote commands (else the tests above pass on nothing)."""
    assert ("icl.train", "README.md") in quoted(r"python -m (icl(?:\.\w+)*)") and "test" in make_targets()
