"""What every component kind shares: staged files and the safety checks on them.

Ingest never executes or unpickles anything: pickles are refused unless the user passes
--allow-pickle (and even then only stored, never loaded), recognised by name and by content
(registry.ingest.sniff: a renamed pickle, a `.pkl.gz`, a PyTorch zip, an object `.npy`),
Python code is refused, `auto_map` (remote code) anywhere in any JSON file of a model
component is refused, and every safetensors header is validated before a byte is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import InvalidInputError, PickleRefusedError
from registry.ingest.sniff import sniff_file
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
    from registry.untrusted import load_json

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInputError(f"{what}: {path.name} is missing") from None
    return load_json(data, f"{what}: {path.name}")


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


def check_content(rel: str, path: Path, *, allow_pickle: bool) -> None:
    """Refuse a pickle found by its bytes (the first HEAD of them), whatever its name."""
    if allow_pickle:
        return
    try:
        kind = sniff_file(path)
    except OSError as exc:
        raise InvalidInputError(f"{rel} cannot be read: {exc.strerror or exc}") from None
    if kind is not None:
        raise PickleRefusedError(f"{rel} is {kind}, which can run code when loaded")


def _auto_map_path(value: Any, where: str = "") -> str | None:
    """The key path of the first `auto_map` key at any depth, or None."""
    stack = [(value, where)]
    while stack:
        node, at = stack.pop()
        if isinstance(node, dict):
            if "auto_map" in node:
                return f"{at}.auto_map" if at else "auto_map"
            stack += [(v, f"{at}.{k}" if at else str(k)) for k, v in reversed(node.items())]
        elif isinstance(node, list):
            stack += [(v, f"{at}[{i}]") for i, v in reversed(list(enumerate(node)))]
    return None


def check_json_config(rel: str, path: Path) -> None:
    """Refuse `auto_map` (custom modeling code) anywhere in a component's JSON file."""
    if rel.rsplit("/", 1)[-1] == "config.json":
        data = read_json(path, rel)  # a model config must be valid JSON
    else:
        raw = path.read_bytes()
        # JSON spells a key as written or with \u escapes: without either, no auto_map.
        if b"auto_map" not in raw and b"\\u" not in raw:
            return
        from registry.untrusted import MalformedError, load_json

        try:
            data = load_json(raw, rel)
        except MalformedError:
            return  # not JSON at all: no loader can read it either
    if (at := _auto_map_path(data)) is not None:
        raise InvalidInputError(
            f"{rel} has {at} (custom modeling code)",
            "Bundles never hold remote code; use a model class transformers ships.",
        )


def check_file(
    rel: str, path: Path, *, allow_pickle: bool, json_configs: bool = True
) -> SafetensorsHeader | None:
    """Refuse unsafe files; parse (and return) a safetensors header.

    `json_configs=False` (datasets) skips the `auto_map` check of `*.json` files: their
    JSON is data, never given to a model loader.
    """
    check_suffix(rel, allow_pickle=allow_pickle)
    lower = rel.lower()
    if lower.endswith(".safetensors"):
        # The header is validated (and read) anyway; a pickle renamed .safetensors fails
        # it, and is then named for what it is.
        try:
            return read_header(path)
        except InvalidInputError:
            check_content(rel, path, allow_pickle=allow_pickle)
            raise
    check_content(rel, path, allow_pickle=allow_pickle)
    if lower.endswith(".json") and (json_configs or lower.rsplit("/", 1)[-1] == "config.json"):
        check_json_config(rel, path)
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
        header = check_file(rel, path, allow_pickle=allow_pickle, json_configs=kind != "dataset")
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
