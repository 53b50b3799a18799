"""The gate protocol: what a gate declares, what it is given, what it returns.

A gate is a small class with a `name`, a `version`, the policy keys it reads (`defaults`,
each with its documented default), the gates it must run after (`after`), and a
`run(ctx)` that returns a GateResult. A gate that raises is recorded as `error` by the
engine, never as a pass. Gates are found through the `registry.gates` entry-point group,
so a team's own package can add gates without editing this project.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from registry.errors import GateError

if TYPE_CHECKING:
    from registry.policy import Policy
    from registry.repo import Registry

PASSED, FAILED, ERROR = "passed", "failed", "error"
STATUSES = (PASSED, FAILED, ERROR)


@dataclass
class GateResult:
    """What a gate found. `evidence` is JSON-able and stored as a blob (the report)."""

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"gate status must be one of {STATUSES}, got {self.status!r}")

    @classmethod
    def check(
        cls,
        failures: list[str],
        metrics: dict[str, Any],
        thresholds: dict[str, Any],
        evidence: dict[str, Any],
        ok_summary: str,
    ) -> GateResult:
        """Passed if `failures` is empty, else failed with the failures as the summary."""
        if failures:
            return cls(FAILED, metrics, thresholds, evidence, summary="; ".join(failures))
        return cls(PASSED, metrics, thresholds, evidence, summary=ok_summary)


@dataclass
class GateContext:
    """Everything a gate may use. `workdir` is the bundle materialized once (export layout)."""

    registry: Registry
    bundle_digest: str
    bundle: dict[str, Any]  # registry.bundles.show(): components with meta and files
    workdir: Path
    policy: Policy
    params: dict[str, Any]  # this gate's policy section, defaults filled in
    channel: str | None = None  # the channel a promotion would move (baselines, rollback)
    progress: Callable[[str], None] = lambda _msg: None
    inputs: dict[str, str] = field(default_factory=dict)  # eval file -> sha256 it read
    results: dict[str, GateResult] = field(default_factory=dict)  # earlier gates, this run

    def component_dir(self, kind: str) -> Path | None:
        """Where a component's files were materialized (None if the bundle lacks it)."""
        from registry.export import layout

        if kind not in self.bundle["components"]:
            return None
        prefix = layout(self.bundle["components"])[kind]
        return self.workdir / prefix if prefix else self.workdir

    def meta(self, kind: str) -> dict[str, Any]:
        comp = self.bundle["components"].get(kind)
        return comp["meta"] if comp else {}

    def input_file(self, relpath: str) -> Path:
        """An eval set named by the policy; its digest is recorded in the gate run."""
        path = self.policy.file(relpath)
        self.inputs[relpath] = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        return path


class Gate:
    """Base class for gates (subclass it, or match the same attributes)."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    defaults: ClassVar[dict[str, Any]] = {}
    after: ClassVar[tuple[str, ...]] = ()
    needs_model: ClassVar[bool] = False
    description: ClassVar[str] = ""

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Check the policy's values for this gate (defaults filled in) beyond their types;
        raise PolicyError naming the key. Called when a policy is parsed."""

    def run(self, ctx: GateContext) -> GateResult:  # pragma: no cover - interface
        raise NotImplementedError


def require_component(ctx: GateContext, kind: str) -> Path:
    path = ctx.component_dir(kind)
    if path is None:
        raise GateError(f"the bundle has no {kind} component, which gate needs")
    return path


def bundle_adaptation(bundle: dict[str, Any]) -> str:
    """How the bundle adapts its base (`lora`, `qlora`, `ia3`, `prompt_tuning`, `full`,
    ...), as `registry show` prints it (registry.bundles.adaptation)."""
    if bundle.get("adaptation"):
        return str(bundle["adaptation"])
    from registry.bundles import adaptation

    return adaptation(bundle["components"], bundle.get("annotations") or {})


def not_applicable(ctx: GateContext, what: str, why: str) -> GateResult:
    """The result of a gate that does not apply to how this bundle adapts its base: a
    failure (never a pass; not an error a retry could fix) whose summary starts with
    "not applicable:", says what the gate does and names the adaptation."""
    kind = bundle_adaptation(ctx.bundle)
    summary = f"not applicable: {what}; this bundle adapts its base by {kind}: {why}"
    evidence = {"applicable": False, "adaptation": kind, "reason": summary}
    return GateResult(FAILED, {"applicable": False}, {}, evidence, summary)
