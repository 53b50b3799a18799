"""What the TUI reads out of gate runs to show them: each metric beside its threshold, loss
curves, metric trends across versions, regressed items. Pure functions of the records.

Which metric a threshold judges, on which bound, and whether it passed is the review
model's (`gates.review.figures`, which `registry report` uses too), so the TUI and the
report mark the same figures the same way: `max_X` / `min_X` judges metric `X` (or the
metric named like the threshold), on its upper / lower bound where the gate recorded
one. The other metrics are listed after the judged ones, and the thresholds that judge no
metric (`confidence`, `dtype`, train's `min_val_loss_rise`) as parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gates.review import curve, evidence_body, figures, scores

INTERVAL_PARTS = ("_lower", "_upper", "_se")


@dataclass(frozen=True)
class MetricRow:
    """One row of a run's figures: a metric, its interval, and the limit on it if any."""

    metric: str
    value: Any
    lower: float | None = None
    upper: float | None = None
    limit: str = ""  # the threshold's key, e.g. `max_drop`
    threshold: Any = None
    passed: bool | None = None  # None: no limit (or no value to judge)
    comparison: str = ""  # "<=" for a max_ threshold, ">=" for a min_ one
    note: str = ""  # how the gate judges it, where that is not a plain comparison


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bounds(metrics: dict[str, Any], name: str) -> tuple[float | None, float | None]:
    lower, upper = metrics.get(f"{name}_lower"), metrics.get(f"{name}_upper")
    return (lower if _number(lower) else None), (upper if _number(upper) else None)


def metric_rows(
    metrics: dict[str, Any], thresholds: dict[str, Any]
) -> tuple[list[MetricRow], dict[str, Any]]:
    """The run's figures, judged metrics first (each beside its threshold, interval and
    mark), then the other metrics; and the thresholds that are parameters, not limits."""
    limited = [
        MetricRow(
            f.metric,
            metrics[f.metric],
            f.lower,
            f.upper,
            f.threshold_key,
            f.threshold,
            f.passed,
            f.comparison,
            f.note,
        )  # fmt: skip
        for f in figures(metrics, thresholds)
    ]
    used = {r.metric for r in limited}
    judged = {r.limit for r in limited}
    params = {k: v for k, v in sorted(thresholds.items()) if k not in judged}
    # a metric's own bounds are shown in its interval, not again as metrics
    bounded = used | {n for n in metrics if f"{n}_lower" in metrics or f"{n}_upper" in metrics}
    parts = {f"{n}{p}" for n in bounded for p in INTERVAL_PARTS}
    others = [
        MetricRow(name, value, *_bounds(metrics, name))
        for name, value in sorted(metrics.items())
        if name not in used and name not in parts
    ]
    return limited + others, params


# --- loss curves ----------------------------------------------------------------------------


Curve = list[tuple[float, float]]


def loss_curves(report: dict[str, Any]) -> tuple[Curve, Curve]:
    """(train, validation) loss as (step, loss) points from a `train` run's evidence report
    (gates/train.py writes `train_loss` and `val_loss` under `evidence`)."""
    ev = evidence_body(report)
    return curve(ev.get("train_loss")), curve(ev.get("val_loss"))


# --- trends across versions -------------------------------------------------------------------


@dataclass(frozen=True)
class Trend:
    """One gate's limited metric across the versions of a name."""

    gate: str
    metric: str
    limit: str
    threshold: float | None  # the newest version's threshold
    points: list[tuple[int, float]]  # (version, value), oldest first

    @property
    def label(self) -> str:
        return f"{self.gate} {self.metric}"


def trends(latest: list[dict[str, Any]]) -> list[Trend]:
    """Each (gate, limited metric) seen in the latest runs of a name's versions, with its
    value per version (rows of registry.gate_runs.latest_of_name, oldest version first)."""
    series: dict[tuple[str, str], dict[str, Any]] = {}
    for run in latest:
        rows, _ = metric_rows(run["metrics"], run["thresholds"])
        for r in rows:
            if not r.limit or not _number(r.value):
                continue
            s = series.setdefault((run["gate"], r.metric), {"limit": r.limit, "points": []})
            s["points"].append((int(run["version"]), float(r.value)))
            s["limit"], s["threshold"] = r.limit, r.threshold
    return [
        Trend(gate, metric, s["limit"], s.get("threshold"), s["points"])
        for (gate, metric), s in sorted(series.items())
    ]


# --- regressed items ------------------------------------------------------------------------


@dataclass(frozen=True)
class RegressedItem:
    """An eval item the candidate got worse on than its baseline."""

    prompt: str
    expected: str
    before: str  # the baseline's answer
    after: str  # the candidate's answer
    score_before: Any
    score_after: Any


def regressed_items(report: dict[str, Any]) -> tuple[list[RegressedItem], list[Any]]:
    """The items of a target/regression eval's evidence whose score fell against the
    baseline (gates/evals.py `per_item`), and the other items as they were stored."""
    per = evidence_body(report).get("per_item")
    if not isinstance(per, list):
        return [], []
    regressed, rest = [], []
    for x in per:
        paired = scores(x)
        if paired is not None and paired[1] < paired[0]:
            regressed.append(RegressedItem(
                str(x.get("prompt", "")), str(x.get("reference", "")),
                str(x.get("baseline_output", "")), str(x.get("output", "")),
                x["baseline_score"], x["score"],
            ))  # fmt: skip
        else:
            rest.append(x)
    return regressed, rest
