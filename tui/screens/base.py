"""What every registry screen has: the app's registry, and the bundle or channel in view.

The app's actions (promote, roll back, run gates, diff, channels) ask the active screen
which bundle or channel the user is on, so one key does the same thing on every screen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from textual.notifications import SeverityLevel
from textual.screen import Screen

if TYPE_CHECKING:
    from registry.repo import Registry
    from tui.app import RegistryApp


class RegistryScreen(Screen[None]):
    """A screen of the registry app; re-reads the registry whenever it comes back to view."""

    @property
    def rapp(self) -> RegistryApp:
        return cast("RegistryApp", self.app)

    @property
    def reg(self) -> Registry:
        return self.rapp.reg

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """A notification; plain text by default (registry messages hold brackets)."""
        self.app.notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def current_bundle(self) -> dict[str, Any] | None:
        """The bundle the user is on (a row of `list_bundles` or `show`), if any."""
        return None

    def current_channel(self) -> tuple[str, str] | None:
        """(name, channel) the user is on, if any."""
        return None

    def reload(self) -> None:
        """Read what the screen shows from the registry again."""

    def on_screen_resume(self) -> None:
        self.reload()
        self.app.refresh_bindings()
