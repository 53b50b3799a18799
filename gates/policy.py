"""Policies checked against the installed gates (registry.policy holds the format).

registry.policy parses a policy file and knows its channel rules; what a gate's keys are,
their defaults and their ranges is known here, from the gate classes the `registry.gates`
entry points name. Everything that runs or sets gates reads policies through this module,
so a typo in a gate name or key is refused before anything is stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gates import catalog
from registry import policy as _policy
from registry.policy import ChannelPolicy, Policy

if TYPE_CHECKING:
    from registry.repo import Registry

__all__ = ["ChannelPolicy", "Policy", "SCHEMA", "current", "load_file", "parse"]


class CatalogSchema:
    """registry.policy.GateSchema from the gate classes (loaded one at a time, cached)."""

    def names(self) -> list[str]:
        return catalog.names()

    def defaults(self, gate: str) -> dict[str, Any]:
        return dict(catalog.load(gate).defaults)

    def check(self, gate: str, params: dict[str, Any]) -> None:
        check = getattr(catalog.load(gate), "check_params", None)
        if check is not None:
            check(params)


SCHEMA = CatalogSchema()


def parse(text: str, root: Path | None, *, check_files: bool = True) -> Policy:
    """Policy TOML, every gate name and key checked (registry.policy.parse)."""
    return _policy.parse(text, root, check_files=check_files, schema=SCHEMA)


def load_file(path: Path) -> Policy:
    return _policy.load_file(path, SCHEMA)


def current(reg: Registry) -> Policy | None:
    """The policy in force, with the gates' defaults for `Policy.params`."""
    return _policy.current(reg, SCHEMA)
