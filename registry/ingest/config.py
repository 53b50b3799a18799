"""Training-config components: one YAML, JSON or TOML file of hyperparameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from registry.errors import InvalidInputError
from registry.ingest.common import Staged, check_content

SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}
MAX_CONFIG = 10_000_000  # bytes: a hyperparameter file, not a data set


def parse(path: Path) -> tuple[str, dict[str, Any]]:
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInputError(f"config {path.name}: use a .yaml, .json or .toml file")
    from registry import untrusted

    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"config {path} does not exist") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"config {path.name} is not UTF-8") from None
    # The front door: limits on depth, size, aliases and numbers; only the safe YAML tags.
    load = {"json": untrusted.load_json, "toml": untrusted.load_toml, "yaml": untrusted.load_yaml}
    data = load[fmt](text, f"config {untrusted.printable(path.name)}", max_bytes=MAX_CONFIG)
    if not isinstance(data, dict):
        raise InvalidInputError(f"config {path.name} must hold a mapping of hyperparameters")
    return fmt, data


def stage(path: Path) -> Staged:
    from registry.paths import check_user_path

    check_user_path(path, "config")
    if not path.is_file():
        raise InvalidInputError(f"config {path} is not a file")
    check_content(f"config {path.name}", path, allow_pickle=False)
    fmt, data = parse(path)
    staged = Staged("config")
    staged.add(path.name, path)
    # Round-trip through JSON so the manifest holds only JSON types (dates become strings).
    staged.meta = {"format": fmt, "hyperparameters": json.loads(json.dumps(data, default=str))}
    quant = quantization(data)
    if quant is not None:  # only then: configs without it keep the digests they had
        staged.meta["quantization"] = quant
    return staged


def quantization(hyper: dict[str, Any]) -> str | None:
    """The base-weight quantization a training config asks for ("4bit" / "8bit"), or None.

    This is what tells a QLoRA recipe from a LoRA one: the adapter_config.json of both is
    the same. Read from the spellings trainers use: `quantization: 4bit|nf4|8bit`,
    `load_in_4bit` / `load_in_8bit`, `bnb_4bit_quant_type`, a `quantization_config` table.
    """
    q = hyper.get("quantization")
    if isinstance(q, str):
        q = q.lower()
        if q in ("4bit", "nf4", "fp4", "int4", "qlora"):
            return "4bit"
        if q in ("8bit", "int8"):
            return "8bit"
    if hyper.get("load_in_4bit") is True or "bnb_4bit_quant_type" in hyper:
        return "4bit"
    if hyper.get("load_in_8bit") is True:
        return "8bit"
    nested = hyper.get("quantization_config")
    return quantization(nested) if isinstance(nested, dict) else None
