"""`registry tui`: the terminal app for reviewing gate results, promoting and rolling back.

Textual is imported inside the command, so `registry --help` and every other command
start without it (tests/cli/test_startup.py).
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.context import actor_or_default, open_registry
from registry.config import ACTOR_HELP


def register(app: typer.Typer) -> None:
    app.command("tui")(tui)


def tui(
    actor: Annotated[str | None, typer.Option(help=ACTOR_HELP)] = None,
) -> None:
    """Browse bundles and gate results, promote and roll back, in a terminal UI."""

    # Opened first, so "no registry" is the usual one-line error, before textual is loaded
    # and the screen changes.
    reg = open_registry()
    from tui.app import RegistryApp

    RegistryApp(reg, actor=actor_or_default(actor)).run()
