"""Sweep records: the one module that reads and writes the `sweep` and `sweep_point` tables.

A sweep (gates/sweep.py) trains one bundle per point of a spec. Its id is the short
digest of the spec's canonical JSON, so running the same sweep again finds the same
record. The row keeps the spec; each point's row names the bundle it was registered as,
so `registry sweep show` rebuilds the table later, from any process. The bundles carry
the sweep id in their annotations too (part of their digests): these rows are an index,
not the only record.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from registry.db import now
from registry.digest import canonical_json
from registry.errors import AmbiguousReferenceError, IntegrityError, ReferenceNotFoundError

if TYPE_CHECKING:
    from registry.identity import Identity
    from registry.repo import Registry

MIN_PREFIX = 4


def save(
    reg: Registry,
    sweep_id: str,
    *,
    name: str,
    from_digest: str,
    spec: dict[str, Any],
    actor: str | Identity,
) -> bool:
    """Record a sweep (True) unless it is recorded already (False): the same id must hold
    the same spec."""
    from registry.identity import of

    text = canonical_json(spec).decode("utf-8")
    who = of(reg, actor)
    with reg.db.write() as conn:
        held = conn.execute("SELECT spec FROM sweep WHERE id = :i", {"i": sweep_id}).scalar()
        if held is not None:
            if held != text:
                raise IntegrityError(f"sweep {sweep_id} is recorded with another spec")
            return False
        conn.execute(
            "INSERT INTO sweep (id, name, from_digest, spec, created_at, created_by)"
            " VALUES (:i, :n, :f, :s, :t, :a)",
            {"i": sweep_id, "n": name, "f": from_digest, "s": text, "t": now(), "a": who.user},
        )
    return True


def set_point(reg: Registry, sweep_id: str, point: str, bundle_digest: str) -> None:
    """Name the bundle a point was registered as (a retrained point replaces it)."""
    with reg.db.write() as conn:
        conn.execute(
            "DELETE FROM sweep_point WHERE sweep_id = :i AND point = :p",
            {"i": sweep_id, "p": point},
        )
        conn.execute(
            "INSERT INTO sweep_point (sweep_id, point, bundle_digest, updated_at)"
            " VALUES (:i, :p, :b, :t)",
            {"i": sweep_id, "p": point, "b": bundle_digest, "t": now()},
        )


def load(reg: Registry, ref: str) -> dict[str, Any]:
    """A sweep by id or unique id prefix: id, name, from_digest, spec (parsed), created_at,
    created_by and points (point key -> bundle digest)."""
    ref = ref.strip().lower()
    with reg.db.read() as conn:
        rows = []
        if len(ref) >= MIN_PREFIX:
            rows = conn.execute(
                "SELECT id, name, from_digest, spec, created_at, created_by FROM sweep"
                " WHERE id LIKE :p ORDER BY id",
                {"p": ref.replace("%", "").replace("_", "") + "%"},
            ).dicts()
        if not rows:
            known = [r[0] for r in conn.execute("SELECT id FROM sweep ORDER BY created_at")]
            listed = ", ".join(known[-10:]) or "none yet"
            raise ReferenceNotFoundError(
                f"no sweep {ref!r} (sweeps: {listed})",
                "The sweep id is printed by `registry sweep --from ...`.",
            )
        if len(rows) > 1:
            raise AmbiguousReferenceError(
                f"sweep {ref!r} is ambiguous: {', '.join(r['id'] for r in rows)}",
                "Give more of the sweep id.",
            )
        row = rows[0]
        points = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT point, bundle_digest FROM sweep_point WHERE sweep_id = :i",
                {"i": row["id"]},
            )
        }
    return {**row, "spec": json.loads(row["spec"]), "points": points}
