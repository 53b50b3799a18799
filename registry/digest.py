"""Digests, canonical JSON and the Descriptor that points at content.

A digest is always `sha256:<64 lowercase hex>` of the exact bytes. Canonical JSON is UTF-8,
sorted keys, no insignificant whitespace, so equal content gives an equal digest everywhere.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

ALGORITHM = "sha256"
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
HEX_RE = re.compile(r"^[0-9a-f]+\Z")


def canonical_json(obj: Any) -> bytes:
    """Serialize `obj` as canonical JSON bytes (the form that gets hashed)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    """The digest string of `data`."""
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def is_digest(value: object) -> bool:
    return isinstance(value, str) and bool(_DIGEST_RE.match(value))


def check_digest(value: object, what: str = "digest") -> str:
    """Return `value` if it is a well-formed digest, else raise InvalidInputError."""
    if not is_digest(value):
        from registry.errors import InvalidInputError

        raise InvalidInputError(f"{what} {value!r} is not of the form sha256:<64 hex>")
    return value  # type: ignore[return-value]


def hex_of(digest: str) -> str:
    """The 64 hex characters of a digest."""
    return digest.split(":", 1)[1]


def short(digest: str, n: int = 12) -> str:
    """A digest prefix for display: `sha256:4f2a9c01d3e8`."""
    return digest[: len("sha256:") + n]


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A pointer to content: its digest and size (OCI's descriptor, minus the media type)."""

    digest: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size}

    @classmethod
    def from_dict(cls, data: Any, what: str = "descriptor") -> Descriptor:
        from registry.errors import InvalidInputError

        if not isinstance(data, dict) or set(data) != {"digest", "size"}:
            raise InvalidInputError(f"{what} must be an object with exactly digest and size")
        size = data["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInputError(f"{what} size must be a non-negative integer")
        return cls(check_digest(data["digest"], f"{what} digest"), size)

    def __str__(self) -> str:
        return f"{self.digest} ({self.size} bytes)"
