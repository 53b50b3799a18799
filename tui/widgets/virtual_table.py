"""A virtual table: rows are formatted only when they are on screen.

Textual's DataTable measures and stores every cell up front: with 10,000 bundles it took
4 s to first paint and 65 ms per cursor move on the reference machine. This Line API
widget keeps the row objects as they are and formats the ~20 visible ones per frame, so
first paint and every keystroke cost the same with 10 or 10,000 rows
(bench/README.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

Cell = str | Text


@dataclass(frozen=True)
class Column:
    """A column: fixed `width`, or 0 to share the free space by `weight`."""

    label: str
    width: int = 0
    weight: int = 1
    min_width: int = 4


class VirtualTable(ScrollView, can_focus=True):
    """Rows of any objects, drawn by `format_row(row) -> cells`, with a keyboard cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Open", key_display="⏎", tooltip="The highlighted row"),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "virtual-table--header",
        "virtual-table--cursor",
        "virtual-table--empty",
    }
    DEFAULT_CSS = """
    VirtualTable { height: 1fr; scrollbar-size-vertical: 1; overflow-x: hidden; }
    VirtualTable > .virtual-table--header { text-style: bold; color: $primary; }
    VirtualTable > .virtual-table--cursor { background: $block-cursor-blurred-background; }
    VirtualTable:focus > .virtual-table--cursor {
        background: $block-cursor-background; color: $block-cursor-foreground;
    }
    VirtualTable > .virtual-table--empty { color: $text-muted; text-style: italic; }
    """

    class Highlighted(Message):
        """The cursor moved to `row` (None when the table is empty)."""

        def __init__(self, table: VirtualTable, row: Any | None) -> None:
            super().__init__()
            self.table = table
            self.row = row

        @property
        def control(self) -> VirtualTable:
            return self.table

    class Selected(Highlighted):
        """Enter (or a click on the highlighted row) chose `row`."""

    def __init__(
        self,
        columns: Sequence[Column],
        format_row: Callable[[Any], Sequence[Cell]],
        *,
        empty_text: str = "nothing to show",
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.columns = list(columns)
        self.format_row = format_row
        self.empty_text = empty_text
        self.rows: Sequence[Any] = ()
        self.cursor = 0

    # --- data -----------------------------------------------------------------------------

    def set_rows(self, rows: Sequence[Any], cursor: int = 0) -> None:
        """Replace the rows (a list is kept, not copied) and put the cursor at `cursor`."""
        self.rows = rows
        self.virtual_size = Size(self.size.width, len(rows) + 1)
        self.cursor = max(0, min(cursor, len(rows) - 1))
        self.scroll_to(y=0, animate=False, immediate=True)
        self._show_cursor()
        self.refresh()
        self.post_message(self.Highlighted(self, self.current))

    @property
    def current(self) -> Any | None:
        """The highlighted row, or None when empty."""
        return self.rows[self.cursor] if self.rows else None

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def refresh_rows(self) -> None:
        """Redraw after the row objects changed in place."""
        self.refresh()

    # --- cursor ---------------------------------------------------------------------------

    @property
    def _body_height(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def move_to(self, index: int) -> None:
        """Put the cursor on row `index` (clamped), scrolling it into view."""
        if not self.rows:
            return
        index = max(0, min(index, len(self.rows) - 1))
        if index == self.cursor:
            return
        self.cursor = index
        self._show_cursor()
        self.refresh()
        self.post_message(self.Highlighted(self, self.current))

    def _show_cursor(self) -> None:
        top = int(self.scroll_offset.y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + self._body_height:
            self.scroll_to(y=self.cursor - self._body_height + 1, animate=False, immediate=True)

    def action_cursor(self, delta: int) -> None:
        self.move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self.move_to(self.cursor + direction * self._body_height)

    def action_jump(self, index: int) -> None:
        self.move_to(index if index >= 0 else len(self.rows) - 1)

    def action_select(self) -> None:
        if self.rows:
            self.post_message(self.Selected(self, self.current))

    async def _on_click(self, event: events.Click) -> None:
        # Textual calls the _on_click of every class in the MRO (Widget's too), and awaits
        # a coroutine: async only to match Widget._on_click.
        if event.y < 1:
            return
        index = int(self.scroll_offset.y) + event.y - 1
        if 0 <= index < len(self.rows):
            if index == self.cursor:
                self.action_select()
            else:
                self.move_to(index)

    def on_resize(self, _event: events.Resize) -> None:
        self.virtual_size = Size(self.size.width, len(self.rows) + 1)
        self._show_cursor()

    # --- drawing --------------------------------------------------------------------------

    def widths(self, width: int) -> list[int]:
        """Each column's width for a table `width` cells wide (one space between columns)."""
        fixed = sum(c.width for c in self.columns) + len(self.columns) - 1
        flex = [c for c in self.columns if not c.width]
        free = max(0, width - fixed)
        total = sum(c.weight for c in flex) or 1
        out, given = [], 0
        for c in self.columns:
            if c.width:
                out.append(c.width)
                continue
            share = free * c.weight // total
            out.append(max(c.min_width, share))
            given += share
        if flex and (rest := free - given) > 0:  # rounding leftovers go to the first flex column
            out[self.columns.index(flex[0])] += rest
        return out

    def _strip(self, cells: Sequence[Cell], widths: list[int], style: Style, width: int) -> Strip:
        line = Text(style=style, no_wrap=True, end="")
        for i, (cell, w) in enumerate(zip(cells, widths, strict=False)):
            text = cell.copy() if isinstance(cell, Text) else Text(str(cell))
            text.truncate(w, overflow="ellipsis", pad=True)
            if i:
                line.append(" ")
            line.append_text(text)
        segments = list(line.render(self.app.console))
        return Strip(segments).adjust_cell_length(width, style)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        widths = self.widths(width)
        if y == 0:
            style = base + self.get_component_rich_style("virtual-table--header")
            return self._strip([c.label for c in self.columns], widths, style, width)
        index = int(self.scroll_offset.y) + y - 1
        if index >= len(self.rows):
            if index == 0:
                style = base + self.get_component_rich_style("virtual-table--empty")
                return self._strip([self.empty_text], [width], style, width)
            return Strip.blank(width, base)
        style = base
        if index == self.cursor:
            style = base + self.get_component_rich_style("virtual-table--cursor")
        return self._strip(self.format_row(self.rows[index]), widths, style, width)
