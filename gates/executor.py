"""Where training and gate runs execute: this process, or a cluster (gates/cluster.py).

The seam between the work and where it runs. A `TrainJob` names what to train (the
bundle trained from, the hyperparameters, the annotations the result is registered
with); an executor trains it somewhere and hands back a `Candidate`: the adapter's files,
already durable blobs in the registry's store, named by digest, and the train run's
result. Nothing is written to the database where the job ran: the driver registers each
candidate (gates.train.register_candidate) and records its train run with the
environment the job reported, exactly as a local run records it. Large bytes never travel
through the executor: a worker reads and writes the registry's store (a shared
filesystem, or the team's S3 remote) and returns digests.

`LocalExecutor` trains one job after another in this process and runs gates through
gates.engine.run_gates. `executor_for(on)` picks one from the command line's `--on`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from registry.errors import UsageError

if TYPE_CHECKING:
    from gates.base import GateResult
    from gates.engine import EventHook, RunRecord
    from registry.identity import Identity
    from registry.ingest.common import Staged
    from registry.policy import Policy
    from registry.repo import Registry

# progress(job, message): a line about one job (a training step, its end).
JobProgress = Callable[["TrainJob", str], None]


@dataclass(frozen=True)
class TrainJob:
    """One adapter to train: small and picklable (digests and numbers, no bytes)."""

    from_digest: str  # the bundle trained from (its base, dataset and config)
    name: str  # the name the result is registered under
    hyperparameters: dict[str, Any]  # the bundle's config hyperparameters + overrides
    annotations: dict[str, str]  # sweep id, rank, alpha, seed ... (part of the bundle digest)


@dataclass
class Candidate:
    """What training produced, before any database write."""

    adapter: Staged  # kind "adapter"; files already in reg.store: external_files, files={}
    result: GateResult  # the train run's result (loss curves, metrics, failures)
    environment: dict[str, Any]  # gates.engine.environment() where it trained
    started: str  # registry.db.now() when training started


class Executor(Protocol):
    """Runs training jobs and gate runs; `where` names it in output and records."""

    where: str  # "local", or "ray://HOST:PORT" / "ray"

    def train(
        self,
        reg: Registry,
        jobs: Sequence[TrainJob],
        *,
        progress: JobProgress | None = None,
    ) -> Iterator[tuple[TrainJob, Candidate | BaseException]]:
        """Each job with its candidate, or the exception that stopped it, as completed."""
        ...

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
        """Run gates on a bundle and record every result (gates.engine.run_gates)."""
        ...


def run_job(
    reg: Registry, job: TrainJob, progress: Callable[[str], None] | None = None
) -> Candidate:
    """Train one job in this process (locally, or in a worker that opened the registry):
    the bundle it names, the train gate's parameters under the policy in force."""
    from gates.train import train_candidate
    from registry.bundles import show

    return train_candidate(reg, show(reg, job.from_digest), job.hyperparameters, None, progress)


class LocalExecutor:
    """Everything in this process, one job after another."""

    where = "local"

    def train(
        self,
        reg: Registry,
        jobs: Sequence[TrainJob],
        *,
        progress: JobProgress | None = None,
    ) -> Iterator[tuple[TrainJob, Candidate | BaseException]]:
        for job in jobs:
            say = None if progress is None else _bind(progress, job)
            try:
                candidate: Candidate | BaseException = run_job(reg, job, say)
            except Exception as exc:  # one failed point does not stop the others
                candidate = exc
            yield job, candidate

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
        from gates.engine import run_gates

        return run_gates(
            reg, digest, policy, gate_names=gate_names, channel=channel, actor=actor,
            on_event=on_event,
        )  # fmt: skip


def _bind(progress: JobProgress, job: TrainJob) -> Callable[[str], None]:
    return lambda message: progress(job, message)


def executor_for(on: str | None) -> Executor:
    """The executor `--on` names: None (or "local") is this process; anything else is a
    Ray address that gates.cluster parses (`ray`, `ray://HOST:PORT`, `ray:HOST:PORT`).
    gates.cluster, and Ray with it, is imported only here, only for `--on`."""
    if on is None or on == "local":
        return LocalExecutor()
    if not on.startswith("ray"):
        raise UsageError(f"--on must be ray or ray://HOST:PORT, not {on!r}")
    try:
        from gates.cluster import RayExecutor, parse_on
    except ModuleNotFoundError as exc:
        if exc.name not in ("gates.cluster", "ray"):
            raise
        raise UsageError(
            f"--on {on}: Ray support is not installed here",
            "Install it with `pip install 'lora-registry[ray]'`.",
        ) from None
    executor: Executor = RayExecutor(parse_on(on))
    return executor
