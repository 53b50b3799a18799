"""Garbage collection by reachability, with a grace period.

Roots: every bundle (its manifest, component manifests, files and signatures), every gate run's
evidence and signed attestation, every policy an event names. A blob no root reaches is
removed only if it is older than the grace period: a concurrent `add` may have just written
it and not yet inserted the row that references it (adds refresh the mtime of blobs they
reuse).
The walk is `registry.verify.referenced`: each unique manifest is read, hashed and parsed
once per run (memoized by digest), so 10,000 bundles sharing components cost their own
10,000 bundle manifests, and a blob reached from any bundle is kept.
Stale temp files from interrupted writes are removed under the same rule, and never one
whose writer (the pid in its name) is still running.
A file stored as pieces keeps its piece list and every piece while it is reachable; an
unreachable piece list goes under the same grace rule, and a piece that no kept piece list
names and no manifest references is garbage like any blob.

gc holds the gc lock exclusive for its whole run and every writer holds it shared from its
first blob write until its rows commit (registry.locks), so the grace period is a second
line of defence, for writers that predate the lock. A grace below `MIN_GRACE_S` needs
`force` and a `reason` (printed and appended to `locks/gc.log`); a negative one is a usage
error.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

from registry import locks
from registry.config import GC_GRACE_SECONDS
from registry.digest import Descriptor
from registry.errors import IntegrityError, UsageError
from registry.repo import Registry
from registry.verify import referenced

MIN_GRACE_S = 60.0


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    freed: int = 0
    kept_young: int = 0
    temp_removed: int = 0
    temp_kept_live: int = 0  # temp files of writers still running
    stale_locks: list[str] = field(default_factory=list)  # records of dead holders, removed
    dry_run: bool = False
    forced: str | None = None  # the reason given for a grace below MIN_GRACE_S
    piece_lists_removed: int = 0  # of `removed`, piece lists of unreachable pieced files


def check_grace(grace: float, *, dry_run: bool, force: bool, reason: str | None) -> None:
    """Refuse a negative grace, and one below MIN_GRACE_S without --force --reason."""
    if not grace >= 0:  # also NaN
        raise UsageError(f"--grace must be 0 or more seconds, not {grace:g}")
    if force and not (reason or "").strip():
        raise UsageError("--force needs --reason TEXT saying why")
    if grace < MIN_GRACE_S and not dry_run and not force:
        raise UsageError(
            f"--grace {grace:g} is below {MIN_GRACE_S:.0f}s, which can delete a blob an"
            " older writer is about to reference",
            "Add --force --reason TEXT if you mean it.",
        )


def gc(
    reg: Registry,
    *,
    dry_run: bool = False,
    grace: float = GC_GRACE_SECONDS,
    force: bool = False,
    reason: str | None = None,
    wait: float = locks.GC_WAIT_S,
) -> GcReport:
    """Remove what nothing reaches, holding the gc lock exclusive (registry.locks)."""
    check_grace(grace, dry_run=dry_run, force=force, reason=reason)
    stale = locks.clear_stale(reg.root) if not dry_run else []
    with locks.exclusive(reg, "gc", wait=wait):
        report = _collect(reg, dry_run=dry_run, grace=grace)
    if not dry_run:
        stale += locks.clear_stale(reg.root)
    report.stale_locks = [h.describe() for h in stale]
    if grace < MIN_GRACE_S and not dry_run:
        report.forced = (reason or "").strip()
    if not dry_run:
        _log(reg, grace, report)
    return report


def _log(reg: Registry, grace: float, report: GcReport) -> None:
    import json

    from registry.config import os_user
    from registry.db import now

    line = {
        "at": now(), "user": os_user(), "host": locks.hostname(), "pid": os.getpid(),
        "grace": grace, "forced": report.forced, "removed": len(report.removed),
        "freed": report.freed, "temp_removed": report.temp_removed,
        "stale_locks": report.stale_locks,
    }  # fmt: skip
    path = reg.root / locks.LOCK_DIR / "gc.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")


def _temp_writer_alive(name: str) -> bool:
    """Whether the process that named this temp file (`PID-TID-NS`) may still write it."""
    parts = name.split("-")
    if len(parts) < 3 or not parts[0].isdigit() or not parts[-1].isdigit():
        return False
    return not locks.process_gone(int(parts[0]), None, since=int(parts[-1]) / 1e9)


def _pieces(reg: Registry, reachable: set[str], cutoff: float, report: GcReport) -> set[str]:
    """Judge every piece list (docs/design.md, "Pieces"): one whose file is reachable, or
    younger than the grace, is kept, and so are all the pieces it names (returned); an
    unreadable one is kept with nothing (verify reports it); the rest are removed."""
    kept: set[str] = set()
    for digest in reg.store.iter_piece_lists():
        path = reg.store.pieces_path(digest)
        try:
            young = path.stat().st_mtime > cutoff
        except FileNotFoundError:
            continue
        if digest in reachable or young:
            report.kept_young += digest not in reachable
            try:
                pl = reg.store.piece_list(digest)
            except IntegrityError:
                continue
            if pl is not None:
                kept.update(p.digest for p in pl.pieces)
            continue
        report.piece_lists_removed += 1
        report.removed.append(digest)
        if not report.dry_run:
            report.freed += reg.store.remove(digest)
        else:
            report.freed += path.stat().st_size
    return kept


def _collect(reg: Registry, *, dry_run: bool, grace: float) -> GcReport:
    reachable = {
        item.digest if isinstance(item, Descriptor) else item for item, _ in referenced(reg, None)
    }
    report = GcReport(dry_run=dry_run)
    cutoff = time.time() - grace
    kept_pieces = _pieces(reg, reachable, cutoff, report)
    for digest in reg.store.iter_digests():
        if digest in reachable or digest in kept_pieces:
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
            with contextlib.suppress(FileNotFoundError):  # the blob, never a piece list
                os.unlink(path)
    if reg.store.tmp.is_dir():
        for entry in reg.store.tmp.iterdir():
            try:
                if entry.stat().st_mtime > cutoff:
                    continue
                if _temp_writer_alive(entry.name):
                    report.temp_kept_live += 1
                else:
                    report.temp_removed += 1
                    if not dry_run:
                        os.unlink(entry)
            except FileNotFoundError:
                continue
    return report
