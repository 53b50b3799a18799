"""Finding the registry and reading `registry.toml`; environment variables in one place.

Lookup order: `--registry PATH`, then `$REGISTRY_HOME`, then walking up from the current
directory to the first one holding `registry.toml` (like git). The database is SQLite in
the registry directory unless `registry.toml` names `database_url` or
`$REGISTRY_DATABASE_URL` is set (the environment wins).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from registry.errors import RegistryNotFoundError, UsageError
from registry.pieces import MIN_PIECE_SIZE, PIECE_SIZE, SPLIT_ABOVE

CONFIG_FILE = "registry.toml"
DB_FILE = "registry.db"
FORMAT_VERSION = 1
ENV_HOME = "REGISTRY_HOME"
ENV_DATABASE_URL = "REGISTRY_DATABASE_URL"
ENV_ACTOR = "REGISTRY_ACTOR"
ENV_DEBUG = "REGISTRY_DEBUG"
GC_GRACE_SECONDS = 3600


@dataclass(frozen=True)
class RegistryConfig:
    root: Path
    database_url: str
    signing_key: str | None = None  # path of a PEM private key; $REGISTRY_SIGNING_KEY wins
    # [store]: files above split_above bytes are stored as pieces (None: never); registry/pieces.py
    split_above: int | None = SPLIT_ABOVE
    piece_size: int = PIECE_SIZE

    @property
    def sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


ACTOR_HELP = (
    "A display name shown beside your authenticated identity (default: $REGISTRY_ACTOR);"
    " it never satisfies a policy's actors."
)


def display_name(flag: str | None = None) -> str:
    """The display name a user asked for (`--actor`, else $REGISTRY_ACTOR), or "".

    Only shown beside the verified identity (registry.identity); it never satisfies a
    policy's `actors`."""
    return (flag or os.environ.get(ENV_ACTOR) or "").strip()[:128]


def os_user() -> str:
    """The operating-system user running this process (the local identity)."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # no passwd entry in some containers
        return f"uid{os.getuid()}"


def sqlite_url(root: Path) -> str:
    return f"sqlite:///{(root / DB_FILE).resolve()}"


def find_root(explicit: Path | None) -> Path:
    if explicit is not None:
        if not (explicit / CONFIG_FILE).is_file():
            raise RegistryNotFoundError(f"no registry at {explicit} (no {CONFIG_FILE})")
        return explicit
    if home := os.environ.get(ENV_HOME):
        path = Path(home)
        if not (path / CONFIG_FILE).is_file():
            raise RegistryNotFoundError(f"${ENV_HOME}={home} is not a registry (no {CONFIG_FILE})")
        return path
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / CONFIG_FILE).is_file():
            return d
    raise RegistryNotFoundError("no registry found here or in any parent directory")


def load(explicit: Path | None = None) -> RegistryConfig:
    root = find_root(explicit)
    try:
        data = tomllib.loads((root / CONFIG_FILE).read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{root / CONFIG_FILE} is not valid TOML: {exc}") from None
    fmt = data.get("format", FORMAT_VERSION)
    if fmt != FORMAT_VERSION:
        raise UsageError(
            f"{root / CONFIG_FILE} has format {fmt}; this version reads {FORMAT_VERSION}"
        )
    written = data.get("database_url")
    if written is not None:
        if not isinstance(written, str):
            raise UsageError(f"{root / CONFIG_FILE}: database_url must be a URL (a string)")
        refuse_password(written, f"{root / CONFIG_FILE} has a database_url with a password")
    url = os.environ.get(ENV_DATABASE_URL) or written or sqlite_url(root)
    key = data.get("signing_key")
    if key is not None and not isinstance(key, str):
        raise UsageError(f"{root / CONFIG_FILE}: signing_key must be a path (a string)")
    split_above, piece_size = store_settings(data.get("store"), root / CONFIG_FILE)
    return RegistryConfig(
        root=root,
        database_url=url,
        signing_key=key,
        split_above=split_above,
        piece_size=piece_size,
    )


def _size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def store_settings(table: object, where: Path) -> tuple[int | None, int]:
    """`[store]` of registry.toml: (split_above, piece_size). `split_above = 0` or no key
    is the default (64 MiB), `split_above = false` never splits; `piece_size` is bytes,
    at least 64 KiB (default 64 MiB)."""
    if table is None:
        return SPLIT_ABOVE, PIECE_SIZE
    if not isinstance(table, dict):
        raise UsageError(f"{where}: [store] must be a table")
    unknown = sorted(set(table) - {"split_above", "piece_size"})
    if unknown:
        raise UsageError(
            f"{where}: [store] has unknown key {unknown[0]!r}",
            "The keys are split_above (bytes, or false) and piece_size (bytes).",
        )
    split = table.get("split_above", 0)
    if split is False:
        split_above = None
    elif _size(split):
        split_above = split or SPLIT_ABOVE
    else:
        raise UsageError(
            f"{where}: [store] split_above must be a number of bytes (or false), not {split!r}"
        )
    piece = table.get("piece_size", PIECE_SIZE)
    if not _size(piece) or piece < MIN_PIECE_SIZE:
        raise UsageError(
            f"{where}: [store] piece_size must be a number of bytes of at least"
            f" {MIN_PIECE_SIZE}, not {piece!r}"
        )
    return split_above, piece


# --- secrets: never in registry.toml, never printed (docs/design.md, "How data is kept safe")

PASSWORD_HINT = (
    "registry.toml never holds secrets: keep the password in PGPASSFILE or ~/.pgpass, use"
    f" PGSERVICE, or put the whole URL in ${ENV_DATABASE_URL} (which is never written)."
)


def _netloc(url: str) -> tuple[str, str, str]:
    """(scheme://, netloc, rest) of a URL, split as libpq does: netloc ends at / ? #."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", "", url
    end = min((i for i in (rest.find(c) for c in "/?#") if i != -1), default=len(rest))
    return scheme + sep, rest[:end], rest[end:]


def url_password(url: str) -> str | None:
    """The password a database URL carries (`user:password@` or `?password=`), or None."""
    from urllib.parse import parse_qsl, unquote

    _, netloc, rest = _netloc(url)
    userinfo, at, _ = netloc.rpartition("@")
    if at and ":" in userinfo and userinfo.split(":", 1)[1]:
        return unquote(userinfo.split(":", 1)[1])
    query = rest.partition("?")[2].partition("#")[0]
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "password" and value:
            return value
    return None


def redact_url(url: str) -> str:
    """`url` with its password shown as `***` (user:***@host, password=***)."""
    import re

    scheme, netloc, rest = _netloc(url)
    userinfo, at, hostinfo = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
    rest = re.sub(r"([?&]password=)[^&#]*", r"\1***", rest)
    return scheme + netloc + rest


def redact(text: str, url: str) -> str:
    """`text` (an error message) with the URL's password, however spelled, as `***`."""
    from urllib.parse import quote

    password = url_password(url)
    text = text.replace(url, redact_url(url))
    if password:
        for spelled in {password, quote(password, safe="")}:
            text = text.replace(spelled, "***")
    return text


def url_target(url: str) -> str:
    """host:port/database of a PostgreSQL URL, for messages (no user, no password)."""
    _, netloc, rest = _netloc(url)
    hostinfo = netloc.rpartition("@")[2] or "localhost"
    database = rest.partition("?")[0].partition("#")[0].lstrip("/")
    return f"{hostinfo}/{database}" if database else hostinfo


def refuse_password(url: str, what: str) -> None:
    """Refuse a URL with a password where it would be written to disk."""
    if url_password(url) is not None:
        raise UsageError(what, PASSWORD_HINT)


def write_config(root: Path, database_url: str | None) -> None:
    if database_url:
        refuse_password(
            database_url, f"--database-url has a password, which would be written to {CONFIG_FILE}"
        )
    lines = [f"format = {FORMAT_VERSION}"]
    if database_url:
        lines.append(f"database_url = {database_url!r}".replace("'", '"'))
    (root / CONFIG_FILE).write_text("\n".join(lines) + "\n", "utf-8")
