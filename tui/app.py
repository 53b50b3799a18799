"""`registry tui`: review bundles and gate results, promote, roll back, from the terminal.

The app holds one Registry for the reads its screens make on the event loop. Anything that
writes or takes long (promote, rollback, gate runs) runs in a worker thread on a Registry
of its own, so the interface never waits on a busy database or a slow gate, and a failure
there becomes an error notification, never a crash. Every action is a key shown in the
footer, an entry in the command palette (ctrl+p) and a line of the `?` help.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen, Screen

from registry.config import display_name
from registry.errors import RegistryError
from registry.repo import Registry
from tui import services
from tui.screens.base import RegistryScreen
from tui.screens.bundles import BundlesScreen
from tui.screens.channels import ChannelsScreen
from tui.screens.detail import DetailScreen

# (action, palette title, palette help): one palette entry per action of the app
ACTIONS: tuple[tuple[str, str, str], ...] = (
    ("bundles", "Bundles", "List every bundle; filter by name"),
    ("filter", "Filter bundles by name", "Type part of a name to narrow the bundle list"),
    ("open", "Open bundle", "Components, lineage and gate runs of the highlighted bundle"),
    ("channels", "Channels and history", "Each channel of the bundle's name, with history"),
    ("promote", "Promote bundle", "Check the policy's gates and move a channel to the bundle"),
    ("rollback", "Roll back channel", "Return the highlighted channel to the bundle it held"),
    ("run_gates", "Run missing gates", "Run the gates the policy requires that have not passed"),
    ("diff", "Diff bundles", "Mark a bundle, then diff it with another (or with its parent)"),
    ("evidence", "Show evidence", "The evidence report of the highlighted gate run"),
    ("help", "Help: keys and screens", "Every key binding, and what each screen shows"),
    ("quit", "Quit", "Leave the app"),
)


class RegistryCommands(Provider):
    """The command palette: one entry per action of the app."""

    def _command(self, action: str) -> Callable[[], Any]:
        # called directly, not through check_action: a palette entry always answers
        return getattr(self.app, f"action_{action}")

    async def discover(self) -> Hits:
        for action, title, help_text in ACTIONS:
            yield DiscoveryHit(title, self._command(action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for action, title, help_text in ACTIONS:
            if (score := matcher.match(title)) > 0:
                yield Hit(score, matcher.highlight(title), self._command(action), help=help_text)


class RegistryApp(App[None]):
    """The release manager's view of a registry."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "registry"
    COMMANDS: ClassVar[set[Any]] = App.COMMANDS | {RegistryCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help", key_display="?", tooltip="Keys and screens"),
        Binding("b", "bundles", "Bundles", show=False, tooltip="Back to the bundle list"),
        Binding("c", "channels", "Channels", tooltip="Channels of the name, with history"),
        Binding("p", "promote", "Promote", tooltip="Check the gates, then move a channel"),
        Binding("r", "rollback", "Roll back", tooltip="Return the channel to its previous bundle"),
        Binding("g", "run_gates", "Gates", tooltip="Run the required gates that have not passed"),
        Binding("d", "diff", "Diff", tooltip="Mark a bundle, then diff it (or with its parent)"),
        # q, unlike ctrl+q, is off in dialogs: a stray q must not drop a half-typed reason
        Binding("q", "quit_app", "Quit", show=False),
    ]
    # app actions that need a bundle in view; hidden where there is none
    BUNDLE_ACTIONS: ClassVar[set[str]] = {"run_gates", "diff"}
    # actions checked against the screen in view (ctrl+q's "quit" always works)
    GUARDED: ClassVar[set[str]] = {a for a, _, _ in ACTIONS} - {"quit"} | {"quit_app"}

    def __init__(
        self, registry: Registry | Path | None = None, *, actor: str | None = None
    ) -> None:
        super().__init__()
        # Opened before the UI starts, so a missing registry is the CLI's one-line error.
        self.reg = registry if isinstance(registry, Registry) else Registry.open(registry)
        self.actor = display_name(actor)
        self.diff_mark: dict[str, Any] | None = None
        self.sub_title = str(self.reg.root)

    def get_default_screen(self) -> Screen[Any]:
        return BundlesScreen()

    def on_unmount(self) -> None:
        self.reg.close()

    # --- plumbing ---------------------------------------------------------------------------

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
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def report(self, exc: BaseException, title: str = "Error") -> None:
        """An error notification: the CLI's one line for a RegistryError."""
        if isinstance(exc, RegistryError):
            message = exc.one_line()
        else:
            message = f"unexpected {type(exc).__name__}: {exc}"
        self.notify(message, title=title, severity="error", timeout=12)

    def run_job(
        self,
        title: str,
        job: Callable[[Registry], Any],
        done: Callable[[Any], None],
        *,
        failed: Callable[[], None] | None = None,
    ) -> None:
        """Run `job` in a worker thread on its own Registry; `done(result)` on the UI thread.

        A failure (database locked, missing blobs, a lost compare-and-swap...) is reported
        as a notification and `failed()` runs; the app keeps going either way.
        """
        root = self.reg.root

        def work() -> None:
            try:
                result = services.with_registry(root, job)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
                self.call_from_thread(self.report, exc, f"Could not {title}")
                if failed is not None:
                    self.call_from_thread(failed)
                return
            self.call_from_thread(done, result)

        self.run_worker(work, name=title, group="jobs", thread=True, exit_on_error=False)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action not in self.GUARDED:
            return True
        screen = self.screen
        if isinstance(screen, ModalScreen) or not isinstance(screen, RegistryScreen):
            return False  # dialogs keep their keys to themselves
        if action == "bundles":
            return not isinstance(screen, BundlesScreen)
        if action == "rollback":
            return isinstance(screen, ChannelsScreen) and screen.current_channel() is not None
        if action == "channels":
            return not isinstance(screen, ChannelsScreen)
        if action == "promote":
            tracked = isinstance(screen, ChannelsScreen) and screen.current_tracking() is not None
            return (
                screen.current_bundle() is not None
                or screen.current_channel() is not None
                or tracked
            )
        if action in self.BUNDLE_ACTIONS:
            return screen.current_bundle() is not None
        return True

    def context(self) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
        screen = self.screen
        if isinstance(screen, RegistryScreen):
            return screen.current_bundle(), screen.current_channel()
        return None, None

    # --- navigation ---------------------------------------------------------------------------

    def open_detail(self, bundle: dict[str, Any]) -> None:
        self.push_screen(DetailScreen(services.bundle_ref(bundle)))

    def show_channels(
        self, name: str | None, channel: str | None = None, *, replace: Screen[Any] | None = None
    ) -> None:
        """Show the channels of `name` (`channel` highlighted), instead of `replace` if given."""
        if replace is not None and self.screen is replace:
            self.pop_screen()
        self.push_screen(ChannelsScreen(name, channel))

    def run_gates(self, bundle: dict[str, Any], gates: list[str], channel: str | None) -> None:
        from tui.screens.gates import RunGatesScreen

        try:
            ordered = services.run_order(gates)
        except RegistryError as exc:
            self.report(exc, "Cannot run the gates")
            return
        self.push_screen(RunGatesScreen(bundle, ordered, channel))

    # --- actions ----------------------------------------------------------------------------

    def action_help(self) -> None:
        from tui.screens.diff import DiffScreen
        from tui.screens.gates import RunGatesScreen
        from tui.screens.help import HelpScreen
        from tui.screens.promote import PromoteScreen
        from tui.widgets.virtual_table import VirtualTable

        open_row = [b for b in VirtualTable.BINDINGS if isinstance(b, Binding) and b.key == "enter"]
        sections: list[tuple[str, list[BindingType]]] = [
            ("Everywhere", list(self.BINDINGS) + [Binding("ctrl+p", "", "Command palette")]),
            ("Bundles", [*BundlesScreen.BINDINGS, *open_row]),
            ("Bundle", list(DetailScreen.BINDINGS)),
            ("Channels", list(ChannelsScreen.BINDINGS)),
            ("Promote", list(PromoteScreen.BINDINGS)),
            ("Run gates", list(RunGatesScreen.BINDINGS)),
            ("Diff", list(DiffScreen.BINDINGS)),
        ]
        self.push_screen(HelpScreen(sections))

    def action_quit_app(self) -> None:
        self.exit()

    def action_bundles(self) -> None:
        while len(self.screen_stack) > 1 and not isinstance(self.screen, BundlesScreen):
            self.pop_screen()

    def action_filter(self) -> None:
        self.action_bundles()
        self.call_later(self._focus_filter)

    def _focus_filter(self) -> None:
        if isinstance(self.screen, BundlesScreen):
            self.screen.action_filter()

    def action_open(self) -> None:
        bundle, _ = self.context()
        if bundle is None:
            self.notify("Highlight a bundle first.", severity="warning")
        elif not isinstance(self.screen, DetailScreen):
            self.open_detail(bundle)

    def action_evidence(self) -> None:
        if isinstance(self.screen, DetailScreen):
            self.screen.action_evidence()
        else:
            self.notify("Open a bundle (enter) and highlight a gate run first.",
                        severity="warning")  # fmt: skip

    def action_channels(self) -> None:
        bundle, channel = self.context()
        name = bundle["name"] if bundle else (channel[0] if channel else None)
        if isinstance(self.screen, ChannelsScreen) and self.screen.bundle_name == name:
            return
        self.show_channels(name)

    def action_promote(self) -> None:
        from tui.screens.promote import PromoteScreen

        bundle, channel = self.context()
        screen = self.screen
        tracked = screen.current_tracking() if isinstance(screen, ChannelsScreen) else None
        if tracked is not None:
            # adopt a remote-tracking view: its bundle into the local channel of that name
            self.push_screen(
                PromoteScreen(tracked["name"], tracked["bundle_digest"], tracked["channel"])
            )
            return
        if bundle is None and channel is None:
            self.notify("Highlight a bundle or a channel first.", severity="warning")
            return
        name = bundle["name"] if bundle else channel[0]  # type: ignore[index]
        self.push_screen(
            PromoteScreen(
                name, bundle["digest"] if bundle else None, channel[1] if channel else None
            )
        )

    def action_rollback(self) -> None:
        screen = self.screen
        if isinstance(screen, ChannelsScreen):
            screen.rollback()
            return
        bundle, _ = self.context()
        self.show_channels(bundle["name"] if bundle else None)
        self.notify("Highlight the channel to roll back, then press r.")

    def action_run_gates(self) -> None:
        bundle, _ = self.context()
        if bundle is None:
            self.notify("Highlight a bundle first.", severity="warning")
            return
        try:
            missing = services.gates_to_run(self.reg, bundle["digest"])
        except RegistryError as exc:
            self.report(exc, "Cannot run gates")
            return
        tag = f"{bundle['name']}:v{bundle['version']}"
        if not missing:
            self.notify(f"Every gate the policy requires has passed for {tag}.")
            return
        self.run_gates(bundle, missing, None)

    def action_diff(self) -> None:
        """First press marks a bundle; the second diffs the mark with the one in view."""
        from tui.screens.diff import DiffScreen

        bundle, _ = self.context()
        if bundle is None:
            self.notify("Highlight a bundle first.", severity="warning")
            return
        mark = self.diff_mark
        if mark is None and isinstance(self.screen, DetailScreen) and bundle.get("parent"):
            a, b = bundle["parent"], services.bundle_ref(bundle)
        elif mark is None or mark["digest"] == bundle["digest"]:
            self.diff_mark = None if mark else bundle
            if self.diff_mark:
                self.notify(f"{bundle['tag']} marked: press d on another bundle to diff them.")
            self._refresh_bundles()
            return
        else:
            a, b = services.bundle_ref(mark), services.bundle_ref(bundle)
            self.diff_mark = None
            self._refresh_bundles()
        self.push_screen(DiffScreen(a, b))

    def _refresh_bundles(self) -> None:
        if isinstance(self.screen, BundlesScreen):
            self.screen.table.refresh_rows()
            self.screen.update_status()
