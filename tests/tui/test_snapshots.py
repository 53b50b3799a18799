"""Snapshots of the main screens at 80x24 and at 120x36 (pytest-textual-snapshot).

The registries come from tests/tui/conftest.py: hand-written files (fixed digests) and a
fixed clock (fixed timestamps); the header's registry path is replaced and the cursor does
not blink, so a snapshot changes only when the screen does. After an intended change:

    .venv/bin/pytest tests/tui/test_snapshots.py --snapshot-update

`REGISTRY_TUI_SCREENSHOT=docs/screenshot.svg` writes the README's screenshot of the bundles
screen (test_write_readme_screenshot; skipped otherwise).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from tests.conftest import run_cli
from tests.tui import CLOCK_START, add_bundle, cli_ok, fixed_clock
from tui.app import RegistryApp

SMALL, LARGE = (80, 24), (120, 36)
SCREENSHOT = os.environ.get("REGISTRY_TUI_SCREENSHOT", "")


def steady(*keys: str) -> Callable[[Pilot], Any]:
    """Before the screenshot: a fixed header, no blinking cursor, then press `keys`."""

    async def run_before(pilot: Pilot) -> None:
        pilot.app.sub_title = "~/demo-out/registry"
        await pilot.pause()
        await pilot.press(*keys)
        await pilot.pause()
        for box in pilot.app.screen.query(Input):
            box.cursor_blink = False
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x36"])
def test_bundles_screen(snap_compare: Any, released: Path, size: tuple[int, int]) -> None:
    assert snap_compare(RegistryApp(released), terminal_size=size, run_before=steady())


@pytest.mark.skipif(not SCREENSHOT, reason="set REGISTRY_TUI_SCREENSHOT=PATH to write it")
def test_write_readme_screenshot(
    released: Path, projects: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's screenshot: the release registry plus a newer candidate with an
    errored gate, one without gate runs, and a second name."""
    v1, v2 = projects
    fixed_clock(monkeypatch, CLOCK_START + dt.timedelta(hours=2))
    add_bundle(released, v2, "--annotation", "run=3", "--parent", "support-bot:v2")
    add_bundle(released, v2, "--annotation", "run=4", "--parent", "support-bot:v3")
    add_bundle(released, v1, "--annotation", "task=routing", name="ticket-router")
    cli_ok(released, "gates", "run", "support-bot:v3", "--gate", "fake-outcome")
    run_cli("gates", "run", "support-bot:v3", "--gate", "fake-raise", registry=released)
    cli_ok(released, "gates", "run", "ticket-router:v1")
    cli_ok(released, "promote", "ticket-router:v1", "--to", "staging", "--reason", "first")

    async def main() -> None:
        app = RegistryApp(released)
        async with app.run_test(size=(100, 16)) as pilot:
            await steady()(pilot)
            Path(SCREENSHOT).write_text(app.export_screenshot(title="registry tui"))

    asyncio.run(main())


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x36"])
def test_bundle_detail_screen(snap_compare: Any, released: Path, size: tuple[int, int]) -> None:
    assert snap_compare(RegistryApp(released), terminal_size=size, run_before=steady("enter"))


def test_gate_runs_tab(snap_compare: Any, released: Path) -> None:
    keys = ("enter", "2", "down")
    assert snap_compare(RegistryApp(released), terminal_size=SMALL, run_before=steady(*keys))


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x36"])
def test_channels_screen(snap_compare: Any, released: Path, size: tuple[int, int]) -> None:
    assert snap_compare(RegistryApp(released), terminal_size=size, run_before=steady("c"))


def test_promote_blocked(snap_compare: Any, two_bundles: Path) -> None:
    keys = ("down", "p")
    assert snap_compare(RegistryApp(two_bundles), terminal_size=SMALL, run_before=steady(*keys))


def test_rollback_dialog(snap_compare: Any, released: Path) -> None:
    keys = ("c", "r", *"INC-4211")
    assert snap_compare(RegistryApp(released), terminal_size=SMALL, run_before=steady(*keys))


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x36"])
def test_diff_screen(snap_compare: Any, released: Path, size: tuple[int, int]) -> None:
    keys = ("enter", "d")  # v2 against its parent v1
    assert snap_compare(RegistryApp(released), terminal_size=size, run_before=steady(*keys))


def test_help_screen(snap_compare: Any, released: Path) -> None:
    keys = ("question_mark",)
    assert snap_compare(RegistryApp(released), terminal_size=SMALL, run_before=steady(*keys))


def test_plots_tab(snap_compare: Any, reviewed: Path) -> None:
    """v2's loss curves and its fake-regression drop across v1, v2 against max_drop."""
    keys = ("enter", "2", "down", "down", "3")  # the oldest run, fake-outcome: its trend
    assert snap_compare(RegistryApp(reviewed), terminal_size=SMALL, run_before=steady(*keys))


def test_plots_tab_large(snap_compare: Any, reviewed: Path) -> None:
    keys = ("enter", "3")  # the newest run is fake-regression's: the drop is plotted
    assert snap_compare(RegistryApp(reviewed), terminal_size=LARGE, run_before=steady(*keys))


def test_gate_runs_superseded(snap_compare: Any, reviewed: Path) -> None:
    """fake-regression re-run: the older run marked superseded; metrics beside limits."""
    run_cli("gates", "run", "support-bot:v2", "--gate", "fake-regression", registry=reviewed)
    keys = ("enter", "2")
    assert snap_compare(RegistryApp(reviewed), terminal_size=LARGE, run_before=steady(*keys))


def test_promote_failed_gate(snap_compare: Any, reviewed: Path) -> None:
    """Why it blocks, with the failure line; the button re-runs the failed gate."""
    assert snap_compare(RegistryApp(reviewed), terminal_size=SMALL, run_before=steady("p"))
