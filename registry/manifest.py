"""Component and bundle manifests: canonical JSON blobs whose digest is their identity.

    component: {"schema", "kind", "files": [{"path", "digest", "size"}], "meta", "source"?}
    bundle:    {"schema", "name", "components": {kind: descriptor}, "parent", "annotations"}

Manifests hold no timestamps, hostnames or absolute paths (those live in the database), so
the same content gives the same digest on every machine. `from_bytes` is the strict parser
used for anything read back from the store or a remote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from registry.digest import Descriptor, canonical_json, check_digest, sha256_bytes
from registry.errors import InvalidInputError
from registry.paths import check_relpath

INT_BOUND = 2**63  # registry.untrusted's (|n| below it), not imported at start-up

COMPONENT_SCHEMA = "registry.component.v1"
BUNDLE_SCHEMA = "registry.bundle.v1"
MAX_FILES = 100_000  # per component: a manifest from a remote is input (docs/design.md)
KINDS = ("base_model", "adapter", "tokenizer", "chat_template", "dataset", "config")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}\Z")  # \Z: "$" would allow a final "\n"
EXTERNAL_RE = re.compile(r"^hf://[A-Za-z0-9][\w.-]*/[\w.-]+@[0-9a-f]{40}\Z", re.ASCII)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        from registry.errors import UsageError

        raise UsageError(
            f"bundle name {name!r} is invalid",
            "Use lowercase letters, digits, '.', '_' or '-' (at most 128, starting with a"
            " letter or digit).",
        )
    return name


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    digest: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.digest, "size": self.size}

    @classmethod
    def from_dict(cls, data: Any) -> FileEntry:
        if not isinstance(data, dict) or set(data) != {"path", "digest", "size"}:
            raise InvalidInputError("a file entry must have exactly path, digest and size")
        desc = Descriptor.from_dict({"digest": data["digest"], "size": data["size"]}, "file")
        return cls(check_relpath(data["path"]), desc.digest, desc.size)


@dataclass(frozen=True)
class ComponentManifest:
    kind: str
    files: tuple[FileEntry, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # hf://org/name@<commit> for an external base model

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInputError(f"unknown component kind {self.kind!r}")
        if len(self.files) > MAX_FILES:
            raise InvalidInputError(
                f"component lists {len(self.files)} files (at most {MAX_FILES})"
            )
        paths = [f.path for f in self.files]
        if paths != sorted(paths) or len(set(paths)) != len(paths):
            raise InvalidInputError("component files must be sorted by path and unique")
        dirs = {str(parent) for p in paths for parent in PurePosixPath(p).parents}
        if clash := sorted(dirs & set(paths)):
            raise InvalidInputError(f"component path {clash[0]} is both a file and a directory")
        if self.source is not None and not EXTERNAL_RE.match(self.source):
            raise InvalidInputError(f"external source {self.source!r} is not hf://org/name@<sha>")

    @property
    def external(self) -> bool:
        return self.source is not None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": COMPONENT_SCHEMA,
            "kind": self.kind,
            "files": [f.to_dict() for f in self.files],
            "meta": self.meta,
        }
        if self.source is not None:
            d["source"] = self.source
        return d

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def digest(self) -> str:
        return sha256_bytes(self.to_bytes())

    @classmethod
    def from_dict(cls, data: Any) -> ComponentManifest:
        if not isinstance(data, dict):
            raise InvalidInputError("component manifest must be a JSON object")
        if data.get("schema") != COMPONENT_SCHEMA:
            raise InvalidInputError(f"unsupported component schema {data.get('schema')!r}")
        allowed = {"schema", "kind", "files", "meta", "source"}
        if extra := set(data) - allowed:
            raise InvalidInputError(f"unknown component manifest keys {sorted(extra)}")
        files = data.get("files")
        meta = data.get("meta", {})
        if not isinstance(files, list) or not isinstance(meta, dict):
            raise InvalidInputError("component manifest needs a files list and a meta object")
        if len(files) > MAX_FILES:  # before building an entry per item (seconds for 500k)
            raise InvalidInputError(f"component lists {len(files)} files (at most {MAX_FILES})")
        return cls(
            kind=data.get("kind"),  # type: ignore[arg-type]
            files=tuple(FileEntry.from_dict(f) for f in files),
            meta=meta,
            source=data.get("source"),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ComponentManifest:
        return cls.from_dict(_loads(data, "component manifest"))


@dataclass(frozen=True)
class BundleManifest:
    name: str
    components: dict[str, Descriptor]
    parent: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name)
        if unknown := set(self.components) - set(KINDS):
            raise InvalidInputError(f"unknown component kinds {sorted(unknown)}")
        if self.parent is not None:
            check_digest(self.parent, "parent")
        for k, v in self.annotations.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise InvalidInputError("annotations must map strings to strings")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": BUNDLE_SCHEMA,
            "name": self.name,
            "components": {k: d.to_dict() for k, d in sorted(self.components.items())},
            "parent": self.parent,
            "annotations": dict(sorted(self.annotations.items())),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def digest(self) -> str:
        return sha256_bytes(self.to_bytes())

    @classmethod
    def from_dict(cls, data: Any) -> BundleManifest:
        if not isinstance(data, dict):
            raise InvalidInputError("bundle manifest must be a JSON object")
        if data.get("schema") != BUNDLE_SCHEMA:
            raise InvalidInputError(f"unsupported bundle schema {data.get('schema')!r}")
        if set(data) != {"schema", "name", "components", "parent", "annotations"}:
            raise InvalidInputError(
                "bundle manifest keys must be exactly: schema, name,"
                " components, parent, annotations"
            )
        comps = data["components"]
        if not isinstance(comps, dict) or not isinstance(data["annotations"], dict):
            raise InvalidInputError("bundle components and annotations must be objects")
        return cls(
            name=data["name"],
            components={k: _descriptor(v, f"component {k}") for k, v in comps.items()},
            parent=data["parent"],
            annotations=data["annotations"],
        )

    @classmethod
    def _validated(
        cls,
        name: str,
        components: dict[str, Descriptor],
        parent: str | None,
        annotations: dict[str, str],
    ) -> BundleManifest:
        """A manifest of fields `_canonical_bundle` has already checked as __post_init__
        would (the name's form, known kinds, the parent's digest form, string annotations),
        built without checking them again: a third of the fast path's cost."""
        obj = object.__new__(cls)
        for key, value in (("name", name), ("components", components), ("parent", parent),
                           ("annotations", annotations)):  # fmt: skip
            object.__setattr__(obj, key, value)
        return obj

    @classmethod
    def from_bytes(cls, data: bytes) -> BundleManifest:
        fast = _canonical_bundle(data)
        if fast is not None:
            return fast
        return cls.from_dict(_loads(data, "bundle manifest"))


# The canonical bytes of a bundle manifest whose strings need no escape, as a regular
# expression: what every bundle manifest this registry writes looks like, read 10,000
# times by one `verify --all` (issue 17). A JSON string with no backslash and no control
# character is canonical as it stands (canonical_json escapes only '"', '\\' and
# characters below U+0020) and means exactly its characters.
_STR = r'"[^"\\\x00-\x1f]*"'
_DESC = r'"[a-z_]+":\{"digest":"sha256:[0-9a-f]{64}","size":(?:0|[1-9][0-9]{0,18})\}'
# the form in three parts, matched apart so that a components text already seen (10,000
# bundles share one) is looked up instead of matched again; the whole form is
# _HEAD + _MID + _COMPONENT_LIST + _TAIL, so what the three parts accept is exactly what
# the form accepts
_HEAD = re.compile(rf'\{{"annotations":\{{((?:{_STR}:{_STR}(?:,{_STR}:{_STR})*)?)\}}')
_MID = '},"components":{'
_COMPONENT_LIST = re.compile(rf"(?:{_DESC}(?:,{_DESC})*)?")
_TAIL = re.compile(
    r'\},"name":"([a-z0-9][a-z0-9._-]{0,127})"'
    r',"parent":(?:null|"(sha256:[0-9a-f]{64})")'
    r',"schema":"registry\.bundle\.v1"\}'
)
_ANNOTATION = re.compile(r'"([^"\\\x00-\x1f]*)":"([^"\\\x00-\x1f]*)"')
_COMPONENT = re.compile(r'"([a-z_]+)":\{"digest":"(sha256:[0-9a-f]{64})","size":([0-9]+)\}')
_CANONICAL_MAX = 1 << 20  # larger manifests take the strict path


def _canonical_bundle(data: bytes) -> BundleManifest | None:
    """The bundle manifest `data` holds if it has the form above, else None: then the strict
    path (load_json, the canonical-form check, from_dict) reads it and words any refusal.

    Equal to what the strict path returns for the same bytes, and accepts nothing it
    refuses (tests/registry/test_fast_paths.py checks both by fuzzing): the expressions fix
    the keys, their order, every type and the depth, and allow no whitespace or escape;
    UTF-8 is checked by decoding, string lengths by the size bound (1 MiB, far below
    load_json's 10,000,000 characters); what is left is checked here: keys sorted and
    unique, known component kinds, sizes below 2**63.

    The parts are cut at the first _MID and the last `},"name":"`: no string of the form
    holds a quote, so in a text of the form neither can occur anywhere else (cut elsewhere,
    a part fails to match, and the strict path reads the text: slower, never wrong)."""
    if len(data) > _CANONICAL_MAX:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    i, j = text.find(_MID), text.rfind('},"name":"')
    if i < 0 or j < i + len(_MID):
        return None
    head, tail = _HEAD.fullmatch(text, 0, i + 1), _TAIL.fullmatch(text, j)
    if head is None or tail is None:
        return None
    components = text[i + len(_MID) : j]
    descs = _COMPONENT_SETS.get(components)
    if descs is None:
        descs = _components(components) if _COMPONENT_LIST.fullmatch(components) else None
        if descs is None:
            return None
        if len(_COMPONENT_SETS) >= _DESCRIPTORS_MAX:
            _COMPONENT_SETS.clear()
        _COMPONENT_SETS[components] = descs
    ann = _ANNOTATION.findall(head[1])
    if len(ann) > 1 and not _increasing([k for k, _ in ann]):
        return None
    name, parent = tail.groups()
    # the expressions fixed the name's form (NAME_RE) and the parent's (a digest), and
    # _components the kinds: what BundleManifest.__post_init__ would check again
    return BundleManifest._validated(name, dict(descs), parent, dict(ann))


# components text (as matched above) -> its descriptors: a pure function of the text,
# memoized because bundles share their components (10,000 bundles, one entry)
_COMPONENT_SETS: dict[str, dict[str, Descriptor]] = {}


def _components(text: str) -> dict[str, Descriptor] | None:
    """The descriptors of a components object matched by _COMPONENT_LIST; None unless
    its kinds are known, sorted and unique and its sizes below 2**63."""
    comps = _COMPONENT.findall(text)
    if not _increasing([k for k, _, _ in comps]):
        return None
    descs: dict[str, Descriptor] = {}
    for kind, digest, size in comps:
        n = int(size)
        if kind not in KINDS or n >= INT_BOUND:
            return None
        hit = _DESCRIPTORS.get((digest, n))
        descs[kind] = hit if hit is not None else _remember(Descriptor(digest, n))
    return descs


def _increasing(keys: list[str]) -> bool:
    """Sorted and unique, as canonical_json writes an object's keys."""
    return all(a < b for a, b in zip(keys, keys[1:], strict=False))


_DESCRIPTORS: dict[tuple[str, int], Descriptor] = {}
_DESCRIPTORS_MAX = 4096


def _descriptor(data: Any, what: str) -> Descriptor:
    """Descriptor.from_dict, memoized for the exact (str digest, int size) pairs it accepted:
    10,000 bundle manifests naming the same six components validate six descriptors."""
    if type(data) is dict and len(data) == 2:
        digest, size = data.get("digest"), data.get("size")
        if type(digest) is str and type(size) is int:  # not bool, not an unhashable value
            if (hit := _DESCRIPTORS.get((digest, size))) is not None:
                return hit
            return _remember(Descriptor.from_dict(data, what))
    return Descriptor.from_dict(data, what)


def _remember(desc: Descriptor) -> Descriptor:
    if len(_DESCRIPTORS) >= _DESCRIPTORS_MAX:
        _DESCRIPTORS.clear()
    _DESCRIPTORS[(desc.digest, desc.size)] = desc
    return desc


def _loads(data: bytes, what: str) -> Any:
    from registry.untrusted import MalformedError, load_json

    try:
        obj = load_json(data, what)
    except MalformedError as exc:
        raise InvalidInputError(f"{what} is not valid UTF-8 JSON: {exc}") from None
    if canonical_json(obj) != data:
        raise InvalidInputError(f"{what} is not in canonical JSON form")
    return obj
