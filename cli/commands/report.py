"""`registry report`: a bundle's release review as one self-contained HTML page or as
Markdown for a pull request (gates/report/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.context import JsonOpt, open_registry
from registry.output import echo, emit_json


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    ref: Annotated[str, typer.Argument(help="Bundle to report on.")],
    against: Annotated[
        str | None,
        typer.Option(
            help="Compare with this channel of the name, or any REF (default: production,"
            " else the bundle's parent)."
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="File to write (default: report-NAME-vN.html or .md here; - for stdout).",
        ),
    ] = None,  # fmt: skip
    fmt: Annotated[
        str, typer.Option("--format", help="html (self-contained page) or md (Markdown).")
    ] = "html",
    json_out: JsonOpt = False,
) -> None:
    """Write a release report: lineage, changes against production, every gate's figure
    beside its threshold, loss curves, trends across versions, regressed items, serving
    figures, signatures and channel history."""
    from gates.report import FORMATS, build_report
    from registry.errors import UsageError

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if output == "-" and json_out:
        raise UsageError("--json describes the file written; it cannot go with -o - (stdout)")
    reg = open_registry()
    try:
        rep = build_report(reg, ref, against, fmt)
    finally:
        reg.close()
    data = rep.text.encode("utf-8")
    if output == "-":
        typer.echo(rep.text, nl=False)
        return
    b = rep.review.bundle
    path = Path(output) if output else Path(f"report-{b['name']}-v{b['version']}.{fmt}")
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    if json_out:
        emit_json({"path": str(path), "bytes": len(data), "format": fmt,
                   "bundle": b["tag"], "against": rep.review.against.tag,
                   "sections": rep.sections})  # fmt: skip
    else:
        against_tag = rep.review.against.tag or "nothing"
        echo(f"wrote {path} ({len(data)} bytes): {b['tag']} against {against_tag}")
