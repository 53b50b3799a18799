"""Helpers for the TUI tests: `registry add` of the small, byte-for-byte deterministic
project (no torch; gates/tiny/fixed.py, whose digests are the same on every run and
machine), and a gate the test can hold open (fixtures: tests/tui/conftest.py).
"""

from __future__ import annotations

import datetime as dt
import threading
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from gates.base import Gate, GateContext, GateResult
from gates.tiny.fixed import build_project, safetensors_bytes, write  # noqa: F401 (re-export)
from tests.conftest import run_cli
from tests.fakegates import FAKES

CLOCK_START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def add_bundle(
    reg_path: Path, project: dict[str, Path], *extra: str, name: str = "support-bot"
) -> None:
    """`registry add NAME ...` with the project's files."""
    res = run_cli(
        "add", name, "--base", project["base"], "--adapter", project["adapter"],
        "--tokenizer", project["tokenizer"], "--chat-template", project["chat_template"],
        "--dataset", project["dataset"], "--config", project["config"], *extra,
        registry=reg_path,
    )  # fmt: skip
    assert res.code == 0, res.err


def cli_ok(reg_path: Path, *args: str | Path) -> str:
    res = run_cli(*args, registry=reg_path)
    assert res.code == 0, res.err + res.out
    return res.out


def fixed_clock(mp: pytest.MonkeyPatch, start: dt.datetime = CLOCK_START) -> None:
    """Every stored timestamp from `start`, one minute apart (the audit chain stays valid)."""
    import gates.engine
    import registry.audit
    import registry.bundles
    import registry.channels

    ticks = iter(range(1_000_000))
    lock = threading.Lock()

    def now() -> str:
        with lock:
            t = start + dt.timedelta(minutes=next(ticks))
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    for mod in (registry.bundles, registry.audit, registry.channels, gates.engine):
        mp.setattr(mod, "now", now)


def add_gates(mp: pytest.MonkeyPatch, gates: dict[str, str]) -> None:
    """Put `name -> module:Class` gates into the entry-point catalog (as a package would)."""
    from gates import catalog

    real = catalog.entry_points()
    extra = {n: EntryPoint(n, value, catalog.GROUP) for n, value in gates.items()}
    mp.setattr(catalog, "entry_points", lambda: {**real, **extra})
    catalog.load.cache_clear()


FAKE_GATES = {n: f"tests.fakegates:{c.__name__}" for n, c in FAKES.items()}


# --- a gate the test holds open, to watch progress while the interface stays live ----------


class HeldGate(Gate):
    """Reports progress, then waits until the test releases it; then passes."""

    name = "fake-held"
    defaults: dict[str, Any] = {}
    release = threading.Event()
    started = threading.Event()

    def run(self, ctx: GateContext) -> GateResult:
        ctx.progress("warming up")
        HeldGate.started.set()
        if not HeldGate.release.wait(30):
            raise TimeoutError("the test never released the gate")
        return GateResult("passed", {"waited": 1}, {}, {}, "released")


# --- gates that record evidence in the formats the real train and eval gates write ---------


class TrainLikeGate(Gate):
    """Named `train` (the TUI plots the loss curves of the `train` gate's runs): records
    `train_loss` / `val_loss` as [step, loss] points, as gates/train.py does; the curve
    falls faster with a larger LoRA rank, so versions differ."""

    name = "train"
    defaults: dict[str, Any] = {"max_val_loss_rise": 0.1, "min_val_loss_rise": 0.05}

    def run(self, ctx: GateContext) -> GateResult:
        r = int(ctx.meta("adapter").get("r") or 8)
        train = [[s, round(2.0 * (1 - r / 100) ** s, 6)] for s in range(1, 41)]
        val = [[s, round(2.1 * (1 - r / 120) ** s + 0.05, 6)] for s in range(5, 41, 5)]
        best = min(v for _, v in val)
        rise = (val[-1][1] - best) / best
        return GateResult.check(
            [],
            {"steps": 40, "initial_train_loss": train[0][1], "final_train_loss": train[-1][1],
             "best_val_loss": best, "final_val_loss": val[-1][1], "val_loss_rise": rise},
            {"max_val_loss_rise": ctx.params["max_val_loss_rise"],
             "min_val_loss_rise": ctx.params["min_val_loss_rise"], "val_patience": 3},
            {"train_loss": train, "val_loss": val, "overfitting": {"flagged": False}},
            f"40 steps, train loss {train[0][1]:.3f} -> {train[-1][1]:.3f}",
        )  # fmt: skip


class RegressionLikeGate(Gate):
    """regression-eval's metrics (drop with its interval) and per-item evidence: the drop
    is `drop` if the policy sets it, else 0.01 per 8 of LoRA rank; item 1 regresses."""

    name = "fake-regression"
    defaults: dict[str, Any] = {"max_drop": 0.02, "confidence": 0.95, "drop": -1.0}

    def run(self, ctx: GateContext) -> GateResult:
        p = ctx.params
        r = int(ctx.meta("adapter").get("r") or 8)
        drop = p["drop"] if p["drop"] >= 0 else 0.01 * r / 8
        lower, upper = drop - 0.01, drop + 0.01
        per_item = [
            {"prompt": "sort b a", "reference": "a b", "output": "b a",
             "baseline_output": "a b", "score": 0.0, "baseline_score": 1.0},
            {"prompt": "sort c a", "reference": "a c", "output": "a c",
             "baseline_output": "c a", "score": 1.0, "baseline_score": 0.0},
            {"prompt": "sort c b", "reference": "b c", "output": "b c",
             "baseline_output": "b c", "score": 1.0, "baseline_score": 1.0},
        ]  # fmt: skip
        failures = []
        if upper > p["max_drop"] + 1e-9:
            failures.append(
                f"dropped {drop:.3f}, upper bound {upper:.3f} > max_drop {p['max_drop']}"
            )
        return GateResult.check(
            failures,
            {"score": 0.667 - drop, "baseline_score": 0.667, "drop": drop, "drop_se": 0.005,
             "drop_lower": lower, "drop_upper": upper, "items": 3, "regressed_items": 1,
             "improved_items": 1},
            {"max_drop": p["max_drop"], "confidence": p["confidence"]},
            {"metric": "exact_match", "per_item": per_item, "per_item_truncated": 0},
            f"drop {drop:+.3f} (95% bound <= {upper:+.3f}); 1 improved, 1 regressed of 3",
        )  # fmt: skip


REVIEW_GATES = {
    "train": "tests.tui:TrainLikeGate",
    "fake-regression": "tests.tui:RegressionLikeGate",
}
