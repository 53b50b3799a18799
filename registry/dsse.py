"""DSSE envelopes (the in-toto attestation wrapper), signed with a registry key.

An envelope is `{"payloadType", "payload" (base64), "signatures": [{"keyid", "sig"}]}`;
what is signed is DSSE's pre-authentication encoding
`DSSEv1 <len(type)> <type> <len(body)> <body>`, so a signature over one payload type
can never be replayed as another. The ECDSA signing itself is `cryptography`'s
(registry.keys); securesystemslib's DSSE verifies these envelopes too (a test checks it).
It is not imported here because it costs about 0.25 s, and a promotion signs its event.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from registry.errors import IntegrityError, InvalidInputError
from registry.keys import PublicKey, SigningKey, public_from_pem
from registry.untrusted import load_json

INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_ENVELOPE = 4 * 1024 * 1024


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign(payload_type: str, payload: bytes, key: SigningKey) -> dict[str, Any]:
    sig = key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": key.id, "sig": base64.b64encode(sig).decode("ascii")}],
    }


def parse(data: bytes, where: str = "envelope") -> dict[str, Any]:
    """A DSSE envelope read from untrusted bytes: shape checked, payload decoded."""
    if len(data) > MAX_ENVELOPE:
        raise IntegrityError(f"{where} is larger than {MAX_ENVELOPE} bytes")
    try:
        env = load_json(data, where, max_bytes=MAX_ENVELOPE)
        payload = base64.b64decode(env["payload"], validate=True)
        sigs = [
            (str(s.get("keyid", "")), base64.b64decode(s["sig"], validate=True))
            for s in env["signatures"]
        ]
        if not isinstance(env["payloadType"], str) or not sigs:
            raise ValueError("no signature")
    except (
        ValueError, KeyError, TypeError, AttributeError, binascii.Error, InvalidInputError
    ):  # fmt: skip
        raise IntegrityError(f"{where} is not a DSSE envelope") from None
    return {"payloadType": env["payloadType"], "payload": payload, "signatures": sigs}


def verify(env: dict[str, Any], key: PublicKey) -> bool:
    """Whether any signature of a parsed envelope is `key`'s over its payload."""
    data = pae(env["payloadType"], env["payload"])
    return any(key.verify(sig, data) for _keyid, sig in env["signatures"])


def public_key_of(pem: str | bytes) -> PublicKey:
    return public_from_pem(pem.encode("ascii") if isinstance(pem, str) else pem)
