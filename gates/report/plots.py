"""The report's plots: matplotlib figures rendered to inline SVG, byte-for-byte reproducible.

matplotlib (no pyplot, so no global figure state or GUI backend: a `Figure` drawn by the
SVG canvas) because the report must open with no network and no JavaScript, and SVG keeps
its text as text: searchable, selectable and crisp at any zoom (`svg.fonttype = none`).
The same registry gives the same bytes: `svg.hashsalt` fixes the ids matplotlib derives
from a random salt, and `metadata={"Date": None}` drops the timestamp. Each plot has its
own salt, so two plots inlined in one page never share an element id.

matplotlib is imported only here, inside the functions that draw.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gates.review import LossCurves, ServingFigures, TrendPoint

PASS_COLOUR, FAIL_COLOUR, LINE_COLOUR = "#1a7f37", "#cf222e", "#57606a"
TRAIN_COLOUR, VAL_COLOUR = "#0969da", "#bc4c00"
MAX_TREND_PANELS = 8


@contextmanager
def _style(salt: str) -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context({
        "svg.hashsalt": f"lora-registry-report-{salt}",
        "svg.fonttype": "none",
        "font.family": "sans-serif",
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }):  # fmt: skip
        yield


def _svg(fig: Any) -> str:
    """The figure as an <svg> element (no XML prolog: it is inlined in HTML)."""
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    FigureCanvasSVG(fig)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :].strip()


def loss_svg(loss: LossCurves, title: str = "Loss curves") -> str:
    """Train and validation loss against the step, the best validation point marked."""
    from matplotlib.figure import Figure

    with _style("loss"):
        fig = Figure(figsize=(7.5, 3.2))
        ax = fig.add_subplot()
        ax.plot(*zip(*loss.train, strict=True), color=TRAIN_COLOUR, lw=1.4, label="train loss")
        if loss.val:
            ax.plot(*zip(*loss.val, strict=True), color=VAL_COLOUR, lw=1.4, marker="o", ms=3,
                    label="validation loss")  # fmt: skip
            best = min(loss.val, key=lambda p: (p[1], p[0]))
            ax.annotate(f"best {best[1]:.3f}", best, textcoords="offset points",
                        xytext=(0, 8), ha="center", color=VAL_COLOUR)  # fmt: skip
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats per token)")
        ax.set_title(title)
        ax.legend(frameon=False)
        fig.tight_layout()
        return _svg(fig)


def trends_svg(points: list[TrendPoint]) -> str:
    """One panel per judged figure: its value per version, the interval as an error bar,
    the threshold as a dashed line, each point coloured by its pass mark."""
    from matplotlib.figure import Figure

    panels: dict[tuple[str, str], list[TrendPoint]] = {}
    for p in points:
        if p.value is not None:
            panels.setdefault((p.gate, p.metric), []).append(p)
    keys = list(panels)[:MAX_TREND_PANELS]
    if not keys:
        return ""
    cols = min(2, len(keys))
    rows = (len(keys) + cols - 1) // cols
    with _style("trends"):
        fig = Figure(figsize=(7.5, 2.4 * rows))
        for i, key in enumerate(keys):
            ax = fig.add_subplot(rows, cols, i + 1)
            pts = sorted(panels[key], key=lambda p: p.version)
            xs = [p.version for p in pts]
            ys = [float(p.value or 0.0) for p in pts]
            ax.plot(xs, ys, color=LINE_COLOUR, lw=1)
            for p, y in zip(pts, ys, strict=True):
                colour = (
                    LINE_COLOUR if p.passed is None else PASS_COLOUR if p.passed else FAIL_COLOUR
                )
                lo = y - p.lower if p.lower is not None else 0.0
                hi = p.upper - y if p.upper is not None else 0.0
                ax.errorbar([p.version], [y], yerr=[[max(lo, 0.0)], [max(hi, 0.0)]],
                            fmt="o", color=colour, ms=5, capsize=3)  # fmt: skip
            ax.axhline(pts[0].threshold, color=FAIL_COLOUR, ls="--", lw=1,
                       label=f"threshold {pts[0].threshold:g}")  # fmt: skip
            ax.set_xticks(xs, [f"v{x}" for x in xs])
            ax.set_title(f"{key[0]}: {key[1]}")
            ax.set_xlabel("version")
            ax.legend(frameon=False, loc="best")
        fig.tight_layout()
        return _svg(fig)


def serving_svg(serving: ServingFigures) -> str:
    """Latency and tokens/s of each mode relative to the base, with the policy's limits."""
    from matplotlib.figure import Figure

    modes = list(serving.ratios)
    if not modes:
        return ""
    limits = {f.threshold_key: f.threshold for f in serving.figures}
    with _style("serving"):
        fig = Figure(figsize=(7.5, 2.6))
        for i, (key, label, limit_key) in enumerate((
            ("latency_ratio", "latency / base", "max_{mode}_latency_ratio"),
            ("tokens_per_s_ratio", "tokens/s / base", "min_tokens_per_s_ratio"),
        )):  # fmt: skip
            ax = fig.add_subplot(1, 2, i + 1)
            values = [float(serving.ratios[m].get(key) or 0.0) for m in modes]
            ax.bar(modes, values, color=TRAIN_COLOUR, width=0.5)
            for j, m in enumerate(modes):
                limit = limits.get(limit_key.format(mode=m))
                if limit is not None:
                    ax.hlines(limit, j - 0.35, j + 0.35, colors=FAIL_COLOUR, linestyles="--")
                ax.annotate(f"{values[j]:.2f}x", (j, values[j]), textcoords="offset points",
                            xytext=(0, 3), ha="center")  # fmt: skip
            ax.axhline(1.0, color=LINE_COLOUR, lw=0.8)
            ax.set_title(label)
            ax.set_ylabel("ratio to the base model")
        fig.tight_layout()
        return _svg(fig)
