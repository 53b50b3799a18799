"""The `registry` command: parse, call one service function, print.

Heavy or slow modules are imported inside the commands that use them; `registry --help`,
`ls`, `show` and `rollback` never import torch, transformers, peft, boto3, huggingface_hub
or textual (tests/cli/test_startup.py checks it). Every RegistryError becomes one line on
stderr and its exit code here, in `main`; a traceback only with --debug or REGISTRY_DEBUG=1.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from cli.context import (
    CONTEXT_SETTINGS,
    JsonOpt,
    RegistryGroup,
    actor_or_default,
    open_registry,
    set_options,
)
from registry.config import ACTOR_HELP
from registry.errors import RegistryError, UsageError
from registry.output import echo, emit_json, err, human_size, paint, status

# Help is plain text (rich_markup_mode=None), but Typer 0.20 still escapes "[required]"
# for Rich whenever rich is installed, printing a stray backslash (fastapi/typer#1058).
typer.core.HAS_RICH = False

app = typer.Typer(
    name="registry",
    help="A registry and release gate for fine-tuned models (LoRA adapters on a base model).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,  # `registry completion SHELL` instead (cli/commands/completion.py)
    rich_markup_mode=None,
    cls=RegistryGroup,
    context_settings=CONTEXT_SETTINGS,
)


def _print_version(value: bool) -> None:
    """`registry --version`: the installed lora-registry distribution's version."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        echo(f"registry {version('lora-registry')}")
    except PackageNotFoundError:
        echo("registry (unknown version: the lora-registry package is not installed)")
    raise typer.Exit()


@app.callback()
def _main(
    registry: Annotated[
        Path | None,
        typer.Option(
            "--registry",
            "-R",
            help="Registry directory (default: $REGISTRY_HOME,"
            " else the nearest parent holding registry.toml).",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    set_options(registry, debug or os.environ.get("REGISTRY_DEBUG") == "1")


# --- init / add ---------------------------------------------------------------------------


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Directory to create.")] = Path("."),
    database_url: Annotated[
        str | None, typer.Option(help="PostgreSQL URL for a team registry (default: SQLite).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a registry: registry.toml, blobs/ and the database (via migrations)."""
    from registry.repo import Registry

    reg = Registry.init(path, database_url)
    kind = "SQLite" if reg.cfg.sqlite else "PostgreSQL"
    reg.close()
    if json_out:
        emit_json({"path": str(path.resolve()), "database": kind.lower()})
    else:
        echo(f"Initialized registry in {path.resolve()} ({kind})")


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="Bundle name, e.g. support-bot.")],
    base: Annotated[str, typer.Option(help="Base model: a directory or hf://org/name@<commit>.")],
    adapter: Annotated[Path | None, typer.Option(help="PEFT adapter directory.")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="Tokenizer directory.")] = None,
    chat_template: Annotated[Path | None, typer.Option(help="Chat template (.jinja file).")] = None,
    dataset: Annotated[Path | None, typer.Option(help="Dataset directory (JSONL splits).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Training config (YAML, JSON or TOML).")
    ] = None,
    from_dir: Annotated[
        Path | None,
        typer.Option("--from", help="A trainer's output dir holding adapter, tokenizer, template."),
    ] = None,
    parent: Annotated[str | None, typer.Option(help="The bundle this one derives from.")] = None,
    full: Annotated[
        bool,
        typer.Option("--full", help="A full fine-tune: --base is the tuned model, no adapter."),
    ] = False,
    license: Annotated[
        str | None, typer.Option(help="Dataset license (overrides its card).")
    ] = None,
    allow_pickle: Annotated[
        bool, typer.Option(help="Store pickle weights (never loaded by the registry).")
    ] = False,
    annotation: Annotated[
        list[str] | None, typer.Option("--annotation", "-a", help="KEY=VALUE, repeatable.")
    ] = None,
    actor: Annotated[str | None, typer.Option(help=ACTOR_HELP)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Register a bundle: base, adapter, tokenizer, chat template, dataset and config."""
    from registry import bundles
    from registry.ingest.stage import stage_bundle
    from registry.output import file_progress

    annotations = {}
    for item in annotation or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"annotation {item!r} is not KEY=VALUE")
        annotations[key] = value
    reg = open_registry()
    components, notes = stage_bundle(
        reg,
        base=base,
        adapter=adapter,
        tokenizer=tokenizer,
        chat_template=chat_template,
        dataset=dataset,
        config=config,
        from_dir=from_dir,
        full=full,
        license=license,
        allow_pickle=allow_pickle,
    )
    if full:
        annotations.setdefault("adaptation", "full")
    for note in notes:
        err(note)
    with file_progress(not json_out) as progress:
        result = bundles.add(
            reg,
            name,
            components,
            parent=parent,
            annotations=annotations,
            actor=actor_or_default(actor),
            progress=progress,
        )
    reg.close()
    if json_out:
        emit_json({"digest": result.digest, "tag": result.tag, "created": result.created})
    else:
        echo(f"{result.tag} {result.digest}" + ("" if result.created else " (already registered)"))


# --- read ---------------------------------------------------------------------------------


@app.command("ls")
def ls_cmd(
    name: Annotated[str | None, typer.Argument(help="Only this bundle name.")] = None,
    remote: Annotated[
        str | None, typer.Option("--remote", "-r", help="List what this remote holds instead.")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", "-n", min=1, help="Only the first N bundles (default: all)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List bundles, newest version first, with the channels that hold them (and the
    read-only remote-tracking views, as REMOTE/CHANNEL, that name them)."""
    from registry import bundles
    from registry.present import ls_table_batches, render_ls

    if remote is not None:
        from cli.commands.remote import ls_remote, render_ls_remote

        reg = open_registry()
        try:
            held = [e for e in ls_remote(reg, remote) if name is None or e["name"] == name]
        finally:
            reg.close()
        if json_out:
            emit_json(held)
        else:
            echo(render_ls_remote(held, remote))
        return
    reg = open_registry()
    try:
        if json_out:  # piped, on SQLite: each row's JSON built by SQLite (bundles.py)
            parts = (
                None if sys.stdout.isatty() else bundles.list_bundles_json(reg, name, limit=limit)
            )
            if parts is None:
                emit_json(bundles.list_bundles(reg, name, limit=limit))
                return
            write = sys.stdout.write  # in batches: no 20 MB copies for 100,000 bundles
            write("[")
            for i in range(0, len(parts), 4096):
                write(("," if i else "") + ",".join(parts[i : i + 4096]))
            write("]\n")
            return
        # on SQLite, SQLite renders the table lines, written as they are read
        # (bundles.ls_table_stream); on PostgreSQL, Python renders the rows
        with bundles.ls_table_stream(reg, name, limit=limit) as table:
            if table is not None:
                if table.count:
                    write = sys.stdout.write
                    for batch in ls_table_batches(table, gate_counts):
                        write("\n".join(batch) + "\n")
                listed = bool(table.count)
                tracked = any(d in table.remote_channels for d in table.special)
        if table is None:
            rows = bundles.ls_rows(reg, name, limit=limit)
            listed = bool(rows.rows)
            if listed:
                echo(render_ls(rows, gate_counts))
            tracked = any(digest in rows.remote_channels for digest, *_ in rows.rows)
    finally:
        reg.close()
    if not listed:
        echo("No bundles yet. Add one with `registry add NAME --base DIR --adapter DIR ...`.")
        return
    if tracked:
        echo("REMOTE/CHANNEL: remote-tracking view (read-only), as of the last pull")


def gate_counts(counts: dict[str, int]) -> str:
    """`3 passed, 1 failed` from {status: count}; `-` when no gate ran. Coloured (on a
    terminal) by the worst status in it: failed, then error, else passed."""
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "-"
    worst = next((s for s in ("failed", "error", "passed") if counts.get(s)), None)
    return text if worst is None else status(worst, text)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="Bundle reference.")], json_out: JsonOpt = False
) -> None:
    """Components, files, sizes, parsed meta and lineage of one bundle."""
    from registry import bundles
    from registry.usage import stored

    reg = open_registry()
    info = bundles.show(reg, ref)
    info["stored"] = stored(reg, info["digest"])  # bytes its files' blobs take (pieces once)
    reg.close()
    if json_out:
        emit_json(info)
        return
    from registry.present import render_show

    echo(render_show(info))


@app.command()
def diff(
    ref_a: Annotated[str, typer.Argument(help="First bundle.")],
    ref_b: Annotated[str, typer.Argument(help="Second bundle.")],
    json_out: JsonOpt = False,
) -> None:
    """Which components, files and meta changed between two bundles."""
    from registry import bundles

    reg = open_registry()
    d = bundles.diff(reg, ref_a, ref_b)
    reg.close()
    if json_out:
        emit_json(d)
        return
    from registry.present import render_diff

    echo(render_diff(d))


@app.command()
def verify(
    ref: Annotated[str | None, typer.Argument(help="Bundle to verify.")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Every bundle and every stored blob.")
    ] = False,
    signed_by: Annotated[
        list[Path] | None,
        typer.Option(
            "--signed-by",
            help="Also check REF's model-signing signature by this public key (repeatable).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-hash blobs; report every corrupt or missing one (exit 1 if any); check signatures."""
    from registry.verify import verify as run_verify

    if (ref is None) == (not all_):
        raise UsageError("give a bundle reference or --all")
    if signed_by and ref is None:
        raise UsageError("--signed-by checks one bundle: give a bundle reference")
    public_keys = []
    if signed_by:
        from registry.keys import load_public

        public_keys = [load_public(p) for p in signed_by]
    reg = open_registry()
    try:
        report = run_verify(reg, ref, all_blobs=all_)
        signatures: list[dict[str, Any]] = []
        failure: RegistryError | None = None
        if public_keys and ref is not None:  # keys come with a ref (checked above)
            from registry.errors import IntegrityError
            from registry.signing import verify as verify_signature

            for pub in public_keys:
                try:
                    signatures.append({"ok": True, **verify_signature(reg, ref, pub)})
                except IntegrityError as exc:
                    failure = failure or exc
                    signatures.append({"ok": False, "signer": pub.id, "error": exc.one_line()})
    finally:
        reg.close()
    if json_out:
        out: dict[str, Any] = {
            "ok": report.ok and failure is None,
            "checked": report.checked,
            "problems": [
                {"digest": p.digest, "reason": p.reason, "where": p.where, "bundles": p.bundles}
                for p in report.problems
            ],
        }
        if public_keys:
            out["signatures"] = signatures
        emit_json(out)
    else:
        for p in report.problems:
            echo(f"{paint(status('bad'))}  {p.digest}  {p.reason}  ({p.where}{_also(p.bundles)})")
        state = (
            paint(status("ok", "ok"))
            if report.ok
            else paint(status("failed", f"{len(report.problems)} problem(s)"))
        )
        echo(f"verified {report.checked} blobs ({human_size(report.bytes)}): {state}")
        for s in signatures:
            if s["ok"]:
                echo(f"signed by {s['signer']}: ok ({s['files']} files, {s['signed_at'][:19]})")
    if failure is not None and not json_out:
        raise failure
    if not report.ok or failure is not None:
        raise typer.Exit(1)


def _also(tags: list[str]) -> str:
    """`; in 3 bundles: a:v1, a:v2, b:v1` for a blob several bundles share (at most 5 named)."""
    if len(tags) < 2:
        return ""
    named = ", ".join(tags[:5]) + (f", ... ({len(tags) - 5} more)" if len(tags) > 5 else "")
    return f"; in {len(tags)} bundles: {named}"


@app.command()
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go.")] = False,
    grace: Annotated[
        float,
        typer.Option(
            help="Keep unreachable blobs and temp files younger than this many seconds"
            " (below 60 needs --force --reason)."
        ),
    ] = 3600.0,
    force: Annotated[
        bool, typer.Option("--force", help="Allow a grace below 60 s (with --reason).")
    ] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why the grace is forced (logged).")
    ] = None,
    wait: Annotated[
        float,
        typer.Option(help="Seconds to wait for running writers (add, pull, ...); 0 refuses."),
    ] = 60.0,
    json_out: JsonOpt = False,
) -> None:
    """Remove blobs no bundle, gate run or policy reaches (older than the grace period)."""
    from registry.gc import check_grace
    from registry.gc import gc as run_gc

    check_grace(grace, dry_run=dry_run, force=force, reason=reason)
    reg = open_registry()
    try:
        report = run_gc(reg, dry_run=dry_run, grace=grace, force=force, reason=reason, wait=wait)
    finally:
        reg.close()
    if report.forced is not None:
        err(f"gc: grace {grace:g}s forced: {report.forced}")
    if json_out:
        emit_json({"dry_run": dry_run, "grace": grace, **vars(report)})
        return
    for h in report.stale_locks:
        echo(f"removed stale lock record of {h}: the process is gone")
    verb = "would remove" if dry_run else "removed"
    for d in report.removed:
        echo(f"{verb} {d}")
    live = f", {report.temp_kept_live} of running writers" if report.temp_kept_live else ""
    n_lists = report.piece_lists_removed
    lists = f" (of them {n_lists} piece lists)" if n_lists else ""
    echo(
        f"{verb} {len(report.removed)} blobs{lists} ({human_size(report.freed)}),"
        f" {report.temp_removed} temp files; kept {report.kept_young} younger than"
        f" {grace:.0f}s{live}"
    )


@app.command()
def export(
    ref: Annotated[str, typer.Argument(help="Bundle reference.")],
    dest: Annotated[Path, typer.Argument(help="New directory to write.")],
    json_out: JsonOpt = False,
) -> None:
    """Write a bundle as a directory PeftModel/AutoTokenizer load (base model under base/)."""
    from registry.export import export as run_export

    reg = open_registry()
    try:
        info = run_export(reg, ref, dest)
    finally:
        reg.close()
    if json_out:
        signature = dest / "registry" / "model.sig" if info.get("signed_by") else None
        emit_json({**info, "dest": str(dest), "signature": signature and str(signature)})
        return
    echo(f"exported {info['tag']} ({info['files']} files, {human_size(info['bytes'])}) to {dest}")
    if info["base"]:
        echo(f"base model: {info['base']}")
    if info.get("signed_by"):
        echo(f"signature: {dest / 'registry' / 'model.sig'} (by {info['signed_by']})")


def _register_groups() -> None:
    # Command groups kept in their own modules; importing them is cheap (typer only).
    from cli.commands import (
        completion,
        gates,
        policy,
        release,
        remote,
        report,
        sweep,
        trust,
        tui,
        usage,
        worker,
    )

    for group in (release, policy, gates, sweep, remote, trust, tui, completion, report, usage,
                  worker):  # fmt: skip
        group.register(app)


_register_groups()


_VALUED = ("--registry", "-R")  # the app callback's options that take a value


def invoked_name(argv: list[str]) -> str | None:
    """The command or group name `argv` (without the program) invokes: the first word
    that is neither an option of the app callback nor the value of one."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


@contextlib.contextmanager
def only_invoked(typer_app: typer.Typer, argv: list[str]) -> Iterator[None]:
    """Register only the command (or group) `argv` names while the app runs.

    Typer turns every registered command into a click command, reading each one's
    signature and evaluating its annotations, before it dispatches: about 80 ms of every
    `registry` process here for 70 functions, against a few ms for one (bench/README.md).
    When `argv` names exactly one command or group, the others are left out; otherwise
    (help, a typo, no command) the whole app is built, so help and suggestions are
    unchanged. Restored afterwards."""
    name = invoked_name(argv)
    commands, groups = typer_app.registered_commands, typer_app.registered_groups

    def command_name(info: Any) -> str:
        return info.name or info.callback.__name__.lower().replace("_", "-")

    keep_c = [c for c in commands if command_name(c) == name]
    keep_g = [g for g in groups if g.name == name]
    if name is None or len(keep_c) + len(keep_g) != 1:
        yield
        return
    typer_app.registered_commands, typer_app.registered_groups = keep_c, keep_g
    try:
        yield
    finally:
        typer_app.registered_commands, typer_app.registered_groups = commands, groups


def main() -> None:
    """Entry point: run the app, turning RegistryError into one line and an exit code."""
    debug = "--debug" in sys.argv or os.environ.get("REGISTRY_DEBUG") == "1"
    completing = bool(os.environ.get("_REGISTRY_COMPLETE"))
    if completing:  # the shell asks for completions: of every command
        from cli.commands.completion import enable_completion

        enable_completion()
    try:
        with contextlib.nullcontext() if completing else only_invoked(app, sys.argv[1:]):
            rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except RegistryError as exc:
        if debug:
            raise
        err(f"error: {exc.one_line()}")
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        err(
            f"error: unexpected {type(exc).__name__}: {exc}. Re-run with --debug for the traceback."
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
