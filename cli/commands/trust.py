"""`registry sign`, `registry key generate` and `registry whoami`: signing bundles in
model-signing's format, and the identity the registry records for you.

`registry verify REF --signed-by PUB` (in cli.app) checks such a signature; the work
is in registry.signing, which imports model_signing only when a command needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.context import RegistryGroup, actor_or_default, open_registry
from registry.config import ACTOR_HELP
from registry.output import echo, emit_json

key_app = typer.Typer(help="Signing keys (ECDSA P-256).", no_args_is_help=True, cls=RegistryGroup)


def register(app: typer.Typer) -> None:
    app.command()(sign)
    app.command()(whoami)
    app.add_typer(key_app, name="key")


def whoami(
    actor: Annotated[str | None, typer.Option(help=ACTOR_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Who the registry records you as: the authenticated user and your signing key.

    These are the names a policy's `actors` can list; a display name never counts."""
    from registry.identity import of

    reg = open_registry()
    try:
        who = of(reg, actor_or_default(actor))
    finally:
        reg.close()
    info = {
        "user": who.user,
        "source": who.source,
        "key": who.signer,
        "display": who.display or None,
        "policy_names": sorted(who.names()),
    }
    if json_out:
        emit_json(info)
        return
    via = "PostgreSQL session role" if who.source == "postgresql" else "operating-system user"
    echo(f"{who.user}  ({via})")
    none = "none (set signing_key in registry.toml or $REGISTRY_SIGNING_KEY)"
    echo(f"key   {who.signer or none}")
    if who.display:
        echo(f"shown as {who.display!r} (a display name: it never satisfies actors)")


def sign(
    ref: Annotated[str, typer.Argument(help="Bundle to sign.")],
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="PEM private key (default: $REGISTRY_SIGNING_KEY, else signing_key"
            " in registry.toml).",
        ),
    ] = None,
    actor: Annotated[str | None, typer.Option(help=ACTOR_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Sign a bundle's exported layout (OpenSSF model-signing; `export` writes it)."""
    from registry import config, identity, keys, signing
    from registry.errors import UsageError

    reg = open_registry()
    try:
        signing_key = keys.load_private(key) if key is not None else None
        if signing_key is None:
            signing_key = keys.configured(reg.cfg.signing_key)
        if signing_key is None:
            raise UsageError(
                "no signing key: pass --key PATH, or set $REGISTRY_SIGNING_KEY or signing_key"
                " in registry.toml",
                "Make one with `registry key generate PATH`.",
            )
        # Who signs is the authenticated user with this key: the event that records the
        # signing is signed by the same key.
        user, source = identity.authenticated_user(reg)
        who = identity.Identity(user, source, signing_key, config.display_name(actor))
        info = signing.sign(reg, ref, signing_key, who)
    finally:
        reg.close()
    if json_out:
        emit_json(info)
    else:
        echo(f"signed {info['tag']} ({info['files']} files) with {info['signer']}")
        echo(f"signature: {info['signature']}")


@key_app.command("generate")
def generate(
    path: Annotated[Path, typer.Argument(help="Private key file to write (PATH.pub beside it).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Write a new ECDSA P-256 key pair: PATH (mode 600) and PATH.pub."""
    from registry import keys
    from registry.errors import UsageError

    public_path = path.with_suffix(".pub")  # where keys.generate puts it
    if public_path == path:
        raise UsageError(f"{path} ends in .pub; give the private key's path", "E.g. team.pem.")
    k = keys.generate(path, public_path)
    if json_out:
        emit_json({"id": k.id, "private": str(path), "public": str(public_path)})
    else:
        echo(f"{k.id}")
        echo(f"private key: {path} (keep it secret)")
        echo(f"public key:  {public_path}")
