"""Finding gates: the `registry.gates` entry-point group, loaded one gate at a time.

Built-in gates are declared in this project's pyproject.toml like any team's would be:

    [project.entry-points."registry.gates"]
    my-gate = "my_package.gates:MyGate"
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from registry.errors import GateError, PolicyError

if TYPE_CHECKING:
    from gates.base import Gate

GROUP = "registry.gates"


@cache
def entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points as eps

    return {ep.name: ep for ep in eps(group=GROUP)}


def names() -> list[str]:
    return sorted(entry_points())


@cache
def load(name: str) -> type[Gate]:
    """The gate class `name`. Typed as a Gate subclass: a gate that does not subclass
    Gate must match its attributes (gates.base), which only its `name` is checked for."""
    ep = entry_points().get(name)
    if ep is None:
        known = ", ".join(names())
        raise PolicyError(
            f"unknown gate {name!r} (known gates: {known})",
            "A team's own gates are found through the `registry.gates` entry-point group.",
        )
    try:
        cls: type[Gate] = ep.load()
    except Exception as exc:
        raise GateError(f"gate {name!r} could not be loaded from {ep.value}: {exc}") from exc
    if getattr(cls, "name", None) != name:
        raise GateError(f"entry point {name!r} loads {ep.value}, whose name is not {name!r}")
    return cls
