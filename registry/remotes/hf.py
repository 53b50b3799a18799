"""The Hugging Face Hub remote: a pushed bundle is an ordinary PEFT model repo.

Repo layout (one bundle name per repo; `main` shows the bundle of the channel it follows:
production, or `push --main CHANNEL`; the bundle pushed last while there is no production):

    adapter_config.json, adapter_model.safetensors   the adapter (PeftModel.from_pretrained)
    tokenizer.json, tokenizer_config.json, ...       the tokenizer (AutoTokenizer)
    chat_template.jinja                              the bundle's chat template
    README.md                                        model card: digest, lineage, dataset,
                                                     base model, gate results
    dataset/..., config/...                          dataset and training config
    base/...                                         the base model, only with --include-base
    registry/bundle.json, registry/components/K.json the exact manifest bytes
    registry/gate-runs.json, registry/evidence/*     gate-run records and their evidence
    registry/created.json                            when and by whom the bundle was created
    registry/attestations/<bundle hex>/<hex>.json    signed gate-run attestations (DSSE)
    registry/signatures/<bundle hex>/<key hex>.sig   `registry sign` signatures (model-signing)
    registry/keys/<key hex>.pub                      the signers' public keys (PEM)
    registry/versions.json, registry/channels.json   version -> digest, channel -> version
    registry/files/<kind>/<path>                     component files whose usual place is
                                                     taken (README.md of the adapter, a
                                                     tokenizer's own chat template, the
                                                     original adapter_config.json)

A git tag per version (`v3`) points at the commit holding that bundle (on main, or on a
short-lived side branch when main is to show another channel's bundle); channels live in
`registry/channels.json` (in the same commit as the files, so they move atomically).
Attestations, signatures and keys are kept on main for every bundle the repo holds (a
push adds its bundle's and never removes another's); a pull reads them from main, checks
each (digest, signature) and records those that hold (registry.remotes.sync.import_trust).
An external base (`hf://org/name@commit`) is referenced, not uploaded. The published
`adapter_config.json` always names the base identity (registry.export.base_identity: the
repo id and `revision`, or a local base's name), never a local path; the stored bytes stay
under registry/files/ so pull can re-verify every digest.

One commit per push, with `parent_commit` set to the head it was computed from, so two
pushers cannot overwrite each other silently (the Hub answers 412). Pull reads the
manifests under registry/ at the version's tag, downloads only missing blobs and
re-hashes each before it enters the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import locks, refs
from registry.digest import check_digest, hex_of, sha256_bytes, short
from registry.errors import (
    ConflictError,
    IntegrityError,
    RegistryError,
    RemoteError,
    UsageError,
)
from registry.paths import check_relpath
from registry.remotes.base import ProgressFactory, PullResult, PushResult, RemoteSpec
from registry.remotes.hub_card import model_card
from registry.remotes.sync import (
    MAX_ATTESTATION,
    MAX_CREATION_RECORD,
    MAX_PUBLIC_KEY,
    MAX_SIGNATURE,
    BundleBlobs,
    Loader,
    TrustPulled,
    TrustRecords,
    adopt_file,
    check_local_blobs,
    creation_record,
    hex_name,
    import_bundle,
    import_trust,
    key_hex,
    key_id_of,
    load_local,
    local_trust,
    missing_blobs,
    note_kept_blobs,
    parse_creation,
    parse_remote_bundle,
    pick,
    remote_channel_ref,
    split_settings,
    store_manifests,
    track_channel,
)
from registry.untrusted import load_json

if TYPE_CHECKING:
    from registry.repo import Registry

PREFIX = {"adapter": "", "tokenizer": "", "chat_template": "", "config": "config/",
          "dataset": "dataset/", "base_model": "base/"}  # fmt: skip
# Who gets a shared top-level path: the bundle's chat template wins over the tokenizer's
# own (the point of pinning a template), the adapter over the tokenizer.
PRIORITY = ("chat_template", "adapter", "tokenizer", "config", "dataset", "base_model")
RESERVED = ("README.md", ".gitattributes")
META = "registry"
MAX_META = 64 * 1024 * 1024
# What vouches for bundles: kept on main across pushes (see trust_files).
TRUST_DIRS = (f"{META}/attestations/", f"{META}/signatures/", f"{META}/keys/")


def layout(bundle: BundleBlobs) -> dict[tuple[str, str], str]:
    """Where each (kind, file path) of the bundle lives in the repo. Push and pull compute
    the same map from the manifests alone."""
    taken: dict[str, str] = {}
    out: dict[tuple[str, str], str] = {}
    rewrite = rewrites_adapter_config(bundle)
    if rewrite:
        taken["adapter_config.json"] = "published"
    for kind in PRIORITY:
        comp = bundle.components.get(kind)
        if comp is None or comp.manifest.external:
            continue
        for f in comp.manifest.files:
            primary = PREFIX[kind] + f.path
            displaced = (
                primary in RESERVED
                or primary.startswith(f"{META}/")
                or taken.get(primary, f.digest) != f.digest
            )
            path = f"{META}/files/{kind}/{f.path}" if displaced else primary
            taken.setdefault(path, f.digest)
            out[(kind, f.path)] = path
    return out


def manifests(bundle: BundleBlobs) -> dict[str, Any]:
    """kind -> ComponentManifest of a bundle."""
    return {k: c.manifest for k, c in bundle.components.items()}


def rewrites_adapter_config(bundle: BundleBlobs) -> bool:
    """The top-level adapter_config.json is the published one, naming the base identity
    (registry.export.published_adapter_config); the stored one is kept under
    registry/files/adapter/. Decided from the manifests alone (push and pull agree), so it
    holds even where the published bytes equal the stored ones."""
    from registry.export import ADAPTER_CONFIG, base_identity

    adapter = bundle.components.get("adapter")
    return (
        adapter is not None
        and base_identity(manifests(bundle)) is not None
        and any(f.path == ADAPTER_CONFIG for f in adapter.manifest.files)
    )


def base_source(bundle: BundleBlobs) -> tuple[str, str] | None:
    """(repo id, commit) of an external base, else None."""
    base = bundle.components.get("base_model")
    if base is None or not base.manifest.external or not base.manifest.source:
        return None
    repo, _, commit = base.manifest.source[len("hf://") :].partition("@")
    return repo, commit


@dataclass(frozen=True)
class Blob:
    """Repo content taken from a stored blob."""

    digest: str
    size: int


KEEP = object()  # repo content left as it is


def trust_files(bundle_digest: str, trust: TrustRecords) -> dict[str, Any]:
    """repo path -> Blob or bytes of a bundle's attestations, signatures and signer keys."""
    bundle_hex = hex_of(bundle_digest)
    out: dict[str, Any] = {}
    for digest, size in trust.attestations.items():
        out[f"{META}/attestations/{bundle_hex}/{hex_of(digest)}.json"] = Blob(digest, size)
    for key_id, (digest, size) in trust.signatures.items():
        out[f"{META}/signatures/{bundle_hex}/{key_hex(key_id)}.sig"] = Blob(digest, size)
    for key_id, pem in trust.keys.items():
        out[f"{META}/keys/{key_hex(key_id)}.pub"] = pem
    return out


def git_blob_oid(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Index:
    """registry/versions.json and registry/channels.json of a repo's main branch."""

    name: str | None = None
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # "v3" -> digest, size
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> digest, version

    def versions_bytes(self) -> bytes:
        return _pretty({"schema": "registry.hub.versions.v1", "name": self.name,
                        "versions": dict(sorted(self.versions.items(), key=_vkey))})  # fmt: skip

    def channels_bytes(self) -> bytes:
        return _pretty({"schema": "registry.hub.channels.v1", "name": self.name,
                        "channels": dict(sorted(self.channels.items()))})  # fmt: skip


def _vkey(item: tuple[str, Any]) -> int:
    return int(item[0][1:])


def _pretty(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def parse_index(versions: bytes | None, channels: bytes | None, where: str) -> Index:
    """Strictly read the two index files (untrusted: every digest and number is checked)."""
    idx = Index()
    try:
        for data, key in ((versions, "versions"), (channels, "channels")):
            if data is None:
                continue
            obj = load_json(data, f"registry/{key}.json")
            if not isinstance(obj, dict) or not isinstance(obj.get(key), dict):
                raise ValueError(f"registry/{key}.json has no {key} object")
            name = obj.get("name")
            if idx.name is not None and name != idx.name:
                raise ValueError("versions.json and channels.json name different bundles")
            idx.name = refs.parse(name).name if isinstance(name, str) else None
            for tag, entry in obj[key].items():
                parsed = refs.parse(f"{idx.name}:{tag}")
                if parsed.remote is not None:
                    raise ValueError(f"{tag!r} is not a channel name")
                if (key == "versions") != (parsed.version is not None):
                    raise ValueError(f"{tag!r} is not a {key[:-1]}")
                if not isinstance(entry, dict):
                    raise ValueError(f"{tag!r} is not an object")
                check_digest(entry.get("digest"), f"{key} {tag}")
                number = entry.get("size" if key == "versions" else "version")
                if number is not None and (not isinstance(number, int) or number < 0):
                    raise ValueError(f"{tag!r} has a bad number")
                getattr(idx, key)[tag] = {k: entry[k] for k in ("digest", "size", "version")
                                          if k in entry}  # fmt: skip
    except (ValueError, RegistryError) as exc:
        raise IntegrityError(
            f"{where}: bad registry index: {exc}", "The repo is corrupt."
        ) from None
    return idx


def _blob_paths(bundle: BundleBlobs, include_base: bool) -> dict[str, Blob]:
    """repo path -> stored blob, for every component file a version's commit holds (the
    base's only with `include_base`)."""
    out: dict[str, Blob] = {}
    for (kind, rel), path in layout(bundle).items():
        if kind == "base_model" and not include_base:
            continue
        f = next(f for f in bundle.components[kind].manifest.files if f.path == rel)
        out[path] = Blob(f.digest, f.size)
    return out


class HubRemote:
    """A registry remote on the Hugging Face Hub (or a Hub-compatible server: HF_ENDPOINT)."""

    def __init__(self, spec: RemoteSpec) -> None:
        self.spec = spec
        self.repo_id = spec.repo_id
        self._api: Any = None

    @property
    def api(self) -> Any:
        if self._api is None:
            from huggingface_hub import HfApi

            self._api = HfApi(library_name="lora-registry")
        return self._api

    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Translate huggingface_hub / HTTP failures into one-line errors (one boundary)."""
        from huggingface_hub.errors import (
            HfHubHTTPError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"hf://{self.repo_id}"
        try:
            yield
        except RegistryError:
            raise
        except RepositoryNotFoundError as exc:
            raise self._not_found(doing) from exc
        except (RevisionNotFoundError, RemoteEntryNotFoundError) as exc:
            raise RemoteError(f"{doing}: {where}: {_first_line(exc)}") from exc
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status == 412:
                raise ConflictError(
                    f"{doing}: {where} changed while this push was being prepared",
                    f"Run `registry ls --remote {self.spec.name}`, then push again.",
                ) from exc
            if status in (401, 403):
                raise RemoteError(
                    f"{doing}: {where} refused the credentials ({status}: the Hub token is"
                    " invalid or may not do this)",
                    "Set HF_TOKEN to a valid token with access to the repo (`hf auth whoami`"
                    " checks it; `hf auth login` sets one).",
                ) from exc
            raise RemoteError(f"{doing}: {where}: {_first_line(exc)}") from exc
        except Exception as exc:
            cause = exc.__cause__ or exc
            if isinstance(cause, HfHubHTTPError):
                raise RemoteError(f"{doing}: {where}: {_first_line(cause)}") from exc
            if isinstance(exc, OSError) or type(exc).__module__.split(".")[0].startswith("httpx"):
                raise RemoteError(
                    f"{doing}: cannot reach {where}: {_first_line(exc)}",
                    "Nothing half-done is visible: run the same command again; files the Hub"
                    " already has are not sent twice.",
                ) from exc
            raise

    def _not_found(self, doing: str) -> RemoteError:
        """The Hub answers "repository not found" both for a repo that does not exist and
        for a private one the caller may not see; say which of the three cases it is:
        no token (unauthorized), a token the Hub refuses, or a valid token that sees no
        such repo (it does not exist, or is private to others)."""
        from huggingface_hub import get_token
        from huggingface_hub.errors import HfHubHTTPError

        where = f"hf://{self.repo_id}"
        implicit_off = os.environ.get("HF_HUB_DISABLE_IMPLICIT_TOKEN", "").lower() in (
            "1", "true", "yes", "on"
        )  # fmt: skip
        if get_token() is None or implicit_off:  # no token goes with the requests
            return RemoteError(
                f"{doing}: {where} is private or does not exist, and no Hub token is set"
                " (unauthorized)",
                "Set HF_TOKEN (or `hf auth login`) to a token that may read the repo.",
            )
        try:
            self.api.whoami()
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                return RemoteError(
                    f"{doing}: {where} refused the credentials (the Hub token is invalid)",
                    "Set HF_TOKEN to a valid token (`hf auth whoami` checks it).",
                )
        except Exception:  # whoami itself failed: fall through to the plain answer
            pass
        return RemoteError(
            f"{doing}: {where} does not exist (or is private and this token may not read it)",
            "Check the repo id in `registry remote ls`; push creates the repo.",
        )

    # --- reading the repo -------------------------------------------------------------

    def _refs(self) -> tuple[str | None, dict[str, str]]:
        """(main's head commit or None if the repo is absent, tag -> commit)."""
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            got = self.api.list_repo_refs(self.repo_id)
        except RepositoryNotFoundError:
            return None, {}
        head = next((b.target_commit for b in got.branches if b.name == "main"), None)
        return head, {t.name: t.target_commit for t in got.tags}

    def _tree(self, commit: str) -> dict[str, Any]:
        from huggingface_hub.hf_api import RepoFile

        return {
            f.path: f
            for f in self.api.list_repo_tree(self.repo_id, revision=commit, recursive=True)
            if isinstance(f, RepoFile)
        }

    def _read(self, path: str, commit: str, workdir: Path, limit: int = MAX_META) -> bytes | None:
        """A small file's bytes at `commit` (None if absent)."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            local = hf_hub_download(self.repo_id, path, revision=commit, local_dir=workdir / "meta")
        except EntryNotFoundError:
            return None
        p = Path(local)
        if p.stat().st_size > limit:
            raise IntegrityError(f"hf://{self.repo_id}/{path} is larger than {limit} bytes")
        return p.read_bytes()

    def _index(self, commit: str | None, workdir: Path) -> Index:
        if commit is None:
            return Index()
        return parse_index(
            self._read(f"{META}/versions.json", commit, workdir),
            self._read(f"{META}/channels.json", commit, workdir),
            f"hf://{self.repo_id}",
        )

    @contextlib.contextmanager
    def _workdir(self, reg: Registry) -> Iterator[Path]:
        """A scratch directory in the registry (the store's filesystem: downloads are
        renamed into the store, not copied). Not under blobs/tmp, which holds files only."""
        reg.store.init()
        path = reg.root / "tmp" / f"hub-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def list(self) -> list[dict[str, Any]]:
        """Every version in the repo (tags that versions.json names) with its channels."""
        import tempfile

        with self.errors("list"), tempfile.TemporaryDirectory() as tmp:
            head, tags = self._refs()
            if head is None:
                raise self._not_found("list")
            idx = self._index(head, Path(tmp))
        out = []
        for vtag, entry in sorted(idx.versions.items(), key=_vkey, reverse=True):
            if vtag not in tags:
                continue  # interrupted between commit and tag: not a version yet
            out.append({
                "name": idx.name, "version": int(vtag[1:]), "tag": f"{idx.name}:{vtag}",
                "digest": entry["digest"], "size": entry.get("size"),
                "channels": sorted(c for c, e in idx.channels.items()
                                   if e["digest"] == entry["digest"]),
            })  # fmt: skip
        return out

    # --- push -------------------------------------------------------------------------

    def push(
        self,
        reg: Registry,
        ref: str,
        *,
        include_base: bool = False,
        actor: str,
        progress: ProgressFactory | None = None,
        main: str | None = None,
    ) -> PushResult:
        """Upload the bundle (and for NAME:CHANNEL move the repo's channel). `main` names
        the channel whose bundle the repo's main branch shows afterwards (default:
        production; with no production yet, the bundle pushed). A new version that main
        does not show is committed on a side branch and tagged there."""
        if main is not None:
            refs.parse(f"x:{main}")  # a channel name, as a reference would spell it
        t0 = time.perf_counter()
        parsed = refs.parse(ref)
        row, bundle = load_local(reg, ref)
        name, version = row["name"], row["version"]
        vtag = f"v{version}"
        src = base_source(bundle)
        if include_base and src is not None:
            raise UsageError(
                f"--include-base: the base of {name}:{vtag} is pinned on the Hub"
                f" (hf://{src[0]}@{src[1][:12]}); it is referenced, not copied",
                "Drop --include-base; the card and adapter_config.json name the base.",
            )
        check_local_blobs(reg, bundle)
        result = PushResult(self.spec.name, bundle.digest, f"{name}:{vtag}", parsed.channel)
        _quiet_unless_terminal()
        with (
            self.errors(f"push {name}:{vtag}"),
            self._workdir(reg) as work,
            contextlib.ExitStack() as stack,
        ):
            self.api.create_repo(
                self.repo_id, private=bool(self.spec.options.get("private")), exist_ok=True
            )
            stack.enter_context(self._lfs_unless_xet())  # asks about the repo: after create
            head, tags = self._refs()
            idx = self._index(head, work)
            tree = self._tree(head) if head else {}
            if idx.name is None and set(tree) - {".gitattributes", "README.md"}:
                raise UsageError(
                    f"hf://{self.repo_id} already holds files and no registry index",
                    "Push to a new repo (or an empty one): a push replaces main's files.",
                )
            if idx.name is not None and idx.name != name:
                raise UsageError(
                    f"hf://{self.repo_id} holds bundles named {idx.name}, not {name}",
                    "Use one Hub repo per bundle name: add another remote for this one.",
                )
            idx.name = name
            tag_exists = vtag in tags
            if tag_exists:
                at_tag = self._read(f"{META}/bundle.json", tags[vtag], work)
                if at_tag is None or sha256_bytes(at_tag) != bundle.digest:
                    raise ConflictError(
                        f"{name}:{vtag} on remote {self.spec.name} is another bundle"
                        f" ({short(sha256_bytes(at_tag)) if at_tag else 'unreadable'}):"
                        " versions never move",
                        "Another registry numbered a different bundle the same; share one"
                        " database (team mode) or pull theirs first.",
                    )
            idx.versions[vtag] = {"digest": bundle.digest, "size": bundle.stored_size}
            if parsed.channel is not None:
                before = idx.channels.get(parsed.channel, {}).get("digest")
                idx.channels[parsed.channel] = {"digest": bundle.digest, "version": version}
                if before != bundle.digest:
                    result.refs.append(parsed.channel)
            follow = main or "production"
            target = idx.channels.get(follow, {}).get("digest")
            if target is None:
                if main is not None:
                    raise UsageError(
                        f"--main {main}: hf://{self.repo_id} has no {main} channel",
                        f"Push {name}:{main} with --main {main}, or name a channel it has.",
                    )
                target = bundle.digest  # no production yet: main holds the newest push
            main_data = self._read(f"{META}/bundle.json", head, work) if head else None
            main_digest = sha256_bytes(main_data) if main_data is not None else None
            # Trust records of every bundle stay on main; this bundle's are added.
            trust = {p: KEEP for p in tree if p.startswith(TRUST_DIRS)}
            trust.update(trust_files(bundle.digest, local_trust(reg, bundle.digest)))
            index = {f"{META}/versions.json": idx.versions_bytes(),
                     f"{META}/channels.json": idx.channels_bytes()}  # fmt: skip
            sent_blobs: set[str] = set()
            if not tag_exists and target != bundle.digest:
                # The new version's commit, off main (main follows `follow`): on a branch
                # from main's head, tagged, then the branch is deleted.
                version = self._desired(reg, bundle, row, idx, include_base)
                version.update(trust)
                ops = self._ops(reg, version, tree, result, sent_blobs, count=False, work=work)
                branch = f"registry-push-{uuid.uuid4().hex[:12]}"
                self.api.create_branch(self.repo_id, branch=branch, revision=head)
                try:
                    info = self.api.create_commit(
                        self.repo_id, ops, commit_message=f"{name}:{vtag} {bundle.digest}",
                        commit_description=f"Pushed by {actor} with lora-registry.",
                        revision=branch, parent_commit=head,
                    )  # fmt: skip
                    self._tag(vtag, info.oid, bundle.digest, work)
                finally:
                    with contextlib.suppress(Exception):
                        self.api.delete_branch(self.repo_id, branch=branch)
                result.refs.insert(0, vtag)
                tag_exists = True
            desired = self._main_content(
                reg, bundle, row, idx, target, main_digest, tree, tags, include_base, work, result
            )
            desired.update(trust)
            desired.update(index)
            ops = self._ops(reg, desired, tree, result, sent_blobs, count=True, work=work)
            # "sent N of M": M counts the stored blobs this version's commit holds (not an
            # external base, nor a local one left off), N those uploaded; generated files
            # (card, manifests, records) are counted in neither.
            needed = {b.digest: b.size for b in _blob_paths(bundle, include_base).values()}
            result.blobs, result.bytes_total = len(needed), sum(needed.values())
            result.blobs_sent = len(sent_blobs)
            commit = head
            if ops:
                info = self.api.create_commit(
                    self.repo_id,
                    ops,
                    commit_message=f"{name}:{vtag} {bundle.digest}"
                    + (f" ({parsed.channel})" if parsed.channel else ""),
                    commit_description=f"Pushed by {actor} with lora-registry.",
                    parent_commit=head,
                )
                commit = info.oid
            if not tag_exists:
                self._tag(vtag, commit, bundle.digest, work)
                result.refs.insert(0, vtag)
        base = bundle.components.get("base_model")
        if not include_base and base is not None and not base.manifest.external:
            result.notes.append(
                "the local base model was not uploaded (--include-base uploads it);"
                " a pull from this repo needs the base in the puller's store"
            )
        result.seconds = time.perf_counter() - t0
        return result

    def _ops(
        self,
        reg: Registry,
        desired: dict[str, Any],
        tree: dict[str, Any],
        result: PushResult,
        sent_blobs: set[str],
        *,
        count: bool,
        work: Path,
    ) -> Sequence[Any]:  # (`list` here is the method HubRemote.list)
        """The commit operations that turn `tree` into `desired` (KEEP: left as it is).
        Bytes sent are added to `result` (each blob once across commits); `count` adds the
        trust records sent (only for the commit on main, so none is counted twice)."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        ops: Any = []
        for path, content in sorted(desired.items()):
            if content is KEEP or _same(tree.get(path), content, reg):
                continue
            if count and path.startswith(f"{META}/attestations/"):
                result.gate_runs_sent += 1
            elif count and path.startswith(f"{META}/signatures/"):
                result.signatures_sent += 1
            if isinstance(content, bytes):  # generated: not a blob of the summary
                ops.append(CommitOperationAdd(path, content))
                continue
            digest, size = content.digest, content.size
            op = CommitOperationAdd(path, str(self._local_file(reg, digest, size, path, work)))
            with contextlib.suppress(AttributeError):  # skip the client's re-hash
                op.upload_info._sha256 = bytes.fromhex(hex_of(digest))
            ops.append(op)
            if digest not in sent_blobs:
                sent_blobs.add(digest)
                result.bytes_sent += size
        ops += [CommitOperationDelete(p) for p in sorted(set(tree) - set(desired))
                if p != ".gitattributes"]  # fmt: skip
        return ops

    def _local_file(self, reg: Registry, digest: str, size: int, path: str, work: Path) -> Path:
        """The file to upload for blob `digest`, checked: the blob itself, or for a file
        the store holds as pieces, a whole copy in the push's scratch directory (copy_out:
        reassembled, its sha256 verified on the way). The Hub receives ordinary whole files
        (it dedups with its own storage), and huggingface_hub's Xet path uploads only
        paths and bytes, so a stream of the pieces would not do."""
        hint = "Run `registry verify --all`, then pull the bundle again."
        try:
            pieced = reg.store.piece_list(digest) is not None
        except IntegrityError as exc:  # a piece list that does not parse
            raise IntegrityError(f"local file {short(digest)} ({path}): {exc}; not pushed",
                                 hint) from None  # fmt: skip
        if not pieced:
            if reason := reg.store.check(digest, size):
                raise IntegrityError(
                    f"local blob {short(digest)} ({path}) is {reason}; not pushed", hint
                )
            return reg.store.path(digest)
        local = work / "pieced" / hex_of(digest)
        if not local.exists():  # one copy per push, whichever commits name it
            try:
                reg.store.copy_out(digest, size, local, durable=False)
            except IntegrityError as exc:
                raise IntegrityError(
                    f"local file {short(digest)} ({path}) does not reassemble from its pieces"
                    f" ({str(exc).rstrip('.')}); not pushed",
                    hint,
                ) from None
        return local

    def _main_content(
        self,
        reg: Registry,
        bundle: BundleBlobs,
        row: dict[str, Any],
        idx: Index,
        target: str,
        main_digest: str | None,
        tree: dict[str, Any],
        tags: dict[str, str],
        include_base: bool,
        work: Path,
        result: PushResult,
    ) -> dict[str, Any]:
        """What main holds after the push (index and trust records aside): the files of
        bundle `target`. Kept as they are when main already shows it (its records are
        refreshed if it is the bundle pushed); written from the local store otherwise."""
        has_base = any(p.startswith(PREFIX["base_model"]) for p in tree)
        if target == main_digest:
            desired: dict[str, Any] = {p: KEEP for p in tree if p != ".gitattributes"}
            if target == bundle.digest:
                desired.update(self._records(reg, bundle, row, has_base))
            return desired
        if target == bundle.digest:
            chosen, chosen_row = bundle, row
        else:
            try:
                chosen_row, chosen = load_local(reg, f"{bundle.name}@{target}")
            except RegistryError:
                result.notes.append(
                    f"main of hf://{self.repo_id} still shows {short(main_digest or '-')}:"
                    f" this registry lacks {short(target)}, which it should show; pull it"
                    " and push again"
                )
                return {p: KEEP for p in tree if p != ".gitattributes"}
        vtag = next((t for t, e in idx.versions.items() if e["digest"] == target), None)
        at_tag = self._tree(tags[vtag]) if vtag in tags else {}  # tags: before this push
        with_base = (include_base and chosen is bundle) or any(
            p.startswith(PREFIX["base_model"]) for p in at_tag
        )
        return self._desired(reg, chosen, chosen_row, idx, with_base)

    @contextlib.contextmanager
    def _lfs_unless_xet(self) -> Iterator[None]:
        """Upload through git-LFS when the endpoint has no Xet storage.

        huggingface_hub uploads through Xet whenever hf_xet is installed and has no
        fallback when the server lacks it (its upload asks for a Xet write token, and a
        Hub-compatible server without Xet answers 404). So ask for that token first; on a
        404 turn Xet off (huggingface_hub's own HF_HUB_DISABLE_XET switch) for this push."""
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session
        from huggingface_hub.utils._runtime import is_xet_available

        if not is_xet_available():
            yield
            return
        url = f"{self.api.endpoint}/api/models/{self.repo_id}/xet-write-token/main"
        try:
            status = get_session().get(url, headers=self.api._build_hf_headers()).status_code
        except Exception:  # unreachable: the push itself says so
            status = None
        if status not in (404, 405, 501):
            yield
            return
        before = constants.HF_HUB_DISABLE_XET
        constants.HF_HUB_DISABLE_XET = True
        try:
            yield
        finally:
            constants.HF_HUB_DISABLE_XET = before

    def _tag(self, vtag: str, commit: str | None, digest: str, work: Path) -> None:
        """Tag `commit` (None: main's head) as `vtag`, unless the same bundle already is."""
        from huggingface_hub.errors import HfHubHTTPError

        try:
            self.api.create_tag(self.repo_id, tag=vtag, revision=commit)
        except HfHubHTTPError as exc:
            if exc.response is None or exc.response.status_code != 409:
                raise
            theirs = self._read(f"{META}/bundle.json", vtag, work)
            if theirs is None or sha256_bytes(theirs) != digest:
                raise ConflictError(
                    f"{vtag} was tagged on {self.spec.name} by another push", "Pull it first."
                ) from exc

    def _desired(
        self,
        reg: Registry,
        bundle: BundleBlobs,
        row: dict[str, Any],
        idx: Index,
        include_base: bool,
    ) -> dict[str, Any]:
        """repo path -> bytes or a stored Blob: the whole repo content for this bundle."""
        out: dict[str, Any] = dict(_blob_paths(bundle, include_base))
        if rewrites_adapter_config(bundle):
            from registry.export import base_identity, published_adapter_config

            digest = out[f"{META}/files/adapter/adapter_config.json"].digest
            identity = base_identity(manifests(bundle))
            assert identity is not None  # rewrites_adapter_config checked it
            out["adapter_config.json"] = published_adapter_config(
                reg.store.read_bytes(digest), identity
            )
        out[f"{META}/bundle.json"] = bundle.data
        for kind, comp in bundle.components.items():
            out[f"{META}/components/{kind}.json"] = comp.data
        out.update(self._records(reg, bundle, row, include_base))
        out[f"{META}/versions.json"] = idx.versions_bytes()
        out[f"{META}/channels.json"] = idx.channels_bytes()
        return out

    def _records(
        self, reg: Registry, bundle: BundleBlobs, row: dict[str, Any], include_base: bool
    ) -> dict[str, bytes]:
        """The gate-run records, their evidence, the creation record and the model card."""
        out: dict[str, bytes] = {f"{META}/created.json": creation_record(row)}
        runs = gate_runs(reg, bundle.digest)
        out[f"{META}/gate-runs.json"] = _pretty(runs)
        for run in runs:
            ev = run.get("evidence_digest")
            if ev and reg.store.has(ev):
                out[f"{META}/evidence/{hex_of(ev)}.json"] = reg.store.read_bytes(ev)
        out["README.md"] = model_card(
            reg, bundle, row, runs, self.repo_id, include_base, base_source(bundle)
        )
        return out

    # --- pull -------------------------------------------------------------------------

    @locks.writer("pull")
    def pull(
        self, reg: Registry, ref: str, *, actor: str, progress: ProgressFactory | None = None
    ) -> PullResult:
        t0 = time.perf_counter()
        ref = remote_channel_ref(ref, self.spec.name)
        parsed = refs.parse(ref)
        _quiet_unless_terminal()
        fetching: dict[str, int] = {}
        with (
            note_kept_blobs(reg, fetching),
            self.errors(f"pull {ref}"),
            self._workdir(reg) as work,
        ):
            head, tags = self._refs()
            if head is None:
                raise self._not_found(f"pull {ref}")
            idx = self._index(head, work)
            entries = [
                {"name": idx.name, "version": int(t[1:]), "tag": f"{idx.name}:{t}",
                 "digest": e["digest"], "channels": sorted(
                     c for c, ce in idx.channels.items() if ce["digest"] == e["digest"])}
                for t, e in idx.versions.items() if t in tags
            ]  # fmt: skip
            entry = pick(parsed, entries, self.spec.name)
            vtag = f"v{entry['version']}"
            commit = tags[vtag]
            data = self._read(f"{META}/bundle.json", commit, work)
            if data is None:
                raise IntegrityError(f"{entry['tag']} on {self.spec.name} has no manifest")

            def fetch(kind: str, _desc: Any) -> bytes:
                got = self._read(f"{META}/components/{kind}.json", commit, work)
                if got is None:
                    raise IntegrityError(f"{entry['tag']} lacks its {kind} manifest")
                return got

            bundle = parse_remote_bundle(
                data, entry["digest"], fetch, name=entry["name"], where=f"remote {self.spec.name}"
            )
            need = missing_blobs(reg, bundle)
            fetching.update(need)
            result = PullResult(
                self.spec.name, bundle.digest, tag="", remote_tag=entry["tag"],
                blobs=len(bundle.file_blobs()), blobs_fetched=len(need),
                bytes_total=sum(bundle.file_blobs().values()), bytes_fetched=sum(need.values()),
            )  # fmt: skip
            if need:
                self._download(reg, bundle, need, commit, work)
            try:  # who created it and when, as the remote records it (shown, never trusted)
                created = self._read(f"{META}/created.json", commit, work, MAX_CREATION_RECORD)
            except IntegrityError:
                created = b"\0" * (MAX_CREATION_RECORD + 1)  # too large: parse_creation says so
            creation, creation_note = parse_creation(created, bundle.digest, self.spec.name)
            if creation_note:
                result.notes.append(creation_note)
        store_manifests(reg, bundle)
        imported = import_bundle(
            reg, bundle, entry["version"], actor, remote=self.spec.name, creation=creation
        )
        with self.errors(f"pull {ref}"), self._workdir(reg) as work:
            trust = self.pull_trust(reg, bundle.digest, actor, head, commit, work)
        result.gate_runs, result.signatures = trust.gate_runs, trust.signatures
        result.notes += trust.notes
        result.tag, result.created = imported.tag, imported.created
        if imported.note:
            result.notes.append(imported.note)
        if parsed.channel is not None:
            result.channel = parsed.channel
            result.tracking = f"{self.spec.name}/{parsed.channel}"
            result.tracking_moved = track_channel(
                reg, self.spec.name, bundle.name, parsed.channel, bundle.digest
            )
        result.seconds = time.perf_counter() - t0
        return result

    def pull_trust(
        self, reg: Registry, bundle_digest: str, actor: str, head: str, commit: str, work: Path
    ) -> TrustPulled:
        """Record the attestations and signatures main holds for the bundle, then fetch the
        evidence of the gate runs that came along (from main, else the version's commit)."""
        tree = self._tree(head)
        bundle_hex = hex_of(bundle_digest)

        def loader(path: str, limit: int) -> Any:
            def load() -> bytes | None:
                if tree[path].size > limit:
                    raise IntegrityError(f"hf://{self.repo_id}/{path} is larger than {limit} bytes")
                return self._read(path, head, work, limit)

            return load

        attestations: dict[str, Loader] = {}
        signatures: dict[str, tuple[str | None, Loader]] = {}
        for path in tree:
            folder, _, leaf = path.rpartition("/")
            stem, _, ext = leaf.partition(".")
            if folder == f"{META}/attestations/{bundle_hex}" and ext == "json":
                digest = hex_name(stem)
                if digest is not None:
                    attestations[digest] = loader(path, MAX_ATTESTATION)
            elif folder == f"{META}/signatures/{bundle_hex}" and ext == "sig":
                key_id = key_id_of(stem)
                if key_id is not None:
                    signatures[key_id] = (None, loader(path, MAX_SIGNATURE))

        def public_key(key_id: str) -> bytes | None:
            path = f"{META}/keys/{key_hex(key_id)}.pub"
            return loader(path, MAX_PUBLIC_KEY)() if path in tree else None

        trust = import_trust(
            reg, actor, bundle_digest, self.spec.name, attestations=attestations,
            signatures=signatures, key=public_key,
        )  # fmt: skip
        if trust.gate_runs:
            self._fetch_evidence(reg, bundle_digest, [head, commit], {head: tree}, work, trust)
        return trust

    def _fetch_evidence(
        self,
        reg: Registry,
        bundle_digest: str,
        revs: Sequence[str],  # (`list` here is the method HubRemote.list)
        trees: dict[str, dict[str, Any]],
        work: Path,
        trust: TrustPulled,
    ) -> None:
        """The evidence blobs of the bundle's pulled gate runs that the store lacks, from
        the first of `revs` that holds each (registry/evidence/<hex>.json)."""
        from registry.gate_runs import evidence_blobs

        with reg.db.read() as conn:
            rows = evidence_blobs(conn, bundle_digest, origin=self.spec.name)
        lacking = []
        for digest in dict.fromkeys(d for d, _gate in rows):
            if reg.store.has(digest):
                continue
            path = f"{META}/evidence/{hex_of(digest)}.json"
            for rev in dict.fromkeys(revs):
                if rev not in trees:
                    trees[rev] = self._tree(rev)
                data = self._read(path, rev, work) if path in trees[rev] else None
                if data is not None and sha256_bytes(data) == digest:
                    reg.store.put_bytes(data)
                    break
            else:
                lacking.append(digest)
        if lacking:
            trust.notes.append(
                f"the evidence of {len(lacking)} pulled gate run(s) is not on {self.spec.name}"
                f" (e.g. {short(lacking[0])}); `registry verify --all` will report it missing"
            )

    def _download(
        self, reg: Registry, bundle: BundleBlobs, need: dict[str, int], commit: str, work: Path
    ) -> None:
        """Fetch each missing blob from a repo path that holds it; verify; install."""
        from huggingface_hub import hf_hub_download

        tree = self._tree(commit)
        where: dict[str, list[str]] = {}
        for (kind, rel), path in layout(bundle).items():
            f = next(f for f in bundle.components[kind].manifest.files if f.path == rel)
            if f.digest not in need:
                continue
            # A repo pushed before adapter_config.json was always published keeps the
            # stored file at its usual place: tried second (every byte is re-hashed).
            for candidate in dict.fromkeys((path, PREFIX[kind] + rel)):
                if _holds(tree.get(candidate), f.size):
                    where.setdefault(f.digest, []).append(check_relpath(candidate))
        if lacking := [d for d in need if d not in where]:
            kinds = sorted({k for k, c in bundle.components.items() for f in c.manifest.files
                            if f.digest in lacking})  # fmt: skip
            if kinds == ["base_model"]:
                raise RemoteError(
                    f"{bundle.name}: the base model is not on hf://{self.repo_id} (pushed"
                    " without --include-base) and not in this registry's store",
                    "Pull the bundle from an S3 remote that holds the base, or push it to"
                    " the Hub again with --include-base.",
                )
            raise IntegrityError(
                f"hf://{self.repo_id} lacks {len(lacking)} file(s) of {bundle.name}"
                f" ({', '.join(kinds)})",
                "The repo is incomplete; push the bundle to it again.",
            )
        files_dir = work / "files"
        split_above, piece_size = split_settings(reg)  # stored as a local add stores it

        def one(digest: str) -> None:
            *others, last = where[digest]
            for path in others:
                local = hf_hub_download(self.repo_id, path, revision=commit, local_dir=files_dir)
                with contextlib.suppress(IntegrityError):
                    adopt_file(reg.store, Path(local), digest, need[digest],
                               split_above=split_above, piece_size=piece_size)  # fmt: skip
                    return
            local = hf_hub_download(self.repo_id, last, revision=commit, local_dir=files_dir)
            adopt_file(reg.store, Path(local), digest, need[digest], split_above=split_above,
                       piece_size=piece_size)  # fmt: skip

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, sorted(need, key=lambda d: -need[d])))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _quiet_unless_terminal() -> None:
    """huggingface_hub's own progress bars on a terminal; none when output is captured."""
    if not sys.stderr.isatty():
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _holds(entry: Any, size: int) -> bool:
    return entry is not None and entry.size == size


def _same(entry: Any, content: Any, reg: Registry | None = None) -> bool:
    """Whether a remote tree entry already holds `content` (bytes or a stored Blob)."""
    if entry is None:
        return False
    if isinstance(content, bytes):
        if entry.lfs is not None:
            return entry.lfs.sha256 == hex_of(sha256_bytes(content))
        return entry.size == len(content) and entry.blob_id == git_blob_oid(content)
    digest, size = content.digest, content.size
    if entry.size != size:
        return False
    if entry.lfs is not None:
        return entry.lfs.sha256 == hex_of(digest)
    if reg is None or size > MAX_META:
        return False
    return entry.blob_id == git_blob_oid(reg.store.read_bytes(digest))


def gate_runs(reg: Registry, digest: str) -> list[dict[str, Any]]:
    """The bundle's gate runs, oldest first, as recorded (for registry/gate-runs.json)."""
    from registry.gate_runs import runs_for

    _row, runs = runs_for(reg, f"sha256:{hex_of(digest)}")
    return list(reversed(runs))
