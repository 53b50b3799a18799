"""Tiny projects to feed the registry and the release gates, built on disk in seconds.

Two builders, for two kinds of test:

* :func:`build_tiny_project` (:mod:`gates.tiny.build`, rows in :mod:`gates.tiny.tasks`):
  a real, runnable project made with torch, transformers and peft on the CPU: a 2-layer
  Llama base (optionally pre-trained on task A, reversing letters), a word-level tokenizer
  with a chat template, a LoRA adapter trained on task B (sorting letters), the dataset,
  a training config, eval sets (target, golden, safety) and a trainer-style output
  directory. The same seed on the same CPU kernel path gives the same bytes. For the
  model gates, the demo and the benchmarks. ``python -m gates.tiny OUT_DIR [--seed S]
  [--pretrain-steps N]`` builds it and prints the JSON of its paths.
* :func:`gates.tiny.fixed.build_project`: a project written by hand without torch
  (small F32 safetensors files, a tokenizer, a template, a dataset, a config and a test
  policy), byte-for-byte the same on every run and machine, so its digests are fixed; it
  registers but does not run. For the TUI snapshots and the wheel check. ``python -m
  gates.tiny.fixed OUT_DIR`` builds it and prints the JSON of its paths.

Importing this package imports no torch, transformers or peft: the builders import them
inside the functions that need them.
"""

from __future__ import annotations

from gates.tiny.build import build_tiny_project
from gates.tiny.tasks import (
    CHAT_TEMPLATE,
    HARMFUL_TRAIN_PROMPTS,
    LETTERS,
    LORA_TARGET_MODULES,
    REFUSAL,
    SPECIAL_TOKENS,
    VOCAB_WORDS,
    harmful_prompts,
    refusal_rows,
    render,
    replay_rows,
    task_a_rows,
    task_b_rows,
)

__all__ = [
    "CHAT_TEMPLATE",
    "HARMFUL_TRAIN_PROMPTS",
    "LETTERS",
    "LORA_TARGET_MODULES",
    "REFUSAL",
    "SPECIAL_TOKENS",
    "VOCAB_WORDS",
    "build_tiny_project",
    "harmful_prompts",
    "refusal_rows",
    "render",
    "replay_rows",
    "task_a_rows",
    "task_b_rows",
]
