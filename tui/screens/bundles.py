"""The bundles screen: every bundle (`registry ls`), filterable by name, in a virtual table."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Footer, Header, Input, Label, Static

from registry import bundles
from registry.errors import RegistryError
from tui.screens.base import RegistryScreen
from tui.widgets.status import gate_summary, short, when
from tui.widgets.virtual_table import Cell, Column, VirtualTable

COLUMNS = [
    Column("TAG", weight=3, min_width=10),
    Column("DIGEST", 12),
    Column("PARENT", 8),
    Column("CREATED", 16),
    Column("CHANNELS", weight=2, min_width=8),
    Column("GATES", 7),
]


class BundlesScreen(RegistryScreen):
    """Names and versions with digest, parent, created, channels and gate summary."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", key_display="/", tooltip="Type part of a name"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("q", "app.quit_app", "Quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.items: list[dict[str, Any]] = []
        self.by_digest: dict[str, dict[str, Any]] = {}
        self.shown: list[dict[str, Any]] = []
        self._empty = True

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="filter-bar"):
            yield Label("Name", id="filter-label")
            yield Input(placeholder="filter by name: press / to type", id="filter", compact=True)
        yield VirtualTable(
            COLUMNS,
            self.format_row,
            id="bundles",
            empty_text="No bundles. Add one with `registry add NAME --base DIR --adapter DIR`.",
        )
        yield Static(id="bundles-status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(VirtualTable).focus()

    @property
    def table(self) -> VirtualTable:
        return self.query_one("#bundles", VirtualTable)

    def reload(self) -> None:
        keep = self.current_bundle()
        try:
            self.items = bundles.list_bundles(self.reg)
        except RegistryError as exc:
            self.rapp.report(exc, "Cannot list bundles")
            return
        self.by_digest = {r["digest"]: r for r in self.items}
        self.apply_filter(keep["digest"] if keep else None)

    def format_row(self, r: dict[str, Any]) -> list[Cell]:
        parent = "-"
        if r["parent"]:
            p = self.by_digest.get(r["parent"])
            if p is None:
                parent = short(r["parent"], 8)
            else:
                parent = f"v{p['version']}" if p["name"] == r["name"] else p["tag"]
        tag = Text(r["tag"])
        if (mark := self.rapp.diff_mark) and mark["digest"] == r["digest"]:
            tag = Text("◆ " + r["tag"], style="bold yellow")
        channels = Text(",".join(r["channels"]) or "-", style="bold" if r["channels"] else "dim")
        return [tag, short(r["digest"]), parent, when(r["created_at"]), channels,
                gate_summary(r["gates"])]  # fmt: skip

    # --- filter -----------------------------------------------------------------------------

    @property
    def needle(self) -> str:
        return self.query_one("#filter", Input).value.strip().lower()

    def apply_filter(self, keep_digest: str | None = None) -> None:
        needle = self.needle
        self.shown = [r for r in self.items if needle in r["tag"]] if needle else self.items
        cursor = 0
        if keep_digest is not None:
            cursor = next((i for i, r in enumerate(self.shown) if r["digest"] == keep_digest), 0)
        self.table.set_rows(self.shown, cursor)
        self.update_status()

    def update_status(self) -> None:
        total, shown = len(self.items), len(self.shown)
        parts = [f"{total:,} bundles" if shown == total else f"{shown:,} of {total:,} bundles"]
        if self.needle:
            parts.append(f"name contains {self.needle!r}")
        if mark := self.rapp.diff_mark:
            parts.append(f"◆ {mark['tag']} marked: d on another bundle diffs them")
        self.query_one("#bundles-status", Static).update("  ·  ".join(parts))

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self.apply_filter()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.value:
            box.value = ""
        self.table.focus()

    # --- selection --------------------------------------------------------------------------

    def current_bundle(self) -> dict[str, Any] | None:
        if not self.is_mounted:
            return None
        return self.table.current

    @on(VirtualTable.Highlighted, "#bundles")
    def _highlighted(self, event: VirtualTable.Highlighted) -> None:
        # the footer depends only on whether a bundle is highlighted: recompose it only then
        if (event.row is None) != self._empty:
            self._empty = event.row is None
            self.app.refresh_bindings()

    @on(VirtualTable.Selected, "#bundles")
    def _selected(self, event: VirtualTable.Selected) -> None:
        if event.row is not None:  # always: the table sends Selected only with a row
            self.rapp.open_detail(event.row)
