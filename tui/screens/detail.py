"""Bundle detail: `registry show` (components, key meta, lineage) and `registry gates show`."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from registry.errors import RegistryError
from registry.output import human_size
from registry.present import KEY_META
from tui import services
from tui.screens.base import RegistryScreen
from tui.widgets.status import short, status_text, when


def fmt_value(value: Any) -> str:
    """A meta value on one line: lists and dicts as compact JSON."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(", ", ": "))
    return str(value)


def number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else fmt_value(value)


def component_lines(
    kind: str, comp: dict[str, Any], highlight: set[str] | None = None, *, meta: bool = True
) -> Text:
    """A component's digest, size, source and key meta (changed keys highlighted)."""
    out = Text()
    out.append(f"{kind}", style="bold")
    out.append(f"  {short(comp['digest'], 12)}  {human_size(comp['size'])}", style="dim")
    if comp.get("source"):
        out.append(f"  external {comp['source']}", style="italic")
    for key in KEY_META.get(kind, ()) if meta else ():
        value = comp["meta"].get(key)
        if value is None:
            continue
        changed = highlight is not None and any(
            k == key or k.startswith(key + ".") for k in highlight
        )
        out.append("\n  ")
        out.append(f"{key}: ", style="bold yellow" if changed else "cyan")
        out.append(fmt_value(value), style="yellow" if changed else "")
    return out


def overview(info: dict[str, Any]) -> Group:
    """The whole `registry show` of a bundle, files left to `registry show` itself."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold cyan", no_wrap=True)
    head.add_column(overflow="fold")
    head.add_row("digest", info["digest"])
    head.add_row("created", f"{when(info['created_at'])} by {info['created_by']}")
    head.add_row("size", human_size(info["size"]))
    head.add_row("channels", ", ".join(info["channels"]) or "-")
    chain = [info["tag"]] + [p["tag"] or short(p["digest"], 12) for p in info["lineage"]]
    head.add_row("lineage", " ← ".join(chain) if info["lineage"] else f"{info['tag']} (no parent)")
    for key, value in sorted(info["annotations"].items()):
        head.add_row(f"@{key}", str(value))
    parts: list[Any] = [head, Text("")]
    for kind, comp in info["components"].items():
        parts += [component_lines(kind, comp), Text("")]
    return Group(*parts)


def run_detail(run: dict[str, Any], current_policy: str | None) -> Group:
    """Metrics against thresholds, inputs read and environment of one gate run."""
    title = Text()
    title.append(f"#{run['id']} {run['gate']} v{run['gate_version']}  ")
    title.append_text(status_text(run["status"]))
    title.append(f"  {when(run['ended_at'])} by {run['actor']}", style="dim")
    rows = Table(box=None, padding=(0, 2), show_edge=False)
    rows.add_column("METRIC", style="cyan")
    rows.add_column("VALUE", justify="right")
    rows.add_column("THRESHOLD", justify="right")
    thresholds = dict(run["thresholds"])
    for key, value in sorted(run["metrics"].items()):
        limit = thresholds.pop(key, None)
        rows.add_row(key, number(value), number(limit) if limit is not None else "")
    for key, value in sorted(thresholds.items()):
        rows.add_row(key, "", number(value))
    parts: list[Any] = [title]
    if run["error"]:
        parts.append(Text(f"error: {run['error']}", style="red"))
    elif run.get("summary"):  # the figures with their confidence bounds
        parts.append(Text(str(run["summary"])))
    parts.append(rows)
    for rel, digest in sorted(run["inputs"].items()):
        parts.append(Text(f"read {rel} {short(digest)}", style="dim"))
    policy = short(run["policy_digest"])
    if run["policy_digest"] and run["policy_digest"] == current_policy:
        policy += " (in force)"
    parts.append(Text(f"policy {policy}", style="dim"))
    parts.append(Text("press e for the evidence report", style="italic"))
    return Group(*parts)


class DetailScreen(RegistryScreen):
    """One bundle: overview (components, lineage) and every gate run with its evidence."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("e", "evidence", "Evidence", tooltip="The highlighted run's evidence report"),
        Binding("1", "tab('overview')", "Overview", show=False, tooltip="Components, lineage"),
        Binding("2", "tab('runs')", "Gate runs", show=False, tooltip="Metrics vs thresholds"),
    ]

    def __init__(self, ref: str) -> None:
        super().__init__()
        self.ref = ref
        self.detail: services.BundleDetail | None = None
        self.policy_digest: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="detail-title")
        with TabbedContent(initial="overview", id="detail-tabs"):
            with TabPane("1 Overview", id="overview"), VerticalScroll():
                yield Static(id="overview-body")
            with TabPane("2 Gate runs", id="runs"):
                yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(id="run-detail-box"):
                    yield Static(id="run-detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        table.add_columns("ID", "GATE", "STATUS", "ENDED", "BY", "POLICY")

    def reload(self) -> None:
        try:
            self.detail = services.bundle_detail(self.reg, self.ref)
            policy = services.policy_or_none(self.reg)
        except RegistryError as exc:
            self.rapp.report(exc, "Cannot show the bundle")
            return
        self.policy_digest = policy.digest if policy else None
        info = self.detail.info
        title = Text()
        title.append(info["tag"], style="bold")
        title.append(f"  {short(info['digest'], 16)}", style="dim")
        n = len(self.detail.runs)
        title.append(f"  ·  {n} gate run{'s' * (n != 1)}", style="dim")
        self.query_one("#detail-title", Static).update(title)
        self.query_one("#overview-body", Static).update(overview(info))
        table = self.query_one("#runs-table", DataTable)
        row = table.cursor_row
        table.clear()
        for run in self.detail.runs:
            in_force = run["policy_digest"] == self.policy_digest and self.policy_digest
            table.add_row(
                str(run["id"]), run["gate"], status_text(run["status"]), when(run["ended_at"]),
                run["actor"], short(run["policy_digest"], 8) + (" *" if in_force else ""),
                key=str(run["id"]),
            )  # fmt: skip
        if self.detail.runs:
            table.move_cursor(row=min(row, len(self.detail.runs) - 1))
        self.show_run()

    def selected_run(self) -> dict[str, Any] | None:
        if not self.detail or not self.detail.runs:
            return None
        table = self.query_one("#runs-table", DataTable)
        return self.detail.runs[min(table.cursor_row, len(self.detail.runs) - 1)]

    def show_run(self) -> None:
        run = self.selected_run()
        body = self.query_one("#run-detail", Static)
        if run is None:
            body.update(Text("No gate runs yet: press g to run the gates the policy requires.",
                             style="italic"))  # fmt: skip
        else:
            body.update(run_detail(run, self.policy_digest))

    @on(DataTable.RowHighlighted, "#runs-table")
    def _run_highlighted(self) -> None:
        self.show_run()

    @on(DataTable.RowSelected, "#runs-table")
    def _run_selected(self) -> None:
        self.action_evidence()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        if tab == "runs":
            self.query_one("#runs-table", DataTable).focus()

    def action_evidence(self) -> None:
        """Open the evidence report of the highlighted gate run."""
        from tui.screens.evidence import EvidenceScreen

        run = self.selected_run()
        if run is None:
            self.notify("This bundle has no gate runs yet.", severity="warning")
            return
        self.action_tab("runs")
        try:
            report = services.evidence(self.reg, run)
        except (RegistryError, OSError, ValueError) as exc:
            self.rapp.report(exc, f"Cannot read the evidence of run #{run['id']}")
            return
        self.app.push_screen(EvidenceScreen(f"#{run['id']} {run['gate']}", report))

    def current_bundle(self) -> dict[str, Any] | None:
        return self.detail.info if self.detail else None
