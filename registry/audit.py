"""The audit log: append-only events in one hash chain, and its verification.

Each event's digest is the sha256 of the canonical JSON of its fields, which include the
digest of the event before it (`prev`) and its sequence number. Appending locks the single
`audit_head` row (SELECT ... FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already
serializes writers), so the chain never forks. Each channel row also records the digest of
its newest event, so cutting events off the end of the chain is caught too.

What the chain covers (docs/design.md, "Trust"): channel moves, each `policy set`
(`policy` events: the setting must name the newest one's policy), each version tag (`tag`
events: subject = bundle digest, detail = its version) and each gate run (`gate-run`
events: subject = the digest of the run's record, see registry.gate_runs). `verify` checks
that every such row matches an event, so an edited gate status, a swapped policy row or a
re-pointed tag is caught.

A hash chain alone cannot stop someone who can write the database: they can edit an event
and recompute every digest after it. With a signing key configured each event is also
signed (ECDSA P-256 over DSSE's pre-authentication encoding of the event body, which names
the signer); such an edit then breaks a signature that only the key's holder can remake.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry.db import Connection, now
from registry.digest import canonical_json, sha256_bytes
from registry.repo import Registry

if TYPE_CHECKING:
    from registry.identity import Identity
    from registry.keys import PublicKey

EVENT_COLUMNS = (
    "seq, digest, prev, action, name, channel, from_digest, to_digest, actor, reason,"
    " policy_digest, forced, created_at, subject, detail, display, signer, signature"
)
EVENT_PAYLOAD_TYPE = "application/vnd.lora-registry.event+json"
MOVES = ("promote", "rollback", "sync")  # "sync": pulls before remote-tracking views


def event_body(row: dict[str, Any]) -> dict[str, Any]:
    """The hashed (and signed) form of an event, identical on SQLite and PostgreSQL.

    Fields added with the trust work enter the body only when set, so events written
    before them keep their digests."""
    body = {
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
    for key in ("subject", "detail", "display", "signer"):
        if row.get(key):
            body[key] = row[key]
    return body


def signed_bytes(row: dict[str, Any]) -> bytes:
    """What an event's signature covers: DSSE's PAE of its canonical body."""
    from registry.dsse import pae

    return pae(EVENT_PAYLOAD_TYPE, canonical_json(event_body(row)))


def event_digest(row: dict[str, Any]) -> str:
    return sha256_bytes(canonical_json(event_body(row)))


def remember_key(conn: Connection, who: Identity) -> None:
    """Keep the signer's public key (by identity) so anyone can check its signatures."""
    if who.key is None:
        return
    have = conn.execute("SELECT 1 FROM signing_key WHERE id = :i", {"i": who.key.id}).first()
    if have is None:
        conn.execute(
            "INSERT INTO signing_key (id, public_pem, first_seen) VALUES (:i, :p, :t)",
            {"i": who.key.id, "p": who.key.public.pem.decode("ascii"), "t": now()},
        )


def append(
    conn: Connection,
    action: str,
    *,
    who: Identity,
    reason: str = "",
    name: str | None = None,
    channel: str | None = None,
    from_digest: str | None = None,
    to_digest: str | None = None,
    policy_digest: str | None = None,
    forced: bool = False,
    subject: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one event inside the caller's write transaction; returns the stored row.

    The actor is `who.user` (authenticated); `who.display` is kept beside it; with a key
    the event is signed by it."""
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
        "actor": who.user,
        "reason": reason,
        "policy_digest": policy_digest,
        "forced": forced,
        "created_at": now(),
        "subject": subject,
        "detail": canonical_json(detail).decode("utf-8") if detail else "",
        "display": who.display if who.display != who.user else "",
        "signer": who.signer,
        "signature": None,
    }
    row["digest"] = event_digest(row)
    if who.key is not None:
        row["signature"] = base64.b64encode(who.key.sign(signed_bytes(row))).decode("ascii")
        remember_key(conn, who)
    conn.execute(
        "INSERT INTO event (seq, digest, prev, action, name, channel, from_digest, to_digest,"
        " actor, reason, policy_digest, forced, created_at, subject, detail, display, signer,"
        " signature) VALUES (:seq, :digest, :prev, :action, :name, :channel, :from_digest,"
        " :to_digest, :actor, :reason, :policy_digest, :forced, :created_at, :subject,"
        " :detail, :display, :signer, :signature)",
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
    signers: dict[str, int] = field(default_factory=dict)  # key id -> events it signed
    covered: dict[str, int] = field(default_factory=dict)  # gate runs, tags checked

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def signed(self) -> int:
        return sum(self.signers.values())


class _Broken(Exception):
    pass


def events_about(reg: Registry, digest: str) -> list[dict[str, Any]]:
    """Audit events about a bundle (tagged, gated, signed, moved into or out of a channel),
    oldest first, as stored (not verified: `verify` does that)."""
    with reg.db.read() as conn:
        rows = conn.execute(
            "SELECT seq, action, channel, from_digest, to_digest, actor, display, reason,"
            " forced, created_at, signer, detail FROM event WHERE to_digest = :d"
            " OR from_digest = :d OR subject = :d ORDER BY seq",
            {"d": digest},
        ).dicts()
    for r in rows:
        r["forced"] = bool(r["forced"])
    return rows


def verify(
    reg: Registry, *, trusted: set[str] | None = None, require_signed: bool = False
) -> AuditReport:
    """Walk the chain from the first event and check what it covers; report the first
    broken link. `trusted`: key ids whose signatures are accepted (others are reported);
    `require_signed`: an unsigned event is a problem."""
    report = AuditReport(0, 0)
    try:
        with reg.db.read() as conn:
            _verify(reg, conn, report, trusted, require_signed)
    except _Broken as exc:
        report.problem = str(exc)
    return report


def _verify(
    reg: Registry,
    conn: Connection,
    report: AuditReport,
    trusted: set[str] | None,
    require_signed: bool,
) -> None:
    head = conn.execute("SELECT seq, digest FROM audit_head WHERE id = 1").first()
    channels = conn.execute(
        "SELECT name, channel, bundle_digest, head_event FROM channel ORDER BY name, channel"
    ).dicts()
    report.channels = len(channels)
    keys = _KeyRing(conn)
    policies = _PolicyCache(reg)
    prev: str | None = None
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    runs: dict[str, int] = {}  # gate-run record digest -> events naming it
    # (name, version, digest) of the tag events: the version as the event's detail has it
    # (an int, unless the log was edited), so that it can fail to match the database.
    tags: dict[tuple[str, Any, str], int] = {}
    policy_set: str | None = None
    signatures: set[tuple[str, str]] = set()  # (bundle, signature blob) a `sign` recorded
    for r in conn.execute(f"SELECT {EVENT_COLUMNS} FROM event ORDER BY seq").dicts():
        report.events += 1
        where = f"event #{r['seq']} ({r['action']} {r['name'] or ''}:{r['channel'] or ''})"
        if r["seq"] != report.events:
            raise _Broken(f"event #{report.events} is missing (next is #{r['seq']})")
        if r["prev"] != prev:
            raise _Broken(f"{where} does not follow the event before it (deleted or reordered)")
        if event_digest(r) != r["digest"]:
            raise _Broken(f"{where} was edited (digest mismatch)")
        _check_signature(r, where, keys, trusted, require_signed, report)
        prev = r["digest"]
        if r["channel"] is not None and r["action"] in MOVES:
            newest[(r["name"], r["channel"])] = r
            _check_allowed(r, where, policies)
        elif r["action"] == "gate-run" and r["subject"]:
            runs[r["subject"]] = runs.get(r["subject"], 0) + 1
        elif r["action"] == "tag" and r["subject"]:
            version = _detail(r).get("version")
            key = (r["name"], version, r["subject"])
            tags[key] = tags.get(key, 0) + 1
        elif r["action"] == "policy":
            policy_set = r["policy_digest"]
        elif r["action"] == "sign" and r["subject"]:
            signatures.add((r["to_digest"], r["subject"]))
    n = report.events
    if head is None or head.seq != n or head.digest != prev:
        raise _Broken(
            f"the chain ends at event #{n} but its head records #{head.seq if head else '?'}"
            " (events cut off the end)"
        )
    for ch in channels:
        last = newest.get((ch["name"], ch["channel"]))
        label = f"{ch['name']}:{ch['channel']}"
        if last is None or last["digest"] != ch["head_event"]:
            raise _Broken(f"channel {label} records an event the chain does not end with")
        if last["to_digest"] != ch["bundle_digest"]:
            raise _Broken(f"channel {label} points at a bundle its last event did not move it to")
    _check_runs(conn, runs, report)
    _check_tags(conn, tags, report)
    for bundle, signer, sig in conn.execute(
        "SELECT bundle_digest, signer, signature_digest FROM bundle_signature"
    ).all():
        if (bundle, sig) not in signatures:
            raise _Broken(
                f"the signature of {bundle[:19]} by {signer} was not recorded by `registry sign`"
                " (inserted or swapped outside the registry)"
            )
    setting = conn.execute("SELECT value FROM setting WHERE key = 'policy'").scalar()
    if setting != policy_set:
        raise _Broken(
            f"the policy in force ({str(setting)[:19]}) is not the one the last `policy set`"
            f" recorded ({str(policy_set)[:19]}): the policy row was changed outside the registry"
        )


def _detail(row: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(row["detail"] or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _check_signature(
    r: dict[str, Any],
    where: str,
    keys: _KeyRing,
    trusted: set[str] | None,
    require_signed: bool,
    report: AuditReport,
) -> None:
    signer = r["signer"]
    if not signer:
        if require_signed:
            raise _Broken(f"{where} is not signed")
        if r["signature"]:
            raise _Broken(f"{where} carries a signature but names no signer (edited)")
        return
    key = keys.get(signer)
    if key is None:
        raise _Broken(f"{where} is signed by {signer}, whose public key this registry lacks")
    try:
        sig = base64.b64decode(r["signature"] or "", validate=True)
    except (binascii.Error, ValueError):
        sig = b""
    if not sig or not key.verify(sig, signed_bytes(r)):
        raise _Broken(f"{where}: its signature by {signer} does not verify (edited or forged)")
    if trusted is not None and signer not in trusted:
        raise _Broken(f"{where} is signed by {signer}, which is not a trusted key")
    report.signers[signer] = report.signers.get(signer, 0) + 1


def _check_allowed(r: dict[str, Any], where: str, policies: _PolicyCache) -> None:
    """A move must have been allowed by the `actors` of the policy it names."""
    allowed = policies.actors(r["policy_digest"], r["channel"])
    if allowed is None:
        return
    if r["actor"] not in allowed and (r["signer"] or "") not in allowed:
        raise _Broken(
            f"{where} was made by {r['actor']}"
            + (f" ({r['signer']})" if r["signer"] else " (unsigned)")
            + ", whom the policy it names does not allow to move the channel (forged?)"
        )


def _check_runs(conn: Connection, events: dict[str, int], report: AuditReport) -> None:
    from registry import gate_runs

    seen: dict[str, int] = {}
    for row in gate_runs.all_rows(conn):
        digest = gate_runs.record_digest(row)
        seen[digest] = seen.get(digest, 0) + 1
        if seen[digest] > events.get(digest, 0):
            raise _Broken(
                f"gate run #{row['id']} ({row['gate']} {row['status']} on"
                f" {row['bundle_digest'][:19]}) does not match any audited gate-run record"
                " (edited outside the registry)"
            )
    if seen != events:
        raise _Broken("the audit log records a gate run that is no longer in the database")
    report.covered["gate runs"] = sum(seen.values())


def _check_tags(
    conn: Connection, events: dict[tuple[str, Any, str], int], report: AuditReport
) -> None:
    seen: dict[tuple[str, int, str], int] = {}
    for name, version, digest in conn.execute("SELECT name, version, digest FROM bundle").all():
        key = (name, int(version), digest)
        seen[key] = seen.get(key, 0) + 1
        if key not in events:
            raise _Broken(
                f"{name}:v{version} names {digest[:19]}, which no tag event records"
                " (re-pointed outside the registry)"
            )
    if seen != events:
        raise _Broken("the audit log records a version tag that is no longer in the database")
    report.covered["tags"] = len(seen)


class _KeyRing:
    """Public keys by identity, each checked against its id."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.cache: dict[str, PublicKey | None] = {}

    def get(self, key_id: str) -> PublicKey | None:
        if key_id not in self.cache:
            from registry.keys import public_from_pem

            pem = self.conn.execute(
                "SELECT public_pem FROM signing_key WHERE id = :i", {"i": key_id}
            ).scalar()
            key = public_from_pem(pem.encode("ascii")) if pem else None
            self.cache[key_id] = key if key is not None and key.id == key_id else None
        return self.cache[key_id]


class _PolicyCache:
    """Stored policies by digest: which principals may move each channel."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.cache: dict[str, Any] = {}

    def actors(self, digest: str | None, channel: str) -> set[str] | None:
        if not digest:
            return None
        if digest not in self.cache:
            from registry.errors import RegistryError
            from registry.policy import load_stored

            try:
                self.cache[digest] = load_stored(self.reg, digest)
            except (RegistryError, OSError, ValueError, KeyError):
                self.cache[digest] = None  # a policy blob this store lacks: nothing to check
        policy = self.cache[digest]
        if policy is None or channel not in policy.channels:
            return None
        return policy.allowed(channel)
