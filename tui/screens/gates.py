"""Run gates (`registry gates run REF --gate ...`) in a worker thread, with live progress.

The engine calls back from the worker for each gate's start, progress and result; the
callbacks reach the widgets through `App.call_from_thread`, so the interface never waits
for a gate. Leaving the screen does not stop the run: the app says when it is done.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Footer, Header, Label, ProgressBar, Static

from tui import services
from tui.screens.base import RegistryScreen
from tui.widgets.gate_progress import GateProgress


class RunGatesScreen(RegistryScreen):
    """Progress of one gate run per gate; results stay on screen when done."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, bundle: dict[str, Any], gates: list[str], channel: str | None) -> None:
        super().__init__()
        self.bundle = bundle
        self.gates = gates
        self.channel = channel
        self.done = False
        self.records: list[Any] = []

    @property
    def tag(self) -> str:
        return f"{self.bundle['name']}:v{self.bundle['version']}"

    def compose(self) -> ComposeResult:
        yield Header()
        target = f" for {self.channel}" if self.channel else ""
        yield Label(
            f"Running {len(self.gates)} gate{'s' * (len(self.gates) != 1)} on {self.tag}{target}",
            id="gates-title",
        )
        yield ProgressBar(total=len(self.gates), show_eta=False, id="gates-bar")
        with VerticalScroll(id="gates-list"):
            for gate in self.gates:
                yield GateProgress(gate, id=f"gate-{gate}")
        yield Static("Gates run in the background: escape goes back, the app says when done.",
                     id="gates-result")  # fmt: skip
        yield Footer(compact=True)

    def on_mount(self) -> None:
        ref = services.bundle_ref(self.bundle)
        actor, gates, channel = self.rapp.actor, self.gates, self.channel
        app = self.app

        def hook(gate: str, phase: str, message: str) -> None:
            # the engine calls this from the worker thread
            app.call_from_thread(self.on_gate_event, gate, phase, message)

        def job(reg: Any) -> list[Any]:
            return services.run_gates(reg, ref, gates, channel=channel, actor=actor, on_event=hook)

        self.rapp.run_job(f"gates on {self.tag}", job, self.finished, failed=self.failed)

    def progress(self, gate: str) -> GateProgress | None:
        found = self.query(f"#gate-{gate}")
        return found.first(GateProgress) if found else None

    def on_gate_event(self, gate: str, phase: str, message: str) -> None:
        """One engine event: a gate started, reported progress, or ended with a status."""
        if not self.is_attached:  # the user went back; the run goes on
            return
        widget = self.progress(gate)
        if widget is None:  # a dependency the engine added: show it too
            widget = GateProgress(gate, id=f"gate-{gate}")
            self.query_one("#gates-list").mount(widget)
            bar = self.query_one("#gates-bar", ProgressBar)
            bar.total = (bar.total or 0) + 1
        widget.update_event(phase, message)
        if phase not in ("start", "progress"):
            self.query_one("#gates-bar", ProgressBar).advance(1)

    def finished(self, records: list[Any]) -> None:
        self.done = True
        self.records = records
        counts: dict[str, int] = {}
        for r in records:
            counts[r.status] = counts.get(r.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        ok = counts.keys() <= {"passed"}
        text = Text(f"Done: {summary}.", style="bold green" if ok else "bold red")
        text.append("  escape goes back; the bundle's gate runs show the evidence.", style="")
        if self.is_attached:
            self.query_one("#gates-result", Static).update(text)
        self.app.notify(
            f"{self.tag}: {summary}",
            title="Gates done",
            severity="information" if ok else "warning",
        )

    def failed(self) -> None:
        self.done = True
        if self.is_attached:
            self.query_one("#gates-result", Static).update(
                Text("The gates could not run (see the notification).", style="bold red")
            )
