"""Text rendering of `ls`, `show` and `diff` results for the terminal."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from registry.output import colour_enabled, human_size, paint

if TYPE_CHECKING:
    from registry.bundles import Listing, LsTable

KEY_META = {
    "base_model": (
        "model_type",
        "repo_id",
        "revision",
        "num_hidden_layers",
        "hidden_size",
        "quantization",
        "weights",
    ),
    "adapter": (
        "peft_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "scaling",
        "num_virtual_tokens",
        "feedforward_modules",
        "base_model_name_or_path",
        "weights",
    ),
    "tokenizer": ("tokenizer_class", "vocab_size", "special_tokens", "chat_template_sha256"),
    "chat_template": ("chars", "sha256_text"),
    "dataset": ("splits", "format", "license"),
    "config": ("format", "quantization", "hyperparameters"),
}


def _fmt(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def render_show(info: dict[str, Any]) -> str:
    lines = [
        f"{info['tag']}  {info['digest']}",
        f"  created   {info['created_at']} by {info['created_by']}",
        f"  size      {human_size(info['size'])} logical, {human_size(info['stored'])} stored"
        if "stored" in info
        else f"  size      {human_size(info['size'])}",
        f"  channels  {', '.join(info['channels']) or '-'}",
        f"  adapts    {info['adaptation']}",
    ]
    if info.get("remote_channels"):
        lines.insert(4, f"  remote    {', '.join(info['remote_channels'])} (read-only tracking)")
    pulled = info.get("pulled")
    if pulled:  # the creation is the remote's claim (display only), or the pull's own time
        remote = pulled.get("remote")
        src = f"remote {remote}" if remote else "its remote"
        lines[1] += (
            f" (as {src} records it)"
            if pulled["creation_from_remote"]
            else f" (the pull: {src} keeps no creation record)"
        )
        lines.insert(2, f"  pulled    {pulled['at']} by {pulled['by']} from {remote or 'a remote'}")
    if info["lineage"]:
        chain = " <- ".join(p["tag"] or p["digest"][:19] for p in info["lineage"])
        lines.append(f"  lineage   {chain}")
    for key, value in sorted(info["annotations"].items()):
        lines.append(f"  @{key}  {value}")
    for kind, comp in info["components"].items():
        where = f"  external {comp['source']}" if comp["source"] else ""
        lines.append(f"\n{kind}  {comp['digest'][:19]}  {human_size(comp['size'])}{where}")
        for key in KEY_META.get(kind, ()):
            if comp["meta"].get(key) is not None:
                lines.append(f"  {key}: {_fmt(comp['meta'][key])}")
        for f in comp["files"]:
            lines.append(f"    {f['path']}  {human_size(f['size'])}  {f['digest'][:19]}")
    return "\n".join(lines)


def render_diff(d: dict[str, Any]) -> str:
    lines = [f"{d['a']} -> {d['b']}"]
    for kind, c in d["components"].items():
        lines.append(f"  {kind}: {c['status']}")
        if c["status"] != "changed":
            continue
        for what in ("added", "removed", "changed"):
            for path in c["files"][what]:
                lines.append(f"    {what[0].upper()} {path}")
        for key, (a, b) in c["meta"].items():
            lines.append(f"    meta {key}: {_fmt(a)} -> {_fmt(b)}")
    if "annotations" in d:
        lines.append(f"  annotations: {_fmt(d['annotations'][0])} -> {_fmt(d['annotations'][1])}")
    return "\n".join(lines)


def who(row: dict[str, Any]) -> str:
    """An event's WHO: the authenticated actor, its display name, its key if signed."""
    text = row["actor"] + (f' "{row["display"]}"' if row.get("display") else "")
    return text + (f" [{row['signer']}]" if row.get("signer") else "")


LS_HEADERS = ("TAG", "DIGEST", "SIZE", "CREATED", "GATES", "CHANNELS")


def render_ls(
    listing: Listing, gates: Callable[[dict[str, int]], str], stream: TextIO | None = None
) -> str:
    """The `registry ls` table of a `bundles.Listing`, aligned like `output.table` but
    built in two plain passes (100,000 bundles): the GATES cell (`gates(counts)`, maybe
    Styled) is padded before it is painted."""
    cells = [
        _ls_cells(listing, gates, digest, name, version, size, created)
        for digest, name, version, size, created in listing.rows
    ]
    columns = list(zip(*cells, strict=True))[:5] if cells else [()] * 5
    w = [
        max(len(h), max(map(len, col), default=0))
        for h, col in zip(LS_HEADERS[:5], columns, strict=True)
    ]
    lines = [_ls_head(w)]
    colour = colour_enabled(stream)
    lines += [_ls_line(c, w, colour, stream) for c in cells]
    return "\n".join(lines)


def render_ls_table(
    table: LsTable, gates: Callable[[dict[str, int]], str], stream: TextIO | None = None
) -> str:
    """The same table from a `bundles.LsTable`: SQLite's lines as they are, the special
    rows (channels, gate runs, tracking views, odd values) rendered here as render_ls does,
    with SQLite's column widths and a GATES width from the special rows (every other row's
    GATES cell is `-`, the end of its line)."""
    return "\n".join(ls_table_lines(table, gates, stream))


def ls_table_lines(
    table: LsTable, gates: Callable[[dict[str, int]], str], stream: TextIO | None = None
) -> Iterator[str]:
    """render_ls_table's lines, the header first (`ls_table_batches`, a line at a time)."""
    return itertools.chain.from_iterable(ls_table_batches(table, gates, stream))


def ls_table_batches(
    table: LsTable, gates: Callable[[dict[str, int]], str], stream: TextIO | None = None
) -> Iterator[list[str]]:
    """render_ls_table's lines in batches, the header first, each batch made as
    `table.batches` yields its own (so a streamed table is written as it is read, and
    100,000 plain lines cost no Python step each)."""
    cells = {digest: _ls_cells(table, gates, digest, *row) for digest, row in table.special.items()}
    w = [*table.widths, max([len(LS_HEADERS[4]), *(len(c[4]) for c in cells.values())])]
    yield [_ls_head(w)]
    if not cells:
        yield from table.batches
        return
    colour = colour_enabled(stream)
    for batch in table.batches:
        yield [_ls_line(cells[ln[1:]], w, colour, stream) if ln[0] == "!" else ln for ln in batch]


def _ls_cells(
    t: Listing | LsTable,
    gates: Callable[[dict[str, int]], str],
    digest: str,
    name: str,
    version: int,
    size: int | None,
    created: str,
) -> tuple[str, str, str, str, str, str]:
    gate = gates(t.gates[digest]) if digest in t.gates else "-"
    held, remote = t.channels, t.remote_channels
    chans = (
        held.get(digest, []) + remote.get(digest, []) if digest in held or digest in remote else []
    )
    return (f"{name}:v{version}", digest[:19], human_size(size),
            created[:19].replace("T", " "), gate, ",".join(chans))  # fmt: skip


def _ls_head(w: list[int]) -> str:
    head = "  ".join(h.ljust(n) for h, n in zip(LS_HEADERS[:5], w, strict=True))
    return f"{head}  {LS_HEADERS[5]}"


def _ls_line(
    cells: tuple[str, str, str, str, str, str], w: list[int], colour: bool, stream: TextIO | None
) -> str:
    tag, short, shown, when, gate, held_by = cells
    w0, w1, w2, w3, w4 = w
    gate_text = (paint(gate, stream) if colour else str(gate)) + " " * (w4 - len(gate))
    line = f"{tag:<{w0}}  {short:<{w1}}  {shown:<{w2}}  {when:<{w3}}  {gate_text}  {held_by}"
    return line if held_by else line.rstrip()
