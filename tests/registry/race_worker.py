"""A process that promotes one bundle after a barrier (for the compare-and-swap race)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def promote_after_barrier(
    reg_path: str, ref: str, channel: str, actor: str, barrier: Any, results: Any
) -> None:
    os.environ.pop("REGISTRY_DATABASE_URL", None)
    from registry import channels
    from registry.errors import ConflictError
    from registry.repo import Registry

    reg = Registry.open(Path(reg_path))
    name = ref.split(":")[0]
    seen = channels.read_state(reg, name, channel)  # what this user looked at
    barrier.wait(timeout=60)
    try:
        res = channels.promote(reg, ref, channel, actor=actor, reason="race", expect=seen)
        results.put(("won", actor, res.to_tag))
    except ConflictError as exc:
        results.put(("lost", actor, str(exc)))
    except Exception as exc:  # anything else is a bug the test must see
        results.put(("error", actor, repr(exc)))
    finally:
        reg.close()
