"""`registry gates run|show|list` and `registry train`: the gate engine's command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.context import JsonOpt, RegistryGroup, actor_or_default, open_registry
from registry.config import ACTOR_HELP
from registry.output import echo, emit_json, err, paint, status, table

gates_app = typer.Typer(
    help="Run and inspect release gates.", no_args_is_help=True, cls=RegistryGroup
)


def register(app: typer.Typer) -> None:
    app.add_typer(gates_app, name="gates")
    app.command("train")(train)


def train(
    from_ref: Annotated[
        str,
        typer.Option(
            "--from", help="Bundle to train from: its base, and by default its dataset and config."
        ),
    ],
    name: Annotated[str, typer.Option(help="Name to register the new bundle under.")],
    dataset: Annotated[
        Path | None, typer.Option(help="Dataset directory of JSONL splits (default: the bundle's).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Training config, YAML/JSON/TOML (default: the bundle's).")
    ] = None,
    actor: Annotated[str | None, typer.Option(help=ACTOR_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """LoRA fine-tune a bundle's base; register the result (parent = --from). Exit 3 if the
    train run failed (loss did not fall, or overfitting)."""
    import sys

    from gates.train import train_bundle
    from registry.gate_runs import runs_for

    reg = open_registry()
    try:
        res = train_bundle(
            reg, from_ref, name=name, dataset=dataset, config=config,
            actor=actor_or_default(actor),
            progress=(lambda m: err(f"[train] {m}")) if sys.stderr.isatty() else None,
        )  # fmt: skip
        _, runs = runs_for(reg, res.tag)
    finally:
        reg.close()
    run = next((r for r in runs if r["gate"] == "train"), None)
    state = run["status"] if run else "missing"
    if json_out:
        emit_json({"tag": res.tag, "digest": res.digest, "created": res.created,
                   "train": {"status": state, "run": run and run["id"],
                             "metrics": run["metrics"] if run else {}}})  # fmt: skip
    else:
        again = "" if res.created else " (identical content was already registered)"
        echo(f"registered {res.tag} {res.digest}{again}")
        if run:
            m = run["metrics"]
            echo(
                f"train {paint(status(run['status']))}: {m.get('steps')} steps, train loss"
                f" {_num(m.get('initial_train_loss'))} -> {_num(m.get('final_train_loss'))},"
                f" overfitting {m.get('overfitting')}"
            )
            echo(f"  details: registry gates show {res.tag} --evidence {run['id']}")
    if state == "failed":
        raise typer.Exit(3)


def _policy(reg: Any, path: Path | None) -> Any:
    from gates.policy import current, load_file
    from registry.errors import PolicyError

    if path is not None:
        return load_file(path)
    pol = current(reg)
    if pol is None:
        raise PolicyError(
            "no policy is set and no --policy FILE was given",
            "Run `registry policy set POLICY.toml` first.",
        )
    return pol


@gates_app.command("run")
def run(
    ref: Annotated[str, typer.Argument(help="Bundle to gate.")],
    gate: Annotated[
        list[str] | None,
        typer.Option(
            "--gate",
            "-g",
            help="Gate to run (repeatable; default: every gate the policy requires).",
        ),
    ] = None,
    policy: Annotated[
        Path | None, typer.Option(help="Use this policy file instead of the one in force.")
    ] = None,
    channel: Annotated[
        str | None,
        typer.Option(
            help="Only the gates this channel requires; its bundle is the rollback target."
        ),
    ] = None,
    on: Annotated[
        str | None,
        typer.Option(
            help="Run each gate as a task on a Ray cluster: ray, ray://HOST:PORT (Ray Client)"
            " or ray:HOST:PORT (README: Scale-out on Ray)."
        ),
    ] = None,
    cpus: Annotated[
        float, typer.Option(help="With --on ray: CPUs each gate task asks for.", min=0)
    ] = 1.0,
    gpus: Annotated[
        float | None,
        typer.Option(
            help="With --on ray: GPUs each model gate asks for (default: 1 when the cluster"
            " has GPUs, else 0).",
            min=0,
        ),
    ] = None,
    actor: Annotated[str | None, typer.Option(help=ACTOR_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run gates on a bundle and record every result (exit 0 passed, 3 failed, 1 error)."""
    import sys

    from gates.engine import exit_code, run_gates

    reg = open_registry()
    try:
        pol = _policy(reg, policy)
        names = list(gate or [])
        if channel is not None and not names:
            names = list(pol.channel(channel).require)
        hook = None if json_out else _live_printer(sys.stderr.isatty())
        if on is None:
            records = run_gates(
                reg,
                ref,
                pol,
                gate_names=names or None,
                channel=channel,
                actor=actor_or_default(actor),
                on_event=hook,
            )
        else:
            from gates.cluster import RayExecutor, Resources, parse_on

            executor = RayExecutor(parse_on(on), Resources(cpus=cpus, gpus=gpus))
            records = executor.gates(
                reg, ref, pol, names, actor=actor_or_default(actor), channel=channel,
                on_event=hook,
            )  # fmt: skip
    finally:
        reg.close()
    if json_out:
        emit_json([vars(r) for r in records])
    else:
        echo(
            table(
                ["GATE", "STATUS", "SECONDS", "SUMMARY"],
                [(r.gate, status(r.status), f"{r.seconds:.1f}", r.summary[:90]) for r in records],
            )
        )
    code = exit_code(records)
    if code:
        raise typer.Exit(code)


def _live_printer(tty: bool) -> Any:
    """Progress lines on stderr: each gate's start, progress messages and result."""
    import sys
    import time

    started: dict[str, float] = {}

    def hook(gate: str, phase: str, message: str) -> None:
        if phase == "start":
            started[gate] = time.perf_counter()
            err(f"[{gate}] running...")
        elif phase == "progress":
            if tty:
                err(f"[{gate}] {message}")
        else:
            secs = time.perf_counter() - started.get(gate, time.perf_counter())
            err(f"[{gate}] {paint(status(phase), sys.stderr)} in {secs:.1f}s {message[:100]}")

    return hook


@gates_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="Bundle.")],
    evidence: Annotated[
        int | None, typer.Option(help="Print the full evidence report of this run id.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every gate run of a bundle: gate, status, metrics, thresholds, evidence."""
    from registry.errors import UsageError
    from registry.gate_runs import evidence as load_evidence
    from registry.gate_runs import runs_for

    reg = open_registry()
    try:
        bundle, runs = runs_for(reg, ref)
        if evidence is not None:
            run = next((r for r in runs if r["id"] == evidence), None)
            if run is None or not run["evidence_digest"]:
                raise UsageError(f"run {evidence} is not a gate run of {ref}")
            emit_json(load_evidence(reg, run["evidence_digest"]))
            return
    finally:
        reg.close()
    if json_out:
        emit_json({"bundle": bundle, "runs": runs})
        return
    if not runs:
        echo(f"no gate runs for {bundle['name']}:v{bundle['version']}; run `registry gates run`")
        return
    echo(f"{bundle['name']}:v{bundle['version']}  {bundle['digest']}")
    for r in runs:
        echo(
            f"\n#{r['id']} {r['gate']} v{r['gate_version']}  {paint(status(r['status']))}"
            f"  {r['ended_at'][:19]}  by {r['actor']}  policy {str(r['policy_digest'])[:19]}"
        )
        trust = r.get("trust") or {}
        if not trust.get("counts", True):
            echo(f"  does not count: {trust['why']}")
        elif r.get("origin"):
            echo(f"  {trust['why']}")
        if r["error"]:
            echo(f"  error: {r['error']}")
        elif r.get("summary"):
            echo(f"  {r['summary']}")
        for k, v in sorted(r["metrics"].items()):
            limit = r["thresholds"].get(k)
            echo(
                f"  {k} = {_num(v)}" + (f"  (threshold {_num(limit)})" if limit is not None else "")
            )
        for k, v in sorted(r["thresholds"].items()):
            if k not in r["metrics"]:
                echo(f"  threshold {k} = {_num(v)}")
        for rel, digest in sorted(r["inputs"].items()):
            echo(f"  read {rel} {digest[:19]}")
        echo(f"  evidence: registry gates show {ref} --evidence {r['id']}")


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@gates_app.command("list")
def list_gates(json_out: JsonOpt = False) -> None:
    """The gates installed (entry-point group registry.gates) and their policy keys."""
    from gates import catalog

    found: list[dict[str, Any]] = []
    for name in catalog.names():
        try:
            cls = catalog.load(name)
            found.append({"gate": name, "version": cls.version, "defaults": dict(cls.defaults),
                          "error": None})  # fmt: skip
        except Exception as exc:  # a broken third-party gate should not hide the others
            found.append({"gate": name, "version": None, "defaults": {},
                          "error": f"cannot load: {exc}"})  # fmt: skip
    if json_out:
        emit_json(found)
        return
    rows = [
        (g["gate"], "?" if g["version"] is None else g["version"],
         g["error"] or ", ".join(sorted(g["defaults"])) or "-")
        for g in found
    ]  # fmt: skip
    echo(table(["GATE", "VERSION", "POLICY KEYS"], rows))
