"""The adapter-compat gate: does the LoRA adapter fit the bundle's base model?

Everything is read from safetensors headers (names, dtypes, shapes), never tensors: the
adapter's `adapter_model.safetensors` and the base's `model.safetensors` or the shards
named by `model.safetensors.index.json`. An external base (`hf://org/name@commit`) is
read from the local Hugging Face cache when its snapshot is there and its files match the
pinned digests; otherwise only its identity is compared and the evidence says the shapes
were not checked.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gates.base import Gate, GateContext, GateResult, require_component
from registry.errors import GateError, RegistryError
from registry.ingest.tensors import TensorInfo, read_header

PEFT_PREFIX = "base_model.model."
LORA_PART = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector)(?:\.[^.]+)?(?:\.weight)?\Z"
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+\Z", re.ASCII)
CACHE_PATH = re.compile(
    r"models--(?P<org>[^/\\]+?)--(?P<name>[^/\\]+)[/\\]snapshots[/\\]"
    r"(?P<commit>[0-9a-f]{40})"
)
COMMIT = re.compile(r"^[0-9a-f]{40}\Z")
INDEX = "model.safetensors.index.json"
ALL_LINEAR = "all-linear"  # peft: every linear layer but the output one
OUTPUT_LAYERS = ("lm_head", "embed_out")


@dataclass
class BaseWeights:
    """The base model's tensors by name (empty when they could not be read), and how."""

    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    checked: bool = False
    where: str = ""
    note: str = ""


def weight_files(root: Path) -> list[str]:
    """The safetensors files of a model directory: the index's shards, else every one."""
    index = root / INDEX
    if index.is_file():
        from registry.untrusted import load_json

        try:
            weight_map = load_json(index.read_bytes(), f"base {INDEX}")["weight_map"]
        except (ValueError, KeyError, TypeError, AttributeError, RegistryError) as exc:
            raise GateError(f"base {INDEX} is unreadable: {exc}") from None
        return sorted({str(v) for v in weight_map.values()})
    return sorted(p.name for p in root.glob("*.safetensors"))


def read_tensors(root: Path, files: Iterable[str]) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for rel in files:
        path = root / rel
        if not path.is_file():
            raise GateError(f"base weight file {rel} is missing from {root}")
        try:
            tensors.update(read_header(path).tensors)
        except RegistryError as exc:
            raise GateError(f"base weight file {rel}: {exc}") from None
    return tensors


def _hub_cache() -> Path:
    from registry.ingest.base_model import hub_cache_dir

    return hub_cache_dir()


def cached_snapshot(repo: str, revision: str | None) -> Path | None:
    """The local HF cache snapshot of repo at a commit (or a cached branch/tag), if any."""
    repo_dir = _hub_cache() / f"models--{repo.replace('/', '--')}"
    rev = revision or "main"
    if not COMMIT.match(rev):
        ref = repo_dir / "refs" / rev
        rev = ref.read_text().strip() if ref.is_file() else ""
    snap = repo_dir / "snapshots" / rev
    return snap if rev and snap.is_dir() else None


def file_sha256(path: Path) -> str:
    """sha256 of a file; an HF cache blob is named by its sha256 already (LFS files)."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
        return "sha256:" + real.name
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def compare_weights(
    pinned: dict[str, tuple[str, int]], root: Path, limit_bytes: int
) -> tuple[str, str]:
    """Do the safetensors files under `root` equal the pinned {path: (digest, size)}?

    Returns (status, detail) with status match, mismatch or unverifiable.
    """
    try:
        local = weight_files(root)
    except GateError as exc:
        return "unverifiable", str(exc)
    if sorted(pinned) != local:
        return "mismatch", f"weight files differ: {local} vs {sorted(pinned)}"
    for rel in local:
        size = (root / rel).stat().st_size
        if size != pinned[rel][1]:
            return "mismatch", f"{rel} is {size} bytes, the bundle's is {pinned[rel][1]}"
    cached = all(
        Path(os.path.realpath(root / rel)).parent.name == "blobs" for rel in local
    )  # an HF cache names blobs by sha256: no hashing needed
    if not cached and sum(s for _, s in pinned.values()) > limit_bytes:
        return "unverifiable", f"weights are larger than {limit_bytes >> 20} MB to hash"
    for rel in local:
        if file_sha256(root / rel) != pinned[rel][0]:
            return "mismatch", f"{rel} has different content than the bundle's base"
    return "match", f"weights under {root} equal the bundle's base"


class AdapterCompatGate(Gate):
    """Check that the bundle's LoRA adapter fits its base model, from headers alone.

    Checks: every adapter tensor's module exists in the base; lora_A is (r, in_features)
    and lora_B is (out_features, r) for the base layer (rank_pattern and fan_in_fan_out
    honoured; embeddings and DoRA magnitudes too); the adapter's base_model_name_or_path
    names the bundle's base (hub id, cache snapshot or a local directory whose weights
    equal it); r and lora_alpha are positive and target modules are listed; the modules
    the tensors adapt are the ones `target_modules` selects (list suffixes, a regex or
    all-linear, as peft reads them), no more and no fewer. Records scaling, the adapter's
    parameter count and its share of the base.

    Policy keys: `require_base_identity` (false: an identity that cannot be verified, e.g.
    a hub id not in the local cache, is reported but passes; true: it fails),
    `identity_hash_limit_mb` (4096.0: the most base weights hashed to compare a local
    directory), `max_examples` (20: problems listed in the evidence).
    """

    name = "adapter-compat"
    version = "1"
    defaults = {
        "require_base_identity": False,
        "identity_hash_limit_mb": 4096.0,
        "max_examples": 20,
    }
    description = "LoRA adapter modules and shapes fit the base; base identity matches"

    def run(self, ctx: GateContext) -> GateResult:
        root = require_component(ctx, "adapter")
        meta = ctx.meta("adapter")
        if meta.get("peft_type") not in ("LORA",):
            raise GateError(
                f"adapter-compat checks LoRA adapters; this one is {meta.get('peft_type')}"
            )
        cfg = _read_json(root / "adapter_config.json")
        weights = root / "adapter_model.safetensors"
        if not weights.is_file():
            raise GateError("the adapter has no adapter_model.safetensors to read shapes from")
        adapter = read_header(weights)
        base = self._base(ctx)
        p = ctx.params
        cap = int(p["max_examples"])
        failures: list[str] = []
        r, alpha = meta.get("r"), meta.get("lora_alpha")
        targets = meta.get("target_modules")
        if not _positive(r):
            failures.append(f"r must be positive, got {r!r}")
        if not _positive(alpha):
            failures.append(f"lora_alpha must be positive, got {alpha!r}")
        if not targets:
            failures.append("the adapter lists no target_modules")
        modules, problems, unchecked = self._shapes(adapter.tensors, base, cfg, r)
        if not modules:
            failures.append("the adapter holds no LoRA tensors")
        coverage = target_coverage(targets, cfg.get("exclude_modules"), modules, base)
        if targets and modules and (coverage["not_listed"] or coverage["not_adapted"]):
            failures.append(_coverage_failure(coverage))
        elif coverage.get("error"):
            failures.append(coverage["error"])
        missing = [x for x in problems if x["problem"] == "module not in base"]
        bad = [x for x in problems if x["problem"] != "module not in base"]
        if missing:
            failures.append(
                f"{len(missing)} adapter tensor(s) target modules the base lacks (first:"
                f" {missing[0]['tensor']} -> {missing[0]['base_tensor']})"
            )
        if bad:
            x = bad[0]
            failures.append(
                f"{len(bad)} adapter tensor(s) do not fit the base (first: {x['tensor']}"
                f" is {x['found']}, expected {x['expected']}: {x['problem']})"
            )
        ident = self._identity(ctx, cfg, int(float(p["identity_hash_limit_mb"]) * 2**20))
        if ident["status"] == "mismatch":
            failures.append(
                f"the adapter was trained on {ident['adapter']!r}, but the bundle's base is"
                f" {ident['bundle']} ({ident['detail']})"
            )
        elif ident["status"] == "unverifiable" and p["require_base_identity"]:
            failures.append(f"the base model identity cannot be verified: {ident['detail']}")
        adapter_params = adapter.parameters
        base_params = (
            sum(t.numel for t in base.tensors.values())
            if base.tensors
            else (ctx.meta("base_model").get("weights") or {}).get("parameters")
        )
        metrics = {
            "r": r,
            "lora_alpha": alpha,
            "scaling": meta.get("scaling"),
            "adapter_parameters": adapter_params,
            "base_parameters": base_params,
            "adapter_share": round(adapter_params / base_params, 8) if base_params else None,
            "modules": len(modules),
            "shapes_checked": base.checked,
            "problems": len(problems),
            "identity": ident["status"],
            "targets_match": not (coverage["not_listed"] or coverage["not_adapted"]),
        }
        evidence = {
            "base": {
                "where": base.where,
                "shapes_checked": base.checked,
                "note": base.note,
                "tensors": len(base.tensors),
            },
            "identity": ident,
            "target_modules": coverage["target_modules"],
            "adapted_module_names": coverage["adapted"],
            "target_coverage": coverage,
            "problems": problems[:cap],
            "unchecked": unchecked[:cap],
            "modules": modules[:cap],
            "use_rslora": meta.get("use_rslora"),
            "use_dora": meta.get("use_dora"),
        }
        shapes = "shapes checked" if base.checked else f"shapes NOT checked ({base.note})"
        summary = (
            f"{len(modules)} LoRA modules fit the base ({shapes}); r={r}, alpha={alpha},"
            f" {adapter_params} parameters; base identity {ident['status']}"
        )
        return GateResult.check(failures, metrics, {k: p[k] for k in p}, evidence, summary)

    # -- the base's tensors ---------------------------------------------------------------------

    def _base(self, ctx: GateContext) -> BaseWeights:
        comp = ctx.bundle["components"].get("base_model")
        if comp is None:
            raise GateError("the bundle has no base_model component")
        source = comp.get("source")
        if not source:
            root = require_component(ctx, "base_model")
            files = weight_files(root)
            if not files:
                raise GateError("the base model has no safetensors weights to read shapes from")
            return BaseWeights(
                read_tensors(root, files), True, f"bundle base ({len(files)} file(s))"
            )
        meta = comp["meta"]
        snap = cached_snapshot(meta.get("repo_id", ""), meta.get("revision"))
        if snap is None:
            return BaseWeights(
                where=source, note=f"{source} is external and not in the local Hugging Face cache"
            )
        pinned = _pinned(comp)
        status, detail = compare_weights(pinned, snap, limit_bytes=1 << 62)
        if status != "match":
            return BaseWeights(where=str(snap), note=f"cached snapshot not used: {detail}")
        return BaseWeights(
            read_tensors(snap, sorted(pinned)), True, f"{source} from the local cache"
        )

    # -- shapes ------------------------------------------------------------------------------------

    def _shapes(
        self, tensors: dict[str, TensorInfo], base: BaseWeights, cfg: dict[str, Any], r: Any
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Adapted modules, problems and tensors that could not be checked."""
        parts: dict[str, dict[str, TensorInfo]] = {}
        others: list[TensorInfo] = []
        for name, info in sorted(tensors.items()):
            m = LORA_PART.match(name)
            if m:
                module = m["module"].removeprefix(PEFT_PREFIX)
                parts.setdefault(module, {})[m["part"]] = info
            else:
                others.append(info)
        modules: list[dict[str, Any]] = []
        problems: list[dict[str, Any]] = []
        unchecked: list[dict[str, Any]] = []
        fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
        for module, got in parts.items():
            rank = _pattern_value(module, cfg.get("rank_pattern") or {}, r)
            entry = {"module": module, "r": rank}
            modules.append(entry)
            if not base.checked:
                continue
            base_name = _resolve(base.tensors, module + ".weight")
            if base_name is None:
                for part, info in got.items():
                    problems.append(
                        {
                            "tensor": info.name,
                            "module": module,
                            "base_tensor": module + ".weight",
                            "problem": "module not in base",
                            "found": list(info.shape),
                            "part": part,
                        }
                    )
                continue
            shape = base.tensors[base_name].shape
            entry["base_tensor"] = base_name
            entry["base_shape"] = list(shape)
            expected = _expected_shapes(shape, rank, fan_in_fan_out, got)
            if expected is None:
                unchecked.append(
                    {
                        "module": module,
                        "base_shape": list(shape),
                        "reason": "not a 2-d weight (conv?)",
                    }
                )
                continue
            for part, want in expected.items():
                found = got.get(part)
                if found is None:
                    if part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
                        problems.append(
                            {
                                "tensor": f"{module}.{part}",
                                "module": module,
                                "base_tensor": base_name,
                                "problem": "tensor missing",
                                "expected": list(want),
                                "found": None,
                            }
                        )
                    continue
                if tuple(found.shape) != tuple(want):
                    problems.append(
                        {
                            "tensor": found.name,
                            "module": module,
                            "base_tensor": base_name,
                            "base_shape": list(shape),
                            "expected": list(want),
                            "found": list(found.shape),
                            "problem": _why(part, want, found.shape, rank),
                        }
                    )
        for info in others:  # modules_to_save / trainable tokens: full copies of base tensors
            if not base.checked:
                continue
            name = info.name.removeprefix(PEFT_PREFIX)
            name = re.sub(r"\.modules_to_save(\.[^.]+)?\.", ".", name)
            base_name = _resolve(base.tensors, name)
            if base_name is None:
                problems.append(
                    {
                        "tensor": info.name,
                        "module": name,
                        "base_tensor": name,
                        "problem": "module not in base",
                        "found": list(info.shape),
                    }
                )
            elif tuple(base.tensors[base_name].shape) != tuple(info.shape):
                problems.append(
                    {
                        "tensor": info.name,
                        "module": name,
                        "base_tensor": base_name,
                        "expected": list(base.tensors[base_name].shape),
                        "found": list(info.shape),
                        "problem": "a saved module's shape differs from the base",
                    }
                )
        return modules, problems, unchecked

    # -- identity ----------------------------------------------------------------------------------

    def _identity(self, ctx: GateContext, cfg: dict[str, Any], limit: int) -> dict[str, Any]:
        comp = ctx.bundle["components"]["base_model"]
        meta = comp["meta"]
        repo, commit = meta.get("repo_id"), meta.get("revision")
        bundle = comp.get("source") or "the bundle's local base"
        name = cfg.get("base_model_name_or_path")
        rev = cfg.get("revision")
        out: dict[str, Any] = {"adapter": name, "adapter_revision": rev, "bundle": bundle}

        def done(status: str, detail: str) -> dict[str, Any]:
            return {**out, "status": status, "detail": detail}

        if not isinstance(name, str) or not name.strip():
            return done("unverifiable", "the adapter config names no base model")
        cache = CACHE_PATH.search(name)
        path = Path(name).expanduser()
        local = not cache and path.is_dir()
        hub = None if (cache or local) else (name if HUB_ID.match(name) else None)
        if cache:
            hub, rev = f"{cache['org']}/{cache['name']}", cache["commit"]
        pinned = _pinned(comp)
        if repo and hub:
            if hub.lower() != repo.lower():
                return done("mismatch", f"{hub} is not {repo}")
            if isinstance(rev, str) and COMMIT.match(rev) and rev != commit:
                return done("mismatch", f"revision {rev} is not the pinned {commit}")
            how = "pinned commit" if rev == commit else "name (revision not pinned by the adapter)"
            return done("match", f"same hub model, by {how}")
        if local:
            if not pinned:
                return done("unverifiable", "the bundle's base lists no safetensors weights")
            return done(*compare_weights(pinned, path, limit))
        if hub:
            snap = cached_snapshot(hub, rev if isinstance(rev, str) else None)
            if snap is None:
                return done("unverifiable", f"{hub} is not in the local Hugging Face cache")
            return done(*compare_weights(pinned, snap, limit))
        return done("unverifiable", f"{name!r} is neither a hub id nor a directory here")


def _suffix(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def _selects(spec: Any, module: str) -> bool:
    """peft's rule: a list entry equal to the module name or to a dotted suffix of it; a
    string as a regular expression matching the whole name."""
    if isinstance(spec, str):
        return re.fullmatch(spec, module) is not None
    return any(module == t or module.endswith(f".{t}") for t in spec or ())


def target_coverage(
    targets: Any, exclude: Any, modules: list[dict[str, Any]], base: BaseWeights
) -> dict[str, Any]:
    """Module names (last component) the tensors adapt against those target_modules
    selects: `not_listed` are adapted but not selected, `not_adapted` selected but without
    tensors (for a regex: base layers it matches; not checked for all-linear or when the
    base's shapes were not read)."""
    adapted = sorted({m["module"] for m in modules})
    out: dict[str, Any] = {
        "target_modules": [targets] if isinstance(targets, str) else list(targets or []),
        "adapted": sorted({_suffix(m) for m in adapted}),
        "not_listed": [],
        "not_adapted": [],
    }
    if not targets:
        return out
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        out["not_listed"] = sorted({_suffix(m) for m in adapted if _suffix(m) in OUTPUT_LAYERS})
        out["note"] = "all-linear: only checked that no tensor adapts the output layer"
        return out
    try:
        out["not_listed"] = sorted({_suffix(m) for m in adapted if not _selects(targets, m)})
        excluded = [m for m in adapted if exclude and _selects(exclude, m)]
    except re.error as exc:
        out["error"] = f"target_modules {targets!r} is not a valid regular expression: {exc}"
        return out
    if isinstance(targets, list):
        out["not_adapted"] = sorted(
            t for t in targets if not any(_selects([t], m) for m in adapted)
        )
    elif base.checked:
        layers = {
            name.removesuffix(".weight")
            for name, info in base.tensors.items()
            if name.endswith(".weight") and len(info.shape) == 2
        }
        wanted = {
            _suffix(m)
            for m in layers
            if re.fullmatch(targets, m) and not (exclude and _selects(exclude, m))
        }
        out["not_adapted"] = sorted(wanted - set(out["adapted"]))
    else:
        out["note"] = "the base's layers were not read: modules the regex selects not checked"
    if excluded:
        out["adapted_but_excluded"] = sorted({_suffix(m) for m in excluded})
    return out


def _coverage_failure(c: dict[str, Any]) -> str:
    parts = [f"tensors adapt {c['not_listed']}, not listed"] if c["not_listed"] else []
    if c["not_adapted"]:
        parts.append(f"no tensor adapts {c['not_adapted']}")
    return (
        f"target_modules {c['target_modules']} does not match the modules the tensors adapt"
        f" {c['adapted']} ({'; '.join(parts)})"
    )


def _read_json(path: Path) -> dict[str, Any]:
    from registry.untrusted import load_json

    try:
        data = load_json(path.read_bytes(), path.name)
    except (OSError, RegistryError) as exc:
        raise GateError(f"{path.name} is unreadable: {exc}") from None
    return data if isinstance(data, dict) else {}


def _pinned(comp: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {
        f["path"]: (f["digest"], f["size"])
        for f in comp["files"]
        if f["path"].endswith(".safetensors")
    }


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x > 0


def _pattern_value(module: str, patterns: dict[str, Any], default: Any) -> Any:
    """peft's rank_pattern/alpha_pattern: a key matches a module name's dotted suffix."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def _resolve(tensors: dict[str, TensorInfo], name: str) -> str | None:
    """The base tensor for an adapter module name, allowing for a model/transformer prefix."""
    if name in tensors:
        return name
    rest = name.partition(".")[2]
    for candidate in (rest, f"model.{name}", f"transformer.{name}"):
        if candidate and candidate in tensors:
            return candidate
    return None


def _expected_shapes(
    shape: tuple[int, ...], r: Any, fan_in_fan_out: bool, got: dict[str, TensorInfo]
) -> dict[str, tuple[int, ...]] | None:
    if len(shape) != 2 or not isinstance(r, int):
        return None
    if "lora_embedding_A" in got or "lora_embedding_B" in got:
        num, dim = shape
        return {"lora_embedding_A": (r, num), "lora_embedding_B": (dim, r)}
    out_f, in_f = (shape[1], shape[0]) if fan_in_fan_out else shape
    return {"lora_A": (r, in_f), "lora_B": (out_f, r), "lora_magnitude_vector": (out_f,)}


def _why(part: str, want: tuple[int, ...], found: tuple[int, ...], r: Any) -> str:
    if len(found) != len(want):
        return "wrong number of dimensions"
    if part in ("lora_A", "lora_embedding_A"):
        if found[0] != want[0]:
            return f"rank {found[0]} is not r={r}"
        return f"in_features {found[1]} is not the base layer's {want[1]}"
    if part in ("lora_B", "lora_embedding_B"):
        if found[1] != want[1]:
            return f"rank {found[1]} is not r={r}"
        return f"out_features {found[0]} is not the base layer's {want[0]}"
    return f"size {found[0]} is not the base layer's {want[0]}"
