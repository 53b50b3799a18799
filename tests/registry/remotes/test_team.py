"""Team mode: PostgreSQL as the shared database, an S3 bucket as the shared remote, and
each user's local store as a cache of blobs.

Two registries share one PostgreSQL database and one S3 remote: Alice pushes and
promotes, Bob pulls and rolls back, and both see one history. A third user on a fresh
machine with her own SQLite registry pulls the production bundle from the bucket alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN, pg_database, run_cli
from tests.registry.remotes.conftest import S3Env, add_tiny, cli_ok

POLICY = "[channels.staging]\nrequire = []\n\n[channels.production]\nrequire = []\n"


def as_user(monkeypatch: pytest.MonkeyPatch, who: str) -> None:
    monkeypatch.setenv("REGISTRY_ACTOR", who)


def test_two_registries_on_one_database_and_one_bucket_share_one_history(
    make_registry, tiny, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg_database() as url:
        alice, bob = make_registry("alice", url), make_registry("bob", url)
        as_user(monkeypatch, "alice")
        # The remote is a row in the shared database: added once, seen by everyone.
        cli_ok(alice, "remote", "add", "team", f"s3://{s3.bucket}/registry",
               "--endpoint-url", s3.endpoint)  # fmt: skip
        assert "team" in cli_ok(bob, "remote", "ls")
        policy = alice.parent / "policy.toml"
        policy.write_text(POLICY)
        cli_ok(alice, "policy", "set", policy)
        v1 = add_tiny(alice, tiny)
        v2 = add_tiny(alice, tiny, "--annotation", "note=v2")
        cli_ok(alice, "promote", "support-bot:v1", "--to", "production", "--reason", "launch")
        cli_ok(alice, "push", "support-bot:production", "--remote", "team")
        cli_ok(alice, "promote", "support-bot:v2", "--to", "production", "--reason", "better")
        cli_ok(alice, "push", "support-bot:production", "--remote", "team")

        # Bob's registry knows both bundles (shared rows) but his store has no blobs yet.
        as_user(monkeypatch, "bob")
        tags = [r["tag"] for r in json.loads(cli_ok(bob, "ls", "--json"))]
        assert tags == ["support-bot:v2", "support-bot:v1"]
        assert run_cli("verify", "support-bot:v2", registry=bob).code == 1
        before = json.loads(cli_ok(bob, "history", "support-bot:production", "--json"))
        got = json.loads(cli_ok(bob, "pull", "support-bot:production", "--remote", "team",
                                "--json"))  # fmt: skip
        assert got["tag"] == "support-bot:v2" and not got["created"]
        assert got["tracking"] == "team/production" and got["tracking_moved"]
        # The shared channel table is untouched by a pull; the tracking view is shared.
        assert json.loads(cli_ok(bob, "history", "support-bot:production", "--json")) == before
        view = json.loads(cli_ok(alice, "history", "support-bot:team/production", "--json"))
        assert view["digest"] == v2["digest"]
        assert "ok" in cli_ok(bob, "verify", "support-bot:v2")

        # Incident: Bob rolls production back. The rollback target's blobs must be local.
        res = run_cli("rollback", "support-bot:production", "--reason", "incident 42",
                      registry=bob)  # fmt: skip
        assert res.code == 1 and "registry pull" in res.err
        cli_ok(bob, "pull", "support-bot:v1", "--remote", "team")
        cli_ok(bob, "rollback", "support-bot:production", "--reason", "incident 42")
        pushed = json.loads(cli_ok(bob, "push", "support-bot:production", "--remote", "team",
                                   "--json"))  # fmt: skip
        assert pushed["refs"] == ["production"] and pushed["blobs_sent"] == 0
        assert s3.get("registry/refs/support-bot/production").decode() == v1["digest"]
        assert "ok" in cli_ok(bob, "verify", "--all")  # policy blobs came along too

        # Alice sees the same history and the same remote state.
        as_user(monkeypatch, "alice")
        history = json.loads(cli_ok(alice, "history", "support-bot:production", "--json"))
        # Both connect as the same PostgreSQL role here, which is who acted; the names are
        # display names (tests/registry/test_trust.py gives each user a role of their own).
        assert [(h["action"], h["display"], h["to_tag"]) for h in history] == [
            ("rollback", "bob", "support-bot:v1"),
            ("promote", "alice", "support-bot:v2"),
            ("promote", "alice", "support-bot:v1"),
        ]
        role = PG_ADMIN.split("://", 1)[1].split("@", 1)[0]
        assert {h["actor"] for h in history} == {role}
        from cli.commands.remote import ls_remote
        from registry.repo import Registry

        reg = Registry.open(alice)
        listed = {e["tag"]: e["channels"] for e in ls_remote(reg, "team")}
        reg.close()
        assert listed == {"support-bot:v2": [], "support-bot:v1": ["production"]}
        for who in (alice, bob):
            assert "ok" in cli_ok(who, "audit", "verify")

    # A fresh machine with its own SQLite registry gets production from the bucket alone.
    carol = make_registry("carol")
    as_user(monkeypatch, "carol")
    cli_ok(carol, "remote", "add", "team", f"s3://{s3.bucket}/registry",
           "--endpoint-url", s3.endpoint)  # fmt: skip
    got = json.loads(cli_ok(carol, "pull", "support-bot:production", "--remote", "team",
                            "--json"))  # fmt: skip
    assert got["digest"] == v1["digest"] and got["tag"] == "support-bot:v1"
    assert got["tracking"] == "team/production" and "ok" in cli_ok(
        carol, "verify", "support-bot:v1"
    )
    assert v2["digest"] != v1["digest"]
    # Her local production does not exist until she promotes (through her policy).
    assert run_cli("history", "support-bot:production", registry=carol).code == 2
    view = json.loads(cli_ok(carol, "history", "support-bot:team/production", "--json"))
    assert view["digest"] == v1["digest"]
    assert Path(carol / "registry.toml").read_text().count("database_url") == 0
