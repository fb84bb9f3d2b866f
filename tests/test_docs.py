"""Every command the README and docs/*.md quote exists: ``python -m icl.…`` modules, ``make`` targets and the
``icl-…`` console scripts (a renamed module or target fails here, not in a reader's shell); every relative link and
#anchor they hold resolves."""

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


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (lower case, punctuation dropped, spaces to hyphens,
    repeats numbered -1, -2, …); headings inside code fences are not headings."""
    anchors, seen = set(), {}
    for title in re.findall(r"^#{1,6}\s+(.*?)\s*$", re.sub(r"(?s)```.*?```", "", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def dead_links(doc) -> list[str]:
    """Relative links (and images) of one Markdown file whose file is missing or whose #anchor is no heading there."""
    dead = []
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"(?s)```.*?```", "", doc.read_text())):
        if re.match(r"[a-z]+:", target):  # http(s):, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists():
            dead.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
            dead.append(f"{target} (no heading with that anchor)")
    return dead


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_and_anchors_resolve(doc):
    assert not dead_links(doc), f"{doc.name}: dead links {dead_links(doc)}"


def test_a_dead_link_and_a_wrong_anchor_are_caught(tmp_path):
    (tmp_path / "a.md").write_text("# Cost (`make x`)\n## Cost (`make x`)\n```\n# not a heading\n```\n")
    doc = tmp_path / "b.md"
    doc.write_text("[ok](a.md#cost-make-x) [ok](a.md#cost-make-x-1) [bad](a.md#not-a-heading) [gone](c.md) "
                   "[web](https://example.org/x.md)\n")
    assert dead_links(doc) == ["a.md#not-a-heading (no heading with that anchor)", "c.md (no such file)"]


def split_table_cells(text: str) -> list[str]:
    """Code spans in Markdown table rows that hold an unescaped `|` (GitHub splits the row's cells there)."""
    rows = (line for line in re.sub(r"(?s)```.*?```", "", text).splitlines() if line.startswith("|"))
    return [span for row in rows for span in re.findall(r"`([^`]*)`", row) if re.search(r"(?<!\\)\|", span)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_table_cell_is_split_by_a_pipe_in_code(doc):
    assert not split_table_cells(doc.read_text()), f"{doc.name}: escape | as \\| in {split_table_cells(doc.read_text())}"


def test_a_pipe_in_a_table_code_span_is_caught():
    assert split_table_cells("| a | `x=1|2` | `y=1\\|2` |\n`z|w` outside a table\n") == ["x=1|2"]
