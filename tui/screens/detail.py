"""Bundle detail: `registry show` (components, key meta, lineage) and `registry gates show`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane, Tabs

from registry.errors import RegistryError
from registry.output import human_size
from registry.present import KEY_META
from tui import services
from tui.screens.base import RegistryScreen
from tui.widgets.status import short, status_text, when

if TYPE_CHECKING:
    from tui.figures import MetricRow


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


def interval(row: MetricRow) -> str:
    """`[lower, upper]` of a metric (`-inf` / `+inf` for a missing side); empty without."""
    if row.lower is None and row.upper is None:
        return ""
    lo = number(row.lower) if row.lower is not None else "-inf"
    hi = number(row.upper) if row.upper is not None else "+inf"
    return f"[{lo}, {hi}]"


def mark(passed: bool | None) -> Text:
    """✓ pass / ✗ FAIL beside a limit (nothing for a metric without one)."""
    if passed is None:
        return Text("")
    return Text("✓ pass", style="green") if passed else Text("✗ FAIL", style="bold red")


def metrics_table(run: dict[str, Any]) -> tuple[Table, dict[str, Any], list[str]]:
    """One row per metric: value, interval, threshold and its mark; the parameters; and
    how the gate judges a limit where that is not a plain comparison."""
    from tui.figures import metric_rows  # with gates.review: once a bundle opens, not at start

    rows, params = metric_rows(run["metrics"], run["thresholds"])
    table = Table(box=None, padding=(0, 1), show_edge=False)
    table.add_column("METRIC", style="cyan", overflow="fold")
    table.add_column("VALUE", justify="right")
    table.add_column("INTERVAL", justify="right")
    table.add_column("THRESHOLD", justify="right")
    table.add_column("", no_wrap=True)
    table.add_column("POLICY KEY", style="dim", overflow="fold")
    for r in rows:
        limit = ""
        if r.limit:
            limit = ("≤ " if r.comparison == "<=" else "≥ ") + number(r.threshold)
        table.add_row(r.metric, number(r.value), interval(r), limit, mark(r.passed), r.limit)
    return table, params, [f"{r.limit}: {r.note}" for r in rows if r.note]


def run_detail(
    run: dict[str, Any], current_policy: str | None, standing: str | None = None
) -> Group:
    """Each metric beside its threshold, interval and mark; inputs read; policy."""
    title = Text()
    title.append(f"#{run['id']} {run['gate']} v{run['gate_version']}  ")
    title.append_text(status_text(run["status"]))
    title.append(f"  {when(run['ended_at'])} by {run['actor']}", style="dim")
    if standing == "does not count":
        title.append(f"  (does not count: {run['trust']['why']})", style="yellow")
    elif standing:
        title.append(f"  ({standing}: does not count)", style="yellow")
    table, params, notes = metrics_table(run)
    parts: list[Any] = [title]
    if run["error"]:
        parts.append(Text(f"error: {run['error']}", style="red"))
    elif run.get("summary"):  # the figures with their confidence bounds
        parts.append(Text(str(run["summary"])))
    parts.append(table)
    parts += [Text(note, style="dim italic") for note in notes]
    if params:
        listed = ", ".join(f"{k} {fmt_value(v)}" for k, v in params.items())
        parts.append(Text(f"parameters: {listed}", style="dim"))
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
        Binding("3", "tab('plots')", "Plots", show=False, tooltip="Loss curves, metric trends"),
        Binding("m", "next_trend", "Next metric", show=False, tooltip="The next trend plotted"),
    ]

    def __init__(self, ref: str) -> None:
        super().__init__()
        self.ref = ref
        self.detail: services.BundleDetail | None = None
        self.policy_digest: str | None = None
        self.standing: dict[int, str] = {}  # run id -> why it does not count
        self.plots: services.Plots | None = None
        self.trend_index = 0

    def compose(self) -> ComposeResult:
        from tui.widgets.plots import LossPlot, TrendPlot  # plotext: only once a bundle opens

        yield Header()
        yield Static(id="detail-title")
        with TabbedContent(initial="overview", id="detail-tabs"):
            with TabPane("1 Overview", id="overview"), VerticalScroll():
                yield Static(id="overview-body")
            with TabPane("2 Gate runs", id="runs"):
                yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(id="run-detail-box"):
                    yield Static(id="run-detail")
            with TabPane("3 Plots", id="plots"):
                yield LossPlot(id="loss-plot")
                yield TrendPlot(id="trend-plot")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        table.add_columns("ID", "GATE", "STATUS", "ENDED", "BY", "COUNTS")

    def reload(self) -> None:
        try:
            self.detail = services.bundle_detail(self.reg, self.ref)
            policy = services.policy_or_none(self.reg)
        except RegistryError as exc:
            self.rapp.report(exc, "Cannot show the bundle")
            return
        self.policy_digest = policy.digest if policy else None
        self.standing = services.standing(self.detail, self.policy_digest)
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
            why = self.standing.get(run["id"])
            dim = "dim" if why else ""
            table.add_row(
                Text(str(run["id"]), style=dim), Text(run["gate"], style=dim),
                status_text(run["status"]), Text(when(run["ended_at"]), style=dim),
                Text(run["actor"], style=dim),
                Text(why, style="yellow") if why else Text("✓ counts"),
                key=str(run["id"]),
            )  # fmt: skip
        if self.detail.runs:
            table.move_cursor(row=min(row, len(self.detail.runs) - 1))
        self.show_plots()
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
            body.update(run_detail(run, self.policy_digest, self.standing.get(run["id"])))
            self.follow_run(run["gate"])

    def follow_run(self, gate: str) -> None:
        """The trend plot follows the highlighted run: its gate's first limited metric."""
        trends = self.plots.trends if self.plots else []
        if not trends or trends[self.trend_index % len(trends)].gate == gate:
            return
        index = next((i for i, t in enumerate(trends) if t.gate == gate), None)
        if index is not None:
            self.trend_index = index
            self.show_trend()

    def show_plots(self) -> None:
        """The loss curves of the newest train run, and the trend picked with m."""
        from tui.widgets.plots import LossPlot

        if self.detail is None:
            return
        try:
            self.plots = services.plots(self.reg, self.detail)
        except RegistryError as exc:
            self.rapp.report(exc, "Cannot read the plots")
            return
        p = self.plots
        title = f"train run #{p.train_run}" if p.train_run else ""
        self.query_one("#loss-plot", LossPlot).show(p.train, p.validation, title)
        self.show_trend()

    def show_trend(self) -> None:
        from tui.widgets.plots import TrendPlot

        trends = self.plots.trends if self.plots else []
        trend = trends[self.trend_index % len(trends)] if trends else None
        version = self.detail.info.get("version") if self.detail else None
        self.query_one("#trend-plot", TrendPlot).show(trend, version)

    def action_next_trend(self) -> None:
        """Plot the next gate metric's trend (they are ordered by gate, then metric)."""
        trends = self.plots.trends if self.plots else []
        if not trends:
            self.notify("No gate with a threshold has run on this name yet.", severity="warning")
            return
        self.action_tab("plots")
        self.trend_index = (self.trend_index + 1) % len(trends)
        self.show_trend()

    @on(DataTable.RowHighlighted, "#runs-table")
    def _run_highlighted(self) -> None:
        self.show_run()

    @on(DataTable.RowSelected, "#runs-table")
    def _run_selected(self) -> None:
        self.action_evidence()

    def action_tab(self, tab: str) -> None:
        tabs = self.query_one(TabbedContent)
        if tab == "runs":
            tabs.active = tab
            self.query_one("#runs-table", DataTable).focus()
        else:
            # focus on the tab bar first: focus left in a hidden pane would switch back to it
            tabs.query_one(Tabs).focus()
            tabs.active = tab

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
