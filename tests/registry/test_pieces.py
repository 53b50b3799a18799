"""Tensor-level storage: large safetensors files stored as pieces (docs/design.md, "Pieces").

Real files written with the `safetensors` package (numpy, no torch), a real registry with a
small `[store]` threshold, the real CLI. What a user relies on: export is byte-identical,
a changed tensor costs its own bytes, verify and gc understand the pieces, and a crash
mid-add leaves nothing referenced that is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from gates.tiny.fixed import build_project
from registry.digest import canonical_json
from registry.errors import IntegrityError, InvalidInputError
from registry.pieces import SCHEMA, PieceList, plan
from registry.store import BlobStore

SPLIT = 4096
PIECE = 64 * 1024
STORE_TOML = f"\n[store]\nsplit_above = {SPLIT}\npiece_size = {PIECE}\n"
SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """A small Llama-ish layout: several layers of distinct tensors, one above PIECE."""
    rng = np.random.default_rng(seed)
    out = {"model.embed_tokens.weight": rng.standard_normal((96, 256), dtype=np.float32)}
    for i in range(3):
        for proj in ("q_proj", "k_proj", "v_proj"):
            out[f"model.layers.{i}.self_attn.{proj}.weight"] = rng.standard_normal(
                (64, 64), dtype=np.float32
            )
        out[f"model.layers.{i}.input_layernorm.weight"] = np.ones(64, dtype=np.float32)
    out["model.empty"] = np.zeros((0,), dtype=np.float32)
    return out


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def files(reg_path: Path) -> dict[Path, int]:
    """Every file the store keeps (blobs: whole files and pieces; piece lists), and its size."""
    return {
        p: p.stat().st_size
        for sub in ("sha256", "pieces")
        for p in (reg_path / "blobs" / sub).rglob("*")
        if p.is_file()
    }


def on_disk(reg_path: Path) -> int:
    return sum(files(reg_path).values())


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    """The fixed tiny project with a 100 KB base model written by safetensors."""
    paths = build_project(tmp_path / "proj")
    save_file(tensors(), paths["base"] / "model.safetensors")
    return paths


@pytest.fixture
def pieced(reg_path: Path) -> Path:
    """The test registry with `[store]` set to split files above 4 KiB into 64 KiB pieces."""
    with open(reg_path / "registry.toml", "a", encoding="utf-8") as f:
        f.write(STORE_TOML)
    return reg_path


def add_args(p: dict[str, Path], name: str = "big") -> list[str]:
    return [
        "add", name, "--base", str(p["base"]), "--adapter", str(p["adapter"]),
        "--tokenizer", str(p["tokenizer"]), "--chat-template", str(p["chat_template"]),
        "--dataset", str(p["dataset"]), "--config", str(p["config"]),
    ]  # fmt: skip


def model_digest(cli, ref: str) -> str:  # noqa: ANN001
    info = json.loads(cli("show", ref, "--json").out)
    (f,) = [
        f for f in info["components"]["base_model"]["files"] if f["path"] == "model.safetensors"
    ]
    return f["digest"]


def test_pieced_add_exports_byte_identical(cli, pieced, project, tmp_path) -> None:  # noqa: ANN001
    res = cli(*add_args(project))
    assert res.code == 0, res.err
    src = project["base"] / "model.safetensors"
    digest = model_digest(cli, "big:v1")
    assert digest == sha256(src)  # manifests see the whole file
    store = BlobStore(pieced)
    pl = store.piece_list(digest)
    assert pl is not None and not store.path(digest).exists()
    assert pl.size == src.stat().st_size and len(pl.pieces) > 10
    assert cli("export", "big:v1", tmp_path / "out").code == 0
    out = tmp_path / "out" / "base" / "model.safetensors"
    assert out.read_bytes() == src.read_bytes()
    assert cli("verify", "--all").code == 0
    small = project["adapter"] / "adapter_model.safetensors"  # below the threshold: whole
    assert store.path(sha256(small)).exists() and store.piece_list(sha256(small)) is None
    show = cli("show", "big:v1").out
    assert " logical, " in show and " stored" in show
    info = json.loads(cli("show", "big:v1", "--json").out)
    du = json.loads(cli("du", "--json").out)
    (row,) = du["bundles"]
    assert row["logical"] == info["size"] and row["stored"] == row["unique"] == info["stored"]
    # one bundle: it stores its files once each, plus the piece list, minus pieces it
    # holds twice (the three identical layernorm weights)
    listed = store.pieces_path(digest).stat().st_size
    twice = pl.size - sum({p.digest: p.size for p in pl.pieces}.values())
    assert twice == 2 * 64 * 4 and info["stored"] == info["size"] + listed - twice
    assert du["total"]["referenced"] == info["stored"] <= du["total"]["on_disk"]


@SQLITE
def test_a_changed_tensor_costs_only_its_own_bytes(cli, pieced, project) -> None:  # noqa: ANN001
    assert cli(*add_args(project)).code == 0
    before = files(pieced)
    merged = tensors()
    name = "model.layers.1.self_attn.v_proj.weight"
    merged[name] = merged[name] + np.float32(0.001)
    save_file(merged, project["base"] / "model.safetensors")
    assert cli(*add_args(project)).code == 0
    new = {p: n for p, n in files(pieced).items() if p not in before}
    store = BlobStore(pieced)
    pl = store.piece_list(model_digest(cli, "big:v2"))
    assert pl is not None
    listed = store.pieces_path(pl.digest)
    blobs = {p: n for p, n in new.items() if p != listed}
    # what is new: the changed tensor's one piece, its piece list, and two manifests (the
    # base_model component and the bundle); the header is the same piece as before
    assert listed in new and len(blobs) == 3
    pieces = {store.path(d.digest) for d in pl.pieces}
    assert [n for p, n in blobs.items() if p in pieces] == [merged[name].nbytes]
    assert sum(n for p, n in blobs.items() if p not in pieces) < 2048  # the two manifests
    export_a, export_b = model_digest(cli, "big:v1"), model_digest(cli, "big:v2")
    assert export_a != export_b
    du = json.loads(cli("du", "--json").out)
    total = du["total"]
    assert total["bundles"] == 2 and total["logical"] == sum(b["logical"] for b in du["bundles"])
    assert total["referenced"] < total["logical"] and total["saving"] > 0.9 * total["logical"] / 2
    assert total["on_disk"] >= total["referenced"]
    v2 = next(b for b in du["bundles"] if b["tag"] == "big:v2")
    assert v2["stored"] == v2["unique"] + v2["shared"]
    assert v2["unique"] == merged[name].nbytes + new[listed]  # its tensor and its list
    one = json.loads(cli("du", "big:v2", "--json").out)
    assert [b["tag"] for b in one["bundles"]] == ["big:v2"] and one["bundles"][0] == v2
    text = cli("du").out
    assert "big:v1" in text and "store:" in text and "saving" in text


@SQLITE
def test_a_changed_header_costs_the_header_piece_too(cli, pieced, project) -> None:  # noqa: ANN001
    assert cli(*add_args(project)).code == 0
    before = on_disk(pieced)
    changed = tensors()
    changed["model.layers.0.input_layernorm.weight"] = np.ones(64, dtype=np.float64)  # dtype
    save_file(changed, project["base"] / "model.safetensors")
    assert cli(*add_args(project)).code == 0
    header = 8 + int.from_bytes((project["base"] / "model.safetensors").read_bytes()[:8], "little")
    grew = on_disk(pieced) - before
    assert grew <= 64 * 8 + header + 1024 + 2048


def test_plan_splits_at_tensor_boundaries_and_large_tensors_in_pieces(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "m.safetensors"
    t = tensors()
    save_file(t, path)
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    fd = os.open(path, os.O_RDONLY)
    try:
        ranges = plan(fd, len(data), PIECE)
    finally:
        os.close(fd)
    assert ranges is not None
    assert ranges[0] == (0, header_end)
    assert sum(n for _, n in ranges) == len(data)
    assert all(o + n == o2 for (o, n), (o2, _) in zip(ranges, ranges[1:], strict=False))
    embed = t["model.embed_tokens.weight"].nbytes  # 96 KiB: one 64 KiB piece and the rest
    assert (PIECE in [n for _, n in ranges]) and (embed - PIECE in [n for _, n in ranges])
    assert all(0 < n <= PIECE for _, n in ranges)  # the empty tensor makes no piece
    assert len(ranges) == 1 + 2 + 3 * 4


def test_invalid_or_non_tiling_files_are_stored_whole(tmp_path) -> None:  # noqa: ANN001
    store = BlobStore(tmp_path / "reg")
    store.init()
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(20_000))
    good = tmp_path / "good.safetensors"
    save_file(tensors(), good)
    raw = good.read_bytes()
    gap = tmp_path / "gap.safetensors"  # one byte between two tensors' data
    head = json.dumps({
        "a": {"dtype": "U8", "shape": [3000], "data_offsets": [0, 3000]},
        "b": {"dtype": "U8", "shape": [3000], "data_offsets": [3001, 6001]},
    }).encode()  # fmt: skip
    gap.write_bytes(len(head).to_bytes(8, "little") + head + os.urandom(6001))
    trailing = tmp_path / "trailing.safetensors"  # bytes after the last tensor
    trailing.write_bytes(raw + b"\0" * 16)
    for path in (junk, gap, trailing):
        desc = store.put_file(path, split_above=SPLIT, piece_size=PIECE)
        assert desc.digest == sha256(path)
        assert store.path(desc.digest).exists() and store.piece_list(desc.digest) is None, path
    # and a valid one is stored whole below the threshold, or when splitting is off
    for kwargs in ({"split_above": len(raw)}, {}):
        other = tmp_path / f"good{len(kwargs)}.safetensors"
        other.write_bytes(raw + b"")  # same bytes: one blob either way
        desc = store.put_file(other, piece_size=PIECE, **kwargs)
        assert store.piece_list(desc.digest) is None
    assert store.put_file(good, split_above=SPLIT, piece_size=PIECE).digest == sha256(good)


def test_store_reads_a_pieced_file_as_the_whole(tmp_path) -> None:  # noqa: ANN001
    store = BlobStore(tmp_path / "reg")
    store.init()
    src = tmp_path / "m.safetensors"
    save_file(tensors(), src)
    data = src.read_bytes()
    seen: list[int] = []
    desc = store.put_file(src, split_above=SPLIT, piece_size=PIECE, progress=seen.append)
    assert sum(seen) == len(data) and desc.digest == sha256(src)
    assert store.has(desc.digest) and store.has(desc.digest, len(data))
    assert not store.has(desc.digest, len(data) + 1)
    assert store.size_of(desc.digest) == len(data)
    assert store.read_bytes(desc.digest) == data
    with store.open_stream(desc.digest) as f:
        assert f.seekable() and f.read() == data
        f.seek(1000)
        assert f.tell() == 1000 and f.read(70_000) == data[1000:71_000]
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
        buf = bytearray(5000)
        f.seek(PIECE - 100)
        assert f.readinto(buf) == 5000 and bytes(buf) == data[PIECE - 100 : PIECE + 4900]
    assert store.check(desc.digest, len(data)) is None
    # a second put of the same file writes nothing new and keeps the same list
    listing = sorted(store.root.rglob("*"))
    assert store.put_file(src, split_above=SPLIT, piece_size=PIECE) == desc
    assert sorted(store.root.rglob("*")) == listing
    missing = "sha256:" + "0" * 64
    assert not store.has(missing) and store.check(missing, None) == "missing"
    with pytest.raises(IntegrityError, match="missing"):
        store.open_stream(missing)


def test_export_falls_back_to_user_space_and_refuses_a_short_piece(tmp_path, monkeypatch) -> None:  # noqa: ANN001, E501
    import errno

    def cross_device(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cross_device)
    store = BlobStore(tmp_path / "reg")
    store.init()
    src = tmp_path / "m.safetensors"
    save_file(tensors(), src)
    desc = store.put_file(src, split_above=SPLIT, piece_size=PIECE)
    store.copy_out(desc.digest, desc.size, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == src.read_bytes()
    piece = _a_piece(store, desc.digest, 1)
    os.chmod(piece, 0o644)
    piece.write_bytes(piece.read_bytes()[:-1])
    with pytest.raises(IntegrityError, match=desc.digest):
        store.copy_out(desc.digest, desc.size, tmp_path / "again")
    assert not (tmp_path / "again").exists()
    assert list(tmp_path.glob(".again*")) == []
    assert "size" in (store.check(desc.digest, desc.size) or "")


def test_a_file_that_shrinks_while_it_is_stored_leaves_no_list_and_no_temp(
    tmp_path,
    monkeypatch,  # noqa: ANN001
) -> None:
    import registry.store as store_mod

    store = BlobStore(tmp_path / "reg")
    store.init()
    src = tmp_path / "m.safetensors"
    save_file(tensors(), src)

    def plan_then_truncate(fd: int, size: int, piece_size: int) -> list[tuple[int, int]] | None:
        ranges = plan(fd, size, piece_size)
        os.truncate(src, size // 2)  # another process rewrites the file meanwhile
        return ranges

    monkeypatch.setattr(store_mod, "plan", plan_then_truncate)
    with pytest.raises(InvalidInputError, match="changed while it was being stored"):
        store.put_file(src, split_above=SPLIT, piece_size=PIECE)
    assert list(store.iter_piece_lists()) == []
    assert list((store.root / "tmp").iterdir()) == []
    # the pieces stored before the short one are whole, named by their bytes
    for digest in store.iter_digests():
        assert store.check(digest, None) is None


def test_piece_list_refuses_what_is_not_one() -> None:
    d = "sha256:" + "a" * 64
    p = {"digest": "sha256:" + "b" * 64, "size": 10}
    good = {"schema": SCHEMA, "digest": d, "size": 10, "pieces": [p]}
    pl = PieceList.from_bytes(canonical_json(good), d)
    assert pl.to_bytes() == canonical_json(good) and pl.pieces[0].size == 10
    cases = {
        "names another file": ({**good, "digest": "sha256:" + "c" * 64}, d),
        "schema": ({**good, "schema": "lora-registry/pieces/v9"}, d),
        "do not add up": ({**good, "size": 11}, d),
        "malformed piece": ({**good, "pieces": [{"digest": "sha256:xyz", "size": 10}]}, d),
        "malformed piece ": ({**good, "pieces": [{**p, "size": -1}]}, d),
        "invalid size": ({**good, "size": -1}, d),
        "wrong keys": ({**good, "extra": 1}, d),
    }
    for why, (obj, digest) in cases.items():
        with pytest.raises(IntegrityError, match=why.strip()):
            PieceList.from_bytes(canonical_json(obj), digest)
    with pytest.raises(IntegrityError, match="unreadable"):
        PieceList.from_bytes(b"{not json", d)


def _a_piece(store: BlobStore, digest: str, index: int = 3) -> Path:
    pl = store.piece_list(digest)
    assert pl is not None
    return store.path(pl.pieces[index].digest)


@SQLITE
def test_verify_finds_a_corrupt_and_a_missing_piece(cli, pieced, project, tmp_path) -> None:  # noqa: ANN001
    assert cli(*add_args(project)).code == 0
    digest = model_digest(cli, "big:v1")
    store = BlobStore(pieced)
    piece = _a_piece(store, digest)
    os.chmod(piece, 0o644)
    data = bytearray(piece.read_bytes())
    data[7] ^= 0x40
    piece.write_bytes(bytes(data))
    for args in (["verify", "--all"], ["verify", "big:v1"]):
        res = cli(*args)
        assert res.code == 1, res.out
        assert f"piece sha256:{piece.name} corrupt" in res.out + res.err
        assert "base_model/model.safetensors" in res.out + res.err
    with pytest.raises(IntegrityError, match=digest):
        store.copy_out(digest, store.size_of(digest) or 0, tmp_path / "x" / "m.safetensors")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    res = cli("export", "big:v1", tmp_path / "out")
    assert res.code == 1 and digest in res.err, res.err
    assert not (tmp_path / "out" / "base" / "model.safetensors").exists()
    piece.unlink()
    res = cli("verify", "--all")
    assert res.code == 1
    assert f"piece sha256:{piece.name} missing" in res.out + res.err
    assert "base_model/model.safetensors" in res.out + res.err
    assert not store.has(digest) and "missing" in (store.check(digest, None, rehash=False) or "")
    again = cli(*add_args(project))  # adding the file again restores the piece
    assert again.code == 0, again.err
    assert store.has(digest) and cli("verify", "--all").code == 0


@SQLITE
def test_verify_hashes_a_shared_piece_once_but_every_whole_file(cli, pieced, project) -> None:  # noqa: ANN001
    assert cli(*add_args(project)).code == 0
    merged = tensors()
    merged["model.layers.2.self_attn.q_proj.weight"] *= 2
    save_file(merged, project["base"] / "model.safetensors")
    assert cli(*add_args(project)).code == 0
    store = BlobStore(pieced)
    a, b = model_digest(cli, "big:v1"), model_digest(cli, "big:v2")
    memo: dict[str, str | None] = {}
    assert store.check(a, None, memo=memo) is None
    hashed = set(memo)
    assert store.check(b, None, memo=memo) is None
    pl_b = store.piece_list(b)
    assert pl_b is not None
    assert set(memo) - hashed == {p.digest for p in pl_b.pieces} - hashed  # only b's own
    # a piece list naming sound pieces of another file is caught by the whole-file hash
    pl_a = store.piece_list(a)
    assert pl_a is not None
    path = store.pieces_path(b)
    os.chmod(path, 0o644)
    path.write_bytes(PieceList(b, pl_a.size, pl_a.pieces).to_bytes())
    assert "corrupt" in (store.check(b, None, memo=memo) or "")
    res = cli("verify", "--all")
    assert res.code == 1 and "big:v2" in res.out


@SQLITE
def test_gc_keeps_pieces_of_reachable_files_and_removes_unreferenced_ones(
    cli, pieced, project, tmp_path
) -> None:  # noqa: ANN001
    assert cli(*add_args(project)).code == 0
    kept = model_digest(cli, "big:v1")
    store = BlobStore(pieced)
    # a pieced file no bundle references (an add that never committed its rows), sharing
    # all but one tensor with the reachable one
    other = tensors()
    other["model.layers.0.self_attn.k_proj.weight"] *= 3
    orphan_src = tmp_path / "orphan.safetensors"
    save_file(other, orphan_src)
    orphan = store.put_file(orphan_src, split_above=SPLIT, piece_size=PIECE).digest
    pl_kept, pl_orphan = store.piece_list(kept), store.piece_list(orphan)
    assert pl_kept is not None and pl_orphan is not None
    own = {p.digest for p in pl_orphan.pieces} - {p.digest for p in pl_kept.pieces}
    assert len(own) == 1
    res = json.loads(cli("gc", "--json").out)  # within the grace: nothing goes
    assert res["removed"] == [] and store.piece_list(orphan) is not None
    res = json.loads(cli("gc", "--grace", "0", "--force", "--reason", "test", "--json").out)
    assert set(res["removed"]) == {orphan} | own and res["piece_lists_removed"] == 1
    assert store.piece_list(orphan) is None and not store.has(orphan)
    assert all(store.path(p.digest).exists() for p in pl_kept.pieces)
    assert cli("verify", "--all").code == 0
    assert cli("export", "big:v1", tmp_path / "out").code == 0
    assert sha256(tmp_path / "out" / "base" / "model.safetensors") == kept
    text = cli("gc", "--grace", "0", "--force", "--reason", "test").out
    assert "removed 0 blobs" in text


@SQLITE
def test_sigkill_during_a_pieced_add_references_nothing_missing(cli, pieced, project) -> None:  # noqa: ANN001
    # a file large enough that the add is still writing pieces when it is killed
    rng = np.random.default_rng(1)
    big = {
        f"layer.{i}.weight": rng.standard_normal((256, 1024), dtype=np.float32) for i in range(64)
    }
    save_file(big, project["base"] / "model.safetensors")  # 64 MiB in 1 MiB tensors
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "--registry", str(pieced), *add_args(project)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    sha = pieced / "blobs" / "sha256"
    deadline = time.time() + 60
    killed = False
    while time.time() < deadline and proc.poll() is None:
        if sha.exists() and sum(1 for p in sha.rglob("*") if p.is_file()) > 20:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    proc.wait()
    assert killed, "add finished before it could be killed mid-file"
    assert json.loads(cli("ls", "--json").out) == []
    store = BlobStore(pieced)
    # killed among the model's pieces: some are stored, the list that would name them is not
    assert list(store.iter_piece_lists()) == []
    assert sum(1 for p in sha.rglob("*") if p.is_file()) > 20
    assert cli("verify", "--all").code == 0
    again = cli(*add_args(project))
    assert again.code == 0, again.err
    assert cli("verify", "--all").code == 0
    digest = model_digest(cli, "big:v1")
    assert store.piece_list(digest) is not None
    assert digest == sha256(project["base"] / "model.safetensors")


@SQLITE
@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('split_above = "big"', "split_above must be a number of bytes"),
        ("split_above = -1", "split_above must be a number of bytes"),
        ("piece_size = 10", "piece_size must be a number of bytes of at least 65536"),
        ("piece_size = true", "piece_size must be a number of bytes"),
        ("split = 1", "unknown key 'split'"),
    ],
)
def test_bad_store_settings_are_refused(cli, reg_path, table, message) -> None:  # noqa: ANN001
    with open(reg_path / "registry.toml", "a", encoding="utf-8") as f:
        f.write(f"\n[store]\n{table}\n")
    res = cli("ls")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.err


@SQLITE
def test_split_above_false_stores_whole_and_zero_is_the_default(cli, reg_path, project) -> None:  # noqa: ANN001
    from registry.config import load
    from registry.pieces import PIECE_SIZE, SPLIT_ABOVE

    toml = reg_path / "registry.toml"
    base = toml.read_text()
    toml.write_text(base + "\n[store]\nsplit_above = 0\n")
    assert (load(reg_path).split_above, load(reg_path).piece_size) == (SPLIT_ABOVE, PIECE_SIZE)
    toml.write_text(base + "\n[store]\nsplit_above = false\n")
    assert load(reg_path).split_above is None
    # with splitting off, even a file above the 4 KiB a test would use is stored whole
    assert cli(*add_args(project)).code == 0
    digest = model_digest(cli, "big:v1")
    assert BlobStore(reg_path).path(digest).exists()
    assert not any((reg_path / "blobs" / "pieces").rglob("*"))
