"""Remote-tracking views: what a remote said a channel held when it was last pulled.

Like git's `origin/main`: `registry pull support-bot:production --remote team` records
`team/production -> <bundle>` in the `remote_channel` table and never touches the local
`channel` table. The view is read-only: `support-bot:team/production` names its bundle
wherever a bundle reference is accepted, so adopting it is an ordinary, policy-gated
`registry promote support-bot:team/production --to production`.

Plain SQL only (no ORM), so `ls`, `history` and `rollback` stay light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry import refs
from registry.db import now
from registry.errors import InvalidReferenceError

if TYPE_CHECKING:
    from registry.db import Connection
    from registry.repo import Registry

# One statement for both databases: SQLite (3.24+) and PostgreSQL share this upsert.
UPSERT = (
    "INSERT INTO remote_channel (remote, name, channel, bundle_digest, fetched_at)"
    " VALUES (:r, :n, :c, :b, :t)"
    " ON CONFLICT (remote, name, channel) DO UPDATE"
    " SET bundle_digest = excluded.bundle_digest, fetched_at = excluded.fetched_at"
)

COLUMNS = (
    "t.remote, t.name, t.channel, t.bundle_digest, t.fetched_at, b.version"
    " FROM remote_channel t JOIN bundle b ON b.digest = t.bundle_digest"
)


@dataclass(frozen=True)
class Recorded:
    """What a pull did to a tracking view."""

    remote: str
    name: str
    channel: str
    digest: str
    previous: str | None  # what the view said before (None: it is new)
    fetched_at: str

    @property
    def view(self) -> str:
        return f"{self.remote}/{self.channel}"

    @property
    def moved(self) -> bool:
        return self.previous != self.digest


def record(reg: Registry, remote: str, name: str, channel: str, digest: str) -> Recorded:
    """Set the tracking view `remote/channel` of `name` to `digest` (the bundle row must
    exist). Writes only `remote_channel`; the local channel and the audit log stay as
    they are."""
    refs.check_remote(remote)
    refs.check_channel(channel)
    at = now()
    with reg.db.write() as conn:
        before = conn.execute(
            "SELECT bundle_digest FROM remote_channel WHERE remote = :r AND name = :n"
            " AND channel = :c",
            {"r": remote, "n": name, "c": channel},
        ).first()
        conn.execute(UPSERT, {"r": remote, "n": name, "c": channel, "b": digest, "t": at})
    return Recorded(remote, name, channel, digest, before[0] if before else None, at)


def _row(r: dict[str, Any]) -> dict[str, Any]:
    r["view"] = f"{r['remote']}/{r['channel']}"
    r["tag"] = f"{r['name']}:v{r['version']}"
    return r


def lookup(conn: Connection, name: str, remote: str, channel: str) -> dict[str, Any] | None:
    """The tracking view of `name` (remote, channel, bundle_digest, fetched_at, tag), or None."""
    rows = conn.execute(
        f"SELECT {COLUMNS} WHERE t.name = :n AND t.remote = :r AND t.channel = :c",
        {"n": name, "r": remote, "c": channel},
    ).dicts()
    return _row(rows[0]) if rows else None


def views(conn: Connection, name: str | None = None) -> list[dict[str, Any]]:
    """Every tracking view (of one name), ordered by name, remote, channel."""
    where = " WHERE t.name = :n" if name else ""
    return [
        _row(r)
        for r in conn.execute(
            f"SELECT {COLUMNS}{where} ORDER BY t.name, t.remote, t.channel", {"n": name}
        ).dicts()
    ]


def list_views(reg: Registry, name: str | None = None) -> list[dict[str, Any]]:
    with reg.db.read() as conn:
        return views(conn, name)


def read(reg: Registry, target: str) -> dict[str, Any]:
    """The tracking view `NAME:REMOTE/CHANNEL` names; an unknown one lists the known ones."""
    ref = refs.parse(target)
    if ref.remote is None or ref.name is None:
        raise InvalidReferenceError(
            f"{target!r} does not name a remote-tracking view", "Use NAME:REMOTE/CHANNEL."
        )
    with reg.db.read() as conn:
        row = lookup(conn, ref.name, ref.remote, ref.remote_channel or "")
        if row is None:
            refs.tracking_not_found(conn, ref)
    assert row is not None
    return row
