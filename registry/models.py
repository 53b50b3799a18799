"""SQLModel tables: the schema of record.

Alembic's migrations are generated from these classes and a test runs `alembic check`
against them. Commands query through SQLAlchemy Core (see `registry.db`) rather than the
ORM so that a command pays for `import sqlalchemy`, not for `import sqlmodel` (0.25 s vs
0.45 s on this machine): this module is imported by migrations and tests, not by commands.

Timestamps are ISO-8601 UTC strings (`2026-11-29T04:28:55.123456Z`): the same bytes on
SQLite and PostgreSQL, so audit events hash identically on both.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

DIGEST_LEN = 71  # "sha256:" + 64 hex
KEY_ID_LEN = 32  # "key:" + 16 hex, with room


class Bundle(SQLModel, table=True):
    __tablename__ = "bundle"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_bundle_name_version"),
        # every column `registry ls` shows, in name order (migration 0004)
        Index("ix_bundle_listing", "name", "version", "digest", "size", "created_at"),
    )

    digest: str = Field(primary_key=True, max_length=DIGEST_LEN)
    name: str = Field(index=True, max_length=128)
    version: int
    parent: str | None = Field(default=None, max_length=DIGEST_LEN)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))  # bytes of stored files
    created_at: str = Field(max_length=32)
    created_by: str = Field(max_length=128)


class BundleComponent(SQLModel, table=True):
    __tablename__ = "bundle_component"

    bundle_digest: str = Field(primary_key=True, foreign_key="bundle.digest", max_length=DIGEST_LEN)
    kind: str = Field(primary_key=True, max_length=32)
    digest: str = Field(index=True, max_length=DIGEST_LEN)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))


class Channel(SQLModel, table=True):
    __tablename__ = "channel"

    name: str = Field(primary_key=True, max_length=128)
    channel: str = Field(primary_key=True, max_length=64)
    bundle_digest: str = Field(foreign_key="bundle.digest", max_length=DIGEST_LEN)
    revision: int = Field(description="bumped on every move: the compare-and-swap token")
    head_event: str = Field(max_length=DIGEST_LEN, description="digest of the newest event")
    updated_at: str = Field(max_length=32)


class Event(SQLModel, table=True):
    __tablename__ = "event"
    __table_args__ = (Index("ix_event_name_channel", "name", "channel"),)

    seq: int | None = Field(default=None, primary_key=True)
    digest: str = Field(unique=True, max_length=DIGEST_LEN)
    prev: str | None = Field(default=None, max_length=DIGEST_LEN)
    action: str = Field(max_length=32)
    name: str | None = Field(default=None, max_length=128)
    channel: str | None = Field(default=None, max_length=64)
    from_digest: str | None = Field(default=None, max_length=DIGEST_LEN)
    to_digest: str | None = Field(default=None, max_length=DIGEST_LEN)
    actor: str = Field(max_length=128)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    policy_digest: str | None = Field(default=None, max_length=DIGEST_LEN)
    forced: bool = False
    created_at: str = Field(max_length=32)
    # Added in 0002 (docs/design.md, "Trust"): what else an event records, and who signed it.
    subject: str | None = Field(default=None, max_length=DIGEST_LEN)  # digest it vouches for
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    display: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    signer: str | None = Field(default=None, max_length=KEY_ID_LEN)
    signature: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class AuditHead(SQLModel, table=True):
    """One row: the newest event. Appending locks it, which serializes the chain."""

    __tablename__ = "audit_head"

    id: int = Field(primary_key=True)
    seq: int
    digest: str | None = Field(default=None, max_length=DIGEST_LEN)


class GateRun(SQLModel, table=True):
    __tablename__ = "gate_run"

    id: int | None = Field(default=None, primary_key=True)
    bundle_digest: str = Field(index=True, foreign_key="bundle.digest", max_length=DIGEST_LEN)
    gate: str = Field(max_length=64)
    gate_version: str = Field(max_length=32)
    policy_digest: str | None = Field(default=None, max_length=DIGEST_LEN)
    status: str = Field(max_length=16)
    metrics: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    thresholds: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    inputs: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    environment: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    evidence_digest: str | None = Field(default=None, max_length=DIGEST_LEN)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    actor: str = Field(max_length=128)
    started_at: str = Field(max_length=32)
    ended_at: str = Field(max_length=32)
    # Added in 0002: the digest of the run's record (what its audit event vouches for), its
    # signed attestation (a DSSE blob) and signer, and the remote it was pulled from.
    record_digest: str | None = Field(default=None, max_length=DIGEST_LEN)
    attestation: str | None = Field(default=None, max_length=DIGEST_LEN)
    signer: str | None = Field(default=None, max_length=KEY_ID_LEN)
    origin: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class Setting(SQLModel, table=True):
    """Registry-wide values (the policy in force) as key/value rows."""

    __tablename__ = "setting"

    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(sa_column=Column(Text, nullable=False))


class Remote(SQLModel, table=True):
    __tablename__ = "remote"

    name: str = Field(primary_key=True, max_length=64)
    url: str = Field(sa_column=Column(Text, nullable=False))
    options: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class SigningKeyRow(SQLModel, table=True):
    """Public keys that signed something here, by identity (`key:<16 hex>`)."""

    __tablename__ = "signing_key"

    id: str = Field(primary_key=True, max_length=KEY_ID_LEN)
    public_pem: str = Field(sa_column=Column(Text, nullable=False))
    first_seen: str = Field(max_length=32)


class RemoteChannel(SQLModel, table=True):
    """What a remote said a channel held when last pulled: a read-only tracking view."""

    __tablename__ = "remote_channel"

    remote: str = Field(primary_key=True, max_length=64)
    name: str = Field(primary_key=True, max_length=128)
    channel: str = Field(primary_key=True, max_length=64)
    bundle_digest: str = Field(foreign_key="bundle.digest", max_length=DIGEST_LEN)
    fetched_at: str = Field(max_length=32)


class BundleSignature(SQLModel, table=True):
    """A model-signing signature of a bundle's exported layout (the blob holds it)."""

    __tablename__ = "bundle_signature"

    bundle_digest: str = Field(primary_key=True, foreign_key="bundle.digest", max_length=DIGEST_LEN)
    signer: str = Field(primary_key=True, max_length=KEY_ID_LEN)
    signature_digest: str = Field(max_length=DIGEST_LEN)
    created_at: str = Field(max_length=32)
    actor: str = Field(max_length=128)


class Sweep(SQLModel, table=True):
    """A rank sweep (gates/sweep.py): its id is the short digest of its canonical spec."""

    __tablename__ = "sweep"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=128)
    from_digest: str = Field(foreign_key="bundle.digest", max_length=DIGEST_LEN)
    spec: str = Field(sa_column=Column(Text, nullable=False))  # canonical JSON
    created_at: str = Field(max_length=32)
    created_by: str = Field(max_length=128)


class SweepPoint(SQLModel, table=True):
    """The bundle a sweep point (rank, alpha, seed, target modules) was registered as."""

    __tablename__ = "sweep_point"

    sweep_id: str = Field(primary_key=True, foreign_key="sweep.id", max_length=64)
    point: str = Field(primary_key=True, max_length=128)
    bundle_digest: str = Field(foreign_key="bundle.digest", max_length=DIGEST_LEN)
    updated_at: str = Field(max_length=32)
