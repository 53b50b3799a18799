"""Stage every component of a bundle from the `registry add` options, before any write.

All validation happens here: if any input is bad, nothing has been stored yet.
"""

from __future__ import annotations

from pathlib import Path

from registry.errors import InvalidInputError, UsageError
from registry.ingest import adapter as adapter_mod
from registry.ingest import base_model
from registry.ingest import chat_template as template_mod
from registry.ingest import config as config_mod
from registry.ingest import dataset as dataset_mod
from registry.ingest import tokenizer as tokenizer_mod
from registry.ingest.common import Staged, check_file, read_json, weights_summary
from registry.paths import check_user_path, walk_files
from registry.repo import Registry


def stage_from_output(root: Path, *, allow_pickle: bool) -> tuple[dict[str, Staged], list[str]]:
    """Split a trainer's output dir into adapter, tokenizer and chat template.

    Files that belong to none of them (optimizer state, trainer_state.json, checkpoints)
    are left out and named in a note, so a pickled optimizer.pt does not block the add.
    """
    if not root.is_dir():
        raise InvalidInputError(f"--from {root} is not a directory")
    files = {rel: path for rel, path in walk_files(root)}
    adapter_names = [
        r for r in files if "/" not in r and (r.startswith("adapter_") or r == "README.md")
    ]
    if "adapter_config.json" not in adapter_names:
        raise InvalidInputError(
            f"--from {root} has no adapter_config.json",
            "Point --from at the directory save_pretrained() wrote.",
        )
    staged_adapter = Staged("adapter")
    headers = {}
    for rel in sorted(adapter_names):
        if (h := check_file(rel, files[rel], allow_pickle=allow_pickle)) is not None:
            headers[rel] = h
        staged_adapter.add(rel, files[rel])
    staged_adapter.meta = adapter_mod.parse_adapter_config(
        read_json(root / "adapter_config.json", "adapter")
    )
    if not any(n in staged_adapter.files for n in adapter_mod.WEIGHT_FILES):
        raise InvalidInputError(f"--from {root} has no adapter_model.safetensors")
    staged_adapter.meta["weights"] = weights_summary(headers)
    top = [r for r in files if "/" not in r]
    staged_tok = tokenizer_mod.stage_from(root, top, allow_pickle=allow_pickle)
    out = {"adapter": staged_adapter, "tokenizer": staged_tok}
    template = tokenizer_mod.own_template(staged_tok.files, root)
    if template:
        out["chat_template"] = template_mod.from_text(template, "chat_template.jinja")
    used = set(staged_adapter.files) | set(staged_tok.files)
    skipped = sorted(r for r in files if r not in used)
    notes = (
        [
            f"note: --from skipped {len(skipped)} file(s) that are not adapter or tokenizer: "
            + ", ".join(skipped[:8])
            + (" ..." if len(skipped) > 8 else "")
        ]
        if skipped
        else []
    )
    return out, notes


def stage_bundle(
    reg: Registry,
    *,
    base: str,
    adapter: Path | None,
    tokenizer: Path | None,
    chat_template: Path | None,
    dataset: Path | None,
    config: Path | None,
    from_dir: Path | None,
    full: bool,
    license: str | None,
    allow_pickle: bool,
) -> tuple[dict[str, Staged], list[str]]:
    """Every component of a bundle, validated; plus notes for the user."""
    from registry.bundles import hash_file

    comps: dict[str, Staged] = {}
    notes: list[str] = []
    paths = {"--adapter": adapter, "--tokenizer": tokenizer, "--chat-template": chat_template,
             "--dataset": dataset, "--config": config, "--from": from_dir}  # fmt: skip
    for option, value in paths.items():
        if value is not None:
            check_user_path(value, option)
    if not base.startswith("hf://"):
        check_user_path(base, "--base")
    if from_dir is not None:
        if adapter is not None or full:
            raise UsageError("--from already holds the adapter: drop --adapter/--full")
        comps, notes = stage_from_output(from_dir, allow_pickle=allow_pickle)
    if full and adapter is not None:
        raise UsageError("--full registers a full fine-tune: it takes no --adapter")
    if not full and adapter is None and from_dir is None:
        raise UsageError("give --adapter DIR (or --from DIR), or --full for a full fine-tune")
    if license is not None and dataset is None:
        raise UsageError("--license applies to --dataset, which was not given")
    if base.startswith("hf://"):
        comps["base_model"] = base_model.stage_external(
            base, allow_pickle=allow_pickle, hash_file=lambda p: hash_file(reg, p)
        )
        notes += comps["base_model"].notes
    else:
        comps["base_model"] = base_model.stage(Path(base), allow_pickle=allow_pickle)
    if adapter is not None:
        comps["adapter"] = adapter_mod.stage(adapter, allow_pickle=allow_pickle)
    if tokenizer is not None:
        comps["tokenizer"] = tokenizer_mod.stage(tokenizer, allow_pickle=allow_pickle)
    if chat_template is not None:
        comps["chat_template"] = template_mod.stage(chat_template)
    elif "chat_template" not in comps and "tokenizer" in comps:
        # No explicit template: pin the tokenizer's own, so the bundle names one.
        own = comps["tokenizer"].files.get("chat_template.jinja")
        if isinstance(own, Path):
            comps["chat_template"] = template_mod.stage(own)
    if dataset is not None:
        comps["dataset"] = dataset_mod.stage(dataset, license=license)
    if config is not None:
        comps["config"] = config_mod.stage(config)
    return comps, notes
