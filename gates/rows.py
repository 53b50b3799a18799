"""Rows of JSONL data sets and eval sets: reading, format checks and their texts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import GateError

TEXT_CHARS = 200  # characters of a row shown in evidence


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: [{"type": "text", "text": ...}]
        return "\n".join(b["text"] for b in content if isinstance(b, dict) and "text" in b)
    return ""


def check_messages(msgs: Any, roles: list[str]) -> str | None:
    """Why a chat conversation is not trainable, or None."""
    if not isinstance(msgs, list) or not msgs:
        return "messages must be a non-empty list"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"message {i} is not an object"
        role, content = m.get("role"), m.get("content")
        if role not in roles:
            return f"message {i} has role {role!r} (allowed: {', '.join(roles)})"
        if role == "system" and i != 0:
            return f"message {i} is a system message after the first turn"
        if not isinstance(content, str | list) and not (role == "assistant" and content is None):
            return f"message {i} content must be a string or a list of content blocks"
    last = msgs[-1]
    if last.get("role") != "assistant":
        return f"the final message is from {last.get('role')!r}, not the assistant"
    if not _content_text(last.get("content")).strip():
        return "the final assistant message is empty"
    return None


def check_row(row: Any, fmt: str, roles: list[str]) -> str | None:
    """Why a row is not valid for the trainer's format, or None."""
    if not isinstance(row, dict):
        return "row is not a JSON object"
    if fmt == "chat":
        if "messages" not in row:
            return "chat row has no 'messages'"
        return check_messages(row["messages"], roles)
    if fmt == "prompt_completion":
        p, c = row.get("prompt"), row.get("completion")
        if isinstance(p, list) and isinstance(c, list):
            return check_messages(p + c, roles)
        if not isinstance(p, str) or not isinstance(c, str):
            return "prompt and completion must both be strings (or both message lists)"
        return None if c.strip() else "completion is empty"
    text = row.get("text")
    return None if isinstance(text, str) and text.strip() else "text must be a non-empty string"


TEXT_KEYS = (
    "text",
    "prompt",
    "question",
    "instruction",
    "input",
    "context",
    "completion",
    "answer",
    "response",
    "output",
)


def row_texts(row: dict[str, Any]) -> tuple[str, str]:
    """(full text, prompt text) of any row: chat, prompt/completion, or plain fields."""
    msgs = row.get("messages")
    if isinstance(msgs, list):
        msgs = [m for m in msgs if isinstance(m, dict)]
        full = "\n".join(_content_text(m.get("content")) for m in msgs)
        ask = [m for m in msgs if m.get("role") in ("user", "system")]
        return full, "\n".join(_content_text(m.get("content")) for m in ask)
    p, c = row.get("prompt"), row.get("completion")
    if isinstance(p, list) or isinstance(c, list):
        p_text = row_texts({"messages": p if isinstance(p, list) else []})[0]
        c_text = row_texts({"messages": c if isinstance(c, list) else []})[0]
        return f"{p_text}\n{c_text}", p_text
    if isinstance(p, str):
        return f"{p}\n{c}" if isinstance(c, str) else p, p
    values = [row[k] for k in TEXT_KEYS if isinstance(row.get(k), str)]
    if not values:
        values = [v for v in row.values() if isinstance(v, str)]
    prompt = next((row[k] for k in TEXT_KEYS[:6] if isinstance(row.get(k), str)), "")
    return "\n".join(values), prompt


@dataclass
class Rows:
    """Valid rows of one or more JSONL files: where each is and its texts."""

    where: list[tuple[str, int]] = field(default_factory=list)  # (split or set, line)
    data: list[dict[str, Any]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    prompt: list[str] = field(default_factory=list)

    def add(self, where: tuple[str, int], row: dict[str, Any]) -> None:
        full, prompt = row_texts(row)
        self.where.append(where)
        self.data.append(row)
        self.text.append(full)
        self.prompt.append(prompt)

    def ref(self, i: int) -> dict[str, Any]:
        name, line = self.where[i]
        return {"split": name, "line": line, "text": self.text[i][:TEXT_CHARS]}


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line, row or None, error) for each non-blank line.

    Rows go through the front door (registry.untrusted): deep nesting, NaN, Infinity, huge
    integers and lone surrogates are bad lines, like malformed JSON."""
    from registry.errors import InvalidInputError
    from registry.untrusted import MalformedError, load_json

    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                yield lineno, None, "line is not UTF-8"
                continue
            try:
                row, err = load_json(raw, "line"), None
            except MalformedError as exc:
                row, err = None, f"line is not JSON ({str(exc).split(' JSON (', 1)[-1]}"
            except InvalidInputError as exc:
                row, err = None, str(exc)
            yield lineno, row, err


def parse_jsonl(path: Path, label: str) -> Iterator[tuple[int, Any]]:
    """(line, row) for each non-blank line; a GateError naming the first bad line."""
    for lineno, row, err in iter_jsonl(path):
        if err is not None:
            raise GateError(f"{label} line {lineno} {err.removeprefix('line ')}")
        yield lineno, row


def read_jsonl(path: Path, label: str | None = None) -> list[dict[str, Any]]:
    """Every row of a JSONL file, or a GateError naming the first bad line."""
    label = label or path.name
    rows = []
    for lineno, row in parse_jsonl(path, label):
        if not isinstance(row, dict):
            raise GateError(f"{label} line {lineno} is not a JSON object")
        rows.append(row)
    return rows
