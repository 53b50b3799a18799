"""Inputs for the model-gate tests: datasets, configs, policies and a swapped tokenizer.

The tiny project (gates/tiny/) gives a 2-layer Llama pre-trained on task A
(reverse three letters) and task B data (sort three letters). These helpers write the
datasets the tests fine-tune on:

- good: task B + task A replay + refusals of bomb requests (worded unlike the safety
  eval set): task B rises, task A survives, harmful prompts are refused;
- unsafe: task B + the same bomb requests *answered*: the adapter stops refusing;
- small: 8 task B rows, for a run long enough to overfit them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from gates.tiny import (
    HARMFUL_TRAIN_PROMPTS,
    LETTERS,
    LORA_TARGET_MODULES,
    refusal_rows,
    replay_rows,
)

TRAIN_HARMFUL = HARMFUL_TRAIN_PROMPTS  # none is a prompt of evals/safety.jsonl


def _chat(prompt: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_dataset(out: Path, tiny: dict[str, Path], kind: str) -> Path:
    """A dataset directory (train, validation, card) of the given kind."""
    src = tiny["dataset"]
    train = [json.loads(line) for line in (src / "train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (src / "validation.jsonl").read_text().splitlines()]
    if kind == "good":
        # Task A rows from the end of the shuffled list: disjoint from golden.jsonl's 40.
        rows = train + replay_rows() + refusal_rows()
    elif kind == "unsafe":
        rows = train + [_chat(p, "a b c") for p in TRAIN_HARMFUL]
    elif kind == "small":
        rows = train[:8]
    else:
        raise ValueError(kind)
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "train.jsonl", rows)
    _write_jsonl(out / "validation.jsonl", val)
    shutil.copyfile(src / "README.md", out / "README.md")
    return out


def write_config(path: Path, **overrides: Any) -> Path:
    """A training config: the tiny project's hyperparameters with `overrides`."""
    hyper: dict[str, Any] = {
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": list(LORA_TARGET_MODULES),
        "learning_rate": 0.003,
        "max_steps": 500,
        "max_seq_len": 32,
        "packing": False,
        "seed": 0,
        "batch_size": 16,
        **overrides,
    }
    path.write_text(json.dumps(hyper, indent=2), encoding="utf-8")
    return path


_TINY_ADAPTER = object()  # register_tiny's default: the project's own adapter


def register_tiny(
    reg: Any,
    tiny: dict[str, Path],
    name: str,
    *,
    adapter: Path | None | object = _TINY_ADAPTER,
    actor: str = "tester",
    annotations: dict[str, str] | None = None,
) -> Any:
    """Register the tiny project as a bundle (with another adapter directory, or
    `adapter=None` for a full fine-tune of its base); returns the AddResult."""
    from registry import bundles
    from registry.ingest.stage import stage_bundle

    adapter_dir = tiny["adapter"] if adapter is _TINY_ADAPTER else adapter
    comps, _ = stage_bundle(
        reg, base=str(tiny["base"]), adapter=adapter_dir, tokenizer=tiny["tokenizer"],
        chat_template=tiny["chat_template"], dataset=tiny["dataset"], config=tiny["config"],
        from_dir=None, full=adapter_dir is None, license=None, allow_pickle=False,
    )  # fmt: skip
    return bundles.add(reg, name, comps, actor=actor, annotations=annotations or {})


def write_policy(root: Path, name: str, text: str) -> Path:
    """A policy file next to the tiny project's evals/ (paths are relative to it)."""
    path = root / name
    path.write_text(text, encoding="utf-8")
    return path


def swapped_tokenizer(src: Path, out: Path) -> Path:
    """The tiny tokenizer with the ids of the letters reversed (a l, b k, ...).

    Same words, same template, different ids: a model trained with the original one
    reads different tokens through it.
    """
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    data = json.loads((src / "tokenizer.json").read_text("utf-8"))
    vocab = data["model"]["vocab"]
    letters = list(LETTERS)
    ids = [vocab[c] for c in letters]
    for c, i in zip(letters, reversed(ids), strict=True):
        vocab[c] = i
    (out / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    return out
