"""The conventions scripts and people expect of a CLI (`gh`, `docker`, `hf`): `--version`,
`-h` wherever `--help` works, one clear message for an unknown command."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version

import click
import pytest
import typer.main

from cli.app import app
from tests.conftest import run_cli


def command_paths(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every group and command of the app, as the words that name it."""
    for name, cmd in group.commands.items():
        yield (*path, name)
        if isinstance(cmd, click.Group):
            yield from command_paths(cmd, (*path, name))


ALL = sorted(command_paths(typer.main.get_group(app)))


def test_version_prints_the_installed_version_and_exits_0() -> None:
    res = run_cli("--version")
    assert res.code == 0, res.err
    assert res.out == f"registry {version('lora-registry')}\n"
    assert res.err == ""


def test_version_works_in_a_fresh_process_without_a_registry(tmp_path) -> None:  # noqa: ANN001
    # Eager: answered before any registry is looked for (there is none under tmp_path).
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "--version"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"registry {version('lora-registry')}"


def test_the_walk_finds_the_commands() -> None:
    # So the parametrized tests below cannot pass by walking nothing.
    assert {("promote",), ("gates", "run"), ("policy", "check"), ("remote", "rm")} <= set(ALL)
    assert len(ALL) > 30


@pytest.mark.parametrize("path", [(), *ALL], ids=lambda p: " ".join(p) or "registry")
def test_dash_h_is_help_everywhere(path: tuple[str, ...]) -> None:
    short, long = run_cli(*path, "-h"), run_cli(*path, "--help")
    assert short.code == 0 and long.code == 0, (short.err, long.err)
    assert short.out == long.out
    assert short.out.startswith("Usage: registry") and "-h, --help" in short.out


def test_version_typo_is_one_error_that_points_at_dash_dash_version() -> None:
    res = run_cli("version")
    assert res.code == 2
    assert res.out == ""
    assert res.err.count("No such command 'version'") == 1
    assert "Did you mean" not in res.err
    assert "registry --version" in res.err


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [(["verfy"], "'verify'"), (["gates", "lst"], "'list'"), (["policy", "chek"], "'check'")],
)
def test_a_typo_gets_one_suggestion(args: list[str], suggestion: str) -> None:
    res = run_cli(*args)
    assert res.code == 2
    assert res.err.count("No such command") == 1
    assert res.err.count("Did you mean") == 1 and suggestion in res.err
