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
