"""Loading and running models for the gates: the only module that imports torch,
transformers and peft, always inside the functions that use them (importing this module
costs nothing).

Rules every model gate relies on:

- Models load from local files only (`local_files_only=True`), never with
  `trust_remote_code`; an external `hf://` base comes from the local Hugging Face cache.
- Weights load in float32 unless a gate asks for another dtype (transformers 5 would
  otherwise keep the dtype the checkpoint was saved in).
- The device is CUDA when present (`REGISTRY_DEVICE=cpu` forces the CPU); QLoRA (4-bit
  bitsandbytes) is used only when CUDA and bitsandbytes are both there.
- On the CPU torch uses `REGISTRY_TORCH_THREADS` threads, one under pytest: on a shared
  small machine more threads make tiny models several times slower.
- Chat text is rendered with `apply_chat_template(tokenize=False)` and then tokenized
  without extra special tokens; labels and scores cover assistant tokens only, found by
  character spans of the rendered conversation (see `chat_spans`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import GateError

Messages = list[dict[str, str]]
DTYPES = ("float32", "bfloat16", "float16")
IGNORE = -100  # label of a token the loss skips


# --- environment -------------------------------------------------------------------------


_configured = False


def setup_torch() -> Any:
    """torch, configured once: the thread count and quiet transformers logging."""
    global _configured
    import torch

    if not _configured:
        threads = os.environ.get("REGISTRY_TORCH_THREADS")
        if threads:
            torch.set_num_threads(max(1, int(threads)))
        elif "PYTEST_CURRENT_TEST" in os.environ:
            torch.set_num_threads(1)
        import transformers

        transformers.logging.disable_progress_bar()
        transformers.logging.set_verbosity_error()
        _configured = True
    return torch


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the warnings peft and transformers raise about their own internals."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module="peft")
        warnings.filterwarnings("ignore", category=UserWarning, module="peft")
        yield


def select_device() -> str:
    """The device models run on: cuda when a GPU is present, else cpu (REGISTRY_DEVICE wins)."""
    forced = os.environ.get("REGISTRY_DEVICE")
    if forced:
        return forced
    torch = setup_torch()
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str) -> str:
    """A human label of the device, recorded in every model gate's evidence (the CPU's
    model, cores and kernel path are in `machine()`)."""
    if device.startswith("cuda"):
        import torch

        return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
    return "cpu"


def resolve_dtype(name: str, device: str) -> Any:
    """The torch dtype for a policy's dtype name ("auto": bfloat16 on CUDA, else float32)."""
    torch = setup_torch()
    if name == "auto":
        name = "bfloat16" if device.startswith("cuda") else "float32"
    if name not in DTYPES:
        raise GateError(f"dtype {name!r} is not one of {', '.join(DTYPES)} or auto")
    return getattr(torch, name)


def qlora_available(device: str) -> bool:
    """Whether 4-bit QLoRA can be used: CUDA and bitsandbytes both present."""
    return device.startswith("cuda") and importlib.util.find_spec("bitsandbytes") is not None


def runtime() -> dict[str, str | None]:
    """Versions of the libraries that produce a model's outputs (for fingerprints)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("torch", "transformers", "peft", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# --- tokenization ------------------------------------------------------------------------


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


# --- loading -----------------------------------------------------------------------------


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
        model.to(device)
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


# --- comparisons and fingerprints --------------------------------------------------------


def logit_agreement(ref: Any, other: Any, mask: Any) -> dict[str, float]:
    """Max and mean absolute logit difference and top-1 agreement over real tokens."""
    diff = (ref - other).abs()[mask]
    top1 = (ref.argmax(-1) == other.argmax(-1))[mask]
    return {
        "max_abs_logit_diff": float(diff.max()) if diff.numel() else 0.0,
        "mean_abs_logit_diff": float(diff.mean()) if diff.numel() else 0.0,
        "top1_agreement": float(top1.float().mean()) if top1.numel() else 1.0,
        "positions": int(mask.sum()),
    }


def fingerprint(loaded: LoadedModel, prompts: Sequence[Messages], max_new_tokens: int) -> dict:
    """What a model does on fixed prompts: greedy generations and logit checksums.

    Per prompt: its token ids, the greedy completion, for the logits over the prompt
    their sum and L2 norm (float64) plus the top-5 next-token logits at its end (and the
    6th, so a near tie at rank 5 can be told), and `margins`: the gap between the top two
    logits at each greedy step (one forward pass over prompt + completion; the last entry
    is the step after the completion, where eos or the length limit ended it). A step with
    a small margin is a near tie that another CPU kernel path may break the other way.
    The CPU kernel path is recorded with the device.
    """
    torch = setup_torch()
    gens = loaded.generate(prompts, max_new_tokens=max_new_tokens, batch_size=len(prompts))
    items = []
    for messages, gen in zip(prompts, gens, strict=True):
        ids = loaded.tokenizer(loaded.prompt_text(messages), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([ids], device=loaded.device)).logits
            steps = loaded.model(
                input_ids=torch.tensor([[*ids, *gen.token_ids]], device=loaded.device)
            ).logits
        logits = logits[0].double().cpu()
        top = torch.topk(logits[-1], k=min(6, logits.shape[-1]))
        items.append(
            {
                "prompt": messages,
                "prompt_ids": list(ids),
                "output": gen.text,
                "output_ids": gen.token_ids,
                "logit_sum": float(logits.sum()),
                "logit_norm": float(logits.norm()),
                "numel": int(logits.numel()),
                "top_ids": top.indices.tolist()[:5],
                "top_logits": [round(v, 6) for v in top.values.tolist()[:5]],
                "sixth_logit": round(float(top.values[5]), 6) if top.values.numel() > 5 else None,
                # counted from the end: prompt tuning prepends virtual token positions
                "margins": top2_margins(steps[0, steps.shape[1] - len(gen.token_ids) - 1 :]),
            }
        )
    return {
        "items": items,
        "max_new_tokens": max_new_tokens,
        "dtype": loaded.dtype,
        "device": device_name(loaded.device),
        "cpu_kernel_path": kernel_path(),
        "runtime": runtime(),
    }


def top2_margins(logits: Any) -> list[float | None]:
    """Per row of a [steps, vocab] logit tensor, the top logit minus the second (float64;
    None for a vocabulary of one token, where there is no second)."""
    torch = setup_torch()
    if logits.shape[-1] < 2:
        return [None] * int(logits.shape[0])
    top = torch.topk(logits.double().cpu(), k=2, dim=-1).values
    return [round(v, 6) for v in (top[:, 0] - top[:, 1]).tolist()]


def kernel_path() -> str | None:
    """torch's CPU kernel path (DEFAULT, AVX2, AVX512, ...: `ATEN_CPU_CAPABILITY` picks
    one; unset, the best the CPU has). Kernels of different paths round differently."""
    torch = setup_torch()
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return get() if get is not None else None


def machine() -> dict[str, Any]:
    """What a measured time depends on: the CPU model, its cores (all, and those this
    process may use), torch's kernel path and threads; the GPU when there is one."""
    import platform

    torch = setup_torch()
    cpu = platform.processor() or None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu_kernel_path": kernel_path(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _proc_status_kb(field: str) -> int | None:
    """A memory figure of this process from /proc/self/status (Linux), in kB: `VmRSS`
    (resident now) or `VmHWM` (peak resident); None where there is no such file."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# --- memory ------------------------------------------------------------------------------


@contextlib.contextmanager
def peak_memory(device: str) -> Iterator[dict[str, Any]]:
    """Peak memory of the block in MB: GPU allocations on CUDA, else the process's peak
    resident set (Linux resets it through /proc/self/clear_refs; elsewhere it is the
    peak since the process started). The dict is filled in when the block ends; its
    `start_mb` (what was in use when the block began, where known) lets a caller tell
    what the block itself added."""
    out: dict[str, Any] = {}
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated() / 2**20
        yield out
        torch.cuda.synchronize()
        out.update(
            peak_mb=torch.cuda.max_memory_allocated() / 2**20, start_mb=start,
            method="cuda_max_allocated",
        )  # fmt: skip
        return
    reset = False
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    start_kb = _proc_status_kb("VmRSS")
    yield out
    hwm = _proc_status_kb("VmHWM")
    if hwm is not None:
        out.update(
            peak_mb=hwm / 1024, start_mb=start_kb / 1024 if start_kb is not None else None,
            method="rss_peak" if reset else "rss_peak_since_start",
        )  # fmt: skip
    else:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = kb / 1024 if sys.platform == "darwin" else kb
        out.update(peak_mb=kb / 1024, start_mb=None, method="rss_peak_since_start")


# --- training ----------------------------------------------------------------------------


@dataclass
class TrainSpec:
    """Resolved LoRA hyperparameters (gates/train.py builds this from the config)."""

    r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: list[str] | str
    learning_rate: float
    steps: int
    batch_size: int
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler_type: str = "constant"
    seed: int = 0
    eval_steps: int = 10
    quantize: bool = False


@dataclass
class TrainOutcome:
    model: Any
    train_loss: list[list[float]]  # [step, loss]
    val_loss: list[list[float]]  # [step, loss]
    seconds: float
    device: str
    trainable_parameters: int


def train_lora(
    workdir: Path,
    base_meta: dict[str, Any],
    train: Sequence[Encoded],
    validation: Sequence[Encoded],
    spec: TrainSpec,
    *,
    pad_id: int,
    progress: Callable[[str], None] = lambda _m: None,
) -> TrainOutcome:
    """LoRA fine-tune of the bundle's base: fixed seeds, AdamW, per-step train loss and
    periodic validation loss. Deterministic on the CPU for the same inputs."""
    torch = setup_torch()
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(spec.seed)
    model, device = load_base(workdir, base_meta, quantize=spec.quantize)
    if spec.quantize:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    lora = LoraConfig(
        r=spec.r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )
    set_seed(spec.seed)  # LoRA A matrices are drawn from torch's generator
    with quiet():
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise GateError(f"LoRA config does not fit the base model: {exc}") from exc
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(spec))
    rng = random.Random(spec.seed)
    order: list[int] = []
    micro = spec.batch_size

    def next_batch() -> list[Encoded]:
        nonlocal order
        picked = []
        while len(picked) < min(micro, len(train)):
            if not order:
                order = list(range(len(train)))
                rng.shuffle(order)
            picked.append(train[order.pop()])
        return picked

    train_curve: list[list[float]] = []
    val_curve: list[list[float]] = [[0, validation_loss(model, validation, pad_id, device)]]
    t0 = time.perf_counter()
    for step in range(1, spec.steps + 1):
        model.train()
        total = 0.0
        for _ in range(spec.gradient_accumulation_steps):
            batch = collate(next_batch(), pad_id, device)
            with quiet():
                loss = model(**batch).loss / spec.gradient_accumulation_steps
            loss.backward()
            total += float(loss.detach())
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(total):
            raise GateError(f"training diverged: loss is {total} at step {step}")
        train_curve.append([step, round(total, 6)])
        if validation and (step % spec.eval_steps == 0 or step == spec.steps):
            val_curve.append([step, validation_loss(model, validation, pad_id, device)])
            progress(f"step {step}/{spec.steps} train {total:.3f} val {val_curve[-1][1]:.3f}")
        elif step % spec.eval_steps == 0:
            progress(f"step {step}/{spec.steps} train {total:.3f}")
    model.eval()
    if not validation:
        val_curve = []
    return TrainOutcome(
        model,
        train_curve,
        val_curve,
        time.perf_counter() - t0,
        device,
        sum(p.numel() for p in params),
    )


def _lr_lambda(spec: TrainSpec) -> Callable[[int], float]:
    kind = spec.lr_scheduler_type
    if kind not in ("constant", "linear", "cosine"):
        raise GateError(f"lr_scheduler_type {kind!r} is not constant, linear or cosine")

    def factor(step: int) -> float:
        if spec.warmup_steps and step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        if kind == "constant":
            return 1.0
        done = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return max(0.0, 1.0 - done) if kind == "linear" else 0.5 * (1 + math.cos(math.pi * done))

    return factor


def validation_loss(model: Any, examples: Sequence[Encoded], pad_id: int, device: str) -> float:
    """Token-weighted mean loss over labelled tokens of `examples` (eval mode, no grad).
    NaN for no examples; a GateError when the examples have no labelled token to score."""
    if not examples:
        return float("nan")
    torch = setup_torch()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 64):
            batch = collate(examples[i : i + 64], pad_id, device)
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
            labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            total += float(loss)
            count += int((labels != IGNORE).sum())
    if was_training:
        model.train()
    if count == 0:  # a mean over no tokens is no loss at all, not a loss of 0.0
        raise GateError(
            "validation: no example has a labelled token left to score",
            "Raise max_seq_len, or give the validation rows answers",
        )
    return round(total / count, 6)


def save_adapter(model: Any, out: Path, base_name: str) -> None:
    """Save a trained adapter so that the same weights always give the same bytes.

    peft writes `target_modules` in set order (which changes with PYTHONHASHSEED), the
    absolute path of the base it was loaded from, and a README model card: the config is
    rewritten with sorted keys and lists and the registry's base name, the card dropped.
    """
    with quiet():
        model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text("utf-8"))
    cfg["base_model_name_or_path"] = base_name
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
