"""A sweep's table, Pareto front and recommendation, read from the records; and its plot.

Nothing here runs a model or writes a row: `sweep_table` reads the sweep's spec and point
rows (registry/sweeps.py), each point's bundle and gate runs (registry.gate_runs) and
the figures gates/review.py extracts from them, so `registry sweep` and `registry sweep
show` print the same table. The rule for the recommendation is gates.sweep.RULE.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gates.sweep import RULE, TRAIN, Point
from registry.errors import RegistryError, UsageError

if TYPE_CHECKING:
    from gates.review import Figure, RunView
    from registry.repo import Registry

EPS = 1e-9
GAIN_GATE, DROP_GATE, SERVING_GATE = "target-eval", "regression-eval", "serving-eval"
# How bad a status is, for a group of seeds: the worst one speaks for the group.
SEVERITY = {"passed": 0, "missing": 1, "stale": 1, "failed": 2, "error": 3}
PLOT_SUFFIXES = (".png", ".svg")


def sweep_table(reg: Registry, ref: str) -> dict[str, Any]:
    """Everything `registry sweep show` prints, as JSON-able data: the sweep, each point
    (per seed), each (rank, alpha, target modules) group, the Pareto front and the
    recommended bundle."""
    from gates.policy import current
    from registry import sweeps
    from registry.bundles import show

    rec = sweeps.load(reg, ref)
    spec = rec["spec"]
    try:
        policy = current(reg)
    except RegistryError:
        policy = None
    digest = policy.digest if policy else None
    gates = list(spec["gates"])
    try:
        from_tag = show(reg, rec["from_digest"])["tag"]
    except RegistryError:
        from_tag = None
    points = [_point(reg, Point.from_spec(d), rec["points"], gates, digest) for d in spec["points"]]
    groups = _groups(points, [TRAIN, *gates])
    for g in _front(groups):
        g["pareto"] = True
    recommended = _recommend(groups, points)
    return {
        "sweep": rec["id"], "name": rec["name"],
        "from": {"digest": rec["from_digest"], "tag": from_tag},
        "created_at": rec["created_at"], "created_by": rec["created_by"],
        "policy": digest, "gates": gates, "points": points, "groups": groups,
        "passing": [g["label"] for g in groups if g["passes"]],
        "pareto": [g["label"] for g in groups if g["pareto"]],
        "recommended": recommended, "rule": RULE,
    }  # fmt: skip


# --- one point -------------------------------------------------------------------------------


def _point(
    reg: Registry, p: Point, recorded: dict[str, str], gates: list[str], policy: str | None
) -> dict[str, Any]:
    from gates.review import gate_views
    from registry.bundles import show
    from registry.gate_runs import runs_for

    row: dict[str, Any] = {
        "key": p.key, "rank": p.rank, "alpha": p.alpha, "seed": p.seed,
        "target_modules": p.modules or None, "bundle": None, "trainable_parameters": None,
        "adapter_bytes": None, "peak_memory_mb": None, "train_loss": None, "val_loss": None,
        "gain": None, "drop": None, "serving_overhead": None,
        "gates": {g: "missing" for g in (TRAIN, *gates)}, "runs": {}, "passes": False,
    }  # fmt: skip
    digest = recorded.get(p.key)
    if digest is None:
        return row
    try:
        info = show(reg, digest)
        _, runs = runs_for(reg, digest)
    except RegistryError:
        return row
    row["bundle"] = {"tag": info["tag"], "digest": digest}
    adapter = info["components"].get("adapter") or {}
    row["adapter_bytes"] = sum(int(f["size"]) for f in adapter.get("files", []))
    raw = {r["id"]: r for r in runs}
    views = gate_views(runs, policy)
    for gate in row["gates"]:
        view = _newest(views, gate, any_policy=gate == TRAIN)
        if view is None:
            if any(v.gate == gate for v in views):
                row["gates"][gate] = "stale"
            continue
        row["gates"][gate] = view.status
        row["runs"][gate] = view.id
        metrics = raw[view.id]["metrics"] or {}
        if gate == TRAIN:
            row["trainable_parameters"] = metrics.get("trainable_parameters")
            row["train_loss"] = metrics.get("final_train_loss")
            row["val_loss"] = metrics.get("final_val_loss")
            row["peak_memory_mb"] = _peak_mb(reg, raw[view.id]["evidence_digest"])
        elif gate == GAIN_GATE:
            row["gain"] = _figure(view, "delta")
        elif gate == DROP_GATE:
            row["drop"] = _figure(view, "drop")
        elif gate == SERVING_GATE:
            ratio = metrics.get("adapter_latency_ratio")
            row["serving_overhead"] = ratio if isinstance(ratio, int | float) else None
    row["passes"] = all(s == "passed" for s in row["gates"].values())
    return row


def _newest(views: list[RunView], gate: str, *, any_policy: bool) -> RunView | None:
    mine = [v for v in views if v.gate == gate and (any_policy or v.under_policy) and v.counts]
    return max(mine, key=lambda v: v.id) if mine else None


def _figure(view: RunView, metric: str) -> dict[str, Any] | None:
    fig: Figure | None = next((f for f in view.figures if f.metric == metric), None)
    if fig is None or fig.value is None:
        return None
    return {
        "value": fig.value, "lower": fig.lower, "upper": fig.upper,
        "threshold": fig.threshold, "comparison": fig.comparison, "passed": fig.passed,
        "confidence": fig.confidence,
    }  # fmt: skip


def _peak_mb(reg: Registry, evidence_digest: str | None) -> float | None:
    from registry.gate_runs import evidence

    if not evidence_digest:
        return None
    try:
        peak = (evidence(reg, evidence_digest).get("evidence") or {}).get("peak_memory") or {}
    except (RegistryError, OSError, ValueError):
        return None
    value = peak.get("peak_mb")
    return float(value) if isinstance(value, int | float) else None


# --- groups of seeds -------------------------------------------------------------------------


def _stats(values: list[Any]) -> dict[str, Any] | None:
    nums = [float(v) for v in values if isinstance(v, int | float)]
    if not nums:
        return None
    return {"mean": sum(nums) / len(nums), "min": min(nums), "max": max(nums), "n": len(nums)}


def _figure_stats(figs: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Seeds' figures together: the mean and range of the estimates, and the envelope of
    their intervals (the lowest lower bound, the highest upper bound)."""
    have = [f for f in figs if f is not None]
    out = _stats([f["value"] for f in have])
    if out is None:
        return None
    lowers = [f["lower"] for f in have if f["lower"] is not None]
    uppers = [f["upper"] for f in have if f["upper"] is not None]
    out.update(
        lower=min(lowers) if lowers else None, upper=max(uppers) if uppers else None,
        threshold=have[0]["threshold"], passed=all(f["passed"] for f in have),
    )  # fmt: skip
    return out


def _groups(points: list[dict[str, Any]], gates: list[str]) -> list[dict[str, Any]]:
    order: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for p in points:
        order.setdefault((p["rank"], p["alpha"], p["target_modules"]), []).append(p)
    out = []
    for (rank, alpha, modules), members in order.items():
        label = f"r={rank} alpha={alpha:g}" + (f" [{modules}]" if modules else "")
        statuses = {
            g: max((m["gates"][g] for m in members), key=lambda s: SEVERITY.get(s, 3))
            for g in gates
        }
        params = [m["trainable_parameters"] for m in members if m["trainable_parameters"]]
        sizes = [m["adapter_bytes"] for m in members if m["adapter_bytes"]]
        out.append({
            "label": label, "rank": rank, "alpha": alpha, "target_modules": modules,
            "seeds": [m["seed"] for m in members], "points": [m["key"] for m in members],
            "trainable_parameters": max(params) if params else None,
            "adapter_bytes": max(sizes) if sizes else None,
            "peak_memory_mb": _stats([m["peak_memory_mb"] for m in members]),
            "train_loss": _stats([m["train_loss"] for m in members]),
            "val_loss": _stats([m["val_loss"] for m in members]),
            "serving_overhead": _stats([m["serving_overhead"] for m in members]),
            "gain": _figure_stats([m["gain"] for m in members]),
            "drop": _figure_stats([m["drop"] for m in members]),
            "gates": statuses, "passes": all(m["passes"] for m in members), "pareto": False,
        })  # fmt: skip
    return out


def _axes(g: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(gain, -drop, -parameters): larger is better on each."""
    gain = g["gain"]["mean"] if g["gain"] else None
    drop = -g["drop"]["mean"] if g["drop"] else None
    params = -float(g["trainable_parameters"]) if g["trainable_parameters"] else None
    return gain, drop, params


def _front(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups no other group beats on every axis every group has (gain up, drop down,
    trainable parameters down) while being strictly better on one."""
    have = [g for g in groups if g["trainable_parameters"]]
    if not have:
        return []
    used = [i for i in range(3) if all(_axes(g)[i] is not None for g in have)]

    def vec(g: dict[str, Any]) -> list[float]:
        a = _axes(g)
        return [float(a[i] or 0.0) for i in used]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y - EPS for x, y in zip(a, b, strict=True)) and any(
            x > y + EPS for x, y in zip(a, b, strict=True)
        )

    return [g for g in have if not any(dominates(vec(o), vec(g)) for o in have if o is not g)]


def _recommend(groups: list[dict[str, Any]], points: list[dict[str, Any]]) -> dict[str, Any]:
    """The recommended bundle under RULE, or why there is none."""
    passing = [g for g in groups if g["passes"]]
    if not passing:
        return {"group": None, "bundle": None, "why": "no (rank, alpha) group passed every gate"}
    front = _front(passing) or passing
    why = "passes every gate, on the Pareto front of the passing groups"
    with_gain = [g for g in passing if g["gain"]]
    if with_gain:
        best = max(with_gain, key=lambda g: g["gain"]["mean"])
        floor = best["gain"]["lower"] if best["gain"]["lower"] is not None else best["gain"]["mean"]
        near = [g for g in front if g["gain"] and g["gain"]["mean"] >= floor - EPS] or [best]
        why += f", gain within the best's interval (best {best['label']}: lower bound {floor:+.3f})"
    else:
        near = front
    chosen = min(near, key=lambda g: (
        g["trainable_parameters"] or 0, g["drop"]["mean"] if g["drop"] else 0.0, g["rank"],
    ))  # fmt: skip
    why += ", fewest trainable parameters"
    mine = [p for p in points if p["key"] in chosen["points"] and p["bundle"]]
    pick = max(mine, key=lambda p: (p["gain"]["value"] if p["gain"] else 0.0, -p["seed"]))
    return {"group": chosen["label"], "seed": pick["seed"], "bundle": pick["bundle"], "why": why}


# --- the plot --------------------------------------------------------------------------------


def plot(table: dict[str, Any], path: Path) -> None:
    """Gain and drop (with their intervals) against the rank, peak training memory on a
    second axis; PNG or SVG by the file's suffix. matplotlib without pyplot (no global
    state, no GUI backend), as gates/report/plots.py."""
    suffix = path.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise UsageError(f"--plot: {path.name} must end in .png or .svg")
    data = render(table, suffix[1:])
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def render(table: dict[str, Any], fmt: str) -> bytes:
    """The plot's bytes as `fmt` ("png" or "svg")."""
    import matplotlib
    from matplotlib.figure import Figure

    from gates.report.plots import FAIL_COLOUR, LINE_COLOUR, TRAIN_COLOUR, VAL_COLOUR

    series: dict[str | None, list[dict[str, Any]]] = {}
    for g in table["groups"]:
        series.setdefault(g["target_modules"], []).append(g)
    with matplotlib.rc_context({
        "svg.hashsalt": f"lora-registry-sweep-{table['sweep']}", "svg.fonttype": "none",
        "font.family": "sans-serif", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
    }):  # fmt: skip
        fig = Figure(figsize=(8.0, 4.6))
        ax = fig.add_subplot()
        mem = ax.twinx()
        markers = "osD^v"
        for i, (modules, groups) in enumerate(series.items()):
            groups = sorted(groups, key=lambda g: g["rank"])
            tail = f" [{modules}]" if modules else ""
            m = markers[i % len(markers)]
            for key, colour, name in (("gain", TRAIN_COLOUR, "target gain"),
                                      ("drop", VAL_COLOUR, "regression drop")):  # fmt: skip
                pts = [g for g in groups if g[key]]
                if not pts:
                    continue
                xs = [g["rank"] for g in pts]
                ys = [g[key]["mean"] for g in pts]
                lo = [max(0.0, y - (g[key]["lower"] if g[key]["lower"] is not None else y))
                      for g, y in zip(pts, ys, strict=True)]  # fmt: skip
                hi = [max(0.0, (g[key]["upper"] if g[key]["upper"] is not None else y) - y)
                      for g, y in zip(pts, ys, strict=True)]  # fmt: skip
                ax.errorbar(xs, ys, yerr=[lo, hi], color=colour, marker=m, ms=5, capsize=3,
                            lw=1.4, label=f"{name} (95% interval){tail}")  # fmt: skip
                threshold = pts[0][key].get("threshold")
                if threshold is not None and i == 0:
                    ax.axhline(threshold, color=colour, ls=":", lw=1,
                               label=f"{name} threshold {threshold:g}")  # fmt: skip
            mems = [g for g in groups if g["peak_memory_mb"]]
            if mems:
                mem.plot([g["rank"] for g in mems], [g["peak_memory_mb"]["mean"] for g in mems],
                         color=LINE_COLOUR, ls="--", marker=m, ms=4, lw=1,
                         label=f"peak training memory{tail}")  # fmt: skip
        rec = table["recommended"]
        chosen = next((g for g in table["groups"] if g["label"] == rec.get("group")), None)
        if chosen is not None and chosen["gain"]:
            ax.plot([chosen["rank"]], [chosen["gain"]["mean"]], marker="*", ms=16, ls="none",
                    color=FAIL_COLOUR, label=f"recommended ({chosen['label']})")  # fmt: skip
        ranks = sorted({g["rank"] for g in table["groups"]})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.minorticks_off()
        ax.axhline(0.0, color=LINE_COLOUR, lw=0.6)
        ax.set_xlabel("LoRA rank")
        ax.set_ylabel("score change vs the baseline")
        mem.set_ylabel("peak training memory (MB)")
        top = max((g["peak_memory_mb"]["max"] for g in table["groups"] if g["peak_memory_mb"]),
                  default=1.0)  # fmt: skip
        mem.set_ylim(0, top * 1.25)  # from zero: a few MB between ranks is not a cliff
        mem.grid(False)
        src = table["from"]["tag"] or table["from"]["digest"][:19]
        ax.set_title(f"Sweep {table['sweep']}: {table['name']} from {src}")
        handles, labels = ax.get_legend_handles_labels()
        h2, l2 = mem.get_legend_handles_labels()
        ax.legend(handles + h2, labels + l2, frameon=False, fontsize=8, ncol=2,
                  loc="upper center", bbox_to_anchor=(0.5, -0.13))  # fmt: skip
        fig.tight_layout()
        buf = io.BytesIO()
        if fmt == "svg":
            from matplotlib.backends.backend_svg import FigureCanvasSVG

            FigureCanvasSVG(fig)
            fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
        else:
            from matplotlib.backends.backend_agg import FigureCanvasAgg

            FigureCanvasAgg(fig)
            fig.savefig(buf, format="png", dpi=120, metadata={"Software": None},
                        bbox_inches="tight")  # fmt: skip
        return buf.getvalue()
