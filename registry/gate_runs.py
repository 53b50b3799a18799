"""Gate-run records: the one module that reads and writes the `gate_run` table.

Gates (gates.engine) write runs through `insert`; promotion (registry.channels), the
commands, the TUI, verify, gc and sync read them through the functions here: the runs of
a bundle with whether each counts (`runs_for`), a channel's requirements, the blobs runs
name, and the latest status per gate.

Every gate run is one `gate_run` row plus one `gate-run` audit event whose subject is the
digest of the row's record (`record_body`): so `registry audit verify` catches an edited
status or metric, and a promotion refuses a run whose record no event vouches for.

With a signing key configured, a run is also written as an in-toto Statement (predicate
`https://in-toto.io/attestation/test-result/v0.1`; subject: the bundle digest) in a DSSE
envelope signed by the runner's key, stored as a blob. Attestations travel with push and
pull; a pulled one becomes a row with `origin` = the remote. It counts for a promotion
only when a key the channel's `gate_signers` lists signed it (docs/design.md, "Trust").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry import attestations, audit, dsse, locks
from registry.db import Connection
from registry.digest import canonical_json, is_digest, sha256_bytes
from registry.errors import IntegrityError, RegistryError

if TYPE_CHECKING:
    from registry.identity import Identity
    from registry.keys import PublicKey
    from registry.policy import Policy
    from registry.repo import Registry

RUN_COLUMNS = (
    "id, bundle_digest, gate, gate_version, policy_digest, status, metrics, thresholds,"
    " inputs, environment, evidence_digest, error, actor, started_at, ended_at,"
    " record_digest, attestation, signer, origin"
)


def record_body(row: dict[str, Any]) -> dict[str, Any]:
    """What a gate-run event vouches for: every column but the row id and its own digest."""
    return {
        "bundle": row["bundle_digest"],
        "gate": row["gate"],
        "version": str(row["gate_version"]),
        "policy": row["policy_digest"],
        "status": row["status"],
        "metrics": row["metrics"],
        "thresholds": row["thresholds"],
        "inputs": row["inputs"],
        "environment": row["environment"],
        "evidence": row["evidence_digest"],
        "error": row["error"],
        "actor": row["actor"],
        "started": row["started_at"],
        "ended": row["ended_at"],
        "attestation": row.get("attestation"),
        "signer": row.get("signer"),
        "origin": row.get("origin") or "",
    }


def record_digest(row: dict[str, Any]) -> str:
    return sha256_bytes(canonical_json(record_body(row)))


def all_rows(conn: Connection) -> list[dict[str, Any]]:
    return conn.execute(f"SELECT {RUN_COLUMNS} FROM gate_run ORDER BY id").dicts()


def rows_for(conn: Connection, bundle_digest: str) -> list[dict[str, Any]]:
    """A bundle's runs, newest first, as stored (JSON columns as text)."""
    return conn.execute(
        f"SELECT {RUN_COLUMNS} FROM gate_run WHERE bundle_digest = :b ORDER BY id DESC",
        {"b": bundle_digest},
    ).dicts()


def count(conn: Connection, bundle_digest: str) -> int:
    return int(
        conn.execute(
            "SELECT COUNT(*) FROM gate_run WHERE bundle_digest = :b", {"b": bundle_digest}
        ).scalar()
    )


def latest_statuses(conn: Connection, digest: str | None = None) -> dict[str, dict[str, int]]:
    """bundle digest -> {status: count} over the latest run of each gate (of one bundle)."""
    where = " WHERE bundle_digest = :d" if digest else ""
    out: dict[str, dict[str, int]] = {}
    for r in conn.execute(
        "SELECT g.bundle_digest, g.status, COUNT(*) FROM gate_run g JOIN (SELECT MAX(id) AS id"
        f" FROM gate_run{where} GROUP BY bundle_digest, gate) last ON g.id = last.id"
        " GROUP BY g.bundle_digest, g.status",
        {"d": digest},
    ):
        out.setdefault(r[0], {})[r[1]] = r[2]
    return out


def evidence_blobs(
    conn: Connection, bundle_digest: str | None = None, *, origin: str | None = None
) -> list[tuple[str, str]]:
    """(evidence digest, gate) of every run (of one bundle; pulled from `origin`), by id."""
    where, params = ["evidence_digest IS NOT NULL"], {"b": bundle_digest, "o": origin}
    if bundle_digest is not None:
        where.append("bundle_digest = :b")
    if origin is not None:
        where.append("origin = :o")
    rows = conn.execute(
        f"SELECT evidence_digest, gate FROM gate_run WHERE {' AND '.join(where)} ORDER BY id",
        params,
    ).all()
    return [(r[0], r[1]) for r in rows]


def attestation_blobs(conn: Connection, bundle_digest: str | None = None) -> list[tuple[str, str]]:
    """(attestation digest, gate) of every signed run (of one bundle), each digest once."""
    where = " AND bundle_digest = :b" if bundle_digest is not None else ""
    rows = conn.execute(
        "SELECT DISTINCT attestation, gate FROM gate_run WHERE attestation IS NOT NULL"
        f"{where} ORDER BY attestation",
        {"b": bundle_digest},
    ).all()
    return [(r[0], r[1]) for r in rows]


def evidence(reg: Registry, digest: str) -> dict[str, Any]:
    """A run's evidence report (the JSON blob its row names)."""
    return json.loads(reg.store.read_bytes(digest))


# --- writing ------------------------------------------------------------------------------


@locks.writer("gate run")
def insert(reg: Registry, who: Identity, row: dict[str, Any]) -> int:
    """Insert a gate-run row and its audit event in one transaction; returns the run id.

    `row` holds the gate_run columns but `id` and `record_digest`. A local run by a user
    with a signing key is attested first (the envelope is a blob before the row names it).
    """
    row = {"attestation": None, "signer": None, "origin": "", **row}
    if who.key is not None and not row["origin"] and not row["attestation"]:
        row = attest(reg, who.key, row)
    row["record_digest"] = record_digest(row)
    with reg.db.write() as conn:
        name = conn.execute(
            "SELECT name FROM bundle WHERE digest = :d", {"d": row["bundle_digest"]}
        ).scalar()
        conn.execute(
            "INSERT INTO gate_run (bundle_digest, gate, gate_version, policy_digest, status,"
            " metrics, thresholds, inputs, environment, evidence_digest, error, actor,"
            " started_at, ended_at, record_digest, attestation, signer, origin) VALUES"
            " (:bundle_digest, :gate, :gate_version, :policy_digest, :status, :metrics,"
            " :thresholds, :inputs, :environment, :evidence_digest, :error, :actor,"
            " :started_at, :ended_at, :record_digest, :attestation, :signer, :origin)",
            row,
        )
        run_id = int(
            conn.execute(
                "SELECT MAX(id) FROM gate_run WHERE bundle_digest = :b AND gate = :g",
                {"b": row["bundle_digest"], "g": row["gate"]},
            ).scalar()
        )
        detail: dict[str, Any] = {"gate": row["gate"], "status": row["status"], "run": run_id}
        if row["origin"]:
            detail["origin"] = row["origin"]
        audit.append(
            conn, "gate-run", who=who, name=name, to_digest=row["bundle_digest"],
            policy_digest=row["policy_digest"], subject=row["record_digest"], detail=detail,
            reason=f"{row['gate']} {row['status']}"
            + (f" (pulled from {row['origin']})" if row["origin"] else ""),
        )  # fmt: skip
    return run_id


def attest(reg: Registry, key: Any, row: dict[str, Any]) -> dict[str, Any]:
    """`row` signed by `key`: its attestation envelope stored as a blob, the row naming it
    and its signer. Where the gate ran signs: this process, or a Ray worker with its own
    key (gates/cluster.py), whose row the driver then inserts as it is."""
    with reg.db.read() as conn:
        tag = conn.execute(
            "SELECT name, version FROM bundle WHERE digest = :d", {"d": row["bundle_digest"]}
        ).first()
    signed = {**row, "signer": key.id}
    envelope = dsse.sign(
        dsse.INTOTO_PAYLOAD_TYPE,
        canonical_json(attestations.statement(signed, f"{tag[0]}:v{tag[1]}" if tag else "bundle")),
        key,
    )
    signed["attestation"] = reg.store.put_bytes(canonical_json(envelope)).digest
    return signed


# --- attestations ---------------------------------------------------------------------------


@locks.writer("pull")
def import_attestation(
    reg: Registry, who: Identity, bundle_digest: str, data: bytes, origin: str
) -> int | None:
    """Record a pulled attestation as a gate run from `origin` (once); returns its id or
    None when this registry already has it."""
    att = attestations.read(data, bundle_digest, f"attestation from {origin}")
    with reg.db.read() as conn:
        have = conn.execute(
            "SELECT 1 FROM gate_run WHERE attestation = :a LIMIT 1", {"a": att.digest}
        ).first()
    if have is not None:
        return None
    reg.store.put_bytes(data)
    return insert(reg, who, {**att.row, "origin": origin})


def attestations_of(reg: Registry, bundle_digest: str) -> list[str]:
    """Digests of the attestation blobs of a bundle's gate runs (for a push)."""
    with reg.db.read() as conn:
        rows = attestation_blobs(conn, bundle_digest)
    return list(dict.fromkeys(d for d, _gate in rows if is_digest(d)))


# --- does a run count? ------------------------------------------------------------------------


def vouched(conn: Connection, row: dict[str, Any]) -> str | None:
    """Why the audit chain does not vouch for this row (None when it does)."""
    digest = record_digest(row)
    if digest != row["record_digest"]:
        return "its record was edited outside the registry (run `registry audit verify`)"
    ev = conn.execute(
        f"SELECT {audit.EVENT_COLUMNS} FROM event WHERE action = 'gate-run' AND subject = :s"
        " ORDER BY seq DESC LIMIT 1",
        {"s": digest},
    ).dicts()
    if not ev or audit.event_digest(ev[0]) != ev[0]["digest"]:
        return "no intact audit event records it (run `registry audit verify`)"
    return None


def trusted_signer(reg: Registry, row: dict[str, Any], signers: dict[str, PublicKey]) -> str | None:
    """Why a pulled run does not count under these trusted signers (None when it does)."""
    if not row["attestation"]:
        return f"pulled from {row['origin']} without a signature"
    if not signers:
        return (
            f"pulled from {row['origin']}, signed by {row['signer'] or 'an unknown key'}; the"
            " channel trusts no gate signers (`gate_signers` in the policy)"
        )
    try:
        data = reg.store.read_bytes(row["attestation"])
        att = attestations.read(data, row["bundle_digest"])
    except (IntegrityError, OSError) as exc:
        return f"its attestation cannot be read: {exc}"
    key = signers.get(row["signer"] or "")
    if key is None or not dsse.verify(att.envelope, key):
        return (
            f"pulled from {row['origin']}, signed by {row['signer'] or 'an unknown key'},"
            " which the channel's gate_signers do not list"
            if key is None
            else f"pulled from {row['origin']}: its signature does not verify"
        )
    expected = {**att.row, "origin": row["origin"]}
    if record_digest(expected) != record_digest(row):
        return "its row differs from the signed attestation (edited)"
    return None


# --- what counts for a promotion --------------------------------------------------------------


@dataclass
class Requirement:
    gate: str
    status: str  # passed / failed / error / missing
    run_id: int | None = None
    at: str | None = None
    summary: str = ""
    note: str = ""  # runs that do not count, and why (untrusted signer, edited record)
    why: str = ""  # why it blocks, one line (empty when it passed): see `requirements`
    stale: bool = False  # missing because its runs ran under an earlier policy


def _short(digest: str | None) -> str:
    return (digest or "none").removeprefix("sha256:")[:12]


def requirements(reg: Registry, digest: str, channel: str, policy: Policy) -> list[Requirement]:
    """Each gate the channel requires, with the newest run under this policy that counts.

    A run counts when an intact audit event vouches for its record and, if it was pulled
    from a remote, a key in the channel's `gate_signers` signed it. Runs that do not
    count neither pass nor block; the requirement's note says why. `why` says in one line
    why a requirement blocks: its run failed (with the failure line) or could not run
    (with the error), no run counts (the note), its runs are stale (they ran under an
    earlier policy: `stale`), or it never ran."""
    signers = policy.gate_signer_keys(channel)
    out = []
    with reg.db.read() as conn:
        every = rows_for(conn, digest)
        rows = [r for r in every if r["policy_digest"] == policy.digest]
        for gate in policy.channel(channel).require:
            notes: list[str] = []
            chosen = None
            for r in (r for r in rows if r["gate"] == gate):
                why = vouched(conn, r)
                if why is None and r["origin"]:
                    why = trusted_signer(reg, r, signers)
                if why is None:
                    chosen = r
                    break
                notes.append(f"run #{r['id']} does not count: {why}")
            note = "; ".join(notes)
            if chosen is None:
                old = next(
                    (r for r in every
                     if r["gate"] == gate and r["policy_digest"] != policy.digest),
                    None,
                )  # fmt: skip
                if notes:
                    why = note
                elif old is not None:
                    why = (
                        f"stale: run #{old['id']} ({old['status']}) ran under policy"
                        f" {_short(old['policy_digest'])}, not the one in force"
                        f" ({_short(policy.digest)}); run it again"
                    )
                else:
                    why = "never run"
                out.append(Requirement(
                    gate, "missing", note=note, why=why, stale=old is not None and not notes,
                ))  # fmt: skip
            else:
                line = chosen["error"] or _summary(reg, chosen["evidence_digest"]) or ""
                why = ""
                if chosen["status"] != "passed":
                    verb = "failed" if chosen["status"] == "failed" else "could not run"
                    why = f"run #{chosen['id']} {verb}" + (f": {line}" if line else "")
                out.append(Requirement(
                    gate, chosen["status"], chosen["id"], chosen["ended_at"],
                    chosen["error"] or "", note=note, why=why,
                ))  # fmt: skip
    return out


def superseded(runs: list[dict[str, Any]], policy_digest: str | None) -> dict[int, str]:
    """Why each run of a bundle does not count, by run id (runs that count are absent).

    `runs` as `runs_for` gives them (newest first, each with its `trust`). For each gate
    the newest run under `policy_digest` (the policy in force; any policy when None) that
    the audit chain vouches for counts; an older one is "superseded by #N", one under an
    earlier policy "earlier policy", one that cannot count "does not count"."""
    out: dict[int, str] = {}
    counted: dict[str, int] = {}
    for r in runs:
        if policy_digest is not None and r["policy_digest"] != policy_digest:
            out[r["id"]] = "earlier policy"
        elif not r.get("trust", {}).get("counts", True):
            out[r["id"]] = "does not count"
        elif r["gate"] in counted:
            out[r["id"]] = f"superseded by #{counted[r['gate']]}"
        else:
            counted[r["gate"]] = r["id"]
    return out


def runs_missing(conn: Connection, digest: str) -> str | None:
    """Whether gate runs of the bundle were deleted outside the registry."""
    rows = count(conn, digest)
    events = conn.execute(
        "SELECT COUNT(*) FROM event WHERE action = 'gate-run' AND to_digest = :b", {"b": digest}
    ).scalar()
    if rows != events:
        return (
            f"the audit log records {events} gate run(s) of this bundle but the database holds"
            f" {rows} (run `registry audit verify`)"
        )
    return None


def runs_for(reg: Registry, ref: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A bundle's gate runs, newest first, JSON columns parsed (for `registry gates show`,
    the TUI and the Hub's gate-runs.json).

    Each run carries `trust`: whether it can count for a promotion and why not: an edited
    record never counts; a pulled run counts only for the channels whose `gate_signers`
    list its signer."""
    from registry import refs
    from registry.policy import current

    policy = current(reg)
    # each channel's trusted signers, read once (key files from the store), not per run
    signers = {n: policy.gate_signer_keys(n) for n in policy.channels} if policy else {}
    with reg.db.read() as conn:
        row = refs.resolve(conn, ref)
        runs = rows_for(conn, row["digest"])
        for r in runs:
            r["trust"] = _trust(reg, conn, r, signers)
    for r in runs:
        for key in ("metrics", "thresholds", "inputs", "environment"):
            r[key] = json.loads(r[key])
        r["summary"] = _summary(reg, r["evidence_digest"])
    return row, runs


def _trust(
    reg: Registry, conn: Connection, run: dict[str, Any], signers: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    if why := vouched(conn, run):
        return {"counts": False, "why": why}
    if not run["origin"]:
        return {"counts": True, "why": "recorded here"}
    refused = {name: trusted_signer(reg, run, keys) for name, keys in signers.items()}
    counted = [name for name, why in refused.items() if why is None]
    return {
        "counts": bool(counted),
        "why": f"pulled from {run['origin']}, signed by {run['signer'] or 'nobody'}; counts for "
        + (", ".join(counted) or "no channel"),
        "channels": {
            name: why or f"signed by trusted {run['signer']}" for name, why in refused.items()
        },
    }


def _summary(reg: Registry, digest: str | None) -> str | None:
    """A run's one-line summary (figures with their intervals), kept in its evidence."""
    if not digest:
        return None
    try:
        return evidence(reg, digest).get("summary")
    except (RegistryError, OSError, ValueError):
        return None


def latest_of_name(reg: Registry, name: str) -> list[dict[str, Any]]:
    """The latest run of each gate of every version of `name`, oldest version first: its
    version, gate, status and (parsed) metrics and thresholds (the TUI's trend plot)."""
    with reg.db.read() as conn:
        rows = conn.execute(
            "SELECT b.version, g.gate, g.status, g.metrics, g.thresholds FROM gate_run g"
            " JOIN bundle b ON b.digest = g.bundle_digest JOIN (SELECT MAX(id) AS id FROM"
            " gate_run WHERE bundle_digest IN (SELECT digest FROM bundle WHERE name = :n)"
            " GROUP BY bundle_digest, gate) last ON g.id = last.id"
            " ORDER BY b.version, g.gate",
            {"n": name},
        ).dicts()
    for r in rows:
        r["metrics"] = json.loads(r["metrics"])
        r["thresholds"] = json.loads(r["thresholds"])
    return rows
