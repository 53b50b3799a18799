"""Gate-run attestations: the in-toto test-result Statement of a run, in a DSSE envelope.

With a signing key configured, a gate run is also written as an in-toto Statement
(predicate `https://in-toto.io/attestation/test-result/v0.1`; subject: the bundle digest)
in a DSSE envelope signed by the runner's key, stored as a blob (docs/design.md, "Trust").
This module holds the format only: writing it from a run's row, and reading one from
untrusted bytes back into the row it records. Storing rows, and deciding whether a pulled
run counts, is registry.gate_runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from registry import dsse
from registry.digest import hex_of, is_digest, sha256_bytes
from registry.errors import IntegrityError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
TEST_RESULT = "https://in-toto.io/attestation/test-result/v0.1"
RUN_DESCRIPTOR = "lora-registry/gate-run"
MAX_TEXT = 1024 * 1024  # a pulled record's JSON fields, each


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


def read(data: bytes, bundle_digest: str, where: str = "attestation") -> Attestation:
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
