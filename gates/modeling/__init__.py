"""Loading and running models for the gates. torch, transformers and peft are imported
only inside the functions that use them, so importing this package costs nothing.

The modules: `environment` (torch set up once, device, dtype, versions, the machine),
`chat` (tokenizer, chat template, encoding with labels, packing, collation), `loading`
(base + adapter as a `LoadedModel`; merge, cast, free), `fingerprints` (logit agreement,
a model's fingerprint), `memory` (peak memory of a block), `training` (LoRA training,
validation loss, saving the adapter). Every name the rest of the code uses is
re-exported here: `from gates import modeling; modeling.load_bundle(...)`.

Where torch, transformers and peft are imported, always inside functions: `import torch`
only in `environment.setup_torch` (every other function here that needs torch gets it from
`setup_torch()`) and, on CUDA only, in `environment.device_name`, `loading.release` and
`memory.peak_memory`; transformers in `environment`, `chat`, `loading` and `training`;
peft in `loading` and `training`. Elsewhere under gates/ only `serving._sync` (`import
torch`, on CUDA only) and the tiny-project builder `gates/tiny/build.py` (torch,
transformers, tokenizers, peft) import any of them; `gates/engine.py` reads an already
imported torch from `sys.modules` and imports none.

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

from gates.modeling.chat import (
    IGNORE,
    Encoded,
    Messages,
    chat_spans,
    collate,
    encode_chat,
    encode_text,
    load_tokenizer,
    pack,
    render,
)
from gates.modeling.environment import (
    DTYPES,
    device_name,
    kernel_path,
    machine,
    qlora_available,
    quiet,
    resolve_dtype,
    runtime,
    select_device,
    setup_torch,
)
from gates.modeling.fingerprints import fingerprint, logit_agreement, top2_margins
from gates.modeling.loading import (
    Generation,
    LoadedModel,
    base_location,
    cast,
    free,
    load_base,
    load_bundle,
    merged,
    release,
)
from gates.modeling.memory import peak_memory
from gates.modeling.training import (
    TrainOutcome,
    TrainSpec,
    save_adapter,
    train_lora,
    validation_loss,
)

__all__ = [
    "DTYPES",
    "IGNORE",
    "Encoded",
    "Generation",
    "LoadedModel",
    "Messages",
    "TrainOutcome",
    "TrainSpec",
    "base_location",
    "cast",
    "chat_spans",
    "collate",
    "device_name",
    "encode_chat",
    "encode_text",
    "fingerprint",
    "free",
    "kernel_path",
    "load_base",
    "load_bundle",
    "load_tokenizer",
    "logit_agreement",
    "machine",
    "merged",
    "pack",
    "peak_memory",
    "qlora_available",
    "quiet",
    "release",
    "render",
    "resolve_dtype",
    "runtime",
    "save_adapter",
    "select_device",
    "setup_torch",
    "top2_margins",
    "train_lora",
    "validation_loss",
]
