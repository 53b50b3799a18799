"""The gate engine: materialize the bundle once, run gates in dependency order, record.

Each run stores its evidence report as a blob (canonical JSON) and inserts a gate_run row:
bundle, gate name and version, policy digest, digests of the files it read, status,
metrics, thresholds, environment, start, end, actor. A gate that raises is recorded as
`error` with the message, never as a pass. Re-running adds a run; history is kept.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gates import catalog
from gates.base import ERROR, FAILED, PASSED, Gate, GateContext, GateResult
from registry import locks
from registry.db import now
from registry.digest import canonical_json
from registry.errors import GateError, RegistryError
from registry.policy import Policy
from registry.repo import Registry

if TYPE_CHECKING:
    from registry.identity import Identity

# on_event(gate, phase, message): phase is "start", "progress" or the final status.
EventHook = Callable[[str, str, str], None]
PACKAGES = ("torch", "transformers", "peft", "tokenizers", "safetensors", "bitsandbytes", "jinja2")


@dataclass
class RunRecord:
    id: int
    gate: str
    status: str
    summary: str
    metrics: dict[str, Any]
    evidence_digest: str | None
    seconds: float


def order(names: list[str]) -> list[str]:
    """`names` sorted so each gate runs after the gates it declares in `after`."""
    wanted = list(dict.fromkeys(names))
    done: list[str] = []
    visiting: set[str] = set()

    def visit(n: str) -> None:
        if n in done:
            return
        if n in visiting:
            raise GateError(f"gates depend on each other in a cycle through {n!r}")
        visiting.add(n)
        for dep in catalog.load(n).after:
            if dep in wanted:
                visit(dep)
        visiting.discard(n)
        done.append(n)

    for n in wanted:
        visit(n)
    return done


def environment(device: str | None = None) -> dict[str, Any]:
    """Python, platform, library versions (from metadata: nothing is imported) and device;
    when a gate has imported torch, also its CPU kernel path (DEFAULT, AVX2, AVX512...:
    kernels of different paths round differently) and its thread count. A gate that runs
    no model never imports torch, and this does not either."""
    from importlib.metadata import PackageNotFoundError, version

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in PACKAGES:
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    torch = sys.modules.get("torch")
    if device is None:
        device = "cpu"
        if torch is not None and torch.cuda.is_available():
            device = f"cuda:{torch.cuda.get_device_name(0)}"
    env["device"] = device
    if torch is not None:
        capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
        env["cpu_kernel_path"] = capability() if capability is not None else None
        env["torch_threads"] = torch.get_num_threads()
    return env


@contextmanager
def materialize(reg: Registry, digest: str) -> Iterator[Path]:
    """The bundle exported into a private temp directory, removed afterwards."""
    from registry.export import export

    tmp_root = reg.root / "tmp"
    tmp_root.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gates-", dir=tmp_root))
    try:
        # Thrown away afterwards (no fsync); the stored adapter_config.json as it is, since
        # adapter-compat checks what the adapter itself says (registry/export.py).
        export(reg, digest, workdir / "bundle", durable=False, publish=False)
        yield workdir / "bundle"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_gates(
    reg: Registry,
    ref: str,
    policy: Policy,
    *,
    gate_names: list[str] | None = None,
    channel: str | None = None,
    actor: str | Identity,
    on_event: EventHook | None = None,
) -> list[RunRecord]:
    """Run gates on a bundle and record every result; returns the records in run order."""
    from registry.bundles import show

    names = order(gate_names or policy.required_gates())
    if not names:
        raise GateError("no gates to run: the policy requires none and no --gate was given")
    info = show(reg, ref)
    digest = info["digest"]
    hook = on_event or (lambda _g, _p, _m: None)
    records: list[RunRecord] = []
    results: dict[str, GateResult] = {}
    with materialize(reg, f"{info['name']}@{digest}") as workdir:
        for name in names:
            hook(name, "start", "")
            done = execute(reg, info, workdir, name, policy, channel=channel, hook=hook,
                           results=results)  # fmt: skip
            results[name] = done.result
            rec = record(
                reg, digest, done.gate, policy.digest, done.inputs, done.result, done.started,
                actor, ended=done.ended,
            )  # fmt: skip
            rec.seconds = done.seconds
            records.append(rec)
            hook(name, done.result.status, done.result.summary)
    return records


@dataclass
class Executed:
    """One gate run, not yet recorded: what `execute` returns (in this process or on a
    worker, gates/cluster.py)."""

    gate: type[Gate]
    result: GateResult
    inputs: dict[str, str]
    started: str
    ended: str
    seconds: float


def execute(
    reg: Registry,
    info: dict[str, Any],
    workdir: Path,
    name: str,
    policy: Policy,
    *,
    channel: str | None = None,
    hook: EventHook | None = None,
    results: dict[str, GateResult] | None = None,
) -> Executed:
    """Run gate `name` on a materialized bundle (`info` is registry.bundles.show's); never
    raises for what the gate does: a raising gate is an `error` result."""
    cls = catalog.load(name)
    ctx = GateContext(
        registry=reg, bundle_digest=info["digest"], bundle=info, workdir=workdir,
        policy=policy, params=policy.params(name), channel=channel,
        progress=_progress(hook or (lambda _g, _p, _m: None), name),
        results=results if results is not None else {},
    )  # fmt: skip
    started, t0 = now(), time.perf_counter()
    result = _run_one(cls, ctx)
    return Executed(cls, result, ctx.inputs, started, now(), time.perf_counter() - t0)


def _progress(hook: EventHook, name: str) -> Callable[[str], None]:
    """The progress callback of gate `name`: its messages go to the hook."""
    return lambda msg: hook(name, "progress", msg)


def _run_one(cls: type[Gate], ctx: GateContext) -> GateResult:
    try:
        result = cls().run(ctx)
        if not isinstance(result, GateResult):
            raise GateError(f"gate {cls.name} returned {type(result).__name__}, not GateResult")
        return result
    except RegistryError as exc:
        return GateResult(ERROR, summary=exc.one_line(), error=exc.one_line())
    except Exception as exc:  # a gate that raises is an error, never a pass
        msg = f"{type(exc).__name__}: {exc}"
        return GateResult(ERROR, summary=msg, error=msg)


@locks.writer("gate run")
def record(
    reg: Registry,
    digest: str,
    cls: type[Gate],
    policy_digest: str | None,
    inputs: dict[str, str],
    result: GateResult,
    started: str,
    actor: str | Identity,
    *,
    environment: dict[str, Any] | None = None,
    ended: str | None = None,
) -> RunRecord:
    """Store the evidence blob, then the gate_run row and its audit event (and, with a
    signing key, its attestation: registry.gate_runs). `environment` is where the gate ran
    when that was not this process (a Ray worker, a training job); else this process's."""
    from registry.identity import of

    who = of(reg, actor)
    row = run_row(reg, digest, cls, policy_digest, inputs, result, started, ended or now(),
                  who.user, environment)  # fmt: skip
    return record_row(reg, row, who, result.summary)


def run_row(
    reg: Registry,
    digest: str,
    cls: type[Gate],
    policy_digest: str | None,
    inputs: dict[str, str],
    result: GateResult,
    started: str,
    ended: str,
    actor_user: str,
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The gate_run row of a result, its evidence blob stored first. Built where the gate
    ran, so a worker can sign exactly the row the driver records (gates/cluster.py)."""
    evidence = {
        "gate": cls.name,
        "version": cls.version,
        "bundle": digest,
        "status": result.status,
        "summary": result.summary,
        "metrics": result.metrics,
        "thresholds": result.thresholds,
        "inputs": inputs,
        "evidence": result.evidence,
        "error": result.error,
    }
    ev = reg.store.put_bytes(canonical_json(_jsonable(evidence)))
    if env is None:
        device = result.evidence.get("device") if isinstance(result.evidence, dict) else None
        env = environment(device)
    return {
        "bundle_digest": digest, "gate": cls.name, "gate_version": str(cls.version),
        "policy_digest": policy_digest, "status": result.status,
        "metrics": _dumps(result.metrics), "thresholds": _dumps(result.thresholds),
        "inputs": _dumps(inputs), "environment": _dumps(env), "evidence_digest": ev.digest,
        "error": result.error, "actor": actor_user, "started_at": started, "ended_at": ended,
    }  # fmt: skip


def record_row(reg: Registry, row: dict[str, Any], who: Identity, summary: str) -> RunRecord:
    """Insert a row `run_row` built (here or on a worker, which may have signed it)."""
    from registry import gate_runs

    run_id = gate_runs.insert(reg, who, row)
    return RunRecord(
        run_id, row["gate"], row["status"], summary, json.loads(row["metrics"]),
        row["evidence_digest"], 0.0,
    )  # fmt: skip


def exit_code(records: list[RunRecord]) -> int:
    """0 when every gate passed, 1 when one could not run, 3 when any failed."""
    statuses = {r.status for r in records}
    if ERROR in statuses:
        return 1
    if FAILED in statuses:
        return 3
    return 0 if statuses <= {PASSED} else 1


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_default, allow_nan=False))


def _default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, set | tuple):
        return sorted(obj) if isinstance(obj, set) else list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _dumps(obj: Any) -> str:
    return json.dumps(_jsonable(obj), sort_keys=True)
