"""Bundles: add (store blobs, then manifests, then database rows), list, show, diff.

Write order (docs/design.md): every file blob is durable before its component manifest is
stored, every component manifest before the bundle manifest, and the bundle manifest
before the database row that makes the bundle visible. An interrupted add leaves at most
unreferenced blobs, which `registry gc` removes after its grace period.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
    desc = reg.store.put_file(path, known=known, progress=progress)
    if known is None or known != desc:
        reg.statcache.put(path, desc)
    return desc


def hash_file(reg: Registry, path: Path) -> tuple[str, int]:
    """sha256 of a file that is not stored (an external base in the HF cache), cached."""
    import os

    from registry.store import hash_fd

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


def _ls_sql(select: str, name: str | None, limit: int | None, *, sqlite: bool = False) -> str:
    """The listing query. A full listing on SQLite scans the table and sorts once (NOT
    INDEXED): walking the name index costs a row lookup per bundle, 1.5-2x slower."""
    where = " WHERE name = :n" if name else (" NOT INDEXED" if sqlite else "")
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
            _ls_sql(refs.BUNDLE_COLUMNS, name, limit, sqlite=not conn.postgres),
            {"n": name, "lim": limit},
        ).dicts()
        held, tracked, gates = _ls_extras(conn, name)
    for r in out:
        r["tag"] = f"{r['name']}:v{r['version']}"
        r["channels"] = sorted(held.get(r["digest"], []))
        r["remote_channels"] = tracked.get(r["digest"], [])  # read-only REMOTE/CHANNEL views
        r["gates"] = gates.get(r["digest"], {})
    return out


# list_bundles's keys, sorted (as `emit_json` sorts them), for the SQL-built JSON
_JSON_ROW = (
    "json_object('channels', json('[]'), 'created_at', created_at, 'created_by', created_by,"
    " 'digest', digest, 'gates', json('{}'), 'name', name, 'parent', parent,"
    " 'remote_channels', json('[]'), 'size', size, 'tag', name || ':v' || version,"
    " 'version', version)"
)


def list_bundles_json(
    reg: Registry, name: str | None = None, *, limit: int | None = None
) -> str | None:
    """list_bundles's result as compact JSON text, each row built by SQLite's JSON functions
    (100,000 bundles in a fraction of the time of dicts and json.dumps); rows with channels,
    tracking views or gate runs are completed here. None on PostgreSQL: use list_bundles."""
    if reg.db.postgres:
        return None
    with reg.db.read() as conn:
        rows = _tuples(
            conn,
            _ls_sql(f"digest, {_JSON_ROW}", name, limit, sqlite=True),
            {"n": name, "lim": limit},
        )
        held, tracked, gates = _ls_extras(conn, name)
    extra = held.keys() | tracked.keys() | gates.keys()
    parts = [r[1] for r in rows]
    if extra:
        for i, (digest, text) in enumerate(rows):
            if digest in extra:
                row = json.loads(text)
                row["channels"] = sorted(held.get(digest, []))
                row["remote_channels"] = tracked.get(digest, [])
                row["gates"] = gates.get(digest, {})
                parts[i] = json.dumps(row, sort_keys=True, separators=(",", ":"))
    return "[" + ",".join(parts) + "]"


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
        sql = _ls_sql("digest, name, version, size, created_at", name, limit,
                      sqlite=not conn.postgres)  # fmt: skip
        rows = _tuples(conn, sql, {"n": name, "lim": limit})
        held, tracked, gates = _ls_extras(conn, name)
    return Listing(rows, {d: sorted(c) for d, c in held.items()}, tracked, gates)


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
