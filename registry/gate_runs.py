"""Gate-run records: storing them, their place in the audit chain, and their attestations.

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

from registry import audit, dsse, locks
from registry.db import Connection
from registry.digest import canonical_json, hex_of, is_digest, sha256_bytes
from registry.errors import IntegrityError

if TYPE_CHECKING:
    from registry.identity import Identity
    from registry.keys import PublicKey
    from registry.repo import Registry

RUN_COLUMNS = (
    "id, bundle_digest, gate, gate_version, policy_digest, status, metrics, thresholds,"
    " inputs, environment, evidence_digest, error, actor, started_at, ended_at,"
    " record_digest, attestation, signer, origin"
)
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
TEST_RESULT = "https://in-toto.io/attestation/test-result/v0.1"
RUN_DESCRIPTOR = "lora-registry/gate-run"
MAX_TEXT = 1024 * 1024  # a pulled record's JSON fields, each


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
    return conn.execute(
        f"SELECT {RUN_COLUMNS} FROM gate_run WHERE bundle_digest = :b ORDER BY id DESC",
        {"b": bundle_digest},
    ).dicts()


# --- writing ------------------------------------------------------------------------------


@locks.writer("gate run")
def insert(reg: Registry, who: Identity, row: dict[str, Any]) -> int:
    """Insert a gate-run row and its audit event in one transaction; returns the run id.

    `row` holds the gate_run columns but `id` and `record_digest`. A local run by a user
    with a signing key is attested first (the envelope is a blob before the row names it).
    """
    row = {"attestation": None, "signer": None, "origin": "", **row}
    if who.key is not None and not row["origin"]:
        with reg.db.read() as conn:
            tag = conn.execute(
                "SELECT name, version FROM bundle WHERE digest = :d", {"d": row["bundle_digest"]}
            ).first()
        row["signer"] = who.key.id
        envelope = dsse.sign(
            dsse.INTOTO_PAYLOAD_TYPE,
            canonical_json(statement(row, f"{tag[0]}:v{tag[1]}" if tag else "bundle")),
            who.key,
        )
        row["attestation"] = reg.store.put_bytes(canonical_json(envelope)).digest
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


# --- attestations ---------------------------------------------------------------------------


def _sha(digest: str) -> dict[str, str]:
    return {"sha256": hex_of(digest)}


def statement(row: dict[str, Any], subject_name: str) -> dict[str, Any]:
    """The in-toto test-result Statement of a gate run."""
    passed = row["status"] == "passed"
    config: list[dict[str, Any]] = []
    if row["policy_digest"]:
        config.append({"name": "policy", "digest": _sha(row["policy_digest"])})
    inputs = json.loads(row["inputs"] or "{}")
    for rel, digest in sorted(inputs.items()):
        if is_digest(digest):
            config.append({"name": rel, "digest": _sha(digest)})
    run: dict[str, Any] = {
        "name": RUN_DESCRIPTOR,
        "annotations": {
            "gate": row["gate"],
            "gateVersion": str(row["gate_version"]),
            "status": row["status"],
            "policy": row["policy_digest"],
            "metrics": json.loads(row["metrics"] or "{}"),
            "thresholds": json.loads(row["thresholds"] or "{}"),
            "inputs": inputs,
            "environment": json.loads(row["environment"] or "{}"),
            "error": row["error"],
            "actor": row["actor"],
            "startedAt": row["started_at"],
            "endedAt": row["ended_at"],
        },
    }
    if row["evidence_digest"]:
        run["digest"] = _sha(row["evidence_digest"])
    config.append(run)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name, "digest": _sha(row["bundle_digest"])}],
        "predicateType": TEST_RESULT,
        "predicate": {
            "result": "PASSED" if passed else "FAILED",
            "configuration": config,
            "passedTests": [row["gate"]] if passed else [],
            "warnedTests": [],
            "failedTests": [] if passed else [row["gate"]],
        },
    }


@dataclass(frozen=True)
class Attestation:
    digest: str  # of the envelope bytes
    envelope: dict[str, Any]  # parsed (dsse.parse)
    row: dict[str, Any]  # the gate_run columns it records (origin, id unset)


def _text(value: Any, what: str) -> str:
    text = json.dumps(value, sort_keys=True, allow_nan=False)
    if len(text) > MAX_TEXT:
        raise IntegrityError(f"attestation {what} is larger than {MAX_TEXT} bytes")
    return text


def read_attestation(data: bytes, bundle_digest: str, where: str = "attestation") -> Attestation:
    """Parse a gate-run attestation from untrusted bytes (its signature is checked later,
    against the keys a policy trusts)."""
    from registry.digest import check_digest

    env = dsse.parse(data, where)
    if env["payloadType"] != dsse.INTOTO_PAYLOAD_TYPE:
        raise IntegrityError(f"{where} is not an in-toto envelope")
    try:
        st = json.loads(env["payload"])
        if st["_type"] != STATEMENT_TYPE or st["predicateType"] != TEST_RESULT:
            raise ValueError("not a test-result statement")
        subjects = [f"sha256:{s['digest']['sha256']}" for s in st["subject"]]
        if subjects != [bundle_digest]:
            raise IntegrityError(f"{where} is about another bundle ({', '.join(subjects)[:40]})")
        run = next(c for c in st["predicate"]["configuration"] if c["name"] == RUN_DESCRIPTOR)
        a = run["annotations"]
        evidence = f"sha256:{run['digest']['sha256']}" if "digest" in run else None
        row = {
            "bundle_digest": bundle_digest,
            "gate": str(a["gate"])[:64],
            "gate_version": str(a["gateVersion"])[:32],
            "policy_digest": check_digest(a["policy"], "policy") if a["policy"] else None,
            "status": str(a["status"])[:16],
            "metrics": _text(a["metrics"], "metrics"),
            "thresholds": _text(a["thresholds"], "thresholds"),
            "inputs": _text(a["inputs"], "inputs"),
            "environment": _text(a["environment"], "environment"),
            "evidence_digest": check_digest(evidence, "evidence") if evidence else None,
            "error": None if a["error"] is None else str(a["error"])[:MAX_TEXT],
            "actor": str(a["actor"])[:128],
            "started_at": str(a["startedAt"])[:32],
            "ended_at": str(a["endedAt"])[:32],
            "attestation": sha256_bytes(data),
            "signer": env["signatures"][0][0][:32] or None,
        }
    except IntegrityError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration, RecursionError):
        raise IntegrityError(f"{where} is not a gate-run test-result statement") from None
    if row["status"] not in ("passed", "failed", "error"):
        raise IntegrityError(f"{where} has an unknown status {row['status']!r}")
    return Attestation(sha256_bytes(data), env, row)


@locks.writer("pull")
def import_attestation(
    reg: Registry, who: Identity, bundle_digest: str, data: bytes, origin: str
) -> int | None:
    """Record a pulled attestation as a gate run from `origin` (once); returns its id or
    None when this registry already has it."""
    att = read_attestation(data, bundle_digest, f"attestation from {origin}")
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
        rows = conn.execute(
            "SELECT DISTINCT attestation FROM gate_run WHERE bundle_digest = :b"
            " AND attestation IS NOT NULL ORDER BY attestation",
            {"b": bundle_digest},
        ).all()
    return [r[0] for r in rows if is_digest(r[0])]


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
        att = read_attestation(data, row["bundle_digest"])
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
