"""`?`: every key binding of the app and of each screen, read from the classes themselves."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

SCREENS_HELP = (
    ("Bundles", "every bundle: tag, digest, parent, created, channels, gates (✓ passed ✗ not)"),
    (
        "Bundle",
        "components, lineage; gate runs (which counts), metrics beside thresholds;"
        " loss and trend plots; e opens a run's evidence",
    ),
    ("Channels", "each channel's bundle and history, newest first; the audit chain state"),
    ("Promote", "pick bundle and channel; required gates, why each blocks; confirm with why"),
    ("Run gates", "the gates that block run in the background with live progress per gate"),
    ("Diff", "two bundles side by side; changed components highlighted"),
)


def key_name(binding: Binding) -> str:
    keys = binding.key_display or binding.key
    return ", ".join(k.replace("slash", "/").replace("question_mark", "?") for k in keys.split(","))


def bindings_table(title: str, bindings: list[BindingType]) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=None,
                  padding=(0, 2), show_header=False)  # fmt: skip
    table.add_column(style="bold cyan", no_wrap=True, min_width=8)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(style="dim")
    for b in bindings:
        if isinstance(b, Binding) and b.description:
            table.add_row(key_name(b), b.description, b.tooltip)
    return table


class HelpScreen(ModalScreen[None]):
    """Keys, by where they work, and what each screen shows."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss", "Close"),
    ]

    def __init__(self, sections: list[tuple[str, list[BindingType]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        screens = Table(title="Screens", title_justify="left", title_style="bold", box=None,
                        padding=(0, 2), show_header=False)  # fmt: skip
        screens.add_column(style="bold", no_wrap=True)
        screens.add_column()
        for name, what in SCREENS_HELP:
            screens.add_row(name, what)
        with Vertical(id="help-dialog"):
            yield Label("registry tui: keys  (escape closes; ctrl+p lists every action)",
                        id="help-title")  # fmt: skip
            with VerticalScroll(id="help-body"):
                for title, bindings in self.sections:
                    yield Static(bindings_table(title, bindings), classes="help-section")
                yield Static(screens, classes="help-section")
                yield Static(Text(
                    "The TUI calls the same service functions as the CLI: every move is the"
                    " `registry promote` / `registry rollback` you would type, audited the same"
                    " way.", style="italic"))  # fmt: skip

    def on_mount(self) -> None:
        self.query_one("#help-body").focus()
