"""Materialize a bundle as a directory that transformers and peft load directly.

    DIR/adapter_config.json, adapter_model.safetensors   the adapter (PeftModel.from_pretrained)
    DIR/tokenizer.json, tokenizer_config.json, ...       the tokenizer (AutoTokenizer)
    DIR/chat_template.jinja                              the bundle's chat template
    DIR/base/                                            the base model (absent if external)
    DIR/dataset/, DIR/config/                            dataset and training config
    DIR/registry/bundle.json, registry/<kind>.json       the manifests, for provenance
    DIR/registry/model.sig                               the newest `registry sign` signature
    DIR/registry/files/adapter/adapter_config.json       the stored adapter_config.json, when
                                                         the published one differs (below)

`adapter_config.json` names the bundle's base identity (`base_identity`): the Hub repo id
(and pinned `revision`) of an external base, else the base's name (the adapter's own name
for it unless that is a local path, else "base"), never a path of the machine that added
the bundle. The stored blob is immutable, so the file is rewritten on the way out (here
and by the Hub push, `published_adapter_config`); the plan, and so a `registry sign`
signature, covers the bytes written. A gate's private copy (`publish=False`) keeps the
stored bytes: adapter-compat checks what the adapter itself says.

For a full fine-tune (no adapter) the model files go at the top level instead of base/,
so AutoModelForCausalLM.from_pretrained(DIR) loads it. Every byte is re-hashed as it is
copied out; the directory must be new or empty.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from registry import refs
from registry.errors import IntegrityError, UsageError
from registry.manifest import BundleManifest, ComponentManifest
from registry.paths import join_inside
from registry.repo import Registry

MAX_EXPORT_FILES = 100_000
ADAPTER_CONFIG = "adapter_config.json"
ORIGINAL_ADAPTER_CONFIG = "registry/files/adapter/adapter_config.json"


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
    published: dict[str, bytes] | None = None,
) -> dict[str, tuple[str, int]]:
    """Every file `export` writes: relpath -> (blob digest, size). Pure: reads nothing.

    `published` is `published_files` of the bundle (the rewritten adapter_config.json).
    What `registry sign` signs, in model-signing's layout, without exporting."""
    from registry.digest import sha256_bytes

    out = {rel: (d, s) for rel, (d, s, _kind) in component_files(components).items()}
    out.update(metadata_files(bundle_digest, bundle_size, bundle))  # written last: they win
    for rel, data in (published or {}).items():
        out[rel] = (sha256_bytes(data), len(data))
    return out


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "~", ".", "\\"))
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")  # C:\...
    )


def base_identity(components: dict[str, ComponentManifest]) -> tuple[str, str | None] | None:
    """What adapter_config.json should call the base: (name, pinned revision or None).

    An external base: its Hub repo id and commit. A local one: the adapter's own name for
    it unless that is a local path (a machine's directory), else "base" (where export and
    `push --include-base` put it). None when the bundle has no base or no adapter."""
    base, adapter = components.get("base_model"), components.get("adapter")
    if base is None or adapter is None:
        return None
    if base.external and base.source and base.source.startswith("hf://"):
        repo, _, commit = base.source[len("hf://") :].partition("@")
        return repo, commit or None
    name = adapter.meta.get("base_model_name_or_path")
    if isinstance(name, str) and name.strip() and not _looks_like_path(name.strip()):
        return name, None
    return "base", None


def published_adapter_config(original: bytes, identity: tuple[str, str | None]) -> bytes:
    """adapter_config.json naming the base by `identity`: the original bytes when they
    already do, else the same JSON with `base_model_name_or_path` (and `revision`) set."""
    import json

    try:
        cfg = json.loads(original)
    except (ValueError, UnicodeDecodeError):
        return original
    if not isinstance(cfg, dict):
        return original
    name, revision = identity
    if cfg.get("base_model_name_or_path") == name and (
        revision is None or cfg.get("revision") == revision
    ):
        return original
    cfg["base_model_name_or_path"] = name
    if revision is not None:
        cfg["revision"] = revision
    return (json.dumps(cfg, indent=2) + "\n").encode()


def published_files(
    components: dict[str, ComponentManifest], read: Callable[[str], bytes]
) -> dict[str, bytes]:
    """Export paths whose bytes are not a stored blob: the rewritten adapter_config.json
    and, beside the manifests, the stored original (empty when nothing is rewritten).
    `read(digest)` returns a verified blob."""
    identity = base_identity(components)
    adapter = components.get("adapter")
    if identity is None or adapter is None:
        return {}
    f = next((f for f in adapter.files if f.path == ADAPTER_CONFIG), None)
    if f is None:
        return {}
    original = read(f.digest)
    published = published_adapter_config(original, identity)
    if published == original:
        return {}
    return {ADAPTER_CONFIG: published, ORIGINAL_ADAPTER_CONFIG: original}


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


def load_plan(
    reg: Registry, bundle_digest: str, *, publish: bool = True
) -> dict[str, tuple[str, int]]:
    """The export plan of a stored bundle (its manifests are read and verified).

    `publish=False`: the plan as it was before adapter_config.json was published with the
    base identity (the stored bytes at the top), which signatures made then cover."""
    from registry.bundles import load_component

    data = reg.store.read_bytes(bundle_digest)
    bundle = BundleManifest.from_bytes(data)
    comps = {k: load_component(reg, d) for k, d in bundle.components.items()}
    published = published_files(comps, reg.store.read_bytes) if publish else None
    return plan(bundle_digest, len(data), bundle, comps, published)


def export(
    reg: Registry, ref: str, dest: Path, *, durable: bool = True, publish: bool | None = None
) -> dict[str, Any]:
    """Materialize REF into `dest` (new or empty), every file re-hashed on the way.

    `durable=False` skips each file's fsync: for throwaway copies such as a gate run's
    private workdir (a user's export is fsync'd: it may be served from next).
    `publish` (default: `durable`) writes adapter_config.json naming the base identity
    (`published_files`); a gate's private copy keeps the stored bytes."""
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
    published = (
        published_files(comps, reg.store.read_bytes)
        if (durable if publish is None else publish)
        else {}
    )
    check_layout(files, dest)
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for rel, (digest, size, _kind) in sorted(files.items()):
        if rel in published:
            continue
        reg.store.copy_out(digest, size, join_inside(dest, rel), durable=durable)
        total += size
    meta_dir = dest / "registry"
    meta_dir.mkdir(exist_ok=True)
    _write(meta_dir / "bundle.json", reg.store.read_bytes(row["digest"]), durable)
    for kind, desc in bundle.components.items():
        _write(meta_dir / f"{kind}.json", reg.store.read_bytes(desc.digest), durable)
    for rel, data in sorted(published.items()):  # same bytes as the plan signs
        target = join_inside(dest, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        _write(target, data, durable)
        total += len(data) if rel == ADAPTER_CONFIG else 0
    if signature is not None:  # byte for byte the stored model-signing bundle
        sig = reg.store.read_bytes(signature["digest"])
        _write(join_inside(dest, SIGNATURE_PATH), sig, durable)
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


def _write(path: Path, data: bytes, durable: bool) -> None:
    """A small file of the export (manifests, the published adapter config, the signature),
    fsync'd like the blobs copied out when the export is durable."""
    import os

    with open(path, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())


def newest_signature(conn: Any, bundle_digest: str) -> dict[str, str] | None:
    """The newest `registry sign` signature of a bundle: {signer, digest}, or None."""
    r = conn.execute(
        "SELECT signer, signature_digest FROM bundle_signature WHERE bundle_digest = :d"
        " ORDER BY created_at DESC, signer LIMIT 1",
        {"d": bundle_digest},
    ).first()
    return None if r is None else {"signer": r.signer, "digest": r.signature_digest}
