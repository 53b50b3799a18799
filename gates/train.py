"""Training: `registry train` and the `train` gate.

`train_bundle` LoRA-fine-tunes a bundle's base on a dataset (the bundle's own, or a new
directory) with a config's hyperparameters (the bundle's own, or a new file), and
registers the result as a new bundle with `parent` set to the bundle it started from:
same base, tokenizer and chat template, the dataset and config used, the new adapter.
Its loss curves are recorded as a `train` gate run of the new bundle.

The `train` gate re-runs a bundle's own recipe (its base, dataset and config) and checks
that the recipe trains sanely: the training loss falls, the validation loss does not stay
more than `max_val_loss_rise` above its best for the last `val_patience` evaluations while
the training loss keeps falling (overfitting), and, with
`require_reproducible`, that the retrained adapter is byte-identical to the bundle's
(true on the CPU for any bundle `registry train` produced). A retrained adapter that
differs is registered as a new bundle (parent = the gated bundle) when `register` is set.

Config keys. The keys (and aliases) training reads are `ALIASES`. A key the trainer does
not know is an error naming it and its nearest known key (`config: unknown key 'steps'
(did you mean 'max_steps'?)`): silently training 9 steps for a config that says
`steps: 300` is a wrong adapter, not a warning. The exception is `IGNORED_KEYS`, a fixed
list of bookkeeping keys trainers write into their configs (HF TrainingArguments dumps:
`output_dir`, `logging_steps`, `save_steps`, `report_to`, ...) that cannot change the
trained weights: where output goes, logging, checkpointing, reporting, evaluation
batching, data-loader workers, memory-only switches. Those are accepted and listed in
the evidence as `ignored_hyperparameters`. Anything that can change the weights and that
this trainer does not implement (`max_grad_norm`, `fp16`, `optim`, `load_in_4bit`, ...) is
an error too: the recipe would not be the one that is run. Two aliases of one key with
different values are an error.

Validation loss is over answer (labelled) tokens only. A validation split whose rows all
lost their answer to truncation (`max_seq_len` shorter than the prompts) has nothing to
score: that is an error (raise `max_seq_len`), never a loss of 0.0 and an overfitting
check that passes; rows that lost it while others kept theirs are left out of the loss
and counted in the evidence (`validation_rows_without_answer`).

Applicability. Both retrain a LoRA adapter. The train gate checks a LoRA (or QLoRA)
bundle's recipe; for a bundle that adapts its base otherwise (ia3, prompt_tuning, full,
...) retraining LoRA would check a different recipe, so the gate records a failed run
whose summary starts with "not applicable:" and names the adaptation. `registry train
--from` such a bundle trains a new LoRA adapter on its base; the LoRA shape defaults
come from the parent adapter only when that is a LoRA adapter.

Determinism: seeds are fixed (`seed` in the config), batches come from a seeded
shuffle, and the adapter is saved with a normalized config, so the same inputs on the
CPU give the same adapter digest. GPU kernels are not bitwise deterministic.
"""

from __future__ import annotations

import difflib
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from gates.base import (
    Gate,
    GateContext,
    GateResult,
    bundle_adaptation,
    not_applicable,
    require_component,
)
from gates.rows import read_jsonl
from registry.errors import GateError, InvalidInputError, UsageError

if TYPE_CHECKING:
    from gates.executor import Candidate
    from gates.modeling import Encoded, TrainSpec
    from registry.bundles import AddResult
    from registry.identity import Identity
    from registry.ingest.common import Staged
    from registry.policy import Policy
    from registry.repo import Registry

# Config key -> the names trainers use for it (first match wins).
ALIASES: dict[str, tuple[str, ...]] = {
    "r": ("r", "lora_r", "rank"),
    "lora_alpha": ("lora_alpha", "alpha"),
    "lora_dropout": ("lora_dropout", "dropout"),
    "target_modules": ("target_modules",),
    "learning_rate": ("learning_rate", "lr"),
    "epochs": ("epochs", "num_train_epochs"),
    "max_steps": ("max_steps",),
    "max_seq_len": ("max_seq_len", "max_seq_length", "max_length", "cutoff_len", "sequence_len"),
    "packing": ("packing",),
    "seed": ("seed",),
    "batch_size": ("batch_size", "per_device_train_batch_size", "train_batch_size"),
    "gradient_accumulation_steps": ("gradient_accumulation_steps",),
    "weight_decay": ("weight_decay",),
    "warmup_steps": ("warmup_steps",),
    "lr_scheduler_type": ("lr_scheduler_type", "lr_scheduler"),
    "eval_steps": ("eval_steps",),
    "quantization": ("quantization",),
}
# Bookkeeping keys trainers write into configs that cannot change the trained weights:
# accepted and recorded as ignored (anything else training does not read is an error).
IGNORED_KEYS = frozenset(
    {
        # where output goes, run names
        "output_dir", "overwrite_output_dir", "logging_dir", "run_name", "project",
        # logging and reporting
        "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter",
        "log_level", "log_level_replica", "log_on_each_node", "report_to", "disable_tqdm",
        "skip_memory_metrics", "include_num_input_tokens_seen", "include_tokens_per_second",
        # checkpoints and the Hub
        "save_strategy", "save_steps", "save_total_limit", "save_safetensors",
        "save_on_each_node", "save_only_model", "push_to_hub", "hub_model_id", "hub_strategy",
        "hub_token", "hub_private_repo", "hub_always_push",
        # evaluation scheduling and batching (validation loss uses eval_steps)
        "do_train", "do_eval", "do_predict", "eval_strategy", "evaluation_strategy",
        "per_device_eval_batch_size", "eval_batch_size", "eval_accumulation_steps",
        "prediction_loss_only",
        # data loading and memory only: the same batches and the same arithmetic
        "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "dataloader_drop_last", "gradient_checkpointing",
        "gradient_checkpointing_kwargs",
    }
)  # fmt: skip
# Unknown keys whose meaning a known key covers, where the spelling is not close.
KEY_HINTS = {
    "load_in_4bit": "quantization",
    "load_in_8bit": "quantization",
    "bnb_4bit_quant_type": "quantization",
    "quantization_config": "quantization",
}
LORA_ADAPTATIONS = ("lora", "qlora")
KNOWN_KEYS = tuple(n for names in ALIASES.values() for n in names)
VALIDATION_SPLITS = ("validation", "valid", "val", "eval", "dev")
MAX_CURVE_POINTS = 1000


class TrainGate(Gate):
    """Retrain the bundle from its own dataset and config; check the loss curves."""

    name = "train"
    version = "1"
    needs_model = True
    description = "LoRA fine-tune from the bundle's dataset and config; loss curves, overfitting"
    defaults: ClassVar[dict[str, Any]] = {
        "max_val_loss_rise": 0.1,  # relative rise of validation loss above its best
        "min_val_loss_rise": 0.05,  # ... and absolute (nats per token): below it, noise
        "val_patience": 3,  # ... sustained over this many evaluations
        "require_reproducible": False,
        "register": True,
    }

    def run(self, ctx: GateContext) -> GateResult:
        if bundle_adaptation(ctx.bundle) not in LORA_ADAPTATIONS:
            return not_applicable(
                ctx, "the train gate retrains a LoRA adapter from the bundle's recipe",
                "retraining LoRA would check another recipe than the one that made it",
            )  # fmt: skip
        dataset_dir = require_component(ctx, "dataset")
        hyper = ctx.meta("config").get("hyperparameters")
        if hyper is None:
            raise GateError("the bundle has no training config, which the train gate needs")
        run = _train(ctx.workdir, ctx.bundle, dataset_dir, hyper, ctx.params, ctx.progress)
        try:
            staged = _stage_adapter(run.adapter_dir)
            own = ctx.bundle["components"].get("adapter")
            retrained = _component_digest(staged)
            reproduced = own is not None and own["digest"] == retrained
            run.metrics["reproduced"] = reproduced
            run.evidence["reproduced"] = reproduced
            run.evidence["bundle_adapter"] = own["digest"] if own else None
            run.evidence["retrained_adapter"] = retrained
            if ctx.params["require_reproducible"] and not reproduced:
                run.failures.append(
                    "retraining from the bundle's dataset and config gave a different adapter"
                )
            if not reproduced and ctx.params["register"]:
                comps = reuse_components(ctx.registry, ctx.bundle, skip=("adapter",))
                comps["adapter"] = staged
                from registry.bundles import add

                res = add(
                    ctx.registry, ctx.bundle["name"], comps, parent=ctx.bundle_digest,
                    annotations=run.annotations(), actor=_actor(),
                )  # fmt: skip
                run.evidence["new_bundle"] = {
                    "tag": res.tag,
                    "digest": res.digest,
                    "created": res.created,
                }
        finally:
            run.cleanup()
        note = "reproduced the bundle's adapter" if run.metrics["reproduced"] else "retrained"
        return run.result(ok=f"{note}; {run.summary()}")


def train_bundle(
    reg: Registry,
    ref: str,
    *,
    name: str,
    dataset: Path | None = None,
    config: Path | None = None,
    actor: str,
    progress: Callable[[str], None] | None = None,
) -> AddResult:
    """Fine-tune REF's base on a dataset and register the result (parent = REF).

    The dataset is REF's unless `dataset` (a directory of JSONL splits) is given; the
    hyperparameters are REF's config unless `config` (YAML/JSON/TOML) is given. The loss
    curves are recorded as a `train` gate run of the new bundle under the policy in force.
    """
    from gates.policy import current
    from registry.bundles import show
    from registry.ingest import config as config_mod
    from registry.ingest import dataset as dataset_mod

    info = show(reg, ref)
    staged: dict[str, Staged] = {}
    if dataset is not None:
        staged["dataset"] = dataset_mod.stage(dataset)
    elif "dataset" not in info["components"]:
        raise UsageError(f"{info['tag']} has no dataset", "Pass --dataset DIR.")
    if config is not None:
        staged["config"] = config_mod.stage(config)
        hyper = staged["config"].meta["hyperparameters"]
    elif "config" in info["components"]:
        hyper = info["components"]["config"]["meta"].get("hyperparameters", {})
    else:
        raise UsageError(f"{info['tag']} has no training config", "Pass --config FILE.")
    resolve_hyperparameters(hyper, _lora_parent(info))  # a bad config fails before any work
    policy = current(reg)
    params = train_params(policy)
    candidate = train_candidate(reg, info, hyper, params, progress, dataset=dataset)
    return register_candidate(
        reg, info, candidate, name=name, annotations={}, policy=policy, actor=actor,
        staged_extra=staged,
    )  # fmt: skip


def train_params(policy: Policy | None) -> dict[str, Any]:
    """The train gate's parameters under `policy` (its defaults when there is none)."""
    return policy.params("train") if policy is not None else dict(TrainGate.defaults)


def train_candidate(
    reg: Registry,
    info: dict[str, Any],
    hyperparameters: dict[str, Any],
    params: dict[str, Any] | None,
    progress: Callable[[str], None] | None = None,
    dataset: Path | None = None,
) -> Candidate:
    """Train a LoRA adapter on the base of bundle `info` (registry.bundles.show) with
    `hyperparameters`, on its dataset (or the directory `dataset`); store the adapter's
    files as blobs and return them with the train run's result. Writes no database row,
    so it runs as well in a worker process that opened the same registry (the driver
    registers the result: `register_candidate`). `params` are the train gate's (None:
    under the policy in force)."""
    from gates.engine import environment, materialize
    from gates.executor import Candidate
    from registry.db import now

    if params is None:
        from gates.policy import current

        params = train_params(current(reg))
    started = now()
    with materialize(reg, f"{info['name']}@{info['digest']}") as workdir:
        data_dir = dataset if dataset is not None else workdir / "dataset"
        run = _train(workdir, info, data_dir, hyperparameters, params, progress or _quiet)
        try:
            adapter = _store_adapter(reg, _stage_adapter(run.adapter_dir))
            run.evidence["parent"] = info["digest"]
            result = run.result(ok=run.summary())
            env = environment(result.evidence.get("device"))
        finally:
            run.cleanup()
    return Candidate(adapter=adapter, result=result, environment=env, started=started)


def register_candidate(
    reg: Registry,
    info: dict[str, Any],
    candidate: Candidate,
    *,
    name: str,
    annotations: dict[str, str],
    policy: Policy | None,
    actor: str | Identity,
    staged_extra: dict[str, Staged] | None = None,
) -> AddResult:
    """Register a trained candidate as a bundle (parent = `info`): `info`'s components
    (byte for byte) but for `staged_extra` (a dataset or config used instead) and the
    candidate's adapter; then record its train run (with the environment it trained in)
    under `policy`."""
    from gates.engine import record
    from registry import locks
    from registry.bundles import add

    staged = dict(staged_extra or {})
    with locks.writing(reg, "train"):
        for f in candidate.adapter.external_files or []:
            if not reg.store.has(f.digest, f.size):
                raise InvalidInputError(
                    f"the trained adapter's {f.path} is missing from the store",
                    "Train it again (a gc may have removed blobs no bundle referenced yet).",
                )
        comps = reuse_components(reg, info, skip=("adapter", *staged))
        comps.update(staged)
        comps["adapter"] = candidate.adapter
        quantized = candidate.result.evidence.get("quantization")
        res = add(
            reg, name, comps, parent=info["digest"],
            annotations={**({"adaptation": "qlora"} if quantized else {}), **annotations},
            actor=actor,
        )  # fmt: skip
        inputs = {
            kind: _component_digest(staged[kind])
            if kind in staged
            else info["components"][kind]["digest"]
            for kind in ("dataset", "config")
        }
        record(
            reg, res.digest, TrainGate, policy.digest if policy else None, inputs,
            candidate.result, candidate.started, actor, environment=candidate.environment,
        )  # fmt: skip
    return res


def _quiet(_message: str) -> None:
    """No progress output."""


# --- the training run --------------------------------------------------------------------


class _Run:
    """One finished training: the saved adapter, metrics, evidence and any failures."""

    def __init__(self, adapter_dir: Path, tmp: tempfile.TemporaryDirectory[str]) -> None:
        self.adapter_dir = adapter_dir
        self._tmp = tmp
        self.metrics: dict[str, Any] = {}
        self.thresholds: dict[str, Any] = {}
        self.evidence: dict[str, Any] = {}
        self.failures: list[str] = []

    def annotations(self) -> dict[str, str]:
        """A 4-bit run's adapter is QLoRA, which its adapter_config.json cannot say."""
        return {"adaptation": "qlora"} if self.evidence.get("quantization") else {}

    def summary(self) -> str:
        m = self.metrics
        val = m.get("final_val_loss")
        val_text = f", val loss {m['best_val_loss']:.3f} best / {val:.3f} last" if val else ""
        return (
            f"{m['steps']} steps, train loss {m['initial_train_loss']:.3f} ->"
            f" {m['final_train_loss']:.3f}{val_text}"
        )

    def result(self, ok: str) -> GateResult:
        return GateResult.check(self.failures, self.metrics, self.thresholds, self.evidence, ok)

    def cleanup(self) -> None:
        self._tmp.cleanup()


def _train(
    workdir: Path,
    bundle: dict[str, Any],
    dataset_dir: Path,
    hyper: dict[str, Any],
    params: dict[str, Any],
    progress: Callable[[str], None],
) -> _Run:
    from gates import modeling

    base_meta = bundle["components"]["base_model"]["meta"]
    parent_adapter = (bundle["components"].get("adapter") or {}).get("meta", {})
    resolved, ignored = resolve_hyperparameters(hyper, _lora_parent(bundle))
    tokenizer = modeling.load_tokenizer(workdir)
    device = modeling.select_device()
    quantize = _quantize(resolved["quantization"], device)
    train_rows, val_rows = read_splits(dataset_dir)
    max_len = resolved["max_seq_len"]
    limit = None if resolved["packing"] else max_len  # packed examples are split, not cut
    train_ex = [_encode(tokenizer, row, limit) for row in train_rows]
    val_ex = [_encode(tokenizer, row, max_len) for row in val_rows]
    truncated = sum(e.truncated for e in train_ex)
    train_unscored = sum(not _scored(e) for e in train_ex)
    if resolved["packing"]:
        train_ex = modeling.pack(train_ex, max_len)
    train_ex = [e for e in train_ex if _scored(e)]
    if not train_ex:
        raise GateError(
            "no training example has an assistant token to learn"
            + _cut(train_rows, truncated, max_len),
            _fix(tokenizer, train_rows, truncated),
        )
    val_unscored = sum(not _scored(e) for e in val_ex)
    if val_ex and val_unscored == len(val_ex):
        cut = sum(e.truncated for e in val_ex)
        raise GateError(
            f"validation: none of the {len(val_ex)} rows has an answer token left to score"
            f"{_cut(val_rows, cut, max_len)}, so there is no validation loss",
            _fix(tokenizer, val_rows, cut),
        )
    val_ex = [e for e in val_ex if _scored(e)]
    spec = _spec(resolved, len(train_ex), quantize)
    progress(f"training {spec.steps} steps on {len(train_ex)} sequences ({device})")
    with modeling.peak_memory(device) as peak:
        outcome = modeling.train_lora(
            workdir, base_meta, train_ex, val_ex, spec, pad_id=tokenizer.pad_token_id,
            progress=progress,
        )  # fmt: skip
    tmp = tempfile.TemporaryDirectory(prefix="registry-train-")
    adapter_dir = Path(tmp.name) / "adapter"
    modeling.save_adapter(outcome.model, adapter_dir, _base_name(base_meta, parent_adapter))
    outcome.model = None
    modeling.release(device)

    run = _Run(adapter_dir, tmp)
    fit = overfitting(
        outcome.train_loss,
        outcome.val_loss,
        params["max_val_loss_rise"],
        params["val_patience"],
        params["min_val_loss_rise"],
    )
    first, last = (
        _window_mean(outcome.train_loss, 0, spec.eval_steps),
        _window_mean(
            outcome.train_loss, len(outcome.train_loss) - spec.eval_steps, spec.eval_steps
        ),
    )
    run.metrics = {
        "steps": spec.steps,
        "examples": len(train_rows),
        "sequences": len(train_ex),
        "truncated_rate": truncated / max(1, len(train_rows)),
        "initial_train_loss": first,
        "final_train_loss": last,
        "best_val_loss": fit.get("best_val_loss"),
        "final_val_loss": fit.get("final_val_loss"),
        "val_loss_rise": fit.get("rise"),
        "overfitting": fit["flagged"],
        "seconds": round(outcome.seconds, 3),
        "trainable_parameters": outcome.trainable_parameters,
    }
    run.thresholds = {
        "max_val_loss_rise": params["max_val_loss_rise"],
        "min_val_loss_rise": params["min_val_loss_rise"],
        "val_patience": fit.get("patience"),
    }
    run.evidence = {
        "device": modeling.device_name(device),
        "quantization": "nf4" if quantize else None,
        "hyperparameters": resolved,
        "ignored_hyperparameters": ignored,
        "validation_split": bool(val_rows),
        "validation_rows_without_answer": val_unscored,
        "train_rows_without_answer": train_unscored,
        "overfitting": fit,
        "train_loss": _thin(outcome.train_loss),
        "val_loss": outcome.val_loss,
        # GPU memory allocated on CUDA; on the CPU the process's peak resident set
        # (gates/modeling/memory.py), in MB: a sweep's memory column.
        "peak_memory": {k: round(v, 3) if isinstance(v, float) else v for k, v in peak.items()},
    }
    if not last < first:
        run.failures.append(f"training loss did not fall ({first:.4f} -> {last:.4f})")
    if fit["flagged"]:
        run.failures.append(
            f"overfitting: validation loss stayed at least {fit['rise']:.1%} above its best"
            f" (step {fit['best_step']}) for the last {fit['patience']} evaluations while"
            " the training loss kept falling"
        )
    return run


def _lora_parent(bundle: dict[str, Any]) -> dict[str, Any]:
    """The parent adapter's meta when it is a LoRA adapter (its shape gives the defaults),
    else {}: an IA3 adapter's target modules are not a LoRA shape."""
    meta = (bundle["components"].get("adapter") or {}).get("meta") or {}
    return meta if str(meta.get("peft_type", "")).upper() == "LORA" else {}


def _scored(e: Encoded) -> bool:
    """Whether the loss scores any token of `e` (the first token is never predicted)."""
    from gates.modeling import IGNORE

    return any(lab != IGNORE for lab in e.labels[1:])


def _cut(rows: list[dict[str, Any]], truncated: int, max_len: int) -> str:
    if not truncated:
        return ""
    return f" ({truncated} of {len(rows)} were truncated to max_seq_len {max_len})"


def _fix(tokenizer: Any, rows: list[dict[str, Any]], truncated: int) -> str:
    """What to do about rows with no answer token left: raise max_seq_len when truncation
    cut them (to the longest row's length), else give the rows answers."""
    if not truncated:
        return "Give the rows an assistant answer (or text) to learn"
    longest = max(len(_encode(tokenizer, row, None).input_ids) for row in rows)
    return f"Raise max_seq_len in the config (the longest row has {longest} tokens)"


def _base_name(base_meta: dict[str, Any], parent_adapter: dict[str, Any]) -> str:
    """What the new adapter_config.json calls its base: the Hub id of an external base,
    else the parent adapter's name for it unless that is a local path (which would put a
    machine's directory into the bundle), else "base"."""
    if base_meta.get("repo_id"):
        return str(base_meta["repo_id"])
    name = parent_adapter.get("base_model_name_or_path")
    if isinstance(name, str) and name and not Path(name).is_absolute() and "\\" not in name:
        return name
    return "base"


def resolve_hyperparameters(
    hyper: dict[str, Any], parent_adapter: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The hyperparameters training uses, with defaults (LoRA shape from the parent
    adapter when the config omits it), and the bookkeeping keys it ignored (IGNORED_KEYS).
    Any other key it does not know is a GateError naming the nearest known key."""
    unknown = [k for k in hyper if k not in KNOWN_KEYS and k not in IGNORED_KEYS]
    if unknown:
        listed = ", ".join(_unknown(k) for k in unknown)
        s, it = ("s", "them") if len(unknown) > 1 else ("", "it")
        raise GateError(
            f"config: unknown key{s} {listed}",
            f"Rename or remove {it}: docs/gates-model.md (`registry train`) lists the keys"
            " this trainer reads and the bookkeeping keys it ignores",
        )
    found: dict[str, Any] = {}
    for key, names in ALIASES.items():
        given = [n for n in names if n in hyper]
        if any(hyper[n] != hyper[given[0]] for n in given):
            both = " and ".join(repr(n) for n in given)
            raise GateError(f"config: {both} both set {key}, to different values; keep one")
        if given:
            found[key] = hyper[given[0]]
    r = found.get("r", parent_adapter.get("r") or 8)
    out = {
        "r": _int(r, "r", 1),
        "lora_alpha": _num(
            found.get("lora_alpha", parent_adapter.get("lora_alpha") or 2 * r), "lora_alpha"
        ),
        "lora_dropout": _num(
            found.get("lora_dropout", parent_adapter.get("lora_dropout") or 0.0), "lora_dropout"
        ),
        "target_modules": found.get(
            "target_modules", parent_adapter.get("target_modules") or "all-linear"
        ),
        "learning_rate": _num(found.get("learning_rate", 2e-4), "learning_rate"),
        "epochs": _num(found.get("epochs", 1), "epochs"),
        "max_steps": _int(found.get("max_steps", 0), "max_steps", 0),
        "max_seq_len": _int(found.get("max_seq_len", 1024), "max_seq_len", 2),
        "packing": _bool(found.get("packing", False), "packing"),
        "seed": _int(found.get("seed", 0), "seed", 0),
        "batch_size": _int(found.get("batch_size", 8), "batch_size", 1),
        "gradient_accumulation_steps": _int(
            found.get("gradient_accumulation_steps", 1), "gradient_accumulation_steps", 1
        ),
        "weight_decay": _num(found.get("weight_decay", 0.0), "weight_decay"),
        "warmup_steps": _int(found.get("warmup_steps", 0), "warmup_steps", 0),
        "lr_scheduler_type": str(found.get("lr_scheduler_type", "constant")),
        "eval_steps": _int(found.get("eval_steps", 0), "eval_steps", 0),
        "quantization": str(found.get("quantization", "auto")).lower(),
    }
    tm = out["target_modules"]
    if isinstance(tm, list):
        out["target_modules"] = sorted(str(t) for t in tm)
    elif not isinstance(tm, str):
        raise GateError("config: target_modules must be a list of module names or a string")
    if out["quantization"] not in ("auto", "4bit", "none"):
        raise GateError("config: quantization must be auto, 4bit or none")
    return out, sorted(set(hyper) & IGNORED_KEYS)


def _unknown(key: str) -> str:
    """`'steps' (did you mean 'max_steps'?)`: the nearest known key, if any is close."""
    near = KEY_HINTS.get(key) or next(iter(difflib.get_close_matches(key, KNOWN_KEYS, n=1)), None)
    return f"{key!r} (did you mean {near!r}?)" if near else repr(key)


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GateError(f"config: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _num(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise GateError(f"config: {key} must be a non-negative number, got {value!r}")
    return float(value)


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise GateError(f"config: {key} must be true or false, got {value!r}")
    return value


def _spec(h: dict[str, Any], n: int, quantize: bool) -> TrainSpec:
    from gates.modeling import TrainSpec

    per_step = h["batch_size"] * h["gradient_accumulation_steps"]
    steps = h["max_steps"] or max(1, math.ceil(h["epochs"] * n / per_step))
    return TrainSpec(
        r=h["r"], lora_alpha=h["lora_alpha"], lora_dropout=h["lora_dropout"],
        target_modules=h["target_modules"], learning_rate=h["learning_rate"], steps=steps,
        batch_size=h["batch_size"], gradient_accumulation_steps=h["gradient_accumulation_steps"],
        weight_decay=h["weight_decay"], warmup_steps=h["warmup_steps"],
        lr_scheduler_type=h["lr_scheduler_type"], seed=h["seed"],
        eval_steps=h["eval_steps"] or max(1, steps // 20), quantize=quantize,
    )  # fmt: skip


def _quantize(mode: str, device: str) -> bool:
    from gates.modeling import qlora_available

    available = qlora_available(device)
    if mode == "4bit" and not available:
        raise GateError("config asks for 4-bit QLoRA, which needs CUDA and bitsandbytes")
    return mode == "4bit" or (mode == "auto" and available)


# --- data --------------------------------------------------------------------------------


def read_splits(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The train split and the validation split (empty if the dataset has none)."""

    def find(name: str) -> Path | None:
        for rel in (f"{name}.jsonl", f"data/{name}.jsonl"):
            if (root / rel).is_file():
                return root / rel
        return None

    train = find("train")
    if train is None:
        raise GateError("the dataset has no train split (train.jsonl)")
    val = next((p for p in map(find, VALIDATION_SPLITS) if p is not None), None)
    return read_jsonl(train), read_jsonl(val) if val else []


def row_messages(row: dict[str, Any]) -> list[dict[str, str]] | None:
    """A chat row's messages (prompt/completion rows become a user and an assistant turn)."""
    if isinstance(row.get("messages"), list):
        return row["messages"]
    if "prompt" in row and "completion" in row:
        return [
            {"role": "user", "content": str(row["prompt"])},
            {"role": "assistant", "content": str(row["completion"])},
        ]
    return None


def _encode(tokenizer: Any, row: dict[str, Any], limit: int | None) -> Encoded:
    """A row's token ids and labels, truncated to `limit` tokens (None: not truncated)."""
    from gates.modeling import encode_chat, encode_text

    messages = row_messages(row)
    if messages is not None:
        return encode_chat(tokenizer, messages, max_len=limit)
    if isinstance(row.get("text"), str):
        return encode_text(tokenizer, row["text"], max_len=limit)
    raise GateError("dataset rows must have messages, prompt/completion or text")


# --- curves ------------------------------------------------------------------------------


def overfitting(
    train: list[list[float]],
    val: list[list[float]],
    max_rise: float,
    patience: int = 3,
    min_rise: float = 0.05,
) -> dict[str, Any]:
    """Whether validation loss stayed more than `max_rise` (relative) and `min_rise`
    (absolute, nats per token) above its best for the last `patience` evaluations while
    the training loss kept falling: the overfitting signature, as early stopping reads it.
    One noisy evaluation is not a trend: a tiny validation set's loss jumps by 20% between
    neighbouring evaluations while still falling. Nor is a relative swing at a low loss:
    0.18 -> 0.20 is +11% but 0.02 nats, the size of the change a new seed or another CPU
    kernel path makes to the same run.
    """
    patience = max(1, int(patience))
    if len(val) < patience + 2:
        return {
            "checked": False,
            "flagged": False,
            "reason": f"fewer than {patience + 2} validation points (val_patience {patience})",
        }
    head, tail = val[:-patience], val[-patience:]
    best_step, best = min(head, key=lambda p: (p[1], p[0]))
    floor = min(loss for _, loss in tail)
    rise = (floor - best) / best if best > 0 else 0.0
    absolute = floor - best
    window = max(1, int(val[-1][0] - val[-2][0]))
    train_at_best = _window_mean(train, max(0, int(best_step) - window), window)
    train_last = _window_mean(train, len(train) - window, window)
    falling = train_last < train_at_best
    return {
        "checked": True,
        "flagged": bool(rise > max_rise and absolute > min_rise and falling),
        "best_step": int(best_step),
        "best_val_loss": best,
        "final_val_loss": val[-1][1],
        "patience": patience,
        "rise": round(rise, 6),
        "absolute_rise": round(absolute, 6),
        "train_loss_at_best": train_at_best,
        "train_loss_last": train_last,
        "train_falling": falling,
    }


def _window_mean(curve: list[list[float]], start: int, width: int) -> float:
    start = max(0, start)
    pts = [loss for _, loss in curve[start : start + width]] or [curve[-1][1]]
    return round(sum(pts) / len(pts), 6)


def _thin(curve: list[list[float]]) -> list[list[float]]:
    """At most MAX_CURVE_POINTS points (bucket means), so evidence stays small."""
    if len(curve) <= MAX_CURVE_POINTS:
        return curve
    size = math.ceil(len(curve) / MAX_CURVE_POINTS)
    return [
        [curve[i + len(curve[i : i + size]) - 1][0],
         round(sum(p[1] for p in curve[i : i + size]) / len(curve[i : i + size]), 6)]
        for i in range(0, len(curve), size)
    ]  # fmt: skip


# --- registering -------------------------------------------------------------------------


def _stage_adapter(directory: Path) -> Staged:
    from registry.ingest.adapter import stage

    return stage(directory)


def _store_adapter(reg: Registry, staged: Staged) -> Staged:
    """`staged` with its files stored as blobs (durable: temp file, fsync, rename) and
    named by digest (`external_files`), so the small value travels to another process
    and `registry.bundles.add` stores the same manifest without reading them again."""
    from registry import locks
    from registry.ingest.common import Staged
    from registry.manifest import FileEntry

    entries = []
    with locks.writing(reg, "train"):
        for rel, content in sorted(staged.files.items()):
            if isinstance(content, bytes):
                desc = reg.store.put_bytes(content)
            else:
                desc = reg.store.put_file(content)
            entries.append(FileEntry(rel, desc.digest, desc.size))
    return Staged(staged.kind, meta=staged.meta, source=staged.source, external_files=entries)


def _component_digest(staged: Staged) -> str:
    """The digest the component manifest of `staged` will have (nothing is stored)."""
    from registry.digest import sha256_bytes
    from registry.manifest import ComponentManifest, FileEntry

    entries = list(staged.external_files or [])
    for rel, content in sorted(staged.files.items()):
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        entries.append(FileEntry(rel, sha256_bytes(data), len(data)))
    entries.sort(key=lambda e: e.path)
    return ComponentManifest(staged.kind, tuple(entries), staged.meta, staged.source).digest


def reuse_components(
    reg: Registry, bundle: dict[str, Any], *, skip: tuple[str, ...] = ()
) -> dict[str, Staged]:
    """A bundle's components (except `skip`) as staged components that name their
    already-stored blobs: a new bundle shares them byte for byte, and nothing is read or
    copied again (a 15 GB base costs nothing)."""
    from registry.ingest.common import Staged
    from registry.manifest import FileEntry

    out: dict[str, Staged] = {}
    for kind, comp in bundle["components"].items():
        if kind in skip:
            continue
        files = [FileEntry(f["path"], f["digest"], f["size"]) for f in comp["files"]]
        if comp["source"] is None:
            for f in files:
                if not reg.store.has(f.digest, f.size):
                    raise InvalidInputError(f"{kind} file {f.path} is missing from the store")
        out[kind] = Staged(kind, meta=comp["meta"], source=comp["source"], external_files=files)
    return out


def _actor() -> str:
    from registry.config import display_name

    return display_name()
