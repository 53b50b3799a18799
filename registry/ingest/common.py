"""What every component kind shares: staged files and the safety checks on them.

Ingest never executes or unpickles anything: pickle weights are refused unless the user
passes --allow-pickle (and even then only stored, never loaded), Python code is refused,
a config with `auto_map` (remote code) is refused, and every safetensors header is
validated before a byte is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import InvalidInputError, PickleRefusedError
from registry.ingest.tensors import SafetensorsHeader, read_header
from registry.manifest import FileEntry
from registry.paths import check_relpath, walk_files

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so", ".sh")


@dataclass
class Staged:
    """A component ready to be stored: files by relative path, plus parsed metadata."""

    kind: str
    files: dict[str, Path | bytes] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # external base model: hf://org/name@<commit>
    external_files: list[FileEntry] | None = None  # their digests, nothing stored
    notes: list[str] = field(default_factory=list)  # said to the user, not recorded

    def add(self, relpath: str, content: Path | bytes) -> None:
        self.files[check_relpath(relpath)] = content


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file or raise one clear InvalidInputError."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"{what}: {path.name} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{what}: {path.name} is not valid JSON ({exc})") from None


def check_suffix(rel: str, *, allow_pickle: bool) -> None:
    """Refuse code, and pickles unless allowed, by file name alone."""
    lower = rel.lower()
    if lower.endswith(CODE_SUFFIXES):
        raise InvalidInputError(
            f"{rel} is code; bundles never hold code",
            "Remove it: models are loaded without trust_remote_code.",
        )
    if lower.endswith(PICKLE_SUFFIXES) and not allow_pickle:
        raise PickleRefusedError(f"{rel} is a pickle file, which can run code when loaded")


def check_file(rel: str, path: Path, *, allow_pickle: bool) -> SafetensorsHeader | None:
    """Refuse unsafe files; parse (and return) a safetensors header."""
    check_suffix(rel, allow_pickle=allow_pickle)
    lower = rel.lower()
    if lower.endswith(".safetensors"):
        return read_header(path)
    if lower.rsplit("/", 1)[-1] == "config.json":
        cfg = read_json(path, rel)
        if isinstance(cfg, dict) and "auto_map" in cfg:
            raise InvalidInputError(
                f"{rel} has auto_map (custom modeling code)",
                "Bundles never hold remote code; use a model class transformers ships.",
            )
    return None


def scan_dir(
    root: Path, kind: str, *, allow_pickle: bool
) -> tuple[Staged, dict[str, SafetensorsHeader]]:
    """Stage every file under `root` after the safety checks."""
    if not root.is_dir():
        raise InvalidInputError(f"{kind}: {root} is not a directory")
    staged = Staged(kind)
    headers: dict[str, SafetensorsHeader] = {}
    for rel, path in walk_files(root):
        header = check_file(rel, path, allow_pickle=allow_pickle)
        if header is not None:
            headers[rel] = header
        staged.add(rel, path)
    if not staged.files:
        raise InvalidInputError(f"{kind}: {root} holds no files")
    return staged, headers


def weights_summary(headers: dict[str, SafetensorsHeader]) -> dict[str, Any]:
    tensors = sum(len(h.tensors) for h in headers.values())
    params = sum(h.parameters for h in headers.values())
    dtypes = sorted({t.dtype for h in headers.values() for t in h.tensors.values()})
    return {"files": len(headers), "tensors": tensors, "parameters": params, "dtypes": dtypes}
