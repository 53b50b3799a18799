"""Bundles whose behaviour is fixed by construction: weights written by the test, not trained.

The base is the tiny project's 2-layer Llama with every attention and MLP weight set to
zero, so the residual stream carries only the current token's embedding: a one-hot
vector (hidden size >= vocabulary). The output head then maps each token to the one that
follows it, so the model is a bigram table with logit margins of about 24, far beyond
anything a CPU kernel path or a dtype changes. What it says after `<|assistant|>` (the
end of every rendered prompt) is chosen by the test, and so is the chain after it:

    <|assistant|> -> FIRST -> ... -> <|end|>

The adapter is a rank-1 LoRA on `lm_head` that re-targets the token after
`<|assistant|>`, so "base" and "candidate" answer every prompt with a chosen text. The
eval set then fixes every cell of the paired 2x2 table: with `metric = "contains"` a
reference both answers contain counts for both, one only the candidate's for it alone,
and so on. Gate logic is tested on these; training is tested elsewhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from gates.tiny import LETTERS, build_tiny_project

SCALE = 3.0  # lm_head entry: logit = SCALE * sqrt(hidden) = 24 for hidden 64
ASSISTANT = "<|assistant|>"
END = "<|end|>"


def _chains(answers: list[str]) -> dict[str, str]:
    """token -> next token for every answer text (each word of each answer)."""
    nxt: dict[str, str] = {}
    for text in answers:
        words = text.split()
        for a, b in zip(words, [*words[1:], END], strict=True):
            if nxt.get(a, b) != b:
                raise ValueError(f"answers disagree on what follows {a!r}")
            nxt[a] = b
    return nxt


def build(root: Path, *, base_answer: str, adapter_answer: str) -> dict[str, Path]:
    """A tiny project whose base answers every prompt with `base_answer` and whose adapter
    makes it answer `adapter_answer` (words of the tiny vocabulary). Returns the project
    paths of `gates.tiny.build_tiny_project` with base and adapter replaced."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from gates.modeling import quiet

    tiny = build_tiny_project(root, seed=0, pretrain_steps=0, adapter_steps=0)
    tok = json.loads((tiny["tokenizer"] / "tokenizer.json").read_text("utf-8"))
    vocab: dict[str, int] = tok["model"]["vocab"]
    model = AutoModelForCausalLM.from_pretrained(tiny["base"], dtype=torch.float32)
    hidden = model.config.hidden_size
    if len(vocab) > hidden:
        raise ValueError("the bigram construction needs hidden size >= vocabulary")
    first = {base_answer.split()[0], adapter_answer.split()[0]}
    chain = _chains([base_answer, adapter_answer]) if len(first) == 2 else _chains([base_answer])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.zero_()
        emb = model.model.embed_tokens.weight
        emb[:, : len(vocab)] = torch.eye(emb.shape[0], len(vocab))
        head = model.lm_head.weight
        for word, following in {**chain, ASSISTANT: base_answer.split()[0]}.items():
            head[vocab[following], vocab[word]] = SCALE
    shutil.rmtree(tiny["base"])
    model.save_pretrained(tiny["base"])
    shutil.copytree(tiny["tokenizer"], tiny["base"], dirs_exist_ok=True)

    lora = LoraConfig(r=1, lora_alpha=1, lora_dropout=0.0, target_modules=["lm_head"],
                      task_type="CAUSAL_LM")  # fmt: skip
    with quiet():
        peft_model = get_peft_model(model, lora)
        with torch.no_grad():
            (a,) = [p for n, p in peft_model.named_parameters() if "lora_A" in n]
            (b,) = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
            a.zero_()
            b.zero_()
            a[0, vocab[ASSISTANT]] = 1.0
            to, frm = vocab[adapter_answer.split()[0]], vocab[base_answer.split()[0]]
            if to != frm:
                b[to, 0] = 2 * SCALE
                b[frm, 0] = -2 * SCALE
        shutil.rmtree(tiny["adapter"])
        peft_model.save_pretrained(tiny["adapter"])
    (tiny["adapter"] / "README.md").unlink(missing_ok=True)
    cfg_path = tiny["adapter"] / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text("utf-8"))
    cfg["base_model_name_or_path"] = "base"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
    return tiny


def register(reg: Any, tiny: dict[str, Path], name: str) -> str:
    """Register the constructed project as a bundle; returns its tag."""
    from tests.gates.model_fixtures import register_tiny

    return register_tiny(reg, tiny, name).tag


def rows(prompt: str, references: list[str], **extra: Any) -> list[dict[str, Any]]:
    """Eval rows with the given references (prompts numbered so no two rows are equal)."""
    out = []
    for i, ref in enumerate(references):
        row = {"messages": [{"role": "user", "content": f"{prompt} {LETTERS[i % 12]}"},
                            {"role": "assistant", "content": ref}]}  # fmt: skip
        out.append({**row, **{k: (v[i] if isinstance(v, list) else v) for k, v in extra.items()}})
    return out


def write_eval(root: Path, name: str, rows_: list[dict[str, Any]]) -> str:
    path = root / "evals" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows_), encoding="utf-8")
    return f"evals/{name}"
