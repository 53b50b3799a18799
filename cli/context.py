"""What every command shares: the registry the global options chose, the actor name, the
`--json` option and the command-group class (one "No such command" message, `-h`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer
import typer.core

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

# `-h` everywhere `--help` works: click passes these to every sub-context.
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


class RegistryGroup(typer.core.TyperGroup):
    """A Typer group whose unknown-command error carries one suggestion.

    Typer 0.20 appends "Did you mean ...?" to click's NoSuchCommand, which click 8.4+
    already suggests, so the hint came twice; with an older click (no `possibilities` on
    the error) Typer's suggestion is kept. `registry version` gets a pointer to
    `--version` instead of "Did you mean 'verify'?"."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return click.Group.resolve_command(self, ctx, args)
        except click.UsageError as exc:
            if ctx.parent is None and args and args[0] == "version":
                raise click.UsageError(
                    "No such command 'version'. The version is `registry --version`.", ctx
                ) from None
            if not hasattr(exc, "possibilities"):  # click < 8.4 suggests nothing itself
                return super().resolve_command(ctx, args)
            raise


# Set by the app's callback from the global options (--registry, --debug).
state: dict[str, Any] = {"registry": None, "debug": False}


def set_options(registry: Path | None, debug: bool) -> None:
    state["registry"] = registry
    state["debug"] = debug


def open_registry() -> Any:
    from registry.repo import Registry

    return Registry.open(state["registry"])


def actor_or_default(actor: str | None) -> str:
    """The display name for this command (who acts is authenticated: registry.identity)."""
    from registry.config import display_name

    return display_name(actor)
