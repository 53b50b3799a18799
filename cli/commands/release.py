"""`promote`, `rollback`, `history` and `audit verify`: moving channels, and proving it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.context import RegistryGroup, actor_or_default, open_registry
from registry.config import ACTOR_HELP
from registry.output import echo, emit_json, err, paint, status, table

audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True, cls=RegistryGroup)


def register(app: typer.Typer) -> None:
    app.command()(promote)
    app.command()(rollback)
    app.command()(history)
    app.add_typer(audit_app, name="audit")


def promote(
    ref: Annotated[
        str, typer.Argument(help="Bundle to promote (name:v3, name@sha256:..., name:remote/ch).")
    ],
    to: Annotated[str, typer.Option("--to", help="Channel to move, e.g. production.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "",
    actor: Annotated[str | None, typer.Option(help=ACTOR_HELP)] = None,
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
    from registry.errors import BlockedError

    reg = open_registry()
    who = actor_or_default(actor)
    if policy is not None:
        from gates.policy import load_file

        try:
            pol = load_file(Path(policy))
            bundle, reqs, blockers = channels.check_promotion(reg, ref, to, pol, who)
        finally:
            reg.close()
        tag = f"{bundle['name']}:v{bundle['version']}"
        if json_out:
            emit_json({
                "dry_run": True, "allowed": not blockers, "ref": ref, "tag": tag,
                "digest": bundle["digest"], "channel": to, "policy": pol.digest,
                "blockers": blockers, "requirements": requirements_json(reqs),
            })  # fmt: skip
            if blockers:
                raise typer.Exit(BlockedError.exit_code)
            return
        _print_requirements(reqs)
        if blockers:
            err(f"dry run: {tag} would be blocked from {to}: " + "; ".join(blockers))
            raise typer.Exit(BlockedError.exit_code)
        echo(f"dry run: {tag} would be allowed into {to} under policy {pol.digest[:19]}")
        return
    try:
        result = channels.promote(reg, ref, to, actor=who, reason=reason, force=force)
    except BlockedError as exc:
        reqs = getattr(exc, "requirements", [])
        if json_out:  # the requirements on stdout; main() prints the one error line
            emit_json({
                "promoted": False, "blocked": True, "ref": ref, "channel": to,
                "error": exc.one_line(), "exit_code": exc.exit_code,
                "requirements": requirements_json(reqs),
            })  # fmt: skip
        else:
            _print_requirements(reqs)
        raise
    finally:
        reg.close()
    if json_out:
        emit_json(vars(result))
    elif result.event is None:
        echo(f"{result.name}:{to} already holds {result.to_tag}")
    else:
        forced = f" ({paint(status('forced'))})" if result.forced else ""
        echo(f"{result.name}:{to} -> {result.to_tag}{forced}  event {result.event[:19]}")


def requirement_status(r: Any) -> str:
    """passed / failed / error / missing, or stale: missing because every run of the gate
    ran under an earlier policy."""
    return "stale" if r.stale else str(r.status)


def requirements_json(reqs: list[Any]) -> list[dict[str, Any]]:
    """Each required gate for `--json`: its status, the run that decided it, and why it
    blocks (empty when it passed)."""
    return [
        {
            "gate": r.gate,
            "status": requirement_status(r),
            "passed": r.status == "passed",
            "run": r.run_id,
            "at": r.at,
            "why": r.why or r.note or ("" if r.status == "passed" else r.status),
            "note": r.note,
        }
        for r in reqs
    ]


def _print_requirements(reqs: list[Any]) -> None:
    if reqs:
        err(
            table(
                ["GATE", "STATUS", "RUN", "WHEN"],
                [
                    (r.gate, status(requirement_status(r)), r.run_id or "-", r.at or "-")
                    for r in reqs
                ],
                stream=sys.stderr,
            )  # fmt: skip
        )
        for r in reqs:
            why = r.why or r.note
            if why:
                err(f"{r.gate}: {why}")


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
    actor: Annotated[str | None, typer.Option(help=ACTOR_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Put a channel back on the bundle it held before: fast, offline, audited."""
    from registry import channels

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
    target: Annotated[str, typer.Argument(help="NAME:CHANNEL, or NAME:REMOTE/CHANNEL.")],
    limit: Annotated[int | None, typer.Option(help="Only the newest N moves.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The moves of a channel, newest first: who, when, from, to, why. For a remote-tracking
    view (NAME:REMOTE/CHANNEL): what the remote said at the last pull."""
    from registry import channels, present, refs

    reg = open_registry()
    try:
        if refs.parse(target).remote is not None:
            from registry import tracking

            view = tracking.read(reg, target)
            _print_tracking(view, json_out)
            return
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
          r["from_tag"] or "-", r["to_tag"] or r["to_digest"][:19], present.who(r), r["reason"])
         for r in rows],
    ))  # fmt: skip


def _print_tracking(view: dict, json_out: bool) -> None:
    """`registry history NAME:REMOTE/CHANNEL`: the tracking view's one state."""
    ref = f"{view['name']}:{view['view']}"
    if json_out:
        emit_json({"ref": ref, "remote_tracking": True, "read_only": True,
                   "remote": view["remote"], "name": view["name"], "channel": view["channel"],
                   "tag": view["tag"], "digest": view["bundle_digest"],
                   "fetched_at": view["fetched_at"]})  # fmt: skip
        return
    echo(table(
        ["REMOTE", "CHANNEL", "BUNDLE", "DIGEST", "FETCHED"],
        [(view["remote"], view["channel"], view["tag"], view["bundle_digest"][:19],
          view["fetched_at"][:19].replace("T", " "))],
    ))  # fmt: skip
    echo(
        f"{ref} is a remote-tracking view: what remote {view['remote']} said its"
        f" {view['channel']} held at the last pull. It is read-only and has no history here;"
        f" adopt it with: registry promote {ref} --to {view['channel']}"
    )


@audit_app.command("verify")
def audit_verify(
    trust: Annotated[
        list[Path] | None,
        typer.Option(
            "--trust",
            help="A public key whose signatures are accepted (repeatable); events signed by"
            " any other key are reported.",
        ),
    ] = None,
    require_signed: Annotated[
        bool, typer.Option("--require-signed", help="Report any unsigned event.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the chain, its signatures and what it covers (gate runs, tags, the policy in
    force, channel positions); report the first broken link (exit 1 if any)."""
    from registry.audit import verify
    from registry.keys import load_public

    trusted = {load_public(p).id for p in trust} if trust else None
    reg = open_registry()
    try:
        report = verify(reg, trusted=trusted, require_signed=require_signed)
    finally:
        reg.close()
    if json_out:
        emit_json(
            {
                "ok": report.ok,
                "events": report.events,
                "channels": report.channels,
                "signed": report.signed,
                "signers": report.signers,
                "covered": report.covered,
                "problem": report.problem,
            }
        )
    elif report.ok:
        signed = (
            f" ({report.signed} signed by {', '.join(sorted(report.signers))})"
            if report.signers
            else " (none signed)"
        )
        covered = ", ".join(f"{n} {what}" for what, n in report.covered.items())
        echo(
            f"audit chain ok: {report.events} events{signed}, {report.channels} channels"
            + (f", {covered}" if covered else "")
        )
    else:
        echo(f"audit chain {paint(status('broken'))}: {report.problem}")
    if not report.ok:
        raise typer.Exit(1)
