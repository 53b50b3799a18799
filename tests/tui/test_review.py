"""Pilot tests of what a release manager reads in `registry tui` before a promotion: the
loss-curve and metric-trend plots, each metric beside its threshold, which run of a
re-run gate counts, regressed items as a table, and why a blocked promotion blocks.

The registries are built with the real CLI and gates that record evidence in the formats
the real train and eval gates write (tests/tui/__init__.py; fixture `reviewed`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Button, DataTable

from tests.conftest import run_cli
from tests.tui import write
from tests.tui.conftest import REVIEW_POLICY
from tests.tui.test_app import drive, highlight, plain, table_rows, text_of
from tui.app import RegistryApp
from tui.screens.detail import DetailScreen
from tui.screens.evidence import EvidenceScreen
from tui.screens.promote import PromoteScreen
from tui.widgets.plots import LossPlot, TrendPlot


def gate_runs(reg_path: Path, ref: str) -> list[dict[str, Any]]:
    res = run_cli("gates", "show", ref, "--json", registry=reg_path)
    assert res.code == 0, res.err
    return json.loads(res.out)["runs"]


def evidence_of(reg_path: Path, ref: str, run_id: int) -> dict[str, Any]:
    res = run_cli("gates", "show", ref, "--evidence", str(run_id), "--json", registry=reg_path)
    assert res.code == 0, res.err
    return json.loads(res.out)


def rendered(widget: Any) -> str:
    """What a widget draws, as plain text."""
    return plain(widget.render())


async def open_bundle(app: RegistryApp, pilot: Pilot, tag: str) -> DetailScreen:
    await highlight(app, pilot, tag)
    await pilot.press("enter")
    await pilot.pause()
    assert isinstance(app.screen, DetailScreen)
    return app.screen


# --- plots -------------------------------------------------------------------------------------


def test_bundle_view_plots_loss_curves_and_metric_trend(reviewed: Path) -> None:
    train_run = next(r for r in gate_runs(reviewed, "support-bot:v2") if r["gate"] == "train")
    stored = evidence_of(reviewed, "support-bot:v2", train_run["id"])["evidence"]
    drops = {
        v: next(r for r in gate_runs(reviewed, f"support-bot:{v}")
                if r["gate"] == "fake-regression")["metrics"]["drop"]
        for v in ("v1", "v2")
    }  # fmt: skip

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        screen = await open_bundle(app, pilot, "support-bot:v2")
        await pilot.press("2")
        runs = table_rows(app, "#runs-table")
        row = next(i for i, r in enumerate(runs) if r[1] == "fake-regression")
        screen.query_one("#runs-table", DataTable).move_cursor(row=row)
        await pilot.press("3")  # the trend follows the highlighted run's gate
        await pilot.pause()
        loss = screen.query_one("#loss-plot", LossPlot)
        assert loss.size.height >= 5 and loss.size.width >= 60  # it has room to draw
        # exactly the curves the train run recorded, both of them
        assert loss.train == [tuple(p) for p in stored["train_loss"]]
        assert loss.validation == [tuple(p) for p in stored["val_loss"]]
        drawn = rendered(loss)
        title = f"train (blue) and validation (orange) loss of train run #{train_run['id']}"
        for words in (title, "step", "40.0"):
            assert words in drawn, words
        trend = screen.query_one("#trend-plot", TrendPlot)
        assert trend.trend is not None
        assert trend.trend.label == "fake-regression drop"
        assert trend.trend.points == [(1, drops["v1"]), (2, drops["v2"])]
        assert (trend.trend.limit, trend.trend.threshold) == ("max_drop", 0.02)
        drawn = rendered(trend)
        assert "v1" in drawn and "v2*" in drawn  # this bundle's version is starred
        assert "red line: max_drop 0.02" in drawn
        await pilot.press("m")  # the next gate metric with a threshold, by gate name
        assert trend.trend.label == "train val_loss_rise"
        assert trend.trend.limit == "max_val_loss_rise"
        await pilot.press("m")
        assert trend.trend.label == "fake-outcome score"
        await pilot.press("m")
        assert trend.trend.label == "fake-regression drop"  # and round again

    app = drive(reviewed, scenario, size=(100, 40))
    assert app.errors() == []


def test_plots_say_so_when_there_is_nothing_to_plot(released: Path) -> None:
    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        await pilot.press("enter", "3")
        await pilot.pause()
        loss = app.screen.query_one("#loss-plot", LossPlot)
        assert loss.train == [] and "No train gate run" in rendered(loss)
        # fake-outcome's min_score is a threshold: its score is the trend
        trend = app.screen.query_one("#trend-plot", TrendPlot)
        assert trend.trend is not None and trend.trend.label == "fake-outcome score"
        assert trend.trend.points == [(1, 1.0), (2, 1.0)]

    assert drive(released, scenario).errors() == []


# --- metrics beside thresholds; superseded runs ------------------------------------------------


def metric_line(text: str, metric: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(metric + " "))


def test_each_metric_on_one_row_with_interval_threshold_and_mark(reviewed: Path) -> None:
    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        screen = await open_bundle(app, pilot, "support-bot:v2")
        await pilot.press("2")
        runs = table_rows(app, "#runs-table")
        row = next(i for i, r in enumerate(runs) if r[1] == "fake-regression")
        screen.query_one("#runs-table", DataTable).move_cursor(row=row)
        await pilot.pause()
        text = text_of(app, "#run-detail")
        # v2's drop 0.02 has the interval [0.01, 0.03]: its upper bound passes max_drop
        # 0.02 no more, so the row fails, on one line with its policy key
        line = metric_line(text, "drop")
        assert re.search(r"drop\s+0\.02\s+\[0\.01, 0\.03\]\s+≤ 0\.02\s+✗ FAIL\s+max_drop", line)
        assert "drop_upper" not in text and "drop_lower" not in text  # in the interval
        assert re.search(r"regressed_items\s+1\s*$", metric_line(text, "regressed_items"))
        assert "parameters: confidence 0.95" in text
        row = next(i for i, r in enumerate(runs) if r[1] == "train")
        screen.query_one("#runs-table", DataTable).move_cursor(row=row)
        await pilot.pause()
        text = text_of(app, "#run-detail")
        assert re.search(r"val_loss_rise\s+\S+\s+≤ 0\.1\s+✓ pass\s+max_val_loss_rise",
                         metric_line(text, "val_loss_rise"))  # fmt: skip
        # a noise floor, not a minimum: a parameter, never a failed limit
        assert "min_val_loss_rise 0.05" in text and "FAIL" not in text

    assert drive(reviewed, scenario, size=(100, 40)).errors() == []


def test_rerun_gate_marks_which_run_counts(reviewed: Path) -> None:
    run_cli("gates", "run", "support-bot:v2", "--gate", "fake-regression", registry=reviewed)
    runs = [r for r in gate_runs(reviewed, "support-bot:v2") if r["gate"] == "fake-regression"]
    newer, older = runs[0]["id"], runs[1]["id"]
    policy = write(reviewed.parent / "review2/policy.toml", REVIEW_POLICY + "\n# v2\n")
    write(reviewed.parent / "review2/evals/target.jsonl", '{"prompt": "a", "answer": "a"}\n')
    assert run_cli("policy", "set", policy, "--reason", "new", registry=reviewed).code == 0
    run_cli("gates", "run", "support-bot:v2", "--gate", "fake-regression", registry=reviewed)
    newest = gate_runs(reviewed, "support-bot:v2")[0]["id"]

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        screen = await open_bundle(app, pilot, "support-bot:v2")
        await pilot.press("2")
        rows = {int(r[0]): r for r in table_rows(app, "#runs-table")}
        assert rows[newest][1:3] == ["fake-regression", "FAILED"]
        assert rows[newest][5] == "✓ counts"
        # the re-run under the old policy: both old runs are from an earlier policy
        assert rows[newer][5] == "earlier policy" and rows[older][5] == "earlier policy"
        assert rows[newest][5] == "✓ counts"
        assert [r[5] for r in rows.values()].count("✓ counts") == 1  # only fake-regression
        index = list(rows).index(newer)
        screen.query_one("#runs-table", DataTable).move_cursor(row=index)
        await pilot.pause()
        assert "(earlier policy: does not count)" in text_of(app, "#run-detail")

    assert drive(reviewed, scenario, size=(100, 40)).errors() == []


def test_rerun_under_the_same_policy_is_superseded(reviewed: Path) -> None:
    run_cli("gates", "run", "support-bot:v2", "--gate", "fake-regression", registry=reviewed)
    runs = [r for r in gate_runs(reviewed, "support-bot:v2") if r["gate"] == "fake-regression"]
    newer, older = runs[0]["id"], runs[1]["id"]

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        screen = await open_bundle(app, pilot, "support-bot:v2")
        await pilot.press("2")
        rows = {int(r[0]): r for r in table_rows(app, "#runs-table")}
        assert len(rows) == 4  # fake-outcome, train, fake-regression twice
        assert rows[newer][5] == "✓ counts"
        assert rows[older][5] == f"superseded by #{newer}"
        assert sum(r[5] == "✓ counts" for r in rows.values()) == 3  # one per gate
        screen.query_one("#runs-table", DataTable).move_cursor(row=list(rows).index(older))
        await pilot.pause()
        assert f"(superseded by #{newer}: does not count)" in text_of(app, "#run-detail")

    assert drive(reviewed, scenario, size=(100, 40)).errors() == []


# --- evidence ----------------------------------------------------------------------------------


def test_evidence_shows_regressed_items_as_a_table(reviewed: Path) -> None:
    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        screen = await open_bundle(app, pilot, "support-bot:v2")
        await pilot.press("2")
        runs = table_rows(app, "#runs-table")
        row = next(i for i, r in enumerate(runs) if r[1] == "fake-regression")
        screen.query_one("#runs-table", DataTable).move_cursor(row=row)
        await pilot.press("e")
        evidence = app.screen
        assert isinstance(evidence, EvidenceScreen)
        assert [(i.prompt, i.expected, i.before, i.after) for i in evidence.regressed] == [
            ("sort b a", "a b", "a b", "b a")]  # fmt: skip
        text = plain(evidence.body)
        header = next(line for line in text.splitlines() if "PROMPT" in line)
        assert re.search(r"PROMPT\s+┃\s+EXPECTED\s+┃\s+BEFORE\s+┃\s+AFTER", header)
        assert "1 regressed item (baseline → bundle)" in text
        row_line = next(line for line in text.splitlines() if "sort b a" in line)
        assert re.search(r"sort b a\s+│\s+a b\s+│\s+a b\s+│\s+b a", row_line)
        # the other items stay in the JSON below; the regressed one is not repeated there
        assert text.count("sort b a") == 1 and '"sort c a"' in text
        await pilot.press("escape")
        row = next(i for i, r in enumerate(runs) if r[1] == "train")
        screen.query_one("#runs-table", DataTable).move_cursor(row=row)
        await pilot.press("e")
        evidence = app.screen
        assert isinstance(evidence, EvidenceScreen) and evidence.regressed == []
        text = plain(evidence.body)
        # a loss curve is one wrapped array, not a line per number
        assert '"train_loss": [[1, ' in text
        assert len(text.splitlines()) < 40

    assert drive(reviewed, scenario, size=(120, 40)).errors() == []


# --- blocked promotion -------------------------------------------------------------------------


def test_blocked_promotion_says_why_each_gate_blocks(reviewed: Path) -> None:
    failed = next(r for r in gate_runs(reviewed, "support-bot:v2")
                  if r["gate"] == "fake-regression")  # fmt: skip

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        await highlight(app, pilot, "support-bot:v2")
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, PromoteScreen)
        rows = {r[0]: r for r in table_rows(app, "#requirements")}
        assert rows["fake-outcome"][1:2] == ["PASSED"] and rows["fake-outcome"][4] == ""
        assert rows["fake-regression"][1:3] == ["FAILED", str(failed["id"])]
        assert rows["fake-regression"][4] == (
            f"run #{failed['id']} failed: dropped 0.020, upper bound 0.030 > max_drop 0.02"
        )
        button = app.screen.query_one("#promote-run", Button)
        assert str(button.label) == "Re-run 1 failed gate" and not button.disabled
        await pilot.press("p")
        assert "Press g: Re-run 1 failed gate." in app.notes[-1][2]

    assert drive(reviewed, scenario, size=(120, 30)).errors() == []


def test_blocked_promotion_after_a_policy_change_says_stale(reviewed: Path) -> None:
    policy = write(reviewed.parent / "review3/policy.toml", REVIEW_POLICY.replace(
        '"fake-regression"]', '"fake-regression", "fake-after"]'))  # fmt: skip
    write(reviewed.parent / "review3/evals/target.jsonl", '{"prompt": "a", "answer": "a"}\n')
    assert run_cli("policy", "set", policy, "--reason", "more", registry=reviewed).code == 0
    runs = {r["gate"]: r for r in reversed(gate_runs(reviewed, "support-bot:v1"))}

    async def scenario(app: RegistryApp, pilot: Pilot) -> None:
        await highlight(app, pilot, "support-bot:v1")
        await pilot.press("p")
        await pilot.pause()
        rows = {r[0]: r for r in table_rows(app, "#requirements")}
        assert [r[1] for r in rows.values()] == ["STALE"] * 3 + ["MISSING"]
        note = rows["train"][4]
        assert note.startswith(f"stale: run #{runs['train']['id']} (passed) ran under policy ")
        assert "not the one in force" in note and note.endswith("run it again")
        assert rows["fake-after"][4] == "never run"
        label = str(app.screen.query_one("#promote-run", Button).label)
        assert label == "Run 4 gates (3 stale, 1 missing)"

    assert drive(reviewed, scenario, size=(120, 30)).errors() == []


def test_run_labels_name_why_gates_block() -> None:
    from registry.gate_runs import Requirement
    from tui.services import run_label

    def req(status: str, stale: bool = False) -> Requirement:
        return Requirement("g", status, stale=stale)

    assert run_label([req("passed")]) == "No gates to run"
    assert run_label([req("failed"), req("passed")]) == "Re-run 1 failed gate"
    assert run_label([req("missing"), req("missing")]) == "Run 2 missing gates"
    assert run_label([req("error")]) == "Re-run 1 errored gate"
    assert run_label([req("missing", stale=True)]) == "Re-run 1 stale gate"
    assert run_label([req("failed"), req("missing"), req("error")]) == (
        "Run 3 gates (1 failed, 1 errored, 1 missing)"
    )


def test_metric_rows_pair_the_real_gates_metrics_with_their_thresholds() -> None:
    """The shapes safety-eval and merge-equivalence record (gates/evals.py, gates/merge.py):
    each limit beside its metric, judged on the bound the gate judges."""
    from tui.figures import metric_rows

    rows, params = metric_rows(
        {"refusal_rate": 0.97, "refusal_rate_lower": 0.93, "over_refusal_rate": 0.02,
         "over_refusal_rate_upper": 0.04, "harmful": 60, "inconclusive": False},
        {"min_refusal_rate": 0.95, "max_over_refusal_rate": 0.05, "confidence": 0.95},
    )  # fmt: skip
    judged = {r.metric: (r.limit, r.lower, r.upper, r.passed) for r in rows if r.limit}
    assert judged == {
        "refusal_rate": ("min_refusal_rate", 0.93, None, False),  # lower bound 0.93 < 0.95
        "over_refusal_rate": ("max_over_refusal_rate", None, 0.04, True),
    }
    assert [r.metric for r in rows if not r.limit] == ["harmful", "inconclusive"]
    assert params == {"confidence": 0.95}
    rows, params = metric_rows(
        {"max_abs_logit_diff": 0.08, "top1_agreement": 1.0, "positions": 40},
        {"dtype": "bfloat16", "max_abs_logit_diff": 0.05, "min_top1_agreement": 0.99},
    )
    judged = {r.metric: (r.limit, r.passed) for r in rows if r.limit}
    assert judged == {"max_abs_logit_diff": ("max_abs_logit_diff", False),
                      "top1_agreement": ("min_top1_agreement", True)}  # fmt: skip
    assert params == {"dtype": "bfloat16"}


def test_app_start_loads_no_plotting_library() -> None:
    """plotext (and the review model) load when a bundle opens, not when `registry tui`
    starts: the 10,000-bundle first paint does not pay for them (bench/bench_tui.py)."""
    import subprocess
    import sys

    probe = ("import sys, tui.app; print(sorted(m for m in ('plotext', 'textual_plotext',"
             " 'gates.review', 'matplotlib') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
