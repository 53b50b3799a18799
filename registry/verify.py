"""Verification: re-derive everything from content, report every bad blob.

`verify` walks what the database references (bundles -> manifests -> files, gate evidence,
policies) and re-hashes each blob; `--all` also re-hashes every blob in the store, so a
corrupt unreferenced blob is reported too. Nothing is repaired here: `registry pull` from a
remote restores missing or corrupt blobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from registry import gate_runs, refs
from registry.digest import Descriptor
from registry.errors import RegistryError
from registry.manifest import BundleManifest, ComponentManifest
from registry.repo import Registry


@dataclass
class Problem:
    digest: str
    reason: str
    where: str


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def bundle_blobs(reg: Registry, digest: str, where: str) -> Iterator[tuple[Descriptor | str, str]]:
    """(descriptor or bare digest, where) for a bundle's manifest, components and files.

    A manifest that cannot be read is yielded as itself, so the caller reports it.
    """
    yield digest, where
    try:
        bundle = BundleManifest.from_bytes(reg.store.read_bytes(digest))
    except RegistryError:
        return
    for kind, desc in bundle.components.items():
        yield desc, f"{where} {kind} manifest"
        try:
            comp = ComponentManifest.from_bytes(reg.store.read_bytes(desc.digest))
        except RegistryError:
            continue
        if comp.external:
            continue
        for f in comp.files:
            yield Descriptor(f.digest, f.size), f"{where} {kind}/{f.path}"


def referenced(reg: Registry, ref: str | None) -> Iterator[tuple[Descriptor | str, str]]:

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
    for digest, where in bundles:
        yield from bundle_blobs(reg, digest, where)
    for digest, where in extra:
        yield digest, where
        if where == "policy":
            yield from policy_blobs(reg, digest)


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


def verify(
    reg: Registry,
    ref: str | None = None,
    *,
    all_blobs: bool = False,
    on_blob: Callable[[int], None] | None = None,
) -> VerifyReport:
    report = VerifyReport()
    seen: set[str] = set()
    for item, where in referenced(reg, ref):
        digest, size = (item.digest, item.size) if isinstance(item, Descriptor) else (item, None)
        if digest in seen:
            continue
        seen.add(digest)
        reason = reg.store.check(digest, size)
        report.checked += 1
        report.bytes += size or 0
        if reason:
            report.problems.append(Problem(digest, reason, where))
        if on_blob:
            on_blob(size or 0)
    if all_blobs:
        for digest in reg.store.iter_digests():
            if digest not in seen:
                seen.add(digest)
                report.checked += 1
                if reason := reg.store.check(digest, None):
                    report.problems.append(Problem(digest, reason, "unreferenced blob"))
    return report
