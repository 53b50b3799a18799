"""Bad input: one clear line, the documented exit code, no traceback, and the registry
exactly as it was (same rows, same blobs). One test per case."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from tests.conftest import add_args, run_cli


def snapshot(reg_path: Path) -> tuple:
    """Every stored blob and every database row: what must not change."""
    from registry.repo import Registry

    blobs = sorted(str(p.relative_to(reg_path)) for p in (reg_path / "blobs").rglob("*") if p.is_file())
    reg = Registry.open(reg_path)
    with reg.db.read() as conn:
        tables = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").all()
                  for t in ("bundle", "bundle_component", "channel", "event", "gate_run", "setting")}
    reg.close()
    return blobs, tables


@pytest.fixture
def seeded(cli, tiny):  # noqa: ANN001, ANN201
    """A registry holding one bundle, so 'unchanged' is a real claim."""
    assert cli(*add_args(tiny)).code == 0
    return cli


def copy(src: Path, tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(src, dest)
    return dest


def expect_refused(cli, reg_path: Path, args: list, code: int, message: str) -> None:  # noqa: ANN001
    before = snapshot(reg_path)
    res = cli(*args)
    assert res.code == code, (res.code, res.out, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.err
    assert "Traceback" not in res.err
    assert message in lines[0], lines[0]
    assert snapshot(reg_path) == before


def with_adapter(tiny: dict, adapter: Path) -> list:
    args = add_args(tiny)
    args[args.index("--adapter") + 1] = str(adapter)
    return args


def test_missing_adapter_config(seeded, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ad = copy(tiny["adapter"], tmp_path, "ad")
    (ad / "adapter_config.json").unlink()
    expect_refused(seeded, reg_path, with_adapter(tiny, ad), 2, "adapter_config.json is missing")


def test_malformed_adapter_config(seeded, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ad = copy(tiny["adapter"], tmp_path, "ad")
    (ad / "adapter_config.json").write_text('{"peft_type": "LORA", "r": ')
    expect_refused(seeded, reg_path, with_adapter(tiny, ad), 2, "is not valid JSON")


def test_adapter_config_without_rank(seeded, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ad = copy(tiny["adapter"], tmp_path, "ad")
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["r"] = "eight"
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    expect_refused(seeded, reg_path, with_adapter(tiny, ad), 2, "r must be a number")


@pytest.mark.parametrize(("header", "length", "message"), [
    (b"{garbage", None, "invalid JSON"),
    (b"{}", 2**63 - 1, "header too large"),
    (b"{}", 10**6, "invalid safetensors header length"),
    (json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 30]}}).encode(), None,
     "out of bounds"),
], ids=["corrupt", "oversized", "past-eof", "out-of-bounds"])  # fmt: skip
def test_bad_safetensors_header(seeded, reg_path, tiny, tmp_path, header, length, message) -> None:  # noqa: ANN001
    ad = copy(tiny["adapter"], tmp_path, "ad")
    n = len(header) if length is None else length
    (ad / "adapter_model.safetensors").write_bytes(struct.pack("<Q", n) + header + b"\0" * 16)
    expect_refused(seeded, reg_path, with_adapter(tiny, ad), 2, message)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".pkl", ".ckpt"])
def test_pickle_weights_refused_unless_allowed(seeded, reg_path, tiny, tmp_path, suffix) -> None:  # noqa: ANN001
    ad = copy(tiny["adapter"], tmp_path, "ad")
    # A real malicious pickle: it would run a shell command if anything unpickled it.
    marker = tmp_path / "pwned"
    payload = b"cposix\nsystem\n(Vtouch " + str(marker).encode() + b"\ntR."
    (ad / f"extra{suffix}").write_bytes(payload)
    expect_refused(seeded, reg_path, with_adapter(tiny, ad), 2, "is a pickle file")
    res = seeded(*with_adapter(tiny, ad), "--allow-pickle")
    assert res.code == 0, res.err
    assert not marker.exists()  # stored, never unpickled


def test_python_code_and_auto_map_refused(seeded, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    ad = copy(tiny["adapter"], tmp_path, "ad")
    (ad / "modeling_evil.py").write_text("import os\n")
    expect_refused(seeded, reg_path, with_adapter(tiny, ad), 2, "is code")
    base = copy(tiny["base"], tmp_path, "base")
    cfg = json.loads((base / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil"}
    (base / "config.json").write_text(json.dumps(cfg))
    args = add_args(tiny)
    args[args.index("--base") + 1] = str(base)
    expect_refused(seeded, reg_path, args, 2, "auto_map")


def test_symlink_leaving_input_directory(seeded, reg_path, tiny, tmp_path) -> None:  # noqa: ANN001
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    ad = copy(tiny["adapter"], tmp_path, "ad")
    os.symlink(secret, ad / "notes.txt")
    expect_refused(seeded, reg_path, with_adapter(tiny, ad), 2, "symlink that leaves")


def test_symlink_inside_input_directory_is_fine(seeded, tiny, tmp_path) -> None:  # noqa: ANN001
    ad = copy(tiny["adapter"], tmp_path, "ad")
    os.symlink("adapter_config.json", ad / "alias.json")
    assert seeded(*with_adapter(tiny, ad)).code == 0


def test_dotdot_and_absolute_paths_in_manifests(reg) -> None:  # noqa: ANN001
    from registry.errors import UnsafePathError
    from registry.export import export
    from registry.paths import join_inside

    for bad in ("../escape", "/etc/passwd", "a/../../b"):
        with pytest.raises(UnsafePathError):
            join_inside(reg.root, bad)
    with pytest.raises(Exception):  # noqa: B017 - no bundle: nothing is exported
        export(reg, "sha256:" + "0" * 64, reg.root / "x")


@pytest.mark.parametrize(("content", "message"), [
    (b'{"messages": []}\n\xff\xfe not utf8\n', "line 2 is not UTF-8"),
    (b'{"messages": []}\n{"messages": [}\n', "line 2 is not JSON"),
    (b'[1, 2]\n', "line 1 is not a JSON object"),
], ids=["non-utf8", "invalid-json", "not-object"])  # fmt: skip
def test_bad_dataset_rows(seeded, reg_path, tiny, tmp_path, content, message) -> None:  # noqa: ANN001
    ds = copy(tiny["dataset"], tmp_path, "ds")
    (ds / "train.jsonl").write_bytes(content)
    args = add_args(tiny)
    args[args.index("--dataset") + 1] = str(ds)
    expect_refused(seeded, reg_path, args, 2, message)


def test_unknown_reference(seeded, reg_path) -> None:  # noqa: ANN001
    expect_refused(seeded, reg_path, ["show", "nobody:v1"], 2, "unknown bundle name 'nobody'")
    expect_refused(seeded, reg_path, ["show", "support-bot:v7"], 2, "versions: v1")
    expect_refused(seeded, reg_path, ["show", "sha256:00000000"], 2, "no bundle matches")
    expect_refused(seeded, reg_path, ["show", "Bad Name"], 2, "not a valid bundle name")


def test_ambiguous_digest_prefix(seeded, reg_path) -> None:  # noqa: ANN001
    # Two digests sharing 8 hex digits cannot be made by hashing in a test's lifetime, so
    # rows with crafted digests are inserted directly: resolution is what is under test.
    from registry.repo import Registry

    reg = Registry.open(reg_path)
    with reg.db.write() as conn:
        for i in (1, 2):
            conn.execute(
                "INSERT INTO bundle (digest, name, version, parent, size, created_at, created_by)"
                " VALUES (:d, 'twin', :v, NULL, 0, 'now', 't')",
                {"d": "sha256:deadbeef" + f"{i:056x}", "v": i},
            )
    reg.close()
    expect_refused(seeded, reg_path, ["show", "sha256:deadbeef"], 2, "is ambiguous: twin:v1")
    expect_refused(seeded, reg_path, ["show", "twin@deadbeef00"], 2, "twin:v2")


def test_registry_path_that_does_not_exist(tmp_path) -> None:  # noqa: ANN001
    res = run_cli("ls", registry=tmp_path / "missing")
    assert res.code == 2 and "no registry at" in res.err and "registry init" in res.err
    assert not (tmp_path / "missing").exists()
