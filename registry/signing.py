"""Bundle signatures in the OpenSSF model-signing format (`registry sign`, `verify --signed-by`).

A signature vouches for a bundle's exported layout: every file `registry export` writes
(registry.export.plan: component files and the manifests under registry/), each with the
sha256 of its bytes. Those digests are the blob digests the registry already holds, so
signing builds model-signing's manifest from the plan without exporting or re-hashing, and
signs it with model-signing's own elliptic-key signer. The signature (a Sigstore bundle
holding a DSSE envelope of an in-toto statement) is stored as a blob, one per bundle and
key (table `bundle_signature`); `registry export` writes the newest as
DIR/registry/model.sig, so

    python -m model_signing verify key --signature DIR/registry/model.sig \\
        --public_key KEY.pub DIR

checks an exported directory without this project. The serialization parameters recorded
are exactly those model-signing's own hashing records for that directory: files, sha256,
no symlinks, ignoring registry/model.sig and the git paths (as its CLI does by default).

model_signing costs about 0.6 s to import, so it is imported inside the functions here.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, cast

from registry import locks
from registry.errors import IntegrityError, UsageError

if TYPE_CHECKING:
    from registry.identity import Identity
    from registry.keys import PublicKey, SigningKey
    from registry.repo import Registry

HASH_TYPE = "sha256"
_SHOWN = 3  # differing files named in one error line


@functools.cache
def serialization_parameters() -> dict[str, Any]:
    """What model-signing's hashing records for an exported directory, as a dict.

    Taken from the library itself: `hashing.Config()` (file serialization, sha256, no
    symlinks) with registry/model.sig and the git paths ignored, run on an empty
    directory. Only `ignore_paths` is put in sorted order (the library lists a frozenset,
    in an order that changes from process to process), so the statement is stable."""
    from model_signing import hashing

    from registry.export import SIGNATURE_PATH

    with tempfile.TemporaryDirectory(prefix="registry-sign-") as empty:
        params = dict(
            hashing.Config()
            .set_ignored_paths(paths=[SIGNATURE_PATH], ignore_git_paths=True)
            .hash(empty)
            .serialization_type
        )
    if "ignore_paths" in params:
        params["ignore_paths"] = sorted(params["ignore_paths"])
    return params


def build_manifest(model_name: str, plan: dict[str, tuple[str, int]]) -> Any:
    """A model_signing `Manifest` of an export plan (relpath -> (blob digest, size))."""
    from model_signing import manifest
    from model_signing._hashing.hashing import Digest

    from registry.digest import hex_of

    serialization = manifest.SerializationType.from_args(serialization_parameters())
    items = [
        manifest.FileManifestItem(
            path=PurePosixPath(rel), digest=Digest(HASH_TYPE, bytes.fromhex(hex_of(digest)))
        )
        for rel, (digest, _size) in sorted(plan.items())
    ]
    return manifest.Manifest(model_name, items, serialization)


def statement(signature: bytes) -> dict[str, Any]:
    """The in-toto statement a model-signing signature carries (not verified here)."""
    import base64
    import json

    bundle = json.loads(signature)
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def _sign_manifest(manifest: Any, key: SigningKey) -> bytes:
    """Sign with model-signing's elliptic-key signer; the signature file's exact bytes.

    The public `signing.Config().use_elliptic_key_signer(...).sign(dir, sig)` hashes a
    directory; the manifest built here is signed with the same signer class instead."""
    from model_signing._signing import sign_ec_key, sign_sigstore_pb
    from model_signing._signing import signing as ms_signing

    # Signer.sign is declared to return the abstract signing.Signature; the elliptic-key
    # signer returns the Sigstore-bundle one, whose bundle is read here.
    signature = cast(
        sign_sigstore_pb.Signature, sign_ec_key.Signer(key.path).sign(ms_signing.Payload(manifest))
    )
    public_key = signature.bundle.verification_material.public_key  # set by this signer
    hint = public_key.hint if public_key is not None else None
    if hint != hashlib.sha256(key.public.pem).hexdigest():
        raise UsageError(f"signing key {key.path} changed while signing; nothing was signed")
    with tempfile.TemporaryDirectory(prefix="registry-sign-") as tmp:
        path = Path(tmp) / "model.sig"
        signature.write(path)
        return path.read_bytes()


@locks.writer("sign")
def sign(reg: Registry, ref: str, key: SigningKey, who: Identity) -> dict[str, Any]:
    """Sign REF's export layout with `key`; store the signature (replacing this key's)."""
    from registry import refs
    from registry.export import SIGNATURE_PATH, load_plan

    with reg.db.read() as conn:
        row = refs.resolve(conn, ref)
    digest, tag = row["digest"], f"{row['name']}:v{row['version']}"
    plan = load_plan(reg, digest)
    if SIGNATURE_PATH in plan:
        raise UsageError(
            f"cannot sign {tag}: it has a file at {SIGNATURE_PATH}, where the signature goes"
        )
    data = _sign_manifest(build_manifest(row["name"], plan), key)
    sig = reg.store.put_bytes(data)
    at = _record(reg, who, row["name"], digest, key.public, sig.digest, {"signer": key.id}, "")
    return {
        "digest": digest,
        "tag": tag,
        "signer": key.id,
        "signature": sig.digest,
        "files": len(plan),
        "signed_at": at,
    }


def signatures(reg: Registry, digest: str) -> list[dict[str, Any]]:
    """The signatures of a bundle, newest first: signer, signature_digest, created_at, actor."""
    with reg.db.read() as conn:
        return conn.execute(
            "SELECT signer, signature_digest, created_at, actor FROM bundle_signature"
            " WHERE bundle_digest = :d ORDER BY created_at DESC, signer",
            {"d": digest},
        ).dicts()


def _verify_signature(data: bytes, public_key: PublicKey) -> Any:
    """model-signing's elliptic-key verifier on a signature's bytes: the signed Manifest."""
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    with tempfile.TemporaryDirectory(prefix="registry-verify-") as tmp:
        sig_path, key_path = Path(tmp) / "model.sig", Path(tmp) / "key.pub"
        sig_path.write_bytes(data)
        key_path.write_bytes(public_key.pem)
        verifier = sign_ec_key.Verifier(key_path)
        return verifier.verify(sign_sigstore_pb.Signature.read(sig_path))


def manifest_difference(signed: Any, expected: Any) -> str | None:
    """What differs between the signed manifest and the bundle's, in words; None if equal."""
    have = {rd.identifier: rd.digest for rd in signed.resource_descriptors()}
    want = {rd.identifier: rd.digest for rd in expected.resource_descriptors()}

    def listed(paths: list[str]) -> str:
        more = f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else ""
        return ", ".join(paths[:_SHOWN]) + more

    problems = []
    changed = sorted(p for p in have.keys() & want.keys() if have[p] != want[p])
    for p in changed[:_SHOWN]:
        problems.append(
            f"{p} differs (signed {have[p].algorithm}:{have[p].digest_hex[:12]},"
            f" bundle {want[p].algorithm}:{want[p].digest_hex[:12]})"
        )
    if len(changed) > _SHOWN:
        problems.append(f"{len(changed) - _SHOWN} more files differ")
    if missing := sorted(want.keys() - have.keys()):
        problems.append(f"not signed: {listed(missing)}")
    if extra := sorted(have.keys() - want.keys()):
        problems.append(f"signed but not in the bundle: {listed(extra)}")
    ignored = [PurePosixPath(p) for p in signed.serialization_type.get("ignore_paths", [])]
    hidden = sorted(p for p in want if any(PurePosixPath(p).is_relative_to(i) for i in ignored))
    if hidden:
        problems.append(f"the signature ignores bundle files: {listed(hidden)}")
    return "; ".join(problems) or None


def verify(reg: Registry, ref: str, public_key: PublicKey) -> dict[str, Any]:
    """Check that REF carries a valid signature by `public_key` of exactly its layout.

    Raises IntegrityError (one line) when it is not signed by that key, the signature does
    not verify, or the manifest it vouches for is not the bundle's. Blob contents are not
    re-hashed here: `registry verify` does that beside it."""
    from registry import refs

    with reg.db.read() as conn:
        row = refs.resolve(conn, ref)
    digest, tag = row["digest"], f"{row['name']}:v{row['version']}"
    sigs = signatures(reg, digest)
    mine = next((s for s in sigs if s["signer"] == public_key.id), None)
    if mine is None:
        others = sorted(s["signer"] for s in sigs)
        raise IntegrityError(
            f"{tag} is not signed by {public_key.id}"
            + (f" (signed by {', '.join(others)})" if others else " (it has no signatures)"),
            "Sign it with `registry sign REF --key PRIVATE_KEY`.",
        )
    data = reg.store.read_bytes(mine["signature_digest"])  # IntegrityError if tampered with
    files = check_signature(reg, row, data, public_key)
    return {
        "digest": digest,
        "tag": tag,
        "signer": public_key.id,
        "signature": mine["signature_digest"],
        "signed_at": mine["created_at"],
        "signed_by": mine["actor"],
        "files": files,
    }


def check_signature(reg: Registry, row: dict[str, Any], data: bytes, public_key: PublicKey) -> int:
    """What `verify` checks of a signature's bytes for the bundle `row` (digest, name,
    version): signed by `public_key`, a sha256 file manifest of exactly the bundle's
    layout. Raises IntegrityError (one line); returns the number of files it covers."""
    from registry.export import load_plan

    digest, tag = row["digest"], f"{row['name']}:v{row['version']}"
    try:
        signed = _verify_signature(data, public_key)
    except Exception as exc:  # noqa: BLE001  (ValueError, InvalidSignature, malformed JSON)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IntegrityError(
            f"{tag}: the signature by {public_key.id} does not verify ({reason})", ""
        ) from None
    params = signed.serialization_type
    if params.get("method") != "files" or params.get("hash_type") != HASH_TYPE:
        raise IntegrityError(
            f"{tag}: the signature by {public_key.id} is not a sha256 file manifest ({params})",
            "",
        )
    plan = load_plan(reg, digest)
    problem = manifest_difference(signed, build_manifest(row["name"], plan))
    if problem:
        # Signed before export published adapter_config.json with the base identity
        # (docs/remotes.md): such a signature covers the stored bytes at the top instead.
        legacy = load_plan(reg, digest, publish=False)
        if legacy != plan and not manifest_difference(signed, build_manifest(row["name"], legacy)):
            return len(legacy)
    if problem:
        raise IntegrityError(
            f"{tag}: the signature by {public_key.id} does not match the bundle: {problem}", ""
        )
    return len(plan)


@locks.writer("pull")
def import_signature(
    reg: Registry,
    who: Identity,
    bundle_digest: str,
    public_key: PublicKey,
    data: bytes,
    origin: str,
) -> bool:
    """Record a pulled signature of a bundle by `public_key` (untrusted bytes), as `registry
    sign` records one: blob, then the signing_key, bundle_signature and `sign` event in one
    transaction, so `registry audit verify` accounts for it. Only a signature `verify`
    accepts for this bundle is recorded (IntegrityError otherwise). Returns False when this
    registry already holds exactly this signature."""
    from registry.digest import sha256_bytes

    with reg.db.read() as conn:
        row = conn.execute(
            "SELECT digest, name, version FROM bundle WHERE digest = :d", {"d": bundle_digest}
        ).dicts()
        have = conn.execute(
            "SELECT signature_digest FROM bundle_signature WHERE bundle_digest = :b"
            " AND signer = :k",
            {"b": bundle_digest, "k": public_key.id},
        ).scalar()
    if not row:
        raise IntegrityError(f"no bundle {bundle_digest[:19]} here to record a signature of")
    if have == sha256_bytes(data):
        return False
    check_signature(reg, row[0], data, public_key)
    sig = reg.store.put_bytes(data)
    _record(
        reg, who, row[0]["name"], bundle_digest, public_key, sig.digest,
        {"signer": public_key.id, "origin": origin},
        f"signature by {public_key.id} pulled from {origin}",
    )  # fmt: skip
    return True


def _record(
    reg: Registry, who: Identity, name: str, bundle_digest: str, public_key: PublicKey,
    sig_digest: str, detail: dict[str, Any], reason: str,
) -> str:  # fmt: skip
    """The signer's key, the bundle_signature row (replacing this key's) and the `sign`
    event that vouches for it, in one transaction (the blob is already durable)."""
    from registry import audit
    from registry.db import now

    at = now()
    with reg.db.write() as conn:
        conn.execute(
            "INSERT INTO signing_key (id, public_pem, first_seen) VALUES (:id, :pem, :at)"
            " ON CONFLICT (id) DO NOTHING",
            {"id": public_key.id, "pem": public_key.pem.decode("ascii"), "at": at},
        )
        conn.execute(
            "INSERT INTO bundle_signature (bundle_digest, signer, signature_digest, created_at,"
            " actor) VALUES (:b, :k, :s, :at, :a) ON CONFLICT (bundle_digest, signer) DO UPDATE"
            " SET signature_digest = excluded.signature_digest,"
            " created_at = excluded.created_at, actor = excluded.actor",
            {"b": bundle_digest, "k": public_key.id, "s": sig_digest, "at": at, "a": who.user},
        )
        audit.append(
            conn, "sign", who=who, name=name, to_digest=bundle_digest, subject=sig_digest,
            detail=detail, reason=reason,
        )  # fmt: skip
    return at
