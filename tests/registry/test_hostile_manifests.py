"""Manifests from a remote are input: bounded and consistent before anything is written.

A crafted manifest listing one blob 500,000 times made `export` write 500,014 files;
a file/directory clash in its paths was accepted and export then failed half-way with
`unexpected FileExistsError`. Both are refused up front now (docs/design.md, "Trust").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.digest import sha256_bytes
from registry.errors import IntegrityError, InvalidInputError
from registry.export import MAX_EXPORT_FILES, check_layout
from registry.manifest import MAX_FILES, ComponentManifest, FileEntry

D = sha256_bytes(b"x")


def component(paths: list[str]) -> ComponentManifest:
    return ComponentManifest("adapter", tuple(FileEntry(p, D, 1) for p in sorted(paths)))


def test_a_component_path_that_is_both_file_and_directory_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="a/b is both a file and a directory"):
        component(["a/b", "a/b/c.json"])
    assert component(["a/b.json", "a/bc/d.json"]).files  # prefixes that are not parents are fine


def test_a_component_with_too_many_files_is_refused() -> None:
    with pytest.raises(InvalidInputError, match=f"at most {MAX_FILES}"):
        component([f"f{i:07d}" for i in range(MAX_FILES + 1)])


def test_export_layout_clashes_and_counts_are_refused_before_writing(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    clash = {"dataset": (D, 1, "adapter"), "dataset/train.jsonl": (D, 1, "dataset")}
    with pytest.raises(IntegrityError, match="dataset is both a file and a directory"):
        check_layout(clash, dest)
    with pytest.raises(IntegrityError, match="registry is both a file and a directory"):
        check_layout({"registry": (D, 1, "adapter")}, dest)
    many = {f"f{i}": (D, 1, "adapter") for i in range(MAX_EXPORT_FILES + 1)}
    with pytest.raises(IntegrityError, match=f"at most {MAX_EXPORT_FILES}"):
        check_layout(many, dest)
    assert not dest.exists()


def test_export_needing_more_than_the_free_space_is_refused(tmp_path: Path) -> None:
    from registry.errors import UsageError

    huge = {"model.safetensors": (D, 1 << 62, "base_model")}
    with pytest.raises(UsageError, match="export needs"):
        check_layout(huge, tmp_path / "out")
    check_layout({"adapter_config.json": (D, 10, "adapter")}, tmp_path / "out")
