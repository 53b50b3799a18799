"""Helpers for the TUI tests: a small, byte-for-byte deterministic project (no torch),
`registry add` of it, and a gate the test can hold open (fixtures: tests/tui/conftest.py).

The files are written by hand, so their digests are the same on every run and machine.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import threading
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from gates.base import Gate, GateContext, GateResult
from tests.conftest import run_cli
from tests.fakegates import FAKES

CLOCK_START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)

POLICY = """\
[channels.staging]
require = ["fake-outcome"]

[channels.production]
require = ["fake-outcome", "fake-after"]
after = "staging"

[gates.fake-outcome]
eval_set = "evals/target.jsonl"
outcome = "passed"
"""


def safetensors_bytes(tensors: dict[str, tuple[list[int], float]]) -> bytes:
    """A valid F32 safetensors file: each tensor `name -> (shape, fill value)`."""
    header: dict[str, Any] = {}
    data = b""
    for name, (shape, value) in sorted(tensors.items()):
        count = 1
        for n in shape:
            count *= n
        chunk = struct.pack(f"<{count}f", *([value] * count))
        header[name] = {"dtype": "F32", "shape": shape,
                        "data_offsets": [len(data), len(data) + len(chunk)]}  # fmt: skip
        data += chunk
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def build_project(root: Path, *, r: int = 8, rows: int = 4) -> dict[str, Path]:
    """Base, adapter (LoRA rank `r`), tokenizer, template, dataset (`rows` rows), config."""
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "a", "b", "c", "sort"])}
    write(root / "base/config.json", json.dumps({
        "model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1,
        "vocab_size": len(vocab), "architectures": ["LlamaForCausalLM"]}))  # fmt: skip
    write(root / "base/model.safetensors", safetensors_bytes({
        "model.embed_tokens.weight": ([len(vocab), 8], 0.5),
        "model.layers.0.self_attn.q_proj.weight": ([8, 8], 0.25)}))  # fmt: skip
    write(root / "adapter/adapter_config.json", json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "tiny-base",
        "task_type": "CAUSAL_LM"}))  # fmt: skip
    write(root / "adapter/adapter_model.safetensors", safetensors_bytes({
        "base_model.model.layers.0.self_attn.q_proj.lora_A.weight": ([r, 8], 0.01 * r),
        "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": ([8, r], 0.0)}))  # fmt: skip
    write(root / "tokenizer/tokenizer_config.json", json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "<pad>", "model_max_length": 64}))  # fmt: skip
    write(root / "tokenizer/tokenizer.json", json.dumps(
        {"model": {"type": "WordLevel", "vocab": vocab}, "added_tokens": []}))  # fmt: skip
    write(root / "chat_template.jinja",
          "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}")  # fmt: skip
    lines = [json.dumps({"messages": [{"role": "user", "content": f"sort c a b {i}"},
                                      {"role": "assistant", "content": "a b c"}]})
             for i in range(rows)]  # fmt: skip
    write(root / "dataset/train.jsonl", "\n".join(lines) + "\n")
    write(root / "dataset/README.md", "---\nlicense: apache-2.0\n---\nSorting letters.\n")
    write(root / "config/train.yaml", f"learning_rate: 0.0002\nnum_train_epochs: 3\nlora_r: {r}\n")
    write(root / "policy/policy.toml", POLICY)
    write(root / "policy/evals/target.jsonl", '{"prompt": "sort b a", "answer": "a b"}\n')
    return {"root": root, "base": root / "base", "adapter": root / "adapter",
            "tokenizer": root / "tokenizer", "chat_template": root / "chat_template.jinja",
            "dataset": root / "dataset", "config": root / "config/train.yaml",
            "policy": root / "policy/policy.toml"}  # fmt: skip


def add_bundle(
    reg_path: Path, project: dict[str, Path], *extra: str, name: str = "support-bot"
) -> None:
    """`registry add NAME ...` with the project's files."""
    res = run_cli(
        "add", name, "--base", project["base"], "--adapter", project["adapter"],
        "--tokenizer", project["tokenizer"], "--chat-template", project["chat_template"],
        "--dataset", project["dataset"], "--config", project["config"], *extra,
        registry=reg_path,
    )  # fmt: skip
    assert res.code == 0, res.err


def cli_ok(reg_path: Path, *args: str | Path) -> str:
    res = run_cli(*args, registry=reg_path)
    assert res.code == 0, res.err + res.out
    return res.out


def fixed_clock(mp: pytest.MonkeyPatch, start: dt.datetime = CLOCK_START) -> None:
    """Every stored timestamp from `start`, one minute apart (the audit chain stays valid)."""
    import gates.engine
    import registry.audit
    import registry.bundles
    import registry.channels

    ticks = iter(range(1_000_000))
    lock = threading.Lock()

    def now() -> str:
        with lock:
            t = start + dt.timedelta(minutes=next(ticks))
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    for mod in (registry.bundles, registry.audit, registry.channels, gates.engine):
        mp.setattr(mod, "now", now)


def add_gates(mp: pytest.MonkeyPatch, gates: dict[str, str]) -> None:
    """Put `name -> module:Class` gates into the entry-point catalog (as a package would)."""
    from gates import catalog

    real = catalog.entry_points()
    extra = {n: EntryPoint(n, value, catalog.GROUP) for n, value in gates.items()}
    mp.setattr(catalog, "entry_points", lambda: {**real, **extra})
    catalog.load.cache_clear()


FAKE_GATES = {n: f"tests.fakegates:{c.__name__}" for n, c in FAKES.items()}


# --- a gate the test holds open, to watch progress while the interface stays live ----------


class HeldGate(Gate):
    """Reports progress, then waits until the test releases it; then passes."""

    name = "fake-held"
    defaults: dict[str, Any] = {}
    release = threading.Event()
    started = threading.Event()

    def run(self, ctx: GateContext) -> GateResult:
        ctx.progress("warming up")
        HeldGate.started.set()
        if not HeldGate.release.wait(30):
            raise TimeoutError("the test never released the gate")
        return GateResult("passed", {"waited": 1}, {}, {}, "released")
