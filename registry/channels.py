"""Channels: policy-gated promotion, instant rollback, history (compare-and-swap moves).

A channel (`support-bot:production`) points at one bundle of its name. Every move is an
audit event. Moves are compare-and-swap: the caller states what it saw (`Expect`: the
bundle and revision the channel held, or absent); the write transaction locks the channel
row (SELECT ... FOR UPDATE on PostgreSQL; BEGIN IMMEDIATE on SQLite) and refuses the move
with a ConflictError naming the winner if the channel moved in between. Of two concurrent
promotions exactly one wins.

Every move checks who acts against the policy (docs/design.md, "Trust"): the actor is the
authenticated identity (registry.identity), never a display name; a forced move also needs
an admin of the policy. `promote` and `rollback` are the only writers of the channel table:
a pull records a remote-tracking view instead (registry.tracking).

Rollback imports nothing heavy: it needs the database, the store and the policy's
channel section only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry import audit, gate_runs, refs
from registry.db import Connection, DBIntegrityError, now
from registry.errors import BlockedError, ConflictError, IntegrityError, UsageError
from registry.identity import Identity, of
from registry.policy import current as current_policy
from registry.repo import Registry

if TYPE_CHECKING:
    from registry.policy import Policy


@dataclass(frozen=True)
class Expect:
    """What the caller saw: the bundle and revision the channel held (None if empty)."""

    digest: str | None
    revision: int | None


@dataclass
class MoveResult:
    name: str
    channel: str
    action: str
    from_digest: str | None
    to_digest: str
    to_tag: str
    event: str | None  # None when nothing moved (already there)
    forced: bool = False


class GatesBlockedError(BlockedError):
    """Promotion refused: `requirements` says which gates are missing or failed."""

    hint = "Run `registry gates run REF` for the missing gates, or see `registry gates show REF`."

    def __init__(self, message: str, requirements: list[gate_runs.Requirement]) -> None:
        super().__init__(message)
        self.requirements = requirements


def state(conn: Connection, name: str, channel: str, *, lock: bool = False) -> Expect:
    suffix = " FOR UPDATE" if lock and conn.postgres else ""
    row = conn.execute(
        f"SELECT bundle_digest, revision FROM channel WHERE name = :n AND channel = :c{suffix}",
        {"n": name, "c": channel},
    ).first()
    return Expect(row[0], row[1]) if row else Expect(None, None)


def read_state(reg: Registry, name: str, channel: str) -> Expect:
    with reg.db.read() as conn:
        return state(conn, name, channel)


def current(reg: Registry, name: str) -> dict[str, str]:
    """channel -> bundle digest for one bundle name."""
    with reg.db.read() as conn:
        return {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT channel, bundle_digest FROM channel WHERE name = :n ORDER BY channel",
                {"n": name},
            )
        }


def _tag(conn: Connection, digest: str | None) -> str | None:
    if digest is None:
        return None
    row = conn.execute("SELECT name, version FROM bundle WHERE digest = :d", {"d": digest}).first()
    return f"{row[0]}:v{row[1]}" if row else digest[:19]


def _conflict(conn: Connection, name: str, channel: str) -> ConflictError:
    ev = conn.execute(
        "SELECT action, actor, display, to_digest, created_at FROM event"
        " WHERE name = :n AND channel = :c"
        " ORDER BY seq DESC LIMIT 1",
        {"n": name, "c": channel},
    ).first()
    if ev is None:
        return ConflictError(f"{name}:{channel} changed while this move was being made")
    return ConflictError(
        f"{name}:{channel} was moved first:"
        f" {ev.actor}{f' as {ev.display!r}' if ev.display else ''} {ev.action}d it to"
        f" {_tag(conn, ev.to_digest)} at {ev.created_at}"
    )


def _move(
    reg: Registry,
    *,
    action: str,
    name: str,
    channel: str,
    to_digest: str,
    expect: Expect,
    who: Identity,
    reason: str,
    policy_digest: str | None,
    forced: bool,
) -> MoveResult:
    """The compare-and-swap write: check, update (or insert) the channel, append the event."""
    try:
        with reg.db.write() as conn:
            now_state = state(conn, name, channel, lock=True)
            if now_state != expect:
                raise _conflict(conn, name, channel)
            ev = audit.append(
                conn, action, who=who, reason=reason, name=name, channel=channel,
                from_digest=expect.digest, to_digest=to_digest, policy_digest=policy_digest,
                forced=forced,
            )  # fmt: skip
            params = {"n": name, "c": channel, "b": to_digest, "h": ev["digest"], "t": now()}
            if expect.revision is None:
                conn.execute(
                    "INSERT INTO channel (name, channel, bundle_digest, revision, head_event,"
                    " updated_at) VALUES (:n, :c, :b, 1, :h, :t)",
                    params,
                )
            else:
                done = conn.execute(
                    "UPDATE channel SET bundle_digest = :b, revision = revision + 1,"
                    " head_event = :h, updated_at = :t"
                    " WHERE name = :n AND channel = :c AND revision = :r",
                    {**params, "r": expect.revision},
                )
                if done.rowcount != 1:
                    raise _conflict(conn, name, channel)
            to_tag = _tag(conn, to_digest) or to_digest
    except DBIntegrityError:
        # Two first promotions of a new channel raced on PostgreSQL: the insert lost.
        with reg.db.read() as conn:
            raise _conflict(conn, name, channel) from None
    return MoveResult(name, channel, action, expect.digest, to_digest, to_tag, ev["digest"], forced)


def _display_note(who: Identity, allowed: set[str]) -> str:
    if who.display and who.display in allowed:
        return f" ({who.display!r} is only a display name: --actor and $REGISTRY_ACTOR never count)"
    return ""


def check_actor(policy: Policy | None, channel: str, who: Identity, *, forced: bool) -> None:
    """Refuse unless `who` may move `channel`; a forced move also needs an admin."""
    if policy is None:
        return
    if channel in policy.channels:
        allowed = policy.allowed(channel)
        if allowed is not None and not (who.names() & allowed):
            raise BlockedError(
                f"{who.describe()} may not move channel {channel!r} (allowed:"
                f" {', '.join(sorted(allowed))}){_display_note(who, allowed)}",
                "Ask one of them, or change `actors` in the policy.",
            )
    admins = policy.admins()
    if forced and admins is not None and not (who.names() & admins):
        raise BlockedError(
            f"{who.describe()} may not force a move (only admins may:"
            f" {', '.join(sorted(admins))}){_display_note(who, admins)}",
            "Run the missing gates instead, or ask an admin.",
        )


def was_in(conn: Connection, name: str, channel: str, digest: str) -> bool:
    """Whether `digest` was ever moved into `name:channel`."""
    return (
        conn.execute(
            "SELECT 1 FROM event WHERE name = :n AND channel = :c AND to_digest = :d LIMIT 1",
            {"n": name, "c": channel, "d": digest},
        ).first()
        is not None
    )


def check_promotion(
    reg: Registry, ref: str, channel: str, policy: Policy, actor: str | Identity
) -> tuple[dict[str, Any], list[gate_runs.Requirement], list[str]]:
    """The bundle, the gate requirements and any other reasons the move is blocked."""
    refs.check_channel(channel)
    with reg.db.read() as conn:
        bundle = refs.resolve(conn, ref)
        deleted = gate_runs.runs_missing(conn, bundle["digest"])
    ch = policy.channel(channel)
    check_actor(policy, channel, of(reg, actor), forced=False)
    reqs = gate_runs.requirements(reg, bundle["digest"], channel, policy)
    blockers = [f"{r.gate}: {r.status}" for r in reqs if r.status != "passed"]
    if deleted:
        blockers.append(deleted)
    if ch.after is not None:
        with reg.db.read() as conn:
            if not was_in(conn, bundle["name"], ch.after, bundle["digest"]):
                blockers.append(f"not yet in {ch.after} (the policy requires it first)")
    return bundle, reqs, blockers


def promote(
    reg: Registry,
    ref: str,
    channel: str,
    *,
    actor: str | Identity,
    reason: str = "",
    force: bool = False,
    expect: Expect | None = None,
) -> MoveResult:
    """Move `channel` to the bundle `ref` if the policy in force is satisfied.

    `actor` is an Identity, or a display name for this process's authenticated identity.
    """
    who = of(reg, actor)
    policy = current_policy(reg)
    refs.check_channel(channel)
    if policy is None:
        if not force:
            raise BlockedError(
                "no policy is set, so nothing may be promoted",
                "Run `registry policy set POLICY.toml` (or --force --reason).",
            )
        with reg.db.read() as conn:
            bundle = refs.resolve(conn, ref)
        reqs: list[gate_runs.Requirement] = []
        blockers = ["no policy"]
    else:
        bundle, reqs, blockers = check_promotion(reg, ref, channel, policy, who)
    if force and not reason:
        raise UsageError("--force needs --reason: forced moves are recorded with why")
    if force and blockers:
        check_actor(policy, channel, who, forced=True)
    if blockers and not force:
        exc = GatesBlockedError(
            f"{bundle['name']}:v{bundle['version']} may not enter {channel}: "
            + "; ".join(blockers),
            reqs,
        )
        if all(r.status == "passed" for r in reqs) and policy is not None:
            after = policy.channel(channel).after
            exc.hint = f"Promote it to {after} first." if after else exc.hint
        raise exc
    if expect is None:
        expect = read_state(reg, bundle["name"], channel)
    if expect.digest == bundle["digest"]:
        return MoveResult(
            bundle["name"],
            channel,
            "promote",
            expect.digest,
            bundle["digest"],
            f"{bundle['name']}:v{bundle['version']}",
            None,
        )
    return _move(
        reg, action="promote", name=bundle["name"], channel=channel, to_digest=bundle["digest"],
        expect=expect, who=who, reason=reason, forced=bool(force and blockers),
        policy_digest=policy.digest if policy else None,
    )  # fmt: skip


def previous(conn: Connection, name: str, channel: str, digest: str) -> str | None:
    """The bundle the channel held before `digest` was last promoted into it."""
    row = conn.execute(
        "SELECT from_digest FROM event WHERE name = :n AND channel = :c AND to_digest = :d"
        " AND action = 'promote' ORDER BY seq DESC LIMIT 1",
        {"n": name, "c": channel, "d": digest},
    ).first()
    return row[0] if row else None


def rollback(
    reg: Registry,
    target: str,
    *,
    reason: str,
    actor: str | Identity,
    to: str | None = None,
    verify: bool = False,
    force: bool = False,
    expect: Expect | None = None,
) -> MoveResult:
    """Return `name:channel` to the bundle it held before (or `to`), after checking its blobs."""
    who = of(reg, actor)
    forced = False
    if not reason or not reason.strip():
        raise UsageError("rollback needs --reason: say why, it goes in the audit log")
    name, channel = refs.parse_channel(target)
    with reg.db.read() as conn:
        now_state = state(conn, name, channel)
        if now_state.digest is None:
            raise UsageError(f"{name}:{channel} holds no bundle, so there is nothing to roll back")
        if to is not None:
            dest = refs.resolve(conn, to)
            if dest["name"] != name:
                raise UsageError(f"{to} is a bundle of {dest['name']}, not of {name}")
            if not was_in(conn, name, channel, dest["digest"]):
                if not force:
                    raise UsageError(
                        f"{dest['name']}:v{dest['version']} was never in {channel}",
                        "Roll back only to a bundle the channel held, or add --force.",
                    )
                forced = True
            dest_digest = dest["digest"]
        else:
            prev = previous(conn, name, channel, now_state.digest)
            if prev is None:
                raise UsageError(
                    f"{name}:{channel} has no earlier bundle to roll back to",
                    "Use `registry history` to see its moves, or --to REF.",
                )
            dest_digest = prev
        if dest_digest == now_state.digest:
            raise UsageError(f"{name}:{channel} already holds {_tag(conn, dest_digest)}")
    policy = current_policy(reg)
    check_actor(policy, channel, who, forced=forced)
    check_blobs(reg, dest_digest, rehash=verify)
    return _move(
        reg, action="rollback", name=name, channel=channel, to_digest=dest_digest,
        expect=expect or now_state, who=who, reason=reason, forced=forced,
        policy_digest=policy.digest if policy else None,
    )  # fmt: skip


def check_blobs(reg: Registry, digest: str, *, rehash: bool) -> None:
    """Every blob of the bundle present with the right size (and content if `rehash`)."""
    from registry.digest import Descriptor
    from registry.verify import bundle_blobs

    bad = []
    for item, where in bundle_blobs(reg, digest, "bundle"):
        d, size = (item.digest, item.size) if isinstance(item, Descriptor) else (item, None)
        if reason := reg.store.check(d, size, rehash=rehash):
            bad.append(f"{where} ({reason})")
    if bad:
        raise IntegrityError(
            f"cannot roll back to {digest[:19]}: {len(bad)} blob(s) missing or bad: "
            + ", ".join(bad[:3])
            + (" ..." if len(bad) > 3 else ""),
            f"Restore them with `registry pull {digest} --remote NAME`, then roll back again.",
        )


def history(reg: Registry, target: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The moves of `name:channel`, newest first, with version tags."""
    name, channel = refs.parse_channel(target)
    with reg.db.read() as conn:
        exists = conn.execute(
            "SELECT 1 FROM event WHERE name = :n AND channel = :c LIMIT 1",
            {"n": name, "c": channel},
        ).first()
        if exists is None:
            known = [r[0] for r in conn.execute(
                "SELECT DISTINCT channel FROM event WHERE name = :n AND channel IS NOT NULL"
                " ORDER BY channel",
                {"n": name})]  # fmt: skip
            raise UsageError(
                f"{name}:{channel} has no history (channels of {name}:"
                f" {', '.join(known) or 'none'})"
            )
        lim = f" LIMIT {int(limit)}" if limit else ""
        rows = conn.execute(
            "SELECT e.seq, e.digest, e.action, e.from_digest, e.to_digest, e.actor, e.reason,"
            " e.policy_digest, e.forced, e.created_at, e.display, e.signer,"
            " fb.version AS from_version,"
            " tb.version AS to_version FROM event e"
            " LEFT JOIN bundle fb ON fb.digest = e.from_digest"
            " LEFT JOIN bundle tb ON tb.digest = e.to_digest"
            f" WHERE e.name = :n AND e.channel = :c ORDER BY e.seq DESC{lim}",
            {"n": name, "c": channel},
        ).dicts()
    for r in rows:
        r["forced"] = bool(r["forced"])
        r["from_tag"] = f"{name}:v{r['from_version']}" if r["from_version"] else None
        r["to_tag"] = f"{name}:v{r['to_version']}" if r["to_version"] else None
    return rows


def channels_of(reg: Registry, name: str | None = None) -> list[dict[str, Any]]:
    """Every channel (of one name) with its bundle, for the TUI and `ls`."""
    where = " WHERE c.name = :n" if name else ""
    with reg.db.read() as conn:
        return conn.execute(
            "SELECT c.name, c.channel, c.bundle_digest, c.revision, c.updated_at, b.version"
            f" FROM channel c JOIN bundle b ON b.digest = c.bundle_digest{where}"
            " ORDER BY c.name, c.channel",
            {"n": name},
        ).dicts()
