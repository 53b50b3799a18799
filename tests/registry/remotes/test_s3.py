"""The S3 remote against a real S3 endpoint on loopback (moto's server mode).

What a user relies on: push sends only what the remote lacks and writes refs last; pull
verifies every byte before it enters the store; versions never move on a remote while
channels do (compare-and-swap); an interrupted push or pull (network cut, process killed)
leaves no ref to missing data and a re-run finishes without re-sending what is complete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from registry.digest import canonical_json, sha256_bytes
from tests.conftest import ROOT, run_cli
from tests.registry.remotes.conftest import (
    AWS_ENV,
    Proxy,
    S3Env,
    add_big,
    add_tiny,
    big_base,
    cli_ok,
    cut_when,
    remote_consistency,
)

MiB = 1024 * 1024
POLICY = "[channels.staging]\nrequire = []\n\n[channels.production]\nrequire = []\n"


def add_remote(
    reg: Path, s3: S3Env, *, endpoint: str | None = None, prefix: str = "team", name: str = "origin"
) -> None:
    cli_ok(
        reg,
        "remote",
        "add",
        name,
        f"s3://{s3.bucket}/{prefix}",
        "--endpoint-url",
        endpoint or s3.endpoint,
    )


def push_json(reg: Path, ref: str, remote: str = "origin") -> dict:
    return json.loads(cli_ok(reg, "push", ref, "--remote", remote, "--json"))


def pull_json(reg: Path, ref: str, remote: str = "origin") -> dict:
    return json.loads(cli_ok(reg, "pull", ref, "--remote", remote, "--json"))


def bundle_rows(reg: Path) -> list[dict]:
    return json.loads(cli_ok(reg, "ls", "--json"))


def stored(reg: Path) -> set[str]:
    base = reg / "blobs" / "sha256"
    return {p.name for p in base.glob("*/*")} if base.is_dir() else set()


def temp_files(reg: Path) -> list[Path]:
    tmp = reg / "blobs" / "tmp"
    return [p for p in tmp.rglob("*") if p.is_file()] if tmp.is_dir() else []


def refs_on(s3: S3Env, prefix: str = "team") -> dict[str, str]:
    return {k: s3.get(k).decode() for k in s3.keys(f"{prefix}/refs/")}


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """5 MiB parts (S3's minimum) and two threads, so a few MiB exercise multipart."""
    monkeypatch.setenv("REGISTRY_S3_UPLOAD_PART_MB", "5")
    monkeypatch.setenv("REGISTRY_S3_SINGLE_PUT_MB", "5")
    monkeypatch.setenv("REGISTRY_S3_DOWNLOAD_PART_MB", "5")
    monkeypatch.setenv("REGISTRY_S3_CONCURRENCY", "2")


# --- remotes table ------------------------------------------------------------------------


def test_remote_add_ls_rm_and_what_is_refused(make_registry, s3: S3Env) -> None:
    reg = make_registry("a")
    cli_ok(
        reg,
        "remote",
        "add",
        "origin",
        f"s3://{s3.bucket}/team/",
        "--endpoint-url",
        "http://127.0.0.1:9000/",
        "--region",
        "auto",
    )
    cli_ok(reg, "remote", "add", "hub", "hf://my-org/support-bot", "--private")
    listed = json.loads(cli_ok(reg, "remote", "ls", "--json"))
    assert listed == [
        {"name": "hub", "url": "hf://my-org/support-bot", "kind": "hf", "private": True},
        {
            "name": "origin",
            "url": f"s3://{s3.bucket}/team",
            "kind": "s3",
            "endpoint_url": "http://127.0.0.1:9000",
            "region": "auto",
        },
    ]
    for args, words in [
        (
            ["dup", "s3://bucket/x", "--endpoint-url", "http://key:secret@127.0.0.1:9000"],
            "must not carry a user or password",
        ),
        (["origin", "s3://other-bucket"], "already exists"),
        (["x", "s3://Bad_Bucket/p"], "not a valid S3 bucket name"),
        (["x", "s3://bucket/../etc"], "not normalized"),
        (["x", "hf://org/repo@main"], "not hf://ORG/REPO"),
        (["x", "hf://org/repo", "--profile", "p"], "apply to s3:// remotes only"),
        (["x", "ftp://host/x"], "unsupported remote URL"),
    ]:
        res = run_cli("remote", "add", *args, registry=reg)
        assert res.code == 2 and words in res.err and res.err.count("\n") == 1, (args, res.err)
    assert "secret" not in json.dumps(listed)
    cli_ok(reg, "remote", "rm", "hub")
    assert run_cli("remote", "rm", "hub", registry=reg).code == 2
    res = run_cli("push", "support-bot", "--remote", "nowhere", registry=reg)
    assert res.code == 2 and "no remote named 'nowhere' (known: origin)" in res.err


# --- push and pull ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_push_then_pull_onto_an_empty_registry(
    make_registry, database_url, tiny, s3: S3Env
) -> None:
    a = make_registry("a", database_url)
    bundle = add_tiny(a, tiny)
    add_remote(a, s3)
    out = push_json(a, "support-bot:v1")
    assert out["digest"] == bundle["digest"] and out["refs"] == ["v1"]
    assert out["blobs_sent"] == out["blobs"] > 10
    keys = s3.keys("team/")
    assert json.loads(s3.get("team/registry-remote.json")) == {"format": 1}
    assert s3.get("team/refs/support-bot/v1").decode() == bundle["digest"]
    assert f"team/blobs/sha256/{bundle['digest'][7:]}" in keys
    assert all(
        k.startswith(("team/blobs/sha256/", "team/refs/", "team/registry-remote", "team/created/"))
        for k in keys
    )
    assert f"team/created/{bundle['digest'][7:]}.json" in keys
    assert remote_consistency(s3, "team") == []
    again = push_json(a, "support-bot:v1")
    assert again["blobs_sent"] == 0 and again["refs"] == []

    b = make_registry("b")
    add_remote(b, s3)
    pulled = pull_json(b, "support-bot:v1")
    assert pulled["digest"] == bundle["digest"] and pulled["tag"] == "support-bot:v1"
    assert pulled["blobs_fetched"] == pulled["blobs"] and pulled["created"]
    assert "ok" in cli_ok(b, "verify", "support-bot:v1")
    cli_ok(b, "export", "support-bot:v1", b.parent / "out")
    assert (b.parent / "out" / "adapter_model.safetensors").read_bytes() == (
        tiny["adapter"] / "adapter_model.safetensors"
    ).read_bytes()
    res = run_cli("pull", "support-bot:v1", "--remote", "origin", registry=b)
    assert res.code == 0 and "all blobs already here" in res.out
    # the other ways to name it: newest version, digest prefix
    assert pull_json(b, "support-bot")["digest"] == bundle["digest"]
    assert pull_json(b, bundle["digest"][:15])["digest"] == bundle["digest"]
    res = run_cli("pull", "support-bot:v7", "--remote", "origin", registry=b)
    assert res.code == 1 and "has no support-bot:v7 (versions there: v1)" in res.err
    assert temp_files(b) == []


def test_second_bundle_sends_only_new_blobs_with_one_listing(
    make_registry, tiny, s3: S3Env
) -> None:
    from registry.remotes.base import open_remote
    from registry.repo import Registry

    a = make_registry("a")
    first = add_tiny(a, tiny)
    add_remote(a, s3)
    push_json(a, "support-bot:v1")
    second = add_tiny(a, tiny, "--annotation", "note=second")  # shares every file blob
    reg = Registry.open(a)
    remote = open_remote(reg, "origin")
    calls: Counter[str] = Counter()
    remote.client.meta.events.register(
        "before-call.s3.*", lambda model, **_: calls.update([model.name])
    )
    res = remote.push(reg, "support-bot:v2", actor="tester")
    reg.close()
    assert res.digest == second["digest"] != first["digest"]
    assert res.blobs_sent == 1 and res.bytes_sent < 1000  # the new bundle manifest alone
    assert calls["ListObjectsV2"] == 1 and calls["HeadObject"] == 0, calls
    assert calls["PutObject"] == 3  # the bundle manifest, its creation record, the v2 ref
    assert sorted(refs_on(s3)) == ["team/refs/support-bot/v1", "team/refs/support-bot/v2"]


def test_few_blobs_are_checked_with_head_requests(make_registry, tiny, s3: S3Env) -> None:
    from registry.remotes.base import open_remote
    from registry.repo import Registry

    a = make_registry("a")
    cli_ok(a, "add", "mini", "--base", tiny["base"], "--adapter", tiny["adapter"])
    add_remote(a, s3)
    reg = Registry.open(a)
    remote = open_remote(reg, "origin")
    calls: Counter[str] = Counter()
    remote.client.meta.events.register(
        "before-call.s3.*", lambda model, **_: calls.update([model.name])
    )
    res = remote.push(reg, "mini:v1", actor="tester")
    reg.close()
    assert res.blobs <= 16 and calls["HeadObject"] == res.blobs and calls["ListObjectsV2"] == 0


def test_versions_never_move_and_a_clash_is_imported_under_a_new_number(
    make_registry, tiny, s3: S3Env
) -> None:
    a, b = make_registry("a"), make_registry("b")
    ours = add_tiny(a, tiny)
    theirs = add_tiny(b, tiny, "--annotation", "team=b")  # also support-bot:v1, other digest
    add_remote(a, s3)
    add_remote(b, s3)
    push_json(a, "support-bot:v1")
    res = run_cli("push", "support-bot:v1", "--remote", "origin", registry=b)
    assert res.code == 1 and "versions never move" in res.err and res.err.count("\n") == 1
    assert refs_on(s3) == {"team/refs/support-bot/v1": ours["digest"]}
    pulled = pull_json(b, "support-bot:v1")
    assert pulled["tag"] == "support-bot:v2" and pulled["digest"] == ours["digest"]
    assert "imported as support-bot:v2" in pulled["notes"][0]
    rows = {r["tag"]: r["digest"] for r in bundle_rows(b)}
    assert rows == {"support-bot:v1": theirs["digest"], "support-bot:v2": ours["digest"]}


def test_channels_move_on_the_remote_and_pull_tracks_them(make_registry, tiny, s3: S3Env) -> None:
    a, b = make_registry("a"), make_registry("b")
    policy = a.parent / "policy.toml"
    policy.write_text(POLICY)
    cli_ok(a, "policy", "set", policy)
    v1 = add_tiny(a, tiny)
    v2 = add_tiny(a, tiny, "--annotation", "note=v2")
    add_remote(a, s3)
    add_remote(b, s3)
    cli_ok(a, "promote", "support-bot:v1", "--to", "production")
    assert push_json(a, "support-bot:production")["refs"] == ["v1", "production"]
    first = pull_json(b, "support-bot:production")
    assert first["tracking"] == "origin/production" and first["tracking_moved"]
    cli_ok(a, "promote", "support-bot:v2", "--to", "production")
    assert push_json(a, "support-bot:production")["refs"] == ["v2", "production"]
    assert refs_on(s3)["team/refs/support-bot/production"] == v2["digest"]
    from cli.commands.remote import ls_remote, render_ls_remote
    from registry.repo import Registry

    reg = Registry.open(b)
    listed = ls_remote(reg, "origin")
    reg.close()
    assert [(e["tag"], e["channels"]) for e in listed] == [
        ("support-bot:v2", ["production"]),
        ("support-bot:v1", []),
    ]
    assert listed[0]["size"] > 0
    assert "support-bot:v2" in render_ls_remote(listed, "origin")
    got = pull_json(b, "support-bot:production")
    assert got["tag"] == "support-bot:v2" and got["tracking_moved"]
    # The pull moved the read-only tracking view, never a local channel.
    view = json.loads(cli_ok(b, "history", "support-bot:origin/production", "--json"))
    assert (view["tag"], view["digest"]) == ("support-bot:v2", v2["digest"])
    assert run_cli("history", "support-bot:production", registry=b).code == 2
    assert all(r["channels"] == [] for r in bundle_rows(b))
    assert {r["tag"]: r["remote_channels"] for r in bundle_rows(b)} == {
        "support-bot:v2": ["origin/production"], "support-bot:v1": []}  # fmt: skip
    assert v1["digest"] != v2["digest"]
    assert "ok" in cli_ok(b, "audit", "verify")


def test_a_channel_moved_by_someone_else_mid_push_is_a_conflict(
    make_registry, tiny, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry.errors import ConflictError
    from registry.remotes.base import get_remote
    from registry.remotes.s3 import S3Remote
    from registry.repo import Registry

    a = make_registry("a")
    v1 = add_tiny(a, tiny)
    v2 = add_tiny(a, tiny, "--annotation", "note=v2")
    add_remote(a, s3)
    reg = Registry.open(a)
    remote = S3Remote(get_remote(reg, "origin"))
    remote.push(reg, "support-bot:v1", actor="t")
    remote.push(reg, "support-bot:v2", actor="t")
    assert remote.move_channel("support-bot", "production", v1["digest"], 1)
    stale = remote.get_ref("support-bot", "production")
    assert remote.move_channel("support-bot", "production", v2["digest"], 2)  # someone else
    assert not remote.move_channel("support-bot", "production", v2["digest"], 2)  # no-op
    monkeypatch.setattr(remote, "get_ref", lambda name, tag: stale)  # we read before they moved
    with pytest.raises(ConflictError, match="moved while pushing"):
        remote.move_channel("support-bot", "production", v2["digest"], 2)
    reg.close()
    assert refs_on(s3)["team/refs/support-bot/production"] == v2["digest"]


# --- verification -------------------------------------------------------------------------


def _largest_blob(s3: S3Env) -> tuple[str, int]:
    blobs = s3.keys("team/blobs/")
    return max(blobs.items(), key=lambda kv: kv[1])


def test_a_corrupt_remote_blob_never_enters_the_store(make_registry, tiny, s3: S3Env) -> None:
    a, b = make_registry("a"), make_registry("b")
    add_tiny(a, tiny)
    add_remote(a, s3)
    add_remote(b, s3)
    push_json(a, "support-bot:v1")
    key, size = _largest_blob(s3)
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"\0" * size)  # same size, wrong bytes
    res = run_cli("pull", "support-bot:v1", "--remote", "origin", registry=b)
    assert res.code == 1 and "does not match its digest" in res.err
    assert key.rsplit("/", 1)[1] not in stored(b)
    assert bundle_rows(b) == [] and temp_files(b) == []


def test_a_tampered_manifest_or_ref_is_refused(make_registry, tiny, s3: S3Env) -> None:
    a, b = make_registry("a"), make_registry("b")
    bundle = add_tiny(a, tiny)
    add_remote(a, s3)
    add_remote(b, s3)
    push_json(a, "support-bot:v1")
    # a ref that names a bundle of another name
    s3.client.put_object(
        Bucket=s3.bucket, Key="team/refs/other-bot/v1", Body=bundle["digest"].encode()
    )
    res = run_cli("pull", "other-bot:v1", "--remote", "origin", registry=b)
    assert res.code == 1 and "points at a bundle named 'support-bot'" in res.err
    # a component manifest with a path that leaves its directory, under a valid digest
    evil = canonical_json(
        {
            "schema": "registry.component.v1",
            "kind": "adapter",
            "meta": {},
            "files": [{"path": "../../.bashrc", "size": 3, "digest": sha256_bytes(b"pwn")}],
        }
    )
    manifest = canonical_json(
        {
            "schema": "registry.bundle.v1",
            "name": "evil",
            "parent": None,
            "annotations": {},
            "components": {"adapter": {"digest": sha256_bytes(evil), "size": len(evil)}},
        }
    )
    for data in (evil, manifest, b"pwn"):
        s3.client.put_object(
            Bucket=s3.bucket, Body=data, Key=f"team/blobs/sha256/{sha256_bytes(data)[7:]}"
        )
    s3.client.put_object(
        Bucket=s3.bucket, Key="team/refs/evil/v1", Body=sha256_bytes(manifest).encode()
    )
    res = run_cli("pull", "evil:v1", "--remote", "origin", registry=b)
    assert res.code == 1 and "invalid adapter manifest" in res.err and "not normalized" in res.err
    # a ref that is not a digest
    s3.client.put_object(Bucket=s3.bucket, Key="team/refs/support-bot/v2", Body=b"../../x")
    res = run_cli("pull", "support-bot:v2", "--remote", "origin", registry=b)
    assert res.code == 1 and "does not hold a digest" in res.err
    assert bundle_rows(b) == [] and not (b.parent / ".bashrc").exists()


def test_a_corrupt_local_blob_is_never_completed_on_the_remote(
    make_registry, tiny, s3: S3Env, small_parts: None
) -> None:
    a = make_registry("a")
    base = big_base(tiny, a.parent / "base", [7 * MiB])
    add_big(a, tiny, base)
    add_remote(a, s3)
    rows = json.loads(cli_ok(a, "show", "support-bot:v1", "--json"))
    shard = next(
        f
        for f in rows["components"]["base_model"]["files"]
        if f["path"] == "extra-00000.safetensors"
    )
    adapter = next(
        f
        for f in rows["components"]["adapter"]["files"]
        if f["path"] == "adapter_model.safetensors"
    )
    for f in (shard, adapter):  # a multipart blob and a single-part one, both rotted on disk
        path = a / "blobs" / "sha256" / f["digest"][7:9] / f["digest"][7:]
        path.chmod(0o644)
        with open(path, "r+b") as fh:
            fh.seek(f["size"] - 1)
            last = fh.read(1)
            fh.seek(f["size"] - 1)
            fh.write(bytes([last[0] ^ 1]))
    res = run_cli("push", "support-bot:v1", "--remote", "origin", registry=a)
    assert res.code == 1 and "does not match its digest; not pushed" in res.err
    keys = s3.keys("team/")
    assert f"team/blobs/sha256/{shard['digest'][7:]}" not in keys
    assert f"team/blobs/sha256/{adapter['digest'][7:]}" not in keys
    assert refs_on(s3) == {}
    uploads = s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
    assert uploads == []  # the failed multipart upload was aborted


# --- interruption -------------------------------------------------------------------------


def test_network_cut_mid_push_leaves_no_ref_and_a_rerun_resumes(
    make_registry, tiny, s3: S3Env, proxy: Proxy, small_parts: None
) -> None:
    a = make_registry("a")
    base = big_base(tiny, a.parent / "base", [6 * MiB, 6 * MiB, 6 * MiB, 11 * MiB])
    add_big(a, tiny, base)
    add_remote(a, s3, endpoint=proxy.url)
    proxy.rate = 20 * MiB  # slow enough to cut while the other blobs are in flight
    watcher = cut_when(proxy, lambda: any(v > MiB for v in s3.keys("team/blobs/").values()))
    res = run_cli("push", "support-bot:v1", "--remote", "origin", registry=a)
    watcher.join()
    assert res.code == 1 and "cannot reach" in res.err and "run the same command again" in res.err
    assert res.err.count("\n") == 1 and "Traceback" not in res.err
    assert refs_on(s3) == {} and remote_consistency(s3, "team") == []
    done = s3.keys("team/blobs/")  # objects appear whole or not at all
    assert any(size > MiB for size in done.values()), "the first attempt completed big blobs"
    proxy.restore()
    proxy.rate = None
    up = proxy.up
    out = push_json(a, "support-bot:v1")
    assert out["refs"] == ["v1"] and out["blobs_sent"] == out["blobs"] - len(done)
    assert proxy.up - up < out["bytes_total"] - sum(done.values()) + 2 * MiB
    assert remote_consistency(s3, "team") == []
    b = make_registry("b")
    add_remote(b, s3)
    pull_json(b, "support-bot:v1")
    assert "ok" in cli_ok(b, "verify", "support-bot:v1")


PUSH_PROCESS = """
import sys
from cli.app import app, main
from cli.commands import remote
remote.register(app)
sys.argv = ["registry"] + sys.argv[1:]
main()
"""


def test_killed_push_process_leaves_no_ref_and_a_rerun_resumes(
    make_registry, tiny, s3: S3Env, moto_server: str, small_parts: None
) -> None:
    from registry.remotes.base import open_remote
    from registry.repo import Registry

    a = make_registry("a")
    base = big_base(tiny, a.parent / "base", [6 * MiB, 6 * MiB, 6 * MiB, 11 * MiB])
    add_big(a, tiny, base)
    slow = Proxy(int(moto_server.rsplit(":", 1)[1]), rate=8 * MiB)
    try:
        add_remote(a, s3, endpoint=slow.url)
        env = {**os.environ, **AWS_ENV, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                PUSH_PROCESS,
                "--registry",
                str(a),
                "push",
                "support-bot:v1",
                "--remote",
                "origin",
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while (
            proc.poll() is None
            and time.monotonic() < deadline
            and not any(v > MiB for v in s3.keys("team/blobs/").values())
        ):
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    finally:
        slow.close()
    assert refs_on(s3) == {} and remote_consistency(s3, "team") == []
    done = s3.keys("team/blobs/")
    cli_ok(a, "remote", "rm", "origin")
    add_remote(a, s3)
    reg = Registry.open(a)
    remote = open_remote(reg, "origin")
    res = remote.push(reg, "support-bot:v1", actor="tester")
    leftover = remote.abort_stale_uploads(0)  # what the killed process left half-uploaded
    reg.close()
    assert res.refs == ["v1"] and res.blobs_sent == res.blobs - len(done)
    assert (
        leftover >= 0
        and s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    )
    assert remote_consistency(s3, "team") == []


def test_network_cut_mid_pull_imports_nothing_and_a_rerun_resumes(
    make_registry, tiny, s3: S3Env, proxy: Proxy, small_parts: None
) -> None:
    a, b = make_registry("a"), make_registry("b")
    base = big_base(tiny, a.parent / "base", [6 * MiB, 6 * MiB, 6 * MiB, 11 * MiB])
    bundle = add_big(a, tiny, base)
    add_remote(a, s3)
    push_json(a, "support-bot:v1")
    add_remote(b, s3, endpoint=proxy.url)
    # Slow enough (29 MiB at 8 MiB/s) that the cut lands while file blobs are in flight
    # even when a busy machine starves the watcher: after them, the manifests would be
    # stored too and the count below would differ.
    proxy.rate = 8 * MiB
    watcher = cut_when(proxy, lambda: any(p.stat().st_size > MiB for p in (
        b / "blobs" / "sha256").glob("*/*")))  # fmt: skip
    res = run_cli("pull", "support-bot:v1", "--remote", "origin", registry=b)
    watcher.join()
    assert res.code == 1 and "cannot reach" in res.err and res.err.count("\n") == 1
    assert bundle_rows(b) == [] and temp_files(b) == []
    have = stored(b)
    assert have, "the first attempt completed some blobs"
    assert f"{len(have)} verified blob(s) it fetched stay in the store" in res.err
    proxy.restore()
    proxy.rate = None
    out = pull_json(b, "support-bot:v1")
    assert out["digest"] == bundle["digest"]
    assert out["blobs_fetched"] == out["blobs"] - len(have)
    assert "ok" in cli_ok(b, "verify", "support-bot:v1")


# --- credentials --------------------------------------------------------------------------


def test_credentials_come_from_the_aws_chain_and_are_never_stored_or_printed(
    make_registry, tiny, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_registry("a")
    add_tiny(a, tiny)
    add_remote(a, s3)
    secret = AWS_ENV["AWS_SECRET_ACCESS_KEY"]
    ok = run_cli("push", "support-bot:v1", "--remote", "origin", registry=a)
    assert ok.code == 0 and secret not in ok.out + ok.err
    for path in a.rglob("*"):
        if path.is_file() and path.stat().st_size < 50 * MiB:
            assert secret.encode() not in path.read_bytes(), path
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    res = run_cli("push", "support-bot:v1", "--remote", "origin", registry=a)
    assert res.code == 1 and "no AWS credentials" in res.err and res.err.count("\n") == 1
    cli_ok(a, "remote", "add", "prof", f"s3://{s3.bucket}/x", "--profile", "nosuch")
    res = run_cli("push", "support-bot:v1", "--remote", "prof", registry=a)
    assert res.code == 2 and "AWS profile 'nosuch' not found" in res.err


PROBE = """
import json, sys
args, heavy = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
sys.argv = ["registry"] + args
from cli.app import app, main
from cli.commands import remote
remote.register(app)
try:
    main()
    sys.stderr.write("\\nEXIT:0")
except SystemExit as exc:
    sys.stderr.write(f"\\nEXIT:{exc.code}")
sys.stderr.write("\\nLOADED:" + json.dumps(sorted({m.split(".")[0] for m in sys.modules} & heavy)))
"""


def test_remote_commands_that_do_not_talk_to_a_remote_import_nothing_heavy(
    make_registry, s3: S3Env
) -> None:
    from tests.cli.test_startup import HEAVY

    a = make_registry("a")
    add_remote(a, s3)
    for args in (
        ["remote", "ls"],
        ["remote", "add", "x", "s3://bucket-x"],
        ["push", "--help"],
        ["ls"],
    ):
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                PROBE,
                json.dumps(["--registry", str(a), *args]),
                json.dumps(HEAVY),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "EXIT:0" in proc.stderr or "EXIT:None" in proc.stderr, proc.stderr
        assert json.loads(proc.stderr.rsplit("LOADED:", 1)[1]) == [], args


def test_ls_remote_lists_versions_and_channels(make_registry, tiny, s3: S3Env) -> None:
    a = make_registry("a")
    if "--remote" not in run_cli("ls", "--help", registry=a).out:
        pytest.skip("`registry ls --remote` is wired in cli/app.py by the lead")
    bundle = add_tiny(a, tiny)
    add_remote(a, s3)
    assert "holds no bundles yet" in cli_ok(a, "ls", "--remote", "origin")
    push_json(a, "support-bot:v1")
    listed = json.loads(cli_ok(a, "ls", "--remote", "origin", "--json"))
    assert [(e["tag"], e["digest"]) for e in listed] == [("support-bot:v1", bundle["digest"])]
    text = cli_ok(a, "ls", "--remote", "origin")
    assert text.splitlines()[0].split() == ["TAG", "DIGEST", "SIZE", "CHANNELS"]
    assert "support-bot:v1" in text and bundle["digest"][:19] in text


# --- who created a bundle, and who pulled it ------------------------------------------------


def as_user(monkeypatch: pytest.MonkeyPatch, user: str) -> None:
    """Run the next commands as OS user `user` (the local authenticated identity)."""
    from registry import config

    monkeypatch.setattr(config, "os_user", lambda: user)


def show_json(reg: Path, ref: str) -> dict:
    return json.loads(cli_ok(reg, "show", ref, "--json"))


def events_of(reg: Path, digest: str) -> list[tuple[str, str]]:
    """(action, actor) of the audit events about a bundle, oldest first."""
    from registry.repo import Registry

    r = Registry.open(reg)
    try:
        with r.db.read() as conn:
            rows = conn.execute(
                "SELECT action, actor FROM event WHERE subject = :d ORDER BY seq", {"d": digest}
            ).all()
    finally:
        r.close()
    return [(a, b) for a, b in rows]


def test_pull_keeps_who_created_the_bundle_and_records_who_pulled_it(
    make_registry, tiny, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_user(monkeypatch, "alice")
    a = make_registry("a")
    bundle = add_tiny(a, tiny)
    made = show_json(a, "support-bot:v1")
    assert made["created_by"] == "alice" and made["pulled"] is None
    add_remote(a, s3)
    push_json(a, "support-bot:v1")
    record = json.loads(s3.get(f"team/created/{bundle['digest'][7:]}.json"))
    assert record == {"format": 1, "bundle": bundle["digest"],
                      "created_at": made["created_at"], "created_by": "alice"}  # fmt: skip

    as_user(monkeypatch, "bob")
    b = make_registry("b")
    add_remote(b, s3)
    pulled = pull_json(b, "support-bot:v1")
    assert pulled["created"] and pulled["notes"] == []
    info = show_json(b, "support-bot:v1")
    assert (info["created_at"], info["created_by"]) == (made["created_at"], "alice")
    assert info["pulled"]["by"] == "bob" and info["pulled"]["remote"] == "origin"
    assert info["pulled"]["at"] > made["created_at"] and info["pulled"]["creation_from_remote"]
    text = cli_ok(b, "show", "support-bot:v1")
    assert f"created   {made['created_at']} by alice (as remote origin records it)" in text
    assert f"pulled    {info['pulled']['at']} by bob from origin" in text
    assert bundle_rows(b)[0]["created_at"] == made["created_at"]  # `ls` shows it too
    # The remote's creator is a claim for display: every event in b is bob's, and the
    # chain (with the new `pull` event in it) verifies.
    assert events_of(b, bundle["digest"]) == [("tag", "bob"), ("pull", "bob")]
    assert run_cli("audit", "verify", registry=b).code == 0
    # A second pull imports nothing and records nothing.
    pull_json(b, "support-bot:v1")
    assert events_of(b, bundle["digest"]) == [("tag", "bob"), ("pull", "bob")]

    # b pushes it elsewhere: the record travels on; a re-push by b never rewrites it.
    add_remote(b, s3, prefix="other", name="other")
    push_json(b, "support-bot:v1", remote="other")
    again = s3.get(f"other/created/{bundle['digest'][7:]}.json")
    assert json.loads(again)["created_by"] == "alice"
    as_user(monkeypatch, "carol")
    c = make_registry("c")
    add_remote(c, s3, prefix="other", name="other")
    pull_json(c, "support-bot:v1", remote="other")
    info_c = show_json(c, "support-bot:v1")
    assert (info_c["created_by"], info_c["pulled"]["by"]) == ("alice", "carol")
    assert info_c["created_at"] == made["created_at"]


def test_a_remote_without_a_creation_record_gives_the_pull_as_creation(
    make_registry, tiny, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_user(monkeypatch, "alice")
    a = make_registry("a")
    bundle = add_tiny(a, tiny)
    add_remote(a, s3)
    push_json(a, "support-bot:v1")
    s3.client.delete_object(Bucket=s3.bucket, Key=f"team/created/{bundle['digest'][7:]}.json")
    as_user(monkeypatch, "bob")
    b = make_registry("b")
    add_remote(b, s3)
    assert pull_json(b, "support-bot:v1")["notes"] == []  # an older remote: no complaint
    info = show_json(b, "support-bot:v1")
    created_in_a = show_json(a, "support-bot:v1")["created_at"]
    assert info["created_by"] == "bob" and created_in_a < info["created_at"] <= info["pulled"]["at"]
    assert info["pulled"]["creation_from_remote"] is False
    assert "(the pull: remote origin keeps no creation record)" in cli_ok(
        b, "show", "support-bot:v1"
    )
    push_json(a, "support-bot:v1")  # a later push from a registry that has it fills it in
    assert json.loads(s3.get(f"team/created/{bundle['digest'][7:]}.json"))["created_by"] == "alice"


BAD_RECORDS = {
    "too large": lambda d: b'{"pad":"' + b"x" * 5000 + b'"}',
    "not JSON": lambda d: b"\xff\xfe{",
    "a list": lambda d: b"[]",
    "another bundle": lambda d: canonical_json(
        {"format": 1, "bundle": "sha256:" + "0" * 64,
         "created_at": "2026-01-01T00:00:00.000000Z", "created_by": "mallory"}),
    "format 2": lambda d: canonical_json(
        {"format": 2, "bundle": d, "created_at": "2026-01-01T00:00:00Z", "created_by": "m"}),
    "terminal escape": lambda d: canonical_json(
        {"format": 1, "bundle": d, "created_at": "2026-01-01T00:00:00Z",
         "created_by": "\x1b[2Jroot"}),
    "bidi override": lambda d: canonical_json(
        {"format": 1, "bundle": d, "created_at": "2026-01-01T00:00:00Z",
         "created_by": "eve\u202egnp.exe"}),
    "long creator": lambda d: canonical_json(
        {"format": 1, "bundle": d, "created_at": "2026-01-01T00:00:00Z", "created_by": "x" * 129}),
    "number creator": lambda d: canonical_json(
        {"format": 1, "bundle": d, "created_at": "2026-01-01T00:00:00Z", "created_by": 7}),
    "free-text time": lambda d: canonical_json(
        {"format": 1, "bundle": d, "created_at": "yesterday", "created_by": "m"}),
    "impossible date": lambda d: canonical_json(
        {"format": 1, "bundle": d, "created_at": "2026-13-45T99:00:00Z", "created_by": "m"}),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_each_malformed_creation_record_is_refused_with_a_reason(case: str) -> None:
    from registry.remotes.sync import parse_creation

    digest = "sha256:" + "ab" * 32
    creation, note = parse_creation(BAD_RECORDS[case](digest), digest, "team")
    assert creation is None and note is not None and "creation record" in note, case
    assert note.isprintable() and len(note) < 300, note  # the bad bytes are not echoed raw


def test_a_hostile_creation_record_is_ignored_with_a_note(
    make_registry, tiny, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_registry("a")
    bundle = add_tiny(a, tiny)
    add_remote(a, s3)
    push_json(a, "support-bot:v1")
    key = f"team/created/{bundle['digest'][7:]}.json"
    as_user(monkeypatch, "bob")
    for case in ("too large", "terminal escape", "another bundle"):
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=BAD_RECORDS[case](bundle["digest"]))
        b = make_registry(f"b-{case.replace(' ', '-')}")
        add_remote(b, s3)
        res = run_cli("pull", "support-bot:v1", "--remote", "origin", "--json", registry=b)
        assert res.code == 0, (case, res.err)
        notes = json.loads(res.out)["notes"]
        assert len(notes) == 1 and "creation record" in notes[0], (case, notes)
        assert "\x1b" not in res.out + res.err, case
        info = show_json(b, "support-bot:v1")
        assert info["created_by"] == "bob" and not info["pulled"]["creation_from_remote"], case
    # A well-formed record with a legal, odd creator is shown as the remote says.
    good = {"format": 1, "bundle": bundle["digest"], "created_at": "2025-02-03T04:05:06Z",
            "created_by": "Zoë <zoe@example.org>", "extra": "ignored"}  # fmt: skip
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=canonical_json(good))
    b = make_registry("b-good")
    add_remote(b, s3)
    assert pull_json(b, "support-bot:v1")["notes"] == []
    info = show_json(b, "support-bot:v1")
    assert (info["created_at"], info["created_by"]) == ("2025-02-03T04:05:06Z", good["created_by"])
