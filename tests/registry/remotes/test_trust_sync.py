"""Signed gate runs and bundle signatures travel with push and pull (S3 and the Hub).

The set-up a release team runs: a GPU box (registry A, signing key ci.key) runs the model
gates and pushes; the release registry (B) pulls and promotes under the same policy, which
trusts ci.pub's gate runs for staging and nobody's for production. What B records from a
remote checks itself: an attestation is imported only if its bytes match its name, a
signature only if it verifies for the bundle against the signer's key.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from registry.digest import sha256_bytes
from tests.conftest import run_cli
from tests.fakegates import fake_gates  # noqa: F401  (fixture)
from tests.registry.remotes.conftest import S3Env, add_tiny, cli_ok

POLICY = """
[channels.staging]
require = ["fake-outcome"]
gate_signers = ["keys/ci.pub"]

[channels.production]
require = ["fake-outcome"]

[gates.fake-outcome]
outcome = "passed"
"""


@pytest.fixture
def ci_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Two key pairs (the CI box's and a rogue one) and the shared policy, trusting ci."""
    from registry.keys import generate

    monkeypatch.delenv("REGISTRY_SIGNING_KEY", raising=False)
    keys = tmp_path / "keys"
    generate(keys / "ci.key")
    generate(keys / "rogue.key")
    pol = tmp_path / "policy"
    (pol / "keys").mkdir(parents=True)
    (pol / "keys" / "ci.pub").write_bytes((keys / "ci.pub").read_bytes())
    (pol / "policy.toml").write_text(POLICY)
    return {"ci": keys / "ci.key", "ci.pub": keys / "ci.pub", "rogue": keys / "rogue.key",
            "policy": pol / "policy.toml"}  # fmt: skip


def key_id(pub: Path) -> str:
    from registry.keys import load_public

    return load_public(pub).id


def with_key(reg: Path, key: Path) -> Path:
    """Sign everything this registry records with `key` (signing_key in registry.toml)."""
    with (reg / "registry.toml").open("a") as f:
        f.write(f'signing_key = "{key}"\n')
    return reg


def add_remote(reg: Path, s3: S3Env, name: str = "origin") -> None:
    cli_ok(reg, "remote", "add", name, f"s3://{s3.bucket}/team", "--endpoint-url", s3.endpoint)


def push(reg: Path, ref: str = "support-bot:v1", remote: str = "origin", *extra: str) -> dict:
    return json.loads(cli_ok(reg, "push", ref, "--remote", remote, *extra, "--json"))


def pull(reg: Path, ref: str = "support-bot:v1", remote: str = "origin") -> dict:
    return json.loads(cli_ok(reg, "pull", ref, "--remote", remote, "--json"))


def gate_box(make_registry, tiny, ci_keys, name: str, key: str) -> tuple[Path, dict]:  # noqa: ANN001
    """A registry with a signing key that added the tiny bundle and ran its gates."""
    reg = with_key(make_registry(name), ci_keys[key])
    bundle = add_tiny(reg, tiny)
    cli_ok(reg, "policy", "set", ci_keys["policy"])
    cli_ok(reg, "gates", "run", "support-bot:v1")
    return reg, bundle


def runs_of(reg: Path) -> list[dict]:
    return json.loads(cli_ok(reg, "gates", "show", "support-bot:v1", "--json"))["runs"]


def audit_ok(reg: Path) -> None:
    res = run_cli("audit", "verify", registry=reg)
    assert res.code == 0, res.out + res.err


# --- S3 -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("fake_gates")
def test_signed_gate_runs_travel_over_s3_and_count_only_where_trusted(
    make_registry, database_url, tiny, s3: S3Env, ci_keys
) -> None:
    rogue, bundle = gate_box(make_registry, tiny, ci_keys, "a2", "rogue")
    a, same = gate_box(make_registry, tiny, ci_keys, "a", "ci")
    assert same["digest"] == bundle["digest"]
    hexd = bundle["digest"][7:]
    b = make_registry("b", database_url)
    cli_ok(b, "policy", "set", ci_keys["policy"])
    for reg in (a, rogue, b):
        add_remote(reg, s3)

    # A run signed by a key the policy does not list travels, and does not unlock.
    sent = push(rogue)
    assert sent["gate_runs_sent"] == 1 and sent["refs"] == ["v1"]
    got = pull(b)
    assert got["gate_runs"] == 1 and got["created"] and got["notes"] == []
    blocked = run_cli("promote", "support-bot:v1", "--to", "staging", registry=b)
    assert blocked.code == 3 and "which the channel's gate_signers do not list" in blocked.err

    # The CI box's run: its attestation object is tampered with on the remote.
    out = cli_ok(a, "push", "support-bot:v1", "--remote", "origin")
    assert "sent 1 gate-run attestation" in out
    entries = s3.keys(f"team/attestations/{hexd}/")
    assert len(entries) == 2 and set(entries.values()) == {0}
    ours = [r["attestation"] for r in runs_of(a)]
    assert f"team/attestations/{hexd}/{ours[0][7:]}" in entries
    blob_key = f"team/blobs/sha256/{ours[0][7:]}"
    genuine = s3.get(blob_key)
    envelope = json.loads(genuine)
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["configuration"][-1]["annotations"]["actor"] = "ci (really)"
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    s3.client.put_object(Bucket=s3.bucket, Key=blob_key, Body=json.dumps(envelope).encode())
    res = run_cli("pull", "support-bot:v1", "--remote", "origin", registry=b)
    assert res.code == 0, res.err
    assert f"note: gate-run attestation {ours[0][:19]}" in res.out
    assert "refused: its bytes do not match its name" in res.out and "skipped" in res.out
    assert "with 1 signed gate run" not in res.out
    assert len(runs_of(b)) == 1  # nothing recorded for the tampered one
    assert run_cli("promote", "support-bot:v1", "--to", "staging", registry=b).code == 3

    # Re-pushing repairs the remote (the blob's size differs, so it is sent again).
    s3.client.put_object(Bucket=s3.bucket, Key=blob_key, Body=genuine + b" ")
    again = push(a)
    assert again["blobs_sent"] == 1 and again["gate_runs_sent"] == 0 and again["refs"] == []
    assert s3.get(blob_key) == genuine
    res = run_cli("pull", "support-bot:v1", "--remote", "origin", registry=b)
    assert res.code == 0 and "note:" not in res.out, res.out
    assert "; with 1 signed gate run (" in res.out
    assert pull(b)["gate_runs"] == 0  # idempotent

    ok = run_cli("promote", "support-bot:v1", "--to", "staging", registry=b)
    assert ok.code == 0, ok.err
    prod = run_cli("promote", "support-bot:v1", "--to", "production", registry=b)
    assert prod.code == 3 and "trusts no gate signers" in prod.err

    shown = cli_ok(b, "gates", "show", "support-bot:v1")
    ci = key_id(ci_keys["ci.pub"])
    assert f"pulled from origin, signed by {ci}; counts for staging" in shown
    runs = runs_of(b)
    assert {(r["origin"], r["signer"], r["trust"]["counts"]) for r in runs} == {
        ("origin", ci, True),
        ("origin", key_id(ci_keys["rogue"].with_suffix(".pub")), False),
    }
    # the evidence of the pulled runs came along, so everything B's database names is here
    assert all(r["summary"] for r in runs)
    verified = run_cli("verify", "--all", registry=b)
    assert verified.code == 0, verified.out + verified.err
    # gc keeps the attestations: the pulled run still counts afterwards
    cli_ok(b, "gc", "--grace", "0", "--force", "--reason", "test")
    assert [r["trust"]["counts"] for r in runs_of(b) if r["signer"] == ci] == [True]
    audit_ok(b)


@pytest.mark.usefixtures("fake_gates")
def test_a_bundle_signature_travels_over_s3_and_verifies_on_the_puller(
    make_registry, database_url, tiny, s3: S3Env, ci_keys, tmp_path
) -> None:
    from tests.registry.test_signing import ms_api_verify

    a = with_key(make_registry("a"), ci_keys["ci"])
    bundle = add_tiny(a, tiny)
    cli_ok(a, "sign", "support-bot:v1")
    b = make_registry("b", database_url)
    add_remote(a, s3)
    add_remote(b, s3)
    sent = push(a)
    ci = key_id(ci_keys["ci.pub"])
    hexd, kh = bundle["digest"][7:], ci[4:]
    assert sent["signatures_sent"] == 1
    assert s3.get(f"team/keys/{kh}.pub") == ci_keys["ci.pub"].read_bytes()
    sig_digest = s3.get(f"team/signatures/{hexd}/{kh}").decode()
    assert f"team/blobs/sha256/{sig_digest[7:]}" in s3.keys("team/blobs/")
    assert push(a)["signatures_sent"] == 0  # idempotent

    unsigned = run_cli("verify", "support-bot:v1", "--signed-by", ci_keys["ci.pub"], registry=b)
    assert unsigned.code != 0
    out = cli_ok(b, "pull", "support-bot:v1", "--remote", "origin")
    assert "; with 1 signature (" in out and "note:" not in out
    ok = run_cli("verify", "support-bot:v1", "--signed-by", ci_keys["ci.pub"], registry=b)
    assert ok.code == 0, ok.err
    assert f"signed by {ci}: ok" in ok.out
    cli_ok(b, "export", "support-bot:v1", tmp_path / "serve")
    ms_api_verify(tmp_path / "serve", ci_keys["ci.pub"])
    assert pull(b)["signatures"] == 0
    audit_ok(b)


def test_a_forged_signature_or_key_on_s3_is_refused(
    make_registry, tiny, s3: S3Env, ci_keys
) -> None:
    from registry.keys import generate

    a = with_key(make_registry("a"), ci_keys["ci"])
    bundle = add_tiny(a, tiny)
    add_tiny(a, tiny, "--annotation", "n=2")
    cli_ok(a, "sign", "support-bot:v1")
    cli_ok(a, "sign", "support-bot:v2")
    add_remote(a, s3)
    push(a, "support-bot:v1")
    push(a, "support-bot:v2")
    ci = key_id(ci_keys["ci.pub"])
    hexd, kh = bundle["digest"][7:], ci[4:]
    sig_v1 = s3.get(f"team/signatures/{hexd}/{kh}")
    v2 = json.loads(cli_ok(a, "show", "support-bot:v2", "--json"))["digest"]
    # v1's entry names v2's (valid, same key) signature: it does not match v1.
    s3.client.put_object(Bucket=s3.bucket, Key=f"team/signatures/{hexd}/{kh}",
                         Body=s3.get(f"team/signatures/{v2[7:]}/{kh}"))  # fmt: skip
    b = make_registry("b")
    add_remote(b, s3)
    got = pull(b)
    assert got["signatures"] == 0
    assert any(f"signature by {ci} on origin refused" in n and "does not match the bundle" in n
               for n in got["notes"]), got["notes"]  # fmt: skip
    # The right signature, but the remote's copy of the key replaced by another key.
    s3.client.put_object(Bucket=s3.bucket, Key=f"team/signatures/{hexd}/{kh}", Body=sig_v1)
    other = generate(ci_keys["ci"].parent / "other.key")
    s3.client.put_object(Bucket=s3.bucket, Key=f"team/keys/{kh}.pub", Body=other.public.pem)
    got = pull(b)
    assert got["signatures"] == 0 and any("is another key" in n for n in got["notes"])
    res = run_cli("verify", "support-bot:v1", "--signed-by", ci_keys["ci.pub"], registry=b)
    assert res.code == 1 and "it has no signatures" in res.err
    # With the genuine key back, the pull records it.
    s3.client.put_object(Bucket=s3.bucket, Key=f"team/keys/{kh}.pub",
                         Body=ci_keys["ci.pub"].read_bytes())  # fmt: skip
    assert pull(b)["signatures"] == 1
    assert run_cli("verify", "support-bot:v1", "--signed-by", ci_keys["ci.pub"],
                   registry=b).code == 0  # fmt: skip
    audit_ok(b)


@pytest.mark.usefixtures("fake_gates")
def test_an_oversized_or_misnamed_attestation_is_skipped(
    make_registry, tiny, s3: S3Env, ci_keys
) -> None:
    a, bundle = gate_box(make_registry, tiny, ci_keys, "a", "ci")
    add_remote(a, s3)
    push(a)
    hexd = bundle["digest"][7:]
    big = b"{" + b" " * (5 * 1024 * 1024) + b"}"
    big_hex = sha256_bytes(big)[7:]
    s3.client.put_object(Bucket=s3.bucket, Key=f"team/blobs/sha256/{big_hex}", Body=big)
    s3.client.put_object(Bucket=s3.bucket, Key=f"team/attestations/{hexd}/{big_hex}", Body=b"")
    # an attestation of another bundle, filed under this one
    other = b'{"payloadType": "x"}'
    other_hex = sha256_bytes(other)[7:]
    s3.client.put_object(Bucket=s3.bucket, Key=f"team/blobs/sha256/{other_hex}", Body=other)
    s3.client.put_object(Bucket=s3.bucket, Key=f"team/attestations/{hexd}/{other_hex}", Body=b"")
    s3.client.put_object(Bucket=s3.bucket, Key=f"team/attestations/{hexd}/not-a-digest", Body=b"")
    b = make_registry("b")
    add_remote(b, s3)
    got = pull(b)
    assert got["gate_runs"] == 1 and len(got["notes"]) == 2, got["notes"]
    assert any("larger than" in n for n in got["notes"])
    assert any("is not a DSSE envelope" in n for n in got["notes"])
    assert len(runs_of(b)) == 1
    audit_ok(b)


# --- the Hub ------------------------------------------------------------------------------


@pytest.mark.usefixtures("fake_gates")
def test_signed_gate_runs_and_signatures_travel_over_the_hub(
    make_registry, tiny, hub, ci_keys, tmp_path
) -> None:
    from huggingface_hub import HfApi

    from tests.registry.test_signing import ms_api_verify

    a, bundle = gate_box(make_registry, tiny, ci_keys, "a", "ci")
    cli_ok(a, "sign", "support-bot:v1")
    b = make_registry("b")
    cli_ok(b, "policy", "set", ci_keys["policy"])
    for reg in (a, b):
        cli_ok(reg, "remote", "add", "hub", "hf://my-org/support-bot")
    sent = push(a, "support-bot:v1", "hub", "--include-base")
    assert (sent["gate_runs_sent"], sent["signatures_sent"]) == (1, 1)
    ci = key_id(ci_keys["ci.pub"])
    hexd = bundle["digest"][7:]
    att = runs_of(a)[0]["attestation"]
    files = hub.state.resolve(hub.state.repos["my-org/support-bot"], "main").files
    assert f"registry/attestations/{hexd}/{att[7:]}.json" in files
    assert f"registry/signatures/{hexd}/{ci[4:]}.sig" in files
    assert f"registry/keys/{ci[4:]}.pub" in files
    again = push(a, "support-bot:v1", "hub")
    assert (again["gate_runs_sent"], again["signatures_sent"]) == (0, 0)

    # A tampered attestation file (a commit on the repo) is refused, with a note.
    path = f"registry/attestations/{hexd}/{att[7:]}.json"
    api = HfApi()
    genuine = (a / "blobs" / "sha256" / att[7:9] / att[7:]).read_bytes()
    api.upload_file(path_or_fileobj=genuine + b"\n", path_in_repo=path,
                    repo_id="my-org/support-bot", commit_message="tamper")  # fmt: skip
    res = run_cli("pull", "support-bot:v1", "--remote", "hub", registry=b)
    assert res.code == 0, res.err
    assert "refused: its bytes do not match its name" in res.out
    assert "; with 1 signature (" in res.out
    assert runs_of(b) == []
    assert run_cli("promote", "support-bot:v1", "--to", "staging", registry=b).code == 3

    api.upload_file(path_or_fileobj=genuine, path_in_repo=path, repo_id="my-org/support-bot",
                    commit_message="restore")  # fmt: skip
    got = pull(b, "support-bot:v1", "hub")
    assert (got["gate_runs"], got["signatures"], got["notes"]) == (1, 0, [])
    ok = run_cli("promote", "support-bot:v1", "--to", "staging", registry=b)
    assert ok.code == 0, ok.err
    prod = run_cli("promote", "support-bot:v1", "--to", "production", registry=b)
    assert prod.code == 3 and "trusts no gate signers" in prod.err
    assert "pulled from hub, signed by" in cli_ok(b, "gates", "show", "support-bot:v1")
    assert runs_of(b)[0]["summary"]  # its evidence came along
    ok = run_cli("verify", "support-bot:v1", "--signed-by", ci_keys["ci.pub"], registry=b)
    assert ok.code == 0, ok.err
    cli_ok(b, "export", "support-bot:v1", tmp_path / "serve")
    ms_api_verify(tmp_path / "serve", ci_keys["ci.pub"])
    verified = run_cli("verify", "--all", registry=b)
    assert verified.code == 0, verified.out + verified.err
    audit_ok(b)


@pytest.mark.parametrize("version", [0, -3, 2**31 - 1, 2**63 - 1, 10**30, True])
def test_remote_version_numbers_outside_the_range_never_block_later_adds(
    make_registry, tiny, version
) -> None:  # noqa: ANN001
    """A remote's version metadata is input: v0, negative or huge numbers are not kept
    (they would be unaddressable, or make every later `registry add` overflow)."""
    from registry.remotes.sync import import_bundle, load_local
    from registry.repo import Registry

    a, b = make_registry("a"), make_registry("b")
    add_tiny(a, tiny)
    src = Registry.open(a)
    _row, bundle = load_local(src, "support-bot:v1")
    dst = Registry.open(b)
    try:
        for digest in bundle.file_blobs():
            dst.store.put_file(src.store.path(digest))
        for _digest, data in bundle.manifest_blobs():
            dst.store.put_bytes(data)
        got = import_bundle(dst, bundle, version, "puller")
    finally:
        src.close()
        dst.close()
    assert got.version == 1 and got.note and "not a version here" in got.note
    add_tiny(b, tiny, "--annotation", "note=next")
    assert "support-bot:v2" in cli_ok(b, "ls")
    assert "audit chain ok" in cli_ok(b, "audit", "verify")
