"""LoRA training of a bundle's base: the resolved hyperparameters, the training loop with
its loss curves, validation loss, and saving the adapter reproducibly.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gates.modeling.chat import IGNORE, Encoded, collate
from gates.modeling.environment import quiet, setup_torch
from gates.modeling.loading import load_base
from registry.errors import GateError


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
        # peft annotates lora_alpha as int but uses it as a float (alpha / r): a fractional
        # alpha from a training config is passed as it is.
        lora_alpha=spec.lora_alpha,  # type: ignore[arg-type]
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
        picked: list[Encoded] = []
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
