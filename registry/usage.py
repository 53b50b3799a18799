"""Logical and stored size: what bundles hold against what the store keeps on disk.

A bundle's logical size is the sum of its files (as export writes them; an external base
counts nothing). What it stores is the blobs holding those files: a whole file's blob, or
a pieced file's pieces plus its piece list (docs/design.md, "Pieces"), each blob counted
once however many of the bundle's files share it. A blob only one bundle reaches is
unique to it; the rest are shared. Manifests are not counted (a few KiB a bundle).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from registry import refs
from registry.errors import IntegrityError
from registry.repo import Registry
from registry.verify import Manifests


@dataclass
class BundleUsage:
    tag: str
    digest: str
    logical: int = 0
    stored: int = 0  # unique + shared
    unique: int = 0
    shared: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class StoreUsage:
    bundles: list[BundleUsage] = field(default_factory=list)
    logical: int = 0  # every bundle's logical size, added up
    referenced: int = 0  # the blobs any bundle's files need, each once
    on_disk: int = 0  # everything under blobs/sha256 and blobs/pieces

    @property
    def saving(self) -> int:
        """Bytes the bundles would take as whole, separate copies, minus what they take."""
        return self.logical - self.referenced

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundles": [b.to_dict() for b in self.bundles],
            "total": {
                "bundles": len(self.bundles),
                "logical": self.logical,
                "referenced": self.referenced,
                "on_disk": self.on_disk,
                "saving": self.saving,
            },
        }


def _holders(
    reg: Registry, digest: str, size: int, cache: dict[str, dict[str, int]]
) -> dict[str, int]:
    """{blob key: bytes on disk} holding file `digest`: itself, or its pieces and list."""
    if digest in cache:
        return cache[digest]
    out: dict[str, int] = {}
    if reg.store.path(digest).exists():
        out[digest] = size
    else:
        try:
            pl = reg.store.piece_list(digest)
        except IntegrityError:
            pl = None
        if pl is not None:
            out = {p.digest: p.size for p in pl.pieces}
            out[f"pieces:{digest}"] = len(pl.to_bytes())
    cache[digest] = out
    return out


def _bundle_blobs(
    reg: Registry, memo: Manifests, digest: str, cache: dict[str, dict[str, int]]
) -> tuple[int, dict[str, int]]:
    """(logical size, {blob key: bytes}) of one bundle."""
    logical = 0
    blobs: dict[str, int] = {}
    bundle = memo.bundle(digest)
    for desc in bundle.components.values() if bundle else ():
        comp = memo.component(desc.digest)
        if comp is None or comp.external:
            continue
        for f in comp.files:
            logical += f.size
            blobs.update(_holders(reg, f.digest, f.size, cache))
    return logical, blobs


def stored(reg: Registry, digest: str) -> int:
    """Bytes the blobs of bundle `digest`'s files take on disk (each blob once)."""
    _, blobs = _bundle_blobs(reg, Manifests(reg.store), digest, {})
    return sum(blobs.values())


def _on_disk(reg: Registry) -> int:
    total = 0
    for sub in ("sha256", "pieces"):
        base = reg.store.root / sub
        if not base.is_dir():
            continue
        for shard in os.scandir(base):
            if shard.is_dir():
                total += sum(e.stat().st_size for e in os.scandir(shard.path) if e.is_file())
    return total


def usage(reg: Registry, ref: str | None = None) -> StoreUsage:
    """Per bundle (every one, or `ref`'s) logical, stored, unique and shared bytes, and the
    whole store's logical bytes against the bytes its blobs take."""
    with reg.db.read() as conn:
        rows = [
            (r[0], f"{r[1]}:v{r[2]}")
            for r in conn.execute("SELECT digest, name, version FROM bundle ORDER BY name, version")
        ]
        only = refs.resolve(conn, ref)["digest"] if ref is not None else None
    memo = Manifests(reg.store)
    cache: dict[str, dict[str, int]] = {}
    per: list[tuple[BundleUsage, dict[str, int]]] = []
    owners: dict[str, int] = {}
    sizes: dict[str, int] = {}
    out = StoreUsage()
    for digest, tag in rows:
        logical, blobs = _bundle_blobs(reg, memo, digest, cache)
        out.logical += logical
        for key, n in blobs.items():
            owners[key] = owners.get(key, 0) + 1
            sizes[key] = n
        per.append((BundleUsage(tag, digest, logical), blobs))
    out.referenced = sum(sizes.values())
    out.on_disk = _on_disk(reg)
    for b, blobs in per:
        if only is not None and b.digest != only:
            continue
        for key, n in blobs.items():
            if owners[key] == 1:
                b.unique += n
            else:
                b.shared += n
        b.stored = b.unique + b.shared
        out.bundles.append(b)
    return out
