"""Chat template components: one Jinja file, stored as `chat_template.jinja`.

The template is text only here; it is rendered (in a sandbox) by the chat-template gate,
never at ingest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from registry.errors import InvalidInputError
from registry.ingest.common import Staged, check_content, read_json

MAX_TEMPLATE = 1_000_000
FILE_NAME = "chat_template.jinja"


def from_text(text: str, source: str) -> Staged:
    if not text.strip():
        raise InvalidInputError(f"chat template {source} is empty")
    data = text.encode("utf-8")
    staged = Staged("chat_template")
    staged.add(FILE_NAME, data)
    staged.meta = {
        "chars": len(text),
        "sha256_text": "sha256:" + hashlib.sha256(data).hexdigest(),
        "source_name": Path(source).name,
    }
    return staged


def stage(path: Path) -> Staged:
    """A .jinja file, or a tokenizer_config.json / chat_template.json holding `chat_template`."""
    if not path.is_file():
        raise InvalidInputError(f"chat template {path} is not a file")
    if path.stat().st_size > MAX_TEMPLATE:
        raise InvalidInputError(f"chat template {path} is larger than {MAX_TEMPLATE} bytes")
    check_content(f"chat template {path.name}", path, allow_pickle=False)
    if path.suffix == ".json":
        cfg = read_json(path, "chat template")
        text = cfg.get("chat_template") if isinstance(cfg, dict) else None
        if not isinstance(text, str):
            raise InvalidInputError(f"{path.name} has no chat_template string")
        return from_text(text, path.name)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"chat template {path.name} is not UTF-8") from None
    return from_text(text, path.name)
