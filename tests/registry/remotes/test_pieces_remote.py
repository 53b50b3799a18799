"""Files stored as pieces (tensor-level storage, docs/remotes.md "Pieces") on remotes.

S3 moves the pieces: a push sends the pieces the remote lacks, then the piece list, then
the manifests, so a second release that changes one tensor sends that tensor's bytes and
a small list; a pull fetches the pieces the store lacks, checks the whole file's sha256
over them, and only then references the file. The Hub receives ordinary whole files.
Real parts throughout: moto's S3 server, the Hub-compatible test server, real registries
and safetensors files written with the `safetensors` library.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.registry.remotes.conftest import (
    HF_TEST_TOKEN,
    S3Env,
    add_big,
    cli_ok,
    remote_consistency,
)

KiB = 1024
PIECED = "\n[store]\nsplit_above = 4096\npiece_size = 65536\n"
SHARD = "extra-00000.safetensors"
CHANGED = 16 * KiB  # the bytes of tensor "c", the one the second release changes


def pieced(reg: Path) -> Path:
    """Make `reg` store files above 4 KiB as pieces of at most 64 KiB."""
    with open(reg / "registry.toml", "a") as f:
        f.write(PIECED)
    return reg


def tensors(changed: bool) -> dict[str, Any]:
    """Four float32 tensors: "a" (256 KiB: four 64 KiB pieces), "b", "c" (16 KiB), "d";
    with `changed`, "c" differs and nothing else does."""
    import numpy as np

    rng = np.random.default_rng(7)
    out = {
        "a": rng.standard_normal(64 * KiB, dtype=np.float32),
        "b": rng.standard_normal(8 * KiB, dtype=np.float32),
        "c": rng.standard_normal(4 * KiB, dtype=np.float32),
        "d": rng.standard_normal(4 * KiB, dtype=np.float32),
    }
    if changed:
        out["c"] = out["c"] + np.float32(0.5)
    return out


def make_base(tiny: dict[str, Path], dest: Path, *, changed: bool) -> Path:
    """The tiny base model plus a multi-tensor shard (safetensors' own writer)."""
    from safetensors.numpy import save_file

    shutil.copytree(tiny["base"], dest)
    save_file(tensors(changed), str(dest / SHARD), metadata={"format": "pt"})
    return dest


def digest_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def add_remote(reg: Path, s3: S3Env, prefix: str = "team") -> None:
    cli_ok(reg, "remote", "add", "origin", f"s3://{s3.bucket}/{prefix}",
           "--endpoint-url", s3.endpoint)  # fmt: skip


def push_json(reg: Path, ref: str, remote: str = "origin", *extra: str) -> dict:
    return json.loads(cli_ok(reg, "push", ref, "--remote", remote, *extra, "--json"))


def pull_json(reg: Path, ref: str, remote: str = "origin") -> dict:
    return json.loads(cli_ok(reg, "pull", ref, "--remote", remote, "--json"))


def store_of(reg: Path) -> Any:
    from registry.store import BlobStore

    return BlobStore(reg)


def data_keys(s3: S3Env, prefix: str = "team") -> dict[str, int]:
    """Blob and piece-list objects (what a push's bytes_sent counts), key -> size."""
    return {k: v for k, v in s3.keys(f"{prefix}/").items()
            if k.startswith((f"{prefix}/blobs/", f"{prefix}/pieces/"))}  # fmt: skip


@pytest.fixture
def two_releases(make_registry, tiny, tmp_path: Path) -> dict[str, Any]:  # noqa: ANN001
    """A pieced registry holding support-bot:v1 and a v2 whose base changes tensor "c"."""
    a = pieced(make_registry("a"))
    bases = {v: make_base(tiny, tmp_path / f"base-{v}", changed=v == "v2") for v in ("v1", "v2")}
    for v in ("v1", "v2"):
        add_big(a, tiny, bases[v])
    files = {v: digest_of(bases[v] / SHARD) for v in bases}
    store = store_of(a)
    for d in files.values():
        assert store.piece_list(d) is not None and not store.path(d).exists()
    return {"reg": a, "bases": bases, "files": files}


def test_push_sends_pieces_and_the_second_release_only_its_changed_tensor(
    two_releases: dict[str, Any], s3: S3Env
) -> None:
    from registry.remotes.sync import load_local
    from registry.repo import Registry

    a, files = two_releases["reg"], two_releases["files"]
    add_remote(a, s3)
    out1 = push_json(a, "support-bot:v1")
    keys1 = data_keys(s3)
    hex1 = files["v1"].split(":", 1)[1]
    assert f"team/pieces/{hex1}" in keys1  # the piece list, named by the file's digest
    assert f"team/blobs/sha256/{hex1}" not in keys1  # never the whole file
    listed = json.loads(s3.get(f"team/pieces/{hex1}"))
    assert [p["size"] for p in listed["pieces"]][1:] == [64 * KiB] * 4 + [32 * KiB] + [
        CHANGED
    ] * 2  # the header, then "a" in four pieces, "b", "c", "d"
    for p in listed["pieces"]:
        assert keys1[f"team/blobs/sha256/{p['digest'].split(':', 1)[1]}"] == p["size"]
    assert out1["bytes_sent"] == sum(keys1.values())  # what it says is what it sent
    assert (out1["blobs_sent"], out1["bytes_sent"]) == (out1["blobs"], out1["bytes_total"])

    out2 = push_json(a, "support-bot:v2")
    new = {k: v for k, v in data_keys(s3).items() if k not in keys1}
    reg = Registry.open(a)
    try:
        _row1, b1 = load_local(reg, "support-bot:v1")
        _row2, b2 = load_local(reg, "support-bot:v2")
    finally:
        reg.close()
    manifests = {f"team/blobs/sha256/{d.split(':', 1)[1]}": len(data)
                 for d, data in b2.manifest_blobs() if d not in dict(b1.manifest_blobs())}  # fmt: skip
    changed = "sha256:" + hashlib.sha256(tensors(True)["c"].tobytes()).hexdigest()
    hex2 = files["v2"].split(":", 1)[1]
    list2 = len(store_of(a).piece_list(files["v2"]).to_bytes())
    assert new == {
        f"team/blobs/sha256/{changed.split(':', 1)[1]}": CHANGED,  # the changed tensor
        f"team/pieces/{hex2}": list2,  # its file's piece list
        **manifests,  # the base component's manifest and the bundle's
    }
    assert out2["bytes_sent"] == sum(new.values()) < CHANGED + list2 + 16 * KiB
    assert out2["bytes_total"] > 300 * KiB  # the bundle itself is far larger
    assert remote_consistency(s3, "team") == []
    again = push_json(a, "support-bot:v2")
    assert again["bytes_sent"] == 0 and data_keys(s3) == {**keys1, **new}


def test_pull_reassembles_byte_identical_and_fetches_only_missing_pieces(
    two_releases: dict[str, Any], make_registry, s3: S3Env, tmp_path: Path
) -> None:  # noqa: ANN001
    a, files, bases = two_releases["reg"], two_releases["files"], two_releases["bases"]
    add_remote(a, s3)
    push_json(a, "support-bot:v1")
    push_json(a, "support-bot:v2")
    b = make_registry("b")  # the default [store]: the test files are below its threshold
    add_remote(b, s3)
    p1 = pull_json(b, "support-bot:v1")
    store = store_of(b)
    assert store.piece_list(files["v1"]) is not None  # kept as the remote holds it
    assert not store.path(files["v1"]).exists()
    before = {p.name for p in (b / "blobs" / "sha256").glob("*/*")}
    # A first pull fetches each distinct blob once (equal pieces, such as two norm weights
    # of ones, come once) and counts what landed: the pieces and the lists, manifests aside.
    landed = sum(p.stat().st_size for p in (b / "blobs" / "sha256").glob("*/*"))
    lists = sum(len(store.pieces_path(d).read_bytes()) for d in store.iter_piece_lists())
    assert p1["bytes_fetched"] + manifest_bytes(b, "support-bot:v1") == landed + lists
    assert 300 * 1024 < p1["bytes_fetched"] <= p1["bytes_total"]
    p2 = pull_json(b, "support-bot:v2")
    fetched = {p.name for p in (b / "blobs" / "sha256").glob("*/*")} - before
    changed = hashlib.sha256(tensors(True)["c"].tobytes()).hexdigest()
    assert changed in fetched and len(fetched) == 3  # the tensor and two manifests
    list2 = len(store.piece_list(files["v2"]).to_bytes())
    assert p2["bytes_fetched"] == CHANGED + list2  # manifests aside, as for whole blobs
    assert p1["blobs_fetched"] <= p1["blobs"] and p2["blobs_fetched"] < p2["blobs"]
    for v in ("v1", "v2"):
        out = tmp_path / f"export-{v}"
        cli_ok(b, "export", f"support-bot:{v}", out)
        assert (out / "base" / SHARD).read_bytes() == (bases[v] / SHARD).read_bytes()
        assert digest_of(out / "base" / SHARD) == files[v]
    assert "ok" in cli_ok(b, "verify", "--all")


def manifest_bytes(reg_path: Path, ref: str) -> int:
    from registry.remotes.sync import load_local
    from registry.repo import Registry

    reg = Registry.open(reg_path)
    try:
        return sum(len(data) for _d, data in load_local(reg, ref)[1].manifest_blobs())
    finally:
        reg.close()


def _refused_pull(b: Path, message: str) -> str:
    res = run_cli("pull", "support-bot:v1", "--remote", "origin", registry=b)
    assert res.code == 1, (res.out, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.err
    assert message in lines[0], lines[0]
    return lines[0]


def _nothing_referenced(b: Path, file_digest: str) -> None:
    assert json.loads(cli_ok(b, "ls", "--json")) == []
    store = store_of(b)
    assert store.piece_list(file_digest) is None and not store.has(file_digest)
    assert "ok" in cli_ok(b, "verify", "--all")


def test_a_corrupt_or_missing_piece_on_the_remote_is_refused_on_pull(
    two_releases: dict[str, Any], make_registry, s3: S3Env
) -> None:  # noqa: ANN001
    a, files = two_releases["reg"], two_releases["files"]
    add_remote(a, s3)
    push_json(a, "support-bot:v1")
    hex1 = files["v1"].split(":", 1)[1]
    piece = json.loads(s3.get(f"team/pieces/{hex1}"))["pieces"][2]["digest"].split(":", 1)[1]
    key = f"team/blobs/sha256/{piece}"
    good = s3.get(key)
    bad = bytearray(good)
    bad[100] ^= 0xFF  # same size, one byte flipped
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=bytes(bad))
    b = make_registry("b")
    add_remote(b, s3)
    line = _refused_pull(b, "does not match its digest")
    assert f"piece sha256:{piece[:12]}" in line and SHARD in line
    _nothing_referenced(b, files["v1"])

    s3.client.delete_object(Bucket=s3.bucket, Key=key)
    c = make_registry("c")
    add_remote(c, s3)
    line = _refused_pull(c, "lacks piece")
    assert SHARD in line
    _nothing_referenced(c, files["v1"])

    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=good)  # repaired: the pull works
    pull_json(c, "support-bot:v1")
    assert store_of(c).piece_list(files["v1"]) is not None


def test_a_tampered_piece_list_is_refused_by_the_whole_file_digest(
    two_releases: dict[str, Any], make_registry, s3: S3Env
) -> None:  # noqa: ANN001
    """A list of real, sound pieces in another order (or another file's list) passes every
    piece check; only the whole file's sha256 over the reassembled bytes catches it."""
    a, files = two_releases["reg"], two_releases["files"]
    add_remote(a, s3)
    push_json(a, "support-bot:v1")
    key = f"team/pieces/{files['v1'].split(':', 1)[1]}"
    listed = json.loads(s3.get(key))
    p = listed["pieces"]
    p[1], p[2] = p[2], p[1]  # two 64 KiB pieces of tensor "a", swapped
    from registry.digest import canonical_json

    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=canonical_json(listed))
    b = make_registry("b")
    add_remote(b, s3)
    _refused_pull(b, "reassemble to")
    _nothing_referenced(b, files["v1"])

    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"{not json")
    _refused_pull(b, "piece list")
    _nothing_referenced(b, files["v1"])


def test_a_whole_file_remote_pulled_into_a_splitting_store_stays_whole(
    make_registry, tiny, s3: S3Env, tmp_path: Path
) -> None:  # noqa: ANN001
    a = make_registry("a")  # default threshold (64 MiB): every test file stored whole
    base = make_base(tiny, tmp_path / "base", changed=False)
    add_big(a, tiny, base)
    add_remote(a, s3)
    push_json(a, "support-bot:v1")
    digest = digest_of(base / SHARD)
    assert f"team/blobs/sha256/{digest.split(':', 1)[1]}" in s3.keys("team/")
    assert not any(k.startswith("team/pieces/") for k in s3.keys("team/"))
    b = pieced(make_registry("b"))
    add_remote(b, s3)
    pull_json(b, "support-bot:v1")
    store = store_of(b)
    assert store.path(digest).exists() and store.piece_list(digest) is None
    assert "ok" in cli_ok(b, "verify", "--all")


def test_the_hub_receives_a_pieced_file_whole_and_a_pull_stores_it_as_configured(
    two_releases: dict[str, Any], make_registry, hub, tmp_path: Path
) -> None:  # noqa: ANN001
    a, files, bases = two_releases["reg"], two_releases["files"], two_releases["bases"]
    assert HF_TEST_TOKEN  # the fixture's client talks to the test server only
    cli_ok(a, "remote", "add", "hub", "hf://my-org/support-bot")
    out = push_json(a, "support-bot:v1", "hub", "--include-base")
    assert out["refs"] == ["v1"]
    repo = hub.state.repos["my-org/support-bot"]
    entry = hub.state.resolve(repo, "v1").files[f"base/{SHARD}"]
    assert entry.sha256 == files["v1"].split(":", 1)[1]  # through LFS, the file's sha256
    assert hub.state.content(entry) == (bases["v1"] / SHARD).read_bytes()
    assert not list((a / "tmp").glob("hub-*"))  # the whole copy was scratch, removed

    c = pieced(make_registry("c"))  # pulled files are stored as its [store] says
    cli_ok(c, "remote", "add", "hub", "hf://my-org/support-bot")
    pull_json(c, "support-bot:v1", "hub")
    store = store_of(c)
    assert store.piece_list(files["v1"]) is not None and not store.path(files["v1"]).exists()
    cli_ok(c, "export", "support-bot:v1", tmp_path / "out")
    assert (tmp_path / "out" / "base" / SHARD).read_bytes() == (bases["v1"] / SHARD).read_bytes()
    assert "ok" in cli_ok(c, "verify", "--all")
    d = make_registry("d")  # the default threshold: the same pull keeps the file whole
    cli_ok(d, "remote", "add", "hub", "hf://my-org/support-bot")
    pull_json(d, "support-bot:v1", "hub")
    assert store_of(d).path(files["v1"]).exists() and store_of(d).piece_list(files["v1"]) is None
