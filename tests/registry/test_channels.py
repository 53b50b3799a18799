"""Promotion, rollback, history, audit chain: on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from registry.config import os_user
from tests.conftest import add_args, snapshot
from tests.fakegates import fake_gates  # noqa: F401  (fixture)

POLICY = """
[channels.staging]
require = ["fake-outcome"]

[channels.production]
require = ["fake-outcome", "fake-after"]
after = "staging"
actors = ["{me}", "alice"]

[gates.fake-outcome]
eval_set = "evals/target.jsonl"
outcome = "{outcome}"
"""


def write_policy(
    tmp_path: Path, tiny: dict, outcome: str = "passed", me: str | None = None
) -> Path:
    d = tmp_path / "policy"
    (d / "evals").mkdir(parents=True, exist_ok=True)
    (d / "evals" / "target.jsonl").write_bytes((tiny["evals"] / "target.jsonl").read_bytes())
    p = d / "policy.toml"
    p.write_text(POLICY.replace("{outcome}", outcome).replace("{me}", me or os_user()))
    return p


@pytest.fixture
def bundles3(cli, tiny):  # noqa: ANN001, ANN201
    """Three versions of support-bot."""
    for i in range(3):
        assert cli(*add_args(tiny), "--annotation", f"n={i}").code == 0
    return cli


@pytest.mark.usefixtures("fake_gates")
def test_promote_blocked_until_gates_pass_then_allowed(bundles3, tmp_path, tiny, me) -> None:  # noqa: ANN001
    cli = bundles3
    pol = write_policy(tmp_path, tiny, me=me)
    assert cli("policy", "set", pol).code == 0
    blocked = cli("promote", "support-bot:v1", "--to", "staging")
    assert blocked.code == 3
    assert "fake-outcome: missing" in blocked.err and "MISSING" in blocked.err
    run = cli("gates", "run", "support-bot:v1", "--channel", "staging")
    assert run.code == 0, run.err + run.out
    ok = cli("promote", "support-bot:v1", "--to", "staging", "--reason", "gates green")
    assert ok.code == 0, ok.err
    # production also needs fake-after and a stay in staging first
    assert cli("gates", "run", "support-bot:v1").code == 0
    assert cli("promote", "support-bot:v1", "--to", "production").code == 0
    hist = json.loads(cli("history", "support-bot:production", "--json").out)
    assert [(h["action"], h["to_tag"], h["actor"]) for h in hist] == [
        ("promote", "support-bot:v1", me)
    ]


@pytest.mark.usefixtures("fake_gates")
def test_failed_gate_blocks_and_new_policy_needs_new_runs(bundles3, tmp_path, tiny) -> None:  # noqa: ANN001
    cli = bundles3
    failing = write_policy(tmp_path, tiny, outcome="failed")
    cli("policy", "set", failing)
    res = cli("gates", "run", "support-bot:v1", "--gate", "fake-outcome")
    assert res.code == 3 and "FAILED" in res.out
    assert cli("promote", "support-bot:v1", "--to", "staging").code == 3
    passing = write_policy(tmp_path / "p2", tiny, outcome="passed")
    cli("policy", "set", passing)
    # The old run was under another policy digest: it does not count.
    blocked = cli("promote", "support-bot:v1", "--to", "staging")
    assert blocked.code == 3 and "missing" in blocked.err
    assert cli("gates", "run", "support-bot:v1", "--gate", "fake-outcome").code == 0
    assert cli("promote", "support-bot:v1", "--to", "staging").code == 0


@pytest.mark.usefixtures("fake_gates")
def test_force_is_recorded(bundles3, tmp_path, tiny) -> None:  # noqa: ANN001
    cli = bundles3
    cli("policy", "set", write_policy(tmp_path, tiny))
    assert cli("promote", "support-bot:v2", "--to", "staging", "--force").code == 2  # no reason
    res = cli("promote", "support-bot:v2", "--to", "staging", "--force", "--reason", "hotfix")
    assert res.code == 0 and "FORCED" in res.out
    hist = json.loads(cli("history", "support-bot:staging", "--json").out)
    assert hist[0]["forced"] is True and hist[0]["reason"] == "hotfix"


@pytest.mark.usefixtures("fake_gates")
def test_dry_run_policy_never_promotes(bundles3, tmp_path, tiny, reg_path) -> None:  # noqa: ANN001
    cli = bundles3
    pol = write_policy(tmp_path, tiny)
    cli("policy", "set", pol)
    cli("gates", "run", "support-bot:v1", "--gate", "fake-outcome")
    before = snapshot(reg_path)
    res = cli("promote", "support-bot:v1", "--to", "staging", "--policy", pol)
    assert res.code == 0 and "dry run" in res.out
    assert snapshot(reg_path) == before


@pytest.mark.usefixtures("fake_gates")
def test_rollback_walks_back_and_checks_blobs(bundles3, tmp_path, tiny, reg) -> None:  # noqa: ANN001
    cli = bundles3
    cli("policy", "set", write_policy(tmp_path, tiny))
    for v in (1, 2, 3):
        cli("gates", "run", f"support-bot:v{v}", "--gate", "fake-outcome")
        assert cli("promote", f"support-bot:v{v}", "--to", "staging").code == 0
    assert cli("rollback", "support-bot:staging").code == 2  # --reason is required
    res = cli("rollback", "support-bot:staging", "--reason", "incident 7")
    assert res.code == 0 and "support-bot:v2" in res.out
    assert "support-bot:v1" in cli("rollback", "support-bot:staging", "--reason", "worse").out
    none_left = cli("rollback", "support-bot:staging", "--reason", "again")
    assert none_left.code == 2 and "no earlier bundle" in none_left.err
    # --to a bundle never in the channel needs --force
    cli(*add_args(tiny), "--annotation", "n=new")
    assert (
        cli("rollback", "support-bot:staging", "--to", "support-bot:v4", "--reason", "x").code == 2
    )
    assert (
        cli("rollback", "support-bot:staging", "--to", "support-bot:v3", "--reason", "x").code == 0
    )
    # missing blob of the target: refused with how to restore, nothing moves
    info = json.loads(cli("show", "support-bot:v2", "--json").out)
    weights = next(
        f
        for f in info["components"]["adapter"]["files"]
        if f["path"] == "adapter_model.safetensors"
    )
    shared = any(f["digest"] == weights["digest"] for v in (1, 3)
                 for f in json.loads(cli("show", f"support-bot:v{v}", "--json").out)
                 ["components"]["adapter"]["files"])  # fmt: skip
    assert shared  # identical adapter bytes are one blob
    reg.store.path(info["digest"]).unlink()  # v2's own manifest is unique to it
    before = snapshot(reg.root)
    bad = cli("rollback", "support-bot:staging", "--to", "support-bot:v2", "--reason", "y")
    assert bad.code == 1 and "registry pull" in bad.err
    assert snapshot(reg.root) == before
    hist = json.loads(cli("history", "support-bot:staging", "--json").out)
    assert [h["action"] for h in hist] == [
        "rollback",
        "rollback",
        "rollback",
        "promote",
        "promote",
        "promote",
    ]
    assert hist[1]["reason"] == "worse"
    assert cli("audit", "verify").code == 0


@pytest.mark.usefixtures("fake_gates")
def test_bad_input_changes_nothing(bundles3, tmp_path, tiny, reg_path) -> None:  # noqa: ANN001
    cli = bundles3
    cli("policy", "set", write_policy(tmp_path, tiny))
    cli("gates", "run", "support-bot:v1", "--gate", "fake-outcome")
    before = snapshot(reg_path)
    unknown = cli("promote", "support-bot:v1", "--to", "canary")
    assert unknown.code == 2 and "not in the policy" in unknown.err
    bad_name = cli("promote", "support-bot:v1", "--to", "Prod!")
    assert bad_name.code == 2
    malformed = tmp_path / "bad.toml"
    malformed.write_text("[channels.staging\nrequire = ")
    assert cli("policy", "set", malformed).code == 2
    unknown_gate = tmp_path / "ug.toml"
    unknown_gate.write_text('[channels.staging]\nrequire = ["no-such-gate"]\n')
    res = cli("policy", "check", unknown_gate)
    assert res.code == 2 and "unknown gate 'no-such-gate'" in res.err
    unknown_key = tmp_path / "uk.toml"
    unknown_key.write_text("[gates.fake-outcome]\nmin_scor = 0.3\n")
    assert "unknown key(s) min_scor" in cli("policy", "set", unknown_key).err
    wrong_type = tmp_path / "wt.toml"
    wrong_type.write_text('[gates.fake-outcome]\nmin_score = "high"\n')
    assert cli("policy", "set", wrong_type).code == 2
    no_history = cli("rollback", "support-bot:staging", "--reason", "x")
    assert no_history.code == 2 and "holds no bundle" in no_history.err
    assert snapshot(reg_path) == before


@pytest.mark.usefixtures("fake_gates")
def test_gate_engine_records_everything(bundles3, tmp_path, tiny) -> None:  # noqa: ANN001
    cli = bundles3
    pol = write_policy(tmp_path, tiny)
    cli("policy", "set", pol)
    res = cli(
        "gates", "run", "support-bot:v1", "--gate", "fake-after", "--gate", "fake-outcome", "--json"
    )
    records = json.loads(res.out)
    assert [r["gate"] for r in records] == ["fake-outcome", "fake-after"]  # dependency order
    assert records[1]["metrics"] == {"saw_prior": True}
    crashed = cli("gates", "run", "support-bot:v1", "--gate", "fake-raise")
    assert crashed.code == 1 and "ERROR" in crashed.out
    shown = json.loads(cli("gates", "show", "support-bot:v1", "--json").out)
    runs = {r["gate"]: r for r in shown["runs"]}
    assert runs["fake-raise"]["status"] == "error"
    assert "RuntimeError: the gate crashed" in runs["fake-raise"]["error"]
    out = runs["fake-outcome"]
    digest = json.loads(cli("policy", "show", "--json").out)["digest"]
    assert out["policy_digest"] == digest and out["gate_version"] == "2"
    assert out["inputs"]["evals/target.jsonl"].startswith("sha256:")
    assert out["metrics"] == {"score": 1.0, "rows": 120}  # the tiny project's target set
    assert out["environment"]["python"] and "torch" in out["environment"]
    ev = json.loads(cli("gates", "show", "support-bot:v1", "--evidence", str(out["id"])).out)
    assert ev["evidence"] == {"adapter_r": 8, "workdir_has_adapter": True}
    assert ev["bundle"] == shown["bundle"]["digest"]
    assert (
        cli("gc", "--grace", "0", "--force", "--reason", "test").code == 0
    )  # evidence, policy and eval sets are reachable
    assert cli("verify", "--all").code == 0
    assert json.loads(cli("policy", "show", "--json").out)["digest"] == digest
    cli("gates", "run", "support-bot:v1", "--gate", "fake-outcome")
    again = json.loads(cli("gates", "show", "support-bot:v1", "--json").out)["runs"]
    assert sum(r["gate"] == "fake-outcome" for r in again) == 2  # history is kept
    listed = {r["tag"]: r["gates"] for r in json.loads(cli("ls", "--json").out)}
    assert listed["support-bot:v1"] == {"passed": 2, "error": 1}  # latest run of each gate
    assert listed["support-bot:v2"] == {}
    text = cli("gates", "show", "support-bot:v1").out
    assert "  score = 1\n" in text and "threshold min_score = 0.5" in text


def _race(reg_path: Path, refs: list[str], channel: str) -> list[tuple]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(refs)), ctx.Queue()
    from tests.registry.race_worker import promote_after_barrier

    procs = [ctx.Process(target=promote_after_barrier,
                         args=(str(reg_path), ref, channel, f"user{i}", barrier, results))
             for i, ref in enumerate(refs)]  # fmt: skip
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out


def test_concurrent_promotions_exactly_one_wins(cli, tiny, tmp_path, reg_path) -> None:  # noqa: ANN001
    for i in range(9):
        assert cli(*add_args(tiny), "--annotation", f"n={i}").code == 0
    pol = tmp_path / "p.toml"
    pol.write_text("[channels.production]\nrequire = []\n")
    cli("policy", "set", pol)
    for channel, first in (("production", None), ("production", "support-bot:v9")):
        if first:
            assert cli("promote", first, "--to", channel).code == 0
        out = _race(reg_path, [f"support-bot:v{i}" for i in range(1, 9)], channel)
        assert not [o for o in out if o[0] == "error"], out
        winners = [o for o in out if o[0] == "won"]
        losers = [o for o in out if o[0] == "lost"]
        assert len(winners) == 1 and len(losers) == 7, out
        winner_actor = winners[0][1]
        assert all(f"as '{winner_actor}' promoted it to {winners[0][2]}" in o[2] for o in losers), (
            losers
        )
    hist = json.loads(cli("history", "support-bot:production", "--json").out)
    assert len(hist) == 3  # first race winner, the v9 promotion, second race winner
    assert cli("audit", "verify").code == 0


def _tamper(reg, sql: str, params: dict | None = None) -> None:  # noqa: ANN001
    with reg.db.write() as conn:
        conn.execute(sql, params or {})


@pytest.fixture
def moved(cli, tiny, tmp_path):  # noqa: ANN001, ANN201
    for i in range(3):
        cli(*add_args(tiny), "--annotation", f"n={i}")
    pol = tmp_path / "p.toml"
    pol.write_text("[channels.production]\nrequire = []\n")
    cli("policy", "set", pol)
    for v in (1, 2, 3):
        cli("promote", f"support-bot:v{v}", "--to", "production")
    cli("rollback", "support-bot:production", "--reason", "bad")
    assert cli("audit", "verify").code == 0
    return cli


def test_tamper_edited_event_detected(moved, reg) -> None:  # noqa: ANN001
    _tamper(reg, "UPDATE event SET actor = 'mallory' WHERE seq = 3")
    res = moved("audit", "verify")
    assert res.code == 1 and "event #3" in res.out and "edited" in res.out


def test_tamper_deleted_event_detected(moved, reg) -> None:  # noqa: ANN001
    _tamper(reg, "DELETE FROM event WHERE seq = 2")
    res = moved("audit", "verify")
    assert res.code == 1 and "event #2 is missing" in res.out


def test_tamper_reordered_events_detected(moved, reg) -> None:  # noqa: ANN001
    _tamper(reg, "UPDATE event SET seq = 100 WHERE seq = 2")
    _tamper(reg, "UPDATE event SET seq = 2 WHERE seq = 3")
    _tamper(reg, "UPDATE event SET seq = 3 WHERE seq = 100")
    res = moved("audit", "verify")
    assert res.code == 1 and "does not follow" in res.out


def test_tamper_truncated_chain_detected(moved, reg) -> None:  # noqa: ANN001
    # Cut the newest event and make the head agree: the channel's own record catches it.
    with reg.db.read() as conn:
        prev = conn.execute("SELECT seq, digest FROM event ORDER BY seq DESC LIMIT 2").all()[1]
    _tamper(reg, "DELETE FROM event WHERE seq = (SELECT MAX(seq) FROM event)")
    _tamper(reg, "UPDATE audit_head SET seq = :s, digest = :d", {"s": prev[0], "d": prev[1]})
    res = moved("audit", "verify")
    assert res.code == 1 and "channel support-bot:production" in res.out


def test_tamper_channel_pointer_detected(moved, reg) -> None:  # noqa: ANN001
    with reg.db.read() as conn:
        v3 = conn.execute("SELECT digest FROM bundle WHERE version = 3").scalar()
    _tamper(reg, "UPDATE channel SET bundle_digest = :d", {"d": v3})
    res = moved("audit", "verify")
    assert res.code == 1 and "points at a bundle" in res.out
