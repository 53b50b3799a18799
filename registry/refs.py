"""The reference grammar and its resolution to one bundle.

support-bot                 the newest version of a name
support-bot:v3              version tag, assigned in order by `registry add`
support-bot:production      channel (a mutable tag with history)
support-bot:team/production remote-tracking view: what remote `team` said its production
                            channel held at the last pull (read-only; never a destination)
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
from registry.remotes.base import NAME_RE as REMOTE_RE

if TYPE_CHECKING:
    from registry.db import Connection

VERSION_RE = re.compile(r"^v([1-9][0-9]{0,9})\Z")
CHANNEL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}\Z")
PREFIX_RE = re.compile(r"^sha256:([0-9a-f]{8,64})\Z")
MAX_CANDIDATES = 10


@dataclass(frozen=True)
class Ref:
    text: str
    name: str | None = None
    version: int | None = None
    channel: str | None = None
    prefix: str | None = None  # "sha256:<hex>", 8 to 64 hex
    remote: str | None = None  # NAME:REMOTE/CHANNEL: a remote-tracking view (read-only)
    remote_channel: str | None = None  # its CHANNEL; `channel` stays None: not a local one

    @property
    def tag(self) -> str | None:
        if self.remote is not None:
            return f"{self.remote}/{self.remote_channel}"
        return f"v{self.version}" if self.version is not None else self.channel


def check_channel(channel: str) -> str:
    """A local channel name: a plain word; `REMOTE/CHANNEL` views are read-only."""
    if isinstance(channel, str) and "/" in channel:
        raise InvalidReferenceError(
            f"{channel!r} is a remote-tracking view, which is read-only",
            "Promote and rollback move local channels only: use a plain name such as"
            " production (promote NAME:REMOTE/CHANNEL --to CHANNEL adopts a view).",
        )
    if not CHANNEL_RE.match(channel) or VERSION_RE.match(channel):
        raise InvalidReferenceError(
            f"{channel!r} is not a channel name",
            "Channel names are lowercase words like staging or production (not v<N>).",
        )
    return channel


def check_remote(remote: str) -> str:
    if not REMOTE_RE.match(remote):
        raise InvalidReferenceError(f"{remote!r} is not a remote name")
    return remote


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
        if len(m.group(1)) > 18:  # beyond any database integer: no bundle has it
            raise InvalidReferenceError(f"{text!r}: version number too large")
        return Ref(text, name=name, version=int(m.group(1)))
    if CHANNEL_RE.match(tag):
        return Ref(text, name=name, channel=tag)
    remote, slash, channel = tag.partition("/")
    if slash and REMOTE_RE.match(remote) and CHANNEL_RE.match(channel):
        if VERSION_RE.match(channel):
            raise InvalidReferenceError(f"{text!r}: {channel!r} is a version, not a channel")
        return Ref(text, name=name, remote=remote, remote_channel=channel)
    raise InvalidReferenceError(f"{text!r}: {tag!r} is neither a version (v3) nor a channel")


def parse_channel(text: str) -> tuple[str, str]:
    """`name:channel` for commands that act on a channel (rollback, history)."""
    ref = parse(text)
    if ref.remote is not None:
        raise InvalidReferenceError(
            f"{text!r} is a remote-tracking view, which is read-only",
            f"Adopt it with `registry promote {text} --to {ref.remote_channel}`;"
            f" `registry history {text}` shows it.",
        )
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
    if ref.remote is not None:
        row = conn.execute(
            f"SELECT {', '.join('b.' + c for c in BUNDLE_COLUMNS.split(', '))}"
            " FROM remote_channel t JOIN bundle b ON b.digest = t.bundle_digest"
            " WHERE t.name = :n AND t.remote = :r AND t.channel = :c",
            {"n": ref.name, "r": ref.remote, "c": ref.remote_channel},
        ).first()
        if row is None:
            tracking_not_found(conn, ref)
    elif ref.version is not None:
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


def tracking_not_found(conn: Connection, ref: Ref) -> None:
    """Raise for an unknown NAME:REMOTE/CHANNEL, listing the tracking views of the name."""
    known = [
        f"{ref.name}:{r[0]}/{r[1]}"
        for r in conn.execute(
            "SELECT remote, channel FROM remote_channel WHERE name = :n"
            " ORDER BY remote, channel LIMIT :k",
            {"n": ref.name, "k": MAX_CANDIDATES},
        )
    ]
    raise ReferenceNotFoundError(
        f"{ref.text}: no remote-tracking view {ref.tag} of {ref.name}"
        f" (known: {', '.join(known) or 'none'})",
        f"Pulling a channel records one: `registry pull {ref.name}:{ref.remote_channel}"
        f" --remote {ref.remote}`.",
    )
