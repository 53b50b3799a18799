"""The bundle view's plots (textual-plotext): train and validation loss by step, and one
gate's metric across the versions of a name with its threshold.

Imported only when a bundle screen opens (tui/screens/detail.py imports it inside
compose), so `registry tui`'s start and first paint do not load plotext.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

from tui.figures import Curve, Trend


class LossPlot(PlotextPlot):
    """Train and validation loss of a `train` gate run, by step."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.train: Curve = []
        self.validation: Curve = []
        self.empty_text = "No train gate run with loss curves for this bundle."

    def show(self, train: Curve, validation: Curve, title: str = "") -> None:
        """Plot these curves (empty ones show `empty_text` instead); `title` names the run."""
        self.train, self.validation = train, validation
        plt = self.plt
        plt.clear_figure()
        # the legend is the title: plotext's own sits over the start of the curves
        legend = []
        if train:
            plt.plot([s for s, _ in train], [v for _, v in train], marker="braille",
                     color="cyan+")  # fmt: skip
            legend.append("train (blue)")
        if validation:
            plt.plot([s for s, _ in validation], [v for _, v in validation], marker="braille",
                     color="orange+")  # fmt: skip
            legend.append("validation (orange)")
        plt.title(" and ".join(legend) + " loss" + (f" of {title}" if title else ""))
        plt.xlabel("step")
        plt.ylabel("loss")
        self.refresh()

    def render(self) -> RenderResult:
        if not self.train and not self.validation:
            return Text(self.empty_text, style="italic")
        return super().render()


class TrendPlot(PlotextPlot):
    """One gate's metric across the versions of a name, its threshold as a line."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.trend: Trend | None = None
        self.empty_text = "No gate with a threshold has run on this name's versions yet."

    def show(self, trend: Trend | None, current: int | None = None) -> None:
        """Plot `trend` (None shows `empty_text`); `current` marks this bundle's version."""
        self.trend = trend
        plt = self.plt
        plt.clear_figure()
        if trend is not None:
            xs = [float(v) for v, _ in trend.points]
            ys = [y for _, y in trend.points]
            plt.plot(xs, ys, marker="braille", color="cyan+")
            plt.scatter(xs, ys, marker="●", color="cyan+")
            title = f"{trend.label} by version"
            if trend.threshold is not None:
                limit = float(trend.threshold)
                plt.hline(limit, "red")
                low, high = min([*ys, limit]), max([*ys, limit])
                pad = (high - low) * 0.1 or abs(limit) * 0.1 or 1.0
                plt.ylim(low - pad, high + pad)  # the line inside the frame, not on it
                title += f"; red line: {trend.limit} {trend.threshold:g}"
            plt.xticks(xs, [f"v{v}" + ("*" if v == current else "") for v, _ in trend.points])
            plt.xlabel("version (* this bundle)")
            plt.title(title)
        self.refresh()

    def render(self) -> RenderResult:
        if self.trend is None:
            return Text(self.empty_text, style="italic")
        return super().render()
