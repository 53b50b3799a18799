"""Error bars for eval verdicts: paired differences, exact binomial bounds, power.

Eval items are a sample from the behaviour a team cares about, so every eval figure is an
estimate with an uncertainty, and a gate judges a confidence bound, not the point
estimate (Evan Miller, "Adding Error Bars to Evals", arXiv 2411.00640):

- **Two models on the same items** (target-eval, regression-eval) are compared by their
  per-item paired differences d_i = candidate_i - baseline_i. The interval is the
  Agresti-Min one for paired proportions: half an item is added to each cell of the
  2x2 table (pseudo-items d = +1 and d = -1 of weight 1/2, d = 0 of weight 1), then the
  normal (Wald) bound of the mean. Without the pseudo-items a sample where every item
  moved the same way (or none moved) has a standard error of zero, and 3 of 3 would
  "prove" anything. For graded metrics (token_f1) the same pseudo-items are used.
- **Clustered standard errors** when items share a source (`cluster_key`): the sum of
  residuals is taken per cluster, then squared (Miller, section 2.2), with the usual
  G/(G-1) small-sample factor over G clusters (items when unclustered).
- **Rates** (safety-eval) use the exact Clopper-Pearson bound, which never claims more
  than the binomial distribution allows: 20 refusals of 20 give a 95% lower bound of
  0.05 ** (1/20) = 0.861, the "rule of three" (failure rate below about 3/n).
- **Power**: the number of items a verdict needs is found by scaling the observed (or
  planned) per-item differences to N items and asking that the bound clear the threshold
  with margin z(power) standard errors: the usual n = ((z_c + z_p) * sd / effect) ** 2,
  solved with the same pseudo-items and clusters the gate itself uses.

`confidence = 0` in a policy turns the bounds off (the verdict is on the point estimate).
Only the standard library is used (statistics.NormalDist for normal quantiles).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from registry.errors import PolicyError

MAX_ITEMS_NEEDED = 10_000_000  # beyond this a set is "not decidable by size alone"
# Agresti-Min pseudo-items: (difference, weight), each its own cluster.
PSEUDO: tuple[tuple[float, float], ...] = ((1.0, 0.5), (-1.0, 0.5), (0.0, 1.0))


def z_value(probability: float) -> float:
    """The standard normal quantile (one-sided): z(0.95) = 1.645, z(0.8) = 0.842."""
    return NormalDist().inv_cdf(probability)


def check_confidence(confidence: Any, power: Any = 0.8, *, gate: str) -> None:
    """Policy values: confidence in [0, 1) (0 = point estimates), power in (0, 1)."""
    if not isinstance(confidence, int | float) or not 0 <= confidence < 1:
        raise PolicyError(
            f"[gates.{gate}] confidence must be at least 0 and below 1, got {confidence!r}",
            "Use 0.95 for 95% confidence, or 0 to judge point estimates.",
        )
    if not isinstance(power, int | float) or not 0 < power < 1:
        raise PolicyError(f"[gates.{gate}] power must be between 0 and 1, got {power!r}")


# --- paired differences ------------------------------------------------------------------


@dataclass(frozen=True)
class Paired:
    """Candidate minus baseline on the same items, with a one-sided bound each way."""

    n: int
    mean: float  # point estimate: the plain mean of the differences
    adjusted: float  # the Agresti-Min centre of the interval
    se: float
    lower: float  # one-sided lower bound at `confidence`
    upper: float  # one-sided upper bound at `confidence`
    confidence: float
    clusters: int | None  # number of clusters, when clustered
    improved: int
    regressed: int

    def metrics(self, prefix: str = "delta") -> dict[str, Any]:
        return {
            prefix: self.mean,
            f"{prefix}_se": self.se,
            f"{prefix}_lower": self.lower,
            f"{prefix}_upper": self.upper,
            "items": self.n,
            "clusters": self.clusters,
            "improved_items": self.improved,
            "regressed_items": self.regressed,
        }


def _groups(diffs: Sequence[float], clusters: Sequence[str] | None) -> list[tuple[float, float]]:
    """(sum of differences, number of items) per cluster; every item alone if unclustered."""
    if clusters is None:
        return [(d, 1.0) for d in diffs]
    out: dict[str, list[float]] = {}
    for d, c in zip(diffs, clusters, strict=True):
        g = out.setdefault(c, [0.0, 0.0])
        g[0] += d
        g[1] += 1.0
    return [(s, k) for s, k in out.values()]


def _bound(groups: list[tuple[float, float]], scale: float) -> tuple[float, float]:
    """(centre, standard error) with the pseudo-items, each real group counted `scale`
    times (scale > 1 asks what N = scale x n items drawn alike would give)."""
    total = scale * sum(k for _, k in groups) + sum(w for _, w in PSEUDO)
    centre = (scale * sum(s for s, _ in groups) + sum(d * w for d, w in PSEUDO)) / total
    sq = scale * sum((s - centre * k) ** 2 for s, k in groups)
    sq += sum(w * (d - centre) ** 2 for d, w in PSEUDO)  # half an item counts half
    g = scale * len(groups) + len(PSEUDO)
    return centre, math.sqrt(sq * g / (g - 1)) / total


def paired(
    candidate: Sequence[float],
    baseline: Sequence[float],
    confidence: float,
    clusters: Sequence[str] | None = None,
) -> Paired:
    """Paired comparison of per-item scores (same items, same order)."""
    if len(candidate) != len(baseline) or not candidate:
        raise ValueError("paired scores need the same, non-zero number of items")
    diffs = [c - b for c, b in zip(candidate, baseline, strict=True)]
    mean = sum(diffs) / len(diffs)
    groups = _groups(diffs, clusters)
    improved = sum(d > 0 for d in diffs)
    regressed = sum(d < 0 for d in diffs)
    n_clusters = len(groups) if clusters is not None else None
    if confidence <= 0:  # point estimates: today's behaviour, on request
        _, se = _bound(groups, 1.0)
        return Paired(len(diffs), mean, mean, se, mean, mean, 0.0, n_clusters, improved,
                      regressed)  # fmt: skip
    z = z_value(confidence)
    centre, se = _bound(groups, 1.0)
    return Paired(len(diffs), mean, centre, se, centre - z * se, centre + z * se, confidence,
                  n_clusters, improved, regressed)  # fmt: skip


def items_needed(
    diffs: Sequence[float],
    clusters: Sequence[str] | None,
    holds: Callable[[float, float], bool],
    confidence: float,
    power: float,
) -> int | None:
    """The smallest number of items for which differences distributed like `diffs` (and
    clustered alike) satisfy `holds(centre, margin)`, where margin = (z_c + z_p) x SE: the
    power calculation. None when no size will do (the effect itself misses the threshold).
    """
    if confidence <= 0:
        return None
    groups = _groups(diffs, clusters)
    n = len(diffs)
    zc = z_value(confidence) + z_value(power)

    def ok(size: int) -> bool:
        centre, se = _bound(groups, size / n)
        return holds(centre, zc * se)

    hi = max(1, n)
    while not ok(hi):
        hi *= 2
        if hi > MAX_ITEMS_NEEDED:
            return None
    lo = 0  # not ok(lo) is assumed; ok(hi) holds
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


# --- rates -------------------------------------------------------------------------------


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    lc = math.lgamma(n + 1)
    terms = [lc - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
             for i in range(k + 1)]  # fmt: skip
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _solve(f: Callable[[float], float], target: float, increasing: bool) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def rate_lower(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound of a rate from k successes in n trials."""
    if confidence <= 0:
        return k / n
    if k == 0:
        return 0.0
    if k == n:
        return (1 - confidence) ** (1 / n)
    # the p at which seeing k or more is only (1 - confidence) likely
    return _solve(lambda p: 1 - _binom_cdf(k - 1, n, p), 1 - confidence, increasing=True)


def rate_upper(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound of a rate from k successes in n trials."""
    if confidence <= 0:
        return k / n
    return 1 - rate_lower(n - k, n, confidence)


def rate_items_needed(minimum: float, confidence: float) -> int | None:
    """Items a perfect result (every trial a success) needs for the lower bound to reach
    `minimum`: n = ln(1 - confidence) / ln(minimum). None when no size will do."""
    if confidence <= 0 or minimum <= 0:
        return 1
    if minimum >= 1:
        return None
    return math.ceil(math.log(1 - confidence) / math.log(minimum) - 1e-9)


# --- bootstrap ---------------------------------------------------------------------------


def bootstrap_upper(
    statistic: Callable[[list[int]], float],
    n: int,
    confidence: float,
    *,
    clusters: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """The one-sided percentile-bootstrap upper bound of `statistic` (and the lower, for
    the record), resampling items, or whole clusters when given, with a fixed seed."""
    if confidence <= 0:
        value = statistic(list(range(n)))
        return value, value
    rng = random.Random(seed)
    if clusters is None:
        units = [[i] for i in range(n)]
    else:
        by: dict[str, list[int]] = {}
        for i, c in enumerate(clusters):
            by.setdefault(c, []).append(i)
        units = list(by.values())
    values = []
    for _ in range(resamples):
        idx = [i for _ in units for i in units[rng.randrange(len(units))]]
        values.append(statistic(idx))
    values.sort()
    hi = values[min(len(values) - 1, math.ceil(confidence * len(values)) - 1)]
    lo = values[max(0, math.floor((1 - confidence) * len(values)))]
    return lo, hi


def fmt_interval(value: float, lower: float | None, upper: float | None, conf: float) -> str:
    """`+0.075 (95% CI one-sided >= +0.031)` style text for summaries."""
    if conf <= 0:
        return f"{value:+.3f}"
    parts = []
    if lower is not None:
        parts.append(f">= {lower:+.3f}")
    if upper is not None:
        parts.append(f"<= {upper:+.3f}")
    return f"{value:+.3f} ({conf:.0%} bound {' '.join(parts)})"
