"""Tokenization: the bundle's tokenizer and chat template, chat and text examples encoded
with labels on what is learned or scored (assistant tokens, found by character spans of
the rendered conversation), packing and collation into tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gates.modeling.environment import setup_torch
from registry.errors import GateError

Messages = list[dict[str, str]]
IGNORE = -100  # label of a token the loss skips


def load_tokenizer(directory: Path) -> Any:
    """The tokenizer in `directory`, with the bundle's chat_template.jinja when present."""
    setup_torch()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise GateError(f"the tokenizer in {directory} does not load: {exc}") from exc
    template = directory / "chat_template.jinja"
    if template.is_file():  # the bundle's pinned template wins over the tokenizer's own
        tok.chat_template = template.read_text("utf-8")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def render(tokenizer: Any, messages: Messages, *, add_generation_prompt: bool = False) -> str:
    """The chat template's text for `messages` (tokenize=False: in transformers 5.x
    `apply_chat_template(tokenize=True)` returns a BatchEncoding, whose len() counts keys)."""
    if not getattr(tokenizer, "chat_template", None):
        raise GateError("the bundle has no chat template, which the model gates need")
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # jinja errors, sandbox violations
        raise GateError(f"the chat template failed to render: {exc}") from exc


def chat_spans(tokenizer: Any, messages: Messages) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn.

    A turn's span runs from the end of the text rendered up to it with the generation
    prompt to the end of the text rendered through it, so it covers the answer and the
    template's end-of-turn marker (the model must learn to stop). Templates that render
    earlier turns differently once later turns exist fall back to finding the content.
    """
    full = render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = render(tokenizer, messages[: i + 1])
        if full.startswith(through) and through.startswith(before) and len(before) >= cursor:
            start, end = len(before), len(through)
        else:
            start = full.find(msg.get("content", ""), cursor)
            if start < 0:
                raise GateError("the chat template does not render assistant turns verbatim")
            end = start + len(msg.get("content", ""))
        spans.append((start, end))
        cursor = end
    return full, spans


@dataclass
class Encoded:
    """One tokenized example: ids, labels (IGNORE outside what is learned or scored)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def encode_chat(
    tokenizer: Any, messages: Messages, *, max_len: int | None = None, last_only: bool = False
) -> Encoded:
    """Token ids with labels on assistant tokens only (`last_only`: the last turn only)."""
    text, spans = chat_spans(tokenizer, messages)
    if last_only:
        spans = spans[-1:]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    for j, (a, b) in enumerate(enc["offset_mapping"]):
        if any(b > s and a < e for s, e in spans):
            labels[j] = ids[j]
    return _truncate(ids, labels, max_len)


def encode_text(tokenizer: Any, text: str, *, max_len: int | None = None) -> Encoded:
    """A plain-text example (a dataset's `text` rows): every token is learned."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return _truncate(ids, list(ids), max_len)


def _truncate(ids: list[int], labels: list[int], max_len: int | None) -> Encoded:
    if max_len is not None and len(ids) > max_len:
        return Encoded(ids[:max_len], labels[:max_len], truncated=True)
    return Encoded(ids, labels)


def pack(examples: Sequence[Encoded], max_len: int) -> list[Encoded]:
    """Concatenate examples and cut them into blocks of `max_len` tokens (no truncation)."""
    ids: list[int] = []
    labels: list[int] = []
    for ex in examples:
        ids += ex.input_ids
        labels += ex.labels
    return [
        Encoded(ids[i : i + max_len], labels[i : i + max_len]) for i in range(0, len(ids), max_len)
    ]


def collate(examples: Sequence[Encoded], pad_id: int, device: str) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels."""
    torch = setup_torch()
    width = max(len(e.input_ids) for e in examples)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in examples]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples]
    labels = [e.labels + [IGNORE] * (width - len(e.labels)) for e in examples]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "attention_mask": torch.tensor(mask, device=device),
        "labels": torch.tensor(labels, device=device),
    }
