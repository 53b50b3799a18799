"""Rank sweeps: `registry sweep` trains one adapter per point and compares them.

A point is a LoRA rank, an alpha, a seed (and, when swept, a set of target modules). Each
is trained from one bundle (REF: its base, dataset and config, the point's values
overriding the config's), registered as a bundle (parent = REF, the point's own config,
annotations `sweep`, `sweep.rank`, `sweep.alpha`, `sweep.seed`), and gated with the
policy's model gates. Where the work runs is an Executor (gates/executor.py): this
process, or a Ray cluster.

The sweep id is the first 12 hex digits of the sha256 of the spec's canonical JSON (the
bundle trained from, the name, every point with its seed, the gate names): the same
command finds the same sweep, and on one CPU kernel path trains the same bytes into the
same bundle digests. Running it again resumes: a point whose bundle is registered with a
train run is not retrained, and a gate that has a passed or failed run of it under the
policy in force is not run again (an `error` run is retried).

The table (`sweep_table`) is built from the records alone, so `registry sweep show` gives
the same table later from any process. Its figures are the gates' own (gates/review.py):
target-eval's gain and regression-eval's drop with their confidence intervals,
serving-eval's adapter latency ratio; the train run gives trainable parameters, losses
and peak training memory. Seeds are aggregated per (rank, alpha, target modules).

The recommendation (RULE): among the groups where every seed passed every gate (train
included), keep the Pareto front (gain up, drop down, memory down; memory is the number
of trainable parameters, which is what rank changes in training memory and is the same
on every machine, while a CPU's peak resident set is mostly the process itself); of
those, the ones whose mean gain reaches the lower bound of the best passing gain (they
are not distinguishable from the best); of those, the fewest trainable parameters (then
the smaller drop, then the lower rank). Its bundle is the seed with the highest gain.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import PolicyError, RegistryError, UsageError

if TYPE_CHECKING:
    from gates.executor import Executor
    from registry.identity import Identity
    from registry.ingest.common import Staged
    from registry.policy import Policy
    from registry.repo import Registry

SCHEMA = 1
ID_HEX = 12
MAX_DIGITS = 6  # ranks and seeds below a million (int() of 5,000 digits is an error)
TRAIN = "train"
# on_point(point, phase, message): phases "done", "progress" (training and gate messages),
# "registered", "gate" (one starts), a gate's status ("passed", ...) and "error".
PointHook = Callable[["Point", str, str], None]
RULE = (
    "among the (rank, alpha) groups where every seed passed every gate, the Pareto front"
    " (gain up, drop down, trainable parameters down); of those, the ones whose mean gain"
    " reaches the lower bound of the best gain; of those, the fewest trainable parameters"
    " (then the smaller drop, then the lower rank); its seed with the highest gain"
)


# --- parsing the command line ----------------------------------------------------------------


def parse_ints(text: str, what: str, minimum: int) -> list[int]:
    """`4,8,16` as [4, 8, 16]; anything else is one UsageError naming the bad item."""
    items = [t.strip() for t in text.split(",")]
    out: list[int] = []
    for t in items:
        if not (t.isascii() and t.isdigit()) or len(t) > MAX_DIGITS or int(t) < minimum:
            raise UsageError(
                f"{what}: {t[:20]!r} is not an integer >= {minimum}",
                f"Give a comma-separated list, e.g. {what} {'4,8,16' if minimum else '0,1,2'}.",
            )
        if int(t) not in out:
            out.append(int(t))
    return out


def parse_alpha(text: str | None) -> tuple[str, float] | None:
    """`2r` (alpha = 2 x rank; `r` is 1 x rank) -> ("ratio", 2.0); `16` -> ("fixed", 16.0);
    None -> None (the ratio of the bundle's own config)."""
    if text is None:
        return None
    t = text.strip().lower()
    try:
        if t.endswith("r"):
            k = float(t[:-1] or "1")
            kind = "ratio"
        else:
            k, kind = float(t), "fixed"
    except ValueError:
        k, kind = -1.0, ""
    if not kind or not k > 0 or k != k or k == float("inf"):
        raise UsageError(
            f"--alpha: {text!r} is neither a multiple of the rank (2r) nor a positive number",
            "Use --alpha 2r (alpha = 2 x rank) or --alpha 16 (the same alpha for every rank).",
        )
    return kind, k


def parse_modules(values: list[str] | None) -> list[tuple[str, ...] | str] | None:
    """Each `--target-modules a,b` as a sorted tuple (`all-linear` as that string); None
    when not given (the bundle's own)."""
    if not values:
        return None
    out: list[tuple[str, ...] | str] = []
    for v in values:
        names = sorted({n.strip() for n in v.split(",") if n.strip()})
        if not names or any(not n.replace("_", "").replace(".", "").replace("-", "").isalnum()
                            for n in names):  # fmt: skip
            raise UsageError(
                f"--target-modules: {v!r} is not a comma-separated list of module names",
                "E.g. --target-modules q_proj,v_proj (or all-linear); repeat it to sweep sets.",
            )
        entry: tuple[str, ...] | str = "all-linear" if names == ["all-linear"] else tuple(names)
        if entry not in out:
            out.append(entry)
    return out


# --- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    rank: int
    alpha: float
    seed: int
    target_modules: tuple[str, ...] | str | None = None  # None: the bundle's own

    @property
    def modules(self) -> str:
        tm = self.target_modules
        return "" if tm is None else tm if isinstance(tm, str) else ",".join(tm)

    @property
    def key(self) -> str:
        """The point's id within its sweep (a row key: short whatever the modules)."""
        tail = ""
        if self.target_modules is not None:
            tail = "-m" + hashlib.sha256(self.modules.encode()).hexdigest()[:8]
        return f"r{self.rank}-a{self.alpha:g}-s{self.seed}{tail}"

    @property
    def group(self) -> tuple[int, float, str]:
        return self.rank, self.alpha, self.modules

    @property
    def label(self) -> str:
        mods = f" [{self.modules}]" if self.target_modules is not None else ""
        return f"r={self.rank} alpha={self.alpha:g} seed={self.seed}{mods}"

    def spec(self) -> dict[str, Any]:
        tm = self.target_modules
        return {
            "rank": self.rank, "alpha": _number(self.alpha), "seed": self.seed,
            "target_modules": list(tm) if isinstance(tm, tuple) else tm,
        }  # fmt: skip

    def annotations(self, sweep_id: str) -> dict[str, str]:
        out = {
            "sweep": sweep_id, "sweep.rank": str(self.rank),
            "sweep.alpha": f"{self.alpha:g}", "sweep.seed": str(self.seed),
        }  # fmt: skip
        if self.target_modules is not None:
            out["sweep.target_modules"] = self.modules
        return out

    @classmethod
    def from_spec(cls, d: dict[str, Any]) -> Point:
        tm = d.get("target_modules")
        return cls(int(d["rank"]), float(d["alpha"]), int(d["seed"]),
                   tuple(tm) if isinstance(tm, list) else tm)  # fmt: skip


@dataclass
class Plan:
    """What a sweep will do, checked before any work: refusals leave nothing behind."""

    sweep_id: str
    spec: dict[str, Any]
    info: dict[str, Any]  # registry.bundles.show() of the bundle trained from
    name: str
    policy: Policy
    gates: list[str]
    points: list[Point]
    configs: dict[str, Staged] = field(default_factory=dict)  # point key -> config
    hyperparameters: dict[str, dict[str, Any]] = field(default_factory=dict)


def sweep_id(spec: dict[str, Any]) -> str:
    from registry.digest import canonical_json

    return hashlib.sha256(canonical_json(spec)).hexdigest()[:ID_HEX]


def default_gates(policy: Policy) -> list[str]:
    """The production channel's gates that need a model (every channel's, without one),
    but train: the sweep's training is that run."""
    from gates import catalog

    if "production" in policy.channels:
        names = list(policy.channel("production").require)
    else:
        names = policy.required_gates()
    return [g for g in names if g != TRAIN and catalog.load(g).needs_model]


def plan_sweep(
    reg: Registry,
    ref: str,
    *,
    ranks: list[int],
    alpha: tuple[str, float] | None = None,
    target_modules: list[tuple[str, ...] | str] | None = None,
    seeds: list[int] | None = None,
    gates: list[str] | None = None,
    name: str | None = None,
) -> Plan:
    """Resolve and check a sweep: the bundle, its config with each point's values, the
    policy and the gates. Raises before anything is written."""
    from gates import catalog
    from gates.policy import current
    from gates.train import _lora_parent, resolve_hyperparameters
    from registry.bundles import show
    from registry.manifest import check_name

    info = show(reg, ref)
    for kind in ("dataset", "config"):
        if kind not in info["components"]:
            raise UsageError(
                f"{info['tag']} has no {kind}; a sweep trains from the bundle's own {kind}",
                "Register one with `registry train --from REF --dataset DIR --config FILE`.",
            )
    name = check_name(name or info["name"])
    hyper = dict(info["components"]["config"]["meta"].get("hyperparameters") or {})
    parent = _lora_parent(info)
    base, _ = resolve_hyperparameters(hyper, parent)
    policy = current(reg)
    if policy is None:
        raise PolicyError(
            "no policy is set; a sweep runs the policy's gates on every point",
            "Run `registry policy set POLICY.toml` first.",
        )
    if gates is None:
        names = default_gates(policy)
    else:
        names = list(dict.fromkeys(gates))
        for g in names:
            catalog.load(g)  # an unknown gate is a PolicyError naming the known ones
        if TRAIN in names:
            raise UsageError(
                "--gates: train is the sweep's own training run, recorded for every point",
                "Leave it out of --gates.",
            )
    kind, k = alpha or ("ratio", base["lora_alpha"] / base["r"])
    module_sets: list[tuple[str, ...] | str | None] = [None]
    if target_modules:
        module_sets = list(target_modules)
    points = [
        Point(r, k * r if kind == "ratio" else k, s, tm)
        for r in ranks
        for tm in module_sets
        for s in (seeds if seeds else [base["seed"]])
    ]
    spec = {
        "schema": SCHEMA, "from": info["digest"], "name": name,
        "points": [p.spec() for p in points], "gates": names,
    }  # fmt: skip
    plan = Plan(sweep_id(spec), spec, info, name, policy, names, points)
    filename = Path(info["components"]["config"]["files"][0]["path"]).stem + ".json"
    for p in points:
        h = _override(hyper, p)
        resolve_hyperparameters(h, parent)  # a point that cannot train fails now
        plan.configs[p.key] = _stage_config(filename, h)
        plan.hyperparameters[p.key] = plan.configs[p.key].meta["hyperparameters"]
    return plan


def _override(hyper: dict[str, Any], p: Point) -> dict[str, Any]:
    """The config's hyperparameters with the point's values, under the canonical key
    (whatever alias the config used is replaced, so two aliases never disagree)."""
    from gates.train import ALIASES

    out = dict(hyper)
    values: dict[str, Any] = {"r": p.rank, "lora_alpha": _number(p.alpha), "seed": p.seed}
    if p.target_modules is not None:
        tm = p.target_modules
        values["target_modules"] = list(tm) if isinstance(tm, tuple) else tm
    for key, value in values.items():
        for alias in ALIASES[key]:
            out.pop(alias, None)
        out[key] = value
    return out


def _stage_config(filename: str, hyper: dict[str, Any]) -> Staged:
    """A point's config component: canonical JSON bytes, read through the same front door
    as `registry add --config` (registry.ingest.config)."""
    from registry.ingest import config as config_mod

    data = (json.dumps(hyper, indent=2, sort_keys=True) + "\n").encode("utf-8")
    with tempfile.TemporaryDirectory(prefix="registry-sweep-") as tmp:
        path = Path(tmp) / filename
        path.write_bytes(data)
        staged = config_mod.stage(path)
    staged.files = {filename: data}
    return staged


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


# --- running ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one run of a sweep did (the table itself comes from `sweep_table`)."""

    sweep_id: str
    executor: str
    trained: list[str] = field(default_factory=list)  # point keys trained this time
    gated: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # already complete, not redone
    errors: dict[str, str] = field(default_factory=dict)  # point key -> why it stopped


def run_sweep(
    reg: Registry,
    plan: Plan,
    executor: Executor,
    *,
    actor: str | Identity,
    on_point: PointHook | None = None,
) -> Outcome:
    """Train, register and gate every point not done yet (see the module docstring)."""
    from gates.executor import TrainJob
    from gates.train import register_candidate
    from registry import sweeps

    hook = on_point or (lambda _p, _ph, _m: None)
    out = Outcome(plan.sweep_id, executor.where)
    sweeps.save(reg, plan.sweep_id, name=plan.name, from_digest=plan.info["digest"],
                spec=plan.spec, actor=actor)  # fmt: skip
    recorded = sweeps.load(reg, plan.sweep_id)["points"]
    to_train: list[Point] = []
    for p in plan.points:
        digest = recorded.get(p.key)
        needed = _needed(reg, digest, plan) if digest else None
        if needed is None:
            to_train.append(p)
        elif needed:
            _gate(reg, plan, executor, p, digest or "", needed, actor, hook, out)
        else:
            out.done.append(p.key)
            hook(p, "done", "trained and gated")
    jobs = [
        TrainJob(plan.info["digest"], plan.name, plan.hyperparameters[p.key],
                 p.annotations(plan.sweep_id))
        for p in to_train
    ]  # fmt: skip
    point_of = {id(j): p for j, p in zip(jobs, to_train, strict=True)}
    progress = (lambda job, msg: hook(point_of[id(job)], "progress", msg)) if jobs else None
    for job, cand in executor.train(reg, jobs, progress=progress):
        p = point_of[id(job)]
        if isinstance(cand, BaseException):
            out.errors[p.key] = _one_line(cand)
            hook(p, "error", out.errors[p.key])
            continue
        try:
            res = register_candidate(
                reg, plan.info, cand, name=plan.name, annotations=job.annotations,
                policy=plan.policy, actor=actor, staged_extra={"config": plan.configs[p.key]},
            )  # fmt: skip
        except RegistryError as exc:
            out.errors[p.key] = exc.one_line()
            hook(p, "error", out.errors[p.key])
            continue
        sweeps.set_point(reg, plan.sweep_id, p.key, res.digest)
        out.trained.append(p.key)
        hook(p, "registered", f"{res.tag} {res.digest}; train {cand.result.status}")
        needed = _needed(reg, res.digest, plan) or []
        if needed:
            _gate(reg, plan, executor, p, res.digest, needed, actor, hook, out)
    return out


def _needed(reg: Registry, digest: str, plan: Plan) -> list[str] | None:
    """None when the point must be trained (no bundle, or no train run); else the gates
    without a passed or failed run under the policy in force."""
    from registry.gate_runs import runs_for

    try:
        _, runs = runs_for(reg, digest)
    except RegistryError:
        return None
    if not any(r["gate"] == TRAIN for r in runs):
        return None
    verdicts = {
        r["gate"]
        for r in runs
        if r["policy_digest"] == plan.policy.digest and r["status"] in ("passed", "failed")
    }
    return [g for g in plan.gates if g not in verdicts]


def _gate(
    reg: Registry,
    plan: Plan,
    executor: Executor,
    p: Point,
    digest: str,
    names: list[str],
    actor: str | Identity,
    hook: PointHook,
    out: Outcome,
) -> None:
    def on_event(gate: str, phase: str, message: str) -> None:
        if phase == "start":
            hook(p, "gate", gate)
        elif phase == "progress":
            hook(p, "progress", f"{gate}: {message}")
        else:
            hook(p, phase, f"{gate}: {message}")

    try:
        executor.gates(reg, digest, plan.policy, names, actor=actor, on_event=on_event)
    except RegistryError as exc:
        out.errors[p.key] = exc.one_line()
        hook(p, "error", out.errors[p.key])
        return
    out.gated.append(p.key)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, RegistryError):
        return exc.one_line()
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:300]}"
