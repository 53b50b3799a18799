"""Adapter components: any PEFT adapter directory (LoRA, QLoRA, IA3, prompt tuning, ...)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from registry.errors import InvalidInputError
from registry.ingest.common import Staged, read_json, scan_dir, weights_summary

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def parse_adapter_config(cfg: Any, where: str = "adapter_config.json") -> dict[str, Any]:
    """The metadata a release manager needs from a PEFT adapter_config.json."""
    if not isinstance(cfg, dict):
        raise InvalidInputError(f"{where} must be a JSON object")
    peft_type = cfg.get("peft_type")
    if not isinstance(peft_type, str) or not peft_type:
        raise InvalidInputError(f"{where} has no peft_type", "Is this a PEFT adapter directory?")
    meta: dict[str, Any] = {
        "peft_type": peft_type,
        "task_type": cfg.get("task_type"),
        "base_model_name_or_path": cfg.get("base_model_name_or_path"),
    }
    if peft_type in ("LORA", "ADALORA", "LOHA", "LOKR"):
        r = _number(where, "r", cfg.get("r"))
        alpha = _number(where, "lora_alpha", cfg.get("lora_alpha", cfg.get("alpha")))
        if not isinstance(r, int) or r <= 0:
            raise InvalidInputError(f"{where}: r must be a positive integer, got {r!r}")
        if not math.isfinite(alpha):
            raise InvalidInputError(f"{where}: lora_alpha must be a finite number, got {alpha!r}")
        dropout = cfg.get("lora_dropout")
        if dropout is not None and (
            not isinstance(dropout, int | float)
            or isinstance(dropout, bool)
            or not 0 <= dropout < 1
        ):
            raise InvalidInputError(
                f"{where}: lora_dropout must be a number at least 0 and below 1, got {dropout!r}"
            )
        targets = cfg.get("target_modules")
        if isinstance(targets, list):
            targets = sorted(str(t) for t in targets)
        elif targets is not None and not isinstance(targets, str):
            raise InvalidInputError(f"{where}: target_modules must be a list or a string")
        rslora = bool(cfg.get("use_rslora", False))
        scaling = alpha / math.sqrt(r) if rslora and r > 0 else (alpha / r if r else None)
        meta.update(
            r=r,
            lora_alpha=alpha,
            lora_dropout=cfg.get("lora_dropout"),
            target_modules=targets,
            use_rslora=rslora,
            use_dora=bool(cfg.get("use_dora", False)),
            scaling=scaling,
        )
    elif peft_type == "IA3":
        meta["target_modules"] = cfg.get("target_modules")
        meta["feedforward_modules"] = cfg.get("feedforward_modules")
    elif "num_virtual_tokens" in cfg:
        meta["num_virtual_tokens"] = cfg.get("num_virtual_tokens")
    return meta


def _number(where: str, key: str, value: Any) -> int | float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidInputError(f"{where}: {key} must be a number, got {value!r}")
    return value


def stage(root: Path, *, allow_pickle: bool = False) -> Staged:
    staged, headers = scan_dir(root, "adapter", allow_pickle=allow_pickle)
    meta = parse_adapter_config(read_json(root / "adapter_config.json", "adapter"))
    if not any(name in staged.files for name in WEIGHT_FILES):
        raise InvalidInputError(
            f"adapter: {root} has no adapter_model.safetensors",
            "Save the adapter with PeftModel.save_pretrained().",
        )
    meta["weights"] = weights_summary(headers)
    staged.meta = meta
    return staged
