"""The review model: what a release manager looks at, extracted from the registry's records.

Pure data, no rendering: `registry report` (gates/report/) renders it as HTML or Markdown,
and the TUI may show the same figures. Everything here is read from records the registry
already holds: the bundle and its lineage (registry.bundles), its gate runs and their
evidence blobs (registry.gate_runs), the policy in force (gates.policy), the channels'
history and the audit log (registry.channels, registry.audit), signatures
(registry.signing). Nothing is written.

The parts, each a small typed function over one record, so a screen can use one alone:

- `figures(metrics, thresholds)`: each judged metric of a run beside its threshold, with
  its interval and a pass mark. A threshold `max_X` / `min_X` judges metric `X` (or the
  metric named like the threshold itself, e.g. merge-equivalence's `max_abs_logit_diff`);
  where the run recorded bounds `X_lower` / `X_upper`, the gate judged the bound, so the
  mark does too (target-eval: `delta_lower >= min_delta`; regression-eval: `drop_upper <=
  max_drop`). Thresholds that judge no metric (`confidence`, `dtype`) are settings.
- `gate_views(runs)`: every run with which one counts: the newest run of each gate is the
  one a reader sees as current; older ones are `superseded_by` it.
- `loss_curves(evidence)`, `item_changes(evidence)`, `serving_figures(evidence)`: the
  `train` gate's loss curves, the paired evals' per-item results, serving-eval's figures,
  recognized by the evidence's shape (the formats gates/train.py, gates/evals.py and
  gates/serving.py write), so a team's own gate writing the same shape is shown too.
- `review(reg, ref, against)`: all of it for one bundle, compared with another.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry.errors import RegistryError

if TYPE_CHECKING:
    from registry.repo import Registry

EPS = 1e-9  # the tolerance the gates compare with
# Thresholds that are one condition of a joint test, not a bound on one metric: the
# figure's mark is the joint verdict (a boolean metric), and the other conditions are
# settings. train flags overfitting only when the validation loss rose by more than
# max_val_loss_rise *and* min_val_loss_rise nats, for val_patience evaluations, while the
# training loss fell (gates/train.py `overfitting`).
JOINT: dict[str, tuple[str, str]] = {
    "max_val_loss_rise": (
        "overfitting",
        "flagged only when also min_val_loss_rise nats above the best while train loss fell",
    ),
}
NOT_JUDGED = frozenset({"min_val_loss_rise", "val_patience"})
KEY_META: dict[str, tuple[str, ...]] = {
    "base_model": ("model_type", "architectures", "source"),
    "adapter": ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_dora"),
    "tokenizer": ("tokenizer_class", "vocab_size", "model_max_length"),
    "chat_template": ("chars",),
    "dataset": ("rows", "splits", "license", "format"),
    "config": ("hyperparameters",),
}


@dataclass(frozen=True)
class Figure:
    """One judged metric of a gate run: value, interval, threshold and the verdict on it."""

    metric: str
    value: float | None
    threshold_key: str
    threshold: float
    comparison: str  # "<=" (a max_ threshold) or ">=" (a min_ one)
    lower: float | None = None
    upper: float | None = None
    judged: str = "value"  # "value", "lower bound" or "upper bound"
    confidence: float | None = None
    verdict: bool | None = None  # set where the gate's own test is joint (JOINT)
    note: str = ""

    @property
    def judged_value(self) -> float | None:
        """The number compared with the threshold: the bound when there is one."""
        if self.judged == "lower bound":
            return self.lower
        if self.judged == "upper bound":
            return self.upper
        return self.value

    @property
    def passed(self) -> bool | None:
        """Whether the judged number meets the threshold (None: the run has no number)."""
        if self.verdict is not None:
            return self.verdict
        v = self.judged_value
        if v is None:
            return None
        if self.comparison == "<=":
            return v <= self.threshold + EPS
        return v >= self.threshold - EPS


@dataclass
class RunView:
    """A gate run as a reviewer reads it."""

    id: int
    gate: str
    version: str
    status: str  # passed / failed / error
    summary: str
    error: str | None
    ended_at: str
    actor: str
    policy_digest: str | None
    evidence_digest: str | None
    figures: list[Figure]
    other_metrics: dict[str, Any]  # metrics no threshold judges
    settings: dict[str, Any]  # thresholds that judge no metric (confidence, dtype, ...)
    counts: bool  # whether promotion may count it (audit record intact, trusted signer)
    why: str  # why it counts, or why not
    superseded_by: int | None = None  # a newer run of the same gate
    under_policy: bool = True  # recorded under the policy in force
    signer: str | None = None
    attested: bool = False
    origin: str = ""

    @property
    def current(self) -> bool:
        """The newest run of its gate: the one a reader takes as the gate's result."""
        return self.superseded_by is None


@dataclass
class LossCurves:
    """The train gate's curves: [step, loss] points, and its overfitting check."""

    run_id: int
    gate: str
    train: list[tuple[float, float]]
    val: list[tuple[float, float]]
    overfitting: dict[str, Any]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class ItemChange:
    """One eval item whose score moved between the baseline (before) and the candidate."""

    gate: str
    run_id: int
    prompt: str
    expected: str
    before: str
    after: str
    before_score: float
    after_score: float

    @property
    def regressed(self) -> bool:
        return self.after_score < self.before_score


@dataclass
class ServingFigures:
    """serving-eval's figures: per mode latency/throughput/memory, ratios to the base."""

    run_id: int
    gate: str
    device: str | None
    modes: dict[str, dict[str, Any]]  # mode -> p50/p95 latency ms, tokens/s, peak MB
    ratios: dict[str, dict[str, Any]]  # mode -> latency_ratio, tokens_per_s_ratio
    figures: list[Figure]


@dataclass(frozen=True)
class TrendPoint:
    """A judged figure of the latest run of a gate, for one version of the name."""

    tag: str
    version: int
    gate: str
    metric: str
    value: float | None
    lower: float | None
    upper: float | None
    threshold: float
    passed: bool | None
    status: str


@dataclass
class Comparison:
    """The bundle the review compares with, why that one, and what differs."""

    tag: str | None
    digest: str | None
    why: str  # "channel production", "parent", "--against REF", or why there is none
    components: list[dict[str, Any]] = field(default_factory=list)  # kind, status, digests
    key_meta: list[dict[str, Any]] = field(default_factory=list)  # kind, key, before, after
    meta_changes: list[dict[str, Any]] = field(default_factory=list)  # every changed key
    annotations: list[dict[str, Any]] | None = None


@dataclass
class Review:
    """Everything `registry report` shows about one bundle."""

    bundle: dict[str, Any]  # registry.bundles.show()
    against: Comparison
    runs: list[RunView]  # newest first
    loss: LossCurves | None
    items: list[ItemChange]  # per-item changes of the current eval runs, regressions first
    serving: ServingFigures | None
    trends: list[TrendPoint]  # versions of the name, oldest first
    versions: list[dict[str, Any]]  # every version: tag, digest, created, channels, gates
    readiness: dict[str, list[dict[str, Any]]]  # channel -> requirement rows
    history: dict[str, list[dict[str, Any]]]  # channel -> moves, newest first
    events: list[dict[str, Any]]  # audit events about this bundle, oldest first
    signatures: list[dict[str, Any]]
    audit: dict[str, Any]  # ok, events, problem, signed
    policy: dict[str, Any] | None  # digest, set_by, set_at of the policy in force

    @property
    def current_runs(self) -> list[RunView]:
        """The newest run of each gate, in the order gates were first run."""
        return sorted((r for r in self.runs if r.current), key=lambda r: r.id)

    @property
    def regressions(self) -> list[ItemChange]:
        return [i for i in self.items if i.regressed]


# --- one run -------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def figures(metrics: dict[str, Any], thresholds: dict[str, Any]) -> list[Figure]:
    """Each metric a `max_`/`min_` threshold judges, with its interval, in threshold order."""
    out = []
    conf = _num(thresholds.get("confidence"))
    for key, limit in thresholds.items():
        lim = _num(limit)
        if lim is None or not key.startswith(("max_", "min_")) or key in NOT_JUDGED:
            continue
        metric = key if key in metrics else key[4:]
        if metric not in metrics:
            continue
        cmp = "<=" if key.startswith("max_") else ">="
        lower, upper = _num(metrics.get(f"{metric}_lower")), _num(metrics.get(f"{metric}_upper"))
        bound = upper if cmp == "<=" else lower
        judged = "value" if bound is None else ("upper bound" if cmp == "<=" else "lower bound")
        verdict, note = None, ""
        if key in JOINT and isinstance(metrics.get(JOINT[key][0]), bool):
            verdict, note = not metrics[JOINT[key][0]], JOINT[key][1]
        out.append(Figure(
            metric, _num(metrics[metric]), key, lim, cmp, lower, upper, judged,
            conf if (lower is not None or upper is not None) else None, verdict, note,
        ))  # fmt: skip
    return out


def _split(
    metrics: dict[str, Any], thresholds: dict[str, Any]
) -> tuple[list[Figure], dict[str, Any], dict[str, Any]]:
    figs = figures(metrics, thresholds)
    used = {f.metric for f in figs}
    used |= {f"{m}_{s}" for m in used for s in ("lower", "upper")}
    judged = {f.threshold_key for f in figs}
    other = {k: v for k, v in metrics.items() if k not in used}
    settings = {k: v for k, v in thresholds.items() if k not in judged}
    return figs, other, settings


def gate_views(runs: list[dict[str, Any]], policy_digest: str | None = None) -> list[RunView]:
    """Runs as registry.gate_runs.runs_for returns them (newest first) as RunViews, each
    older run of a gate marked as superseded by the newest."""
    newest: dict[str, int] = {}
    for r in runs:
        newest.setdefault(r["gate"], r["id"])
        newest[r["gate"]] = max(newest[r["gate"]], r["id"])
    out = []
    for r in runs:
        figs, other, settings = _split(r["metrics"] or {}, r["thresholds"] or {})
        trust = r.get("trust") or {"counts": True, "why": "recorded here"}
        out.append(RunView(
            id=r["id"], gate=r["gate"], version=str(r["gate_version"]), status=r["status"],
            summary=r.get("summary") or "", error=r["error"], ended_at=r["ended_at"],
            actor=r["actor"], policy_digest=r["policy_digest"],
            evidence_digest=r["evidence_digest"], figures=figs, other_metrics=other,
            settings=settings, counts=bool(trust.get("counts")), why=str(trust.get("why", "")),
            superseded_by=None if newest[r["gate"]] == r["id"] else newest[r["gate"]],
            under_policy=policy_digest is None or r["policy_digest"] == policy_digest,
            signer=r.get("signer"), attested=bool(r.get("attestation")),
            origin=r.get("origin") or "",
        ))  # fmt: skip
    return out


def evidence_body(evidence: dict[str, Any]) -> dict[str, Any]:
    """The gate's own evidence inside the engine's report (gates.engine.record)."""
    inner = evidence.get("evidence")
    return inner if isinstance(inner, dict) else {}


def curve(points: Any) -> list[tuple[float, float]]:
    """[step, loss] points as stored, keeping only pairs of finite numbers."""
    out = []
    for p in points if isinstance(points, list) else []:
        if isinstance(p, list | tuple) and len(p) == 2:
            x, y = _num(p[0]), _num(p[1])
            if x is not None and y is not None:
                out.append((x, y))
    return out


def loss_curves(run: RunView, evidence: dict[str, Any]) -> LossCurves | None:
    """The train and validation loss curves of a run whose evidence has them
    (gates/train.py: `train_loss` and `val_loss`, lists of [step, loss])."""
    body = evidence_body(evidence)
    train = curve(body.get("train_loss"))
    if not train:
        return None
    metrics, fit = evidence.get("metrics"), body.get("overfitting")
    return LossCurves(
        run.id, run.gate, train, curve(body.get("val_loss")),
        fit if isinstance(fit, dict) else {}, metrics if isinstance(metrics, dict) else {},
    )  # fmt: skip


def scores(item: Any) -> tuple[float, float] | None:
    """(baseline score, candidate score) of one paired `per_item` entry (gates/evals.py);
    None when it is not a paired item with two finite scores."""
    if not isinstance(item, dict) or "baseline_score" not in item:
        return None
    before, after = _num(item.get("baseline_score")), _num(item.get("score"))
    return None if before is None or after is None else (before, after)


def item_changes(run: RunView, evidence: dict[str, Any]) -> list[ItemChange]:
    """Items whose score differs between baseline and candidate (gates/evals.py's paired
    `per_item`: prompt, reference, output, baseline_output, score, baseline_score)."""
    out = []
    for x in evidence_body(evidence).get("per_item") or []:
        moved = scores(x)
        if moved is None or moved[0] == moved[1]:
            continue
        before, after = moved
        out.append(ItemChange(
            run.gate, run.id, str(x.get("prompt", "")), str(x.get("reference", "")),
            str(x.get("baseline_output", "")), str(x.get("output", "")), before, after,
        ))  # fmt: skip
    return out


def serving_figures(run: RunView, evidence: dict[str, Any]) -> ServingFigures | None:
    """serving-eval's per-mode figures and ratios (gates/serving.py: `modes`, `ratios`)."""
    body = evidence_body(evidence)
    modes = body.get("modes")
    if not isinstance(modes, dict) or not modes:
        return None
    keep = ("p50_latency_ms", "p95_latency_ms", "tokens_per_s", "peak_memory_mb")
    table = {
        m: {k: v.get(k) for k in keep} for m, v in sorted(modes.items()) if isinstance(v, dict)
    }
    ratios = body.get("ratios") if isinstance(body.get("ratios"), dict) else {}
    rat = {
        m: {k: r.get(k) for k in ("latency_ratio", "tokens_per_s_ratio", "rounds")}
        for m, r in sorted((ratios or {}).items())
        if isinstance(r, dict)
    }
    device = body.get("device")
    return ServingFigures(run.id, run.gate, str(device) if device else None, table, rat,
                          run.figures)  # fmt: skip


# --- the whole review ------------------------------------------------------------------------


def resolve_against(reg: Registry, bundle: dict[str, Any], against: str | None) -> Comparison:
    """What to compare with: `against` as a channel of the bundle's name or any reference;
    by default the channel `production` (unless it holds this bundle), else the parent."""
    from registry import refs

    name = bundle["name"]
    with reg.db.read() as conn:
        held = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT channel, bundle_digest FROM channel WHERE name = :n", {"n": name}
            )
        }
        if against is None:
            prod = held.get("production")
            if prod and prod != bundle["digest"]:
                row, why = refs.resolve(conn, f"{name}@{prod}"), "channel production"
            else:
                why = "production holds this bundle" if prod else "no production channel"
                if not bundle["parent"]:
                    return Comparison(None, None, f"nothing to compare with: {why} and no parent")
                row, why = refs.resolve(conn, bundle["parent"]), f"parent ({why})"
        elif against in held and not any(c in against for c in ":@"):
            row, why = refs.resolve(conn, f"{name}@{held[against]}"), f"channel {against}"
        else:
            row, why = refs.resolve(conn, against), against
    return _compare(reg, bundle, row, why)


def _compare(reg: Registry, bundle: dict[str, Any], row: dict[str, Any], why: str) -> Comparison:
    from registry.bundles import diff, show

    tag = f"{row['name']}:v{row['version']}"
    if row["digest"] == bundle["digest"]:
        return Comparison(tag, row["digest"], f"{why}: the same bundle, nothing differs")
    other = show(reg, row["digest"])
    d = diff(reg, row["digest"], bundle["digest"])
    comps = []
    for kind, info in d["components"].items():
        a, b = other["components"].get(kind), bundle["components"].get(kind)
        comps.append({
            "kind": kind, "status": info["status"],
            "before": a["digest"] if a else None, "after": b["digest"] if b else None,
            "files": info.get("files"),
        })  # fmt: skip
    key_meta = []
    for kind, keys in KEY_META.items():
        a = _flat(other["components"].get(kind) or {})
        b = _flat(bundle["components"].get(kind) or {})
        for k in sorted(set(a) | set(b)):
            if k.split(".", 1)[0] in keys:
                key_meta.append({"kind": kind, "key": k, "before": a.get(k), "after": b.get(k),
                                 "changed": a.get(k) != b.get(k)})  # fmt: skip
    changes = [
        {"kind": kind, "key": k, "before": v[0], "after": v[1]}
        for kind, info in d["components"].items()
        for k, v in (info.get("meta") or {}).items()
    ]
    ann = None
    if "annotations" in d:
        before, after = d["annotations"]
        differ = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        ann = [{"key": k, "before": before.get(k), "after": after.get(k)} for k in differ]
    return Comparison(tag, row["digest"], why, comps, key_meta, changes, ann)


def _flat(component: dict[str, Any]) -> dict[str, Any]:
    """A component's meta (and its source), flattened to dotted keys, lists as JSON."""
    out: dict[str, Any] = {}

    def walk(d: Any, prefix: str) -> None:
        if isinstance(d, dict) and d:
            for k, v in d.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = json.dumps(d) if isinstance(d, list) else d

    walk(component.get("meta") or {}, "")
    if component.get("source"):
        out["source"] = component["source"]
    return out


def review(reg: Registry, ref: str, against: str | None = None) -> Review:
    """The review of one bundle, compared with `against` (see resolve_against)."""
    from registry import audit, channels, gate_runs, policy, signing
    from registry.bundles import list_bundles, show

    bundle = show(reg, ref)
    comparison = resolve_against(reg, bundle, against)
    info = policy.info(reg)
    pol_info = {k: info[k] for k in ("digest", "set_by", "set_at")} if info else None
    pol = _policy(reg)
    _, raw = gate_runs.runs_for(reg, bundle["digest"])
    runs = gate_views(raw, pol.digest if pol else None)
    raw_by_id = {r["id"]: r for r in raw}
    loss, serving, items = None, None, []
    for run in sorted((r for r in runs if r.current), key=lambda r: r.id):
        ev = _evidence(reg, raw_by_id[run.id]["evidence_digest"])
        loss = loss_curves(run, ev) or loss
        serving = serving_figures(run, ev) or serving
        items += item_changes(run, ev)
    items.sort(key=lambda i: (not i.regressed, i.gate, i.run_id))
    versions = list(reversed(list_bundles(reg, bundle["name"])))
    trends = _trends(reg, versions)
    readiness: dict[str, list[dict[str, Any]]] = {}
    if pol is not None:
        for ch in pol.channels:
            readiness[ch] = [
                vars(q) for q in gate_runs.requirements(reg, bundle["digest"], ch, pol)
            ]
    history: dict[str, list[dict[str, Any]]] = {}
    for ch in sorted({c["channel"] for c in channels.channels_of(reg, bundle["name"])}):
        try:
            history[ch] = channels.history(reg, f"{bundle['name']}:{ch}")
        except RegistryError:
            continue
    rep = audit.verify(reg)
    return Review(
        bundle=bundle, against=comparison, runs=runs, loss=loss, items=items, serving=serving,
        trends=trends, versions=versions, readiness=readiness, history=history,
        events=audit.events_about(reg, bundle["digest"]),
        signatures=signing.signatures(reg, bundle["digest"]),
        audit={"ok": rep.ok, "events": rep.events, "problem": rep.problem, "signed": rep.signed},
        policy=pol_info,
    )  # fmt: skip


def _policy(reg: Registry) -> Any:
    from gates.policy import current

    try:
        return current(reg)
    except RegistryError:
        return None


def _evidence(reg: Registry, digest: str | None) -> dict[str, Any]:
    from registry.gate_runs import evidence

    if not digest:
        return {}
    try:
        ev = evidence(reg, digest)
    except (RegistryError, OSError, ValueError):
        return {}
    return ev if isinstance(ev, dict) else {}


def _trends(reg: Registry, versions: list[dict[str, Any]]) -> list[TrendPoint]:
    """The judged figures of the newest run of each gate, version by version."""
    from registry.gate_runs import runs_for

    out = []
    for v in versions:
        _, raw = runs_for(reg, v["digest"])
        for run in sorted((r for r in gate_views(raw) if r.current), key=lambda r: r.gate):
            for f in run.figures:
                out.append(TrendPoint(
                    v["tag"], int(v["version"]), run.gate, f.metric, f.value, f.lower, f.upper,
                    f.threshold, f.passed, run.status,
                ))  # fmt: skip
    return out
