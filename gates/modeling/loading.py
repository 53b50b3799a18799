"""Loading models: a bundle's base (local files only, float32 unless asked otherwise,
QLoRA on request), with its adapter as one `LoadedModel` that generates and scores;
merging, casting and freeing them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gates.modeling.chat import IGNORE, Messages, collate, encode_chat, load_tokenizer, render
from gates.modeling.environment import quiet, resolve_dtype, select_device, setup_torch
from registry.errors import GateError


def base_location(workdir: Path, base_meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Where the base model's weights are: the bundle's base/, its top level (a full
    fine-tune) or the local Hugging Face cache (an external hf:// base)."""
    if (workdir / "base" / "config.json").is_file():
        return str(workdir / "base"), {}
    if base_meta.get("repo_id"):
        return base_meta["repo_id"], {"revision": base_meta.get("revision")}
    if (workdir / "config.json").is_file():
        return str(workdir), {}
    raise GateError(f"no base model weights in {workdir.name} and no external base to load")


def load_base(
    workdir: Path,
    base_meta: dict[str, Any],
    *,
    dtype: str = "float32",
    device: str | None = None,
    quantize: bool = False,
) -> tuple[Any, str]:
    """The base model (no adapter) and the device it is on."""
    torch = setup_torch()
    from transformers import AutoModelForCausalLM

    device = device or select_device()
    where, extra = base_location(workdir, base_meta)
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": False,
        "dtype": resolve_dtype(dtype, device),
        **extra,
    }
    if quantize:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": 0}
    try:
        with quiet():
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except OSError as exc:
        if extra:
            raise GateError(
                f"base model {where}@{extra.get('revision')} is not in the local Hugging Face"
                f" cache: `huggingface-cli download {where} --revision {extra.get('revision')}`"
            ) from exc
        raise GateError(f"the base model does not load: {exc}") from exc
    if not quantize:
        # transformers declares to() with functools.wraps(torch.nn.Module.to), which mypy
        # reads as taking the module as its first argument.
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, device


@dataclass
class Generation:
    """One greedy completion: the decoded text and its new token ids (eos removed)."""

    text: str
    token_ids: list[int]


@dataclass
class LoadedModel:
    """A model with its tokenizer, ready for the gates' generation and scoring."""

    model: Any
    tokenizer: Any
    device: str
    dtype: str
    has_adapter: bool

    @contextlib.contextmanager
    def base_only(self) -> Iterator[LoadedModel]:
        """The same model with its adapter switched off: the base alone, exactly."""
        if not self.has_adapter:
            raise GateError("this bundle has no adapter, so it has no separate base to compare")
        with self.model.disable_adapter():
            yield LoadedModel(self.model, self.tokenizer, self.device, self.dtype, False)

    def prompt_text(self, messages: Messages) -> str:
        return render(self.tokenizer, messages, add_generation_prompt=True)

    def generate(
        self,
        prompts: Sequence[Messages],
        *,
        max_new_tokens: int,
        batch_size: int = 32,
        exact_length: bool = False,
    ) -> list[Generation]:
        """Greedy completions of chat prompts, batched with left padding.

        `exact_length` suppresses eos so every completion has `max_new_tokens` tokens
        (serving benchmarks need a fixed amount of work).
        """
        torch = setup_torch()
        from transformers import GenerationConfig

        tok = self.tokenizer
        texts = [self.prompt_text(p) for p in prompts]
        out: list[Generation] = []
        eos = tok.eos_token_id
        limit = getattr(self.model.config, "max_position_embeddings", None)
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            for i in range(0, len(texts), batch_size):
                enc = tok(
                    texts[i : i + batch_size],
                    add_special_tokens=False,
                    padding=True,
                    return_tensors="pt",
                ).to(self.device)
                width = enc["input_ids"].shape[1]
                n_new = max_new_tokens if limit is None else min(max_new_tokens, limit - width)
                if n_new <= 0:
                    raise GateError(f"prompt of {width} tokens leaves no room to generate")
                cfg = GenerationConfig(
                    max_new_tokens=n_new,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=eos,
                    bos_token_id=tok.bos_token_id,
                )
                if exact_length:
                    cfg.min_new_tokens = n_new
                with torch.no_grad(), quiet():
                    seqs = self.model.generate(**enc, generation_config=cfg)
                rows = [
                    row[: row.index(eos)] if eos is not None and eos in row else row
                    for row in seqs[:, width:].tolist()
                ]
                texts_out = tok.batch_decode(rows, skip_special_tokens=True)
                out += [
                    Generation(" ".join(t.split()), r) for t, r in zip(texts_out, rows, strict=True)
                ]
        finally:
            tok.padding_side = old_side
        return out

    def answer_logprobs(
        self, conversations: Sequence[Messages], batch_size: int = 8
    ) -> list[float]:
        """Log-probability of each conversation's last assistant turn given what precedes."""
        torch = setup_torch()
        encoded = [encode_chat(self.tokenizer, c, last_only=True) for c in conversations]
        out: list[float] = []
        for i in range(0, len(encoded), batch_size):
            batch = collate(encoded[i : i + batch_size], self.tokenizer.pad_token_id, self.device)
            with torch.no_grad():
                logits = self.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits.float()
            # prompt tuning prepends virtual tokens: their positions come first; drop them
            logits = logits[:, logits.shape[1] - batch["input_ids"].shape[1] :]
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            labels = batch["labels"][:, 1:]
            mask = labels != IGNORE
            picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            out += (picked * mask).sum(dim=1).tolist()
        return out

    def logits(self, conversations: Sequence[Messages]) -> tuple[Any, Any]:
        """Float32 logits of whole conversations (right-padded) and the real-token mask."""
        torch = setup_torch()
        encoded = [encode_chat(self.tokenizer, c) for c in conversations]
        batch = collate(encoded, self.tokenizer.pad_token_id, self.device)
        with torch.no_grad():
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits.float().cpu(), batch["attention_mask"].bool().cpu()


def load_bundle(
    workdir: Path,
    base_meta: dict[str, Any],
    *,
    adapter: bool = True,
    dtype: str = "float32",
    device: str | None = None,
    tokenizer_dir: Path | None = None,
) -> LoadedModel:
    """A materialized bundle as one model: base + adapter (PeftModel), or the base alone.

    `tokenizer_dir` loads the tokenizer and template from another bundle (the rollback
    test runs an older bundle's weights with the newer bundle's tokenizer).
    """
    tokenizer = load_tokenizer(tokenizer_dir or workdir)
    model, device = load_base(workdir, base_meta, dtype=dtype, device=device)
    has_adapter = adapter and (workdir / "adapter_config.json").is_file()
    if has_adapter:
        from peft import PeftModel

        try:
            with quiet():
                model = PeftModel.from_pretrained(model, str(workdir), is_trainable=False)
        except Exception as exc:  # peft raises ValueError/KeyError/RuntimeError on mismatch
            raise GateError(f"the adapter does not load onto the base: {exc}") from exc
        model.to(device)
        model.eval()
    return LoadedModel(model, tokenizer, device, dtype, has_adapter)


def merged(loaded: LoadedModel) -> LoadedModel:
    """The adapter folded into the base weights (peft merge_and_unload), in place."""
    if not loaded.has_adapter:
        raise GateError("the bundle has no adapter to merge")
    with quiet():
        model = loaded.model.merge_and_unload()
    model.eval()
    return LoadedModel(model, loaded.tokenizer, loaded.device, loaded.dtype, False)


def cast(loaded: LoadedModel, dtype: str) -> LoadedModel:
    """The model cast to `dtype` (in place)."""
    loaded.model.to(resolve_dtype(dtype, loaded.device))
    return LoadedModel(loaded.model, loaded.tokenizer, loaded.device, dtype, loaded.has_adapter)


def free(*models: LoadedModel | None) -> None:
    """Drop the models (between gates and phases) and give their GPU memory back."""
    devices = {m.device for m in models if m is not None}
    for m in models:
        if m is not None:
            m.model = None
    for device in devices:
        release(device)


def release(device: str) -> None:
    """On CUDA, collect garbage and empty torch's cache so the next model fits.

    A full `gc.collect()` costs about 0.2 s with torch and transformers loaded (a third of
    a tiny eval), so on the CPU reference counting and the automatic collector suffice.
    """
    if device.startswith("cuda"):
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
