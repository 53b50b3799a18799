"""`registry report`: a bundle's release review as one HTML page or as Markdown.

The data is gates/review.py's review model; `content` turns it into sections once, and
`html` / `markdown` render them. Plots are matplotlib SVG (gates/report/plots.py), drawn
only for HTML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gates.review import Review
    from registry.repo import Registry

FORMATS = ("html", "md")


@dataclass
class Report:
    """A rendered report: its text, its section ids in order, and the review it shows."""

    text: str
    format: str
    sections: list[str]
    review: Review


def build_report(reg: Registry, ref: str, against: str | None = None, fmt: str = "html") -> Report:
    """The report of bundle `ref` compared with `against` (a channel of its name or any
    reference; default: production, else the parent) as HTML or Markdown (`fmt`)."""
    from gates.report import content, html, markdown
    from gates.review import review
    from registry.errors import UsageError

    if fmt not in FORMATS:
        raise UsageError(f"report format {fmt!r} is not one of {', '.join(FORMATS)}")
    rv = review(reg, ref, against)
    parts = content.sections(rv, draw=fmt == "html")
    title = f"Release report: {rv.bundle['tag']}"
    render = html.render if fmt == "html" else markdown.render
    return Report(render(title, parts), fmt, [s.id for s in parts], rv)
