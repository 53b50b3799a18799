"""Gate runs and training points as Ray tasks (docs/design.md, "Scale-out on Ray").

`RayExecutor` is the gates.executor.Executor protocol on a Ray cluster: each gate of a
`gates run`, and each training point of a sweep, is one Ray task. A task carries only
small things (the registry's path and database URL, a digest, a gate name, the policy's
digest or file, a dict of hyperparameters); the worker opens the same registry (a shared
filesystem mounted at the same path, and the team's database), exports the bundle from
the blob store verifying every digest (registry.export), runs the gate, stores the
evidence blob, builds the gate_run row (gates.engine.run_row) and, when the worker has a
signing key, signs it with that key (registry.gate_runs.attest). The driver records the
row exactly as a local run would: same evidence, same columns; the environment names the
worker's host and Ray node. Large bytes (weights, adapters) go through the blob store,
never through Ray's object store.

Ray retries a task whose worker died (`max_retries`); a task that still fails is recorded
as `error`, never a pass; Ctrl-C cancels every task still running. `ray` is imported only
here, and only when a command asks for `--on ray` (the `[ray]` extra).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gates.base import ERROR, GateResult
from registry.errors import GateError, UsageError

if TYPE_CHECKING:
    from gates.engine import EventHook, RunRecord
    from gates.executor import Candidate, TrainJob
    from registry.identity import Identity
    from registry.policy import Policy
    from registry.repo import Registry

MAX_RETRIES = 2  # Ray re-runs a task whose worker process or node died, this many times
INSTALL_HINT = (
    "Install the extra on this machine and every worker: pip install 'lora-registry[ray]'"
)


@dataclass(frozen=True)
class Resources:
    """What one task asks of the cluster. `gpus` None: one GPU for a model task when the
    cluster has GPUs, else none."""

    cpus: float = 1.0
    gpus: float | None = None


def parse_on(on: str) -> str | None:
    """The Ray address an `--on` value names: `ray` (RAY_ADDRESS, else a cluster this
    machine started with `ray start`, else a local Ray started for this command) -> None;
    `ray://HOST:PORT` (Ray Client, the head's client port, 10001 by default) as it is;
    `ray:HOST:PORT` (a cluster's GCS address, from a machine on the cluster's network)."""
    if on == "ray":
        return None
    if on.startswith("ray://") and len(on) > len("ray://"):
        return on
    if on.startswith("ray:") and len(on) > len("ray:"):
        return on[len("ray:") :]
    raise UsageError(
        f"--on {on!r} is not an executor",
        "Use --on ray, --on ray://HOST:PORT (Ray Client) or --on ray:HOST:PORT (GCS address).",
    )


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--on ray needs Ray, which is not installed", INSTALL_HINT) from None
    return ray


class RayExecutor:
    """gates.executor.Executor on a Ray cluster."""

    def __init__(self, address: str | None = None, resources: Resources | None = None) -> None:
        self.address = address
        self.resources = resources or Resources()
        self.where = f"ray://{address}" if address and "://" not in address else address or "ray"

    # --- connection ---------------------------------------------------------------------

    def connect(self) -> Any:
        """Ray, initialized against the cluster (once per process)."""
        ray = _ray()
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.address, include_dashboard=False, log_to_driver=False,
                    logging_level="ERROR", configure_logging=True,
                )  # fmt: skip
            except ConnectionError as exc:
                raise UsageError(
                    f"cannot reach the Ray cluster at {self.address or 'RAY_ADDRESS/auto'}:"
                    f" {str(exc).splitlines()[0][:200]}",
                    "Start it with `ray start --head` (README: Scale-out on Ray), or check"
                    " the address.",
                ) from None
        return ray

    def _options(self, ray: Any, model: bool) -> dict[str, Any]:
        gpus = self.resources.gpus
        if gpus is None:
            gpus = 1.0 if model and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        return {
            "num_cpus": self.resources.cpus, "num_gpus": gpus, "max_retries": MAX_RETRIES,
            "retry_exceptions": False, "scheduling_strategy": "SPREAD",
        }  # fmt: skip

    # --- gates ----------------------------------------------------------------------------

    def gates(
        self,
        reg: Registry,
        digest: str,
        policy: Policy,
        gate_names: list[str],
        *,
        actor: str | Identity,
        channel: str | None = None,
        on_event: EventHook | None = None,
    ) -> list[RunRecord]:
        """Every gate a Ray task at once (no gate depends on another's result); each result
        recorded when it arrives; the records returned in gate order."""
        from gates import catalog
        from gates.engine import order, record, record_row
        from registry.bundles import show
        from registry.db import now
        from registry.identity import of

        names = order(gate_names or policy.required_gates())
        if not names:
            raise GateError("no gates to run: the policy requires none and no --gate was given")
        info = show(reg, digest)
        who = of(reg, actor)
        hook = on_event or (lambda _g, _p, _m: None)
        ray = self.connect()
        task = ray.remote(run_gate_task)
        base = _job(reg, policy)
        pending: dict[Any, tuple[str, str]] = {}
        for name in names:
            job = {**base, "digest": info["digest"], "gate": name, "channel": channel,
                   "actor": who.user}  # fmt: skip
            ref = task.options(**self._options(ray, catalog.load(name).needs_model)).remote(job)
            pending[ref] = (name, now())
            hook(name, "start", "")
        records: dict[str, RunRecord] = {}
        for ref, out in _as_completed(ray, pending):
            name, started = pending[ref]
            if isinstance(out, BaseException):
                result = GateResult(ERROR, summary=_failure(out), error=_failure(out))
                rec = record(reg, info["digest"], catalog.load(name), policy.digest, {}, result,
                             started, who, environment={"executor": self.where})  # fmt: skip
            else:
                rec = record_row(reg, out["row"], who, out["summary"])
                rec.seconds = out["seconds"]
            records[name] = rec
            hook(name, rec.status, rec.summary)
        return [records[n] for n in names]

    # --- training -------------------------------------------------------------------------

    def train(
        self,
        reg: Registry,
        jobs: Sequence[TrainJob],
        *,
        progress: Callable[[TrainJob, str], None] | None = None,
    ) -> Iterator[tuple[TrainJob, Candidate | BaseException]]:
        """Each job a Ray task; yields (job, Candidate or the error) as each finishes."""
        ray = self.connect()
        task = ray.remote(train_task)
        base = _job(reg, None)
        pending: dict[Any, TrainJob] = {}
        for j in jobs:
            ref = task.options(**self._options(ray, True)).remote({**base, "train": j})
            pending[ref] = j
            if progress:
                progress(j, f"submitted to {self.where}")
        for ref, out in _as_completed(ray, pending):
            yield pending[ref], out


def _as_completed(ray: Any, pending: dict[Any, Any]) -> Iterator[tuple[Any, Any]]:
    """(ref, value or the exception) as each task ends; Ctrl-C cancels those still out."""
    waiting = list(pending)
    try:
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for ref in ready:
                try:
                    yield ref, ray.get(ref)
                except Exception as exc:  # a lost worker after its retries, a cancelled task
                    yield ref, exc
    except KeyboardInterrupt:
        for ref in waiting:
            ray.cancel(ref, force=True)
        raise


def _failure(exc: BaseException) -> str:
    """One line for a task that did not come back (the worker's own error when it has one)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    first = (str(exc).strip().splitlines() or [""])[-1]
    return f"the Ray task did not finish: {type(exc).__name__}: {first[:300]}"


def _job(reg: Registry, policy: Policy | None) -> dict[str, Any]:
    """What every task needs to open this registry and its policy on a worker."""
    job: dict[str, Any] = {"root": str(reg.root.resolve()), "database_url": reg.cfg.database_url}
    if policy is not None:
        job["policy"] = {
            "digest": policy.digest, "text": policy.text, "files": dict(policy.files),
            "root": str(Path(policy.root).resolve()) if policy.root is not None else None,
        }  # fmt: skip
    return job


# --- on the worker ---------------------------------------------------------------------------


def _open(job: dict[str, Any]) -> Registry:
    """The driver's registry, opened on this worker (same path, same database)."""
    from dataclasses import replace

    from registry import config
    from registry.repo import Registry

    root = Path(job["root"])
    if not (root / config.CONFIG_FILE).is_file():
        raise GateError(
            f"the worker on {socket.gethostname()} cannot see the registry at {root}",
            "Mount the registry's directory at the same path on every worker (README: Scale-out"
            " on Ray).",
        )
    cfg = replace(config.load(root), database_url=job["database_url"])
    return Registry(cfg)


def _policy(reg: Registry, spec: dict[str, Any]) -> Policy:
    from gates.policy import SCHEMA
    from registry import policy as _policy_mod

    pol = _policy_mod.parse(
        spec["text"], Path(spec["root"]) if spec["root"] else None, check_files=False, schema=SCHEMA
    )
    pol.files = dict(spec["files"])
    if pol.root is None:
        pol.blob_path = reg.store.path
    if pol.digest != spec["digest"]:
        raise GateError(f"the worker read another policy than {spec['digest']}")
    return pol


def worker_environment(device: str | None) -> dict[str, Any]:
    """gates.engine.environment() plus where this worker is."""
    from gates.engine import environment

    env = environment(device)
    env["executor"] = "ray"
    env["host"] = socket.gethostname()
    import sys

    ray = sys.modules.get("ray")  # imported in a Ray worker; never started here
    env["ray_node"] = None
    if ray is not None and ray.is_initialized():
        env["ray_node"] = ray.get_runtime_context().get_node_id()
    return env


def run_gate_task(job: dict[str, Any]) -> dict[str, Any]:
    """One gate on a worker: materialize, run, store the evidence, build (and sign) the row."""
    from gates.engine import execute, materialize, run_row
    from registry import gate_runs, keys
    from registry.bundles import show

    reg = _open(job)
    try:
        policy = _policy(reg, job["policy"])
        info = show(reg, job["digest"])
        with materialize(reg, f"{info['name']}@{info['digest']}") as workdir:
            done = execute(reg, info, workdir, job["gate"], policy, channel=job["channel"])
        ev = done.result.evidence
        env = worker_environment(ev.get("device") if isinstance(ev, dict) else None)
        row = run_row(
            reg, info["digest"], done.gate, policy.digest, done.inputs, done.result,
            done.started, done.ended, job["actor"], env,
        )  # fmt: skip
        key = keys.configured(reg.cfg.signing_key)
        if key is not None:
            row = gate_runs.attest(reg, key, row)
        return {"row": row, "summary": done.result.summary, "seconds": done.seconds}
    finally:
        reg.close()


def train_task(job: dict[str, Any]) -> Candidate:
    """One training point on a worker: the adapter's files go into the blob store; the
    driver registers the bundle (gates.train.register_candidate)."""
    from gates.executor import run_job

    reg = _open(job)
    try:
        candidate = run_job(reg, job["train"])
        where = worker_environment(None)
        candidate.environment.update({k: where[k] for k in ("executor", "host", "ray_node")})
        return candidate
    finally:
        reg.close()
