"""merge-equivalence: does the merged model compute what the adapter-on-base model does?

Serving stacks often fold the adapter into the base (peft `merge_and_unload`) and cast
to a serving dtype. The reference is the unmerged model in float32 (what was trained and
evaluated). On a fixed batch (conversations from the eval set, answer included) the gate
compares, over every real token position, the logits of:

- the merged model in float32: the merge itself must be exact up to float rounding
  (`float32_max_abs_logit_diff`); a failure here means a broken merge;
- the merged model cast to the serving `dtype` (merged in float32 first, then cast, so
  the cast is the only loss): max and mean absolute logit difference and top-1
  agreement against `max_abs_logit_diff` and `min_top1_agreement`.

The unmerged model in the serving dtype is measured too (evidence only), so a reader can
tell the cost of the dtype from the cost of merging.

Applicability. Merging needs adapter weights that fold into the base's: LoRA and QLoRA
(a LoRA adapter), IA3 (its scaling vectors multiply the weights) and the other peft
tuners peft can `merge_and_unload`. A full fine-tune has no adapter, and prompt learning
(prompt_tuning, p_tuning, prefix_tuning, ...) adds virtual tokens or prefix key/values
rather than changing weights: for those the gate records a failed run whose summary
starts with "not applicable:" and names the adaptation (metric `applicable: false`),
never a pass and never a crash. An adapter type not known here whose loaded peft model
cannot merge is reported the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gates.base import Gate, GateContext, GateResult, bundle_adaptation, not_applicable
from gates.evals import load_items
from registry.errors import GateError

WHAT = "merge-equivalence folds adapter weights into the base"
# Adaptations (registry.bundles.adaptation) with no weights to fold into the base.
PROMPT_LEARNING = (
    "prompt_tuning", "p_tuning", "prefix_tuning", "multitask_prompt_tuning", "adaption_prompt",
    "cpt",
)  # fmt: skip


class MergeEquivalenceGate(Gate):
    """Merged vs unmerged logits, in float32 and in the serving dtype."""

    name = "merge-equivalence"
    version = "1"
    needs_model = True
    description = "merged vs unmerged logits (max/mean diff, top-1 agreement) in serving dtype"
    defaults: ClassVar[dict[str, Any]] = {
        "eval_set": "evals/target.jsonl",
        "num_items": 16,
        "dtype": "bfloat16",
        "max_abs_logit_diff": 0.05,
        "min_top1_agreement": 0.99,
        "float32_max_abs_logit_diff": 0.001,
    }

    def run(self, ctx: GateContext) -> GateResult:
        from gates import modeling

        p = ctx.params
        kind = bundle_adaptation(ctx.bundle)
        if kind == "full":
            return not_applicable(ctx, WHAT, "a full fine-tune has no adapter to merge")
        if kind in PROMPT_LEARNING:
            return not_applicable(
                ctx, WHAT, "it adds virtual tokens, not weights, so there is nothing to merge"
            )
        if not (ctx.workdir / "adapter_config.json").is_file():
            raise GateError("the bundle has no adapter, so there is nothing to merge")
        dtype = str(p["dtype"])
        items = load_items(ctx, p["eval_set"])[: max(1, int(p["num_items"]))]
        convs = [
            [*it.prompt, {"role": "assistant", "content": it.reference}]
            if it.reference is not None
            else it.prompt
            for it in items
        ]
        base_meta = ctx.meta("base_model")
        loaded = modeling.load_bundle(ctx.workdir, base_meta, dtype="float32")
        if not hasattr(loaded.model, "merge_and_unload"):  # a peft type peft cannot merge
            modeling.free(loaded)
            return not_applicable(ctx, WHAT, f"peft cannot merge a {kind} adapter")
        device = modeling.device_name(loaded.device)
        merged = cast = None
        try:
            ref, mask = loaded.logits(convs)
            ctx.progress("merging the adapter in float32")
            merged = modeling.merged(loaded)
            fp32 = modeling.logit_agreement(ref, merged.logits(convs)[0], mask)
            comparisons: dict[str, Any] = {"merged_float32": fp32}
            serving = fp32
            if dtype != "float32":
                ctx.progress(f"casting the merged model to {dtype}")
                cast = modeling.cast(merged, dtype)
                serving = modeling.logit_agreement(ref, cast.logits(convs)[0], mask)
                comparisons[f"merged_{dtype}"] = serving
        finally:
            modeling.free(loaded, merged, cast)
        if dtype != "float32":
            unmerged = modeling.load_bundle(ctx.workdir, base_meta, dtype=dtype)
            try:
                comparisons[f"unmerged_{dtype}"] = modeling.logit_agreement(
                    ref, unmerged.logits(convs)[0], mask
                )
            finally:
                modeling.free(unmerged)
        metrics = {
            "float32_max_abs_logit_diff": fp32["max_abs_logit_diff"],
            "float32_mean_abs_logit_diff": fp32["mean_abs_logit_diff"],
            "float32_top1_agreement": fp32["top1_agreement"],
            "max_abs_logit_diff": serving["max_abs_logit_diff"],
            "mean_abs_logit_diff": serving["mean_abs_logit_diff"],
            "top1_agreement": serving["top1_agreement"],
            "positions": fp32["positions"],
        }
        thresholds = {
            "dtype": dtype,
            "max_abs_logit_diff": p["max_abs_logit_diff"],
            "min_top1_agreement": p["min_top1_agreement"],
            "float32_max_abs_logit_diff": p["float32_max_abs_logit_diff"],
        }
        failures = []
        if fp32["max_abs_logit_diff"] > p["float32_max_abs_logit_diff"]:
            failures.append(
                f"merge is not exact in float32: max logit diff {fp32['max_abs_logit_diff']:.3g}"
                f" > {p['float32_max_abs_logit_diff']}"
            )
        if serving["max_abs_logit_diff"] > p["max_abs_logit_diff"]:
            failures.append(
                f"merged in {dtype}: max logit diff {serving['max_abs_logit_diff']:.3g}"
                f" > {p['max_abs_logit_diff']}"
            )
        if serving["top1_agreement"] < p["min_top1_agreement"]:
            failures.append(
                f"merged in {dtype}: top-1 agreement {serving['top1_agreement']:.4f}"
                f" < {p['min_top1_agreement']}"
            )
        evidence = {
            "device": device,
            "reference": "unmerged adapter on base, float32",
            "items": len(items),
            "comparisons": comparisons,
        }
        summary = (
            f"float32 max diff {fp32['max_abs_logit_diff']:.2g}; {dtype} max diff"
            f" {serving['max_abs_logit_diff']:.2g}, top-1 {serving['top1_agreement']:.4f}"
        )
        return GateResult.check(failures, metrics, thresholds, evidence, summary)
