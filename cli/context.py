"""What every command shares: the registry the global options chose, and the actor name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

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
