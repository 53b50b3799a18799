"""Printing for the CLI: JSON, aligned plain tables, sizes, status colours, progress bars.

Plain tables are formatted here without rich so that `ls` and `history` stay cheap to
start; rich is imported only for progress bars on a terminal. Statuses (PASSED, FAILED,
...) are coloured with plain ANSI codes, and only when the stream they go to is a
terminal and NO_COLOR is unset (https://no-color.org): a pipe or a file never gets codes.

Sizes use one unit system everywhere: IEC binary units (B, KiB, MiB, GiB, TiB; 1 KiB =
1024 B), the units `ls -h`, `du -h` and file managers count file sizes in, labelled so
that nobody reads them as the decimal kB/MB of network rates.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

PROGRESS_MIN_BYTES = 4 * 1024 * 1024


def emit_json(obj: Any) -> None:
    """JSON on stdout: indented on a terminal, compact when piped (the C encoder only
    handles the compact form: 10,000 bundles take 0.03 s instead of 0.7 s)."""
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n")


SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n: int | None) -> str:
    """A byte count in IEC binary units: `512 B`, `1.5 KiB`, `107.8 MiB`; `-` for None."""
    if n is None:
        return "-"
    size = float(n)
    for unit in SIZE_UNITS:
        if abs(size) < 1024 or unit == SIZE_UNITS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # not reached


# SGR codes for each status word the CLI prints (lower case); anything else stays plain.
STATUS_COLOURS = {
    "passed": "32",  # green
    "ok": "32",
    "failed": "1;31",  # bold red
    "bad": "1;31",
    "broken": "1;31",
    "blocked": "1;31",
    "error": "35",  # magenta: the gate could not run (not a verdict on the model)
    "missing": "33",  # yellow: not run yet
    "stale": "33",
    "forced": "33",
}


def colour_enabled(stream: TextIO | None = None) -> bool:
    """True when `stream` (default stdout) is a terminal, NO_COLOR is unset or empty and
    TERM is not `dumb`."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed, or not a real file
        return False


class Styled(str):
    """Text printed in a colour (an SGR code) where colour is enabled, plain elsewhere.

    It is a str, so widths and comparisons see only the text; `table` and `paint` add
    the codes at the last moment, after padding."""

    sgr: str = ""

    def __new__(cls, text: str, sgr: str = "") -> Styled:
        obj = super().__new__(cls, text)
        obj.sgr = sgr
        return obj


def status(word: str, text: str | None = None) -> Styled:
    """`word` (e.g. "failed") as an upper-case status cell, coloured by STATUS_COLOURS."""
    return Styled(word.upper() if text is None else text, STATUS_COLOURS.get(word.lower(), ""))


def paint(text: str, stream: TextIO | None = None) -> str:
    """`text` with its colour codes if it is Styled and `stream` takes colour."""
    sgr = getattr(text, "sgr", "")
    if not sgr or not colour_enabled(stream):
        return str(text)
    return f"\033[{sgr}m{text}\033[0m"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], stream: TextIO | None = None
) -> str:
    """Rows aligned in columns; Styled cells are coloured when `stream` (the one the table
    will be written to, default stdout) takes colour."""
    cells = [[str(h) for h in headers]] + [["" if c is None else c for c in r] for r in rows]
    cells = [[c if isinstance(c, str) else str(c) for c in r] for r in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    colour = colour_enabled(stream)
    lines = []
    for r in cells:
        parts = []
        for c, w in zip(r, widths, strict=True):
            pad = " " * (w - len(c))
            parts.append((paint(c, stream) if colour else str(c)) + pad)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def echo(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(text + "\n")


@contextmanager
def file_progress(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int], None] | None]]:
    """A factory of per-file progress callbacks: a rich bar for big files on a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield lambda _name, _size: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, Task, TextColumn
    from rich.text import Text

    class BinarySpeedColumn(ProgressColumn):
        """Transfer speed in the same IEC units as every size (rich's own is decimal)."""

        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            shown = "?" if speed is None else f"{human_size(int(speed))}/s"
            return Text(shown, style="progress.data.speed")

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        BinarySpeedColumn(),
        transient=True,
    ) as progress:

        def factory(name: str, size: int) -> Callable[[int], None] | None:
            if size < PROGRESS_MIN_BYTES:
                return None
            task = progress.add_task(name, total=size)
            return lambda n: progress.advance(task, n)

        yield factory
