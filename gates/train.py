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

Determinism: seeds are fixed (`seed` in the config), batches come from a seeded
shuffle, and the adapter is saved with a normalized config, so the same inputs on the
CPU give the same adapter digest. GPU kernels are not bitwise deterministic.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from gates.base import Gate, GateContext, GateResult, require_component
from gates.rows import read_jsonl
from registry.errors import GateError, InvalidInputError, UsageError

if TYPE_CHECKING:
    from gates.modeling import Encoded, TrainSpec
    from registry.bundles import AddResult
    from registry.ingest.common import Staged
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
    "max_seq_len": ("max_seq_len", "max_seq_length", "max_length"),
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
        "val_patience": 3,  # ... sustained over this many evaluations
        "require_reproducible": False,
        "register": True,
    }

    def run(self, ctx: GateContext) -> GateResult:
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
    from gates.engine import materialize, record
    from gates.policy import current
    from registry.bundles import add, show
    from registry.db import now
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
    policy = current(reg)
    params = policy.params("train") if policy is not None else dict(TrainGate.defaults)
    started = now()
    with materialize(reg, f"{info['name']}@{info['digest']}") as workdir:
        data_dir = dataset if dataset is not None else workdir / "dataset"
        run = _train(workdir, info, data_dir, hyper, params, progress or (lambda _m: None))
        try:
            comps = reuse_components(reg, info, skip=("adapter", *staged))
            comps.update(staged)
            comps["adapter"] = _stage_adapter(run.adapter_dir)
            res = add(
                reg, name, comps, parent=info["digest"], annotations=run.annotations(),
                actor=actor,
            )  # fmt: skip
            inputs = {
                "dataset": _component_digest(comps["dataset"])
                if "dataset" in staged
                else info["components"]["dataset"]["digest"],
                "config": _component_digest(comps["config"])
                if "config" in staged
                else info["components"]["config"]["digest"],
            }
            run.evidence["parent"] = info["digest"]
            result = run.result(ok=run.summary())
            record(
                reg, res.digest, TrainGate, policy.digest if policy else None, inputs, result,
                started, actor,
            )  # fmt: skip
        finally:
            run.cleanup()
    return res


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
    tokenizer = modeling.load_tokenizer(workdir)
    device = modeling.select_device()
    resolved, ignored = resolve_hyperparameters(hyper, parent_adapter)
    quantize = _quantize(resolved["quantization"], device)
    train_rows, val_rows = read_splits(dataset_dir)
    max_len = resolved["max_seq_len"]
    train_ex = [_encode(tokenizer, row, max_len, resolved["packing"]) for row in train_rows]
    val_ex = [_encode(tokenizer, row, max_len, False) for row in val_rows]
    truncated = sum(e.truncated for e in train_ex)
    if resolved["packing"]:
        train_ex = modeling.pack(train_ex, max_len)
    train_ex = [e for e in train_ex if any(lab != modeling.IGNORE for lab in e.labels)]
    if not train_ex:
        raise GateError("no training example has an assistant token to learn")
    spec = _spec(resolved, len(train_ex), quantize)
    progress(f"training {spec.steps} steps on {len(train_ex)} sequences ({device})")
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
        "val_patience": fit.get("patience"),
    }
    run.evidence = {
        "device": modeling.device_name(device),
        "quantization": "nf4" if quantize else None,
        "hyperparameters": resolved,
        "ignored_hyperparameters": ignored,
        "validation_split": bool(val_rows),
        "overfitting": fit,
        "train_loss": _thin(outcome.train_loss),
        "val_loss": outcome.val_loss,
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
    adapter when the config omits it), and the config keys that were not used."""
    found: dict[str, Any] = {}
    used: set[str] = set()
    for key, names in ALIASES.items():
        for n in names:
            if n in hyper:
                found[key] = hyper[n]
                used.add(n)
                break
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
    return out, sorted(set(hyper) - used)


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


def _encode(tokenizer: Any, row: dict[str, Any], max_len: int, packing: bool) -> Encoded:
    from gates.modeling import encode_chat, encode_text

    limit = None if packing else max_len  # packed examples are split, not truncated
    messages = row_messages(row)
    if messages is not None:
        return encode_chat(tokenizer, messages, max_len=limit)
    if isinstance(row.get("text"), str):
        return encode_text(tokenizer, row["text"], max_len=limit)
    raise GateError("dataset rows must have messages, prompt/completion or text")


# --- curves ------------------------------------------------------------------------------


def overfitting(
    train: list[list[float]], val: list[list[float]], max_rise: float, patience: int = 3
) -> dict[str, Any]:
    """Whether validation loss stayed more than `max_rise` (relative) above its best for
    the last `patience` evaluations while the training loss kept falling: the overfitting
    signature, as early stopping reads it. One noisy evaluation is not a trend: a tiny
    validation set's loss jumps by 20% between neighbouring evaluations while still falling.
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
    window = max(1, int(val[-1][0] - val[-2][0]))
    train_at_best = _window_mean(train, max(0, int(best_step) - window), window)
    train_last = _window_mean(train, len(train) - window, window)
    falling = train_last < train_at_best
    return {
        "checked": True,
        "flagged": bool(rise > max_rise and falling),
        "best_step": int(best_step),
        "best_val_loss": best,
        "final_val_loss": val[-1][1],
        "patience": patience,
        "rise": round(rise, 6),
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
    from registry.config import default_actor

    return default_actor()
