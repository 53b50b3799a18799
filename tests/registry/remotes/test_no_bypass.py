"""No bypass: every command that can move a channel passes the policy.

The channel table is written in one place (`registry.channels._move`, called by `promote`
and `rollback` after their checks); this walks every command and UI path that could move
a channel, as a user the policy does not allow, and shows none of them does: promote (also
--force and a remote-tracking ref), rollback, pull of a channel, and the TUI's services.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.fakegates import fake_gates  # noqa: F401  (fixture)
from tests.registry.remotes.conftest import S3Env, add_tiny, cli_ok
from tests.registry.remotes.test_tracking import add_remote, channel_state, set_policy

ROOT = Path(__file__).resolve().parents[3]


def test_only_channels_move_writes_the_channel_table() -> None:
    """Structural half: no other module has SQL that writes `channel` rows."""
    writers = re.compile(r"(INSERT INTO|UPDATE|DELETE FROM)\s+channel\b", re.IGNORECASE)
    found = sorted(
        str(p.relative_to(ROOT))
        for pkg in ("registry", "gates", "tui")
        for p in (ROOT / pkg).rglob("*.py")
        if writers.search(p.read_text("utf-8"))
    )
    assert found == ["registry/channels.py"]
    text = (ROOT / "registry/channels.py").read_text("utf-8")
    body = text.split("def _move(", 1)[1].split("\ndef ", 1)[0]
    assert len(writers.findall(text)) == len(writers.findall(body)) == 2  # insert + update


@pytest.mark.usefixtures("fake_gates")
def test_every_channel_moving_path_passes_the_policy(make_registry, tiny, s3: S3Env) -> None:  # noqa: ANN001
    from registry.errors import BlockedError
    from registry.repo import Registry
    from tui import services

    # Publisher: production -> v3 on the shared bucket.
    a = make_registry("a")
    set_policy(a, "[channels.production]\nrequire = []\n")
    add_tiny(a, tiny)
    add_tiny(a, tiny, "--annotation", "note=v2")
    add_tiny(a, tiny, "--annotation", "note=v3")
    add_remote(a, s3)
    cli_ok(a, "promote", "support-bot:v3", "--to", "production")
    cli_ok(a, "push", "support-bot:production", "--remote", "team")

    # Release registry: production held v1, now v2, under an open policy...
    b = make_registry("b")
    add_remote(b, s3)
    set_policy(b, "[channels.production]\nrequire = []\n")
    add_tiny(b, tiny)
    add_tiny(b, tiny, "--annotation", "note=v2")
    add_tiny(b, tiny, "--annotation", "note=v3")
    cli_ok(b, "promote", "support-bot:v1", "--to", "production")
    cli_ok(b, "promote", "support-bot:v2", "--to", "production")
    # ...then a policy that requires a gate and allows only alice (not this user).
    set_policy(b, '[channels.production]\nrequire = ["fake-outcome"]\nactors = ["alice"]\n')
    before = channel_state(b)

    attempts = {
        "promote": run_cli("promote", "support-bot:v3", "--to", "production",
                           "--actor", "alice", registry=b),
        "promote --force": run_cli("promote", "support-bot:v3", "--to", "production", "--force",
                                   "--reason", "urgent", "--actor", "alice", registry=b),
        "rollback": run_cli("rollback", "support-bot:production", "--reason", "x",
                            "--actor", "alice", registry=b),
        "rollback --to --force": run_cli("rollback", "support-bot:production", "--to",
                                         "support-bot:v3", "--force", "--reason", "x",
                                         registry=b),
    }  # fmt: skip
    for what, res in attempts.items():
        assert res.code == 3, (what, res.out, res.err)
        assert "may not move channel 'production'" in res.err, (what, res.err)
        assert "Traceback" not in res.err
    # A pull of the remote's production records a tracking view; the channel stays.
    pulled = run_cli("pull", "support-bot:production", "--remote", "team", registry=b)
    assert pulled.code == 0, pulled.err
    assert channel_state(b) == before
    adopt = run_cli("promote", "support-bot:team/production", "--to", "production", registry=b)
    assert adopt.code == 3 and "may not move channel 'production'" in adopt.err
    # The TUI moves channels through tui.services, which call the same checks.
    reg = Registry.open(b)
    try:
        with pytest.raises(BlockedError):
            services.check_promotion(reg, "support-bot:v3", "production", "alice")
        plan = services.rollback_plan(reg, "support-bot", "production")
        with pytest.raises(BlockedError):
            services.rollback(reg, plan, to=None, actor="alice", reason="x")
    finally:
        reg.close()
    assert channel_state(b) == before
    assert "audit chain ok" in cli_ok(b, "audit", "verify")

    # With this user allowed, the same paths move only through the gates.
    set_policy(b, f'[channels.production]\nrequire = ["fake-outcome"]\nactors = ["{me_of(b)}"]\n')
    blocked = run_cli("promote", "support-bot:team/production", "--to", "production", registry=b)
    assert blocked.code == 3 and "fake-outcome: missing" in blocked.err
    cli_ok(b, "gates", "run", "support-bot:v3")
    cli_ok(b, "promote", "support-bot:team/production", "--to", "production")
    assert channel_state(b)["events"]["production"] == before["events"]["production"] + 1


def me_of(reg_path: Path) -> str:
    from registry.repo import Registry

    reg = Registry.open(reg_path)
    try:
        return reg.whoami.user
    finally:
        reg.close()
