"""`registry remote add|ls|rm`, `registry push`, `registry pull` (and `ls --remote`).

Thin commands: parse, call one service function in `registry.remotes`, print. boto3 and
huggingface_hub are imported only when a push, pull or remote listing talks to a remote.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.context import JsonOpt, RegistryGroup, actor_or_default, open_registry
from registry.output import echo, emit_json, human_size, table

RemoteOpt = Annotated[
    str, typer.Option("--remote", "-r", help="Remote name (`registry remote ls`).")
]

remote_app = typer.Typer(
    help="Remotes: S3 (or any S3-compatible store) and the Hugging Face Hub.",
    no_args_is_help=True,
    cls=RegistryGroup,
)


def _open() -> Any:

    return open_registry()


def _actor() -> str:

    return actor_or_default(None)


@remote_app.command("add")
def remote_add(
    name: Annotated[str, typer.Argument(help="A short name, e.g. origin or hub.")],
    url: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX or hf://ORG/REPO.")],
    endpoint_url: Annotated[
        str | None,
        typer.Option(help="S3-compatible endpoint (MinIO, R2, ...); default: AWS S3."),
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="AWS profile to take credentials from (S3 only).")
    ] = None,
    region: Annotated[str | None, typer.Option(help="Region (S3 only; R2 uses auto).")] = None,
    private: Annotated[
        bool, typer.Option("--private", help="Create the Hub repo private (hf:// only).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Add a remote. Credentials are never stored: S3 uses the AWS chain, the Hub HF_TOKEN."""
    from registry.remotes.base import add_remote

    reg = _open()
    try:
        spec = add_remote(
            reg, name, url, endpoint_url=endpoint_url, profile=profile, region=region,
            private=private,
        )  # fmt: skip
    finally:
        reg.close()
    if json_out:
        emit_json(spec.to_dict())
    else:
        echo(f"added remote {spec.name} {spec.url}")


@remote_app.command("ls")
def remote_ls(json_out: JsonOpt = False) -> None:
    """List the configured remotes."""
    from registry.remotes.base import list_remotes

    reg = _open()
    try:
        specs = list_remotes(reg)
    finally:
        reg.close()
    if json_out:
        emit_json([s.to_dict() for s in specs])
        return
    if not specs:
        echo("No remotes. Add one with `registry remote add NAME s3://BUCKET/PREFIX`.")
        return
    rows = [
        (s.name, s.url, " ".join(f"{k}={v}" for k, v in sorted(s.options.items()))) for s in specs
    ]
    echo(table(["NAME", "URL", "OPTIONS"], rows))


@remote_app.command("rm")
def remote_rm(
    name: Annotated[str, typer.Argument(help="Remote to forget.")], json_out: JsonOpt = False
) -> None:
    """Forget a remote and its remote-tracking views (nothing on the remote is deleted)."""
    from registry.remotes.base import remove_remote

    reg = _open()
    try:
        remove_remote(reg, name)
    finally:
        reg.close()
    if json_out:
        emit_json({"removed": name})
    else:
        echo(f"removed remote {name}")


def push(
    ref: Annotated[str, typer.Argument(help="Bundle (NAME:vN, digest) or NAME:CHANNEL.")],
    remote: RemoteOpt,
    include_base: Annotated[
        bool,
        typer.Option(
            "--include-base",
            help="Hub: upload a local base model too (default: named in the card only)."
            " An S3 remote always holds the whole bundle.",
        ),
    ] = False,
    main: Annotated[
        str | None,
        typer.Option(
            "--main",
            metavar="CHANNEL",
            help="Hub: the channel whose bundle the repo's main branch shows"
            " (default: production; the bundle pushed while there is none).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Upload a bundle (and, for NAME:CHANNEL, the channel's position): only what the remote
    lacks, blobs before manifests before refs. Versions never move on a remote; channels do."""
    from registry.errors import UsageError
    from registry.output import file_progress
    from registry.remotes.base import open_remote
    from registry.remotes.hf import HubRemote

    reg = _open()
    try:
        target = open_remote(reg, remote)
        if main is not None and not isinstance(target, HubRemote):
            raise UsageError("--main applies to hf:// remotes only", "Drop --main.")
        with file_progress(not json_out) as progress:
            if isinstance(target, HubRemote):
                res = target.push(
                    reg, ref, include_base=include_base, actor=_actor(), progress=progress,
                    main=main,
                )  # fmt: skip
            else:
                res = target.push(
                    reg, ref, include_base=include_base, actor=_actor(), progress=progress
                )
    finally:
        reg.close()
    if json_out:
        emit_json(res.to_dict())
        return
    for note in res.notes:
        echo(f"note: {note}")
    sent = (
        f"sent {res.blobs_sent} of {res.blobs} blobs ({human_size(res.bytes_sent)} of"
        f" {human_size(res.bytes_total)})"
        if res.blobs_sent
        else f"all {res.blobs} blobs already there"
    )
    refs_text = f"; wrote {', '.join(res.refs)}" if res.refs else "; refs already up to date"
    trust = _trust_text("sent", res.gate_runs_sent, "gate-run attestation", res.signatures_sent)
    echo(
        f"pushed {res.tag} {res.digest} to {remote}: {sent}{refs_text}{trust} ({res.seconds:.1f}s)"
    )


def _trust_text(verb: str, runs: int, noun: str, signatures: int) -> str:
    """ "; sent 2 gate-run attestations, 1 signature" (empty when there were none)."""
    parts = [f"{runs} {noun}{'s' if runs != 1 else ''}"] if runs else []
    if signatures:
        parts.append(f"{signatures} signature{'s' if signatures != 1 else ''}")
    return f"; {verb} {', '.join(parts)}" if parts else ""


def pull(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:vN, NAME:CHANNEL or a digest.")],
    remote: RemoteOpt,
    json_out: JsonOpt = False,
) -> None:
    """Download a bundle from a remote: only missing blobs, each verified before it enters
    the store; then its version, and for NAME:CHANNEL the read-only remote-tracking view
    REMOTE/CHANNEL (the local channel never moves: promote NAME:REMOTE/CHANNEL adopts it)."""
    from registry.output import file_progress
    from registry.remotes.base import open_remote

    reg = _open()
    try:
        source = open_remote(reg, remote)
        with file_progress(not json_out) as progress:
            res = source.pull(reg, ref, actor=_actor(), progress=progress)
    finally:
        reg.close()
    if json_out:
        emit_json(res.to_dict())
        return
    for note in res.notes:
        echo(f"note: {note}")
    got = (
        f"fetched {res.blobs_fetched} of {res.blobs} blobs ({human_size(res.bytes_fetched)})"
        if res.blobs_fetched
        else "all blobs already here"
    )
    trust = _trust_text("with", res.gate_runs, "signed gate run", res.signatures)
    echo(f"pulled {res.tag} {res.digest} from {remote}: {got}{trust} ({res.seconds:.1f}s)")
    if res.tracking:
        name = res.tag.split(":", 1)[0]
        echo(
            f"{res.tracking} {'->' if res.tracking_moved else 'already at'} {res.tag}"
            f" (local {res.channel} unchanged; adopt it with: registry promote"
            f" {name}:{res.tracking} --to {res.channel})"
        )


def ls_remote(reg: Any, remote_name: str) -> list[dict[str, Any]]:
    """What a remote holds: name, version, tag, digest, size (or None), channels."""
    from registry.remotes.base import open_remote

    return open_remote(reg, remote_name).list()


def render_ls_remote(items: list[dict[str, Any]], remote_name: str) -> str:
    """The `registry ls --remote NAME` table."""
    if not items:
        return f"Remote {remote_name} holds no bundles yet."
    return table(
        ["TAG", "DIGEST", "SIZE", "CHANNELS"],
        [
            (e["tag"], e["digest"][:19], human_size(e.get("size")), ",".join(e["channels"]))
            for e in items
        ],
    )


def register(app: typer.Typer) -> None:
    """Add `remote`, `push` and `pull` to the registry app (once)."""
    if any(c.name == "push" for c in app.registered_commands):
        return
    app.add_typer(remote_app, name="remote")
    app.command("push")(push)
    app.command("pull")(pull)
