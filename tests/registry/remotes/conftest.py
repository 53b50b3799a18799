"""Fixtures for remotes: a real S3 endpoint (moto's server mode) and a Hub-compatible test
server, both on 127.0.0.1; a TCP proxy that can throttle or cut the network; registries.

The S3 server runs in this process (ThreadedMotoServer), so its state outlives a cut
connection or a killed client, as a real bucket's would. Credentials are fake and the
user's ~/.aws is never read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import add_args, run_cli

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-never-printed",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_MAX_ATTEMPTS": "2",  # a cut network fails fast instead of retrying for a minute
}


def _register_commands() -> None:
    """Wire remote/push/pull into the CLI app (cli.py does this once the lead merges it)."""
    from cli.app import app
    from cli.commands import remote

    remote.register(app)


_register_commands()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def aws_env() -> Iterator[dict[str, str]]:
    old = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    os.environ.pop("AWS_PROFILE", None)
    yield AWS_ENV
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def moto_server(aws_env: dict[str, str]) -> Iterator[str]:
    """moto's S3 in server mode on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@dataclass
class S3Env:
    endpoint: str
    bucket: str
    client: Any

    def keys(self, prefix: str = "") -> dict[str, int]:
        out = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
        return out

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()


@pytest.fixture
def s3(moto_server: str) -> S3Env:
    """A fresh bucket on the loopback S3 server (a client that bypasses any proxy)."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    bucket = f"reg-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3Env(moto_server, bucket, client)


class Proxy:
    """A TCP forwarder in front of a server: counts bytes, can throttle, can cut.

    `cut()` drops every open connection and answers new ones by closing them, as a dead
    network link would; `restore()` brings it back. `cut_after(n)` cuts once `n` bytes
    have gone upstream (client to server); `cut_after_down(n)` once `n` came back.
    """

    def __init__(self, upstream_port: int, rate: float | None = None) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.rate = rate  # bytes per second per direction, None = unthrottled
        self.up = 0
        self.down = 0
        self._cut = False
        self._cut_at_up: int | None = None
        self._cut_at_down: int | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._stop = False
        # mangle(data, upstream) -> data: rewrites bytes in flight (see flip_once)
        self.mangle: Callable[[bytes, bool], bytes] | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, n: int) -> None:
        self._cut_at_up = self.up + n

    def cut_after_down(self, n: int) -> None:
        self._cut_at_down = self.down + n

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            conns, self._conns = list(self._conns), set()
        for c in conns:
            _reset(c)

    def restore(self) -> None:
        with self._lock:
            self._cut = False
            self._cut_at_up = self._cut_at_down = None

    @property
    def is_cut(self) -> bool:
        return self._cut

    def close(self) -> None:
        self._stop = True
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.rate:
                    time.sleep(len(data) / self.rate)
                if self._cut:
                    break
                if self.mangle is not None:
                    data = self.mangle(data, upstream)
                dst.sendall(data)
                with self._lock:
                    if upstream:
                        self.up += len(data)
                        trip = self._cut_at_up is not None and self.up >= self._cut_at_up
                    else:
                        self.down += len(data)
                        trip = self._cut_at_down is not None and self.down >= self._cut_at_down
                if trip:
                    self.cut()
                    break
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


def _reset(sock: socket.socket) -> None:
    """Drop a connection with a reset, waking any thread blocked reading it (a bare
    close() would not, and the peer would wait for its read timeout instead)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def cut_when(proxy: Proxy, ready: Callable[[], bool], timeout: float = 60) -> threading.Thread:
    """Cut the proxy's network as soon as `ready()` holds (polled every 5 ms)."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.005)
        proxy.cut()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def proxy(moto_server: str) -> Iterator[Proxy]:
    p = Proxy(int(moto_server.rsplit(":", 1)[1]))
    yield p
    p.close()


def flip_once(marker: bytes, *, upstream: bool) -> Callable[[bytes, bool], bytes]:
    """A Proxy.mangle that flips one byte of the first `marker` seen going one way (up:
    client to server), once: a corrupted body in flight, never a header (the marker is
    a run of bytes only a test file's content holds)."""
    done = threading.Event()
    lock = threading.Lock()

    def mangle(data: bytes, up: bool) -> bytes:
        if up != upstream or done.is_set():
            return data
        with lock:
            at = data.find(marker)
            if at < 0 or done.is_set():
                return data
            done.set()
            return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]

    return mangle


class ChecksumCheck:
    """WSGI middleware that refuses a PUT whose body does not match the x-amz-checksum-crc32
    / -sha256 header it carries (400 BadDigest), as S3 does. moto's server stores those
    checksums without checking them; in front of it this makes corruption in flight
    visible. Only plain (non-aws-chunked) bodies are checked: botocore sends those over
    http."""

    ALGOS = {"HTTP_X_AMZ_CHECKSUM_CRC32": "CRC32", "HTTP_X_AMZ_CHECKSUM_SHA256": "SHA256"}

    def __init__(self, app: Any) -> None:
        self.app = app
        self.refused = 0
        self.seen: list[tuple[str, str]] = []  # (path, algorithm) of every body checked

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        import base64
        import hashlib
        import io
        import zlib

        wanted = [(h, a) for h, a in self.ALGOS.items() if h in environ]
        if environ.get("REQUEST_METHOD") == "PUT" and wanted:
            n = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(n) if n else b""
            environ["wsgi.input"] = io.BytesIO(body)
            for header, algo in wanted:
                self.seen.append((environ.get("PATH_INFO", ""), algo))
                raw = (
                    zlib.crc32(body).to_bytes(4, "big")
                    if algo == "CRC32"
                    else hashlib.sha256(body).digest()
                )
                if base64.b64encode(raw).decode() != environ[header]:
                    self.refused += 1
                    msg = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>BadDigest"
                           f"</Code><Message>The {algo} you specified did not match the"
                           " calculated checksum.</Message></Error>").encode()  # fmt: skip
                    start_response("400 Bad Request", [("Content-Type", "application/xml"),
                                                       ("Content-Length", str(len(msg)))])  # fmt: skip
                    return [msg]
        return self.app(environ, start_response)


@pytest.fixture(scope="session")
def checking_s3(moto_server: str) -> Iterator[tuple[str, ChecksumCheck]]:
    """A second endpoint onto the same in-process moto state (buckets made through
    `s3` are there) that checks body checksums like S3: yields (url, middleware)."""
    from moto.moto_server.threaded_moto_server import MotoRequestHandler
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    check = ChecksumCheck(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", free_port(), check, True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", check
    server.shutdown()


@pytest.fixture(scope="module")
def moto_process(aws_env: dict[str, str]) -> Iterator[str]:
    """moto's S3 server in its own process (its memory is not this process's): yields
    its endpoint URL. For tests that measure the client's memory."""
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(400):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- registries ---------------------------------------------------------------------------


@pytest.fixture
def make_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """`make_registry("a", database_url=None)` -> path of a new, initialized registry."""
    from registry.repo import Registry

    monkeypatch.delenv("REGISTRY_HOME", raising=False)
    monkeypatch.delenv("REGISTRY_DATABASE_URL", raising=False)
    monkeypatch.setenv("REGISTRY_ACTOR", "tester")

    def make(name: str, database_url: str | None = None) -> Path:
        path = tmp_path / name
        Registry.init(path, database_url).close()
        return path

    return make


def cli_ok(reg: Path, *args: str | Path) -> str:
    """Run a command that must succeed; returns its stdout."""
    res = run_cli(*args, registry=reg)
    assert res.code == 0, f"registry {' '.join(map(str, args))}: {res.err}{res.out}"
    return res.out


def add_tiny(reg: Path, tiny: dict[str, Path], *extra: str, name: str = "support-bot") -> dict:
    """`registry add` the tiny project; returns {"digest", "tag", "created"}."""
    return json.loads(cli_ok(reg, *add_args(tiny, name), *extra, "--json"))


def write_safetensors(path: Path, size: int, seed: int) -> None:
    """A valid safetensors file holding one U8 tensor of `size` pseudo-random bytes."""
    import random

    header = json.dumps({"x": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
    raw = header.encode() + b" " * (-len(header) % 8)
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rnd.randbytes(n))
            left -= n


def big_base(tiny: dict[str, Path], dest: Path, sizes: list[int], seed: int = 1) -> Path:
    """The tiny base model plus extra safetensors shards of the given sizes."""
    shutil.copytree(tiny["base"], dest)
    for i, size in enumerate(sizes):
        write_safetensors(dest / f"extra-{i:05d}.safetensors", size, seed + i)
    return dest


def add_big(reg: Path, tiny: dict[str, Path], base: Path, *extra: str) -> dict:
    args = add_args(tiny)
    args[args.index("--base") + 1] = str(base)
    return json.loads(cli_ok(reg, *args, *extra, "--json"))


def remote_consistency(s3: S3Env, prefix: str = "") -> list[str]:
    """Problems with a remote: every ref must reach a complete bundle (empty = consistent)."""
    from registry.digest import sha256_bytes
    from registry.manifest import BundleManifest, ComponentManifest

    pre = f"{prefix}/" if prefix else ""
    keys = s3.keys(pre)
    problems = []

    def blob(d: str) -> str:
        return f"{pre}blobs/sha256/{d.split(':', 1)[1]}"

    for key in keys:
        if not key.startswith(f"{pre}refs/"):
            continue
        digest = s3.get(key).decode().strip()
        if blob(digest) not in keys:
            problems.append(f"{key} -> missing bundle manifest")
            continue
        data = s3.get(blob(digest))
        assert sha256_bytes(data) == digest
        bundle = BundleManifest.from_bytes(data)
        for kind, desc in bundle.components.items():
            if keys.get(blob(desc.digest)) != desc.size:
                problems.append(f"{key} -> missing {kind} manifest")
                continue
            comp = ComponentManifest.from_bytes(s3.get(blob(desc.digest)))
            if comp.external:
                continue
            for f in comp.files:
                if keys.get(blob(f.digest)) == f.size:
                    continue
                listed = f"{pre}pieces/{f.digest.split(':', 1)[1]}"  # stored as pieces
                if listed not in keys:
                    problems.append(f"{key} -> missing {kind}/{f.path}")
                    continue
                pieces = json.loads(s3.get(listed))["pieces"]
                if sum(p["size"] for p in pieces) != f.size or any(
                    keys.get(blob(p["digest"])) != p["size"] for p in pieces
                ):
                    problems.append(f"{key} -> missing a piece of {kind}/{f.path}")
    return problems


# --- the Hub ------------------------------------------------------------------------------

HF_TEST_TOKEN = "hf_test_token_never_printed"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The Hub-compatible test server; the real huggingface_hub client pointed at it.

    HF_ENDPOINT points the client here; HF_HUB_DISABLE_XET=1 makes it upload through LFS
    (with hf_xet installed it would use Xet only). huggingface_hub reads both when it is
    imported, so the module constants are set too, for a client imported earlier.
    """
    import huggingface_hub.constants as hf_constants

    from tests.registry.remotes.hubserver import HubServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = HubServer(token=HF_TEST_TOKEN).start()
    cache = tmp_path / "hf-home"
    env = {"HF_ENDPOINT": server.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": HF_TEST_TOKEN,
           "HF_HOME": str(cache), "HF_HUB_CACHE": str(cache / "hub"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
        server.url + "/{repo_id}/resolve/{revision}/{filename}",
    )  # fmt: skip
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HOME", str(cache))
    import huggingface_hub.hf_api as hf_api

    monkeypatch.setattr(hf_api.api, "endpoint", server.url)  # file_exists() & co. use it
    yield server
    server.stop()
