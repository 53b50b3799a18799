"""What push and pull share, whichever the remote: the bundle as a set of blobs, strict
checks on everything read back, verified blob intake, and importing rows and
remote-tracking views.

Write order on the way in (docs/design.md): every file blob is verified and durable in the
store, then the component manifests, then the bundle manifest, then the database row that
makes the bundle visible, then the remote-tracking view of a pulled channel (never the
local channel: see registry/tracking.py). An interrupted pull therefore leaves
at most unreferenced blobs (kept for the next run, or removed by `registry gc`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import gate_runs, refs
from registry.copying import hash_fd
from registry.db import DBIntegrityError, now
from registry.digest import Descriptor, is_digest, sha256_bytes, short
from registry.errors import (
    IntegrityError,
    InvalidInputError,
    RegistryError,
    RemoteError,
    UsageError,
)
from registry.manifest import KINDS, BundleManifest, ComponentManifest
from registry.pieces import PIECE_SIZE, PieceList

if TYPE_CHECKING:
    from registry.identity import Identity
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


@contextlib.contextmanager
def note_kept_blobs(reg: Registry, fetching: dict[str, int]) -> Iterator[None]:
    """A refused or interrupted pull says what it leaves: verified blobs (never a row)."""
    try:
        yield
    except RegistryError as exc:
        kept = sum(1 for d, size in fetching.items() if reg.store.has(d, size))
        if kept:
            note = (
                f"{kept} verified blob(s) it fetched stay in the store: a later pull reuses"
                " them, and `registry gc` removes them if nothing comes to reference them."
            )
            exc.hint = f"{exc.hint} {note}" if exc.hint else note
        raise


def missing_blobs(reg: Registry, bundle: BundleBlobs) -> dict[str, int]:
    """File blobs of `bundle` the local store lacks (digest -> size)."""
    return {d: s for d, s in bundle.file_blobs().items() if not reg.store.has(d, s)}


# --- verified intake ----------------------------------------------------------------------


def install(store: BlobStore, tmp: Path, digest: str) -> None:
    """Rename a verified, fsync'd temp file (from `store.tmpfile`) into place as `digest`."""
    store.adopt(tmp, digest)


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
            self._fd, self.tmp = self.store.tmpfile()
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def adopt_file(
    store: BlobStore,
    path: Path,
    digest: str,
    size: int,
    *,
    split_above: int | None = None,
    piece_size: int = PIECE_SIZE,
) -> None:
    """Install a downloaded file (in the store's filesystem) as a blob after re-hashing it.

    With `split_above` (the local `[store]` settings, split_settings) a larger file is
    stored as the store's put_file stores it: as pieces where registry.pieces can split
    it, else whole; the download is removed afterwards."""
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
    if split_above is not None and size > split_above:
        try:
            got = store.put_file(path, split_above=split_above, piece_size=piece_size)
        finally:
            path.unlink(missing_ok=True)
        if got.digest != digest:  # the file changed under us after it was verified
            raise IntegrityError(f"downloaded file for {short(digest)} changed while stored")
        return
    try:
        install(store, path, digest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        store.put_file(path)  # another filesystem: copy (hashing again) instead of rename


# --- files stored as pieces (docs/remotes.md, "Pieces") -------------------------------------


def local_piece_lists(reg: Registry, files: dict[str, int]) -> dict[str, PieceList]:
    """The piece lists of the files (digest -> size) this store holds as pieces, each piece
    checked present with its size (before a push sends them); IntegrityError otherwise."""
    out: dict[str, PieceList] = {}
    for digest in files:
        pl = reg.store.piece_list(digest)  # IntegrityError if unreadable
        if pl is None:
            continue
        for p in pl.pieces:
            if not blob_present(reg.store, p.digest, p.size):
                raise IntegrityError(
                    f"piece {short(p.digest)} of file {short(digest)} is missing or has the"
                    " wrong size locally; not pushed",
                    "Run `registry verify --all`; pull the bundle again from a remote that has it.",
                )
        out[digest] = pl
    return out


def blob_present(store: BlobStore, digest: str, size: int) -> bool:
    """Whether `digest` is stored as a whole blob of `size` bytes (a piece is one)."""
    try:
        return store.path(digest).stat().st_size == size
    except FileNotFoundError:
        return False


def pieces_lacking(store: BlobStore, lists: Iterable[PieceList]) -> dict[str, int]:
    """The pieces (digest -> size) of `lists` the store lacks, each once."""
    out: dict[str, int] = {}
    for pl in lists:
        for p in pl.pieces:
            if p.digest not in out and not blob_present(store, p.digest, p.size):
                out[p.digest] = p.size
    return out


def pieces_of(lists: Iterable[PieceList]) -> dict[str, int]:
    """Every piece (digest -> size) the lists name, each once, in order."""
    return {p.digest: p.size for pl in lists for p in pl.pieces}


def file_names(bundle: BundleBlobs) -> dict[str, str]:
    """digest -> "KIND/PATH" of the bundle's stored files (the first place each appears),
    to name a file in an error."""
    out: dict[str, str] = {}
    for kind in KINDS:
        comp = bundle.components.get(kind)
        if comp is None or comp.manifest.external:
            continue
        for f in comp.manifest.files:
            out.setdefault(f.digest, f"{kind}/{f.path}")
    return out


def piece_names(lists: dict[str, PieceList], names: dict[str, str]) -> dict[str, str]:
    """piece digest -> "piece sha256:... (#i) of KIND/PATH", to name a piece in an error."""
    out: dict[str, str] = {}
    for digest, pl in lists.items():
        for i, p in enumerate(pl.pieces):
            out.setdefault(
                p.digest,
                f"piece {short(p.digest)} (#{i}) of {names.get(digest, short(digest))}",
            )
    return out


def adopt_pieces(store: BlobStore, pl: PieceList, where: str) -> None:
    """Reference a pulled file by its piece list, once every piece is in the store (each
    verified on the way in): the WHOLE file's sha256 is computed over the pieces in order
    and must be `pl.digest`, then the list is written (temp, fsync, rename). Nothing is
    referenced otherwise: the pieces stay unreferenced (`registry gc` removes them)."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(PIECE_READ)
    view = memoryview(buf)
    for p in pl.pieces:
        path = store.path(p.digest)
        with contextlib.suppress(OSError):
            os.utime(path)  # a concurrent gc's grace period protects a reused piece
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise IntegrityError(
                f"{where}: piece {short(p.digest)} of {short(pl.digest)} is not in the store"
            ) from None
        try:
            with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    h.update(view[:n])
                    size += n
        finally:
            os.close(fd)
    actual = f"sha256:{h.hexdigest()}"
    if actual != pl.digest or size != pl.size:
        raise IntegrityError(
            f"{where}: the pieces of {short(pl.digest)} reassemble to {short(actual)}"
            f" ({size} bytes), not the file its manifest names",
            "The remote's piece list is corrupt or was tampered with; nothing referencing"
            " it was imported.",
        )
    store.put_piece_list(pl)


PIECE_READ = 1024 * 1024  # one buffer, reused: memory flat in the file size


def split_settings(reg: Registry) -> tuple[int | None, int]:
    """The local `[store]` settings (split_above, piece_size) a downloaded file is stored
    with when it is not adopted as it came (registry/config.py)."""
    return reg.cfg.split_above, reg.cfg.piece_size


def store_manifests(reg: Registry, bundle: BundleBlobs) -> None:
    """Store the (already verified) component manifests, then the bundle manifest."""
    for _digest, data in bundle.manifest_blobs():
        reg.store.put_bytes(data)


# --- what a team shares besides bundles ---------------------------------------------------


def _policy_parts(data: bytes) -> list[str]:
    """Digests a policy manifest names (its TOML text and eval files); [] if unreadable."""
    from registry.errors import InvalidInputError
    from registry.untrusted import load_json

    try:
        manifest = load_json(data, "policy manifest")
        parts = [manifest["policy"], *manifest.get("files", {}).values()]
    except (ValueError, KeyError, TypeError, AttributeError, InvalidInputError):
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
        evidence = [d for d, _gate in gate_runs.evidence_blobs(conn, bundle_digest)]
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
        if (size := reg.store.size_of(digest)) is not None:
            out[digest] = size
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


# --- what vouches for a bundle: gate-run attestations and signatures ------------------------

MAX_ATTESTATION = 4 * 1024 * 1024  # a DSSE envelope (registry.dsse.MAX_ENVELOPE)
MAX_SIGNATURE = 16 * 1024 * 1024  # a model-signing bundle lists every file: allow many
MAX_PUBLIC_KEY = 64 * 1024


@dataclass
class TrustRecords:
    """What a push carries to vouch for a bundle: its gate runs' attestation blobs, its
    `registry sign` signatures and the signers' public keys. All of it checks itself on
    the way in (digests; signatures against keys whose id is the hash of the key)."""

    attestations: dict[str, int] = field(default_factory=dict)  # blob digest -> size
    signatures: dict[str, tuple[str, int]] = field(default_factory=dict)  # key id -> blob
    keys: dict[str, bytes] = field(default_factory=dict)  # key id -> public PEM

    def blobs(self) -> dict[str, int]:
        """Every blob to send (digest -> size)."""
        return {**self.attestations, **dict(self.signatures.values())}


def key_hex(key_id: str) -> str:
    """`key:<16 hex>` -> the 16 hex digits (how remotes name a key in paths)."""
    return key_id.split(":", 1)[1]


def key_id_of(text: str) -> str | None:
    """The key id a remote path names (16 hex digits), None if it names none."""
    from registry.keys import is_key_id

    value = f"key:{text}"
    return value if is_key_id(value) else None


def hex_name(text: str) -> str | None:
    """The digest a remote path names by its 64 hex digits, None if it names none."""
    value = f"sha256:{text}"
    return value if is_digest(value) else None


def local_trust(reg: Registry, bundle_digest: str) -> TrustRecords:
    """The bundle's attestations, signatures and signer keys this store holds (for a push)."""
    out = TrustRecords()
    for digest in gate_runs.attestations_of(reg, bundle_digest):
        if (size := reg.store.size_of(digest)) is not None:
            out.attestations[digest] = size
    with reg.db.read() as conn:
        sigs = conn.execute(
            "SELECT signer, signature_digest FROM bundle_signature WHERE bundle_digest = :b"
            " ORDER BY signer",
            {"b": bundle_digest},
        ).all()
        pems: dict[str, str] = (
            dict(conn.execute("SELECT id, public_pem FROM signing_key").all()) if sigs else {}
        )
    for signer, digest in sigs:
        if signer not in pems or not is_digest(digest):
            continue
        if (size := reg.store.size_of(digest)) is not None:
            out.signatures[signer] = (digest, size)
            out.keys[signer] = pems[signer].encode("ascii")
    return out


@dataclass
class TrustPulled:
    """What a pull recorded of the remote's trust records for a bundle."""

    gate_runs: int = 0  # attestations imported as gate runs
    signatures: int = 0  # signatures recorded
    notes: list[str] = field(default_factory=list)  # what was refused, and why


Loader = Callable[[], bytes | None]  # a remote object's bytes (None: absent); bounded


def import_trust(
    reg: Registry,
    actor: str | Identity,
    bundle_digest: str,
    origin: str,
    *,
    attestations: dict[str, Loader],
    signatures: dict[str, tuple[str | None, Loader]],
    key: Callable[[str], bytes | None],
) -> TrustPulled:
    """Record what a remote holds to vouch for an imported bundle.

    `attestations`: digest (as the remote names it) -> loader of its bytes; each becomes
    a gate run with origin `origin` (gate_runs.import_attestation: whether it counts is
    the policy's `gate_signers` business, at promotion). `signatures`: signer key id ->
    (the signature's digest if the remote names one, loader); each is recorded only if
    it verifies for this bundle against the signer's key: this registry's copy, else the
    remote's (`key(key_id)` -> PEM), accepted only if the sha256 of its DER is the id.
    Anything bad is skipped with a note; nothing half-recorded stays."""
    from registry import signing
    from registry.identity import of

    who = of(reg, actor)
    out = TrustPulled()
    with reg.db.read() as conn:
        have = {d for d, _gate in gate_runs.attestation_blobs(conn, bundle_digest)}
        have_sigs: dict[str, str] = dict(
            conn.execute(
                "SELECT signer, signature_digest FROM bundle_signature WHERE bundle_digest = :b",
                {"b": bundle_digest},
            ).all()
        )
    for digest, load in sorted(attestations.items()):
        if digest in have:
            continue
        what = f"gate-run attestation {short(digest)} on {origin}"
        try:
            data = _loaded(load, digest, MAX_ATTESTATION, what)
            if gate_runs.import_attestation(reg, who, bundle_digest, data, origin) is not None:
                out.gate_runs += 1
        except (IntegrityError, UsageError) as exc:
            out.notes.append(f"{what} refused: {_first(exc)}; skipped")
    for signer, (sig_digest, load) in sorted(signatures.items()):
        if sig_digest is not None and have_sigs.get(signer) == sig_digest:
            continue
        what = f"signature by {signer} on {origin}"
        try:
            public = _signer_key(reg, signer, key)
            data = _loaded(load, sig_digest, MAX_SIGNATURE, what)
            if signing.import_signature(reg, who, bundle_digest, public, data, origin):
                out.signatures += 1
        except (IntegrityError, UsageError) as exc:
            out.notes.append(f"{what} refused: {_first(exc)}; skipped")
    return out


def prefetch(
    attestations: dict[str, Loader],
    signatures: dict[str, tuple[str | None, Loader]],
    key: Callable[[str], bytes | None],
) -> dict[str, Any]:
    """Call every loader now, so the network is done before the bundle's row is written
    (a connection lost afterwards would fail a pull whose bundle is already imported);
    returns `import_trust`'s keyword arguments with the bytes in hand. A loader that
    refuses (IntegrityError: too large) refuses again at import, as a note."""

    def now(load: Loader) -> Loader:
        try:
            data = load()
        except IntegrityError as exc:
            error = exc

            def refuse() -> bytes | None:
                raise error

            return refuse
        return lambda: data

    keys = {k: now(functools.partial(key, k)) for k in signatures}
    return {
        "attestations": {d: now(load) for d, load in attestations.items()},
        "signatures": {k: (d, now(load)) for k, (d, load) in signatures.items()},
        "key": lambda k: keys[k]() if k in keys else None,
    }


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _loaded(load: Loader, digest: str | None, limit: int, what: str) -> bytes:
    data = load()
    if data is None:
        raise IntegrityError(f"{what} is listed but missing")
    if len(data) > limit:
        raise IntegrityError(f"{what} is larger than {limit} bytes")
    if digest is not None and sha256_bytes(data) != digest:
        raise IntegrityError(
            f"its bytes do not match its name ({short(sha256_bytes(data))}): tampered or corrupt"
        )
    return data


def _signer_key(reg: Registry, key_id: str, fetch: Callable[[str], bytes | None]) -> Any:
    """The public key `key_id` names: this registry's copy, else the remote's; either only
    if it really is that key (its id is the hash of its DER encoding)."""
    from registry.keys import public_from_pem

    with reg.db.read() as conn:
        pem = conn.execute(
            "SELECT public_pem FROM signing_key WHERE id = :i", {"i": key_id}
        ).scalar()
    if pem:
        with contextlib.suppress(UsageError, UnicodeError):
            known = public_from_pem(pem.encode("ascii"), f"public key {key_id}")
            if known.id == key_id:
                return known
    data = fetch(key_id)
    if data is None:
        raise IntegrityError(f"the remote holds no public key for {key_id}")
    if len(data) > MAX_PUBLIC_KEY:
        raise IntegrityError(f"the remote's public key for {key_id} is too large")
    public = public_from_pem(data, f"the remote's public key for {key_id}")
    if public.id != key_id:
        raise IntegrityError(f"the remote's public key for {key_id} is another key ({public.id})")
    return public


# --- who created a bundle, and when: a record that travels with it ------------------------

MAX_CREATION_RECORD = 4096
"""The largest creation record a pull reads (a few dozen bytes are written)."""
CREATION_FORMAT = 1
MAX_CREATOR = 128  # the bundle.created_by column (VARCHAR(128))
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z\Z", re.ASCII)


@dataclass(frozen=True)
class Creation:
    """When and by whom a bundle was created, as a remote's creation record says.

    A remote is untrusted: these values are a claim, shown by `registry show` and `ls`,
    never an identity anything is allowed or refused on (the puller is the authenticated
    actor of the pull's audit event)."""

    created_at: str  # ISO-8601 UTC, as registry.db.now() writes it
    created_by: str


def creation_record(row: dict[str, Any]) -> bytes:
    """The creation record a push uploads beside a bundle: its digest, when and by whom
    it was created (from the local bundle row, itself pulled from elsewhere or not)."""
    from registry.digest import canonical_json

    return canonical_json(
        {
            "format": CREATION_FORMAT,
            "bundle": row["digest"],
            "created_at": row["created_at"],
            "created_by": row["created_by"],
        }
    )


def parse_creation(
    data: bytes | None, bundle_digest: str, where: str
) -> tuple[Creation | None, str | None]:
    """A remote's creation record, checked as the untrusted input it is: (creation, note).

    No record (a remote pushed to before records existed): (None, None), and the pull
    records its own time and puller as the creation. A record that is too large, is not
    JSON, names another bundle, or holds a creator or time that is not a short printable
    string of the expected form: (None, note saying why), handled the same way."""
    from registry.untrusted import load_json

    if data is None:
        return None, None
    what = f"the creation record of {short(bundle_digest)} on {where}"
    try:
        value = load_json(data, what, max_bytes=MAX_CREATION_RECORD, max_depth=2, max_items=64)
    except InvalidInputError as exc:
        return None, f"{_first(exc)}; ignored"
    problem = _creation_problem(value, bundle_digest)
    if problem is not None:
        return None, f"{what} {problem}; ignored"
    return Creation(value["created_at"], value["created_by"]), None


def _creation_problem(value: Any, bundle_digest: str) -> str | None:
    """Why a parsed creation record is unusable, None if it is fine."""
    import datetime as dt

    if not isinstance(value, dict):
        return "is not a JSON object"
    if value.get("format") != CREATION_FORMAT:
        return f"has format {str(value.get('format'))[:20]!r}, not {CREATION_FORMAT}"
    if value.get("bundle") != bundle_digest:
        return "names another bundle"
    at, by = value.get("created_at"), value.get("created_by")
    if not isinstance(at, str) or not _TIMESTAMP.match(at):
        return "has no created_at of the form 2026-01-31T12:00:00.000000Z"
    try:
        dt.datetime.strptime(at[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return "has a created_at that is not a date and time"
    if not isinstance(by, str) or not 1 <= len(by) <= MAX_CREATOR:
        return f"has no created_by of 1 to {MAX_CREATOR} characters"
    if not by.isprintable() or by != by.strip():
        return "has a created_by with control, formatting or surrounding space characters"
    return None


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


MAX_VERSION = 1_000_000
"""The largest version number a remote may give a bundle here. Versions are assigned in
order, so a remote's v9223372036854775807 (or PostgreSQL's int4 limit, 2^31 - 1) would
make every later `registry add` of that name overflow; v0 or a negative one no reference
could name."""


def valid_version(version: object) -> bool:
    return (
        isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= MAX_VERSION
    )


def import_bundle(
    reg: Registry,
    bundle: BundleBlobs,
    remote_version: int | None,
    actor: str | Identity,
    *,
    remote: str | None = None,
    creation: Creation | None = None,
) -> Imported:
    """Insert the bundle's rows, keeping the remote's version number when it is free here.

    Every blob must already be in the store: the row is what makes the bundle visible.
    The row's created_at/created_by are the remote's `creation` record where it has one
    (parse_creation), else the pull's own time and actor. In the same transaction as the
    row, a `pull` audit event records who pulled it (the authenticated actor), when, from
    which `remote`, and what the remote claimed about its creation.
    """
    for digest, size in bundle.file_blobs().items():
        if not reg.store.has(digest, size):
            raise IntegrityError(f"cannot import {bundle.name}: blob {short(digest)} is missing")
    for digest, _data in bundle.manifest_blobs():
        if not reg.store.has(digest):
            raise IntegrityError(f"cannot import {bundle.name}: manifest {short(digest)} missing")
    from registry.bundles import tag_event
    from registry.identity import of

    who = of(reg, actor)
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
                if version is not None and not valid_version(version):
                    note = (
                        f"the remote numbers this bundle v{str(version)[:24]}, which is not a"
                        f" version here (1 to {MAX_VERSION}); numbered as the next version"
                    )
                    version = remote_version = None
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
                    if remote_version is not None and note is None:
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
                        "t": creation.created_at if creation else now(),
                        "a": creation.created_by if creation else who.user,
                    },
                )
                for kind, desc in bundle.manifest.components.items():
                    conn.execute(
                        "INSERT INTO bundle_component (bundle_digest, kind, digest, size)"
                        " VALUES (:b, :k, :d, :s)",
                        {"b": bundle.digest, "k": kind, "d": desc.digest, "s": desc.size},
                    )
                tag_event(conn, who, name, version, bundle.digest)
                pull_event(conn, who, name, version, bundle.digest, remote, creation)
                return Imported(name, version, created=True, note=note)
        except DBIntegrityError:
            continue  # a concurrent add or pull took the number (PostgreSQL): look again
    raise IntegrityError(f"could not assign a version to {name} after 10 attempts")


def pull_event(
    conn: Any,
    who: Identity,
    name: str,
    version: int,
    digest: str,
    remote: str | None,
    creation: Creation | None,
) -> None:
    """The audit record of a pull that imported a bundle (in the import's transaction):
    the actor and time are the puller's; `detail` keeps the remote and what it claimed
    (creation: null where it kept no usable record). registry.bundles.pull_record reads it."""
    from registry import audit

    claimed = (
        {"created_at": creation.created_at, "created_by": creation.created_by} if creation else None
    )
    audit.append(
        conn, "pull", who=who, name=name, to_digest=digest, subject=digest,
        detail={"remote": remote, "version": int(version), "creation": claimed},
        reason=f"{name}:v{version} from {remote or 'a remote'}",
    )  # fmt: skip


def track_channel(reg: Registry, remote: str, name: str, channel: str, digest: str) -> bool:
    """Record what `remote` said `name:channel` holds, in the read-only tracking view
    `remote/channel` (registry/tracking.py). The local channel never moves on a pull:
    adopting the bundle is a policy-gated `registry promote NAME:REMOTE/CHANNEL --to
    CHANNEL`. Returns whether the view changed."""
    from registry import tracking

    return tracking.record(reg, remote, name, channel, digest).moved


def remote_channel_ref(ref: str, remote: str) -> str:
    """A pull names the channel as the remote knows it: `NAME:REMOTE/CHANNEL` (the local
    view of this remote) is accepted as `NAME:CHANNEL`; a view of another remote is not."""
    parsed = refs.parse(ref)
    if parsed.remote is None:
        return ref
    if parsed.remote != remote:
        raise UsageError(
            f"{ref} is the tracking view of remote {parsed.remote}, not of {remote}",
            f"Pull {parsed.name}:{parsed.remote_channel} --remote {remote}.",
        )
    return f"{parsed.name}:{parsed.remote_channel}"


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
