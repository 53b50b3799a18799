"""Two bundles side by side (`registry diff A B`): changed components highlighted, and
within them the files and meta keys that differ."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, Header, Static

from registry import bundles
from registry.errors import RegistryError
from registry.manifest import KINDS
from tui.screens.base import RegistryScreen
from tui.screens.detail import component_lines
from tui.widgets.status import short

FILE_MARKS = {"added": ("+", "green"), "removed": ("-", "red"), "changed": ("~", "yellow")}


def pane_entry(kind: str, comp: dict[str, Any] | None, change: dict[str, Any], side: str) -> Static:
    """One component on one side: highlighted by its status in the diff."""
    status = change["status"]
    if comp is None:
        text = Text(f"{kind}: not in this bundle", style="italic dim")
        return Static(text, classes="diff-comp -absent")
    if status == "unchanged":  # one line: the room goes to what changed
        text = component_lines(kind, comp, meta=False)
        text.append("  same", style="dim italic")
        return Static(text, classes="diff-comp -unchanged")
    text = component_lines(kind, comp, set(change.get("meta", {})))
    files = change.get("files", {})
    for what, paths in files.items():
        # added files exist on the right, removed ones on the left, changed on both
        if (what == "added" and side == "a") or (what == "removed" and side == "b"):
            continue
        mark, style = FILE_MARKS[what]
        for path in paths:
            text.append(f"\n  {mark} {path}", style=style)
    label = {"changed": "changed", "added": "added", "removed": "removed"}.get(status)
    if label:
        text.append(f"\n  [{label}]", style="bold")
    return Static(text, classes=f"diff-comp -{status}")


class DiffScreen(RegistryScreen):
    """Bundle A on the left, bundle B on the right."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, ref_a: str, ref_b: str) -> None:
        super().__init__()
        self.ref_a = ref_a
        self.ref_b = ref_b
        self.result: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="diff-title")
        with Horizontal(id="diff-panes"):
            yield VerticalScroll(id="diff-a", classes="diff-pane")
            yield VerticalScroll(id="diff-b", classes="diff-pane")
        yield Footer(compact=True)

    def reload(self) -> None:
        if self.result is not None:
            return  # bundles are immutable: a diff never changes
        try:
            a = bundles.show(self.reg, self.ref_a)
            b = bundles.show(self.reg, self.ref_b)
            self.result = bundles.diff(self.reg, self.ref_a, self.ref_b)
        except RegistryError as exc:
            self.rapp.report(exc, "Cannot diff")
            return
        changes = self.result["components"]
        changed = [k for k, c in changes.items() if c["status"] != "unchanged"]
        title = Text()
        title.append(a["tag"], style="bold")
        title.append(" ⇄ ")
        title.append(b["tag"], style="bold")
        title.append(
            f"  ·  {len(changed)} of {len(changes)} components differ"
            + (f": {', '.join(changed)}" if changed else ""),
            style="yellow" if changed else "green",
        )
        if "annotations" in self.result:
            old, new = self.result["annotations"]
            title.append(f"\nannotations {old} → {new}", style="yellow")
        self.query_one("#diff-title", Static).update(title)
        for side, info, pane_id in (("a", a, "#diff-a"), ("b", b, "#diff-b")):
            pane = self.query_one(pane_id, VerticalScroll)
            pane.border_title = f"{info['tag']}  {short(info['digest'], 12)}"
            entries = [
                pane_entry(kind, info["components"].get(kind), changes[kind], side)
                for kind in KINDS
                if kind in changes
            ]
            pane.mount_all(entries)
