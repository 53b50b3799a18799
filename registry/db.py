"""Database access: thin DB-API connections, transactions and the schema check.

The schema of record is the SQLModel tables in `registry.models`, created only by the
Alembic migrations in `migrations/` (installed as the package `registry.migrations`).
Commands do not go through SQLAlchemy: importing it costs about 0.35 s on this machine,
more than the whole budget of `registry ls` or `registry rollback`. They run plain SQL
that SQLite and PostgreSQL share, with `:name` parameters, on `sqlite3` (stdlib) or
`psycopg` directly.

SQLite: WAL, synchronous=FULL, a busy timeout, and write transactions begun with
`BEGIN IMMEDIATE`, so a read that turns into a write cannot fail half-way and an
acknowledged write survives a power cut. PostgreSQL: ordinary transactions; channel moves
lock rows with `SELECT ... FOR UPDATE`.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from registry.errors import RegistryError, SchemaError

# The Alembic head this code expects; tests/registry/test_migrations.py keeps it equal to the head.
SCHEMA_REVISION = "0004_listing_index"
MIGRATIONS_PACKAGE = "registry.migrations"


def _package_dir(name: str) -> Path | None:
    """The directory of package `name`, found by the import system without importing it.

    The checkout keeps the migrations at the top of the repository and pyproject.toml maps
    them to `registry.migrations`: an editable install finds that package through
    setuptools' editable finder, an installed wheel in site-packages/registry/migrations.
    One lookup serves both (importlib.util is loaded already: it costs commands nothing).
    """
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# Alembic's script directory (env.py, script.py.mako, versions/); None in a broken install.
MIGRATIONS_DIR = _package_dir(MIGRATIONS_PACKAGE)
BUSY_TIMEOUT_S = 60
_PARAM_RE = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class DBIntegrityError(Exception):
    """A constraint (unique key, foreign key) refused a write, on either database."""


def now() -> str:
    """UTC now as the ISO-8601 string stored in every timestamp column."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Row(tuple):
    """A result row: index, attribute (`row.digest`) and `row._asdict()` access."""

    _fields: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[self._fields.index(name)]
        except ValueError:
            raise AttributeError(name) from None

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))


class Result:
    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)

    def all(self) -> list[Row]:
        return self._rows

    def first(self) -> Row | None:
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def dicts(self) -> list[dict[str, Any]]:
        return [r._asdict() for r in self._rows]


def _rows(cursor: Any) -> list[Row]:
    if cursor.description is None:
        return []
    fields = tuple(d[0] for d in cursor.description)
    cls = type("Row", (Row,), {"_fields": fields, "__slots__": ()})
    return [cls(r) for r in cursor.fetchall()]


class Connection:
    """One open transaction. `execute(sql, params)` with `:name` parameters."""

    def __init__(self, raw: Any, postgres: bool) -> None:
        self.raw = raw
        self.postgres = postgres

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Result:
        cur = self.raw.cursor()
        try:
            if self.postgres:
                cur.execute(_pg_sql(sql), params or {})
            else:
                cur.execute(sql, params or {})
            return Result(_rows(cur), cur.rowcount)
        except Exception as exc:
            _translate(exc)
            raise
        finally:
            cur.close()

    def executemany(self, sql: str, params: Sequence[dict[str, Any]]) -> None:
        cur = self.raw.cursor()
        try:
            cur.executemany(_pg_sql(sql) if self.postgres else sql, params)
        except Exception as exc:
            _translate(exc)
            raise
        finally:
            cur.close()


_PG_CACHE: dict[str, str] = {}


def _pg_sql(sql: str) -> str:
    """`:name` -> `%(name)s` for psycopg (literal % doubled)."""
    if (out := _PG_CACHE.get(sql)) is None:
        out = _PARAM_RE.sub(r"%(\1)s", sql.replace("%", "%%"))
        _PG_CACHE[sql] = out
    return out


def _translate(exc: Exception) -> None:
    import sqlite3

    if isinstance(exc, sqlite3.IntegrityError):
        raise DBIntegrityError(str(exc)) from exc
    if isinstance(exc, sqlite3.OperationalError):
        if "locked" in str(exc) or "busy" in str(exc):
            raise RegistryError(
                f"the database is busy ({exc})", "Another command holds it; try again."
            ) from exc
        if "no such table" in str(exc):
            raise SchemaError("the registry database has no schema") from exc
        raise RegistryError(f"database error: {exc}") from exc
    mod = type(exc).__module__
    if mod.startswith("psycopg"):
        from psycopg import errors

        if isinstance(exc, errors.IntegrityError):
            raise DBIntegrityError(str(exc)) from exc
        if isinstance(exc, errors.UndefinedTable):
            raise SchemaError("the registry database has no schema") from exc
        if isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected):
            raise DBIntegrityError(str(exc)) from exc
        raise RegistryError(f"database error: {str(exc).strip()}") from exc


def connect_error(url: str, exc: BaseException) -> RegistryError:
    """One line naming host, port and database, the password never in it."""
    from registry.config import redact, url_target

    reason = " ".join(str(exc).split()) or type(exc).__name__
    reason = reason.removeprefix("connection failed: ").removeprefix("connection is bad: ")
    return RegistryError(
        f"cannot connect to PostgreSQL at {url_target(url)} ({redact(reason, url)})",
        "Check that the server runs and the URL's host, port, database and user"
        " (passwords: PGPASSFILE / ~/.pgpass, PGSERVICE or $REGISTRY_DATABASE_URL).",
    )


def sqlite_path(url: str) -> str:
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise RegistryError(f"unsupported SQLite URL {url!r}", "Use sqlite:///ABSOLUTE/PATH.")
    return url[len(prefix) :]


def pg_conninfo(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


class Database:
    """One registry database. `read()` and `write()` yield a Connection in a transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgresql", "postgres:"))
        if not self.postgres and not url.startswith("sqlite"):
            from registry.config import redact_url

            raise RegistryError(
                f"unsupported database URL {redact_url(url)!r}",
                "Use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB.",
            )
        self._raw: Any = None
        self._checked = False

    @property
    def sqlite(self) -> bool:
        return not self.postgres

    def _open(self) -> Any:
        if self._raw is not None:
            return self._raw
        if self.postgres:
            import psycopg

            try:
                self._raw = psycopg.connect(pg_conninfo(self.url), connect_timeout=10)
            except psycopg.Error as exc:
                raise connect_error(self.url, exc) from None
        else:
            import sqlite3

            path = sqlite_path(self.url)
            if not Path(path).exists():
                raise SchemaError(f"database {path} does not exist")
            raw = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            raw.execute("PRAGMA journal_mode=WAL")
            raw.execute("PRAGMA synchronous=FULL")
            raw.execute("PRAGMA foreign_keys=ON")
            raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
            self._raw = raw
        return self._raw

    def check_schema(self, conn: Connection) -> None:
        if self._checked:
            return
        try:
            rev = conn.execute("SELECT version_num FROM alembic_version").scalar()
        except (SchemaError, RegistryError):
            raise SchemaError("the registry database has no schema") from None
        if rev != SCHEMA_REVISION:
            raise SchemaError(f"database schema is at {rev}, this version needs {SCHEMA_REVISION}")
        self._checked = True

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._transaction(write=False) as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._transaction(write=True) as conn:
            yield conn

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        raw = self._open()
        conn = Connection(raw, self.postgres)
        if not self.postgres:
            try:
                raw.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except Exception as exc:
                _translate(exc)
                raise
        try:
            self.check_schema(conn)
            yield conn
        except BaseException:
            raw.rollback() if self.postgres else raw.execute("ROLLBACK")
            raise
        else:
            try:
                raw.commit() if self.postgres else raw.execute("COMMIT")
            except Exception as exc:
                _translate(exc)
                raise

    def dispose(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def make_engine(url: str) -> Any:
    """A SQLAlchemy engine, for Alembic and tests only (commands use `Database`)."""
    from sqlalchemy import create_engine

    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return create_engine(url)


def upgrade(url: str) -> None:
    """Apply every Alembic migration (the only way the schema is created)."""
    from alembic import command
    from alembic.config import Config

    if MIGRATIONS_DIR is None or not (MIGRATIONS_DIR / "env.py").is_file():
        raise RegistryError(
            f"this installation has no database migrations ({MIGRATIONS_PACKAGE} is missing)",
            "Reinstall lora-registry (pip install lora-registry, or `make venv` in a checkout).",
        )
    if url.startswith(("postgresql", "postgres:")):
        # Connect once here, so a server that cannot be reached is one clean line (exit 1)
        # rather than SQLAlchemy's multi-line error from inside Alembic.
        db = Database(url)
        try:
            db._open()
        finally:
            db.dispose()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = url
    command.upgrade(cfg, "head")
