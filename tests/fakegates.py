"""Test gates with outcomes the test chooses, for exercising the engine and promotion.

These stand in for real gates only where the engine's and the policy's own behaviour is
under test; the real gates have their own tests in tests/gates/.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest

from gates.base import Gate, GateContext, GateResult


class OutcomeGate(Gate):
    """Passes or fails as the policy says; reads the eval set it is given."""

    name = "fake-outcome"
    version = "2"
    defaults: dict[str, Any] = {"outcome": "passed", "eval_set": "", "min_score": 0.5}

    def run(self, ctx: GateContext) -> GateResult:
        rows = 0
        if ctx.params["eval_set"]:
            rows = len(ctx.input_file(ctx.params["eval_set"]).read_text().splitlines())
        score = 1.0 if ctx.params["outcome"] == "passed" else 0.0
        return GateResult.check(
            []
            if score >= ctx.params["min_score"]
            else [f"score {score} < {ctx.params['min_score']}"],
            {"score": score, "rows": rows},
            {"min_score": ctx.params["min_score"]},
            {
                "adapter_r": ctx.meta("adapter").get("r"),
                "workdir_has_adapter": (ctx.workdir / "adapter_config.json").is_file(),
            },
            "fine",
        )


class RaisingGate(Gate):
    name = "fake-raise"
    defaults: dict[str, Any] = {}

    def run(self, ctx: GateContext) -> GateResult:
        raise RuntimeError("the gate crashed")


class AfterGate(Gate):
    """Must run after fake-outcome and sees its result."""

    name = "fake-after"
    after = ("fake-outcome",)
    defaults: dict[str, Any] = {}

    def run(self, ctx: GateContext) -> GateResult:
        prior = ctx.results.get("fake-outcome")
        return GateResult("passed", {"saw_prior": prior is not None})


FAKES = {c.name: c for c in (OutcomeGate, RaisingGate, AfterGate)}


@pytest.fixture
def fake_gates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Add the fake gates to the entry-point catalog for this test."""
    from gates import catalog

    real = catalog.entry_points()
    extra = {
        n: EntryPoint(n, f"tests.fakegates:{c.__name__}", catalog.GROUP) for n, c in FAKES.items()
    }
    monkeypatch.setattr(catalog, "entry_points", lambda: {**real, **extra})
    catalog.load.cache_clear()
    yield
    catalog.load.cache_clear()
