"""Remote-tracking views: a pull of NAME:CHANNEL records what the remote's channel holds as
the read-only view NAME:REMOTE/CHANNEL (like git's origin/main) and never moves the local
channel; adopting it is an ordinary, policy-gated promote.

Against the moto S3 server (tests/registry/remotes/conftest.py), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.fakegates import fake_gates  # noqa: F401  (fixture)
from tests.registry.remotes.conftest import S3Env, add_tiny, cli_ok

OPEN_POLICY = "[channels.staging]\nrequire = []\n\n[channels.production]\nrequire = []\n"
# The puller's own policy: nothing enters a channel without a fake-outcome run here.
GATED_POLICY = (
    '[channels.staging]\nrequire = ["fake-outcome"]\n\n'
    '[channels.production]\nrequire = ["fake-outcome"]\n'
)


def set_policy(reg: Path, text: str) -> None:
    path = reg.parent / f"{reg.name}-policy.toml"
    path.write_text(text)
    cli_ok(reg, "policy", "set", path)


def add_remote(reg: Path, s3: S3Env, name: str = "team") -> None:
    cli_ok(reg, "remote", "add", name, f"s3://{s3.bucket}/shared", "--endpoint-url", s3.endpoint)


def pull_json(reg: Path, ref: str, remote: str = "team") -> dict:
    return json.loads(cli_ok(reg, "pull", ref, "--remote", remote, "--json"))


def channel_state(reg_path: Path, name: str = "support-bot") -> dict[str, Any]:
    """Every row of the channel table and the event count of each channel of `name`."""
    from registry.repo import Registry

    reg = Registry.open(reg_path)
    try:
        with reg.db.read() as conn:
            rows = conn.execute(
                "SELECT name, channel, bundle_digest, revision, head_event, updated_at"
                " FROM channel ORDER BY name, channel"
            ).dicts()
            events = {
                r[0]: r[1]
                for r in conn.execute(
                    "SELECT channel, COUNT(*) FROM event WHERE name = :n AND channel IS NOT NULL"
                    " GROUP BY channel",
                    {"n": name},
                )
            }
    finally:
        reg.close()
    return {"channels": rows, "events": events}


@pytest.fixture
def published(make_registry, tiny, s3: S3Env) -> dict[str, Any]:
    """Registry `a` publishes support-bot:v1 and v2 to the bucket, production -> v1."""
    a = make_registry("a")
    set_policy(a, OPEN_POLICY)
    v1 = add_tiny(a, tiny)
    v2 = add_tiny(a, tiny, "--annotation", "note=v2")
    add_remote(a, s3)
    cli_ok(a, "promote", "support-bot:v1", "--to", "production")
    cli_ok(a, "push", "support-bot:production", "--remote", "team")
    cli_ok(a, "push", "support-bot:v2", "--remote", "team")
    return {"a": a, "v1": v1, "v2": v2}


def move_remote_production(a: Path, to: str) -> None:
    cli_ok(a, "promote", to, "--to", "production", "--force", "--reason", "test")
    cli_ok(a, "push", "support-bot:production", "--remote", "team")


# --- a pull never moves a local channel ---------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.usefixtures("fake_gates")
def test_pull_of_a_channel_never_changes_the_local_channel(
    make_registry, database_url, published, s3: S3Env
) -> None:
    a, v1, v2 = published["a"], published["v1"], published["v2"]
    b = make_registry("b", database_url)
    set_policy(b, GATED_POLICY)
    add_remote(b, s3)
    pull_json(b, "support-bot:v1")  # a version pull records no tracking view
    assert all(r["remote_channels"] == [] for r in json.loads(cli_ok(b, "ls", "--json")))
    cli_ok(b, "promote", "support-bot:v1", "--to", "production", "--force", "--reason", "ours")
    move_remote_production(a, "support-bot:v2")
    before = channel_state(b)
    assert before["events"] == {"production": 1}

    got = pull_json(b, "support-bot:production")
    assert got["tag"] == "support-bot:v2" and got["digest"] == v2["digest"]
    assert got["channel"] == "production" and got["tracking"] == "team/production"
    assert got["tracking_moved"] is True and "channel_moved" not in got
    assert channel_state(b) == before  # state, revision, head event, event count
    history = json.loads(cli_ok(b, "history", "support-bot:production", "--json"))
    assert [(h["action"], h["to_digest"]) for h in history] == [("promote", v1["digest"])]

    # Again, as text: the view is where it was; the local channel still untouched.
    res = run_cli("pull", "support-bot:production", "--remote", "team", registry=b)
    assert res.code == 0, res.err
    assert res.out.splitlines()[-1] == (
        "team/production already at support-bot:v2 (local production unchanged; adopt it"
        " with: registry promote support-bot:team/production --to production)"
    )
    # The remote moves back: the view follows, the local channel does not.
    move_remote_production(a, "support-bot:v1")
    res = run_cli("pull", "support-bot:production", "--remote", "team", registry=b)
    assert res.code == 0, res.err
    assert "team/production -> support-bot:v1 (local production unchanged;" in res.out
    assert channel_state(b) == before
    assert "ok" in cli_ok(b, "audit", "verify")


def test_pull_onto_an_empty_registry_creates_no_channel(make_registry, published, s3) -> None:
    c = make_registry("c")
    add_remote(c, s3)
    got = pull_json(c, "support-bot:production")
    assert got["tag"] == "support-bot:v1" and got["tracking"] == "team/production"
    assert channel_state(c) == {"channels": [], "events": {}}
    res = run_cli("history", "support-bot:production", registry=c)
    assert res.code == 2 and "no history" in res.err


# --- shown: ls, ls --json, history, show ----------------------------------------------------


def test_tracking_view_is_shown_by_ls_history_and_show(make_registry, published, s3) -> None:
    v1, v2 = published["v1"], published["v2"]
    b = make_registry("b")
    add_remote(b, s3)
    set_policy(b, OPEN_POLICY)
    pull_json(b, "support-bot:production")
    pull_json(b, "support-bot:v2")
    cli_ok(b, "promote", "support-bot:v1", "--to", "staging")

    rows = {r["tag"]: r for r in json.loads(cli_ok(b, "ls", "--json"))}
    assert rows["support-bot:v1"]["channels"] == ["staging"]
    assert rows["support-bot:v1"]["remote_channels"] == ["team/production"]
    assert rows["support-bot:v2"]["channels"] == rows["support-bot:v2"]["remote_channels"] == []
    text = cli_ok(b, "ls")
    line = next(x for x in text.splitlines() if x.startswith("support-bot:v1"))
    assert line.rstrip().endswith("staging,team/production")
    assert "remote-tracking view (read-only)" in text

    hist = json.loads(cli_ok(b, "history", "support-bot:team/production", "--json"))
    assert hist["remote_tracking"] is True and hist["read_only"] is True
    assert (hist["remote"], hist["channel"], hist["tag"], hist["digest"]) == (
        "team", "production", "support-bot:v1", v1["digest"])  # fmt: skip
    assert hist["fetched_at"].startswith("20")
    text = cli_ok(b, "history", "support-bot:team/production")
    assert "support-bot:v1" in text and "team" in text and hist["fetched_at"][:10] in text
    assert "support-bot:team/production is a remote-tracking view" in text
    assert "read-only" in text

    # A bundle reference wherever one is accepted.
    shown = json.loads(cli_ok(b, "show", "support-bot:team/production", "--json"))
    assert shown["digest"] == v1["digest"] and shown["remote_channels"] == ["team/production"]
    assert "team/production (read-only tracking)" in cli_ok(b, "show", "support-bot:v1")
    cli_ok(b, "export", "support-bot:team/production", b.parent / "out")
    assert (b.parent / "out" / "adapter_config.json").is_file()
    diff = cli_ok(b, "diff", "support-bot:team/production", "support-bot:v2")
    assert diff.startswith("support-bot:v1 -> support-bot:v2") and v2["digest"] != v1["digest"]

    # Unknown views list the known ones.
    res = run_cli("show", "support-bot:team/staging", registry=b)
    assert res.code == 2 and "known: support-bot:team/production" in res.err
    res = run_cli("history", "support-bot:elsewhere/production", registry=b)
    assert res.code == 2 and "known: support-bot:team/production" in res.err


# --- adopting a view goes through the policy; a view is never a destination -----------------


@pytest.mark.usefixtures("fake_gates")
def test_promote_from_a_tracking_view_goes_through_the_full_policy(
    make_registry, published, s3
) -> None:
    v1 = published["v1"]
    b = make_registry("b")
    set_policy(b, GATED_POLICY)
    add_remote(b, s3)
    pull_json(b, "support-bot:production")

    res = run_cli("promote", "support-bot:team/production", "--to", "production", registry=b)
    assert res.code == 3 and "fake-outcome: missing" in res.err and "MISSING" in res.err
    assert channel_state(b)["channels"] == []
    res = run_cli("promote", "support-bot:team/production", "--to", "production", "--force",
                  registry=b)  # fmt: skip
    assert res.code == 2 and "--reason" in res.err

    out = cli_ok(b, "promote", "support-bot:team/production", "--to", "production", "--force",
                 "--reason", "incident: take what team runs")  # fmt: skip
    assert "support-bot:production -> support-bot:v1 (FORCED)" in out
    history = json.loads(cli_ok(b, "history", "support-bot:production", "--json"))
    assert [(h["action"], h["to_digest"], h["forced"]) for h in history] == [
        ("promote", v1["digest"], True)]  # fmt: skip

    # With the required gates passing here, it is an ordinary, unforced promotion.
    cli_ok(b, "gates", "run", "support-bot:team/production", "--gate", "fake-outcome")
    out = cli_ok(b, "promote", "support-bot:team/production", "--to", "staging", "--reason", "ok")
    assert "support-bot:staging -> support-bot:v1  event" in out and "FORCED" not in out
    history = json.loads(cli_ok(b, "history", "support-bot:staging", "--json"))
    assert [(h["action"], h["to_digest"], h["forced"]) for h in history] == [
        ("promote", v1["digest"], False)]  # fmt: skip
    assert "ok" in cli_ok(b, "audit", "verify")


def test_a_tracking_view_is_never_a_destination(make_registry, published, s3) -> None:
    from registry import refs
    from registry.errors import InvalidReferenceError

    b = make_registry("b")
    set_policy(b, OPEN_POLICY)
    add_remote(b, s3)
    pull_json(b, "support-bot:production")
    before = channel_state(b)
    for args in (
        ["promote", "support-bot:v1", "--to", "team/production"],
        ["promote", "support-bot:v1", "--to", "team/production", "--force", "--reason", "x"],
        ["promote", "support-bot:v1", "--to", "team/production", "--policy",
         b.parent / "b-policy.toml"],
        ["rollback", "support-bot:team/production", "--reason", "x"],
    ):  # fmt: skip
        res = run_cli(*args, registry=b)
        assert res.code == 2, (args, res.err)
        assert "remote-tracking view, which is read-only" in res.err
        assert res.err.count("\n") == 1
    assert channel_state(b) == before
    with pytest.raises(InvalidReferenceError):
        refs.check_channel("team/production")
    with pytest.raises(InvalidReferenceError):
        refs.parse_channel("support-bot:team/production")


def test_pull_accepts_the_view_of_the_same_remote_only(make_registry, published, s3) -> None:
    b = make_registry("b")
    add_remote(b, s3)
    add_remote(b, s3, name="mirror")
    got = pull_json(b, "support-bot:team/production")
    assert got["tracking"] == "team/production" and got["tag"] == "support-bot:v1"
    res = run_cli("pull", "support-bot:team/production", "--remote", "mirror", registry=b)
    assert res.code == 2 and "tracking view of remote team, not of mirror" in res.err
    assert pull_json(b, "support-bot:production", "mirror")["tracking"] == "mirror/production"
    rows = json.loads(cli_ok(b, "ls", "--json"))
    assert rows[-1]["remote_channels"] == ["mirror/production", "team/production"]
    cli_ok(b, "remote", "rm", "mirror")  # forgets its tracking views too, like git
    rows = json.loads(cli_ok(b, "ls", "--json"))
    assert rows[-1]["remote_channels"] == ["team/production"]
    assert run_cli("show", "support-bot:mirror/production", registry=b).code == 2


# --- the grammar ------------------------------------------------------------------------------


def test_tracking_reference_grammar() -> None:
    from registry import refs
    from registry.errors import InvalidReferenceError

    r = refs.parse("support-bot:team/production")
    assert (r.name, r.remote, r.remote_channel, r.channel, r.version) == (
        "support-bot", "team", "production", None, None)  # fmt: skip
    assert r.tag == "team/production"
    assert refs.parse("support-bot:EU.mirror-2/staging").remote == "EU.mirror-2"
    for bad in ("support-bot:team/v3", "support-bot:/production", "support-bot:team/",
                "support-bot:team/Prod", "support-bot:a/b/c", "support-bot:9team/production"):  # fmt: skip
        with pytest.raises(InvalidReferenceError):
            refs.parse(bad)
    assert refs.parse("support-bot:production").remote is None


# --- the Hub remote -------------------------------------------------------------------------


def test_hub_pull_of_a_channel_records_a_view_and_leaves_the_channel(
    make_registry, tiny, hub
) -> None:
    a, b = make_registry("a"), make_registry("b")
    for reg in (a, b):
        set_policy(reg, "[channels.production]\nrequire = []\n")
        cli_ok(reg, "remote", "add", "hub", "hf://my-org/support-bot")
    v1 = add_tiny(a, tiny)
    cli_ok(a, "promote", "support-bot:v1", "--to", "production")
    cli_ok(a, "push", "support-bot:production", "--remote", "hub", "--include-base")
    got = pull_json(b, "support-bot:production", "hub")
    assert got["tracking"] == "hub/production" and got["tracking_moved"] is True
    assert got["digest"] == v1["digest"]
    assert channel_state(b) == {"channels": [], "events": {}}
    view = json.loads(cli_ok(b, "history", "support-bot:hub/production", "--json"))
    assert view["digest"] == v1["digest"] and view["remote"] == "hub"
    cli_ok(b, "promote", "support-bot:hub/production", "--to", "production")
    assert channel_state(b)["events"] == {"production": 1}
