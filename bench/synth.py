"""Build large registries fast for the benchmarks: real bundles where a command reads
blobs (`add_shared_bundles`: real manifests sharing six components, for verify and gc),
and synthetic bundle rows and audit events (a valid hash chain) for the rest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from registry import audit
from registry.db import now
from registry.digest import Descriptor
from registry.manifest import BundleManifest, ComponentManifest, FileEntry
from registry.repo import Registry


def _insert_bundles(reg: Registry, rows: list[dict], comps: list[dict]) -> None:
    """Bundle rows (:d :n :v :p :s :t :a) and their component rows (:b :k :d :s), at once."""
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
    _insert_bundles(reg, rows, comps)


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


def _put_blob(reg: Registry, data: bytes) -> Descriptor:
    """Write a blob straight into place, read-only, without the store's fsyncs (a throwaway
    benchmark registry needs no durability, and 10,000 fsyncs would dominate its set-up)."""
    desc = Descriptor("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    path = reg.store.path(desc.digest)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, 0o444)
    return desc


SHARED_FILES = {  # kind -> file names: 17 files over six components, as in issue 17's profile
    "base_model": ["config.json", "generation_config.json", "model.safetensors"],
    "adapter": ["adapter_config.json", "adapter_model.safetensors"],
    "tokenizer": ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"],
    "chat_template": ["chat_template.jinja"],
    "dataset": ["data/train.jsonl", "data/valid.jsonl", "dataset_info.json", "README.md"],
    "config": ["training_args.json", "trainer_state.json", "hyperparameters.json", "run.yaml"],
}


def add_shared_bundles(
    reg: Registry, n: int, *, name_count: int = 100, file_size: int = 4096
) -> list[str]:
    """`n` real bundles (manifests in the store, rows in the database) that all share the
    same six component manifests and their 17 small file blobs; each bundle manifest is
    unique (its own annotation). Returns the bundle digests."""
    descs: dict[str, Descriptor] = {}
    for k, (kind, names) in enumerate(SHARED_FILES.items()):
        entries = []
        for p in sorted(names):
            blob = _put_blob(
                reg, hashlib.sha256(f"{kind}/{p}".encode()).digest() * (file_size // 32)
            )
            entries.append(FileEntry(p, blob.digest, blob.size))
        manifest = ComponentManifest(kind, tuple(entries), {"n": k})
        descs[kind] = _put_blob(reg, manifest.to_bytes())
    rows, comps, digests = [], [], []
    versions: dict[str, int] = {}
    t = now()
    for i in range(n):
        name = f"model-{i % name_count:03d}"
        versions[name] = versions.get(name, 0) + 1
        bundle = BundleManifest(name, descs, None, {"build": str(i)})
        desc = _put_blob(reg, bundle.to_bytes())
        digests.append(desc.digest)
        size = 17 * file_size
        rows.append(
            {"d": desc.digest, "n": name, "v": versions[name], "p": None, "s": size, "t": t,
             "a": "bench"}
        )  # fmt: skip
        comps += [
            {"b": desc.digest, "k": kind, "d": c.digest, "s": c.size} for kind, c in descs.items()
        ]
    _insert_bundles(reg, rows, comps)
    return digests


def shared_registry(path: Path, bundles: int) -> Path:
    """A new SQLite registry at `path` holding `bundles` real bundles sharing components."""
    reg = Registry.init(path)
    try:
        add_shared_bundles(reg, bundles)
    finally:
        reg.close()
    return path
