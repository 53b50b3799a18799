"""Verification: re-derive everything from content, report every bad blob.

`verify` walks what the database references (bundles -> manifests -> files, gate evidence,
policies) and re-hashes each blob; `--all` also re-hashes every blob in the store, so a
corrupt unreferenced blob is reported too. Nothing is repaired here: `registry pull` from a
remote restores missing or corrupt blobs.

One run (of verify or gc) reads, hashes and parses each unique manifest once (`Manifests`,
memoized by digest: a content-addressed blob cannot change its meaning), and expands each
unique component manifest into its files once, so 10,000 bundles sharing six components
cost 10,000 bundle manifests plus six, not 70,000. A problem is still reported once per
blob, naming every bundle that references it (`Problem.bundles`).
A file stored as pieces (docs/design.md, "Pieces") is checked by `store.check`: its list,
each piece, and the whole file's sha256; a piece shared by several files is hashed once
per run (the `pieces` memo), the whole file of each always.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from registry import gate_runs, refs
from registry.digest import Descriptor, check_digest
from registry.errors import RegistryError
from registry.manifest import BundleManifest, ComponentManifest
from registry.repo import Registry
from registry.store import BlobStore

SMALL_BLOB = 1 << 20  # read whole and hashed in memory; larger ones stream (store.check)


@dataclass
class Problem:
    digest: str
    reason: str
    where: str
    bundles: list[str] = field(default_factory=list)  # tags of every bundle that names it


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Blob:
    length: int | None  # None: missing
    sound: bool  # its content hashes to its digest
    data: bytes | None  # kept only while it may still be parsed


class Manifests:
    """One run's memo of manifest blobs: each unique digest read, hashed and parsed once.

    Keep one per verify or gc run, never across runs: the memo trusts that a blob it read
    has not changed since, which holds within a run (blobs are write-once) but is exactly
    what a later verify must not assume."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._base = os.fspath(store.root / "sha256")
        self._blobs: dict[str, _Blob] = {}
        self.bundles: dict[str, BundleManifest | None] = {}
        self.components: dict[str, ComponentManifest | None] = {}

    def _read(self, digest: str) -> _Blob:
        blob = self._blobs.get(digest)
        if blob is None:
            try:
                data = read_small(_blob_path(self._base, digest))
            except FileNotFoundError:
                blob = _Blob(None, False, None)
            else:
                sound = f"sha256:{hashlib.sha256(data).hexdigest()}" == digest
                blob = _Blob(len(data), sound, data if sound else None)
            self._blobs[digest] = blob
        return blob

    def reason(self, digest: str, size: int | None) -> str | None:
        """What store.check would say of a blob this memo read (None: sound)."""
        blob = self._read(digest)
        if blob.length is None:
            return "missing"
        if size is not None and blob.length != size:
            return f"size {blob.length} != {size}"
        return None if blob.sound else "corrupt"

    def read(self, digest: str) -> bool:
        """Whether this memo has read the blob (so `reason` costs nothing)."""
        return digest in self._blobs

    def _data(self, digest: str) -> bytes | None:
        blob = self._read(digest)
        data, blob.data = blob.data, None  # parsed once: the bytes are not needed again
        return data

    def load_bundles(self, digests: Iterable[str]) -> None:
        """Read, hash and parse every bundle manifest of `digests` in one tight loop: what
        `bundle` does for each, without its calls, for the 10,000 manifests of one run
        (issue 17: a third of a `verify --all` at 10,000 bundles was calls around them)."""
        blobs, bundles, base = self._blobs, self.bundles, self._base
        parse, sha256 = BundleManifest.from_bytes, hashlib.sha256
        for digest in digests:
            if digest in bundles:
                continue
            if digest in blobs:  # read already, as another kind of blob: parsed from that
                self.bundle(digest)
                continue
            try:
                data = read_small(_blob_path(base, digest))
            except FileNotFoundError:
                blobs[digest], bundles[digest] = _Blob(None, False, None), None
                continue
            sound = sha256(data).hexdigest() == digest[7:]  # _blob_path checked its form
            blobs[digest] = _Blob(len(data), sound, None)
            try:
                bundles[digest] = parse(data) if sound else None
            except RegistryError:
                bundles[digest] = None

    def bundle(self, digest: str) -> BundleManifest | None:
        """The parsed bundle manifest; None if it is missing, corrupt or malformed."""
        if digest not in self.bundles:
            data = self._data(digest)
            try:
                self.bundles[digest] = None if data is None else BundleManifest.from_bytes(data)
            except RegistryError:
                self.bundles[digest] = None
        return self.bundles[digest]

    def component(self, digest: str) -> ComponentManifest | None:
        """The parsed component manifest; None if it is missing, corrupt or malformed."""
        if digest not in self.components:
            data = self._data(digest)
            try:
                comp = None if data is None else ComponentManifest.from_bytes(data)
            except RegistryError:
                comp = None
            self.components[digest] = comp
        return self.components[digest]


def bundle_blobs(
    reg: Registry, digest: str, where: str, memo: Manifests | None = None
) -> Iterator[tuple[Descriptor | str, str]]:
    """(descriptor or bare digest, where) for a bundle's manifest, components and files.

    A manifest that cannot be read is yielded as itself, so the caller reports it. With a
    shared `memo`, a component manifest an earlier bundle of the same run already yielded
    is not yielded again, nor its files (the caller has them).
    """
    memo = memo or Manifests(reg.store)
    bundle = memo.bundle(digest)  # read first, so the caller judges it from the memo
    yield digest, where
    if bundle is not None:
        for kind, desc in bundle.components.items():
            if desc.digest not in memo.components:  # else yielded by an earlier bundle
                yield from _component(memo, kind, desc, where)


def _component(
    memo: Manifests, kind: str, desc: Descriptor, where: str
) -> Iterator[tuple[Descriptor, str]]:
    """A component manifest the memo has not read yet, and its files."""
    comp = memo.component(desc.digest)  # read before it is yielded, as above
    yield desc, f"{where} {kind} manifest"
    if comp is not None and not comp.external:
        for f in comp.files:
            yield Descriptor(f.digest, f.size), f"{where} {kind}/{f.path}"


@dataclass
class _Roots:
    bundles: list[tuple[str, str]]  # (digest, tag)
    extra: list[tuple[str, str]]  # (digest, where): evidence, attestations, policies, signatures


def _roots(reg: Registry, ref: str | None) -> _Roots:
    with reg.db.read() as conn:
        if ref is not None:
            row = refs.resolve(conn, ref)
            bundles = [(row["digest"], f"{row['name']}:v{row['version']}")]
            extra: list[tuple[str, str]] = []
        else:
            bundles = [
                (r[0], f"{r[1]}:v{r[2]}")
                for r in conn.execute(
                    "SELECT digest, name, version FROM bundle ORDER BY name, version"
                )
            ]
            extra = [(d, f"gate run {gate} evidence") for d, gate in gate_runs.evidence_blobs(conn)]
            # signed attestations: a pulled run counts only while its envelope is readable
            extra += [
                (d, f"gate run {gate} attestation") for d, gate in gate_runs.attestation_blobs(conn)
            ]
            extra += [
                (r[0], "policy")
                for r in conn.execute(
                    "SELECT DISTINCT policy_digest FROM event WHERE policy_digest IS NOT NULL"
                )
            ]
        # `registry sign` signatures: checked with their bundle, and kept by gc.
        names = dict(bundles)
        extra += [
            (r[1], f"{names[r[0]]} signature by {r[2]}")
            for r in conn.execute(
                "SELECT bundle_digest, signature_digest, signer FROM bundle_signature"
                " ORDER BY bundle_digest, signer"
            )
            if r[0] in names
        ]
    return _Roots(bundles, extra)


def _walk(
    reg: Registry, roots: _Roots, memo: Manifests, *, bundle_manifests: bool = True
) -> Iterator[tuple[Descriptor | str, str]]:
    """Every blob `roots` reach, each unique manifest read once (`memo`, which has loaded
    the bundle manifests of `roots`: `Manifests.load_bundles`); without `bundle_manifests`
    the bundle manifests themselves are not yielded (the caller judges them from the
    memo, as `verify` does)."""
    for digest, where in roots.bundles:
        if bundle_manifests:
            yield digest, where
        if (bundle := memo.bundles[digest]) is None:
            continue
        for kind, desc in bundle.components.items():  # no generator per bundle: 10,000
            if desc.digest not in memo.components:
                yield from _component(memo, kind, desc, where)
    for digest, where in roots.extra:
        yield digest, where
        if where == "policy":
            yield from policy_blobs(reg, digest)


def referenced(
    reg: Registry, ref: str | None, memo: Manifests | None = None
) -> Iterator[tuple[Descriptor | str, str]]:
    """Every blob the database reaches (of one bundle, or everything), with where from.

    Each unique manifest is read and expanded once per `memo` (one is made if none is
    given), so a blob shared by many bundles is yielded for the first of them only."""
    roots, memo = _roots(reg, ref), memo or Manifests(reg.store)
    memo.load_bundles(d for d, _ in roots.bundles)
    yield from _walk(reg, roots, memo)


def policy_blobs(reg: Registry, digest: str) -> Iterator[tuple[str, str]]:
    """The TOML and eval-set blobs a stored policy manifest names."""
    from registry.untrusted import load_json

    try:
        manifest = load_json(reg.store.read_bytes(digest), f"policy manifest {digest}")
    except (RegistryError, ValueError):
        return
    if isinstance(manifest, dict) and isinstance(manifest.get("policy"), str):
        yield manifest["policy"], "policy text"
        for rel, d in sorted((manifest.get("files") or {}).items()):
            yield d, f"policy file {rel}"


def read_small(path: str) -> bytes:
    """The whole of a small file, by os.open and os.read: about half the cost of `open()`
    and its buffered reader, for the 10,000 manifests one verify run may read. (A read of
    a regular file returns less than asked only at its end; were it ever short, the
    digest check after it would call the blob corrupt, never pass it.)"""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 65536)
        if len(data) == 65536:
            parts = [data]
            while chunk := os.read(fd, 1 << 20):
                parts.append(chunk)
            data = b"".join(parts)
    finally:
        os.close(fd)
    return data


def _blob_path(base: str, digest: str) -> str:
    """store.path as a string (no pathlib objects: this runs once per blob)."""
    h = check_digest(digest)[7:]
    return f"{base}/{h[:2]}/{h}"


def check_blob(
    store: BlobStore, digest: str, size: int | None, pieces: dict[str, str | None] | None = None
) -> str | None:
    """store.check, reading a small blob whole (no 8 MiB stream buffer per blob). A file
    stored as pieces is checked by store.check with `pieces`, the run's memo of piece
    digests already hashed (each shared piece once; each whole file always)."""
    path = _blob_path(os.fspath(store.root / "sha256"), digest)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return store.check(digest, size, memo=pieces)  # pieced, or "missing"
    if size is not None and st.st_size != size:
        return f"size {st.st_size} != {size}"
    if st.st_size > SMALL_BLOB:
        return store.check(digest, size)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "missing"
    return None if f"sha256:{hashlib.sha256(data).hexdigest()}" == digest else "corrupt"


def _referrers(roots: _Roots, memo: Manifests, bad: set[str]) -> dict[str, list[str]]:
    """For each bad digest, the tags of every bundle that names it (its manifest, one of
    its component manifests, or a file of one), from what the memo already parsed."""
    files: dict[str, set[str]] = {}  # component digest -> bad file digests in it
    for cdigest, comp in memo.components.items():
        if comp is not None and not comp.external:
            files[cdigest] = {f.digest for f in comp.files} & bad
    out: dict[str, list[str]] = {d: [] for d in bad}
    for digest, tag in roots.bundles:
        hit: set[str] = {digest} & bad
        bundle = memo.bundles.get(digest)
        for desc in bundle.components.values() if bundle else ():
            if desc.digest in bad:
                hit.add(desc.digest)
            hit |= files.get(desc.digest, set())
        for d in hit:
            out[d].append(tag)
    return out


def verify(reg: Registry, ref: str | None = None, *, all_blobs: bool = False) -> VerifyReport:
    """Re-hash every blob the database reaches (and with `all_blobs` every stored blob);
    each problem once, with the tags of the bundles that reference it."""
    report = VerifyReport()
    seen: set[str] = set()
    memo = Manifests(reg.store)
    pieces: dict[str, str | None] = {}  # piece digest -> reason, hashed once per run
    roots = _roots(reg, ref)
    memo.load_bundles(d for d, _ in roots.bundles)
    problems = report.problems
    for digest, where in roots.bundles:  # judged from the memo's one read of each
        if digest not in seen:
            seen.add(digest)
            if reason := memo.reason(digest, None):
                problems.append(Problem(digest, reason, where))
    report.checked = len(seen)
    for item, where in _walk(reg, roots, memo, bundle_manifests=False):
        digest, size = (item.digest, item.size) if isinstance(item, Descriptor) else (item, None)
        if digest in seen:
            continue
        seen.add(digest)
        # a manifest the walk read is judged from those bytes: hashed once, not twice
        if memo.read(digest):
            reason = memo.reason(digest, size)
        else:
            reason = check_blob(reg.store, digest, size, pieces)
        report.checked += 1
        report.bytes += size or 0
        if reason:
            problems.append(Problem(digest, reason, where))
    if all_blobs:
        seen |= {d for d, reason in pieces.items() if reason is None}  # hashed, sound
        for digest in reg.store.iter_piece_lists():
            if digest not in seen:
                seen.add(digest)
                report.checked += 1
                if reason := reg.store.check(digest, None, memo=pieces):
                    report.problems.append(Problem(digest, reason, "unreferenced pieced file"))
        seen |= set(pieces)
        for digest in reg.store.iter_digests():
            if digest not in seen:
                seen.add(digest)
                report.checked += 1
                if reason := check_blob(reg.store, digest, None):
                    report.problems.append(Problem(digest, reason, "unreferenced blob"))
    if report.problems:
        tags = _referrers(roots, memo, {p.digest for p in report.problems})
        for p in report.problems:
            p.bundles = tags.get(p.digest, [])
    return report
