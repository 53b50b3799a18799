"""Table-driven tests of the on-disk formats: digests, canonical JSON, manifests, paths,
safetensors headers. Each invalid case says why it must fail."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from registry.digest import canonical_json, sha256_bytes
from registry.errors import InvalidInputError, UnsafePathError
from registry.ingest.tensors import read_header
from registry.manifest import BundleManifest, ComponentManifest
from registry.paths import check_relpath

D = "sha256:" + "a" * 64


def test_canonical_json_is_stable_and_compact() -> None:
    a = canonical_json({"b": 1, "a": [1, {"y": "é", "x": None}]})
    b = canonical_json({"a": [1, {"x": None, "y": "é"}], "b": 1})
    assert a == b == '{"a":[1,{"x":null,"y":"é"}],"b":1}'.encode()
    assert sha256_bytes(a) == sha256_bytes(b)


VALID_COMPONENT = {
    "schema": "registry.component.v1",
    "kind": "adapter",
    "files": [
        {"path": "a.json", "digest": D, "size": 3},
        {"path": "w/b.bin", "digest": D, "size": 0},
    ],
    "meta": {"r": 8},
}


def test_component_manifest_round_trips_bytes_exactly() -> None:
    data = canonical_json(VALID_COMPONENT)
    m = ComponentManifest.from_bytes(data)
    assert m.to_bytes() == data
    assert m.digest == sha256_bytes(data)


INVALID_COMPONENTS = [
    ({**VALID_COMPONENT, "schema": "v0"}, "unknown schema"),
    ({**VALID_COMPONENT, "kind": "weights"}, "unknown kind"),
    ({**VALID_COMPONENT, "extra": 1}, "unknown key"),
    ({**VALID_COMPONENT, "files": [{"path": "../x", "digest": D, "size": 1}]}, "path escapes"),
    ({**VALID_COMPONENT, "files": [{"path": "/etc/passwd", "digest": D, "size": 1}]}, "absolute"),
    ({**VALID_COMPONENT, "files": [{"path": "a", "digest": "sha256:zz", "size": 1}]}, "bad digest"),
    ({**VALID_COMPONENT, "files": [{"path": "a", "digest": D, "size": -1}]}, "negative size"),
    ({**VALID_COMPONENT, "files": [{"path": "b", "digest": D, "size": 1},
                                   {"path": "a", "digest": D, "size": 1}]}, "unsorted files"),
    ({**VALID_COMPONENT, "files": [{"path": "a", "digest": D, "size": 1},
                                   {"path": "a", "digest": D, "size": 1}]}, "duplicate path"),
    ({**VALID_COMPONENT, "source": "hf://org/name@main"}, "external source not pinned"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "why"), INVALID_COMPONENTS, ids=[w for _, w in INVALID_COMPONENTS]
)
def test_invalid_component_manifests_are_refused(data: dict, why: str) -> None:
    with pytest.raises(InvalidInputError):
        ComponentManifest.from_bytes(canonical_json(data))


def test_non_canonical_manifest_bytes_are_refused() -> None:
    pretty = json.dumps(VALID_COMPONENT, indent=2).encode()
    with pytest.raises(InvalidInputError, match="canonical"):
        ComponentManifest.from_bytes(pretty)


def test_bundle_manifest_digest_depends_on_content_only() -> None:
    comps = {"adapter": {"digest": D, "size": 10}}
    m1 = BundleManifest.from_dict(
        {
            "schema": "registry.bundle.v1",
            "name": "bot",
            "components": comps,
            "parent": None,
            "annotations": {},
        }
    )
    m2 = BundleManifest.from_bytes(m1.to_bytes())
    assert m1.digest == m2.digest
    with pytest.raises(InvalidInputError):
        BundleManifest.from_dict({**m1.to_dict(), "parent": "sha256:1234"})
    with pytest.raises(InvalidInputError):
        BundleManifest.from_dict(
            {**m1.to_dict(), "components": {"weights": {"digest": D, "size": 1}}}
        )


GOOD_PATHS = ["a", "a/b.json", "model-00001-of-00002.safetensors", "dir.with.dots/x"]
BAD_PATHS = [
    ("", "empty"), ("../a", "parent"), ("a/../../b", "inner parent"), ("/abs", "absolute"),
    ("C:/x", "drive"), ("c:x", "drive relative"), ("a\\b", "backslash"), ("a/%2e%2e/b", "encoded"),
    ("a%2Fb", "encoded separator"), ("a/./b", "dot"), ("a//b", "empty part"), ("a/", "trailing"),
    ("a\x00b", "NUL"), ("a\nb", "newline"),
]  # fmt: skip


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_good_relative_paths(path: str) -> None:
    assert check_relpath(path) == path


@pytest.mark.parametrize(("path", "why"), BAD_PATHS, ids=[w for _, w in BAD_PATHS])
def test_bad_paths_are_refused_structurally(path: str, why: str) -> None:
    with pytest.raises(UnsafePathError):
        check_relpath(path)


def write_safetensors(
    path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None
) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def test_real_safetensors_header_is_read_without_tensors(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file(
        {"w": np.zeros((4, 3), dtype=np.float32), "b": np.ones(3, dtype=np.float16)},
        tmp_path / "m.safetensors",
        metadata={"format": "pt"},
    )
    h = read_header(tmp_path / "m.safetensors")
    assert h.tensors["w"].shape == (4, 3) and h.tensors["w"].dtype == "F32"
    assert h.parameters == 15 and h.metadata == {"format": "pt"}


GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
BAD_HEADERS = [
    (dict(header=b"{}", length=2**63 - 1), "too large"),
    (dict(header=b"{}", length=1000), "invalid safetensors header length"),
    (dict(header=b"{not json"), "invalid JSON"),
    (dict(header=b"\xff\xfe{}"), "invalid JSON"),
    (dict(header=[1, 2]), "not a JSON object"),
    (dict(header={"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 80]}}, data=b"\0" * 8), "out of bounds"),
    (dict(header={"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, data=b"\0" * 8), "does not match"),
    (dict(header={"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, data=b"\0" * 12), "not contiguous"),
    (dict(header=GOOD, data=b"\0" * 12), "does not end"),
    (dict(header={"w": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, data=b"\0" * 8), "unknown dtype"),
    (dict(header={"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, data=b"\0" * 8), "invalid shape"),
    (dict(header=b'{"w": {"dtype": "F32", "dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}', data=b"\0" * 8), "duplicate key"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "message"), BAD_HEADERS, ids=[m for _, m in BAD_HEADERS])
def test_corrupt_safetensors_headers_are_refused(tmp_path: Path, case: dict, message: str) -> None:
    path = write_safetensors(tmp_path / "bad.safetensors", **case)
    with pytest.raises(InvalidInputError, match=message):
        read_header(path)


def test_our_parser_agrees_with_the_reference_on_refusals(tmp_path: Path) -> None:
    from safetensors import safe_open

    for i, (case, _) in enumerate(BAD_HEADERS[:3]):
        path = write_safetensors(tmp_path / f"b{i}.safetensors", **case)
        with pytest.raises(Exception):  # noqa: B017 - the reference raises its own type
            safe_open(str(path), framework="numpy")


# A "$" anchor matches before a final "\n" and "\d" / "\w" match non-ASCII digits and
# letters, so "sha256:<hex>\n" or "v١" would pass a check written with them.
@pytest.mark.parametrize(
    ("check", "good"),
    [
        ("digest", D),
        ("ref", "bot:v3"),
        ("channel-ref", "bot:production"),
        ("digest-prefix-ref", "sha256:aaaaaaaa"),
        ("remote", "origin"),
        ("bucket", "s3://models-1/team"),
        ("hub-repo", "hf://my-org/bot"),
    ],
)
def test_identifier_checks_refuse_a_final_newline_and_non_ascii_digits(
    check: str, good: str
) -> None:
    from registry import refs
    from registry.digest import is_digest
    from registry.errors import RegistryError
    from registry.remotes.base import check_remote_name, parse_hf_url, parse_s3_url

    def ok(text: str) -> bool:
        try:
            return {
                "digest": lambda: is_digest(text),
                "ref": lambda: bool(refs.parse(text)),
                "channel-ref": lambda: bool(refs.parse(text)),
                "digest-prefix-ref": lambda: bool(refs.parse(text)),
                "remote": lambda: bool(check_remote_name(text)),
                "bucket": lambda: bool(parse_s3_url(text)),
                "hub-repo": lambda: bool(parse_hf_url(text)),
            }[check]()
        except RegistryError:
            return False

    assert ok(good)
    assert not ok(good + "\n")
    if good[-1].isdigit():
        assert not ok(good[:-1] + "\u0663")  # ARABIC-INDIC DIGIT THREE


def test_a_creation_record_time_must_be_ascii_and_end_where_it_ends() -> None:
    from registry.remotes.sync import _TIMESTAMP

    assert _TIMESTAMP.match("2026-01-31T12:00:00.000000Z")
    assert not _TIMESTAMP.match("2026-01-31T12:00:00.000000Z\n")
    assert not _TIMESTAMP.match("2026-01-31T12:00:0\u0660Z")
