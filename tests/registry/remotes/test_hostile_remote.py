"""A hostile S3 remote, table-driven (issue 13).

Registry A pushes a real small bundle (support-bot:v1 and its production channel) once
per module to a pristine bucket. Each case copies that bucket, then crafts it with boto3
the way a hostile remote would, and registry B (empty, or holding a bundle of its own)
runs `pull`, `ls --remote` or `export`. What must hold after every case: the exit code
expected, exactly one `error:` line (or success, with the note expected), never
`unexpected` nor a traceback, B's database rows unchanged on a refusal, every blob left
in B's store hashing to its name, nothing written outside B's directory; and after an
import, a sane local version and a later `registry add` that still works.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from registry.digest import canonical_json, sha256_bytes
from tests.conftest import run_cli, snapshot
from tests.registry.remotes.conftest import S3Env, add_tiny, cli_ok
from tests.registry.remotes.test_s3 import POLICY, add_remote

PREFIX = "team"
SAFE_VERSION_MAX = 1_000_000  # registry.remotes.sync.MAX_VERSION


# --- the pristine remote, pushed once ----------------------------------------------------


@dataclass
class Pristine:
    bucket: str
    digest: str  # support-bot:v1
    manifest: dict[str, Any]  # its bundle manifest
    components: dict[str, bytes] = field(default_factory=dict)  # kind -> manifest bytes


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, moto_server, tiny) -> Pristine:  # noqa: ANN001
    import boto3

    from registry.repo import Registry

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("REGISTRY_HOME", raising=False)
        mp.delenv("REGISTRY_DATABASE_URL", raising=False)
        mp.setenv("REGISTRY_ACTOR", "tester")
        a = tmp_path_factory.mktemp("hostile") / "a"
        Registry.init(a, None).close()
        client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
        bucket = f"pristine-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        env = S3Env(moto_server, bucket, client)
        policy = a.parent / "policy.toml"
        policy.write_text(POLICY)
        cli_ok(a, "policy", "set", policy)
        bundle = add_tiny(a, tiny)
        cli_ok(a, "promote", "support-bot:v1", "--to", "production")
        add_remote(a, env)
        cli_ok(a, "push", "support-bot:production", "--remote", "origin")
    data = env.get(blob_key(bundle["digest"]))
    manifest = json.loads(data)
    comps = {k: env.get(blob_key(d["digest"])) for k, d in manifest["components"].items()}
    return Pristine(bucket, bundle["digest"], manifest, comps)


def blob_key(digest: str) -> str:
    return f"{PREFIX}/blobs/sha256/{digest.split(':', 1)[1]}"


@dataclass
class Ctx:
    """What a builder may use: the case's bucket and the pristine bundle."""

    s3: S3Env
    p: Pristine

    def put(self, key: str, body: bytes, **extra: Any) -> None:
        self.s3.client.put_object(Bucket=self.s3.bucket, Key=f"{PREFIX}/{key}", Body=body, **extra)

    def blob(self, data: bytes) -> str:
        digest = sha256_bytes(data)
        self.put(f"blobs/sha256/{digest[7:]}", data)
        return digest

    def ref(self, name: str, tag: str, digest: str, **meta: str) -> None:
        self.put(f"refs/{name}/{tag}", digest.encode(), Metadata=meta)

    def bundle(self, name: str = "support-bot", **components: bytes) -> str:
        """A bundle manifest: the pristine one, with `components` (kind -> manifest bytes,
        stored as blobs) replacing its own and an annotation making it a new bundle."""
        comps = dict(self.p.manifest["components"])
        for kind, data in components.items():
            comps[kind] = {"digest": self.blob(data), "size": len(data)}
        return self.blob(
            canonical_json(
                {
                    **self.p.manifest,
                    "name": name,
                    "components": comps,
                    "annotations": {"crafted": uuid.uuid4().hex},
                }
            )
        )

    def component(self, files: list[dict[str, Any]], meta: Any = None) -> bytes:
        return canonical_json(
            {
                "schema": "registry.component.v1",
                "kind": "adapter",
                "files": files,
                "meta": meta or {},
            }
        )


def etags(s3: S3Env, bucket: str) -> dict[str, str]:
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {obj["Key"]: obj["ETag"] for page in pages for obj in page.get("Contents", [])}


@pytest.fixture(scope="module")
def work_bucket(pristine: Pristine, moto_server: str) -> S3Env:
    """A copy of the pristine bucket that each case crafts; `hostile` restores it after."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    env = S3Env(moto_server, f"hostile-{uuid.uuid4().hex[:12]}", client)
    client.create_bucket(Bucket=env.bucket)
    restore(env, pristine.bucket)
    return env


def restore(s3: S3Env, src: str) -> None:
    """Make `s3`'s bucket hold exactly what `src` holds again (metadata too): delete what
    a case added, copy back what it changed (a copy keeps the ETag, so unchanged keys are
    skipped: a few requests, not one per object)."""
    want, have = etags(s3, src), etags(s3, s3.bucket)
    for key in have.keys() - want.keys():
        s3.client.delete_object(Bucket=s3.bucket, Key=key)
    for key, etag in want.items():
        if have.get(key) != etag:
            s3.client.copy_object(Bucket=s3.bucket, Key=key, CopySource={"Bucket": src, "Key": key})


@pytest.fixture
def hostile(work_bucket: S3Env, pristine: Pristine) -> Iterator[S3Env]:
    yield work_bucket
    restore(work_bucket, pristine.bucket)
    assert etags(work_bucket, work_bucket.bucket) == etags(work_bucket, pristine.bucket)


# --- the builders: each crafts the bucket and returns the command B runs ----------------

PULL_V2 = ["pull", "support-bot:v2", "--remote", "origin"]


def entry(path: str, data: bytes = b"pwn") -> dict[str, Any]:
    return {"digest": sha256_bytes(data), "path": path, "size": len(data)}


def evil_paths(*paths: str) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        c.blob(b"pwn")
        c.ref("support-bot", "v2", c.bundle(adapter=c.component([entry(p) for p in paths])))
        return PULL_V2

    return build


def component_bytes(data: bytes) -> Callable[[Ctx], list[str]]:
    """An adapter manifest of exactly these bytes (its descriptor matches them)."""

    def build(c: Ctx) -> list[str]:
        c.ref("support-bot", "v2", c.bundle(adapter=data))
        return PULL_V2

    return build


def bundle_bytes(data: bytes) -> Callable[[Ctx], list[str]]:
    """A bundle manifest of exactly these bytes (its ref names their digest)."""

    def build(c: Ctx) -> list[str]:
        c.ref("support-bot", "v2", c.blob(data))
        return PULL_V2

    return build


def bundle_digest_mismatch(c: Ctx) -> list[str]:
    other = sha256_bytes(b"not the manifest")
    c.put(f"blobs/sha256/{other[7:]}", c.s3.get(blob_key(c.p.digest)))
    c.ref("support-bot", "v2", other)
    return PULL_V2


def component_mismatch(c: Ctx) -> list[str]:
    desc = c.p.manifest["components"]["adapter"]
    data = c.p.components["adapter"].replace(b'"meta":{', b'"meta":{"x":1,', 1)
    c.put(f"blobs/sha256/{desc['digest'][7:]}", data)
    return ["pull", "support-bot:v1", "--remote", "origin"]


def file_blob_mismatch(c: Ctx) -> list[str]:
    keys = c.s3.keys(f"{PREFIX}/blobs/")
    key, size = max(keys.items(), key=lambda kv: kv[1])
    c.put(key[len(PREFIX) + 1 :], b"\0" * size)  # same size, wrong bytes
    return ["pull", "support-bot:v1", "--remote", "origin"]


def many_duplicates(c: Ctx) -> list[str]:
    one = canonical_json(entry("a"))
    head = b'{"files":['
    tail = b'],"kind":"adapter","meta":{},"schema":"registry.component.v1"}'
    data = head + b",".join([one] * 500_000) + tail
    c.ref("support-bot", "v2", c.bundle(adapter=data))
    return PULL_V2


def deep_meta(c: Ctx) -> list[str]:
    nested = b"[" * 10_000 + b"]" * 10_000
    data = (
        b'{"files":[],"kind":"adapter","meta":{"x":'
        + nested
        + b'},"schema":"registry.component.v1"}'
    )
    c.ref("support-bot", "v2", c.bundle(adapter=data))
    return PULL_V2


def nan_meta(c: Ctx) -> list[str]:
    data = b'{"files":[],"kind":"adapter","meta":{"x":NaN},"schema":"registry.component.v1"}'
    c.ref("support-bot", "v2", c.bundle(adapter=data))
    return PULL_V2


def version_ref(tag: str) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        c.ref("support-bot", tag, c.bundle())
        return ["pull", f"support-bot:{tag}", "--remote", "origin"]

    return build


def channel_meta(version: str) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        c.ref("support-bot", "canary", c.bundle(), version=version)
        return ["pull", "support-bot:canary", "--remote", "origin"]

    return build


def raw_meta(c: Ctx, key: str, digest: str, meta: str, raw: bytes) -> None:
    """PUT a ref whose x-amz-meta-`meta` header is `raw` bytes, as a store other than AWS
    may return them (botocore refuses non-ASCII metadata, so the header is set by hand)."""

    def hook(request: Any, **_: Any) -> None:
        request.headers[f"x-amz-meta-{meta}"] = raw

    events = c.s3.client.meta.events
    events.register("before-send.s3.PutObject", hook)
    try:
        c.put(key, digest.encode())
    finally:
        events.unregister("before-send.s3.PutObject", hook)


def channel_meta_superscript(c: Ctx) -> list[str]:
    raw_meta(c, "refs/support-bot/canary", c.bundle(), "version", b"\xb2")  # latin-1: '²'
    return ["pull", "support-bot:canary", "--remote", "origin"]


def ls_size_superscript(c: Ctx) -> list[str]:
    raw_meta(c, "refs/support-bot/v2", c.bundle(), "size", b"\xb9\xb2")  # '¹²'
    return ["ls", "--remote", "origin"]


def newest_with_huge_version(c: Ctx) -> list[str]:
    c.ref("support-bot", "v9999999999", c.bundle())  # a version tag; far past MAX_VERSION
    return ["pull", "support-bot", "--remote", "origin"]


def big_ref(c: Ctx) -> list[str]:
    c.put("refs/support-bot/v2", c.p.digest.encode() + b" " * 2000)
    return PULL_V2


def big_manifest(c: Ctx) -> list[str]:
    return ["pull", "support-bot:v1", "--remote", "origin"]  # MAX_MANIFEST patched to 512


def missing_manifest(c: Ctx) -> list[str]:
    c.ref("support-bot", "v2", sha256_bytes(b"nowhere"))
    return PULL_V2


def other_name_channel(c: Ctx) -> list[str]:
    c.ref("other-bot", "production", c.p.digest, version="1")
    return ["pull", "other-bot:production", "--remote", "origin"]


def format_marker(body: bytes) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        c.put("registry-remote.json", body)
        return ["ls", "--remote", "origin"]

    return build


def pull_then_export(c: Ctx) -> list[str]:
    return ["pull", "support-bot:production", "--remote", "origin"]


# --- the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Ctx], list[str]]
    code: int
    fragment: str  # in the error line, or in the output on success
    seeded: bool = False  # B holds a bundle of its own first
    patch: dict[str, int] = field(default_factory=dict)  # registry.remotes.s3 limits
    export: bool = False  # after an import: also verify, export and audit (slower)


CASES = [
    Case("bundle-digest-not-ref", bundle_digest_mismatch, 1, "its ref says"),
    Case("component-not-descriptor", component_mismatch, 1, "adapter manifest does not match"),
    Case("blob-not-digest", file_blob_mismatch, 1, "does not match its digest"),
    Case("one-blob-500k-times", many_duplicates, 1, "(at most 100000)"),
    Case("duplicate-path", evil_paths("a", "a"), 1, "sorted by path and unique"),
    Case("file-dir-clash", evil_paths("a/b", "a/b/c"), 1, "a/b is both a file and a directory"),
    Case("dotdot", evil_paths("../../.bashrc"), 1, "not normalized"),
    Case("dotdot-inner", evil_paths("a/../../b"), 1, "not normalized"),
    Case("absolute", evil_paths("/etc/passwd"), 1, "is absolute"),
    Case("drive", evil_paths("C:/x"), 1, "is absolute"),
    Case("nul", evil_paths("a\0b"), 1, "control character"),
    Case("backslash", evil_paths("..\\..\\x"), 1, "backslash or an encoded separator"),
    Case("encoded-sep", evil_paths("..%2f..%2fx"), 1, "backslash or an encoded separator"),
    Case("encoded-dot", evil_paths("%2e%2e/x"), 1, "backslash or an encoded separator"),
    Case("empty-path", evil_paths(""), 1, "empty path"),
    Case("ref-v0", version_ref("v0"), 0, "support-bot:v2", seeded=True),
    Case("ref-v-1", version_ref("v-1"), 0, "support-bot:v1"),
    Case(
        "ref-v-int64",
        version_ref("v9223372036854775807"),
        0,
        "support-bot:v2",
        seeded=True,
        export=True,
    ),
    Case("ref-v-30-digits", version_ref("v" + "7" * 30), 0, "support-bot:v1"),
    Case("newest-is-v9999999999", newest_with_huge_version, 0, "not a version here"),
    Case("channel-version-0", channel_meta("0"), 0, "not a version here", seeded=True, export=True),
    Case("channel-version-huge", channel_meta("9" * 40), 0, "support-bot:v1"),
    Case("channel-version-int4+1", channel_meta("2147483648"), 0, "support-bot:v2", seeded=True),
    Case("channel-version-9-digits", channel_meta("999999999"), 0, "not a version here"),
    Case("channel-version-text", channel_meta("seven"), 0, "support-bot:v1"),
    Case("channel-version-negative", channel_meta("-3"), 0, "support-bot:v1"),
    Case("channel-version-superscript", channel_meta_superscript, 0, "support-bot:v1"),
    Case("ls-size-superscript", ls_size_superscript, 0, "support-bot:v2"),
    Case("ref-too-large", big_ref, 1, "larger than 1024 bytes; refused"),
    Case(
        "manifest-too-large",
        big_manifest,
        1,
        "larger than 512 bytes; refused",
        patch={"MAX_MANIFEST": 512},
    ),
    Case("meta-deeply-nested", deep_meta, 1, "nested deeper than 64 levels"),
    Case("meta-nan", nan_meta, 1, "invalid adapter manifest"),
    Case(
        "component-not-utf8",
        component_bytes(b'{"files":[],"kind":"\xff\xfe"}'),
        1,
        "not valid UTF-8 JSON",
    ),
    Case("component-is-array", component_bytes(b"[]"), 1, "must be a JSON object"),
    Case("bundle-not-utf8", bundle_bytes(b"\xff\xfe\xfd"), 1, "not valid UTF-8 JSON"),
    Case("bundle-is-array", bundle_bytes(b'["support-bot"]'), 1, "must be a JSON object"),
    Case(
        "bundle-nan",
        bundle_bytes(b'{"annotations":{},"components":{},"name":NaN}'),
        1,
        "invalid bundle manifest",
    ),
    Case("ref-to-missing-manifest", missing_manifest, 1, "lacks manifest"),
    Case("channel-of-another-name", other_name_channel, 1, "bundle named 'support-bot'"),
    Case("format-garbage", format_marker(b"\xff\x00garbage"), 1, "holds registry format None"),
    Case("format-array", format_marker(b"[1]"), 1, "holds registry format None"),
    Case("format-string", format_marker(b'{"format":"1"}'), 1, "holds registry format '1'"),
    Case("format-nan", format_marker(b'{"format":NaN}'), 1, "holds registry format None"),
    Case(
        "format-too-large",
        format_marker(b'{"format":1}' + b" " * 2000),
        1,
        "larger than 1024 bytes",
    ),
    Case("pull-then-export", pull_then_export, 0, "support-bot:v1", export=True),
]


def tree(root: Path, skip: set[Path]) -> dict[str, int]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(dirpath, d) not in skip]
        for f in files:
            p = Path(dirpath, f)
            out[str(p)] = p.stat().st_size
    return out


def unsound_blobs(reg: Path) -> list[str]:
    """Blobs in the store that do not hash to their names (must be [])."""
    base = reg / "blobs" / "sha256"
    bad = []
    for p in base.glob("*/*") if base.is_dir() else []:
        if hashlib.sha256(p.read_bytes()).hexdigest() != p.name:
            bad.append(p.name)
    return bad


def rows(reg: Path) -> dict:
    return snapshot(reg)[1]


def check_case(case: Case, b: Path, s3: S3Env, pristine: Pristine, tiny, tmp_path: Path) -> None:  # noqa: ANN001
    from registry.remotes import s3 as s3mod

    add_remote(b, s3)
    if case.seeded:
        add_tiny(b, tiny, "--annotation", "team=b")  # B's own support-bot:v1
    argv = case.build(Ctx(s3, pristine))
    before_rows = rows(b)
    export_to = tmp_path / "export"
    outside = tree(tmp_path, {b, export_to})
    cwd = sorted(os.listdir())

    with pytest.MonkeyPatch.context() as mp:
        for name, value in case.patch.items():
            mp.setattr(s3mod, name, value)
        res = run_cli(*argv, registry=b)

    text = res.err + res.out
    assert "Traceback" not in text and "unexpected" not in text, text
    assert res.code == case.code, (res.code, res.out, res.err)
    lines = res.err.strip().splitlines()
    if case.code:
        assert len(lines) == 1 and lines[0].startswith("error: "), res.err
        assert case.fragment in lines[0], lines[0]
        assert rows(b) == before_rows
    else:
        assert not [ln for ln in lines if ln.startswith("error")], res.err
        assert case.fragment in res.out, res.out
    assert unsound_blobs(b) == []
    assert tree(tmp_path, {b, export_to}) == outside
    assert sorted(os.listdir()) == cwd
    if case.code == 0 and argv[0] == "pull":
        after_pull(b, tiny, export_to if case.export else None)


def after_pull(b: Path, tiny, export_to: Path | None) -> None:  # noqa: ANN001
    """An imported bundle has a sane version (and verifies and exports), and a later add
    still works."""
    listed = json.loads(cli_ok(b, "ls", "--json"))
    versions = [r["version"] for r in listed]
    assert all(1 <= v <= SAFE_VERSION_MAX for v in versions), versions
    assert len(set(versions)) == len(versions)
    if export_to is not None:
        newest = max(listed, key=lambda r: r["version"])
        assert "ok" in cli_ok(b, "verify", newest["tag"])
        cli_ok(b, "export", newest["tag"], export_to)
        assert (export_to / "adapter_model.safetensors").is_file()
    added = add_tiny(b, tiny, "--annotation", f"after={uuid.uuid4().hex}")
    assert added["tag"] == f"support-bot:v{max(versions) + 1}", added
    if export_to is not None:
        assert "ok" in cli_ok(b, "audit", "verify")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_remote(
    case: Case, pristine, hostile: S3Env, make_registry, tiny, tmp_path
) -> None:  # noqa: ANN001
    check_case(case, make_registry("b"), hostile, pristine, tiny, tmp_path)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    "case",
    [
        Case("pg-ref-v-int4+1", version_ref("v2147483648"), 0, "support-bot:v2", seeded=True),
        Case(
            "pg-channel-version-int4", channel_meta("2147483647"), 0, "support-bot:v2", seeded=True
        ),
        Case("pg-ref-v-int64", version_ref("v9223372036854775807"), 0, "support-bot:v1"),
    ],
    ids=lambda c: c.id,
)
def test_hostile_versions_on_postgresql(  # noqa: ANN001
    case: Case, database_url, pristine, hostile: S3Env, make_registry, tiny, tmp_path
) -> None:
    b = make_registry("b", database_url)
    check_case(case, b, hostile, pristine, tiny, tmp_path)
    res = run_cli("show", "support-bot:v2147483648", registry=b)  # past int4, locally
    assert res.code == 2 and "unexpected" not in res.err, res.err
