"""The blob store: write-once, atomic, verified; the stat cache; crash safety under SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry.store import BlobStore
from tests.conftest import add_args


def test_put_file_hashes_while_copying_and_is_read_only(tmp_path: Path) -> None:
    import hashlib

    store = BlobStore(tmp_path)
    store.init()
    src = tmp_path / "big.bin"
    data = os.urandom(3 * 8 * 1024 * 1024 + 12345)  # several chunks, ragged end
    src.write_bytes(data)
    desc = store.put_file(src)
    assert desc.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert desc.size == len(data)
    path = store.path(desc.digest)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.put_file(src) == desc  # idempotent
    assert list(store.tmp.iterdir()) == []  # no temp file left behind
    assert store.check(desc.digest, desc.size) is None


def test_stat_cache_skips_rehash_of_unchanged_files(reg, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from registry import bundles, copying, statcache, store

    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(1 << 20))
    old = time.time() - 10
    os.utime(src, (old, old))  # outside the racy window
    desc = bundles.store_file(reg, src)

    def boom(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("file was read again")

    for module in (copying, store):  # every way the store reads a file's bytes
        for fn in ("copy_hashed", "hash_fd"):
            monkeypatch.setattr(module, fn, boom)
    monkeypatch.setattr(copying, "kernel_copy_and_hash", boom)
    monkeypatch.setattr(copying, "copy_and_hash", boom)
    assert bundles.store_file(reg, src) == desc
    src.write_bytes(os.urandom(1 << 20))  # changed: must be read again
    monkeypatch.undo()
    assert bundles.store_file(reg, src) != desc
    assert statcache.RACY_NS > 0


def test_racy_fresh_file_is_not_cached(reg, tmp_path) -> None:  # noqa: ANN001
    from registry import bundles

    src = tmp_path / "fresh.bin"
    src.write_bytes(b"x" * 100)
    bundles.store_file(reg, src)
    assert reg.statcache.get(src) is None


def big_safetensors(path: Path, size: int) -> None:
    """A valid safetensors file of `size` data bytes (sparse, so it costs no disk to make)."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + size)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sigkill_during_add_leaves_registry_consistent(cli, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    import shutil

    base = tmp_path / "bigbase"
    shutil.copytree(tiny["base"], base)
    big_safetensors(base / "model-extra.safetensors", 1 << 30)
    with open(reg_path / "registry.toml", "a", encoding="utf-8") as f:
        f.write("[store]\nsplit_above = false\n")  # the whole-file path (pieces: test_pieces)
    args = add_args(tiny)
    args[args.index("--base") + 1] = str(base)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "--registry", str(reg_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    tmpdir = reg_path / "blobs" / "tmp"
    deadline = time.time() + 60
    killed = False
    while time.time() < deadline and proc.poll() is None:
        sizes = _sizes(tmpdir)  # temp files of small blobs come and go meanwhile
        if any(s > 64 << 20 for s in sizes):
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait()
    assert killed, "add finished before it could be killed mid-file"
    assert any(tmpdir.iterdir())  # the half-written temp file is there...
    assert json.loads(cli("ls", "--json").out) == []  # ...but nothing references it
    res = cli("verify", "--all")
    assert res.code == 0, res.out
    again = cli(*args)
    assert again.code == 0, again.err
    assert cli("verify", "--all").code == 0
    assert cli("gc", "--grace", "0", "--force", "--reason", "test").out.count("temp files") == 1
    assert not any(tmpdir.iterdir())


def test_falls_back_to_user_space_copy_across_filesystems(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import errno
    import hashlib

    def cross_device(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cross_device)
    store = BlobStore(tmp_path)
    store.init()
    data = os.urandom(9 * 1024 * 1024 + 7)
    (tmp_path / "src").write_bytes(data)
    desc = store.put_file(tmp_path / "src")
    assert desc.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.path(desc.digest).read_bytes() == data
    out = tmp_path / "out.bin"
    store.copy_out(desc.digest, desc.size, out)
    assert out.read_bytes() == data


def test_copy_out_refuses_a_corrupt_blob(tmp_path) -> None:  # noqa: ANN001
    from registry.errors import IntegrityError

    store = BlobStore(tmp_path)
    store.init()
    desc = store.put_bytes(b"hello world")
    path = store.path(desc.digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"hello w0rld")
    with pytest.raises(IntegrityError, match="corrupt"):
        store.copy_out(desc.digest, desc.size, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _sizes(directory: Path) -> list[int]:
    """Sizes of the files in `directory` now, skipping any renamed away while listed."""
    out = []
    for p in directory.iterdir() if directory.exists() else []:
        try:
            out.append(p.stat().st_size)
        except FileNotFoundError:
            continue
    return out
