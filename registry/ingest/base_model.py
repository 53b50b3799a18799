"""Base model components: a local model directory, or an external pinned Hub model.

`hf://org/name@<revision>` pins a base without copying it: the file list and sha256 come
from the Hub API, or from the local Hugging Face cache when offline (HF_HUB_OFFLINE, or
the Hub unreachable). A revision that is not a full commit hash is resolved to one and
recorded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from registry.errors import InvalidInputError, RemoteError
from registry.ingest.common import (
    Staged,
    check_file,
    check_suffix,
    read_json,
    scan_dir,
    weights_summary,
)
from registry.manifest import FileEntry
from registry.paths import check_relpath

HF_RE = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?\Z", re.ASCII)
COMMIT_RE = re.compile(r"^[0-9a-f]{40}\Z")
QUANT_KEYS = ("quant_method", "bits", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type")
CONFIG_KEYS = (
    "model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "intermediate_size", "vocab_size", "max_position_embeddings",
    "dtype", "torch_dtype", "tie_word_embeddings",
)  # fmt: skip


def config_meta(cfg: Any, where: str) -> dict[str, Any]:
    if not isinstance(cfg, dict):
        raise InvalidInputError(f"{where} must be a JSON object")
    if "model_type" not in cfg:
        raise InvalidInputError(f"{where} has no model_type", "Is this a transformers model?")
    meta = {k: cfg[k] for k in CONFIG_KEYS if k in cfg}
    qc = cfg.get("quantization_config")
    if isinstance(qc, dict):  # a pre-quantized base (e.g. a bitsandbytes 4-bit checkpoint)
        meta["quantization"] = {k: qc[k] for k in QUANT_KEYS if k in qc}
    return meta


def _check_index(root: Path, files: dict[str, Any]) -> None:
    index_name = "model.safetensors.index.json"
    if index_name not in files:
        return
    index = read_json(root / index_name, "base_model")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise InvalidInputError(f"base_model: {index_name} has no weight_map")
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or check_relpath(shard) not in files:
            raise InvalidInputError(f"base_model: {index_name} names a missing shard {shard!r}")


def stage(root: Path, *, allow_pickle: bool = False) -> Staged:
    staged, headers = scan_dir(root, "base_model", allow_pickle=allow_pickle)
    meta = config_meta(read_json(root / "config.json", "base_model"), "base_model config.json")
    _check_index(root, staged.files)
    if not headers and not allow_pickle:
        raise InvalidInputError(f"base_model: {root} has no .safetensors weights")
    meta["weights"] = weights_summary(headers)
    meta["sharded"] = "model.safetensors.index.json" in staged.files
    staged.meta = meta
    return staged


def hub_cache_dir() -> Path:
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(cache)
    home = os.environ.get("HF_HOME") or os.path.join(Path.home(), ".cache", "huggingface")
    return Path(home) / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def stage_external(uri: str, *, allow_pickle: bool = False, hash_file: Any = None) -> Staged:
    """Pin `hf://org/name@rev`: list its files with sha256, store none of them.

    Online, the Hub is asked (it alone knows the whole file list and what a branch points
    at now); offline (HF_HUB_OFFLINE) or when the Hub cannot be reached, the local cache's
    snapshot is used, and refused when it is visibly partial (no config.json or weights,
    or a shard of its index missing). `hash_file(path) -> (digest, size)` hashes a cached
    file (the caller's stat cache).
    """
    m = HF_RE.match(uri)
    if not m:
        raise InvalidInputError(f"{uri!r} is not hf://org/name@<revision>")
    repo, rev = m["repo"], m["rev"] or "main"
    repo_cache = hub_cache_dir() / f"models--{repo.replace('/', '--')}"
    notes: list[str] = []
    hub, unreachable = None, None
    commit: str | None  # the pinned commit (None: the revision is not in the cache)
    if not _offline():
        try:
            hub = _from_hub(repo, rev, repo_cache, hash_file)
        except _Unreachable as exc:
            unreachable = str(exc)
    if hub is not None:
        commit, files, meta = hub
    else:
        commit = rev if COMMIT_RE.match(rev) else _cached_ref(repo_cache, rev)
        snapshot = repo_cache / "snapshots" / (commit or "-")
        if not commit or not snapshot.is_dir():
            if unreachable:
                raise RemoteError(
                    f"the Hugging Face Hub could not be reached ({unreachable}) and {repo}@{rev}"
                    " is not in the local cache",
                    "Check HF_ENDPOINT and the network, or download the model first.",
                )
            raise InvalidInputError(
                f"{repo}@{rev} is not in the local Hugging Face cache ({hub_cache_dir()})",
                "Download it first (hf download REPO --revision REV) or go online"
                " (unset HF_HUB_OFFLINE).",
            )
        if unreachable:
            notes.append(
                f"note: the Hugging Face Hub could not be reached ({unreachable});"
                f" {repo}@{commit} was pinned from the local cache"
            )
        files = _from_cache(repo_cache, commit, allow_pickle=allow_pickle, hash_file=hash_file)
        _check_complete(snapshot, files, f"{repo}@{commit}", allow_pickle=allow_pickle)
        meta = config_meta(read_json(snapshot / "config.json", "base_model"), f"{repo} config.json")
    for f in files:
        check_suffix(f.path, allow_pickle=allow_pickle)
    meta.update(repo_id=repo, revision=commit)
    if rev != commit:
        meta["requested_revision"] = rev
    staged = Staged("base_model", meta=meta, source=f"hf://{repo}@{commit}", notes=notes)
    staged.external_files = sorted(files, key=lambda f: f.path)
    return staged


def _check_complete(
    snapshot: Path, files: list[FileEntry], where: str, *, allow_pickle: bool
) -> None:
    """Refuse a cache snapshot that is visibly partial (files are cached one by one)."""
    names = {f.path for f in files}
    weights = [n for n in names if n.endswith(".safetensors")]
    if allow_pickle:
        weights += [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    if "config.json" not in names or not weights:
        raise InvalidInputError(
            f"the cached snapshot of {where} holds no {'config.json' if weights else 'weights'}"
            " (a partial download)",
            "Download the whole repo (hf download REPO --revision COMMIT) or go online.",
        )
    _check_index(snapshot, dict.fromkeys(names))


def _cached_ref(repo_cache: Path, rev: str) -> str | None:
    ref = repo_cache / "refs" / rev
    if ref.is_file():
        commit = ref.read_text().strip()
        return commit if COMMIT_RE.match(commit) else None
    return None


def _from_cache(
    repo_cache: Path, commit: str, *, allow_pickle: bool, hash_file: Any
) -> list[FileEntry]:
    snapshot = repo_cache / "snapshots" / commit
    real_cache = os.path.realpath(repo_cache)
    out = []
    for dirpath, dirnames, filenames in os.walk(snapshot):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = check_relpath(full.relative_to(snapshot).as_posix())
            real = os.path.realpath(full)
            # Cache snapshots are symlinks into the repo's blobs/: they may not leave it.
            if not real.startswith(real_cache + os.sep):
                raise InvalidInputError(f"cached file {rel} points outside {repo_cache}")
            check_file(rel, Path(real), allow_pickle=allow_pickle)
            digest, size = hash_file(Path(real))
            out.append(FileEntry(rel, digest, size))
    if not out:
        raise InvalidInputError(f"cached snapshot {snapshot} is empty")
    return out


class _Unreachable(Exception):
    """The Hub could not be reached at all (as opposed to answering with an error)."""


def _network_error(exc: BaseException) -> bool:
    # huggingface_hub raises its HTTP library's transport errors as they are; their
    # classes differ between releases, their names do not.
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"TransportError", "ConnectionError", "TimeoutException", "Timeout"})


def _from_hub(
    repo: str, rev: str, repo_cache: Path, hash_file: Any
) -> tuple[str, list[FileEntry], dict[str, Any]]:
    """Ask the Hub for the commit and every file's sha256 (LFS files carry theirs; small
    files in git are hashed from the cache, downloaded into it first if needed)."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    meta: dict[str, Any] = {}
    try:
        info = HfApi().model_info(repo, revision=rev, files_metadata=True)
        commit = str(info.sha)
        if not COMMIT_RE.match(commit):
            raise RemoteError(f"Hugging Face Hub: {repo}@{rev} resolved to {commit!r}")
        files = []
        for s in info.siblings or []:
            rel = check_relpath(s.rfilename)
            if s.lfs is not None and getattr(s.lfs, "sha256", None):
                files.append(FileEntry(rel, f"sha256:{s.lfs.sha256}", s.lfs.size))
                continue
            cached = repo_cache / "snapshots" / commit / rel
            local = (
                cached
                if cached.is_file()
                else Path(hf_hub_download(repo, s.rfilename, revision=commit))
            )
            digest, size = hash_file(local.resolve())
            files.append(FileEntry(rel, digest, size))
            if rel == "config.json":  # the same meta as a pin from the cache gets
                meta = config_meta(read_json(local, "base_model"), f"{repo} config.json")
    except HfHubHTTPError as exc:
        raise RemoteError(f"Hugging Face Hub: {str(exc).splitlines()[0]}") from exc
    except OfflineModeIsEnabled as exc:
        raise _Unreachable(str(exc)) from exc
    except Exception as exc:
        if _network_error(exc):
            raise _Unreachable(f"{type(exc).__name__}: {exc}") from exc
        raise
    if "config.json" not in {f.path for f in files}:
        raise InvalidInputError(f"{repo}@{commit} has no config.json: not a transformers model")
    return commit, files, meta
