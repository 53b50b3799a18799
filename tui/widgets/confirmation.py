"""The one confirmation dialog that every channel move (promote, rollback) goes through.

It states the move, optionally lets the user pick the target (rollback: the bundle to
return to, the previous one preselected), and requires a reason, which goes into the
audit log. It returns a Confirmation, or None when cancelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static


@dataclass(frozen=True)
class Confirmation:
    """What the user confirmed: the reason, and the chosen value if choices were offered."""

    reason: str
    choice: str | None = None


class ConfirmationScreen(ModalScreen[Confirmation | None]):
    """Ask to confirm a move, with a required reason and an optional choice of target."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(
        self,
        title: str,
        message: str | Text,
        *,
        confirm_label: str = "Confirm",
        choices: list[tuple[str, str]] | None = None,
        choice_label: str = "Target",
        initial_choice: str | None = None,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.message = message
        self.confirm_label = confirm_label
        self.choices = choices or []
        self.choice_label = choice_label
        self.initial_choice = initial_choice

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog"):
            yield Label(self.title_text, id="confirm-title")
            yield Static(self.message, id="confirm-message")
            if self.choices:
                yield Label(self.choice_label, classes="confirm-label")
                yield Select(
                    self.choices,
                    value=self.initial_choice or self.choices[0][1],
                    allow_blank=False,
                    id="confirm-choice",
                )
            yield Label("Reason (required; recorded in the audit log)", classes="confirm-label")
            yield Input(placeholder="why, e.g. INC-4211 or 'eval +7 points'", id="confirm-reason")
            yield Label("", id="confirm-error")
            with Horizontal(id="confirm-buttons"):
                yield Button(self.confirm_label, variant="warning", id="confirm-ok")
                yield Button("Cancel", id="confirm-cancel")

    def on_mount(self) -> None:
        self.query_one("#confirm-reason", Input).focus()

    @property
    def reason(self) -> str:
        return self.query_one("#confirm-reason", Input).value.strip()

    @on(Input.Submitted, "#confirm-reason")
    @on(Button.Pressed, "#confirm-ok")
    def action_confirm(self) -> None:
        if not self.reason:
            self.query_one("#confirm-error", Label).update("A reason is required.")
            self.query_one("#confirm-reason", Input).focus()
            return
        choice = None
        if self.choices:
            value = self.query_one("#confirm-choice", Select).value
            choice = value if isinstance(value, str) else None
        self.dismiss(Confirmation(self.reason, choice))

    @on(Button.Pressed, "#confirm-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
