"""`registry sweep` (train, register and gate one bundle per rank) and `registry sweep show`.

`sweep` is a group whose callback runs the sweep, so `registry sweep --from REF --rank
4,8` works as the issue writes it and `registry sweep show ID` reads one back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.context import JsonOpt, RegistryGroup, actor_or_default, open_registry
from registry.config import ACTOR_HELP
from registry.output import echo, emit_json, err, human_size, paint, status, table

sweep_app = typer.Typer(
    cls=RegistryGroup,
    invoke_without_command=True,
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(sweep_app, name="sweep")


@sweep_app.callback()
def sweep(
    ctx: typer.Context,
    from_ref: Annotated[
        str | None,
        typer.Option("--from", help="Bundle to train from: its base, dataset and config."),
    ] = None,
    rank: Annotated[
        str | None, typer.Option(help="LoRA ranks, comma-separated, e.g. 4,8,16,32.")
    ] = None,
    alpha: Annotated[
        str | None,
        typer.Option(
            help="lora_alpha: 2r (twice the rank) or a number (the same for every rank);"
            " default: the config's alpha/r ratio."
        ),
    ] = None,
    target_modules: Annotated[
        list[str] | None,
        typer.Option(
            "--target-modules",
            help="Modules to adapt, comma-separated (or all-linear); repeat to sweep sets."
            " Default: the config's.",
        ),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(help="Seeds, comma-separated, e.g. 1,2 (default: the config's seed)."),
    ] = None,
    gates: Annotated[
        str | None,
        typer.Option(
            help="Gates to run on each point, comma-separated (default: the policy's"
            " production gates that need a model)."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Name to register the bundles under (default: --from's).")
    ] = None,
    on: Annotated[
        str | None,
        typer.Option(help="Run on a Ray cluster: ray or ray://HOST:PORT (default: here)."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Also write a plot of the table (.png or .svg).")
    ] = None,
    actor: Annotated[str | None, typer.Option(help=ACTOR_HELP)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Sweep LoRA ranks: train one adapter per point (and seed), register
    each (parent = --from, annotated with the sweep id), run the gates on each and print
    the table, the Pareto front and the recommended bundle. Rerunning the same command
    resumes. Exit 0 with a recommendation, 3 when no point passes every gate, 1 when a
    point could not be trained or gated."""
    if ctx.invoked_subcommand is not None:
        return
    import sys

    from gates.executor import executor_for
    from gates.sweep import parse_alpha, parse_ints, parse_modules, plan_sweep, run_sweep
    from gates.sweep_review import PLOT_SUFFIXES, sweep_table
    from registry.errors import UsageError

    if from_ref is None or rank is None:
        raise UsageError(
            "registry sweep needs --from REF and --rank R1,R2,...",
            "E.g. registry sweep --from support-bot:v3 --rank 4,8,16,32.",
        )
    ranks = parse_ints(rank, "--rank", 1)
    seed_list = parse_ints(seeds, "--seeds", 0) if seeds is not None else None
    alpha_rule = parse_alpha(alpha)
    modules = parse_modules(target_modules)
    gate_list = [g.strip() for g in gates.split(",") if g.strip()] if gates is not None else None
    if gate_list is not None and not gate_list:
        raise UsageError("--gates: name at least one gate, e.g. --gates target-eval")
    if plot is not None and plot.suffix.lower() not in PLOT_SUFFIXES:
        raise UsageError(f"--plot: {plot.name} must end in .png or .svg")
    executor = executor_for(on)
    reg = open_registry()
    try:
        plan = plan_sweep(
            reg, from_ref, ranks=ranks, alpha=alpha_rule, target_modules=modules,
            seeds=seed_list, gates=gate_list, name=name,
        )  # fmt: skip
        if not json_out:
            err(
                f"sweep {plan.sweep_id}: {len(plan.points)} points from {plan.info['tag']}"
                f" on {executor.where}; gates: {', '.join(plan.gates) or 'none'}"
            )
        hook = None if json_out else _point_printer(sys.stderr.isatty())
        outcome = run_sweep(reg, plan, executor, actor=actor_or_default(actor), on_point=hook)
        data = sweep_table(reg, plan.sweep_id)
    finally:
        reg.close()
    data["executor"] = outcome.executor
    data["run"] = {"trained": outcome.trained, "gated": outcome.gated, "done": outcome.done,
                   "errors": outcome.errors}  # fmt: skip
    _finish(data, plot, json_out)
    if outcome.errors:
        raise typer.Exit(1)
    if data["recommended"]["bundle"] is None:
        raise typer.Exit(3)


@sweep_app.command("show")
def show(
    sweep_id: Annotated[str, typer.Argument(help="Sweep id (or a unique prefix).")],
    plot: Annotated[
        Path | None, typer.Option(help="Write a plot of the table (.png or .svg).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """A sweep's table again: every point, the Pareto front, the recommended bundle."""
    from gates.sweep_review import PLOT_SUFFIXES, sweep_table
    from registry.errors import UsageError

    if plot is not None and plot.suffix.lower() not in PLOT_SUFFIXES:
        raise UsageError(f"--plot: {plot.name} must end in .png or .svg")
    reg = open_registry()
    try:
        data = sweep_table(reg, sweep_id)
    finally:
        reg.close()
    _finish(data, plot, json_out)


def _finish(data: dict[str, Any], plot: Path | None, json_out: bool) -> None:
    if plot is not None:
        from gates.sweep_review import plot as write_plot

        write_plot(data, plot)
        data["plot"] = str(plot)
    if json_out:
        emit_json(data)
        return
    echo(render(data))
    if plot is not None:
        echo(f"plot: {plot}")


def _point_printer(tty: bool) -> Any:
    """One line per event of each point on stderr; training and gate progress on a tty."""
    import sys

    def hook(point: Any, phase: str, message: str) -> None:
        tag = f"[{point.label}]"
        if phase == "progress":
            if tty:
                err(f"{tag} {message}")
        elif phase == "gate":
            if tty:
                err(f"{tag} {message} running...")
        elif phase in ("passed", "failed", "error"):
            err(f"{tag} {paint(status(phase), sys.stderr)} {message[:110]}")
        else:
            err(f"{tag} {phase} {message}".rstrip())

    return hook


def _num(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _fig(f: dict[str, Any] | None, seeds: int) -> str:
    if not f:
        return "-"
    lo, hi = f.get("lower"), f.get("upper")
    interval = f" [{_num(lo, '+.3f')}, {_num(hi, '+.3f')}]" if lo is not None else ""
    spread = f" ±{(f['max'] - f['min']) / 2:.3f}" if seeds > 1 else ""
    return f"{f['mean']:+.3f}{spread}{interval}"


def _stat(s: dict[str, Any] | None, fmt: str, seeds: int) -> str:
    if not s:
        return "-"
    spread = f" ±{format((s['max'] - s['min']) / 2, fmt)}" if seeds > 1 else ""
    return f"{format(s['mean'], fmt)}{spread}"


def render(data: dict[str, Any]) -> str:
    """The sweep as text: one row per (rank, alpha) group, then the front and the pick."""
    groups = data["groups"]
    gates = ["train", *data["gates"]]
    swept_modules = any(g["target_modules"] for g in groups)
    headers = ["RANK", "ALPHA", *(["MODULES"] if swept_modules else []), "SEEDS", "PARAMS",
               "ADAPTER", "PEAK MB", "TRAIN LOSS", "VAL LOSS", "GAIN [95%]", "DROP [95%]",
               "SERVING", *[g.upper() for g in gates], "ALL", "PARETO"]  # fmt: skip
    rows = []
    for g in groups:
        n = len(g["seeds"])
        serving = g["serving_overhead"]
        rows.append([
            str(g["rank"]), f"{g['alpha']:g}", *([g["target_modules"] or "-"] if swept_modules
                                                 else []),
            ",".join(str(s) for s in g["seeds"]),
            "-" if g["trainable_parameters"] is None else f"{g['trainable_parameters']:,}",
            human_size(g["adapter_bytes"]), _stat(g["peak_memory_mb"], ".0f", n),
            _stat(g["train_loss"], ".3f", n), _stat(g["val_loss"], ".3f", n),
            _fig(g["gain"], n), _fig(g["drop"], n),
            "-" if not serving else f"{_stat(serving, '.2f', n)}x",
            *[status(g["gates"][name]) for name in gates],
            status("passed", "yes") if g["passes"] else status("failed", "no"),
            "*" if g["pareto"] else "",
        ])  # fmt: skip
    src = data["from"]["tag"] or data["from"]["digest"]
    lines = [
        f"sweep {data['sweep']}: {data['name']} from {src}, {len(data['points'])} points,"
        f" gates {', '.join(data['gates']) or 'none'}",
        "",
        table(headers, rows),
        "",
        "GAIN: target-eval's change vs the baseline, DROP: regression-eval's; [95%]: their"
        " confidence interval (across seeds: the widest); ±: half the range over seeds;"
        " SERVING: adapter latency / base (serving-eval)",
        f"passing every gate: {', '.join(data['passing']) or 'none'}",
        f"pareto front (gain up, drop down, parameters down): {', '.join(data['pareto']) or '-'}",
    ]
    rec = data["recommended"]
    if rec["bundle"]:
        lines.append(
            f"recommended: {rec['bundle']['tag']} {rec['bundle']['digest']}"
            f" ({rec['group']}, seed {rec['seed']}): {rec['why']}"
        )
    else:
        lines.append(f"recommended: none ({rec['why']})")
    lines.append(f"  show again: registry sweep show {data['sweep']}")
    return "\n".join(lines)
