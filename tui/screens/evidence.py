"""A gate run's evidence report (`registry gates show REF --evidence ID`), as JSON."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.syntax import Syntax
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static


class EvidenceScreen(ModalScreen[None]):
    """The stored evidence blob of one gate run, scrollable; escape closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,e", "dismiss", "Close"),
    ]

    def __init__(self, title: str, report: dict[str, Any]) -> None:
        super().__init__()
        self.title_text = title
        self.report = report

    def compose(self) -> ComposeResult:
        text = json.dumps(self.report, indent=2, sort_keys=True, default=str)
        with Vertical(id="evidence-dialog"):
            yield Label(
                f"Evidence of gate run {self.title_text}  (escape closes)", id="evidence-title"
            )
            with VerticalScroll(id="evidence-body"):
                yield Static(Syntax(text, "json", word_wrap=True, theme="ansi_dark"))

    def on_mount(self) -> None:
        self.query_one("#evidence-body").focus()
