"""Live progress of one gate run: queued, running (with the gate's latest message), result."""

from __future__ import annotations

import time

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tui.widgets.status import status_text


class GateProgress(Widget):
    """One line per gate: name, status, seconds, and the gate's latest progress message."""

    DEFAULT_CSS = """
    GateProgress { height: 1; }
    """

    status: reactive[str] = reactive("queued")
    message: reactive[str] = reactive("")

    def __init__(self, gate: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.gate = gate
        self.started: float | None = None
        self.ended: float | None = None

    def on_mount(self) -> None:
        self.set_interval(0.5, self._tick)

    def _tick(self) -> None:
        if self.status == "running":
            self.refresh()

    def update_event(self, phase: str, message: str) -> None:
        """Apply an engine event: phase "start", "progress" or the final status."""
        if phase == "start":
            self.started = time.monotonic()
            self.status = "running"
        elif phase == "progress":
            self.message = message
        else:
            self.ended = time.monotonic()
            self.status = phase
            self.message = message
        self.set_class(self.status in ("passed", "failed", "error"), "-done")

    @property
    def seconds(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.monotonic()) - self.started

    def render(self) -> Text:
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(f"{self.gate:<20} ")
        line.append_text(status_text(self.status).copy())
        line.pad_right(max(0, 29 - len(line.plain)))
        secs = self.seconds
        line.append(f"{secs:6.1f}s  " if secs is not None else "      -  ", style="dim")
        line.append(self.message)
        return line
