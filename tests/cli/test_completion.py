"""Shell completion: `registry completion SHELL` prints a script, and the script really
completes, run in a real bash against the installed `registry` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

BIN = Path(sys.executable).parent  # the venv's bin/, where the `registry` script is


def complete_in_bash(words: list[str], tmp_path: Path) -> list[str]:
    """What TAB offers after `words` in bash, with the script `registry completion bash`
    printed sourced in."""
    script = tmp_path / "registry.bash"
    script.write_text(run_cli("completion", "bash").out)
    line = " ".join(f'"{w}"' for w in words)
    prog = (
        f"source {script}\n"
        f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n"
        "_registry_completion registry\n"  # bash passes the command name as $1
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", prog],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_subcommands_and_options(tmp_path: Path) -> None:
    assert (BIN / "registry").exists()
    assert complete_in_bash(["registry", "pro"], tmp_path) == ["promote"]
    assert set(complete_in_bash(["registry", "gates", ""], tmp_path)) == {"run", "show", "list"}
    options = complete_in_bash(["registry", "promote", "--"], tmp_path)
    assert {"--to", "--json", "--reason", "--help"} <= set(options)
    assert complete_in_bash(["registry", "completion", "z"], tmp_path) == ["zsh"]


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete -o default -F _registry_completion registry"),
     ("zsh", "#compdef registry"), ("fish", "complete --command registry"),
     ("powershell", "Register-ArgumentCompleter")],
)  # fmt: skip
def test_each_shell_gets_its_script(shell: str, marker: str) -> None:
    res = run_cli("completion", shell)
    assert res.code == 0, res.err
    assert marker in res.out and "_REGISTRY_COMPLETE" in res.out


def test_an_unknown_shell_is_a_usage_error() -> None:
    res = run_cli("completion", "tcsh")
    assert res.code == 2 and "tcsh" in res.err and res.out == ""
