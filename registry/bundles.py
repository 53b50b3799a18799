"""Bundles: add (store blobs, then manifests, then database rows), list, show, diff.

Write order (docs/design.md): every file blob is durable before its component manifest is
stored, every component manifest before the bundle manifest, and the bundle manifest
before the database row that makes the bundle visible. An interrupted add leaves at most
unreferenced blobs, which `registry gc` removes after its grace period.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry import audit, gate_runs, locks, refs, tracking
from registry.db import DBIntegrityError, now
from registry.digest import Descriptor
from registry.errors import IntegrityError, InvalidInputError
from registry.identity import Identity, of
from registry.ingest.common import Staged
from registry.manifest import KINDS, BundleManifest, ComponentManifest, FileEntry, check_name
from registry.repo import Registry

ProgressFactory = Callable[[str, int], Callable[[int], None] | None]


@dataclass(frozen=True)
class AddResult:
    digest: str
    name: str
    version: int
    created: bool  # False when identical content was already registered

    @property
    def tag(self) -> str:
        return f"{self.name}:v{self.version}"


def store_component(
    reg: Registry, staged: Staged, progress: ProgressFactory | None = None
) -> ComponentManifest:
    """Store a staged component's files (blobs first), then its manifest."""
    entries: list[FileEntry] = list(staged.external_files or [])
    for rel, content in sorted(staged.files.items()):
        if isinstance(content, bytes):
            desc = reg.store.put_bytes(content)
        else:
            desc = store_file(
                reg, content, progress(rel, content.stat().st_size) if progress else None
            )
        entries.append(FileEntry(rel, desc.digest, desc.size))
    entries.sort(key=lambda e: e.path)
    manifest = ComponentManifest(staged.kind, tuple(entries), staged.meta, staged.source)
    reg.store.put_bytes(manifest.to_bytes())
    return manifest


def store_file(
    reg: Registry, path: Path, progress: Callable[[int], None] | None = None
) -> Descriptor:
    """Store one file through the stat cache: an unchanged file is not read again."""
    known = reg.statcache.get(path)
    desc = reg.store.put_file(
        path,
        known=known,
        progress=progress,
        split_above=reg.cfg.split_above,
        piece_size=reg.cfg.piece_size,
    )
    if known is None or known != desc:
        reg.statcache.put(path, desc)
    return desc


def hash_file(reg: Registry, path: Path) -> tuple[str, int]:
    """sha256 of a file that is not stored (an external base in the HF cache), cached."""
    import os

    from registry.copying import hash_fd

    if (known := reg.statcache.get(path)) is not None:
        return known.digest, known.size
    fd = os.open(path, os.O_RDONLY)
    try:
        digest, size = hash_fd(fd)
    finally:
        os.close(fd)
    reg.statcache.put(path, Descriptor(digest, size))
    return digest, size


@locks.writer("add")
def add(
    reg: Registry,
    name: str,
    components: dict[str, Staged],
    *,
    parent: str | None = None,
    annotations: dict[str, str] | None = None,
    actor: str | Identity,
    progress: ProgressFactory | None = None,
) -> AddResult:
    """Register a bundle of staged components; identical content returns the existing one."""
    check_name(name)
    if "base_model" not in components:
        raise InvalidInputError("a bundle needs a base model (--base)")
    parent_digest = None
    if parent is not None:
        with reg.db.read() as conn:
            parent_digest = refs.resolve(conn, parent)["digest"]
    for kind, staged in components.items():
        check_meta(kind, staged.meta)  # before any blob: a refusal leaves nothing behind
    descriptors: dict[str, Descriptor] = {}
    manifests: dict[str, ComponentManifest] = {}
    for kind in KINDS:
        if kind in components:
            m = store_component(reg, components[kind], progress)
            manifests[kind] = m
            descriptors[kind] = Descriptor(m.digest, len(m.to_bytes()))
    bundle = BundleManifest(name, descriptors, parent_digest, dict(annotations or {}))
    digest = reg.store.put_bytes(bundle.to_bytes()).digest
    size = sum(f.size for m in manifests.values() if not m.external for f in m.files)
    return _insert(reg, bundle, digest, size, actor)


def check_meta(kind: str, meta: Any) -> None:
    """Refuse metadata the canonical JSON of a manifest cannot hold (NaN, Infinity, lone
    surrogates, non-JSON types), before anything is stored."""
    from registry.digest import canonical_json

    try:
        canonical_json(meta)
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as exc:
        raise InvalidInputError(
            f"{kind}: its metadata cannot be stored as canonical JSON"
            f" ({type(exc).__name__}: {str(exc)[:120]})",
            "Fix the input files: numbers must be finite and text valid UTF-8.",
        ) from None


def _insert(
    reg: Registry, bundle: BundleManifest, digest: str, size: int, actor: str | Identity
) -> AddResult:
    who = of(reg, actor)
    for _attempt in range(10):
        try:
            with reg.db.write() as conn:
                row = conn.execute(
                    "SELECT name, version FROM bundle WHERE digest = :d", {"d": digest}
                ).first()
                if row is not None:
                    return AddResult(digest, row[0], row[1], created=False)
                version = 1 + (
                    conn.execute(
                        "SELECT MAX(version) FROM bundle WHERE name = :n", {"n": bundle.name}
                    ).scalar()
                    or 0
                )
                conn.execute(
                    "INSERT INTO bundle (digest, name, version, parent, size, created_at,"
                    " created_by)"
                    " VALUES (:d, :n, :v, :p, :s, :t, :a)",
                    {
                        "d": digest,
                        "n": bundle.name,
                        "v": version,
                        "p": bundle.parent,
                        "s": size,
                        "t": now(),
                        "a": who.user,
                    },
                )
                for kind, desc in bundle.components.items():
                    conn.execute(
                        "INSERT INTO bundle_component (bundle_digest, kind, digest, size)"
                        " VALUES (:b, :k, :d, :s)",
                        {"b": digest, "k": kind, "d": desc.digest, "s": desc.size},
                    )
                tag_event(conn, who, bundle.name, version, digest)
                return AddResult(digest, bundle.name, version, created=True)
        except DBIntegrityError:
            continue  # a concurrent add took this version number (PostgreSQL): try the next
    raise IntegrityError(f"could not assign a version to {bundle.name} after 10 attempts")


def tag_event(conn: Any, who: Identity, name: str, version: int, digest: str) -> None:
    """The audit record of a version tag (name, version -> digest), in the insert's
    transaction, so re-pointing `name:vN` outside the registry is caught."""
    audit.append(
        conn, "tag", who=who, name=name, to_digest=digest, subject=digest,
        detail={"version": int(version)}, reason=f"{name}:v{version}",
    )  # fmt: skip


# --- reading -----------------------------------------------------------------------------


def load_bundle(reg: Registry, digest: str) -> BundleManifest:
    return BundleManifest.from_bytes(reg.store.read_bytes(digest))


def load_component(reg: Registry, desc: Descriptor) -> ComponentManifest:
    return ComponentManifest.from_bytes(reg.store.read_bytes(desc.digest))


def _ls_sql(select: str, name: str | None, limit: int | None, *, table_scan: bool = False) -> str:
    """The listing query. The columns `ls` shows are all in the listing index (migration
    0004), which SQLite walks in name order, sorting only each name's versions: rows come
    as they are read. A full listing of other columns on SQLite (`table_scan`) scans the
    table and sorts once (NOT INDEXED): walking an index would cost a row lookup per
    bundle, 1.5-2x slower."""
    where = " WHERE name = :n" if name else (" NOT INDEXED" if table_scan else "")
    return f"SELECT {select} FROM bundle{where} ORDER BY name, version DESC" + (
        " LIMIT :lim" if limit is not None else ""
    )


def _tuples(conn: Any, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Plain row tuples: on SQLite straight from the cursor (no Row object per row)."""
    if conn.postgres:
        return [tuple(r) for r in conn.execute(sql, params)]
    return list(conn.raw.execute(sql, params).fetchall())


def _ls_extras(
    conn: Any, name: str | None
) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, dict[str, int]]]:
    """Channels, remote-tracking views and latest gate counts by bundle digest (small
    tables: these are read whole, the bundle table row by row)."""
    where = " WHERE name = :n" if name else ""
    held: dict[str, list[str]] = {}
    for ch in conn.execute(f"SELECT channel, bundle_digest FROM channel{where}", {"n": name}):
        held.setdefault(ch[1], []).append(ch[0])
    tracked: dict[str, list[str]] = {}
    for t in tracking.views(conn, name):
        tracked.setdefault(t["bundle_digest"], []).append(t["view"])
    return held, tracked, gate_runs.latest_statuses(conn)


def list_bundles(
    reg: Registry, name: str | None = None, *, limit: int | None = None
) -> list[dict[str, Any]]:
    """Every bundle (or one name's; the first `limit`), newest version first, with the
    channels that hold it."""
    with reg.db.read() as conn:
        out = conn.execute(
            _ls_sql(refs.BUNDLE_COLUMNS, name, limit, table_scan=not conn.postgres),
            {"n": name, "lim": limit},
        ).dicts()
        held, tracked, gates = _ls_extras(conn, name)
    for r in out:
        r["tag"] = f"{r['name']}:v{r['version']}"
        r["channels"] = sorted(held.get(r["digest"], []))
        r["remote_channels"] = tracked.get(r["digest"], [])  # read-only REMOTE/CHANNEL views
        r["gates"] = gates.get(r["digest"], {})
    return out


_LS_EXTRA = "digest IN (SELECT value FROM json_each(:extra))"  # channels, views, gate runs
# list_bundles's keys, sorted (as `emit_json` sorts them), for the SQL-built JSON
_JSON_ROW = (
    "json_object('channels', json('[]'), 'created_at', created_at, 'created_by', created_by,"
    " 'digest', digest, 'gates', json('{}'), 'name', name, 'parent', parent,"
    " 'remote_channels', json('[]'), 'size', size, 'tag', name || ':v' || version,"
    " 'version', version)"
)


def list_bundles_json(
    reg: Registry, name: str | None = None, *, limit: int | None = None
) -> list[str] | None:
    """list_bundles's result as compact JSON text, one string per bundle (the caller joins
    them with commas inside brackets), each row built by SQLite's JSON functions (100,000
    bundles in a fraction of the time of dicts and json.dumps); rows with channels,
    tracking views or gate runs come back marked `!` and are completed here. None on
    PostgreSQL: use list_bundles."""
    if reg.db.postgres:
        return None
    with reg.db.read() as conn:
        held, tracked, gates = _ls_extras(conn, name)
        extra = held.keys() | tracked.keys() | gates.keys()
        row = f"CASE WHEN {_LS_EXTRA} THEN '!' || {_JSON_ROW} ELSE {_JSON_ROW} END"
        params = {"n": name, "lim": limit, "extra": json.dumps(sorted(extra))}
        parts = [r[0] for r in _tuples(conn, _ls_sql(row, name, limit, table_scan=True), params)]
    if extra:
        for i, text in enumerate(parts):
            if text[0] == "!":
                obj = json.loads(text[1:])
                digest = obj["digest"]
                obj["channels"] = sorted(held.get(digest, []))
                obj["remote_channels"] = tracked.get(digest, [])
                obj["gates"] = gates.get(digest, {})
                parts[i] = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return parts


@dataclass(frozen=True)
class Listing:
    """What `registry ls` shows, without a dict per bundle: `rows` are (digest, name,
    version, size, created_at) tuples in list order; the small tables by bundle digest."""

    rows: list[tuple[str, str, int, int | None, str]]
    channels: dict[str, list[str]]  # sorted
    remote_channels: dict[str, list[str]]  # read-only REMOTE/CHANNEL views
    gates: dict[str, dict[str, int]]  # latest status counts


def ls_rows(reg: Registry, name: str | None = None, *, limit: int | None = None) -> Listing:
    """The bundles `registry ls` lists (or one name's; the first `limit`), as a Listing."""
    with reg.db.read() as conn:
        sql = _ls_sql("digest, name, version, size, created_at", name, limit)
        rows = _tuples(conn, sql, {"n": name, "lim": limit})
        held, tracked, gates = _ls_extras(conn, name)
    return Listing(rows, {d: sorted(c) for d, c in held.items()}, tracked, gates)


def _tenths(unit: int, name: str) -> str:
    """SQL for `f"{size / unit:.1f} {name}"` in integer arithmetic, rounding half to even as
    Python's format does (size / unit is exact in a float for 0 <= size < 2**53)."""
    q, r = f"(size * 10 / {unit})", f"(size * 10 % {unit})"
    t = f"({q} + (2 * {r} > {unit} OR (2 * {r} = {unit} AND {q} % 2 = 1)))"
    return f"({t} / 10) || '.' || ({t} % 10) || ' {name}'"


# output.human_size of the `size` column, for the sizes _LS_ODD lets SQLite render
_HUMAN_SQL = (
    "CASE WHEN size IS NULL THEN '-' WHEN size < 1024 THEN size || ' B' "
    + " ".join(
        f"WHEN size < {1024 ** (k + 1)} THEN {_tenths(1024**k, u)}"
        for k, u in enumerate(("KiB", "MiB", "GiB", "TiB"), 1)
    )  # fmt: skip
    + f" ELSE {_tenths(1024**5, 'PiB')} END"
)
_LS_TAG = "name || ':v' || version"
_LS_CREATED = "replace(substr(created_at, 1, 19), 'T', ' ')"
# values SQLite renders as Python does: a size human_size's float arithmetic takes exactly,
# a created_at of ASCII characters (no NUL, which ends a string for printf and length)
_LS_ODD = (
    "NOT (size IS NULL OR (typeof(size) = 'integer' AND size >= 0 AND size < 9007199254740992))"
    " OR length(created_at) != length(CAST(created_at AS BLOB))"
)


# the largest size in each human_size unit: the longest SIZE cell of the unit, as a cell's
# length grows with the size within a unit. No type test per row: a value of another type
# in a unit's range (a real) is odd, and its row is rendered by human_size, as the maximum
# is measured; a text or blob compares above every range
_LS_UNIT_MAXES = ", ".join(
    f"max(CASE WHEN size >= {lo} AND size < {hi} THEN size END)"
    for lo, hi in zip([0] + [1024**k for k in range(1, 6)],
                      [1024**k for k in range(1, 6)] + [9007199254740992], strict=True)
)  # fmt: skip


@dataclass(frozen=True)
class LsTable:
    """`registry ls` as SQLite renders it (SQLite only): `batches` of lines in list order,
    each the finished table line of a plain bundle, or `!` and the digest of one `special` holds
    as (name, version, size, created_at): a bundle with channels, tracking views or gate
    runs, or an odd value (`_LS_ODD`), rendered by present.py with the column widths
    `widths` (TAG, DIGEST, SIZE, CREATED: the widest cell of any row) and the small
    tables, as in a Listing."""

    batches: Iterable[list[str]]  # one list from ls_table; read while consumed if streamed
    special: dict[str, tuple[str, int, int | None, str]]
    widths: tuple[int, int, int, int]
    channels: dict[str, list[str]]
    remote_channels: dict[str, list[str]]
    gates: dict[str, dict[str, int]]
    count: int  # the rows listed

    @property
    def lines(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self.batches)


def ls_table(reg: Registry, name: str | None = None, *, limit: int | None = None) -> LsTable | None:
    """The bundles `registry ls` lists, their table lines built by SQLite's printf (at
    100,000 bundles faster than formatting each row in Python); None on PostgreSQL (use
    ls_rows). Each line equals what present.render_ls makes of the row
    (tests/registry/test_fast_paths.py compares them). `ls_table_stream` gives the same
    lines as they are read."""
    with ls_table_stream(reg, name, limit=limit) as table:
        if table is None:
            return None
        return dataclasses.replace(table, batches=[list(table.lines)])


@contextlib.contextmanager
def ls_table_stream(
    reg: Registry, name: str | None = None, *, limit: int | None = None
) -> Iterator[LsTable | None]:
    """`ls_table` whose `batches` are read as the caller consumes them (a few thousand
    lines at a time), valid inside this context, which holds one read transaction: so
    `registry ls` prints its first screen once the widths are measured (the listing index
    gives the rows in name order, sorted a name at a time), and holds a batch of lines,
    not 100,000. The database is in WAL mode (registry/db.py), so a listing paused
    by a pager keeps its snapshot without blocking writers. None on PostgreSQL."""
    if reg.db.postgres:
        yield None
        return
    from registry.output import human_size
    from registry.present import LS_HEADERS

    with reg.db.read() as conn:
        held, tracked, gates = _ls_extras(conn, name)
        params = {"n": name, "lim": limit, "extra": json.dumps(sorted(held | tracked | gates))}
        if limit is not None:  # the rows the limit picks
            listed, cond = f"({_ls_sql('*', name, limit)})", "1"
        else:  # every listed row, in no order
            listed, cond = "bundle", "name = :n" if name else "1"
        # column widths without rendering every cell: the longest tag of a name is its
        # highest version's; a SIZE cell grows with the size within each unit
        where = f"FROM {listed} WHERE {cond}"
        tag_w = _tuples(conn, "SELECT max(length(name) + 2 + length(v)) FROM (SELECT name,"
                        f" max(version) AS v {where} GROUP BY name)", params)[0][0]  # fmt: skip
        # one scan for the other widths: whether any value is odd, the largest size within
        # each unit (B, KiB, ... PiB; an odd row's size is measured with its cells below);
        # and the number of rows. The DIGEST and CREATED cells are cut at 19 characters,
        # which every stored digest and timestamp has: found at the first row, not a scan
        count, odd, *sizes = _tuples(
            conn, f"SELECT count(*), total({_LS_ODD}), {_LS_UNIT_MAXES} {where}", params
        )[0]
        digest_w, created_w = (
            19
            if _tuples(conn, f"SELECT 1 {where} AND length({c}) >= 19 LIMIT 1", params)
            else _tuples(conn, f"SELECT max(length({c})) {where}", params)[0][0]
            for c in ("digest", "created_at")
        )
        size_w = max((len(human_size(s)) for s in sizes if s is not None), default=0)
        measured = (tag_w, digest_w, size_w, created_w)
        special_if = f"{_LS_EXTRA} OR {_LS_ODD}" if odd else _LS_EXTRA
        special = {
            r[0]: r[1:]
            for r in _tuples(
                conn,
                f"SELECT digest, name, version, size, created_at FROM {listed}"
                f" WHERE {cond} AND ({special_if})",
                params,
            )
        }
        cells = [(f"{n}:v{v}", d[:19], human_size(size), created[:19].replace("T", " "))
                 for d, (n, v, size, created) in special.items()]  # fmt: skip
        w = [
            max(len(header), m or 0, *(len(c[i]) for c in cells))
            for i, (header, m) in enumerate(zip(LS_HEADERS, measured, strict=False))
        ]
        line = (
            f"CASE WHEN {special_if} THEN '!' || digest ELSE"
            f" printf('%-!*s  %-!*s  %-!*s  %-!*s  -', {w[0]}, {_LS_TAG}, {w[1]},"
            f" substr(digest, 1, 19), {w[2]}, {_HUMAN_SQL}, {w[3]}, {_LS_CREATED}) END"
        )
        cursor = conn.raw.execute(_ls_sql(line, name, limit), params)

        def batches() -> Iterator[list[str]]:
            while rows := cursor.fetchmany(_LS_BATCH):
                yield [r[0] for r in rows]

        held_sorted = {d: sorted(c) for d, c in held.items()}
        yield LsTable(batches(), special, (w[0], w[1], w[2], w[3]), held_sorted, tracked,
                      gates, count)  # fmt: skip


_LS_BATCH = 4096  # lines fetched from SQLite at a time


def show(reg: Registry, ref: str) -> dict[str, Any]:
    """Everything about one bundle: components, files, meta, lineage, channels."""

    with reg.db.read() as conn:
        row = refs.resolve(conn, ref)
        lineage: list[dict[str, Any]] = []
        parent = row["parent"]
        seen = {row["digest"]}
        while parent and parent not in seen and len(lineage) < 100:
            seen.add(parent)
            p = conn.execute(
                f"SELECT {refs.BUNDLE_COLUMNS} FROM bundle WHERE digest = :d", {"d": parent}
            ).first()
            if p is None:
                lineage.append({"digest": parent, "tag": None})
                break
            lineage.append({"digest": p.digest, "tag": f"{p.name}:v{p.version}"})
            parent = p.parent
        channels = [
            r[0]
            for r in conn.execute(
                "SELECT channel FROM channel WHERE bundle_digest = :d ORDER BY channel",
                {"d": row["digest"]},
            )
        ]
        remote_channels = [
            t["view"]
            for t in tracking.views(conn, row["name"])
            if t["bundle_digest"] == row["digest"]
        ]
        pulled = pull_record(conn, row["digest"])
    manifest = load_bundle(reg, row["digest"])
    components = {}
    for kind, desc in manifest.components.items():
        comp = load_component(reg, desc)
        components[kind] = {
            "digest": desc.digest,
            "size": comp.size,
            "source": comp.source,
            "meta": comp.meta,
            "files": [f.to_dict() for f in comp.files],
        }
    return {
        **row,
        "tag": f"{row['name']}:v{row['version']}",
        "annotations": manifest.annotations,
        "channels": channels,
        "remote_channels": remote_channels,
        "pulled": pulled,
        "lineage": lineage,
        "adaptation": adaptation(components, manifest.annotations),
        "components": components,
    }


def pull_record(conn: Any, digest: str) -> dict[str, Any] | None:
    """How the bundle row got here, if a pull made it: None for a bundle added here.

    From the `pull` audit event written with the row (registry.remotes.sync.pull_event),
    the one after the newest `tag` event of the digest (a row removed and added again is
    not "pulled" by an older pull): {"remote", "at", "by", "display", "signer",
    "creation_from_remote"}. `at` and `by` are the pull's own time and authenticated actor;
    `creation_from_remote` says whether the row's created_at/created_by are the remote's
    (unverified, display-only) record, or the pull's own because the remote kept none."""
    tag = conn.execute(
        "SELECT MAX(seq) FROM event WHERE action = 'tag' AND subject = :d", {"d": digest}
    ).scalar()
    ev = conn.execute(
        "SELECT actor, display, signer, created_at, detail FROM event WHERE action = 'pull'"
        " AND subject = :d AND seq > :s ORDER BY seq LIMIT 1",
        {"d": digest, "s": tag or 0},
    ).first()
    if ev is None:
        return None
    try:
        detail = json.loads(ev.detail or "{}")
    except ValueError:
        detail = {}
    if not isinstance(detail, dict):
        detail = {}
    return {
        "remote": detail.get("remote"),
        "at": ev.created_at,
        "by": ev.actor,
        "display": ev.display or None,
        "signer": ev.signer,
        "creation_from_remote": bool(detail.get("creation")),
    }


def adaptation(components: dict[str, Any], annotations: dict[str, str]) -> str:
    """How the bundle adapts its base: `full`, `qlora`, or the adapter's PEFT type
    lower-cased (`lora`, `ia3`, `prompt_tuning`, ...). QLoRA is a LoRA adapter whose
    training config or base asks for quantized base weights (its adapter_config.json is
    a plain LoRA one). An `adaptation` annotation (`add --full`, `registry train` on a
    4-bit base, or `-a adaptation=...`) says it outright."""
    adapter = components.get("adapter")
    if annotations.get("adaptation"):
        return annotations["adaptation"]
    if adapter is None:
        return "full"
    peft_type = str(adapter["meta"].get("peft_type", "unknown")).lower()
    quantized = any(
        (components.get(kind) or {"meta": {}})["meta"].get("quantization")
        for kind in ("config", "base_model")
    )
    if peft_type == "lora" and quantized:
        return "qlora"
    return peft_type


def diff(reg: Registry, ref_a: str, ref_b: str) -> dict[str, Any]:
    """Which components, files and meta keys differ between two bundles."""
    a, b = show(reg, ref_a), show(reg, ref_b)
    out: dict[str, Any] = {"a": a["tag"], "b": b["tag"], "components": {}}
    for kind in KINDS:
        ca, cb = a["components"].get(kind), b["components"].get(kind)
        if ca is None and cb is None:
            continue
        if ca is None or cb is None:
            out["components"][kind] = {"status": "added" if ca is None else "removed"}
            continue
        if ca["digest"] == cb["digest"]:
            out["components"][kind] = {"status": "unchanged"}
            continue
        fa = {f["path"]: f["digest"] for f in ca["files"]}
        fb = {f["path"]: f["digest"] for f in cb["files"]}
        ma, mb = _flatten(ca["meta"]), _flatten(cb["meta"])
        out["components"][kind] = {
            "status": "changed",
            "files": {
                "added": sorted(set(fb) - set(fa)),
                "removed": sorted(set(fa) - set(fb)),
                "changed": sorted(p for p in set(fa) & set(fb) if fa[p] != fb[p]),
            },
            "meta": {
                k: [ma.get(k), mb.get(k)]
                for k in sorted(set(ma) | set(mb))
                if ma.get(k) != mb.get(k)
            },
        }
    if a["annotations"] != b["annotations"]:
        out["annotations"] = [a["annotations"], b["annotations"]]
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: json.dumps(d, sort_keys=True) if isinstance(d, list) else d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out
