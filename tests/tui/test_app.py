"""Pilot tests of `registry tui` against real registries (SQLite), driven by keys.

Each test builds its registry with the real CLI (tests/tui/__init__.py), drives the app
with `App.run_test()`, and checks both the screen and the registry itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Select, Static

from registry import bundles
from registry.repo import Registry
from tests.conftest import run_cli
from tests.tui import HeldGate, add_bundle, cli_ok, write
from tui.app import ACTIONS, RegistryApp
from tui.screens.bundles import BundlesScreen
from tui.screens.channels import ChannelsScreen
from tui.screens.detail import DetailScreen
from tui.screens.diff import DiffScreen
from tui.screens.evidence import EvidenceScreen
from tui.screens.gates import RunGatesScreen
from tui.screens.help import HelpScreen
from tui.screens.promote import PromoteScreen
from tui.widgets.confirmation import ConfirmationScreen
from tui.widgets.gate_progress import GateProgress
from tui.widgets.virtual_table import VirtualTable


class RecordingApp(RegistryApp):
    """The app, remembering every notification it showed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[tuple[str, str, str]] = []

    def notify(self, message: str, *, title: str = "", severity: Any = "information",
               timeout: float | None = None, markup: bool = False) -> None:  # fmt: skip
        self.notes.append((severity, title, message))
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def errors(self) -> list[str]:
        return [f"{title}: {msg}" for sev, title, msg in self.notes if sev == "error"]


Scenario = Callable[[RecordingApp, Pilot], Awaitable[None]]


def drive(reg_path: Path, scenario: Scenario, size: tuple[int, int] = (80, 24)) -> RecordingApp:
    """Run the app on `reg_path` at `size` and play `scenario` against it."""
    app = RecordingApp(reg_path)

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await scenario(app, pilot)

    asyncio.run(main())
    return app


async def settle(app: RegistryApp, pilot: Pilot) -> None:
    """Wait for every worker (promote, rollback, gates) and the messages they post."""
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


def plain(renderable: Any) -> str:
    """What a Static shows, as plain text (Rich renderables rendered 120 columns wide)."""
    if isinstance(renderable, str):
        return renderable
    console = Console(width=120, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def text_of(app: RegistryApp, selector: str) -> str:
    return plain(app.screen.query_one(selector, Static).content)


def table_rows(app: RegistryApp, selector: str) -> list[list[str]]:
    table = app.screen.query_one(selector, DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def tags(app: RegistryApp) -> list[str]:
    return [r["tag"] for r in app.screen.query_one(VirtualTable).rows]


async def highlight(app: RegistryApp, pilot: Pilot, tag: str) -> None:
    table = app.screen.query_one(VirtualTable)
    table.move_to(tags(app).index(tag))
    await pilot.pause()


def digest_of(reg_path: Path, ref: str) -> str:
    return json.loads(cli_ok(reg_path, "show", ref, "--json"))["digest"]


def history(reg_path: Path, target: str) -> list[dict[str, Any]]:
    return json.loads(cli_ok(reg_path, "history", target, "--json"))


# --- bundles, filter, detail -----------------------------------------------------------------


def test_filter_by_name_and_open_detail_with_evidence(released: Path, projects: Any) -> None:
    add_bundle(released, projects[0], "--annotation", "team=x")  # a second version...
    res = run_cli("add", "other-bot", "--base", projects[0]["base"], "--adapter",
                  projects[0]["adapter"], registry=released)  # fmt: skip
    assert res.code == 0, res.err  # ...and a second name

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        assert isinstance(app.screen, BundlesScreen)
        assert tags(app) == ["other-bot:v1", "support-bot:v3", "support-bot:v2", "support-bot:v1"]
        await pilot.press("slash", *"other")
        assert tags(app) == ["other-bot:v1"]
        assert "1 of 4 bundles" in text_of(app, "#bundles-status")
        await pilot.press("escape")  # clears the filter, back to the table
        assert app.screen.query_one("#filter", Input).value == ""
        assert len(tags(app)) == 4
        await pilot.press("slash", *"support", "enter")
        assert tags(app) == ["support-bot:v3", "support-bot:v2", "support-bot:v1"]
        await pilot.press("down", "enter")  # support-bot:v2
        assert isinstance(app.screen, DetailScreen)
        overview = text_of(app, "#overview-body")
        assert "support-bot:v2 ← support-bot:v1" in overview
        assert "r: 16" in overview and "lora_alpha: 32" in overview
        assert "license: apache-2.0" in overview and "production, staging" in overview
        await pilot.press("2")
        runs = table_rows(app, "#runs-table")
        assert [(r[1], r[2]) for r in runs] == [("fake-after", "PASSED"),
                                                ("fake-outcome", "PASSED")]  # fmt: skip
        await pilot.press("down")
        assert "min_score" in text_of(app, "#run-detail")  # metrics vs thresholds
        await pilot.press("e")
        assert isinstance(app.screen, EvidenceScreen)
        assert app.screen.report["gate"] == "fake-outcome"
        assert app.screen.report["thresholds"] == {"min_score": 0.5}
        await pilot.press("escape", "escape")
        assert isinstance(app.screen, BundlesScreen)

    app = drive(released, scenario)
    assert app.errors() == []


# --- promote: blocked, gates in a worker, then allowed ---------------------------------------


def test_promote_blocked_then_run_missing_gates_then_allowed(two_bundles: Path) -> None:
    reg_path = two_bundles

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        await highlight(app, pilot, "support-bot:v1")
        await pilot.press("p")
        screen = app.screen
        assert isinstance(screen, PromoteScreen)
        await pilot.pause()
        assert screen.query_one("#promote-channel", Select).value == "staging"
        verdict = text_of(app, "#promote-verdict")
        assert "Blocked" in verdict and "fake-outcome: missing" in verdict
        assert table_rows(app, "#requirements")[0][:2] == ["fake-outcome", "MISSING"]
        await pilot.press("p")  # a blocked promotion says why; no dialog
        assert isinstance(app.screen, PromoteScreen)
        assert app.notes[-1][1] == "Promotion blocked"
        assert "fake-outcome: missing" in app.notes[-1][2]
        await pilot.press("g")  # ... and offers to run the missing gates
        assert isinstance(app.screen, RunGatesScreen)
        await settle(app, pilot)
        assert app.screen.query_one("#gate-fake-outcome", GateProgress).status == "passed"
        assert "Done: 1 passed" in text_of(app, "#gates-result")
        await pilot.press("escape")
        assert app.screen is screen
        await pilot.pause()
        assert "Allowed" in text_of(app, "#promote-verdict")
        assert table_rows(app, "#requirements")[0][:2] == ["fake-outcome", "PASSED"]
        await pilot.press("p")
        assert isinstance(app.screen, ConfirmationScreen)
        await pilot.press("enter")  # the reason is required
        assert isinstance(app.screen, ConfirmationScreen)
        assert "required" in plain(app.screen.query_one("#confirm-error", Static).content)
        await pilot.press(*"gates green", "enter")
        await settle(app, pilot)
        assert isinstance(app.screen, ChannelsScreen)  # the new history, at once
        rows = table_rows(app, "#history-table")
        assert rows[0][1:] == ["promote", "-", "support-bot:v1", "tester", "gates green"]

    app = drive(reg_path, scenario)
    assert app.errors() == []
    assert history(reg_path, "support-bot:staging")[0]["reason"] == "gates green"
    runs = json.loads(cli_ok(reg_path, "gates", "show", "support-bot:v1", "--json"))["runs"]
    assert [(r["gate"], r["status"], r["actor"]) for r in runs] == [
        ("fake-outcome", "passed", "tester")]  # fmt: skip


def test_gates_run_in_a_worker_with_live_progress(
    two_bundles: Path, held_gate: type[HeldGate]
) -> None:
    reg_path = two_bundles
    policy = write(reg_path.parent / "p2/policy.toml", "[channels.staging]\n"
                   'require = ["fake-outcome", "fake-held"]\n[gates.fake-outcome]\n')  # fmt: skip
    cli_ok(reg_path, "policy", "set", policy)

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        await highlight(app, pilot, "support-bot:v2")
        await pilot.press("g")
        screen = app.screen
        assert isinstance(screen, RunGatesScreen)
        assert screen.gates == ["fake-outcome", "fake-held"]
        assert await asyncio.to_thread(held_gate.started.wait, 20)
        await pilot.pause(0.3)
        held = screen.query_one("#gate-fake-held", GateProgress)
        assert held.status == "running" and held.message == "warming up"
        assert screen.query_one("#gate-fake-outcome", GateProgress).status == "passed"
        # the interface is live while the gate runs: help opens and closes
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.screen is screen and not screen.done
        held_gate.release.set()
        await settle(app, pilot)
        assert held.status == "passed" and held.message == "released"
        assert "Done: 2 passed" in text_of(app, "#gates-result")
        assert ("information", "Gates done", "support-bot:v2: 2 passed") in app.notes
        await pilot.press("escape", "enter", "2")  # results appear in the bundle's runs
        assert [r[1] for r in table_rows(app, "#runs-table")] == ["fake-held", "fake-outcome"]

    app = drive(reg_path, scenario)
    assert app.errors() == []


# --- rollback, channels, audit ---------------------------------------------------------------


def test_rollback_with_reason_shows_new_history(released: Path) -> None:
    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        await pilot.press("c")
        assert isinstance(app.screen, ChannelsScreen)
        assert "audit chain ok: 11 events, 2 channels" in text_of(app, "#audit-state")
        assert [r[:2] for r in table_rows(app, "#channel-table")] == [
            ["production", "support-bot:v2"], ["staging", "support-bot:v2"]]  # fmt: skip
        assert app.screen.current_channel() == ("support-bot", "production")
        await pilot.press("r")
        dialog = app.screen
        assert isinstance(dialog, ConfirmationScreen)
        v1 = digest_of(released, "support-bot:v1")
        assert dialog.query_one("#confirm-choice", Select).value == v1  # previous, preselected
        await pilot.press("enter")
        assert app.screen is dialog  # no reason, no rollback
        dialog.query_one("#confirm-cancel").focus()
        await pilot.press("q")  # a stray q in a dialog does not quit
        assert app.is_running and app.screen is dialog
        dialog.query_one("#confirm-reason").focus()
        await pilot.press(*"INC-1 refusals", "enter")
        await settle(app, pilot)
        assert isinstance(app.screen, ChannelsScreen)
        assert table_rows(app, "#channel-table")[0][:2] == ["production", "support-bot:v1"]
        rows = table_rows(app, "#history-table")
        assert rows[0][1:] == ["rollback", "support-bot:v2", "support-bot:v1", "tester",
                               "INC-1 refusals"]  # fmt: skip
        assert "audit chain ok: 12 events" in text_of(app, "#audit-state")
        assert app.notes[-1][2] == "support-bot:production rolled back to support-bot:v1"

    app = drive(released, scenario)
    assert app.errors() == []
    moves = history(released, "support-bot:production")
    assert (moves[0]["action"], moves[0]["reason"], moves[0]["actor"]) == (
        "rollback", "INC-1 refusals", "tester")  # fmt: skip


def test_tracking_views_are_listed_read_only_and_never_moved(released: Path) -> None:
    from registry import tracking

    reg = Registry.open(released)
    with reg.db.read() as conn:
        v1 = conn.execute("SELECT digest FROM bundle WHERE version = 1").scalar()
    tracking.record(reg, "team", "support-bot", "production", v1)  # as a pull does
    reg.close()
    before = history(released, "support-bot:production")

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, ChannelsScreen)
        rows = table_rows(app, "#channel-table")
        assert [r[:3] for r in rows] == [
            ["production", "support-bot:v2", "2"], ["staging", "support-bot:v2", "2"],
            ["team/production remote", "support-bot:v1", "read-only"]]  # fmt: skip
        screen.table.move_cursor(row=2)
        await pilot.pause()
        assert screen.current_channel() is None
        assert screen.current_tracking()["view"] == "team/production"  # type: ignore[index]
        assert "remote-tracking, read-only" in str(
            screen.query_one("#history-title", Static).content
        )
        assert screen.query_one("#history-table", DataTable).row_count == 0
        assert app.check_action("rollback", ()) is False
        await pilot.press("r")
        assert app.screen is screen  # no rollback dialog for a tracking view
        screen.rollback()  # as the command palette would
        assert "read-only, it cannot be rolled back" in app.notes[-1][2]
        assert app.screen is screen
        await pilot.press("p")  # promote its bundle into the local channel of that name
        promote = app.screen
        assert isinstance(promote, PromoteScreen)
        assert promote.selection == (v1, "production")
        options = [str(o[0]) for o in promote.query_one("#promote-channel", Select)._options]
        assert not any("/" in o for o in options)

    app = drive(released, scenario)
    assert app.errors() == []
    assert history(released, "support-bot:production") == before


# --- diff --------------------------------------------------------------------------------------


def test_diff_marks_then_compares_side_by_side(released: Path) -> None:
    def digest(ref: str) -> str:
        return digest_of(released, ref)

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        await pilot.press("d")  # marks v2
        assert app.diff_mark and app.diff_mark["tag"] == "support-bot:v2"
        assert "marked" in text_of(app, "#bundles-status")
        await pilot.press("down", "d")
        screen = app.screen
        assert isinstance(screen, DiffScreen)
        await pilot.pause()
        assert app.diff_mark is None
        title = text_of(app, "#diff-title")
        assert "support-bot:v2 ⇄ support-bot:v1" in title
        assert "3 of 6 components differ: adapter, dataset, config" in title
        for pane in ("#diff-a", "#diff-b"):
            entries = {plain(w.content).split()[0]: w for w in screen.query(f"{pane} Static")}
            assert entries["adapter"].has_class("-changed")
            assert entries["base_model"].has_class("-unchanged")
            assert "~ adapter_model.safetensors" in plain(entries["adapter"].content)
        await pilot.press("escape", "up", "enter", "d")  # on a bundle: diff with its parent
        assert isinstance(app.screen, DiffScreen)
        assert app.screen.ref_a == digest("support-bot:v1")
        assert app.screen.ref_b == "support-bot@" + digest("support-bot:v2")

    app = drive(released, scenario)
    assert app.errors() == []


# --- failures: notification, and the app keeps running ---------------------------------------


def test_database_locked_shows_error_and_keeps_running(
    released: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import registry.db

    monkeypatch.setattr(registry.db, "BUSY_TIMEOUT_S", 1)
    locker = sqlite3.connect(released / "registry.db", isolation_level=None)

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        await pilot.press("c", "r")
        assert isinstance(app.screen, ConfirmationScreen)
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        await pilot.press(*"INC-2", "enter")
        await settle(app, pilot)
        assert any("the database is busy" in e for e in app.errors()), app.notes
        assert isinstance(app.screen, ChannelsScreen)  # still running, still usable
        locker.execute("ROLLBACK")
        await pilot.press("r", *"INC-2", "enter")
        await settle(app, pilot)
        assert table_rows(app, "#channel-table")[0][:2] == ["production", "support-bot:v1"]

    drive(released, scenario)
    locker.close()
    assert history(released, "support-bot:production")[0]["reason"] == "INC-2"


def test_missing_blobs_show_error_and_keep_running(released: Path) -> None:
    reg = Registry.open(released)
    v1 = bundles.show(reg, "support-bot:v1")
    blob = reg.store.path(v1["components"]["adapter"]["files"][0]["digest"])
    reg.close()
    blob.unlink()

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        await pilot.press("c", "r", *"INC-3", "enter")
        await settle(app, pilot)
        errors = app.errors()
        assert len(errors) == 1 and "cannot roll back to" in errors[0], app.notes
        assert "missing" in errors[0] and "registry pull" in errors[0]
        assert isinstance(app.screen, ChannelsScreen)
        assert table_rows(app, "#channel-table")[0][:2] == ["production", "support-bot:v2"]
        await pilot.press("escape")
        assert isinstance(app.screen, BundlesScreen)

    drive(released, scenario)
    assert history(released, "support-bot:production")[0]["action"] == "promote"


def test_cas_conflict_with_another_user_shows_error(two_bundles: Path) -> None:
    reg_path = two_bundles
    for v in ("v1", "v2"):
        cli_ok(reg_path, "gates", "run", f"support-bot:{v}")
    cli_ok(reg_path, "promote", "support-bot:v1", "--to", "staging", "--reason", "first")

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        await highlight(app, pilot, "support-bot:v2")
        await pilot.press("p")
        await pilot.pause()
        assert "holds support-bot:v1" in text_of(app, "#promote-state")
        assert "Allowed" in text_of(app, "#promote-verdict")
        await pilot.press("p")
        assert isinstance(app.screen, ConfirmationScreen)
        # meanwhile, on another machine, alice promotes v2 into staging first
        cli_ok(reg_path, "promote", "support-bot:v2", "--to", "staging", "--actor", "alice",
               "--reason", "mine")  # fmt: skip
        await pilot.press(*"me too", "enter")
        await settle(app, pilot)
        errors = app.errors()
        assert len(errors) == 1, app.notes
        assert "was moved first: tester as 'alice' promoted it to support-bot:v2" in errors[0]
        assert isinstance(app.screen, PromoteScreen)  # re-checked: shows what is true now
        assert "staging already holds support-bot:v2" in text_of(app, "#promote-verdict")

    drive(reg_path, scenario)
    # the same OS user on both "machines" here; alice is only the display name
    assert [(m["actor"], m["display"], m["reason"])
            for m in history(reg_path, "support-bot:staging")] == [
        ("tester", "alice", "mine"), ("tester", "", "first")]  # fmt: skip


# --- help, palette, layout, start-up -----------------------------------------------------------


def test_help_lists_every_binding_and_palette_has_every_action(released: Path) -> None:
    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = " ".join(plain(w.content) for w in app.screen.query(".help-section").results(Static))
        for words in ("Promote", "Roll back", "Gates", "Diff", "Filter", "Evidence", "Open",
                      "Channels", "Bundles", "Command palette", "Run gates"):  # fmt: skip
            assert words in text, words
        await pilot.press("escape")
        from tui.app import RegistryCommands

        provider = RegistryCommands(app.screen)
        titles = [hit.text async for hit in provider.discover()]
        assert titles == [title for _, title, _ in ACTIONS]
        await pilot.press("ctrl+p", *"roll back", "enter")
        await pilot.pause()
        await pilot.pause()
        assert isinstance(app.screen, ChannelsScreen)  # the palette's rollback leads there
        assert "Highlight the channel to roll back, then press r." in app.notes[-1][2]

    drive(released, scenario)


def test_works_in_a_large_terminal(released: Path) -> None:
    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        table = app.screen.query_one(VirtualTable)
        assert table.size.width > 150
        assert table.widths(table.size.width)[0] > 30  # the flexible columns take the room
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)

    drive(released, scenario, size=(180, 50))


def test_virtual_table_formats_only_visible_rows(tmp_path: Path) -> None:
    from bench.synth import add_synthetic_bundles

    reg_path = tmp_path / "reg"
    reg = Registry.init(reg_path)
    add_synthetic_bundles(reg, 10_000)
    reg.close()
    formatted: list[str] = []

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        screen = app.screen
        assert isinstance(screen, BundlesScreen)
        assert screen.query_one(VirtualTable).row_count == 10_000
        real = screen.format_row
        screen.query_one(VirtualTable).format_row = lambda r: (formatted.append(r["tag"]), real(r))[
            1
        ]
        await pilot.press("end")
        await pilot.pause()
        assert screen.current_bundle()["tag"] == "model-099:v1"
        assert 0 < len(set(formatted)) <= 30  # about one screenful, not 10,000
        await pilot.press("slash", *"model-042")
        assert screen.query_one(VirtualTable).row_count == 100

    drive(reg_path, scenario)


PROBE = """
import sys
import cli.app as cli
from cli.commands import tui
tui.register(cli.app)  # as cli/app.py does
sys.argv = ["registry", *sys.argv[1:]]
try:
    cli.main()
except SystemExit as exc:
    print("EXIT", exc.code)
print("TEXTUAL", "textual" in sys.modules)
"""


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--help"], "tui "),  # listed, and textual not imported
        (["--registry", "no-such-dir", "tui"], "error: no registry at no-such-dir"),
    ],
)
def test_tui_command_imports_textual_only_when_it_runs(
    args: list[str], expect: str, tmp_path: Path
) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)  # fmt: skip
    assert expect in out.stdout + out.stderr, out.stdout + out.stderr
    assert "TEXTUAL False" in out.stdout
    if args[-1] == "tui":
        assert "EXIT 2" in out.stdout and "Traceback" not in out.stderr
