"""Policy files: which gates each channel requires, and each gate's thresholds.

The format, its digest, the channel rules (who may move what, `after`, trusted gate
signers) and the policy in force live here, in the foundation: promotion, rollback and
`audit verify` read them. Whether gate names and their parameters are right is the gate
layer's knowledge: `parse` takes it as a `GateSchema` (gates.policy passes the installed
gates), and without one keeps gate sections as written (a policy already checked when it
was set, read back from the store).

    [channels.production]
    require = ["dataset-audit", "target-eval"]
    after = "staging"            # must have been in staging first
    actors = ["alice", "bob"]    # who may move this channel (default: anyone)
    gate_signers = ["keys/ci.pub"]  # pulled gate runs signed by these keys count here

    [admin]
    actors = ["alice"]           # who may `policy set` and force a move (default: anyone)

    [gates.target-eval]
    eval_set = "evals/target.jsonl"
    min_delta = 0.05

`actors` entries are authenticated names (docs/design.md, "Trust"): a PostgreSQL role in
team mode, an operating-system user locally, or a signing key, named by its identity
(`key:<16 hex>`) or by a public key file (`keys/alice.pub`). Key files, like eval sets,
are hashed into the policy digest and stored with it.

Paths are relative to the policy file. Every key has a default declared by its gate; an
unknown key, channel key or gate name is an error. Keys named `eval_set` / `eval_sets`
(or ending in `_file` / `_files`) name files: they are read, hashed and stored with the
policy, and the policy digest covers them, so editing an eval set is a new policy.

The policy digest is the sha256 of the canonical JSON
`{"schema": "registry.policy.v1", "policy": <digest of the TOML bytes>, "files": {path: digest}}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from registry import locks
from registry.digest import canonical_json, sha256_bytes
from registry.errors import PolicyError, UsageError
from registry.paths import check_relpath, resolve_inside
from registry.refs import check_channel

if TYPE_CHECKING:
    from registry.repo import Registry

SCHEMA = "registry.policy.v1"
CHANNEL_KEYS = {"require", "after", "actors", "gate_signers"}
ADMIN_KEYS = {"actors"}
KEY_FILE_SUFFIXES = (".pub", ".pem")


class GateSchema(Protocol):
    """What the gate layer knows about gates, as policy parsing needs it."""

    def names(self) -> list[str]: ...  # every installed gate

    def defaults(self, gate: str) -> dict[str, Any]: ...  # its keys and default values

    def check(self, gate: str, params: dict[str, Any]) -> None: ...  # raise PolicyError


@dataclass
class ChannelPolicy:
    name: str
    require: list[str] = field(default_factory=list)
    after: str | None = None
    actors: list[str] | None = None
    gate_signers: list[str] = field(default_factory=list)


def is_key_file(entry: str) -> bool:
    return entry.endswith(KEY_FILE_SUFFIXES)


@dataclass
class Policy:
    text: str
    channels: dict[str, ChannelPolicy]
    gates: dict[str, dict[str, Any]]  # only the sections the file has, as written
    files: dict[str, str]  # relpath -> digest
    root: Path | None = None  # directory of the policy file; None when read from the store
    blob_path: Any = None  # callable(digest) -> Path, when read from the store
    admin: list[str] | None = None  # [admin] actors: who may set the policy and force moves
    schema: GateSchema | None = None  # the gates it was checked against (None: unchecked)

    @property
    def toml_digest(self) -> str:
        return sha256_bytes(self.text.encode("utf-8"))

    def manifest(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "policy": self.toml_digest,
            "files": dict(sorted(self.files.items())),
        }

    @property
    def digest(self) -> str:
        return sha256_bytes(canonical_json(self.manifest()))

    def params(self, gate: str) -> dict[str, Any]:
        """A gate's parameters: its declared defaults, overridden by the policy."""
        if self.schema is None:
            raise PolicyError(f"the policy was read without its gates, so {gate} has no defaults")
        return {**self.schema.defaults(gate), **self.gates.get(gate, {})}

    def file(self, relpath: str) -> Path:
        """A file the policy names, from disk or from the store (verified by digest)."""
        if relpath not in self.files:
            raise PolicyError(f"{relpath} is not a file named by the policy")
        if self.root is not None:
            return confined(self.root, relpath)
        return self.blob_path(self.files[relpath])

    def channel(self, name: str) -> ChannelPolicy:
        if name not in self.channels:
            known = ", ".join(sorted(self.channels)) or "none"
            raise PolicyError(
                f"channel {name!r} is not in the policy (channels: {known})",
                "Add [channels.NAME] to the policy and `registry policy set` it.",
            )
        return self.channels[name]

    def key(self, entry: str) -> Any:
        """The public key a key-file entry names (registry.keys.PublicKey)."""
        from registry.keys import public_from_pem

        try:
            data = self.file(entry).read_bytes()
        except OSError as exc:
            raise PolicyError(f"cannot read key file {entry}: {exc.strerror or exc}") from None
        try:
            return public_from_pem(data, f"policy key file {entry}")
        except UsageError as exc:
            raise PolicyError(str(exc)) from None

    def principals(self, entries: list[str]) -> set[str]:
        """Authenticated names the entries stand for (key files become key identities)."""
        return {self.key(e).id if is_key_file(e) else e for e in entries}

    def allowed(self, channel: str) -> set[str] | None:
        """Who may move `channel` (None: anyone)."""
        actors = self.channel(channel).actors
        return None if actors is None else self.principals(actors)

    def admins(self) -> set[str] | None:
        """Who may set the policy and force a move (None: anyone)."""
        return None if self.admin is None else self.principals(self.admin)

    def gate_signer_keys(self, channel: str) -> dict[str, Any]:
        """key id -> PublicKey of the keys whose pulled gate runs count for `channel`."""
        keys = [self.key(e) for e in self.channel(channel).gate_signers]
        return {k.id: k for k in keys}

    def required_gates(self) -> list[str]:
        """Every gate any channel requires, in the order first named."""
        out: list[str] = []
        for ch in self.channels.values():
            out += [g for g in ch.require if g not in out]
        return out


def _is_file_key(key: str) -> bool:
    return key in ("eval_set", "eval_sets") or key.endswith(("_file", "_files"))


MAX_POLICY_BYTES = 1_000_000
MAX_TIMEOUT_S = 86_400.0  # a day: any longer is no limit at all
RATE_SUFFIXES = ("_rate", "_threshold", "_agreement")


def _check_range(gate: str, key: str, value: Any, default: Any) -> None:
    """Ranges every gate's numbers share, by the key's name and its default's type:
    numbers finite; timeouts (`*_s`, `*timeout*`) positive and at most a day; rates,
    similarity thresholds and agreements in [0, 1]; integer counts non-negative, and
    positive where the default is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    where = f"[gates.{gate}] {key}"
    if not math.isfinite(value):
        raise PolicyError(f"{where} must be a finite number, got {value}")
    if "timeout" in key or (key.endswith("_s") and not key.endswith("per_s")):
        if not 0 < value <= MAX_TIMEOUT_S:
            raise PolicyError(
                f"{where} must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g},"
                f" got {value:g}"
            )
    elif key.endswith(RATE_SUFFIXES):
        if not 0 <= value <= 1:
            raise PolicyError(f"{where} must be between 0 and 1, got {value:g}")
    elif (
        isinstance(default, int) and not isinstance(default, bool) and key != "seed"
    ) and value < (1 if default > 0 else 0):
        least = "positive" if default > 0 else "at least 0"
        raise PolicyError(f"{where} is a count: it must be {least}, got {value:g}")


def _check_type(gate: str, key: str, value: Any, default: Any) -> None:
    if default is None:
        _check_range(gate, key, value, default)
        return
    ok = (
        isinstance(value, bool)
        if isinstance(default, bool)
        else isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(default, int | float)
        else isinstance(value, type(default))
    )
    if not ok:
        raise PolicyError(
            f"[gates.{gate}] {key} must be a {type(default).__name__}, got {type(value).__name__}"
        )
    _check_range(gate, key, value, default)


def parse(
    text: str,
    root: Path | None,
    *,
    check_files: bool = True,
    schema: GateSchema | None = None,
) -> Policy:
    """Parse and validate policy TOML; hash the files it names when `root` is given.

    With a `schema` every gate name and parameter is checked against it; without one the
    gate sections are kept as written (for a policy already checked when it was set:
    rollback reads only its channels and must stay fast).
    """
    from registry.errors import InvalidInputError
    from registry.untrusted import MalformedError, load_toml

    try:
        data = load_toml(text, "policy", max_bytes=MAX_POLICY_BYTES)
    except MalformedError as exc:
        detail = str(exc).removeprefix("policy is not valid TOML (").removesuffix(")")
        raise PolicyError(f"policy is not valid TOML: {detail}") from None
    except InvalidInputError as exc:
        raise PolicyError(str(exc)) from None
    for section in ("channels", "gates"):
        if section in data and not isinstance(data[section], dict):
            raise PolicyError(
                f"policy {section} must be a table ([{section}.NAME] sections),"
                f" not a {type(data[section]).__name__}"
            )
    if extra := set(data) - {"channels", "gates", "admin"}:
        raise PolicyError(f"unknown policy section(s): {', '.join(sorted(extra))}")
    files: dict[str, str] = {}
    admin = data.get("admin")
    if admin is not None:
        if not isinstance(admin, dict):
            raise PolicyError("[admin] must be a table")
        if extra := set(admin) - ADMIN_KEYS:
            raise PolicyError(f"[admin] has unknown key(s): {', '.join(sorted(extra))}")
        admin = _names(admin.get("actors", []), "[admin] actors", files)
    channels: dict[str, ChannelPolicy] = {}
    for name, section in (data.get("channels") or {}).items():
        try:
            check_channel(name)
        except UsageError as exc:
            raise PolicyError(str(exc)) from None
        if not isinstance(section, dict):
            raise PolicyError(f"[channels.{name}] must be a table")
        if extra := set(section) - CHANNEL_KEYS:
            raise PolicyError(f"[channels.{name}] has unknown key(s): {', '.join(sorted(extra))}")
        require = section.get("require", [])
        if not isinstance(require, list) or not all(isinstance(g, str) for g in require):
            raise PolicyError(f"[channels.{name}] require must be a list of gate names")
        if schema is not None:
            for g in require:
                if g not in schema.names():
                    _unknown_gate(schema, g, f"channels.{name}")
        actors = section.get("actors")
        if actors is not None:
            actors = _names(actors, f"[channels.{name}] actors", files)
        signers = _names(section.get("gate_signers", []), f"[channels.{name}] gate_signers", files)
        if bad := [s for s in signers if not is_key_file(s)]:
            raise PolicyError(
                f"[channels.{name}] gate_signers must name public key files (.pub or .pem),"
                f" not {bad[0]!r}"
            )
        after = section.get("after")
        if after is not None and (not isinstance(after, str) or after == name):
            raise PolicyError(f"[channels.{name}] after must name another channel")
        channels[name] = ChannelPolicy(name, list(require), after, actors, signers)
    for name, ch in channels.items():
        if ch.after is not None and ch.after not in channels:
            raise PolicyError(f"[channels.{name}] after = {ch.after!r}, which the policy lacks")
    for name in channels:  # `after` chains must end: a cycle would block every channel in it
        seen, at = [name], channels[name].after
        while at is not None:
            if at in seen:
                raise PolicyError(
                    f"[channels.{name}] after forms a cycle: {' -> '.join([*seen, at])}"
                )
            seen.append(at)
            at = channels[at].after
    gates: dict[str, dict[str, Any]] = {}
    for gate, section in (data.get("gates") or {}).items():
        if not isinstance(section, dict):
            raise PolicyError(f"[gates.{gate}] must be a table")
        if schema is None:
            gates[gate] = dict(section)
            continue
        if gate not in schema.names():
            _unknown_gate(schema, gate, "gates")
        defaults = schema.defaults(gate)
        if extra := set(section) - set(defaults):
            keys = ", ".join(sorted(defaults)) or "none"
            raise PolicyError(
                f"[gates.{gate}] has unknown key(s) {', '.join(sorted(extra))} (known: {keys})"
            )
        for key, value in section.items():
            _check_type(gate, key, value, defaults[key])
            if _is_file_key(key):
                for rel in value if isinstance(value, list) else [value]:
                    if not isinstance(rel, str):
                        raise PolicyError(f"[gates.{gate}] {key} must name files")
                    files[check_relpath_policy(rel)] = ""
        schema.check(gate, {**defaults, **section})
        gates[gate] = dict(section)
    if schema is not None and root is not None:
        # A gate's default eval set (e.g. evals/target.jsonl) counts as named by the policy
        # when it exists beside it, so it is hashed into the digest and stored with it.
        wanted = set(gates) | {g for ch in channels.values() for g in ch.require}
        for gate in sorted(wanted):
            for key, default in schema.defaults(gate).items():
                if _is_file_key(key) and key not in gates.get(gate, {}) and default:
                    for rel in default if isinstance(default, list) else [default]:
                        candidate = root.joinpath(*check_relpath_policy(rel).split("/"))
                        if candidate.is_symlink() or candidate.is_file():
                            confined(root, rel)  # a link out of the directory is refused
                            files.setdefault(rel, "")
    if root is not None and check_files:
        for rel in files:
            path = confined(root, rel)
            if not path.is_file():
                raise PolicyError(f"policy names {rel}, which does not exist next to the policy")
            files[rel] = sha256_bytes(path.read_bytes())
    return Policy(text, channels, gates, files, root, admin=admin, schema=schema)


def _names(value: Any, where: str, files: dict[str, str]) -> list[str]:
    """A list of actor names or key files; key files join the policy's hashed files."""
    if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
        raise PolicyError(f"{where} must be a list of names or public key files")
    for entry in value:
        if is_key_file(entry):
            files[check_relpath_policy(entry)] = ""
    return list(value)


def confined(root: Path, rel: str) -> Path:
    """The real path of a file the policy names: symlinks followed, and refused unless it
    stays inside the policy file's directory (an eval set or key file linked to
    /etc/passwd would otherwise be hashed, stored and pushed)."""
    check_relpath_policy(rel)
    try:
        return resolve_inside(root, rel)
    except UsageError:
        raise PolicyError(
            f"policy names {rel}, which resolves outside the policy's directory {root}",
            "Copy the file next to the policy instead of linking to it.",
        ) from None


def check_relpath_policy(rel: str) -> str:
    try:
        return check_relpath(rel)
    except UsageError as exc:
        raise PolicyError(f"policy file path {rel!r}: {exc}") from None


def _unknown_gate(schema: GateSchema, name: str, where: str) -> None:
    raise PolicyError(f"[{where}] names unknown gate {name!r} (known: {', '.join(schema.names())})")


def load_file(path: Path, schema: GateSchema | None) -> Policy:
    """A policy file, checked against `schema` (the gates: gates.policy.load_file)."""
    from registry.paths import check_user_path

    try:
        check_user_path(path, "policy file")
    except UsageError as exc:
        raise PolicyError(str(exc)) from None
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise PolicyError(f"policy file {path} does not exist") from None
    except UnicodeDecodeError:
        raise PolicyError(f"policy file {path} is not UTF-8") from None
    return parse(text, path.resolve().parent, schema=schema)


# --- the policy in force, stored in the registry -----------------------------------------

SETTING_KEY = "policy"


@locks.writer("policy set")
def store(reg: Registry, policy: Policy, *, actor: Any, reason: str = "") -> bool:
    """Make `policy` the registry's policy: blobs first, then the setting and an audit event.

    Only an admin of the policy in force may replace it (`[admin] actors`; anyone when it
    has none, or when no policy is set yet). Returns False when that exact policy is
    already in force (nothing is recorded).
    """
    from registry import audit
    from registry.errors import BlockedError
    from registry.identity import of

    who = of(reg, actor)
    in_force = current(reg)
    admins = in_force.admins() if in_force is not None else None
    if admins is not None and not (who.names() & admins):
        raise BlockedError(
            f"{who.describe()} may not change the policy (admins: {', '.join(sorted(admins))})",
            "Ask an admin; --actor and $REGISTRY_ACTOR are display names only.",
        )
    policy.principals(policy.admin or [])  # key files must be keys before they are stored
    for ch in policy.channels.values():
        policy.principals(ch.actors or [])
        policy.gate_signer_keys(ch.name)

    if policy.root is None:
        raise PolicyError("only a policy read from a file can be set")
    for rel, digest in policy.files.items():
        data = confined(policy.root, rel).read_bytes()
        if sha256_bytes(data) != digest:
            raise PolicyError(f"{rel} changed while the policy was being set; try again")
        reg.store.put_bytes(data)
    reg.store.put_bytes(policy.text.encode("utf-8"))
    reg.store.put_bytes(canonical_json(policy.manifest()))
    with reg.db.write() as conn:
        in_place = conn.execute(
            "SELECT value FROM setting WHERE key = :k", {"k": SETTING_KEY}
        ).scalar()
        if in_place == policy.digest:
            return False
        if in_place is None:
            conn.execute(
                "INSERT INTO setting (key, value) VALUES (:k, :v)",
                {"k": SETTING_KEY, "v": policy.digest},
            )
        else:
            conn.execute(
                "UPDATE setting SET value = :v WHERE key = :k",
                {"k": SETTING_KEY, "v": policy.digest},
            )
        audit.append(
            conn, "policy", who=who, reason=reason or "policy set", policy_digest=policy.digest
        )
    return True


def current_digest(reg: Registry) -> str | None:
    with reg.db.read() as conn:
        return conn.execute("SELECT value FROM setting WHERE key = :k", {"k": SETTING_KEY}).scalar()


def load_stored(reg: Registry, digest: str, schema: GateSchema | None = None) -> Policy:
    """A policy from the store (its manifest digest), eval sets read from blobs; its gate
    sections checked against `schema` when one is given."""
    from registry.untrusted import load_json

    manifest = load_json(reg.store.read_bytes(digest), f"policy manifest {digest}")
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise PolicyError(f"blob {digest} is not a policy manifest")
    text = reg.store.read_bytes(manifest["policy"]).decode("utf-8")
    policy = parse(text, None, check_files=False, schema=schema)
    policy.files = dict(manifest["files"])
    policy.blob_path = reg.store.path
    return policy


def current(reg: Registry, schema: GateSchema | None = None) -> Policy | None:
    """The policy in force, or None if none was ever set."""
    digest = current_digest(reg)
    return load_stored(reg, digest, schema) if digest else None


def info(reg: Registry) -> dict[str, Any] | None:
    """The policy in force with who set it and when (for `registry policy show`)."""
    digest = current_digest(reg)
    if digest is None:
        return None
    with reg.db.read() as conn:
        ev = conn.execute(
            "SELECT actor, created_at, reason FROM event WHERE action = 'policy'"
            " AND policy_digest = :d ORDER BY seq DESC LIMIT 1",
            {"d": digest},
        ).first()
    policy = load_stored(reg, digest)
    return {
        "digest": digest,
        "set_by": ev.actor if ev else None,
        "set_at": ev.created_at if ev else None,
        "text": policy.text,
        "files": policy.files,
        "channels": {n: vars(c) for n, c in policy.channels.items()},
        "admin": policy.admin,
    }
