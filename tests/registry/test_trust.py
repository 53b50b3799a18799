"""Trust: verified identity, tamper-evident gate runs / policy / tags, signed events and
gate-run attestations (docs/design.md, "Trust"). On SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import psycopg
import pytest

from registry.audit import event_digest
from registry.keys import load_public
from tests.conftest import PG_ADMIN, add_args
from tests.fakegates import fake_gates  # noqa: F401  (fixture)

POLICY = """
[channels.staging]
require = ["fake-outcome"]
{staging_extra}

[channels.production]
require = ["fake-outcome"]
actors = {actors}

[gates.fake-outcome]
outcome = "{outcome}"
"""


def policy_file(
    d: Path, *, actors: list[str], outcome: str = "passed", staging_extra: str = "",
    admin: list[str] | None = None, keys: dict[str, Path] | None = None,
) -> Path:  # fmt: skip
    d.mkdir(parents=True, exist_ok=True)
    for rel, src in (keys or {}).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(src.read_bytes())
    text = POLICY.format(actors=json.dumps(actors), outcome=outcome, staging_extra=staging_extra)
    if admin is not None:
        text += f"\n[admin]\nactors = {json.dumps(admin)}\n"
    (d / "policy.toml").write_text(text)
    return d / "policy.toml"


def tamper(reg_path: Path, sql: str, params: dict | None = None) -> None:
    from registry.repo import Registry

    reg = Registry.open(reg_path)
    try:
        with reg.db.write() as conn:
            conn.execute(sql, params or {})
    finally:
        reg.close()


def keypair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from registry.keys import generate

    priv = tmp_path / "keys" / f"{name}.key"
    generate(priv)
    return priv, priv.with_suffix(".pub")


@pytest.fixture
def bundle(cli, tiny):  # noqa: ANN001, ANN201
    assert cli(*add_args(tiny)).code == 0
    return cli


# --- identity ---------------------------------------------------------------------------


@pytest.mark.usefixtures("fake_gates")
def test_actor_flag_is_a_display_name_only(bundle, tmp_path, me) -> None:  # noqa: ANN001
    cli = bundle
    assert cli("policy", "set", policy_file(tmp_path / "p", actors=["alice"])).code == 0
    assert cli("gates", "run", "support-bot:v1").code == 0
    res = cli("promote", "support-bot:v1", "--to", "production", "--actor", "alice")
    assert res.code == 3, res.out
    assert f"{me} as \"alice\" may not move channel 'production'" in res.err
    assert "only a display name" in res.err and "Traceback" not in res.err
    cli("policy", "set", policy_file(tmp_path / "q", actors=[me]))
    assert cli("gates", "run", "support-bot:v1").code == 0
    ok = cli("promote", "support-bot:v1", "--to", "production", "--actor", "Release Bot")
    assert ok.code == 0, ok.err
    hist = json.loads(cli("history", "support-bot:production", "--json").out)
    assert (hist[0]["actor"], hist[0]["display"]) == (me, "Release Bot")


@pytest.fixture
def two_roles(database_url: str | None):  # noqa: ANN201
    """Two login roles (alice, bob) with rights on the test database; yields URL makers."""
    if database_url is None:
        pytest.skip("roles are a PostgreSQL matter")
    tag = uuid.uuid4().hex[:8]
    names = {"alice": f"alice_{tag}", "bob": f"bob_{tag}"}
    dbname = database_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        for role in names.values():
            admin.execute(f'CREATE ROLE "{role}" LOGIN')
    with psycopg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{dbname}", autocommit=True) as db:
        for role in names.values():
            db.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
            db.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
    host = database_url.split("@", 1)[1]
    yield {who: f"postgresql+psycopg://{role}@{host}" for who, role in names.items()}, names
    with psycopg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{dbname}", autocommit=True) as db:
        for role in names.values():
            db.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{role}"')
            db.execute(f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM "{role}"')
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        for role in names.values():
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.usefixtures("fake_gates")
def test_postgres_session_user_is_the_actor(
    bundle, tmp_path, reg_path, two_roles, monkeypatch
) -> None:  # noqa: ANN001
    urls, roles = two_roles
    cli = bundle
    assert cli("policy", "set", policy_file(tmp_path / "p", actors=[roles["alice"]])).code == 0
    monkeypatch.setenv("REGISTRY_DATABASE_URL", urls["bob"])
    assert cli("gates", "run", "support-bot:v1").code == 0
    res = cli("promote", "support-bot:v1", "--to", "production", "--actor", roles["alice"])
    assert res.code == 3 and f'{roles["bob"]} as "{roles["alice"]}" may not move' in res.err
    monkeypatch.setenv("REGISTRY_DATABASE_URL", urls["alice"])
    ok = cli("promote", "support-bot:v1", "--to", "production")
    assert ok.code == 0, ok.err
    hist = json.loads(cli("history", "support-bot:production", "--json").out)
    assert hist[0]["actor"] == roles["alice"]
    runs = json.loads(cli("gates", "show", "support-bot:v1", "--json").out)["runs"]
    assert {r["actor"] for r in runs} == {roles["bob"]}
    assert cli("audit", "verify").code == 0


@pytest.mark.usefixtures("fake_gates")
def test_policy_set_needs_an_admin_and_force_needs_one_too(bundle, tmp_path, me) -> None:  # noqa: ANN001
    cli = bundle
    first = policy_file(tmp_path / "p", actors=[me, "carol"], admin=["carol"])
    assert cli("policy", "set", first).code == 0
    lax = policy_file(tmp_path / "q", actors=[me], admin=[me])
    res = cli("policy", "set", lax, "--actor", "carol")
    assert res.code == 3 and "may not change the policy (admins: carol)" in res.err
    forced = cli("promote", "support-bot:v1", "--to", "production", "--force", "--reason", "hotfix")
    assert forced.code == 3 and "may not force a move" in forced.err
    assert json.loads(cli("policy", "show", "--json").out)["digest"] != ""
    assert cli("audit", "verify").code == 0


# --- tampering with what a promotion relies on -------------------------------------------


@pytest.mark.usefixtures("fake_gates")
def test_flipped_gate_status_is_caught_and_does_not_unlock(bundle, tmp_path, reg_path, me) -> None:  # noqa: ANN001
    cli = bundle
    cli("policy", "set", policy_file(tmp_path / "p", actors=[me], outcome="failed"))
    assert cli("gates", "run", "support-bot:v1").code == 3
    assert cli("audit", "verify").code == 0
    tamper(reg_path, "UPDATE gate_run SET status = 'passed'")
    res = cli("audit", "verify")
    assert res.code == 1 and "gate run #1 (fake-outcome passed" in res.out
    assert "edited outside the registry" in res.out
    blocked = cli("promote", "support-bot:v1", "--to", "staging")
    assert blocked.code == 3 and "fake-outcome: missing" in blocked.err
    shown = cli("gates", "show", "support-bot:v1")
    assert "does not count" in shown.out + shown.err or "edited" in shown.out


@pytest.mark.usefixtures("fake_gates")
def test_deleted_failed_run_is_caught(bundle, tmp_path, reg_path, me) -> None:  # noqa: ANN001
    cli = bundle
    passing = policy_file(tmp_path / "p", actors=[me])
    cli("policy", "set", passing)
    assert cli("gates", "run", "support-bot:v1").code == 0
    # The same gate fails on a re-run; deleting that run would surface the old pass.
    tamper(reg_path, "UPDATE gate_run SET status = status")  # no-op: rows stay intact
    from registry.repo import Registry

    reg = Registry.open(reg_path)
    try:
        from gates.engine import run_gates
        from gates.policy import current

        pol = current(reg)
        pol.gates["fake-outcome"]["outcome"] = "failed"
        run_gates(reg, "support-bot:v1", pol, actor="x")
    finally:
        reg.close()
    assert cli("promote", "support-bot:v1", "--to", "staging").code == 3
    tamper(reg_path, "DELETE FROM gate_run WHERE id = (SELECT MAX(id) FROM gate_run)")
    blocked = cli("promote", "support-bot:v1", "--to", "staging")
    assert blocked.code == 3 and "audit log records 2 gate run(s)" in blocked.err
    assert "no longer in the database" in cli("audit", "verify").out


def test_swapped_policy_row_is_caught(bundle, tmp_path, reg_path, me) -> None:  # noqa: ANN001
    cli = bundle
    lax = tmp_path / "lax.toml"
    lax.write_text("[channels.production]\nrequire = []\n")
    strict = tmp_path / "strict.toml"
    strict.write_text('[channels.production]\nrequire = ["dataset-audit"]\n')
    cli("policy", "set", lax)
    lax_digest = json.loads(cli("policy", "show", "--json").out)["digest"]
    cli("policy", "set", strict)
    tamper(reg_path, "UPDATE setting SET value = :v WHERE key = 'policy'", {"v": lax_digest})
    res = cli("audit", "verify")
    assert res.code == 1 and "the policy row was changed outside the registry" in res.out


def test_repointed_version_tag_is_caught(cli, tiny, reg_path) -> None:  # noqa: ANN001
    assert cli(*add_args(tiny)).code == 0
    assert cli(*add_args(tiny), "--annotation", "n=2").code == 0
    tamper(reg_path, "UPDATE bundle SET version = 3 WHERE version = 1")
    tamper(reg_path, "UPDATE bundle SET version = 1 WHERE version = 2")
    res = cli("audit", "verify")
    assert res.code == 1 and "which no tag event records" in res.out


def _forge_promotion_event(reg_path: Path) -> None:
    """Edit the newest promote event's reason and recompute every digest after it, the
    head and the channel's pointer: what anyone with write access to the database can do."""
    from registry.audit import EVENT_COLUMNS
    from registry.repo import Registry

    reg = Registry.open(reg_path)
    try:
        with reg.db.write() as conn:
            rows = conn.execute(f"SELECT {EVENT_COLUMNS} FROM event ORDER BY seq").dicts()
            target = max(r["seq"] for r in rows if r["action"] == "promote")
            prev = None
            for r in rows:
                if r["seq"] == target:
                    r["reason"] = "approved by the CTO"
                if r["seq"] >= target:
                    old = r["digest"]
                    r["prev"] = prev
                    r["digest"] = event_digest(r)
                    conn.execute(
                        "UPDATE event SET reason = :reason, prev = :prev, digest = :digest"
                        " WHERE seq = :seq", r,
                    )  # fmt: skip
                    conn.execute(
                        "UPDATE channel SET head_event = :new WHERE head_event = :old",
                        {"new": r["digest"], "old": old},
                    )
                prev = r["digest"]
            conn.execute("UPDATE audit_head SET digest = :d", {"d": prev})
    finally:
        reg.close()


def test_forged_event_is_invisible_unsigned_and_caught_when_signed(
    cli, tiny, tmp_path, reg_path, monkeypatch, me
) -> None:  # noqa: ANN001
    assert cli(*add_args(tiny)).code == 0
    pol = tmp_path / "p.toml"
    pol.write_text("[channels.production]\nrequire = []\n")
    cli("policy", "set", pol)
    assert cli("promote", "support-bot:v1", "--to", "production").code == 0
    _forge_promotion_event(reg_path)
    # A hash chain alone cannot tell: this is the limit the README's threat model states.
    assert cli("audit", "verify").code == 0
    priv, pub = keypair(tmp_path, "rel")
    monkeypatch.setenv("REGISTRY_SIGNING_KEY", str(priv))
    assert cli(*add_args(tiny), "--annotation", "n=2").code == 0
    assert cli("promote", "support-bot:v2", "--to", "production").code == 0
    ok = cli("audit", "verify", "--json")
    assert json.loads(ok.out)["signers"] == {load_public(pub).id: 2}
    _forge_promotion_event(reg_path)
    res = cli("audit", "verify")
    assert res.code == 1 and "signature by key:" in res.out and "does not verify" in res.out


def test_events_by_untrusted_or_missing_signers_are_reported(
    cli, tiny, tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    priv, pub = keypair(tmp_path, "a")
    _other_priv, other_pub = keypair(tmp_path, "b")
    monkeypatch.setenv("REGISTRY_SIGNING_KEY", str(priv))
    assert cli(*add_args(tiny)).code == 0
    assert cli("audit", "verify", "--trust", pub, "--require-signed").code == 0
    res = cli("audit", "verify", "--trust", other_pub)
    assert res.code == 1 and "which is not a trusted key" in res.out
    monkeypatch.delenv("REGISTRY_SIGNING_KEY")
    assert cli(*add_args(tiny), "--annotation", "n=2").code == 0
    res = cli("audit", "verify", "--require-signed")
    assert res.code == 1 and "is not signed" in res.out


def test_key_signed_moves_must_be_by_a_policy_key(
    cli, tiny, tmp_path, reg_path, monkeypatch
) -> None:  # noqa: ANN001
    """With a policy naming keys, stripping a move's signature is caught as not allowed."""
    priv, pub = keypair(tmp_path, "rel")
    d = tmp_path / "pol"
    (d / "keys").mkdir(parents=True)
    (d / "keys" / "rel.pub").write_bytes(pub.read_bytes())
    (d / "policy.toml").write_text(
        '[channels.production]\nrequire = []\nactors = ["keys/rel.pub"]\n'
    )
    assert cli(*add_args(tiny)).code == 0
    cli("policy", "set", d / "policy.toml")
    blocked = cli("promote", "support-bot:v1", "--to", "production")
    assert blocked.code == 3 and "may not move channel 'production' (allowed: key:" in blocked.err
    monkeypatch.setenv("REGISTRY_SIGNING_KEY", str(priv))
    assert cli("promote", "support-bot:v1", "--to", "production").code == 0
    assert cli("audit", "verify").code == 0
    from registry.audit import EVENT_COLUMNS
    from registry.repo import Registry

    reg = Registry.open(reg_path)
    with reg.db.write() as conn:
        ev = conn.execute(f"SELECT {EVENT_COLUMNS} FROM event WHERE action = 'promote'").dicts()[0]
        ev.update(signer=None, signature=None)
        conn.execute(
            "UPDATE event SET signer = NULL, signature = NULL, digest = :d WHERE seq = :s",
            {"d": event_digest(ev), "s": ev["seq"]},
        )
        conn.execute("UPDATE channel SET head_event = :d", {"d": event_digest(ev)})
        conn.execute("UPDATE audit_head SET digest = :d", {"d": event_digest(ev)})
    reg.close()
    res = cli("audit", "verify")
    assert res.code == 1 and "does not allow to move the channel" in res.out


# --- signed gate runs ----------------------------------------------------------------------


@pytest.mark.usefixtures("fake_gates")
def test_signed_gate_run_is_an_in_toto_test_result(
    bundle, tmp_path, reg_path, monkeypatch, me
) -> None:  # noqa: ANN001
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import SSlibKey

    from registry.repo import Registry

    cli = bundle
    priv, pub = keypair(tmp_path, "ci")
    monkeypatch.setenv("REGISTRY_SIGNING_KEY", str(priv))
    cli("policy", "set", policy_file(tmp_path / "p", actors=[me]))
    assert cli("gates", "run", "support-bot:v1").code == 0
    reg = Registry.open(reg_path)
    try:
        with reg.db.read() as conn:
            run = conn.execute("SELECT bundle_digest, attestation, signer FROM gate_run").first()
        data = reg.store.read_bytes(run.attestation)
    finally:
        reg.close()
    key = load_public(pub)
    assert run.signer == key.id
    env = Envelope.from_dict(json.loads(data))
    sslib_key = SSlibKey.from_crypto(key.key, keyid=key.id)
    assert key.id in env.verify([sslib_key], 1)  # the ecosystem's DSSE verifier agrees
    statement = json.loads(base64.b64decode(json.loads(data)["payload"]))
    assert statement["predicateType"] == "https://in-toto.io/attestation/test-result/v0.1"
    assert statement["subject"][0]["digest"]["sha256"] == run.bundle_digest.split(":")[1]
    assert statement["predicate"]["result"] == "PASSED"
    assert statement["predicate"]["passedTests"] == ["fake-outcome"]


@pytest.mark.usefixtures("fake_gates")
def test_imported_run_counts_only_when_signed_by_a_trusted_key(
    bundle, tmp_path, reg_path, me
) -> None:  # noqa: ANN001
    """A gate run made elsewhere arrives as an attestation; gate_signers decides."""
    from registry import attestations, gate_runs
    from registry.identity import Identity
    from registry.keys import load_private
    from registry.repo import Registry

    cli = bundle
    ci_priv, ci_pub = keypair(tmp_path, "ci")
    _rogue_priv, _ = keypair(tmp_path, "rogue")
    trusting = 'gate_signers = ["keys/ci.pub"]'
    cli("policy", "set", policy_file(tmp_path / "p", actors=[me], staging_extra=trusting,
                                     keys={"keys/ci.pub": ci_pub}))  # fmt: skip
    reg = Registry.open(reg_path)
    try:
        with reg.db.read() as conn:
            digest = conn.execute("SELECT digest FROM bundle").scalar()
        policy_digest = json.loads(cli("policy", "show", "--json").out)["digest"]

        def attest(key_path: Path, status: str) -> bytes:
            from registry import dsse
            from registry.digest import canonical_json

            row = {
                "bundle_digest": digest, "gate": "fake-outcome", "gate_version": "2",
                "policy_digest": policy_digest, "status": status, "metrics": '{"score": 1.0}',
                "thresholds": "{}", "inputs": "{}", "environment": '{"host": "gpu-1"}',
                "evidence_digest": None, "error": None, "actor": "ci", "started_at": "t0",
                "ended_at": "t1",
            }  # fmt: skip
            st = attestations.statement(row, "support-bot:v1")
            return canonical_json(dsse.sign(dsse.INTOTO_PAYLOAD_TYPE, canonical_json(st),
                                            load_private(key_path)))  # fmt: skip

        who = Identity("puller", "os")
        gate_runs.import_attestation(
            reg, who, digest, attest(tmp_path / "keys/rogue.key", "passed"), "gpu"
        )
    finally:
        reg.close()
    blocked = cli("promote", "support-bot:v1", "--to", "staging")
    assert blocked.code == 3 and "fake-outcome: missing" in blocked.err
    assert "which the channel's gate_signers do not list" in blocked.err
    reg = Registry.open(reg_path)
    try:
        gate_runs.import_attestation(reg, who, digest, attest(ci_priv, "passed"), "gpu")
    finally:
        reg.close()
    ok = cli("promote", "support-bot:v1", "--to", "staging")
    assert ok.code == 0, ok.err
    # production trusts no gate signers: the same pulled run does not count there
    prod = cli("promote", "support-bot:v1", "--to", "production")
    assert prod.code == 3 and "trusts no gate signers" in prod.err
    assert cli("audit", "verify").code == 0


def test_whoami_names_what_actors_can_list(cli, tmp_path, monkeypatch, me) -> None:  # noqa: ANN001
    res = cli("whoami", "--actor", "Release Bot", "--json")
    info = json.loads(res.out)
    assert (info["user"], info["key"], info["display"]) == (me, None, "Release Bot")
    assert info["policy_names"] == [me]
    priv, pub = keypair(tmp_path, "w")
    monkeypatch.setenv("REGISTRY_SIGNING_KEY", str(priv))
    info = json.loads(cli("whoami", "--json").out)
    assert info["key"] == load_public(pub).id and set(info["policy_names"]) == {me, info["key"]}
