"""Materialize a bundle as a directory that transformers and peft load directly.

    DIR/adapter_config.json, adapter_model.safetensors   the adapter (PeftModel.from_pretrained)
    DIR/tokenizer.json, tokenizer_config.json, ...       the tokenizer (AutoTokenizer)
    DIR/chat_template.jinja                              the bundle's chat template
    DIR/base/                                            the base model (absent if external)
    DIR/dataset/, DIR/config/                            dataset and training config
    DIR/registry/bundle.json, registry/<kind>.json       the manifests, for provenance
    DIR/registry/model.sig                               the newest `registry sign` signature

For a full fine-tune (no adapter) the model files go at the top level instead of base/,
so AutoModelForCausalLM.from_pretrained(DIR) loads it. Every byte is re-hashed as it is
copied out; the directory must be new or empty.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from registry import refs
from registry.errors import IntegrityError, UsageError
from registry.manifest import BundleManifest, ComponentManifest
from registry.paths import join_inside
from registry.repo import Registry

MAX_EXPORT_FILES = 100_000


def layout(components: dict[str, ComponentManifest]) -> dict[str, str]:
    """Directory prefix ("" = top level) of each component kind."""
    full = "adapter" not in components
    return {
        "adapter": "",
        "tokenizer": "",
        "chat_template": "",
        "base_model": "" if full else "base",
        "dataset": "dataset",
        "config": "config",
    }


META_DIR = "registry"  # the manifests (and a signature) under DIR/registry/
SIGNATURE_PATH = f"{META_DIR}/model.sig"  # model-signing's signature of the layout


def component_files(
    components: dict[str, ComponentManifest],
) -> dict[str, tuple[str, int, str]]:
    """relpath -> (blob digest, size, kind) of every component file an export writes."""
    prefixes = layout(components)
    plan: dict[str, tuple[str, int, str]] = {}
    # Later kinds win on a shared top-level path: the bundle's chat template overrides the
    # tokenizer's own chat_template.jinja, which is the point of pinning a template.
    order = ["base_model", "dataset", "config", "adapter", "tokenizer", "chat_template"]
    for kind in order:
        comp = components.get(kind)
        if comp is None or comp.external:
            continue
        for f in comp.files:
            rel = f"{prefixes[kind]}/{f.path}" if prefixes[kind] else f.path
            prev = plan.get(rel)
            if (
                prev
                and prev[0] != f.digest
                and not (kind == "chat_template" and prev[2] == "tokenizer")
            ):
                raise IntegrityError(
                    f"export: {kind} and {prev[2]} both write {rel} with different content"
                )
            plan[rel] = (f.digest, f.size, kind)
    return plan


def metadata_files(
    bundle_digest: str, bundle_size: int, bundle: BundleManifest
) -> dict[str, tuple[str, int]]:
    """relpath -> (blob digest, size) of the manifests an export writes under registry/.

    Their bytes are the manifest blobs, so their digests are the blobs' digests."""
    meta = {f"{META_DIR}/bundle.json": (bundle_digest, bundle_size)}
    for kind, desc in bundle.components.items():
        meta[f"{META_DIR}/{kind}.json"] = (desc.digest, desc.size)
    return meta


def plan(
    bundle_digest: str,
    bundle_size: int,
    bundle: BundleManifest,
    components: dict[str, ComponentManifest],
) -> dict[str, tuple[str, int]]:
    """Every file `export` writes: relpath -> (blob digest, size). Pure: reads nothing.

    What `registry sign` signs, in model-signing's layout, without exporting."""
    out = {rel: (d, s) for rel, (d, s, _kind) in component_files(components).items()}
    out.update(metadata_files(bundle_digest, bundle_size, bundle))  # written last: they win
    return out


def check_layout(files: dict[str, Any], dest: Path) -> None:
    """Before anything is written: no path is both a file and a directory, the export has a
    sane number of files, and the disk has room for all of it (the manifests say how much).
    A hostile manifest listing one blob 500,000 times would otherwise write 2.4 GB."""
    import shutil

    if len(files) > MAX_EXPORT_FILES:
        raise IntegrityError(
            f"export: the bundle lists {len(files)} files (at most {MAX_EXPORT_FILES})",
            "The manifests are not ones the registry writes; refuse this bundle.",
        )
    dirs = {str(parent) for rel in files for parent in PurePosixPath(rel).parents}
    if clash := sorted(dirs & set(files)) or ([META_DIR] if META_DIR in files else []):
        raise IntegrityError(f"export: {clash[0]} is both a file and a directory in the bundle")
    need = sum(size for _digest, size, *_ in files.values())
    probe = next((p for p in (dest, *dest.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if need > free:
        raise UsageError(
            f"export needs {need} bytes but {probe} has {free} free",
            "Free some space or export elsewhere.",
        )


def load_plan(reg: Registry, bundle_digest: str) -> dict[str, tuple[str, int]]:
    """The export plan of a stored bundle (its manifests are read and verified)."""
    from registry.bundles import load_component

    data = reg.store.read_bytes(bundle_digest)
    bundle = BundleManifest.from_bytes(data)
    comps = {k: load_component(reg, d) for k, d in bundle.components.items()}
    return plan(bundle_digest, len(data), bundle, comps)


def export(reg: Registry, ref: str, dest: Path, *, durable: bool = True) -> dict[str, Any]:
    """Materialize REF into `dest` (new or empty), every file re-hashed on the way.

    `durable=False` skips each file's fsync: for throwaway copies such as a gate run's
    private workdir (a user's export is fsync'd: it may be served from next)."""
    from registry.bundles import load_bundle, load_component

    with reg.db.read() as conn:
        row = refs.resolve(conn, ref)
        signature = newest_signature(conn, row["digest"])
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} exists and is not an empty directory", "Choose a new directory.")
    bundle = load_bundle(reg, row["digest"])
    comps = {k: load_component(reg, d) for k, d in bundle.components.items()}
    prefixes = layout(comps)
    files = component_files(comps)
    check_layout(files, dest)
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for rel, (digest, size, _kind) in sorted(files.items()):
        reg.store.copy_out(digest, size, join_inside(dest, rel), durable=durable)
        total += size
    meta_dir = dest / "registry"
    meta_dir.mkdir(exist_ok=True)
    (meta_dir / "bundle.json").write_bytes(reg.store.read_bytes(row["digest"]))
    for kind, desc in bundle.components.items():
        (meta_dir / f"{kind}.json").write_bytes(reg.store.read_bytes(desc.digest))
    if signature is not None:  # byte for byte the stored model-signing bundle
        join_inside(dest, SIGNATURE_PATH).write_bytes(reg.store.read_bytes(signature["digest"]))
    external = comps.get("base_model")
    return {
        "digest": row["digest"],
        "tag": f"{row['name']}:v{row['version']}",
        "files": len(files),
        "bytes": total,
        "base": external.source
        if external is not None and external.external
        else (str(dest / prefixes["base_model"]) if "base_model" in comps else None),
        "signed_by": signature["signer"] if signature is not None else None,
    }


def newest_signature(conn: Any, bundle_digest: str) -> dict[str, str] | None:
    """The newest `registry sign` signature of a bundle: {signer, digest}, or None."""
    r = conn.execute(
        "SELECT signer, signature_digest FROM bundle_signature WHERE bundle_digest = :d"
        " ORDER BY created_at DESC, signer LIMIT 1",
        {"d": bundle_digest},
    ).first()
    return None if r is None else {"signer": r.signer, "digest": r.signature_digest}
