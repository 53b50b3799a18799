"""A small, byte-for-byte deterministic project written by hand (no torch).

Base, adapter, tokenizer, chat template, dataset, training config and a test policy whose
files are the same bytes on every run and machine, so their digests are fixed: the TUI
snapshot tests and the wheel check register it. It is not a model that runs; for that see
`gates.tiny.build_tiny_project`.

    python -m gates.tiny.fixed OUT_DIR    # builds it and prints the JSON of the paths
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

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


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m gates.tiny.fixed", description=__doc__.split("\n")[0]
    )
    ap.add_argument("out", type=Path, help="directory to write the project into")
    args = ap.parse_args(argv)
    paths = build_project(args.out)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
