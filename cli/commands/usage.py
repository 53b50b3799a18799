"""`registry du`: logical size against bytes stored, per bundle and for the whole store.

The work is in registry.usage; pieced files (docs/design.md, "Pieces") are why the two
differ beyond plain deduplication of whole files.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.context import JsonOpt, open_registry
from registry.output import echo, emit_json, human_size


def register(app: typer.Typer) -> None:
    app.command()(du)


def du(
    ref: Annotated[
        str | None, typer.Argument(help="Bundle to report (default: every bundle).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Logical bytes of bundles against the bytes their blobs take (unique or shared)."""
    from registry.usage import usage

    reg = open_registry()
    try:
        report = usage(reg, ref)
    finally:
        reg.close()
    if json_out:
        emit_json(report.to_dict())
        return
    width = max([len(b.tag) for b in report.bundles] + [6])
    echo(f"{'bundle':<{width}}  {'logical':>10}  {'stored':>10}  {'unique':>10}  {'shared':>10}")
    for b in report.bundles:
        cells = (human_size(n) for n in (b.logical, b.stored, b.unique, b.shared))
        echo(f"{b.tag:<{width}}  " + "  ".join(f"{c:>10}" for c in cells))
    if ref is None:
        echo(
            f"store: {human_size(report.logical)} logical in {len(report.bundles)} bundles,"
            f" {human_size(report.referenced)} referenced, {human_size(report.on_disk)} on disk"
            f" (saving {human_size(report.saving)})"
        )
