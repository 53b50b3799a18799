"""The README's layout section lists every directory of the tree, and only those.

A directory is one that holds a file git tracks (or would track); the README lists them
one per line in the indented block under "### Layout", two spaces of indent per level.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

SKIP_PARTS = {"__snapshots__"}  # pytest-textual-snapshot's data, not a part of the design


def readme_layout(text: str) -> set[str]:
    """Directories named by the README's layout block (`name/` at the start of a line)."""
    lines = text.split("\n### Layout\n", 1)[1].splitlines()
    block = [ln for ln in lines if ln.startswith("    ")]
    start = lines.index(block[0])
    paths: set[str] = set()
    stack: list[str] = []
    for ln in lines[start:]:
        if not ln.startswith("    "):
            if ln.strip():
                break
            continue
        body = ln[4:]
        indent = len(body) - len(body.lstrip())
        if indent >= 12 or not body.split()[0].endswith("/"):
            continue  # a description's continuation line (they start in column 24)
        depth, name = indent // 2, body.split()[0]
        del stack[depth:]
        stack.append(name.rstrip("/"))
        paths.add("/".join(stack))
    return paths


def tree_dirs(root: Path) -> set[str]:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    dirs = set()
    for f in files:
        parts = Path(f).parts[:-1]
        if not parts or SKIP_PARTS & set(parts) or not (root / f).exists():
            continue
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return dirs


def test_readme_layout_matches_the_tree() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tree's files are what git tracks")
    listed = readme_layout((ROOT / "README.md").read_text(encoding="utf-8"))
    actual = tree_dirs(ROOT)
    assert not actual - listed, (
        f"directories missing from README's layout: {sorted(actual - listed)}"
    )
    assert not listed - actual, (
        f"README's layout names directories not in the tree: {sorted(listed - actual)}"
    )


def test_the_parser_sees_nesting_and_skips_descriptions() -> None:
    text = (
        "x\n### Layout\n\nintro\n\n"
        "    a/                one\n"
        "                      more words/ about a\n"
        "      b/              two\n"
        "        c/            three\n"
        "    d/                four\n\n"
        "after/ the block\n"
    )
    assert readme_layout(text) == {"a", "a/b", "a/b/c", "d"}


def test_every_package_of_the_tree_ships_in_the_wheel() -> None:
    # pyproject.toml lists the packages (migrations/ is mapped into registry, which
    # discovery cannot do); a new subpackage missing from the list would be left out of the
    # wheel (.ci/wheel-check builds one to see; this says so in a second).
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("registry", "gates", "tui", "cli")
        for p in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    } | {"registry.migrations"}
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert listed - found == set(), f"listed but not in the tree: {sorted(listed - found)}"
