"""Promote: pick a bundle and a channel, see what the policy requires and what is satisfied
(`registry promote --policy` dry run) and why each gate blocks, confirm with a reason, or run
the gates that block (re-run the failed ones, run the missing ones)."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Footer, Header, Label, Select, Static

from registry import bundles
from registry.errors import RegistryError
from tui import services
from tui.screens.base import RegistryScreen
from tui.widgets.confirmation import Confirmation, ConfirmationScreen
from tui.widgets.status import short, status_text, when

NOTE_SPARE = 56  # cells the other columns of the requirements take, padding included


class PromoteScreen(RegistryScreen):
    """Requirements of a move, live; promote when allowed, run missing gates when not."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("p", "promote", "Promote", tooltip="Confirm with a reason (if allowed)"),
        Binding("g", "run_missing", "Run gates", tooltip="Re-run failed, run missing gates"),
    ]

    def __init__(self, name: str, digest: str | None = None, channel: str | None = None) -> None:
        super().__init__()
        self.bundle_name = name
        self.initial_digest = digest
        self.initial_channel = channel
        self.versions: list[dict[str, Any]] = []
        self.check: services.PromotionCheck | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label(f"Promote a bundle of {self.bundle_name}", id="promote-title")
        with Horizontal(id="promote-pickers"):
            yield Select[str]([], prompt="bundle", id="promote-bundle", compact=True)
            yield Select[str]([], prompt="channel", id="promote-channel", compact=True)
        yield Static(id="promote-state")
        yield DataTable(id="requirements", cursor_type="row")
        yield Static(id="promote-verdict")
        with Horizontal(id="promote-buttons"):
            yield Button("Promote…", variant="success", id="promote-go")
            yield Button("No gates to run", variant="primary", id="promote-run")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#requirements", DataTable)
        table.add_columns("GATE", "STATUS", "RUN", "WHEN")
        # the note wraps in what the other columns leave of the terminal's width
        table.add_column("NOTE", width=max(24, self.app.size.width - NOTE_SPARE), key="note")
        try:
            self.versions = bundles.list_bundles(self.reg, self.bundle_name)
            policy = services.policy_or_none(self.reg)
        except RegistryError as exc:
            self.rapp.report(exc, "Cannot prepare the promotion")
            return
        bundle_select = self.query_one("#promote-bundle", Select)
        bundle_select.set_options(
            (f"{r['tag']}  {short(r['digest'], 8)}"
             + (f"  [{','.join(r['channels'])}]" if r["channels"] else ""), r["digest"])
            for r in self.versions
        )  # fmt: skip
        digest = self.initial_digest or (self.versions[0]["digest"] if self.versions else None)
        if digest is not None:
            bundle_select.value = digest
        channel_select = self.query_one("#promote-channel", Select)
        names = list(policy.channels) if policy else []
        channel_select.set_options((n, n) for n in names)
        channel = self.initial_channel if self.initial_channel in names else None
        if channel is None and names:
            channel = self._first_channel_without(digest, names)
        if channel is not None:
            channel_select.value = channel
        self.query_one("#promote-bundle", Select).focus()

    def _first_channel_without(self, digest: str | None, names: list[str]) -> str:
        """The first policy channel that does not hold the bundle yet (staging, then ...)."""
        row = next((r for r in self.versions if r["digest"] == digest), None)
        held = set(row["channels"]) if row else set()
        return next((n for n in names if n not in held), names[0])

    @property
    def selection(self) -> tuple[str | None, str | None]:
        b = self.query_one("#promote-bundle", Select).value
        c = self.query_one("#promote-channel", Select).value
        return (b if isinstance(b, str) else None, c if isinstance(c, str) else None)

    @on(Select.Changed)
    def _picked(self) -> None:
        self.reload()

    def reload(self) -> None:
        """Re-check the move against the policy: what the user sees is what promote expects."""
        digest, channel = self.selection
        table = self.query_one("#requirements", DataTable)
        verdict = self.query_one("#promote-verdict", Static)
        state = self.query_one("#promote-state", Static)
        table.clear()
        self.check = None
        go, run = self.query_one("#promote-go", Button), self.query_one("#promote-run", Button)
        go.disabled = run.disabled = True
        if digest is None or channel is None:
            state.update("")
            if services.policy_or_none(self.reg) is None:
                verdict.update(Text(
                    "No policy is set, so nothing may be promoted. "
                    "Run `registry policy set POLICY.toml` first.", style="bold red"))  # fmt: skip
            else:
                verdict.update("Pick a bundle and a channel.")
            return
        try:
            self.check = services.check_promotion(
                self.reg, f"{self.bundle_name}@{digest}", channel, self.rapp.actor
            )
        except RegistryError as exc:
            state.update("")
            verdict.update(Text(f"Blocked: {exc.one_line()}", style="bold red"))
            return
        check = self.check
        holder = check.holder or "nothing"
        state.update(Text.assemble(
            (f"{self.bundle_name}:{channel}", "bold"), f" holds {holder}",
            f" (revision {check.seen.revision})" if check.seen.revision else "",
            (f"  ·  policy {short(check.policy_digest, 8)}", "dim"),
        ))  # fmt: skip
        for r in check.requirements:
            table.add_row(
                r.gate, status_text(services.blocking_kind(r)), str(r.run_id or "-"),
                when(r.at), Text(r.why or r.note, style="" if r.status == "passed" else "red"),
                height=None,
            )  # fmt: skip
        if not check.requirements:
            table.add_row("(none)", Text("no gate required", style="dim"), "", "", "")
        tag = f"{check.bundle['name']}:v{check.bundle['version']}"
        if check.seen.digest == check.bundle["digest"]:
            verdict.update(Text(f"{channel} already holds {tag}.", style="bold"))
        elif check.allowed:
            passed = len(check.requirements)
            verdict.update(
                Text(
                    f"Allowed: {tag} satisfies {channel} ({passed} required gate"
                    f"{'s' * (passed != 1)} passed). Press p to promote.",
                    style="bold green",
                )
            )
            go.disabled = False
        else:
            verdict.update(Text(
                f"Blocked: {tag} may not enter {channel}: " + "; ".join(check.blockers),
                style="bold red"))  # fmt: skip
        run.label = check.run_label
        run.disabled = not check.gates_to_run

    # --- actions ----------------------------------------------------------------------------

    @on(Button.Pressed, "#promote-go")
    def action_promote(self) -> None:
        check = self.check
        if check is None:
            self.notify("Pick a bundle and a channel first.", severity="warning")
            return
        tag = f"{check.bundle['name']}:v{check.bundle['version']}"
        if not check.allowed:
            hint = f" Press g: {check.run_label}." if check.gates_to_run else ""
            self.notify(
                f"{tag} may not enter {check.channel}: {'; '.join(check.blockers)}.{hint}",
                title="Promotion blocked",
                severity="warning",
            )
            return
        if check.seen.digest == check.bundle["digest"]:
            self.notify(f"{check.channel} already holds {tag}.")
            return
        message = Text()
        message.append(f"{check.bundle['name']}:{check.channel}", style="bold")
        message.append(f": {check.holder or 'empty'} → ")
        message.append(tag, style="bold green")
        message.append(f"\n{len(check.requirements)} required gate(s) passed under policy"
                       f" {short(check.policy_digest)}.")  # fmt: skip

        def done(answer: Confirmation | None) -> None:
            if answer is not None:
                self.run_promote(check, answer.reason)

        self.app.push_screen(
            ConfirmationScreen(
                f"Promote {tag} to {check.channel}", message, confirm_label="Promote"
            ),
            done,
        )

    def run_promote(self, check: services.PromotionCheck, reason: str) -> None:
        actor = self.rapp.actor

        def job(reg: Any) -> Any:
            return services.promote(reg, check, actor=actor, reason=reason)

        def done(result: Any) -> None:
            self.notify(f"{result.name}:{result.channel} → {result.to_tag}", title="Promoted")
            self.rapp.show_channels(result.name, result.channel, replace=self)

        self.rapp.run_job(f"promote {check.channel}", job, done, failed=self.reload)

    @on(Button.Pressed, "#promote-run")
    def action_run_missing(self) -> None:
        check = self.check
        if check is None or not check.gates_to_run:
            self.notify("No gate to run: every required gate passed.", severity="warning")
            return
        self.rapp.run_gates(check.bundle, check.gates_to_run, check.channel)
