"""Garbage collection by reachability, with a grace period.

Roots: every bundle (its manifest, component manifests, files and signatures), every gate run's
evidence and signed attestation, every policy an event names. A blob no root reaches is
removed only if it is older than the grace period: a concurrent `add` may have just written
it and not yet inserted the row that references it (adds refresh the mtime of blobs they
reuse).
Stale temp files from interrupted writes are removed under the same rule.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from registry.config import GC_GRACE_SECONDS
from registry.digest import Descriptor
from registry.repo import Registry
from registry.verify import referenced


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    freed: int = 0
    kept_young: int = 0
    temp_removed: int = 0
    dry_run: bool = False


def gc(reg: Registry, *, dry_run: bool = False, grace: float = GC_GRACE_SECONDS) -> GcReport:
    reachable = {
        item.digest if isinstance(item, Descriptor) else item for item, _ in referenced(reg, None)
    }
    report = GcReport(dry_run=dry_run)
    cutoff = time.time() - grace
    for digest in reg.store.iter_digests():
        if digest in reachable:
            continue
        path = reg.store.path(digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_mtime > cutoff:
            report.kept_young += 1
            continue
        report.removed.append(digest)
        report.freed += st.st_size
        if not dry_run:
            reg.store.remove(digest)
    if reg.store.tmp.is_dir():
        for entry in reg.store.tmp.iterdir():
            try:
                if entry.stat().st_mtime <= cutoff:
                    report.temp_removed += 1
                    if not dry_run:
                        os.unlink(entry)
            except FileNotFoundError:
                continue
    return report
