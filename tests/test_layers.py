"""The layers contract (docs/design.md, "Layers"): cli > tui > gates > registry.

`lint-imports` checks it from pyproject.toml in `make lint` and CI. These tests show the
contract has teeth: a copy of the packages in which the foundation imports a layer above
it, at module level or hidden inside a function, is refused, naming the import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("registry", "gates", "tui", "cli")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_the_layers() -> None:
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_copy_is_analysed_not_the_installed_packages(tree: Path) -> None:
    # the control for the cases below: the unchanged copy passes
    proc = lint(tree)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("module", "line", "culprit"),
    [
        ("registry/digest.py", "import gates.catalog", "gates.catalog"),
        ("registry/channels.py", "from tui import services", "tui.services"),
        ("registry/remotes/hf.py", "from cli.context import state", "cli.context"),
        ("gates/engine.py", "from tui import app", "tui.app"),
        ("tui/app.py", "import cli.app", "cli.app"),
    ],
)
@pytest.mark.parametrize("hidden", [False, True], ids=["module-level", "inside-a-function"])
def test_an_upward_import_breaks_the_contract(
    tree: Path, module: str, line: str, culprit: str, hidden: bool
) -> None:
    path = tree / module
    code = f"\n\ndef _upward() -> None:\n    {line}  # noqa\n" if hidden else f"\n{line}  # noqa\n"
    path.write_text(path.read_text() + code)
    proc = lint(tree)
    assert proc.returncode == 1, proc.stdout
    importer = module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {culprit}" in proc.stdout
    assert "0 kept, 1 broken" in proc.stdout
