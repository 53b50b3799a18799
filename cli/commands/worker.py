"""`registry worker`: check a machine can run gate tasks, then join it to a Ray cluster."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from registry.output import echo, emit_json, err


def register(app: typer.Typer) -> None:
    app.command("worker", context_settings={"allow_interspersed_args": False})(worker)


def worker(
    address: Annotated[
        str | None,
        typer.Option(help="The cluster's head, HOST:PORT (its `ray start --head --port`)."),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            help="This worker's private key (PEM): it signs the gate runs it executes"
            " ($REGISTRY_SIGNING_KEY otherwise)."
        ),
    ] = None,
    cpus: Annotated[int | None, typer.Option(help="CPUs this node offers Ray.", min=1)] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs this node offers Ray.", min=0)] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only check this machine; start nothing.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
    ray_args: Annotated[
        list[str] | None,
        typer.Argument(
            help="After --: more `ray start` options (--temp-dir, --resources, ...).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check what a worker node needs, then run `ray start --address HOST:PORT --block`.

    A worker needs, beyond `ray start`: this package with the [gates,ray] extras at the
    driver's versions; the registry's directory at the same path as on the driver (a
    shared filesystem) and its database (the team's PostgreSQL, or SQLite on that
    filesystem); optionally a signing key of its own. Without --address (or with
    --check) it only reports."""
    from registry.errors import UsageError

    checks = _checks(key)
    failed = [c for c in checks if not c["ok"]]
    if json_out:
        emit_json({"checks": checks, "ok": not failed})
    else:
        for c in checks:
            err(f"{'ok  ' if c['ok'] else 'FAIL'} {c['what']}: {c['detail']}")
    if failed:
        raise UsageError(
            f"this machine cannot run gate tasks: {failed[0]['what']}: {failed[0]['detail']}",
            failed[0].get("fix"),
        )
    if check or address is None:
        if address is None and not check and not json_out:
            echo("checks passed; pass --address HOST:PORT to join the cluster")
        return
    ray = _ray_command() or "ray"
    argv = [ray, "start", "--address", address, "--block", "--disable-usage-stats"]
    if cpus is not None:
        argv += ["--num-cpus", str(cpus)]
    if gpus is not None:
        argv += ["--num-gpus", str(gpus)]
    argv += list(ray_args or [])
    env = dict(os.environ)
    if key is not None:
        env["REGISTRY_SIGNING_KEY"] = str(key.resolve())
    err(f"joining {address}: {' '.join(argv[1:])}")
    sys.stdout.flush()
    os.execve(argv[0], argv, env)


def _checks(key: Path | None) -> list[dict[str, Any]]:
    """What a worker needs, each with whether this machine has it."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    out: list[dict[str, Any]] = []

    def add(what: str, ok: bool, detail: str, fix: str | None = None) -> None:
        out.append({"what": what, "ok": ok, "detail": detail, "fix": fix})

    try:
        add("lora-registry", True, version("lora-registry"))
    except PackageNotFoundError:
        add("lora-registry", False, "not installed", "pip install 'lora-registry[gates,ray]'")
    for pkg, extra in (("ray", "ray"), ("torch", "gates"), ("peft", "gates")):
        if find_spec(pkg) is None:
            add(pkg, False, "not installed", f"pip install 'lora-registry[{extra}]'")
        else:
            try:
                add(pkg, True, version(pkg))
            except PackageNotFoundError:
                add(pkg, True, "importable")
    ray = _ray_command()
    add("ray command", ray is not None, ray or "not found",
        "Install the [ray] extra into the Python this command runs from.")  # fmt: skip
    where = os.environ.get("REGISTRY_HOME")
    if where:
        ok = (Path(where) / "registry.toml").is_file()
        add("registry", ok, f"$REGISTRY_HOME={where}" + ("" if ok else " has no registry.toml"),
            "Mount the registry's directory at the driver's path.")  # fmt: skip
    else:
        add(
            "registry",
            True,
            "each task opens the driver's registry path (mount it at the same path)",
        )
    signing = key or (
        Path(os.environ["REGISTRY_SIGNING_KEY"]) if os.environ.get("REGISTRY_SIGNING_KEY") else None
    )
    if signing is None:
        add("signing key", True, "none: the driver signs what the worker ran, if it has a key")
    else:
        from registry.errors import RegistryError
        from registry.keys import load_private

        try:
            add("signing key", True, f"{signing} ({load_private(signing).id})")
        except RegistryError as exc:
            add(
                "signing key",
                False,
                exc.one_line(),
                "Pass a PEM private key (`registry key generate`).",
            )
    return out


def _ray_command() -> str | None:
    """`ray` beside this Python (a virtualenv's), else on PATH."""
    here = Path(sys.executable).with_name("ray")
    return str(here) if here.exists() else shutil.which("ray")
