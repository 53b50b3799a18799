"""What push and pull share, whichever the remote: the bundle as a set of blobs, strict
checks on everything read back, verified blob intake, and importing rows and channels.

Write order on the way in (DESIGN.md): every file blob is verified and durable in the
store, then the component manifests, then the bundle manifest, then the database row that
makes the bundle visible, then the channel position. An interrupted pull therefore leaves
at most unreferenced blobs (kept for the next run, or removed by `registry gc`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import refs
from registry.db import DBIntegrityError, now
from registry.digest import Descriptor, is_digest, sha256_bytes, short
from registry.errors import IntegrityError, InvalidInputError, RegistryError, RemoteError
from registry.manifest import KINDS, BundleManifest, ComponentManifest
from registry.store import hash_fd

if TYPE_CHECKING:
    from registry.repo import Registry
    from registry.store import BlobStore


@dataclass(frozen=True)
class Component:
    kind: str
    desc: Descriptor
    manifest: ComponentManifest
    data: bytes  # the manifest's exact bytes


@dataclass(frozen=True)
class BundleBlobs:
    """A bundle as the blobs it consists of: files, component manifests, bundle manifest."""

    digest: str
    manifest: BundleManifest
    data: bytes
    components: dict[str, Component]

    @property
    def name(self) -> str:
        return self.manifest.name

    def file_blobs(self) -> dict[str, int]:
        """digest -> size of every stored (non-external) file, each once, in kind order."""
        out: dict[str, int] = {}
        for kind in KINDS:
            comp = self.components.get(kind)
            if comp is None or comp.manifest.external:
                continue
            for f in comp.manifest.files:
                out.setdefault(f.digest, f.size)
        return out

    def manifest_blobs(self) -> list[tuple[str, bytes]]:
        """(digest, bytes) of the component manifests, then the bundle manifest (last)."""
        seen: dict[str, bytes] = {}
        for kind in KINDS:
            if kind in self.components:
                c = self.components[kind]
                seen.setdefault(c.desc.digest, c.data)
        return [*seen.items(), (self.digest, self.data)]

    @property
    def stored_size(self) -> int:
        """Bytes of stored files (the `size` column of a bundle row)."""
        return sum(
            f.size
            for c in self.components.values()
            if not c.manifest.external
            for f in c.manifest.files
        )


def load_local(reg: Registry, ref: str) -> tuple[dict[str, Any], BundleBlobs]:
    """The bundle row a local reference names and its manifests (each re-verified)."""
    with reg.db.read() as conn:
        row = refs.resolve(conn, ref)
    data = reg.store.read_bytes(row["digest"])
    manifest = BundleManifest.from_bytes(data)
    comps = {}
    for kind, desc in manifest.components.items():
        cdata = reg.store.read_bytes(desc.digest)
        comps[kind] = Component(kind, desc, ComponentManifest.from_bytes(cdata), cdata)
    return row, BundleBlobs(row["digest"], manifest, data, comps)


def check_local_blobs(reg: Registry, bundle: BundleBlobs) -> None:
    """Every file blob of the bundle is in the store with its size (before a push)."""
    for digest, size in bundle.file_blobs().items():
        if not reg.store.has(digest, size):
            raise IntegrityError(
                f"blob {short(digest)} of {bundle.name} is missing or has the wrong size locally",
                "Run `registry verify` on the bundle; pull it again from a remote that has it.",
            )


# --- reading a bundle back from a remote --------------------------------------------------


def parse_remote_bundle(
    data: bytes,
    expected: str | None,
    fetch: Callable[[str, Descriptor], bytes],
    *,
    name: str | None = None,
    where: str = "remote",
) -> BundleBlobs:
    """Verify and parse a bundle manifest and its component manifests read from a remote.

    `expected` is the digest the remote's ref named (None when the bytes are the lookup).
    `fetch(kind, desc)` returns a component manifest's bytes; they are checked here.
    """
    digest = sha256_bytes(data)
    if expected is not None and digest != expected:
        raise IntegrityError(
            f"{where}: bundle manifest has digest {short(digest)}, its ref says {short(expected)}",
            "The remote is corrupt or was tampered with; nothing was imported.",
        )
    try:
        manifest = BundleManifest.from_bytes(data)
    except InvalidInputError as exc:
        raise IntegrityError(f"{where}: invalid bundle manifest {short(digest)}: {exc}") from None
    if name is not None and manifest.name != name:
        raise IntegrityError(
            f"{where}: the ref for {name} points at a bundle named {manifest.name!r}",
            "The remote is inconsistent; nothing was imported.",
        )
    comps: dict[str, Component] = {}
    for kind, desc in manifest.components.items():
        cdata = fetch(kind, desc)
        if len(cdata) != desc.size or sha256_bytes(cdata) != desc.digest:
            raise IntegrityError(
                f"{where}: {kind} manifest does not match {short(desc.digest)}",
                "The remote is corrupt or was tampered with; nothing was imported.",
            )
        try:
            comp = ComponentManifest.from_bytes(cdata)
        except InvalidInputError as exc:
            raise IntegrityError(f"{where}: invalid {kind} manifest: {exc}") from None
        if comp.kind != kind:
            raise IntegrityError(f"{where}: the {kind} entry points at a {comp.kind} manifest")
        comps[kind] = Component(kind, desc, comp, cdata)
    return BundleBlobs(digest, manifest, data, comps)


def missing_blobs(reg: Registry, bundle: BundleBlobs) -> dict[str, int]:
    """File blobs of `bundle` the local store lacks (digest -> size)."""
    return {d: s for d, s in bundle.file_blobs().items() if not reg.store.has(d, s)}


# --- verified intake ----------------------------------------------------------------------


def install(store: BlobStore, tmp: Path, digest: str) -> None:
    """Rename a verified, fsync'd temp file (in `store.tmp`) into place as `digest`.

    The one place this package reaches into the store's private commit step; see the
    proposed public `BlobStore.adopt` in the remotes report.
    """
    store._commit(tmp, digest)


class BlobSink:
    """A write-only, non-seekable file that becomes blob `digest` only if its bytes match.

    Bytes are hashed as they are written (in order: boto3's transfer manager reorders the
    parts of a non-seekable download itself), written to a temp file in the store's temp
    directory, fsync'd, compared with the expected digest and size, and only then renamed
    into place. Anything else is discarded.
    """

    def __init__(self, store: BlobStore, digest: str, size: int) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.written = 0
        self._hash = hashlib.sha256()
        self._fd: int | None = None  # the temp file is created on first write
        self.tmp: Path | None = None
        self._done = False

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        if self.written + n > self.size:
            raise IntegrityError(f"blob {short(self.digest)} is longer than {self.size} bytes")
        self._hash.update(data)
        fd = self._open()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        self.written += n
        return n

    def commit(self) -> None:
        """Verify and install; raises IntegrityError (and discards) on any mismatch."""
        try:
            actual = f"sha256:{self._hash.hexdigest()}"
            if self.written != self.size or actual != self.digest:
                raise IntegrityError(
                    f"downloaded blob {short(self.digest)} does not match its digest"
                    f" ({self.written} bytes, {short(actual)})",
                    "The remote copy is corrupt; nothing referencing it was imported.",
                )
            fd = self._open()
            os.fsync(fd)
            self._close()
            assert self.tmp is not None
            install(self.store, self.tmp, self.digest)
            self._done = True
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Drop the temp file (nothing to do once committed)."""
        self._close()
        if self.tmp is not None and not self._done:
            self.tmp.unlink(missing_ok=True)

    def _open(self) -> int:
        if self._fd is None:
            self._fd, self.tmp = self.store._tmpfile()
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def adopt_file(store: BlobStore, path: Path, digest: str, size: int) -> None:
    """Install a downloaded file (in the store's filesystem) as a blob after re-hashing it."""
    fd = os.open(path, os.O_RDWR)
    try:
        actual, n = hash_fd(fd)
        if actual != digest or n != size:
            raise IntegrityError(
                f"downloaded file for {short(digest)} does not match its digest"
                f" ({n} bytes, {short(actual)})",
                "The remote copy is corrupt; nothing referencing it was imported.",
            )
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        install(store, path, digest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        store.put_file(path)  # another filesystem: copy (hashing again) instead of rename


def store_manifests(reg: Registry, bundle: BundleBlobs) -> None:
    """Store the (already verified) component manifests, then the bundle manifest."""
    for _digest, data in bundle.manifest_blobs():
        reg.store.put_bytes(data)


# --- what a team shares besides bundles ---------------------------------------------------


def _policy_parts(data: bytes) -> list[str]:
    """Digests a policy manifest names (its TOML text and eval files); [] if unreadable."""
    import json

    try:
        manifest = json.loads(data)
        parts = [manifest["policy"], *manifest.get("files", {}).values()]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
    return [d for d in parts if is_digest(d)]


def side_digests(reg: Registry, bundle_digest: str) -> list[str]:
    """Blobs the database references around a bundle: every policy in force or named by a
    channel move (manifest, text, eval files) and the evidence of the bundle's gate runs.

    In team mode the database is shared but each user's store is a cache: these blobs
    travel with the bundle so that another user can roll back (which reads the policy)
    or read gate evidence. Policy parts are listed after their manifest.
    """
    with reg.db.read() as conn:
        rows = conn.execute(
            "SELECT value FROM setting WHERE key = 'policy' UNION SELECT DISTINCT"
            " policy_digest FROM event WHERE policy_digest IS NOT NULL"
        ).all()
        policies = {r[0] for r in rows}
        rows = conn.execute(
            "SELECT evidence_digest FROM gate_run WHERE bundle_digest = :b"
            " AND evidence_digest IS NOT NULL ORDER BY id",
            {"b": bundle_digest},
        ).all()
        evidence = [r[0] for r in rows]
    out: list[str] = []
    for digest in sorted(d for d in policies if is_digest(d)):
        out.append(digest)
        if reg.store.has(digest):
            with contextlib.suppress(RegistryError):
                out += _policy_parts(reg.store.read_bytes(digest))
    out += [d for d in evidence if is_digest(d)]
    return list(dict.fromkeys(out))


def local_side_blobs(reg: Registry, bundle_digest: str) -> dict[str, int]:
    """Side blobs this store has (digest -> size), for a push."""
    out = {}
    for digest in side_digests(reg, bundle_digest):
        with contextlib.suppress(OSError):
            out[digest] = reg.store.path(digest).stat().st_size
    return out


def fetch_side_blobs(
    reg: Registry, bundle_digest: str, fetch: Callable[[str], bytes | None]
) -> list[str]:
    """Fetch side blobs the store lacks (each verified); returns those the remote lacked."""
    lacking = []
    for _round in range(2):  # a fetched policy manifest names more blobs
        for digest in side_digests(reg, bundle_digest):
            if reg.store.has(digest):
                continue
            data = fetch(digest)
            if data is None or sha256_bytes(data) != digest:
                if digest not in lacking:
                    lacking.append(digest)
                continue
            reg.store.put_bytes(data)
    return [d for d in lacking if not reg.store.has(d)]


# --- importing rows -----------------------------------------------------------------------


@dataclass(frozen=True)
class Imported:
    name: str
    version: int
    created: bool
    note: str | None = None

    @property
    def tag(self) -> str:
        return f"{self.name}:v{self.version}"


def import_bundle(
    reg: Registry, bundle: BundleBlobs, remote_version: int | None, actor: str
) -> Imported:
    """Insert the bundle's rows, keeping the remote's version number when it is free here.

    Every blob must already be in the store: the row is what makes the bundle visible.
    """
    for digest, size in bundle.file_blobs().items():
        if not reg.store.has(digest, size):
            raise IntegrityError(f"cannot import {bundle.name}: blob {short(digest)} is missing")
    for digest, _data in bundle.manifest_blobs():
        if not reg.store.has(digest):
            raise IntegrityError(f"cannot import {bundle.name}: manifest {short(digest)} missing")
    name = bundle.name
    for _attempt in range(10):
        try:
            with reg.db.write() as conn:
                row = conn.execute(
                    "SELECT name, version FROM bundle WHERE digest = :d", {"d": bundle.digest}
                ).first()
                if row is not None:
                    return Imported(row[0], row[1], created=False)
                note = None
                version = remote_version
                taken = (
                    version is not None
                    and conn.execute(
                        "SELECT 1 FROM bundle WHERE name = :n AND version = :v",
                        {"n": name, "v": version},
                    ).first()
                )
                if version is None or taken:
                    version = 1 + (
                        conn.execute(
                            "SELECT MAX(version) FROM bundle WHERE name = :n", {"n": name}
                        ).scalar()
                        or 0
                    )
                    if remote_version is not None:
                        note = (
                            f"remote {name}:v{remote_version} is a different bundle from local"
                            f" {name}:v{remote_version}; imported as {name}:v{version}"
                        )
                conn.execute(
                    "INSERT INTO bundle (digest, name, version, parent, size, created_at,"
                    " created_by) VALUES (:d, :n, :v, :p, :s, :t, :a)",
                    {
                        "d": bundle.digest,
                        "n": name,
                        "v": version,
                        "p": bundle.manifest.parent,
                        "s": bundle.stored_size,
                        "t": now(),
                        "a": actor,
                    },
                )
                for kind, desc in bundle.manifest.components.items():
                    conn.execute(
                        "INSERT INTO bundle_component (bundle_digest, kind, digest, size)"
                        " VALUES (:b, :k, :d, :s)",
                        {"b": bundle.digest, "k": kind, "d": desc.digest, "s": desc.size},
                    )
                return Imported(name, version, created=True, note=note)
        except DBIntegrityError:
            continue  # a concurrent add or pull took the number (PostgreSQL): look again
    raise IntegrityError(f"could not assign a version to {name} after 10 attempts")


def adopt_channel(
    reg: Registry, name: str, channel: str, digest: str, *, actor: str, reason: str
) -> bool:
    """Move the local channel to `digest` (an audited "sync" event) if it differs."""
    try:
        from registry import channels
    except ImportError as exc:  # pragma: no cover - channels.py ships with the registry
        raise RegistryError("this registry build has no channels module") from exc
    return bool(channels.adopt(reg, name, channel, digest, actor=actor, reason=reason))


# --- references on a remote ---------------------------------------------------------------


def pick(ref: refs.Ref, entries: Iterable[dict[str, Any]], where: str) -> dict[str, Any]:
    """The remote entry (from `Remote.list()`) a reference names; errors list candidates."""
    items = list(entries)
    if ref.name is not None:
        named = [e for e in items if e["name"] == ref.name]
        if not named:
            known = ", ".join(sorted({e["name"] for e in items})) or "none"
            raise RemoteError(
                f"{where} holds no bundle named {ref.name!r} (it holds: {known})",
                f"Run `registry ls --remote {where}`.",
            )
        items = named
    if ref.prefix is not None:
        found = {e["digest"]: e for e in items if e["digest"].startswith(ref.prefix)}
        if len(found) == 1:
            return next(iter(found.values()))
        if not found:
            raise RemoteError(f"{where} holds no bundle matching {ref.text}")
        raise RemoteError(
            f"{ref.text} is ambiguous on {where}: "
            + ", ".join(f"{e['tag']} {short(d)}" for d, e in sorted(found.items())[:10]),
            "Give more hex digits of the digest.",
        )
    if ref.version is not None:
        for e in items:
            if e["version"] == ref.version:
                return e
        versions = ", ".join(f"v{e['version']}" for e in items)
        raise RemoteError(
            f"{where} has no {ref.text} (versions there: {versions or 'none'})",
            f"Run `registry ls --remote {where}`.",
        )
    if ref.channel is not None:
        for e in items:
            if ref.channel in e["channels"]:
                return e
        chans = sorted({c for e in items for c in e["channels"]})
        raise RemoteError(
            f"{where} has no channel {ref.text} (channels there: {', '.join(chans) or 'none'})",
            f"Push it first: `registry push {ref.text} --remote {where}`.",
        )
    return max(items, key=lambda e: e["version"] or 0)
