"""A gate run's evidence report (`registry gates show REF --evidence ID`).

The items a target or regression eval got worse on than its baseline come first, as a
table (prompt, expected, before, after); the rest of the report follows as JSON, with
lists of numbers (loss curves) kept on a line each rather than one number a line.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from tui.figures import RegressedItem, regressed_items


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def compact_json(value: Any, indent: int = 0) -> str:
    """JSON like `json.dumps(indent=2, sort_keys=True)`, but a list of scalars, or of short
    lists of scalars (a curve's `[step, loss]` points), stays on one line."""
    pad = " " * (indent + 2)
    if isinstance(value, dict) and value:
        items = [
            f"{pad}{json.dumps(str(k))}: {compact_json(v, indent + 2)}"
            for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
        ]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and value:
        flat = all(
            _scalar(x) or (isinstance(x, list) and len(x) <= 4 and all(map(_scalar, x)))
            for x in value
        )
        if flat:
            return json.dumps(value, default=str, separators=(", ", ": "))
        items = [pad + compact_json(x, indent + 2) for x in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(value, default=str)


def regressed_table(items: list[RegressedItem]) -> Table:
    """The regressed items: prompt, expected answer, the baseline's, the candidate's."""
    table = Table(expand=True, show_lines=True, title_justify="left", title_style="bold")
    table.title = f"{len(items)} regressed item{'s' * (len(items) != 1)} (baseline → bundle)"
    for col in ("PROMPT", "EXPECTED", "BEFORE", "AFTER"):
        table.add_column(col, ratio=1, overflow="fold")
    for it in items:
        table.add_row(it.prompt, it.expected, Text(it.before, style="green"),
                      Text(it.after, style="red"))  # fmt: skip
    return table


def report_body(report: dict[str, Any]) -> tuple[RenderableType, list[RegressedItem]]:
    """What the evidence screen shows of `report`, and the regressed items in it."""
    regressed, rest = regressed_items(report)
    if not regressed:
        text = compact_json(report)
        return Syntax(text, "json", word_wrap=True, theme="ansi_dark"), []
    ev = dict(report["evidence"])
    ev["per_item"] = rest  # the other items stay in the JSON
    text = compact_json({**report, "evidence": ev})
    return Group(
        regressed_table(regressed),
        Text("The other items, and the rest of the report:", style="italic"),
        Syntax(text, "json", word_wrap=True, theme="ansi_dark"),
    ), regressed


class EvidenceScreen(ModalScreen[None]):
    """The stored evidence blob of one gate run, scrollable; escape closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,e", "dismiss", "Close"),
    ]

    def __init__(self, title: str, report: dict[str, Any]) -> None:
        super().__init__()
        self.title_text = title
        self.report = report
        self.body, self.regressed = report_body(report)

    def compose(self) -> ComposeResult:
        with Vertical(id="evidence-dialog"):
            yield Label(
                f"Evidence of gate run {self.title_text}  (escape closes)", id="evidence-title"
            )
            with VerticalScroll(id="evidence-body"):
                yield Static(self.body, id="evidence-content")

    def on_mount(self) -> None:
        self.query_one("#evidence-body").focus()
