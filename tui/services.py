"""What the TUI asks of the registry: the CLI's own service functions, composed.

Nothing here runs SQL or decides anything the CLI does not: each helper gathers what one
screen shows from the functions `registry ...` commands call (bundles.show, channels.*,
gate_runs.runs_for, registry.policy.current, audit.verify). Every helper takes an open
Registry, so a worker thread can pass its own (a connection is never shared by threads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import bundles, channels, gate_runs, tracking
from registry.errors import PolicyError, RegistryError, UsageError
from registry.repo import Registry

if TYPE_CHECKING:
    from gates.engine import EventHook, RunRecord
    from registry.policy import Policy


def bundle_ref(bundle: dict[str, Any]) -> str:
    """The exact reference of a bundle row (`name@sha256:...`), as the CLI accepts it."""
    return f"{bundle['name']}@{bundle['digest']}"


def policy_or_none(reg: Registry, *, validate: bool = False) -> Policy | None:
    """The policy in force (by default read without loading gate classes, as `promote`)."""
    if validate:
        from gates.policy import current

        return current(reg)
    from registry.policy import current as unchecked

    return unchecked(reg)


def require_policy(reg: Registry, *, validate: bool = False) -> Policy:
    """The policy in force, or the same PolicyError `registry gates run` gives without one."""
    policy = policy_or_none(reg, validate=validate)
    if policy is None:
        raise PolicyError(
            "no policy is set, so no gate is required and nothing may be promoted",
            "Run `registry policy set POLICY.toml` first.",
        )
    return policy


# --- bundle detail ----------------------------------------------------------------------


@dataclass
class BundleDetail:
    """`registry show` and `registry gates show` of one bundle."""

    info: dict[str, Any]
    runs: list[dict[str, Any]]  # newest first


def bundle_detail(reg: Registry, ref: str) -> BundleDetail:
    from registry.gate_runs import runs_for

    info = bundles.show(reg, ref)
    _, runs = runs_for(reg, info["digest"])
    return BundleDetail(info, runs)


def standing(detail: BundleDetail, policy_digest: str | None) -> dict[int, str]:
    """Why each run of the bundle does not count (superseded by a newer run, an earlier
    policy, untrusted), by run id: `registry.gate_runs.superseded`."""
    return gate_runs.superseded(detail.runs, policy_digest)


@dataclass
class Plots:
    """The bundle view's plots: its latest `train` run's loss curves, and each limited
    metric across the versions of its name."""

    train_run: int | None
    train: list[tuple[float, float]]
    validation: list[tuple[float, float]]
    trends: list[Any]  # tui.figures.Trend


def plots(reg: Registry, detail: BundleDetail) -> Plots:
    """Loss curves from the newest `train` run's evidence; trends from the latest run of
    each gate of every version of the bundle's name (registry.gate_runs.latest_of_name)."""
    from tui.figures import loss_curves, trends

    train_run: int | None = None
    train: list[tuple[float, float]] = []
    val: list[tuple[float, float]] = []
    for run in detail.runs:  # newest first
        if run["gate"] == "train" and run.get("evidence_digest"):
            try:
                train, val = loss_curves(evidence(reg, run))
            except (RegistryError, OSError, ValueError):
                continue
            if train or val:
                train_run = run["id"]
                break
    latest = gate_runs.latest_of_name(reg, detail.info["name"])
    return Plots(train_run, train, val, trends(latest))


def evidence(reg: Registry, run: dict[str, Any]) -> dict[str, Any]:
    """A gate run's evidence report (`registry gates show REF --evidence ID`)."""
    from registry.gate_runs import evidence as load_evidence

    if not run.get("evidence_digest"):
        raise UsageError(f"gate run {run.get('id')} has no evidence report")
    return load_evidence(reg, run["evidence_digest"])


# --- promotion ----------------------------------------------------------------------------


@dataclass
class PromotionCheck:
    """What `registry promote REF --to CHANNEL` would decide, and the state it saw."""

    bundle: dict[str, Any]
    channel: str
    requirements: list[gate_runs.Requirement]
    blockers: list[str]
    seen: channels.Expect  # the channel as shown: the compare-and-swap expectation
    holder: str | None  # tag of the bundle the channel holds now
    policy_digest: str

    @property
    def allowed(self) -> bool:
        return not self.blockers

    @property
    def gates_to_run(self) -> list[str]:
        """Required gates without a passing latest run (missing, failed or error)."""
        return [r.gate for r in self.requirements if r.status != "passed"]

    @property
    def run_label(self) -> str:
        """What running `gates_to_run` does, by why they block: "Re-run 1 failed gate",
        "Run 2 missing gates", "Run 3 gates (1 failed, 2 missing)"; "No gates to run"."""
        return run_label(self.requirements)


def blocking_kind(req: gate_runs.Requirement) -> str:
    """failed / error / stale / missing: why a requirement that did not pass blocks."""
    if req.status == "missing" and req.stale:
        return "stale"
    return req.status


WORDS = {"failed": "failed", "error": "errored", "stale": "stale", "missing": "missing"}


def run_label(reqs: list[gate_runs.Requirement]) -> str:
    """The label of the button that runs the blocking gates (see PromotionCheck.run_label)."""
    counts: dict[str, int] = {}
    for r in reqs:
        if r.status != "passed":
            kind = blocking_kind(r)
            counts[kind] = counts.get(kind, 0) + 1
    n = sum(counts.values())
    if not n:
        return "No gates to run"
    gates = f"gate{'s' * (n != 1)}"
    if len(counts) == 1:
        kind = next(iter(counts))
        verb = "Run" if kind == "missing" else "Re-run"
        return f"{verb} {n} {WORDS[kind]} {gates}"
    parts = ", ".join(f"{counts[k]} {WORDS[k]}" for k in ("failed", "error", "stale", "missing")
                      if k in counts)  # fmt: skip
    return f"Run {n} {gates} ({parts})"


def check_promotion(reg: Registry, ref: str, channel: str, actor: str) -> PromotionCheck:
    """The policy's requirements for moving `channel` to `ref`, and who holds it now."""
    policy = require_policy(reg)
    bundle, reqs, blockers = channels.check_promotion(reg, ref, channel, policy, actor)
    seen = channels.read_state(reg, bundle["name"], channel)
    holder = None
    if seen.digest is not None:
        holder = next(
            (
                f"{c['name']}:v{c['version']}"
                for c in channels.channels_of(reg, bundle["name"])
                if c["channel"] == channel
            ),
            seen.digest[:19],
        )
    return PromotionCheck(bundle, channel, reqs, blockers, seen, holder, policy.digest)


def promote(
    reg: Registry, check: PromotionCheck, *, actor: str, reason: str
) -> channels.MoveResult:
    """Promote exactly what the user saw: fails with ConflictError if the channel moved."""
    return channels.promote(
        reg, bundle_ref(check.bundle), check.channel, actor=actor, reason=reason,
        expect=check.seen,
    )  # fmt: skip


# --- rollback -----------------------------------------------------------------------------


@dataclass
class RollbackPlan:
    """What `registry rollback NAME:CHANNEL` would do, and the other bundles it could reach."""

    name: str
    channel: str
    seen: channels.Expect
    holder: str
    previous: str | None  # digest rollback returns to by default
    choices: list[tuple[str, str]] = field(default_factory=list)  # (tag, digest), previous first


def rollback_plan(reg: Registry, name: str, channel: str) -> RollbackPlan:
    """The channel's state, its default rollback target and every bundle it held before."""
    target = f"{name}:{channel}"
    seen = channels.read_state(reg, name, channel)
    if seen.digest is None:
        raise UsageError(f"{target} holds no bundle, so there is nothing to roll back")
    with reg.db.read() as conn:
        prev = channels.previous(conn, name, channel, seen.digest)
    tags: dict[str, str] = {}
    for move in channels.history(reg, target):
        for key in ("from", "to"):
            digest = move[f"{key}_digest"]
            if digest and digest not in tags:
                tags[digest] = move[f"{key}_tag"] or digest[:19]
    # rollback --to accepts only bundles that were moved into the channel
    held = [m["to_digest"] for m in channels.history(reg, target)]
    order = ([prev] if prev else []) + [d for d in dict.fromkeys(held) if d != prev]
    choices = [(tags.get(d, d[:19]), d) for d in order if d != seen.digest]
    return RollbackPlan(name, channel, seen, tags.get(seen.digest, seen.digest[:19]), prev, choices)


def rollback(
    reg: Registry, plan: RollbackPlan, *, to: str | None, actor: str, reason: str
) -> channels.MoveResult:
    """`registry rollback NAME:CHANNEL [--to REF]` from the state the user saw."""
    return channels.rollback(
        reg, f"{plan.name}:{plan.channel}", reason=reason, actor=actor,
        to=None if to in (None, plan.previous) else f"{plan.name}@{to}", expect=plan.seen,
    )  # fmt: skip


# --- gates --------------------------------------------------------------------------------


def gates_to_run(reg: Registry, digest: str, channel: str | None = None) -> list[str]:
    """Gates the policy requires (of `channel`, or of any channel) that lack a passing run."""
    policy = require_policy(reg)
    names = [channel] if channel else list(policy.channels)
    out: list[str] = []
    for ch in names:
        for req in gate_runs.requirements(reg, digest, ch, policy):
            if req.status != "passed" and req.gate not in out:
                out.append(req.gate)
    order = policy.required_gates()
    return sorted(out, key=lambda g: order.index(g) if g in order else len(order))


def run_order(names: list[str]) -> list[str]:
    """The order the engine will run `names` in (dependencies first)."""
    from gates.engine import order

    return order(names)


def run_gates(
    reg: Registry,
    ref: str,
    names: list[str],
    *,
    channel: str | None,
    actor: str,
    on_event: EventHook,
) -> list[RunRecord]:
    """`registry gates run REF --gate ... [--channel CH]` under the policy in force.

    Called from a worker thread, with a Registry opened in that thread.
    """
    from gates.engine import run_gates as engine_run

    policy = require_policy(reg, validate=True)
    return engine_run(
        reg, ref, policy, gate_names=names, channel=channel, actor=actor, on_event=on_event
    )


# --- channels -----------------------------------------------------------------------------


@dataclass
class ChannelsView:
    """`registry ls`'s channel columns, `history` per channel and `audit verify`; `remote`
    holds the read-only remote-tracking views (`REMOTE/CHANNEL`, tracking.list_views)."""

    channels: list[dict[str, Any]]
    audit: Any  # registry.audit.AuditReport
    remote: list[dict[str, Any]] = field(default_factory=list)


def channels_view(reg: Registry, name: str | None) -> ChannelsView:
    from registry.audit import verify

    return ChannelsView(
        channels.channels_of(reg, name), verify(reg), tracking.list_views(reg, name)
    )


def history(reg: Registry, name: str, channel: str) -> list[dict[str, Any]]:
    return channels.history(reg, f"{name}:{channel}")


def with_registry(root: Path, job: Callable[[Registry], Any]) -> Any:
    """Run `job` on a Registry opened for this call only (one connection per thread)."""
    reg = Registry.open(root)
    try:
        return job(reg)
    finally:
        reg.close()
