"""Build large registries fast for the benchmarks: real bundles where a command reads
blobs, and synthetic bundle rows and audit events (a valid hash chain) for the rest."""

from __future__ import annotations

import hashlib
from pathlib import Path

from registry import audit
from registry.db import now
from registry.repo import Registry


def fake_digest(i: int, salt: str) -> str:
    return "sha256:" + hashlib.sha256(f"{salt}-{i}".encode()).hexdigest()


def add_synthetic_bundles(reg: Registry, n: int, *, name_count: int = 100) -> None:
    """`n` bundle rows (with components) spread over `name_count` names."""
    rows, comps = [], []
    versions: dict[str, int] = {}
    t = now()
    for i in range(n):
        name = f"model-{i % name_count:03d}"
        versions[name] = versions.get(name, 0) + 1
        d = fake_digest(i, "bundle")
        rows.append(
            {"d": d, "n": name, "v": versions[name], "p": None, "s": 1000 + i, "t": t, "a": "bench"}
        )
        comps.append({"b": d, "k": "adapter", "d": fake_digest(i, "adapter"), "s": 500})
    with reg.db.write() as conn:
        conn.executemany(
            "INSERT INTO bundle (digest, name, version, parent, size, created_at, created_by)"
            " VALUES (:d, :n, :v, :p, :s, :t, :a)",
            rows,
        )
        conn.executemany(
            "INSERT INTO bundle_component (bundle_digest, kind, digest, size)"
            " VALUES (:b, :k, :d, :s)",
            comps,
        )


def add_synthetic_events(reg: Registry, n: int, digests: list[str]) -> None:
    """`n` promotion events on other channels, chained like real ones."""
    with reg.db.write() as conn:
        head = conn.execute("SELECT seq, digest FROM audit_head WHERE id = 1").first()
        seq, prev = head.seq, head.digest
        batch = []
        for i in range(n):
            seq += 1
            row = {
                "seq": seq,
                "prev": prev,
                "action": "promote",
                "name": f"model-{i % 100:03d}",
                "channel": f"canary{i % 7}",
                "from_digest": digests[i % len(digests)],
                "to_digest": digests[(i + 1) % len(digests)],
                "actor": "bench",
                "reason": "synthetic",
                "policy_digest": None,
                "forced": False,
                "created_at": now(),
            }
            row["digest"] = audit.event_digest(row)
            prev = row["digest"]
            batch.append(row)
        conn.executemany(
            "INSERT INTO event (seq, digest, prev, action, name, channel, from_digest, to_digest,"
            " actor, reason, policy_digest, forced, created_at) VALUES (:seq, :digest, :prev,"
            " :action, :name, :channel, :from_digest, :to_digest, :actor, :reason,"
            " :policy_digest, :forced, :created_at)",
            batch,
        )
        conn.execute(
            "UPDATE audit_head SET seq = :s, digest = :d WHERE id = 1", {"s": seq, "d": prev}
        )


def synthetic_registry(path: Path, bundles: int) -> Path:
    """A new SQLite registry at `path` holding `bundles` synthetic bundles."""
    reg = Registry.init(path)
    try:
        add_synthetic_bundles(reg, bundles)
    finally:
        reg.close()
    return path
