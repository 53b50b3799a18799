"""Tokenizer components: a directory written by a tokenizer's save_pretrained()."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from registry.errors import InvalidInputError
from registry.ingest.common import Staged, check_file, read_json, scan_dir

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
    "chat_template.jinja", "chat_template.json", "generation_config.json",
)  # fmt: skip
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token")


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def own_template(files: dict[str, Any], root: Path) -> str | None:
    """The tokenizer's own chat template: chat_template.jinja, else tokenizer_config.json."""
    if "chat_template.jinja" in files:
        return (root / "chat_template.jinja").read_text("utf-8")
    if "tokenizer_config.json" in files:
        cfg = read_json(root / "tokenizer_config.json", "tokenizer")
        tmpl = cfg.get("chat_template") if isinstance(cfg, dict) else None
        if isinstance(tmpl, str):
            return tmpl
    return None


def describe(root: Path, files: dict[str, Any]) -> dict[str, Any]:
    """Class, vocabulary size and special tokens of the tokenizer in `root`."""
    if "tokenizer.json" not in files and "tokenizer_config.json" not in files:
        raise InvalidInputError(
            f"tokenizer: {root} has neither tokenizer.json nor tokenizer_config.json",
            "Save it with tokenizer.save_pretrained(DIR).",
        )
    meta: dict[str, Any] = {"tokenizer_class": None, "vocab_size": None, "special_tokens": {}}
    if "tokenizer_config.json" in files:
        cfg = read_json(root / "tokenizer_config.json", "tokenizer")
        if not isinstance(cfg, dict):
            raise InvalidInputError("tokenizer: tokenizer_config.json must be a JSON object")
        meta["tokenizer_class"] = cfg.get("tokenizer_class")
        meta["model_max_length"] = cfg.get("model_max_length")
        for key in SPECIAL_KEYS:
            if (text := _token_text(cfg.get(key))) is not None:
                meta["special_tokens"][key] = text
    if "special_tokens_map.json" in files:
        smap = read_json(root / "special_tokens_map.json", "tokenizer")
        for key in SPECIAL_KEYS:
            if isinstance(smap, dict) and (text := _token_text(smap.get(key))) is not None:
                meta["special_tokens"].setdefault(key, text)
    if "tokenizer.json" in files:
        tok = read_json(root / "tokenizer.json", "tokenizer")
        model = tok.get("model", {}) if isinstance(tok, dict) else {}
        vocab = model.get("vocab") if isinstance(model, dict) else None
        size = len(vocab) if isinstance(vocab, dict | list) else 0
        added = tok.get("added_tokens", []) if isinstance(tok, dict) else []
        ids = {a.get("id") for a in added if isinstance(a, dict)}
        in_vocab = set(vocab.values()) if isinstance(vocab, dict) else set(range(size))
        meta["vocab_size"] = size + len(ids - in_vocab)
        meta["model_type"] = model.get("type") if isinstance(model, dict) else None
    template = own_template(files, root)
    meta["chat_template_sha256"] = (
        "sha256:" + hashlib.sha256(template.encode("utf-8")).hexdigest() if template else None
    )
    return meta


def stage(root: Path, *, allow_pickle: bool = False) -> Staged:
    staged, _ = scan_dir(root, "tokenizer", allow_pickle=allow_pickle)
    staged.meta = describe(root, staged.files)
    return staged


def stage_from(root: Path, names: list[str], *, allow_pickle: bool = False) -> Staged:
    """Stage only the tokenizer files among `names` (a trainer's output directory)."""
    staged = Staged("tokenizer")
    for name in names:
        if name in TOKENIZER_FILES:
            check_file(name, root / name, allow_pickle=allow_pickle)
            staged.add(name, root / name)
    staged.meta = describe(root, staged.files)
    return staged
