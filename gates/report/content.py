"""What the report says, once, as sections of paragraphs, tables and plots.

The HTML and Markdown renderers (gates/report/html.py, markdown.py) draw the same
sections; a plot carries the SVG for HTML and a one-paragraph text summary, which is
what Markdown shows (a pull request gets the numbers, not pictures).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gates.review import Figure, LossCurves, Review, RunView, TrendPoint

MAX_ITEMS_SHOWN = 50
MAX_IMPROVED_SHOWN = 10


@dataclass(frozen=True)
class Mark:
    """A pass/fail mark: `kind` is pass, fail, error or muted (superseded, n/a)."""

    text: str
    kind: str


@dataclass(frozen=True)
class Code:
    """Monospace text: a digest, a key, a prompt."""

    text: str


@dataclass(frozen=True)
class Note:
    """A secondary paragraph (figures no threshold judges): shown smaller."""

    text: str


Cell = str | Mark | Code


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]


@dataclass
class Plot:
    svg: str  # an <svg> element, or "" when there is nothing to draw
    summary: str  # the same content in words, for Markdown and screen readers
    title: str


@dataclass
class Section:
    id: str
    title: str
    blocks: list[str | Note | Table | Plot] = field(default_factory=list)


STATUS_MARKS = {"passed": Mark("PASS", "pass"), "failed": Mark("FAIL", "fail"),
                "error": Mark("ERROR", "error"), "missing": Mark("MISSING", "error")}  # fmt: skip


def status_mark(status: str) -> Mark:
    return STATUS_MARKS.get(status, Mark(status.upper(), "muted"))


def _mark(passed: bool | None) -> Mark:
    if passed is None:
        return Mark("n/a", "muted")
    return Mark("PASS", "pass") if passed else Mark("FAIL", "fail")


def figure_mark(f: Figure) -> Mark:
    return _mark(f.passed)


def num(v: Any) -> str:
    """Numbers as the gates print them: 4 significant digits."""
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v).lower()
    if isinstance(v, float):
        return f"{v + 0.0:.4g}" if v != 0 else "0"
    return str(v)


def interval(f: Figure) -> str:
    if f.lower is None and f.upper is None:
        return "-"
    conf = f" ({f.confidence:.0%})" if f.confidence else ""
    return f"[{num(f.lower)}, {num(f.upper)}]{conf}"


def short(digest: str | None) -> str:
    return digest[:19] if digest else "-"


def when(ts: str | None) -> str:
    return ts[:19].replace("T", " ") if ts else "-"


# --- sections ------------------------------------------------------------------------------


def sections(rv: Review, draw: bool = True) -> list[Section]:
    """The report's sections in order; `draw=False` skips the SVGs (Markdown)."""
    builders: list[Callable[[Review, bool], Section]] = [
        _overview, _gates, _readiness, _trends, _loss, _items, _changes, _serving, _trust,
    ]  # fmt: skip
    return [b(rv, draw) for b in builders]


def _overview(rv: Review, _draw: bool) -> Section:
    b = rv.bundle
    cur = rv.current_runs
    passed = sum(r.status == "passed" for r in cur)
    s = Section("bundle", f"Release report: {b['tag']}")
    s.blocks.append(
        f"{len(cur)} gates run: {passed} passed, {len(cur) - passed} did not. "
        f"Compared with {rv.against.tag or 'nothing'} ({rv.against.why})."
    )
    s.blocks.append(Table(["field", "value"], [
        ["digest", Code(b["digest"])],
        ["created", f"{when(b['created_at'])} by {b.get('created_by') or '-'}"],
        ["adaptation", str(b.get("adaptation") or "-")],
        ["size", f"{b['size']} bytes"],
        ["channels", ", ".join(b["channels"] + b.get("remote_channels", [])) or "none"],
        ["annotations", ", ".join(f"{k}={v}" for k, v in sorted(b["annotations"].items()))
         or "none"],
        ["policy in force", Code(short((rv.policy or {}).get("digest")))],
    ]))  # fmt: skip
    lineage = [[b["tag"], Code(short(b["digest"])), "this bundle"]] + [
        [p["tag"] or "(not in this registry)", Code(short(p["digest"])), "parent" if i == 0
         else f"ancestor {i + 1}"]
        for i, p in enumerate(b["lineage"])
    ]  # fmt: skip
    s.blocks.append("Lineage (the parent chain, newest first):")
    s.blocks.append(Table(["bundle", "digest", "relation"], lineage))
    return s


def _changes(rv: Review, _draw: bool) -> Section:
    c = rv.against
    s = Section("changes", f"Changes against {c.tag or 'nothing'}")
    s.blocks.append(f"Compared with: {c.why}.")
    if not c.components:
        return s
    changed = [x["kind"] for x in c.components if x["status"] != "unchanged"]
    s.blocks.append(
        f"{len(changed)} of {len(c.components)} components changed: {', '.join(changed) or 'none'}."
    )
    s.blocks.append(Table(["component", "change", c.tag or "before", rv.bundle["tag"]], [
        [x["kind"], Mark(x["status"], "muted" if x["status"] == "unchanged" else "change"),
         Code(short(x["before"])), Code(short(x["after"]))]
        for x in c.components
    ]))  # fmt: skip
    s.blocks.append("Key metadata (changed rows marked):")
    s.blocks.append(Table(["component", "key", c.tag or "before", rv.bundle["tag"], ""], [
        [m["kind"], Code(m["key"]), num(m["before"]), num(m["after"]),
         Mark("changed", "change") if m["changed"] else ""]
        for m in c.key_meta
    ]))  # fmt: skip
    other = [m for m in c.meta_changes if not any(
        k["kind"] == m["kind"] and k["key"] == m["key"] for k in c.key_meta)]  # fmt: skip
    if other:
        s.blocks.append("Other metadata that differs:")
        s.blocks.append(Table(["component", "key", "before", "after"], [
            [m["kind"], Code(m["key"]), num(m["before"]), num(m["after"])] for m in other
        ]))  # fmt: skip
    files = [(x["kind"], x["files"]) for x in c.components if x.get("files")]
    rows: list[list[Cell]] = [
        [kind, how, Code(path)] for kind, f in files for how in ("added", "removed", "changed")
        for path in f[how]
    ]  # fmt: skip
    if rows:
        s.blocks.append("Files:")
        s.blocks.append(Table(["component", "change", "path"], rows))
    if c.annotations:
        s.blocks.append(Table(["annotation", "before", "after"], [
            [Code(a["key"]), num(a["before"]), num(a["after"])] for a in c.annotations
        ]))  # fmt: skip
    return s


def _run_rows(run: RunView) -> list[list[Cell]]:
    rows: list[list[Cell]] = [
        [Code(f.metric), num(f.value), interval(f), f"{f.judged} {f.comparison} {num(f.threshold)}"
         f" ({f.threshold_key})" + (f"; {f.note}" if f.note else ""), num(f.judged_value),
         figure_mark(f)]
        for f in run.figures
    ]  # fmt: skip
    return rows


def _gates(rv: Review, _draw: bool) -> Section:
    s = Section("gates", "Gates")
    if not rv.runs:
        s.blocks.append("No gate runs yet: run `registry gates run`.")
        return s
    s.blocks.append(
        "The newest run of each gate is its result; older runs are superseded. Each judged"
        " figure sits beside its threshold; where the gate judged a confidence bound, the"
        " bound is what is compared."
    )
    s.blocks.append(Table(["gate", "result", "run", "when", "by", "summary"], [
        [r.gate, status_mark(r.status), f"#{r.id}", when(r.ended_at), r.actor,
         (r.error or r.summary)[:160]]
        for r in rv.current_runs
    ]))  # fmt: skip
    for r in rv.current_runs:
        notes = []
        if not r.counts:
            notes.append(f"does not count: {r.why}")
        elif r.origin:
            notes.append(r.why)
        if not r.under_policy:
            notes.append("recorded under another policy than the one in force")
        head = f"{r.gate} (gate version {r.version}): run #{r.id}" + (
            f" ({'; '.join(notes)})" if notes else ""
        )
        s.blocks.append(head)
        rows = _run_rows(r)
        if rows:
            s.blocks.append(Table(["metric", "value", "interval", "judged", "compared", "mark"],
                                  rows))  # fmt: skip
        extra = [f"{k} = {num(v)}" for k, v in sorted(r.other_metrics.items())
                 if not isinstance(v, dict | list)][:16]  # fmt: skip
        if extra:
            s.blocks.append(Note("Other figures: " + ", ".join(extra) + "."))
    old = [r for r in rv.runs if not r.current]
    if old:
        s.blocks.append("Superseded runs (kept for history; they do not decide anything):")
        s.blocks.append(Table(["gate", "run", "result", "when", "superseded by", "note"], [
            [r.gate, f"#{r.id}", status_mark(r.status), when(r.ended_at),
             Mark(f"superseded by #{r.superseded_by}", "muted"),
             ("" if r.under_policy else "under another policy; ") + (r.error or r.summary)[:120]]
            for r in old
        ]))  # fmt: skip
    return s


def _readiness(rv: Review, _draw: bool) -> Section:
    s = Section("promotion", "Promotion readiness")
    if not rv.readiness:
        s.blocks.append("No policy is set, so no channel has requirements.")
        return s
    s.blocks.append(
        "What each channel of the policy in force requires, and the run that counts for it"
        " (the newest run under this policy with an intact audit record)."
    )
    rows: list[list[Cell]] = []
    for ch, reqs in rv.readiness.items():
        ok = all(q["status"] == "passed" for q in reqs)
        rows.append([Code(ch), "all gates", Mark("READY" if ok else "BLOCKED",
                                                 "pass" if ok else "fail"), ""])  # fmt: skip
        for q in reqs:
            detail = q.get("why") or q.get("note") or ""  # why it blocks, else the notes
            rows.append(["", q["gate"], status_mark(q["status"]),
                         (f"#{q['run_id']}" if q["run_id"] else "no run")
                         + (f"; {detail}" if detail else "")])  # fmt: skip
    s.blocks.append(Table(["channel", "gate", "status", "run"], rows))
    return s


def loss_summary(loss: LossCurves) -> str:
    t = loss.train
    text = (
        f"{loss.gate} run #{loss.run_id}: train loss {t[0][1]:.3f} at step {t[0][0]:g} ->"
        f" {t[-1][1]:.3f} at step {t[-1][0]:g} ({len(t)} points)"
    )
    if loss.val:
        best = min(loss.val, key=lambda p: (p[1], p[0]))
        text += (
            f"; validation loss {loss.val[0][1]:.3f} -> {loss.val[-1][1]:.3f}, best"
            f" {best[1]:.3f} at step {best[0]:g} ({len(loss.val)} evaluations)"
        )
    else:
        text += "; no validation split"
    if loss.overfitting:
        flagged = loss.overfitting.get("flagged")
        text += "; overfitting: " + ("FLAGGED" if flagged else "not flagged")
        if loss.overfitting.get("rise") is not None:
            text += f" (rise {loss.overfitting['rise']:+.1%} over the best)"
    return text + "."


def _loss(rv: Review, draw: bool) -> Section:
    from gates.report import plots

    s = Section("loss", "Loss curves")
    if rv.loss is None:
        s.blocks.append("No run of this bundle recorded loss curves (the `train` gate does).")
        return s
    svg = plots.loss_svg(rv.loss, f"{rv.loss.gate} run #{rv.loss.run_id}") if draw else ""
    s.blocks.append(Plot(svg, loss_summary(rv.loss), "train and validation loss"))
    return s


def trend_summary(points: list[TrendPoint]) -> str:
    series: dict[tuple[str, str], list[TrendPoint]] = {}
    for p in points:
        series.setdefault((p.gate, p.metric), []).append(p)
    parts = []
    for (gate, metric), pts in series.items():
        vals = ", ".join(
            f"v{p.version} {num(p.value)}" for p in sorted(pts, key=lambda p: p.version)
        )
        parts.append(f"{gate} {metric}: {vals} (threshold {num(pts[0].threshold)})")
    return "; ".join(parts) + "." if parts else "No judged figures yet."


def _trends(rv: Review, draw: bool) -> Section:
    from gates.report import plots

    s = Section("trends", f"Trends across the versions of {rv.bundle['name']}")
    if not rv.trends:
        s.blocks.append("No version of this name has a judged figure yet.")
        return s
    svg = plots.trends_svg(rv.trends) if draw else ""
    s.blocks.append(Plot(svg, trend_summary(rv.trends), "metric trends per version"))
    s.blocks.append(Table(["version", "gate", "metric", "value", "interval", "threshold", "mark"], [
        [f"v{p.version}", p.gate, Code(p.metric), num(p.value),
         "-" if p.lower is None and p.upper is None else f"[{num(p.lower)}, {num(p.upper)}]",
         num(p.threshold),
         _mark(p.passed)]
        for p in rv.trends
    ]))  # fmt: skip
    s.blocks.append(Table(["version", "digest", "created", "channels", "gates (latest runs)"], [
        [v["tag"], Code(short(v["digest"])), when(v["created_at"]), ", ".join(v["channels"]) or "-",
         ", ".join(f"{n} {k}" for k, n in sorted(v["gates"].items())) or "-"]
        for v in rv.versions
    ]))  # fmt: skip
    return s


def _items(rv: Review, _draw: bool) -> Section:
    s = Section("items", "Per-item regressions")
    reg = rv.regressions
    improved = [i for i in rv.items if not i.regressed]
    s.blocks.append(
        f"{len(reg)} items regressed and {len(improved)} improved against the baseline, in"
        " the current runs of the paired evals (the gates keep up to 50 items per run,"
        " changed ones first)."
    )
    for label, group, limit in (("Regressed", reg, MAX_ITEMS_SHOWN),
                                ("Improved", improved, MAX_IMPROVED_SHOWN)):  # fmt: skip
        if not group:
            continue
        more = f" (the first {limit} of {len(group)})" if len(group) > limit else ""
        s.blocks.append(f"{label}{more}:")
        headers = ["gate", "prompt", "expected", "before (baseline)", "after", "score"]
        s.blocks.append(Table(headers, [
            [f"{i.gate} #{i.run_id}", Code(i.prompt), Code(i.expected), Code(i.before),
             Code(i.after), f"{num(i.before_score)} -> {num(i.after_score)}"]
            for i in group[:limit]
        ]))  # fmt: skip
    return s


def _serving(rv: Review, draw: bool) -> Section:
    from gates.report import plots

    s = Section("serving", "Serving")
    sv = rv.serving
    if sv is None:
        s.blocks.append("No serving-eval run of this bundle.")
        return s
    s.blocks.append(f"{sv.gate} run #{sv.run_id} on {sv.device or 'an unrecorded device'}.")
    s.blocks.append(Table(["mode", "p50 ms", "p95 ms", "tokens/s", "peak MB"], [
        [m, num(v["p50_latency_ms"]), num(v["p95_latency_ms"]), num(v["tokens_per_s"]),
         num(v["peak_memory_mb"])]
        for m, v in sv.modes.items()
    ]))  # fmt: skip
    if sv.ratios:
        text = "; ".join(
            f"{m}: {num(r['latency_ratio'])}x the base's latency, {num(r['tokens_per_s_ratio'])}x"
            " its tokens/s" for m, r in sv.ratios.items()
        )  # fmt: skip
        svg = plots.serving_svg(sv) if draw else ""
        s.blocks.append(Plot(svg, text + ".", "serving ratios to the base"))
    return s


def _trust(rv: Review, _draw: bool) -> Section:
    s = Section("trust", "Signatures, attestations and who promoted what")
    a = rv.audit
    s.blocks.append(
        f"Audit chain: {'intact' if a['ok'] else 'BROKEN: ' + str(a['problem'])},"
        f" {a['events']} events ({a['signed']} signed)."
    )
    if rv.signatures:
        s.blocks.append(Table(["signer", "signature", "when", "by"], [
            [Code(g["signer"]), Code(short(g["signature_digest"])), when(g["created_at"]),
             g["actor"]] for g in rv.signatures
        ]))  # fmt: skip
    else:
        s.blocks.append("No bundle signature (`registry sign`).")
    signed = [r for r in rv.runs if r.attested]
    s.blocks.append(
        f"{len(signed)} of {len(rv.runs)} gate runs carry a signed attestation"
        + (": " + ", ".join(f"#{r.id} {r.gate} by {r.signer}" for r in signed) if signed else ".")
    )
    for ch, moves in rv.history.items():
        s.blocks.append(f"History of {rv.bundle['name']}:{ch} (newest first):")
        s.blocks.append(Table(["when", "action", "from", "to", "who", "why"], [
            [when(m["created_at"]), m["action"] + (" (forced)" if m["forced"] else ""),
             m["from_tag"] or "-", m["to_tag"] or "-",
             m["actor"] + (f' "{m["display"]}"' if m.get("display") else ""), m["reason"] or ""]
            for m in moves
        ]))  # fmt: skip
    s.blocks.append("Audit events about this bundle:")
    s.blocks.append(Table(["#", "when", "action", "channel", "who", "reason"], [
        [str(e["seq"]), when(e["created_at"]), e["action"] + (" (forced)" if e["forced"] else ""),
         e["channel"] or "-", e["actor"], e["reason"] or ""]
        for e in rv.events
    ]))  # fmt: skip
    return s
