"""`registry completion SHELL`: print the shell-completion script (as `gh`, `docker` and
`kubectl completion` do), to source or save; nothing is installed or edited.

    eval "$(registry completion bash)"                     # this shell
    registry completion bash > ~/.local/share/bash-completion/completions/registry
    registry completion zsh > "${fpath[1]}/_registry"
    registry completion fish > ~/.config/fish/completions/registry.fish

The script calls `registry` back with `_REGISTRY_COMPLETE=complete_SHELL`; `main` in
cli.app then loads Typer's completion classes (`enable_completion`) and Typer answers.
Typer's own `--install-completion` / `--show-completion` are left off the app
(`add_completion=False`): they detect the shell through its parent process and edit rc
files, where printing the script is explicit and works the same in scripts and CI.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from registry.output import echo

COMPLETE_VAR = "_REGISTRY_COMPLETE"


class Shell(StrEnum):
    """The shells Typer writes completion scripts for."""

    bash = "bash"
    zsh = "zsh"
    fish = "fish"
    powershell = "powershell"
    pwsh = "pwsh"


def register(app: typer.Typer) -> None:
    app.command("completion")(completion)


def completion(
    shell: Annotated[Shell, typer.Argument(help="bash, zsh, fish, powershell or pwsh.")],
) -> None:
    """Print the shell-completion script for SHELL (source it, or save it where your shell
    loads completions)."""
    # Typer keeps the scripts in a private module; tests/cli/test_completion.py runs the
    # script's protocol end to end, so a Typer upgrade that moves it fails there.
    from typer._completion_shared import get_completion_script

    echo(get_completion_script(prog_name="registry", complete_var=COMPLETE_VAR, shell=shell.value))


def enable_completion() -> None:
    """Register Typer's completion classes with click, for a `_REGISTRY_COMPLETE` call."""
    from typer._completion_classes import completion_init

    completion_init()
