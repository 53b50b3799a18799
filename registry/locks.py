"""The gc lock: writers share it, `registry gc` holds it alone (README, "How data is kept safe").

A writer (add, pull, sign, policy set, a gate run's evidence and attestation, `registry
train`'s registration) holds the lock SHARED from before its first blob write until the
database rows that reference those blobs have committed; `gc` holds it EXCLUSIVE for its
whole run. So gc never sees a blob that a writer has stored but not yet referenced, nor a
reused blob a writer is about to reference, nor a writer's temp file.

- Locally: `fcntl.flock` on `locks/gc.lock` in the registry directory. The kernel drops it
  when the holder dies, even by `kill -9`.
- Team mode (PostgreSQL): also a session advisory lock on a fixed key
  (`pg_try_advisory_lock_shared` / `pg_try_advisory_lock`), held on a dedicated
  connection, so a gc on one machine waits for writers on every machine; PostgreSQL drops
  it when the connection ends.

Both sides poll (try-lock, sleep) up to a deadline. A writer waits for a running gc
(`WRITER_WAIT_S`); gc waits for running writers (`--wait`, default `GC_WAIT_S`) and then
refuses with a `LockBusyError` naming the holders. Nothing is deleted without the lock.

Holders record themselves in `locks/holders/<kind>-<host>-<pid>-<n>.json` (pid, host, boot
id, process start time, what, since); the record goes when the lock does. A record whose
process is gone (same host and boot, and no process with that pid, or one that started at
another time: pid reuse) or whose host rebooted is stale, as in restic: gc reports and
removes it. A live one, or one from another host, is never removed. Records are only for
naming holders: the lock itself is the kernel's and the server's.

Reentrant per process and registry directory: nested writers share one holding. A gc in
a process that is itself writing refuses at once instead of waiting on itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from registry.errors import RegistryError

if TYPE_CHECKING:
    from registry.repo import Registry

LOCK_DIR = "locks"
LOCK_FILE = "gc.lock"
HOLDERS_DIR = "holders"
# pg_advisory_lock(int4, int4) key: "LoRA", "gc"; pg_locks shows it as classid/objid.
PG_KEY = (0x4C6F5241, 0x6763)
WRITER_WAIT_S = 600.0
GC_WAIT_S = 60.0
POLL_S = 0.05
START_TOLERANCE_S = 2.0

F = TypeVar("F", bound=Callable[..., Any])


class LockBusyError(RegistryError):
    """The gc lock is held by someone else past the wait."""

    hint = "Try again when they are done."


# --- process identity ----------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


@functools.cache
def boot_id() -> str:
    return (_read("/proc/sys/kernel/random/boot_id") or "").strip()


@functools.cache
def _boot_time() -> float | None:
    for line in (_read("/proc/stat") or "").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


def process_started_at(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), or None where /proc cannot say."""
    stat = _read(f"/proc/{pid}/stat")
    btime = _boot_time()
    if not stat or btime is None:
        return None
    try:
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
    except (IndexError, ValueError):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def hostname() -> str:
    return socket.gethostname()


def process_gone(pid: int, started: float | None, *, since: float | None = None) -> bool:
    """True when no process `pid` that could be the recorded one is running on this host:
    none at all, or one that started at another time (`started`) or after `since`."""
    if not pid_alive(pid):
        return True
    now_started = process_started_at(pid)
    if now_started is None:
        return False
    if started is not None and abs(now_started - started) > START_TOLERANCE_S:
        return True
    return since is not None and now_started > since + START_TOLERANCE_S


# --- holder records ------------------------------------------------------------------------


@dataclass
class Holder:
    kind: str  # "shared" or "exclusive"
    what: str
    pid: int
    host: str
    boot: str
    started: float | None
    since: str
    user: str = ""
    path: Path | None = None  # the record file (local holders)
    where: str = "local"  # "local" or "postgresql"

    def describe(self) -> str:
        return f"{self.what} (pid {self.pid} on {self.host}, since {self.since[:19]})"

    def stale(self) -> bool:
        """Dead for sure: never True for a live holder, nor one on another host."""
        if self.where != "local" or self.host != hostname():
            return False
        if self.boot and boot_id() and self.boot != boot_id():
            return True  # the host rebooted since
        return process_gone(self.pid, self.started)


_counter = itertools.count()


def _holders_dir(root: Path) -> Path:
    return root / LOCK_DIR / HOLDERS_DIR


def _write_record(root: Path, kind: str, what: str) -> Path:
    from registry.config import os_user
    from registry.db import now

    d = _holders_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    host = hostname()
    name = f"{kind}-{host}-{pid}-{next(_counter)}.json"
    data = {
        "kind": kind, "what": what, "pid": pid, "host": host, "boot": boot_id(),
        "started": process_started_at(pid), "since": now(), "user": os_user(),
    }  # fmt: skip
    tmp = d / f".{name}.tmp"
    tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
    os.replace(tmp, d / name)
    return d / name


def read_holders(root: Path) -> list[Holder]:
    """Every holder record in the registry directory (unreadable ones are skipped)."""
    d = _holders_dir(root)
    out: list[Holder] = []
    if not d.is_dir():
        return out
    for entry in sorted(d.glob("*.json")):
        try:
            r = json.loads(entry.read_text(encoding="utf-8"))
            started = float(r["started"]) if r.get("started") is not None else None
            h = Holder(str(r["kind"]), str(r.get("what", "?")), int(r["pid"]), str(r["host"]),
                       str(r.get("boot", "")), started, str(r.get("since", "")),
                       str(r.get("user", "")), entry)  # fmt: skip
            out.append(h)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def clear_stale(root: Path) -> list[Holder]:
    """Remove the records of holders that are certainly dead; returns them."""
    removed = []
    for h in read_holders(root):
        if h.stale() and h.path is not None:
            with contextlib.suppress(FileNotFoundError):
                h.path.unlink()
            removed.append(h)
    return removed


# --- PostgreSQL ----------------------------------------------------------------------------


def _pg_connect(url: str, kind: str, what: str) -> Any:
    import psycopg

    from registry.db import pg_conninfo

    app = f"registry {kind} {what} {hostname()}:{os.getpid()}"[:63]
    try:
        return psycopg.connect(
            pg_conninfo(url), autocommit=True, connect_timeout=10, application_name=app
        )
    except psycopg.OperationalError as exc:
        raise RegistryError(f"cannot connect to PostgreSQL: {str(exc).strip()}") from exc


def _pg_try(conn: Any, exclusive: bool) -> bool:
    fn = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
    return bool(conn.execute(f"SELECT {fn}(%s, %s)", PG_KEY).fetchone()[0])


def pg_holders(conn: Any) -> list[Holder]:
    """The sessions holding the advisory gc lock (their application_name says who)."""
    rows = conn.execute(
        "SELECT l.mode, l.pid, a.application_name, a.client_addr::text, a.backend_start::text,"
        " a.usename FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s"
        " AND l.objsubid = 2 AND l.pid <> pg_backend_pid()",
        PG_KEY,
    ).fetchall()
    out = []
    for mode, pid, app, addr, start, user in rows:
        parts = (app or "").split()
        what, host, cpid = "a session", addr or "?", int(pid)
        if len(parts) >= 4 and parts[0] == "registry":
            what = parts[2]
            host, _, p = parts[3].rpartition(":")
            cpid = int(p) if p.isdigit() else cpid
        kind = "exclusive" if mode == "ExclusiveLock" else "shared"
        out.append(Holder(kind, what, cpid, host, "", None, start or "", user or "",
                          where="postgresql"))  # fmt: skip
    return out


# --- holding -------------------------------------------------------------------------------


@dataclass
class _Held:
    pid: int
    count: int
    fd: int
    pg: Any
    record: Path | None


_held: dict[str, _Held] = {}
_mutex = threading.RLock()


def _key(reg: Registry) -> str:
    return str(Path(reg.root).resolve())


def _lock_fd(root: Path) -> int:
    d = root / LOCK_DIR
    d.mkdir(parents=True, exist_ok=True)
    return os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)


def _busy(reg: Registry, kind: str, conn: Any, waited: float) -> LockBusyError:
    others = "gc" if kind == "shared" else "writers"
    holders = [h for h in read_holders(reg.root) if h.pid != os.getpid() and not h.stale()]
    if conn is not None:
        with contextlib.suppress(Exception):
            holders += pg_holders(conn)
    holders = [h for h in holders if (h.kind == "exclusive") == (kind == "shared")]
    named = "; ".join(dict.fromkeys(h.describe() for h in holders)) or "a process left no record"
    return LockBusyError(f"the registry is locked by {others} after waiting {waited:.0f}s: {named}")


def _acquire(reg: Registry, kind: str, what: str, wait: float) -> _Held:
    exclusive = kind == "exclusive"
    deadline = time.monotonic() + max(0.0, wait)
    t0 = time.monotonic()
    fd = _lock_fd(reg.root)
    conn = None
    told = False
    try:
        op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        while True:
            try:
                fcntl.flock(fd, op)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _busy(reg, kind, None, time.monotonic() - t0) from None
                if not told and not exclusive and time.monotonic() - t0 > 1.0:
                    sys.stderr.write(f"{what}: waiting for a running `registry gc` to finish\n")
                    told = True
                time.sleep(POLL_S)
        if reg.db.postgres:
            conn = _pg_connect(reg.cfg.database_url, kind, what)
            while not _pg_try(conn, exclusive):
                if time.monotonic() >= deadline:
                    raise _busy(reg, kind, conn, time.monotonic() - t0)
                time.sleep(POLL_S)
        record = _write_record(reg.root, kind, what)
    except BaseException:
        if conn is not None:
            conn.close()
        os.close(fd)  # releases the flock
        raise
    return _Held(os.getpid(), 1, fd, conn, record)


def _release(held: _Held) -> None:
    if held.record is not None:
        with contextlib.suppress(FileNotFoundError):
            held.record.unlink()
    if held.pg is not None:
        with contextlib.suppress(Exception):
            held.pg.close()
    os.close(held.fd)


@contextlib.contextmanager
def writing(reg: Registry, what: str = "write", *, wait: float | None = None) -> Iterator[None]:
    """Hold the gc lock shared: from before the first blob write until the rows commit."""
    wait = WRITER_WAIT_S if wait is None else wait
    key = _key(reg)
    with _mutex:
        held = _held.get(key)
        if held is not None and held.pid == os.getpid():
            held.count += 1
        else:
            held = _held[key] = _acquire(reg, "shared", what, wait)
    try:
        yield
    finally:
        with _mutex:
            held.count -= 1
            if held.count == 0:
                _held.pop(key, None)
                _release(held)


def writer(what: str) -> Callable[[F], F]:
    """Decorator: run `f(reg, ...)` (or a method `f(self, reg, ...)`) inside `writing`."""

    def wrap(f: F) -> F:
        @functools.wraps(f)
        def inner(*args: Any, **kwargs: Any) -> Any:
            from registry.repo import Registry

            reg = kwargs.get("reg") or next((a for a in args[:2] if isinstance(a, Registry)), None)
            if reg is None:
                return f(*args, **kwargs)
            with writing(reg, what):
                return f(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


@contextlib.contextmanager
def exclusive(reg: Registry, what: str = "gc", *, wait: float = GC_WAIT_S) -> Iterator[None]:
    """Hold the gc lock alone (gc only); LockBusyError after `wait` seconds."""
    with _mutex:
        held = _held.get(_key(reg))
        if held is not None and held.pid == os.getpid():
            raise LockBusyError(f"{what}: this process is itself writing to the registry")
    got = _acquire(reg, "exclusive", what, wait)
    try:
        yield
    finally:
        _release(got)
