"""`registry policy check|set|show`: the policy that says what each channel requires."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.context import JsonOpt, RegistryGroup, actor_or_default, open_registry
from registry.config import ACTOR_HELP
from registry.output import echo, emit_json, err

policy_app = typer.Typer(
    help="Release policy: required gates and thresholds.", no_args_is_help=True, cls=RegistryGroup
)


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")


@policy_app.command("check")
def check(
    path: Annotated[Path, typer.Argument(help="Policy TOML file.")], json_out: JsonOpt = False
) -> None:
    """Validate a policy file and print its digest."""
    from gates.policy import load_file
    from registry.errors import PolicyError

    try:
        pol = load_file(path)
    except PolicyError as exc:  # the usual hint is to run this very command
        raise PolicyError(str(exc), "") from None
    from gates.evals import plan

    plans = plan(pol)
    if json_out:
        emit_json({
            "ok": True,
            "digest": pol.digest,
            "channels": {name: {"require": list(ch.require), "after": ch.after}
                         for name, ch in pol.channels.items()},
            "files": dict(sorted(pol.files.items())),
            "plan": [{"gate": g, "text": t, "decidable": d} for g, t, d in plans],
        })  # fmt: skip
        return
    echo(f"policy ok: {pol.digest}")
    for name, ch in pol.channels.items():
        after = f" after {ch.after}" if ch.after else ""
        echo(f"  {name}: requires {', '.join(ch.require) or 'nothing'}{after}")
    for rel, digest in sorted(pol.files.items()):
        echo(f"  file {rel} {digest[:19]}")
    for gate, text, decidable in plans:
        if decidable:
            echo(f"  {gate}: {text}")
        else:
            err(f"warning: {gate}: {text}")


@policy_app.command("set")
def set_(
    path: Annotated[Path, typer.Argument(help="Policy TOML file.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "",
    actor: Annotated[str | None, typer.Option(help=ACTOR_HELP)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Make a policy the registry's policy (stored with its eval sets; an audited event)."""
    from gates.policy import load_file
    from registry.policy import store

    pol = load_file(path)
    reg = open_registry()
    try:
        changed = store(reg, pol, actor=actor_or_default(actor), reason=reason)
    finally:
        reg.close()
    if json_out:
        emit_json({"digest": pol.digest, "changed": changed})
    else:
        echo(f"policy {'set' if changed else 'already in force'}: {pol.digest}")


@policy_app.command("show")
def show(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The policy in force, its digest, who set it and when."""
    from registry.errors import UsageError
    from registry.policy import info

    reg = open_registry()
    try:
        data = info(reg)
    finally:
        reg.close()
    if data is None:
        raise UsageError("no policy is set", "Run `registry policy set POLICY.toml`.")
    if json_out:
        emit_json(data)
        return
    echo(f"policy {data['digest']}\n  set by {data['set_by']} at {data['set_at']}")
    for rel, digest in sorted(data["files"].items()):
        echo(f"  file {rel} {digest[:19]}")
    echo("")
    echo(data["text"].rstrip())
