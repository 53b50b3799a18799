"""The reference grammar and its resolution to one bundle.

support-bot                 the newest version of a name
support-bot:v3              version tag, assigned in order by `registry add`
support-bot:production      channel (a mutable tag with history)
support-bot@sha256:4f2a...  exact bundle; a unique prefix of 8+ hex is accepted
sha256:4f2a...              exact bundle by digest alone
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry.errors import (
    AmbiguousReferenceError,
    InvalidReferenceError,
    ReferenceNotFoundError,
)
from registry.manifest import NAME_RE

if TYPE_CHECKING:
    from registry.db import Connection

VERSION_RE = re.compile(r"^v([1-9][0-9]{0,9})$")
CHANNEL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
PREFIX_RE = re.compile(r"^sha256:([0-9a-f]{8,64})$")
MAX_CANDIDATES = 10


@dataclass(frozen=True)
class Ref:
    text: str
    name: str | None = None
    version: int | None = None
    channel: str | None = None
    prefix: str | None = None  # "sha256:<hex>", 8 to 64 hex

    @property
    def tag(self) -> str | None:
        return f"v{self.version}" if self.version is not None else self.channel


def check_channel(channel: str) -> str:
    if not CHANNEL_RE.match(channel) or VERSION_RE.match(channel):
        raise InvalidReferenceError(
            f"{channel!r} is not a channel name",
            "Channel names are lowercase words like staging or production (not v<N>).",
        )
    return channel


def parse(text: str) -> Ref:
    if not isinstance(text, str) or not text or len(text) > 300:
        raise InvalidReferenceError(f"invalid reference {text!r}")
    if text.startswith("sha256:"):
        m = PREFIX_RE.match(text)
        if not m:
            raise InvalidReferenceError(f"{text!r}: a digest needs 8 to 64 lowercase hex digits")
        return Ref(text, prefix=text)
    name, sep, rest = text.partition("@")
    if sep:
        digest = rest if rest.startswith("sha256:") else f"sha256:{rest}"
        if not PREFIX_RE.match(digest):
            raise InvalidReferenceError(f"{text!r}: a digest needs 8 to 64 lowercase hex digits")
        return Ref(text, name=_name(name, text), prefix=digest)
    name, sep, tag = text.partition(":")
    name = _name(name, text)
    if not sep:
        return Ref(text, name=name)
    if m := VERSION_RE.match(tag):
        return Ref(text, name=name, version=int(m.group(1)))
    if CHANNEL_RE.match(tag):
        return Ref(text, name=name, channel=tag)
    raise InvalidReferenceError(f"{text!r}: {tag!r} is neither a version (v3) nor a channel")


def parse_channel(text: str) -> tuple[str, str]:
    """`name:channel` for commands that act on a channel (rollback, history)."""
    ref = parse(text)
    if ref.channel is None or ref.name is None:
        raise InvalidReferenceError(f"{text!r} does not name a channel", "Use NAME:CHANNEL.")
    return ref.name, ref.channel


def _name(name: str, text: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidReferenceError(f"{text!r}: {name!r} is not a valid bundle name")
    return name


BUNDLE_COLUMNS = "digest, name, version, parent, size, created_at, created_by"


def resolve(conn: Connection, ref: Ref | str) -> dict[str, Any]:
    """The bundle row a reference names; errors list the candidates."""
    if isinstance(ref, str):
        ref = parse(ref)
    sel = f"SELECT {BUNDLE_COLUMNS} FROM bundle"
    if ref.prefix is not None:
        q = f"{sel} WHERE digest LIKE :p" + (" AND name = :n" if ref.name else "")
        params: dict[str, Any] = {"p": ref.prefix + "%", "n": ref.name}
        found = [r._asdict() for r in conn.execute(q + " LIMIT 11", params)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise ReferenceNotFoundError(f"no bundle matches {ref.text}")
        cands = ", ".join(f"{r['name']}:v{r['version']} {r['digest'][:23]}" for r in found[:10])
        raise AmbiguousReferenceError(f"{ref.text} is ambiguous: {cands}")
    row = None
    if ref.version is not None:
        row = conn.execute(
            f"{sel} WHERE name = :n AND version = :v", {"n": ref.name, "v": ref.version}
        ).first()
    elif ref.channel is not None:
        row = conn.execute(
            f"SELECT {', '.join('b.' + c for c in BUNDLE_COLUMNS.split(', '))} FROM channel c"
            " JOIN bundle b ON b.digest = c.bundle_digest"
            " WHERE c.name = :n AND c.channel = :c",
            {"n": ref.name, "c": ref.channel},
        ).first()
    else:
        row = conn.execute(
            f"{sel} WHERE name = :n ORDER BY version DESC LIMIT 1", {"n": ref.name}
        ).first()
    if row is not None:
        return row._asdict()
    _not_found(conn, ref)
    raise AssertionError("unreachable")


def _not_found(conn: Connection, ref: Ref) -> None:
    exists = conn.execute("SELECT 1 FROM bundle WHERE name = :n LIMIT 1", {"n": ref.name}).first()
    if not exists:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT name FROM bundle ORDER BY name LIMIT :k", {"k": MAX_CANDIDATES}
            )
        ]
        known = ", ".join(names) if names else "none yet"
        raise ReferenceNotFoundError(f"unknown bundle name {ref.name!r} (known: {known})")
    versions = [
        f"v{r[0]}"
        for r in conn.execute(
            "SELECT version FROM bundle WHERE name = :n ORDER BY version DESC LIMIT :k",
            {"n": ref.name, "k": MAX_CANDIDATES},
        )
    ]
    channels = [
        r[0]
        for r in conn.execute(
            "SELECT channel FROM channel WHERE name = :n ORDER BY channel", {"n": ref.name}
        )
    ]
    raise ReferenceNotFoundError(
        f"{ref.text}: no such {'version' if ref.version else 'channel'} of {ref.name}"
        f" (versions: {', '.join(versions)}; channels: {', '.join(channels) or 'none'})"
    )
