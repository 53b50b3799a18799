"""The report as one self-contained HTML page: inline CSS, inline SVG plots, no script, no
font or stylesheet fetched: it opens the same with no network."""

from __future__ import annotations

from html import escape

from gates.report.content import Cell, Code, Mark, Note, Plot, Section, Table

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 1100px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px;
       border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0 12px; width: 100%; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre-wrap;
       word-break: break-all; }
.mark { font-weight: 700; padding: 1px 6px; border-radius: 4px; white-space: nowrap; }
.mark-pass { color: #fff; background: #1a7f37; } .mark-fail { color: #fff; background: #cf222e; }
.mark-error { color: #fff; background: #9a6700; }
.mark-muted { color: #57606a; background: #eaeef2; }
.mark-change { color: #0550ae; background: #ddf4ff; }
figure { margin: 8px 0; } figure svg { width: 100%; max-width: 960px; height: auto; }
p.note { color: #57606a; font-size: 12px; margin-top: -4px; }
figcaption { color: #57606a; font-size: 13px; }
nav a { margin-right: 12px; }
"""


def _cell(c: Cell) -> str:
    if isinstance(c, Mark):
        return f'<span class="mark mark-{escape(c.kind)}">{escape(c.text)}</span>'
    if isinstance(c, Code):
        return f"<code>{escape(c.text)}</code>"
    return escape(c)


def _table(t: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in t.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in t.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _block(b: str | Note | Table | Plot) -> str:
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Plot):
        svg = f'<div class="plot" role="img" aria-label="{escape(b.title)}">{b.svg}</div>'
        return (
            f"<figure>{svg if b.svg else ''}<figcaption>{escape(b.summary)}</figcaption></figure>"
        )
    if isinstance(b, Note):
        return f'<p class="note">{escape(b.text)}</p>'
    return f"<p>{escape(b)}</p>"


def render(title: str, sections: list[Section]) -> str:
    """The whole page."""
    nav = "".join(f'<a href="#{s.id}">{escape(s.title)}</a>' for s in sections[1:])
    parts = []
    for i, s in enumerate(sections):
        tag = "h1" if i == 0 else "h2"
        body = "\n".join(_block(b) for b in s.blocks)
        parts.append(f'<section id="{s.id}"><{tag}>{escape(s.title)}</{tag}>\n{body}</section>')
        if i == 0:
            parts.append(f"<nav>{nav}</nav>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
