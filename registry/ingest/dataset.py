"""Dataset components: JSONL splits plus a dataset card.

Every `*.jsonl` file at the top level or under `data/` is a split named by its stem
(`train.jsonl` -> train). Every row must be a UTF-8 JSON object; the first bad row is
reported by split and line. The license comes from `--license`, else from the card's YAML
front matter (`license: mit`); a dataset without one is registered with license null and
the dataset-audit gate fails it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from registry.errors import InvalidInputError
from registry.ingest.common import Staged, scan_dir
from registry.untrusted import MalformedError, load_json

_LICENSE_RE = re.compile(r"^license:\s*['\"]?([^'\"\s#]+)", re.MULTILINE)


def card_license(text: str) -> str | None:
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    front = text[3:end] if end != -1 else ""
    m = _LICENSE_RE.search(front)
    return m.group(1).lower() if m else None


def row_format(row: dict[str, Any]) -> str:
    if isinstance(row.get("messages"), list):
        return "chat"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "text" in row:
        return "text"
    return "other"


def scan_split(path: Path, rel: str) -> tuple[int, dict[str, int]]:
    """Row count and format counts of one JSONL split; raise on the first bad row."""
    rows = 0
    formats: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInputError(f"dataset {rel} line {lineno} is not UTF-8") from None
            try:
                row = load_json(raw, f"dataset {rel} line {lineno}")
            except MalformedError as exc:
                detail = str(exc).split(" is not valid JSON ", 1)[-1]
                raise InvalidInputError(
                    f"dataset {rel} line {lineno} is not JSON: {detail}"
                ) from None
            if not isinstance(row, dict):
                raise InvalidInputError(f"dataset {rel} line {lineno} is not a JSON object")
            rows += 1
            fmt = row_format(row)
            formats[fmt] = formats.get(fmt, 0) + 1
    return rows, formats


def stage(root: Path, *, license: str | None = None) -> Staged:
    from registry.paths import check_user_path

    check_user_path(root, "dataset")
    staged, _ = scan_dir(root, "dataset", allow_pickle=False)
    splits: dict[str, int] = {}
    formats: dict[str, int] = {}
    for rel in staged.files:
        parts = rel.split("/")
        if rel.endswith(".jsonl") and (len(parts) == 1 or (len(parts) == 2 and parts[0] == "data")):
            name = parts[-1][: -len(".jsonl")]
            if name in splits:
                raise InvalidInputError(f"dataset: two files define split {name!r}")
            rows, fmts = scan_split(root / rel, rel)
            splits[name] = rows
            for k, v in fmts.items():
                formats[k] = formats.get(k, 0) + v
    if not splits:
        raise InvalidInputError(f"dataset: {root} has no .jsonl splits", "Put train.jsonl there.")
    card = None
    for name in ("README.md", "dataset_card.md"):
        if name in staged.files:
            card = (root / name).read_text("utf-8", errors="replace")
            break
    lic = license.lower() if license else (card_license(card) if card else None)
    fmt = max(formats, key=formats.__getitem__) if len(formats) else None
    staged.meta = {
        "splits": dict(sorted(splits.items())),
        "rows": sum(splits.values()),
        "format": fmt if len(formats) == 1 else ("mixed" if formats else None),
        "formats": formats,
        "license": lic,
        "license_source": "--license" if license else ("card" if lic else None),
    }
    return staged
