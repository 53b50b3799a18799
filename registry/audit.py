"""The audit log: append-only events in one hash chain, and its verification.

Each event's digest is the sha256 of the canonical JSON of its fields, which include the
digest of the event before it (`prev`) and its sequence number. Appending locks the single
`audit_head` row (SELECT ... FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already
serializes writers), so the chain never forks. Each channel row also records the digest of
its newest event, so cutting events off the end of the chain is caught too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registry.db import Connection, now
from registry.digest import canonical_json, sha256_bytes
from registry.repo import Registry

EVENT_COLUMNS = (
    "seq, digest, prev, action, name, channel, from_digest, to_digest, actor, reason,"
    " policy_digest, forced, created_at"
)


def event_body(row: dict[str, Any]) -> dict[str, Any]:
    """The hashed form of an event (identical on SQLite and PostgreSQL)."""
    return {
        "seq": int(row["seq"]),
        "prev": row["prev"],
        "action": row["action"],
        "name": row["name"],
        "channel": row["channel"],
        "from": row["from_digest"],
        "to": row["to_digest"],
        "actor": row["actor"],
        "reason": row["reason"],
        "policy": row["policy_digest"],
        "forced": bool(row["forced"]),
        "at": row["created_at"],
    }


def event_digest(row: dict[str, Any]) -> str:
    return sha256_bytes(canonical_json(event_body(row)))


def append(
    conn: Connection,
    action: str,
    *,
    actor: str,
    reason: str = "",
    name: str | None = None,
    channel: str | None = None,
    from_digest: str | None = None,
    to_digest: str | None = None,
    policy_digest: str | None = None,
    forced: bool = False,
) -> dict[str, Any]:
    """Append one event inside the caller's write transaction; returns the stored row."""
    lock = " FOR UPDATE" if conn.postgres else ""
    head = conn.execute(f"SELECT seq, digest FROM audit_head WHERE id = 1{lock}").first()
    if head is None:
        from registry.errors import SchemaError

        raise SchemaError("the audit chain has no head row")
    row = {
        "seq": head.seq + 1,
        "prev": head.digest,
        "action": action,
        "name": name,
        "channel": channel,
        "from_digest": from_digest,
        "to_digest": to_digest,
        "actor": actor,
        "reason": reason,
        "policy_digest": policy_digest,
        "forced": forced,
        "created_at": now(),
    }
    row["digest"] = event_digest(row)
    conn.execute(
        "INSERT INTO event (seq, digest, prev, action, name, channel, from_digest, to_digest,"
        " actor, reason, policy_digest, forced, created_at) VALUES (:seq, :digest, :prev,"
        " :action, :name, :channel, :from_digest, :to_digest, :actor, :reason,"
        " :policy_digest, :forced, :created_at)",
        row,
    )
    conn.execute(
        "UPDATE audit_head SET seq = :seq, digest = :digest WHERE id = 1",
        {"seq": row["seq"], "digest": row["digest"]},
    )
    return row


@dataclass
class AuditReport:
    events: int
    channels: int
    problem: str | None = None  # the first broken link, in words

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(reg: Registry) -> AuditReport:
    """Walk the chain from the first event; report the first broken link."""
    with reg.db.read() as conn:
        head = conn.execute("SELECT seq, digest FROM audit_head WHERE id = 1").first()
        channels = conn.execute(
            "SELECT name, channel, bundle_digest, head_event FROM channel ORDER BY name, channel"
        ).dicts()
        prev: str | None = None
        expected_seq = 1
        count = 0
        newest: dict[tuple[str, str], dict[str, Any]] = {}
        for r in conn.execute(f"SELECT {EVENT_COLUMNS} FROM event ORDER BY seq").dicts():
            count += 1
            where = f"event #{r['seq']} ({r['action']} {r['name'] or ''}:{r['channel'] or ''})"
            if r["seq"] != expected_seq:
                return AuditReport(
                    count, len(channels), f"event #{expected_seq} is missing (next is #{r['seq']})"
                )
            if r["prev"] != prev:
                return AuditReport(
                    count,
                    len(channels),
                    f"{where} does not follow the event before it (deleted or reordered event)",
                )
            if event_digest(r) != r["digest"]:
                return AuditReport(count, len(channels), f"{where} was edited (digest mismatch)")
            prev = r["digest"]
            expected_seq += 1
            if r["channel"] is not None and r["action"] in MOVES:
                newest[(r["name"], r["channel"])] = r
    n = count
    if head is None or head.seq != n or head.digest != prev:
        return AuditReport(
            n,
            len(channels),
            f"the chain ends at event #{n} but its head records #{head.seq if head else '?'}"
            " (events cut off the end)",
        )
    for ch in channels:
        key = (ch["name"], ch["channel"])
        last = newest.get(key)
        label = f"{ch['name']}:{ch['channel']}"
        if last is None or last["digest"] != ch["head_event"]:
            return AuditReport(
                n, len(channels), f"channel {label} records an event the chain does not end with"
            )
        if last["to_digest"] != ch["bundle_digest"]:
            return AuditReport(
                n,
                len(channels),
                f"channel {label} points at a bundle its last event did not move it to",
            )
    return AuditReport(n, len(channels))


MOVES = ("promote", "rollback", "sync")
