"""Small formatting shared by the screens: gate statuses, gate summaries, times, digests."""

from __future__ import annotations

from rich.text import Text

STATUS_STYLE = {
    "passed": "bold green",
    "failed": "bold red",
    "error": "bold magenta",
    "missing": "yellow",
    "stale": "yellow",
    "running": "bold cyan",
    "queued": "dim",
}


def status_text(status: str) -> Text:
    """A gate status, upper-cased and coloured (PASSED green, FAILED red, ...)."""
    return Text(status.upper(), style=STATUS_STYLE.get(status, ""))


def gate_summary(counts: dict[str, int]) -> Text:
    """`✓3 ✗1`: passing and not-passing latest runs per gate; `-` when no gate ran."""
    if not counts:
        return Text("-", style="dim")
    passed = counts.get("passed", 0)
    failed = sum(n for status, n in counts.items() if status != "passed")
    out = Text()
    out.append(f"✓{passed}", style="green" if passed else "dim")
    out.append(" ")
    out.append(f"✗{failed}", style="red" if failed else "dim")
    return out


def when(iso: str | None) -> str:
    """`2026-11-29 04:47` from a stored ISO timestamp (UTC)."""
    return iso[:16].replace("T", " ") if iso else "-"


def short(digest: str | None, n: int = 12) -> str:
    """The first `n` hex digits of a digest (`-` for none)."""
    if not digest:
        return "-"
    return digest.removeprefix("sha256:")[:n]
