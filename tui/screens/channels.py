"""Channels of a name with their history (`registry history`), the audit chain state, and
rollback (`registry rollback`) one key away. Remote-tracking views (`team/production`,
what a remote said at the last pull) are listed after the channels, marked remote and
read-only: rollback never applies to them, and promote from one moves a local channel."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Header, Label, Static

from registry.errors import RegistryError
from registry.present import who
from tui import services
from tui.screens.base import RegistryScreen
from tui.widgets.confirmation import Confirmation, ConfirmationScreen
from tui.widgets.status import when


class ChannelsScreen(RegistryScreen):
    """Each channel (of one name, or of all) with its bundle; the highlighted one's history.
    Then the remote-tracking views, read-only."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, name: str | None = None, channel: str | None = None) -> None:
        super().__init__()
        self.bundle_name = name
        self.initial_channel = channel
        self.rows: list[dict[str, Any]] = []
        self.remote_rows: list[dict[str, Any]] = []  # tracking views, after the channels
        self.history_rows: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="audit-state")
        yield DataTable(id="channel-table", cursor_type="row")
        yield Label("", id="history-title")
        yield DataTable(id="history-table", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#channel-table", DataTable).add_columns(
            "CHANNEL", "BUNDLE", "REVISION", "UPDATED"
        )
        self.query_one("#history-table", DataTable).add_columns(
            "WHEN", "ACTION", "FROM", "TO", "WHO", "WHY"
        )
        self.query_one("#channel-table", DataTable).focus()

    @property
    def table(self) -> DataTable:
        return self.query_one("#channel-table", DataTable)

    def reload(self) -> None:
        keep = self._current_key() or (
            (self.bundle_name, self.initial_channel) if self.initial_channel else None
        )
        try:
            view = services.channels_view(self.reg, self.bundle_name)
        except RegistryError as exc:
            self.rapp.report(exc, "Cannot read the channels")
            return
        self.rows = view.channels
        self.remote_rows = view.remote
        state = self.query_one("#audit-state", Static)
        scope = f"Channels of {self.bundle_name}" if self.bundle_name else "All channels"
        line = Text(f"{scope}  ·  ")
        if view.audit.ok:
            line.append(
                f"audit chain ok: {view.audit.events} events, {view.audit.channels} channels",
                style="green",
            )
        else:
            line.append(f"audit chain BROKEN: {view.audit.problem}", style="bold red")
        state.update(line)
        table = self.table
        table.clear()
        for r in self.rows:
            label = r["channel"] if self.bundle_name else f"{r['name']}:{r['channel']}"
            table.add_row(
                label, f"{r['name']}:v{r['version']}", str(r["revision"]), when(r["updated_at"])
            )
        for r in self.remote_rows:
            label = Text(r["view"] if self.bundle_name else f"{r['name']}:{r['view']}")
            label.append(" remote", style="italic cyan")
            table.add_row(label, r["tag"], Text("read-only", style="dim"), when(r["fetched_at"]))
        self.app.refresh_bindings()  # whether r (roll back) applies
        if not self.rows and not self.remote_rows:
            self.query_one("#history-title", Label).update(
                "No channel holds a bundle yet: promote one with p."
            )
            self.query_one("#history-table", DataTable).clear()
            return
        index = 0
        if keep is not None:
            keys = [(r["name"], r["channel"]) for r in self.rows]
            keys += [(r["name"], r["view"]) for r in self.remote_rows]
            index = next((i for i, k in enumerate(keys) if k == keep), 0)
        table.move_cursor(row=index)
        self.show_history()

    def _cursor(self) -> int | None:
        n = len(self.rows) + len(self.remote_rows)
        if not n or not self.is_mounted:
            return None
        return min(self.table.cursor_row, n - 1)

    def current_channel(self) -> tuple[str, str] | None:
        """The local channel highlighted (None on a remote-tracking view: read-only)."""
        i = self._cursor()
        if i is None or i >= len(self.rows):
            return None
        r = self.rows[i]
        return r["name"], r["channel"]

    def current_tracking(self) -> dict[str, Any] | None:
        """The remote-tracking view highlighted (a row of tracking.views), if any."""
        i = self._cursor()
        if i is None or i < len(self.rows):
            return None
        return self.remote_rows[i - len(self.rows)]

    def _current_key(self) -> tuple[str, str] | None:
        tracked = self.current_tracking()
        return (tracked["name"], tracked["view"]) if tracked else self.current_channel()

    def show_history(self) -> None:
        current = self.current_channel()
        title = self.query_one("#history-title", Label)
        hist = self.query_one("#history-table", DataTable)
        hist.clear()
        tracked = self.current_tracking()
        if tracked is not None:
            self.history_rows = []
            title.update(
                f"{tracked['name']}:{tracked['view']} is remote-tracking, read-only: what"
                f" {tracked['remote']} said its {tracked['channel']} held, fetched"
                f" {when(tracked['fetched_at'])}  ·  p promotes its bundle to a local channel"
            )
            return
        if current is None:
            return
        name, channel = current
        try:
            self.history_rows = services.history(self.reg, name, channel)
        except RegistryError as exc:
            self.rapp.report(exc, f"Cannot read the history of {name}:{channel}")
            return
        title.update(f"History of {name}:{channel}, newest first  ·  r rolls it back")
        for h in self.history_rows:
            action = Text(h["action"], style="bold red" if h["action"] == "rollback" else "")
            if h["forced"]:
                action.append(" (forced)", style="red")
            hist.add_row(
                when(h["created_at"]), action, h["from_tag"] or "-",
                h["to_tag"] or h["to_digest"][:19], who(h), h["reason"],
            )  # fmt: skip

    @on(DataTable.RowHighlighted, "#channel-table")
    def _channel_highlighted(self) -> None:
        self.show_history()
        self.app.refresh_bindings()  # r (roll back) does not apply to a tracking view

    # --- rollback ---------------------------------------------------------------------------

    def rollback(self) -> None:
        """Confirm a rollback of the highlighted channel, the previous bundle preselected."""
        current = self.current_channel()
        tracked = self.current_tracking()
        if tracked is not None:
            self.notify(
                f"{tracked['name']}:{tracked['view']} is a remote-tracking view: read-only,"
                " it cannot be rolled back. Press p to promote its bundle to a local channel.",
                severity="warning",
            )
            return
        if current is None:
            self.notify("No channel to roll back.", severity="warning")
            return
        name, channel = current
        try:
            plan = services.rollback_plan(self.reg, name, channel)
        except RegistryError as exc:
            self.rapp.report(exc, f"Cannot roll back {name}:{channel}")
            return
        if not plan.choices:
            self.notify(
                f"{name}:{channel} has held no other bundle, so there is nothing to roll back to.",
                severity="warning",
            )
            return
        message = Text()
        message.append(f"{name}:{channel}", style="bold")
        message.append(f" holds {plan.holder}. Roll it back to the bundle below")
        if plan.previous:
            message.append(" (preselected: the one it held before)")
        message.append(".")

        def done(answer: Confirmation | None) -> None:
            if answer is not None:
                self.run_rollback(plan, answer)

        self.app.push_screen(
            ConfirmationScreen(
                f"Roll back {name}:{channel}",
                message,
                confirm_label="Roll back",
                choices=plan.choices,
                choice_label="Return to",
                initial_choice=plan.previous,
            ),
            done,
        )

    def run_rollback(self, plan: services.RollbackPlan, answer: Confirmation) -> None:
        actor = self.rapp.actor

        def job(reg: Any) -> Any:
            return services.rollback(reg, plan, to=answer.choice, actor=actor, reason=answer.reason)

        def done(result: Any) -> None:
            self.notify(
                f"{result.name}:{result.channel} rolled back to {result.to_tag}",
                title="Rolled back",
            )
            self.reload()

        self.rapp.run_job(f"roll back {plan.name}:{plan.channel}", job, done)
