"""The Remote protocol, remote URLs, and the `remote` table (add, list, remove, open).

    s3://bucket[/prefix]   any S3 endpoint (--endpoint-url for MinIO, R2, ...); credentials
                           come from the usual AWS chain and are never stored here
    hf://org/repo          a Hugging Face Hub model repo; the token comes from HF_TOKEN or
                           the Hub's own login, never from here

A remote's row holds its name, URL and options (endpoint URL, profile, region, private):
names of where to look, never secrets. An endpoint URL carrying a user or password is
refused so a secret cannot end up in the database by accident.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from registry.digest import canonical_json
from registry.errors import UsageError
from registry.paths import check_relpath

if TYPE_CHECKING:
    from registry.repo import Registry

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}\Z")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
HF_REPO_RE = re.compile(
    r"^(?P<org>[A-Za-z0-9][A-Za-z0-9_.-]{0,95})/(?P<repo>[A-Za-z0-9_.-]{1,96})\Z"
)
PROFILE_RE = re.compile(r"^[A-Za-z0-9_.@+=,-]{1,128}\Z")
REGION_RE = re.compile(r"^[a-z0-9-]{1,32}\Z")

# A factory of progress callbacks, as registry.output.file_progress yields: (label, total
# bytes) -> a callback taking the bytes just moved, or None for no bar.
ProgressFactory = Callable[[str, int], Callable[[int], None] | None]


@dataclass(frozen=True)
class RemoteSpec:
    """One row of the `remote` table, parsed."""

    name: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "s3" if self.url.startswith("s3://") else "hf"

    @property
    def bucket(self) -> str:
        return parse_s3_url(self.url)[0]

    @property
    def prefix(self) -> str:
        return parse_s3_url(self.url)[1]

    @property
    def repo_id(self) -> str:
        return parse_hf_url(self.url)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "kind": self.kind, **self.options}


@dataclass
class PushResult:
    """What a push did: which refs it wrote and how much it had to send."""

    remote: str
    digest: str
    tag: str  # name:vN
    channel: str | None = None
    blobs: int = 0  # blobs the bundle needs on the remote
    blobs_sent: int = 0  # of those, how many were missing and uploaded
    bytes_total: int = 0
    bytes_sent: int = 0
    refs: list[str] = field(default_factory=list)  # refs (tags) written, e.g. ["v3", "production"]
    # Trust records sent that the remote lacked: gate-run attestations, bundle signatures.
    gate_runs_sent: int = 0
    signatures_sent: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PullResult:
    """What a pull did: the local tag it produced and how much it had to fetch."""

    remote: str
    digest: str
    tag: str  # local name:vN
    remote_tag: str  # the tag as the remote numbers it
    created: bool = False  # False when the bundle row already existed locally
    channel: str | None = None  # the remote's channel, for NAME:CHANNEL
    # The read-only remote-tracking view the pull recorded ("team/production": it now
    # names `tag`) and whether this pull changed it. The local channel never moves.
    tracking: str | None = None
    tracking_moved: bool = False
    blobs: int = 0
    blobs_fetched: int = 0
    bytes_total: int = 0
    bytes_fetched: int = 0
    # Trust records this pull recorded: gate runs (from signed attestations; each counts
    # only where a policy's gate_signers trust its signer) and verified bundle signatures.
    gate_runs: int = 0
    signatures: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Remote(Protocol):
    """What every kind of remote does. Implementations: S3Remote, HubRemote."""

    spec: RemoteSpec

    def push(
        self,
        reg: Registry,
        ref: str,
        *,
        include_base: bool = False,
        actor: str,
        progress: ProgressFactory | None = None,
    ) -> PushResult:
        """Upload what the remote lacks (blobs, manifests, then refs) for one bundle."""
        ...

    def pull(
        self, reg: Registry, ref: str, *, actor: str, progress: ProgressFactory | None = None
    ) -> PullResult:
        """Download what the store lacks, verify every digest, then import rows."""
        ...

    def list(self) -> list[dict[str, Any]]:
        """Every version and channel the remote holds: name, version, digest, channels."""
        ...


# --- URLs ---------------------------------------------------------------------------------


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, prefix without slashes at either end; may be "")."""
    if not url.startswith("s3://"):
        raise UsageError(f"{url!r} is not an s3:// URL")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not BUCKET_RE.match(bucket) or ".." in bucket:
        raise UsageError(
            f"{bucket!r} is not a valid S3 bucket name",
            "Bucket names are 3-63 lowercase letters, digits, '.' or '-'.",
        )
    prefix = prefix.rstrip("/")
    if prefix:
        check_relpath(prefix)
    return bucket, prefix


def parse_hf_url(url: str) -> str:
    """`hf://org/repo` -> "org/repo"."""
    if not url.startswith("hf://"):
        raise UsageError(f"{url!r} is not an hf:// URL")
    repo = url[len("hf://") :].rstrip("/")
    if not HF_REPO_RE.match(repo) or ".." in repo:
        raise UsageError(
            f"{url!r} is not hf://ORG/REPO",
            "Name a Hub model repo, e.g. hf://my-org/support-bot (no revision: tags are ours).",
        )
    return repo


def check_endpoint_url(url: str) -> str:
    """An http(s) endpoint with no credentials, query or fragment in it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--endpoint-url {url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise UsageError(
            "--endpoint-url must not carry a user or password",
            "Credentials come from the AWS chain (AWS_PROFILE, ~/.aws/credentials,"
            " AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY); they are never stored in the registry.",
        )
    if parts.query or parts.fragment:
        raise UsageError(f"--endpoint-url {url!r} must not have a query or fragment")
    return url.rstrip("/")


def check_remote_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f"remote name {name!r} is invalid",
            "Use a letter then letters, digits, '.', '_' or '-' (at most 64), e.g. origin.",
        )
    return name


# --- the remote table ---------------------------------------------------------------------


def add_remote(
    reg: Registry,
    name: str,
    url: str,
    *,
    endpoint_url: str | None = None,
    profile: str | None = None,
    region: str | None = None,
    private: bool = False,
) -> RemoteSpec:
    """Record a remote. Options that do not apply to its kind are a usage error."""
    from registry.db import DBIntegrityError

    check_remote_name(name)
    options: dict[str, Any] = {}
    if url.startswith("s3://"):
        bucket, prefix = parse_s3_url(url)
        url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        if private:
            raise UsageError("--private applies to hf:// remotes only")
        if endpoint_url:
            options["endpoint_url"] = check_endpoint_url(endpoint_url)
        if profile:
            if not PROFILE_RE.match(profile):
                raise UsageError(f"--profile {profile!r} is not a profile name")
            options["profile"] = profile
        if region:
            if not REGION_RE.match(region):
                raise UsageError(f"--region {region!r} is not a region name")
            options["region"] = region
    elif url.startswith("hf://"):
        url = f"hf://{parse_hf_url(url)}"
        if endpoint_url or profile or region:
            raise UsageError(
                "--endpoint-url, --profile and --region apply to s3:// remotes only",
                "A Hub remote uses HF_ENDPOINT and HF_TOKEN from the environment.",
            )
        options["private"] = bool(private)
    else:
        raise UsageError(
            f"unsupported remote URL {url!r}",
            "Use s3://BUCKET/PREFIX (any S3-compatible store) or hf://ORG/REPO.",
        )
    try:
        with reg.db.write() as conn:
            conn.execute(
                "INSERT INTO remote (name, url, options) VALUES (:n, :u, :o)",
                {"n": name, "u": url, "o": canonical_json(options).decode()},
            )
    except DBIntegrityError:
        raise UsageError(
            f"a remote named {name!r} already exists",
            f"Run `registry remote rm {name}` first, or pick another name.",
        ) from None
    return RemoteSpec(name, url, options)


def list_remotes(reg: Registry) -> list[RemoteSpec]:
    with reg.db.read() as conn:
        rows = conn.execute("SELECT name, url, options FROM remote ORDER BY name").all()
    return [RemoteSpec(r[0], r[1], _options(r[2])) for r in rows]


def get_remote(reg: Registry, name: str) -> RemoteSpec:
    with reg.db.read() as conn:
        row = conn.execute(
            "SELECT name, url, options FROM remote WHERE name = :n", {"n": name}
        ).first()
    if row is None:
        known = ", ".join(r.name for r in list_remotes(reg)) or "none yet"
        raise UsageError(
            f"no remote named {name!r} (known: {known})",
            "Add one with `registry remote add NAME s3://BUCKET/PREFIX` or `... hf://ORG/REPO`.",
        )
    return RemoteSpec(row[0], row[1], _options(row[2]))


def remove_remote(reg: Registry, name: str) -> None:
    """Forget a remote and its remote-tracking views (as `git remote remove` does)."""
    with reg.db.write() as conn:
        n = conn.execute("DELETE FROM remote WHERE name = :n", {"n": name}).rowcount
        if n:
            conn.execute("DELETE FROM remote_channel WHERE remote = :n", {"n": name})
    if not n:
        raise UsageError(f"no remote named {name!r}", "Run `registry remote ls`.")


def open_remote(reg: Registry, name: str) -> Remote:
    """The Remote object for a configured remote (its client library is imported lazily)."""
    spec = get_remote(reg, name)
    if spec.kind == "s3":
        from registry.remotes.s3 import S3Remote

        return S3Remote(spec)
    from registry.remotes.hf import HubRemote

    return HubRemote(spec)


def _options(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
