"""`promote`, `rollback`, `history` and `audit verify`: moving channels, and proving it."""

from __future__ import annotations

from typing import Annotated

import typer

from registry.output import echo, emit_json, err, table

audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command()(promote)
    app.command()(rollback)
    app.command()(history)
    app.add_typer(audit_app, name="audit")


def promote(
    ref: Annotated[str, typer.Argument(help="Bundle to promote (name:v3, name@sha256:...).")],
    to: Annotated[str, typer.Option("--to", help="Channel to move, e.g. production.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "",
    actor: Annotated[str | None, typer.Option(help="Who (default: $REGISTRY_ACTOR).")] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Emergency: move despite missing gates (needs --reason)."),
    ] = False,
    policy: Annotated[
        str | None, typer.Option(help="Dry run against this policy file; never promotes.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Move a channel to a bundle, if the policy's required gates passed for it."""
    from pathlib import Path

    from registry import channels
    from registry.cli import actor_or_default, open_registry

    reg = open_registry()
    who = actor_or_default(actor)
    if policy is not None:
        from gates.policy import load_file

        pol = load_file(Path(policy))
        bundle, reqs, blockers = channels.check_promotion(reg, ref, to, pol, who)
        _print_requirements(reqs)
        tag = f"{bundle['name']}:v{bundle['version']}"
        if blockers:
            err(f"dry run: {tag} would be blocked from {to}: " + "; ".join(blockers))
            raise typer.Exit(3)
        echo(f"dry run: {tag} would be allowed into {to} under policy {pol.digest[:19]}")
        return
    try:
        result = channels.promote(reg, ref, to, actor=who, reason=reason, force=force)
    except channels.GatesBlockedError as exc:
        _print_requirements(exc.requirements)
        raise
    finally:
        reg.close()
    if json_out:
        emit_json(vars(result))
    elif result.event is None:
        echo(f"{result.name}:{to} already holds {result.to_tag}")
    else:
        forced = " (FORCED)" if result.forced else ""
        echo(f"{result.name}:{to} -> {result.to_tag}{forced}  event {result.event[:19]}")


def _print_requirements(reqs: list) -> None:
    if reqs:
        err(
            table(
                ["GATE", "STATUS", "RUN", "WHEN"],
                [(r.gate, r.status.upper(), r.run_id or "-", r.at or "-") for r in reqs],
            )
        )


def rollback(
    target: Annotated[str, typer.Argument(help="NAME:CHANNEL to roll back.")],
    reason: Annotated[str, typer.Option(help="Why (required; recorded in the audit log).")],
    to: Annotated[
        str | None, typer.Option("--to", help="Bundle to return to (default: the previous one).")
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Re-hash the target's blobs, not just stat them.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Allow --to a bundle the channel never held.")
    ] = False,
    actor: Annotated[str | None, typer.Option(help="Who (default: $REGISTRY_ACTOR).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Put a channel back on the bundle it held before: fast, offline, audited."""
    from registry import channels
    from registry.cli import actor_or_default, open_registry

    reg = open_registry()
    try:
        result = channels.rollback(
            reg, target, reason=reason, actor=actor_or_default(actor), to=to, verify=verify,
            force=force,
        )  # fmt: skip
    finally:
        reg.close()
    if json_out:
        emit_json(vars(result))
    else:
        echo(
            f"{result.name}:{result.channel} rolled back to {result.to_tag}"
            f"  event {result.event[:19] if result.event else '-'}"
        )


def history(
    target: Annotated[str, typer.Argument(help="NAME:CHANNEL.")],
    limit: Annotated[int | None, typer.Option(help="Only the newest N moves.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The moves of a channel, newest first: who, when, from, to, why."""
    from registry import channels
    from registry.cli import open_registry

    reg = open_registry()
    try:
        rows = channels.history(reg, target, limit)
    finally:
        reg.close()
    if json_out:
        emit_json(rows)
        return
    echo(table(
        ["WHEN", "ACTION", "FROM", "TO", "WHO", "WHY"],
        [(r["created_at"][:19].replace("T", " "),
          r["action"] + (" (forced)" if r["forced"] else ""),
          r["from_tag"] or "-", r["to_tag"] or r["to_digest"][:19], r["actor"], r["reason"])
         for r in rows],
    ))  # fmt: skip


@audit_app.command("verify")
def audit_verify(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Walk the hash chain; report the first broken link (exit 1 if any)."""
    from registry.audit import verify
    from registry.cli import open_registry

    reg = open_registry()
    try:
        report = verify(reg)
    finally:
        reg.close()
    if json_out:
        emit_json(
            {
                "ok": report.ok,
                "events": report.events,
                "channels": report.channels,
                "problem": report.problem,
            }
        )
    elif report.ok:
        echo(f"audit chain ok: {report.events} events, {report.channels} channels")
    else:
        echo(f"audit chain BROKEN: {report.problem}")
    if not report.ok:
        raise typer.Exit(1)
