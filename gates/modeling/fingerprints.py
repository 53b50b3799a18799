"""Comparing models: logit agreement between two models' outputs, and a model's
fingerprint on fixed prompts (generations, logit checksums, top-2 margins).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gates.modeling.chat import Messages
from gates.modeling.environment import device_name, kernel_path, runtime, setup_torch
from gates.modeling.loading import LoadedModel


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
