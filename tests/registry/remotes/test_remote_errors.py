"""An S3 remote that cannot be used says which of the three failures it is, never "empty".

Against real peers on loopback: moto's S3 server (a bucket that does not exist; moto's own
credential check, switched on for one test, refusing keys it does not know), a port with
nothing listening, and a tiny HTTP server that answers 403 AccessDenied to every request
(as S3 does for a bucket policy that denies). Each failure is one line, exit 1, and leaves
the registry unchanged; an existing empty bucket still holds no bundles yet (exit 0).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import run_cli, snapshot
from tests.registry.remotes.conftest import S3Env, add_tiny, cli_ok, free_port

COMMANDS = [
    ["ls", "--remote", "origin"],
    ["ls", "--remote", "origin", "--json"],
    ["push", "support-bot:v1", "--remote", "origin"],
    ["pull", "support-bot:v1", "--remote", "origin"],
]


def registry_with_remote(make_registry, tiny, url: str, endpoint: str) -> Path:  # noqa: ANN001
    reg = make_registry("a")
    add_tiny(reg, tiny)
    cli_ok(reg, "remote", "add", "origin", url, "--endpoint-url", endpoint)
    return reg


def refused(reg: Path, args: list[str], *words: str) -> str:
    """Run a command that must fail with exit 1 and one line naming `words`; the registry
    is left as it was. Returns the line."""
    before = snapshot(reg)
    res = run_cli(*args, registry=reg)
    lines = res.err.strip().splitlines()
    assert res.code == 1, (args, res.code, res.out, res.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, res.err)
    assert "Traceback" not in res.err and res.out == "", (args, res.out)
    for w in words:
        assert w in lines[0], (args, w, lines[0])
    assert "holds no bundles" not in lines[0] and "empty" not in lines[0]
    assert snapshot(reg) == before
    return lines[0]


def test_a_bucket_that_does_not_exist_says_so(make_registry, tiny, s3: S3Env) -> None:
    missing = f"nosuch-{uuid.uuid4().hex[:12]}"
    reg = registry_with_remote(make_registry, tiny, f"s3://{missing}/team", s3.endpoint)
    for args in COMMANDS:
        line = refused(reg, args, f"bucket {missing} does not exist on {s3.endpoint}")
        assert f"aws s3 mb s3://{missing}" in line and "registry remote rm origin" in line
    # The push created nothing on the server either: the registry never creates buckets.
    names = [b["Name"] for b in s3.client.list_buckets()["Buckets"]]
    assert missing not in names


def test_an_endpoint_nobody_answers_cannot_be_reached(make_registry, tiny) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # bound, released: nothing listens there
    reg = registry_with_remote(make_registry, tiny, "s3://some-bucket/team", endpoint)
    for args in COMMANDS:
        t0 = time.perf_counter()
        refused(reg, args, f"cannot reach {endpoint} for s3://some-bucket/team")
        assert time.perf_counter() - t0 < 20, args  # AWS_MAX_ATTEMPTS=2: no minute of retries


def test_an_existing_empty_bucket_holds_no_bundles_yet(make_registry, tiny, s3: S3Env) -> None:
    reg = registry_with_remote(make_registry, tiny, f"s3://{s3.bucket}/team", s3.endpoint)
    res = run_cli("ls", "--remote", "origin", registry=reg)
    assert res.code == 0 and "holds no bundles yet" in res.out, res.err
    assert json.loads(cli_ok(reg, "ls", "--remote", "origin", "--json")) == []
    res = run_cli("pull", "support-bot:v1", "--remote", "origin", registry=reg)
    assert res.code == 1 and "holds no bundles yet" in res.err  # nothing to pull: a failure


@pytest.fixture
def moto_checks_credentials(s3: S3Env) -> Iterator[S3Env]:
    """moto's S3 server authenticates requests (unknown access keys are refused) until the
    test ends. The server is shared by the session, so this is switched back off after."""

    def set_count(value: str) -> None:
        req = urllib.request.Request(
            f"{s3.endpoint}/moto-api/reset-auth",
            data=value.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would leave request.data ""
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    set_count("0")
    try:
        yield s3
    finally:
        set_count("inf")


def test_credentials_the_endpoint_does_not_know_are_refused(
    make_registry, tiny, s3: S3Env, request: pytest.FixtureRequest
) -> None:
    reg = registry_with_remote(make_registry, tiny, f"s3://{s3.bucket}/team", s3.endpoint)
    request.getfixturevalue("moto_checks_credentials")
    for args in COMMANDS:
        line = refused(
            reg, args, f"{s3.endpoint} refused the credentials for s3://{s3.bucket}/team"
        )
        assert "InvalidAccessKeyId" in line and "aws sts get-caller-identity" in line
        assert "testing-secret" not in line


class Forbidding(BaseHTTPRequestHandler):
    """Answers every request 403 AccessDenied, with S3's XML body (none for HEAD)."""

    BODY = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
        b"<Message>Access Denied</Message><RequestId>R</RequestId></Error>"
    )

    def _deny(self, body: bool = True) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.BODY) if body else 0))
        self.end_headers()
        if body:
            self.wfile.write(self.BODY)

    def do_GET(self) -> None:  # noqa: N802
        self._deny()

    def do_PUT(self) -> None:  # noqa: N802
        self._deny()

    def do_POST(self) -> None:  # noqa: N802
        self._deny()

    def do_HEAD(self) -> None:  # noqa: N802
        self._deny(body=False)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def forbidding() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Forbidding)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_endpoint_that_denies_access_refuses_the_credentials(
    make_registry, tiny, forbidding: str
) -> None:
    reg = registry_with_remote(make_registry, tiny, "s3://locked-bucket/team", forbidding)
    for args in COMMANDS:
        line = refused(
            reg, args, f"{forbidding} refused the credentials for s3://locked-bucket/team"
        )
        assert "(AccessDenied)" in line
