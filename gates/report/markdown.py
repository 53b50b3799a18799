"""The report as GitHub-flavoured Markdown, for a pull request: the same sections and
tables as the HTML page; each plot becomes its text summary (no images to host)."""

from __future__ import annotations

from gates.report.content import Cell, Code, Mark, Note, Plot, Section, Table

MARKS = {"pass": "✅ ", "fail": "❌ ", "error": "⚠️ ", "muted": "", "change": ""}


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _cell(c: Cell) -> str:
    if isinstance(c, Mark):
        text = f"**{c.text}**" if c.kind in ("pass", "fail", "error") else c.text
        return MARKS.get(c.kind, "") + _escape(text)
    if isinstance(c, Code):
        if not c.text:
            return ""
        body = c.text.replace("\n", " ").replace("|", "\\|")
        fence = "``" if "`" in body else "`"
        return f"{fence}{body}{fence}"
    return _escape(c)


def _table(t: Table) -> str:
    lines = ["| " + " | ".join(_escape(h) or " " for h in t.headers) + " |",
             "|" + "|".join("---" for _ in t.headers) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _block(b: str | Note | Table | Plot) -> str:
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Plot):
        return f"*{b.title}*: {b.summary}"
    if isinstance(b, Note):
        return b.text
    return b


def render(title: str, sections: list[Section]) -> str:
    """The whole document."""
    out = []
    for i, s in enumerate(sections):
        out.append(("# " if i == 0 else "## ") + s.title)
        out += [_block(b) for b in s.blocks]
    return "\n\n".join(out) + "\n"
