"""A Registry: its directory, blob store, stat cache and database, opened together."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from registry import config
from registry.db import Database, upgrade
from registry.errors import UsageError
from registry.statcache import StatCache
from registry.store import BlobStore

if TYPE_CHECKING:
    from registry.identity import Identity


@dataclass
class Registry:
    cfg: config.RegistryConfig

    @classmethod
    def open(cls, path: Path | None = None) -> Registry:
        return cls(config.load(path))

    @classmethod
    def init(cls, path: Path, database_url: str | None = None) -> Registry:
        """Create (or re-apply migrations to) the registry at `path`."""
        if path.exists() and not path.is_dir():
            raise UsageError(f"{path} exists and is not a directory")
        if database_url and not (path / config.CONFIG_FILE).exists():
            # Before anything is created: the URL would be written to registry.toml.
            config.refuse_password(
                database_url,
                f"--database-url has a password, which would be written to {config.CONFIG_FILE}",
            )
        path.mkdir(parents=True, exist_ok=True)
        if not (path / config.CONFIG_FILE).exists():
            config.write_config(path, database_url)
        reg = cls.open(path)
        reg.store.init()
        upgrade(reg.cfg.database_url)
        return reg

    @property
    def root(self) -> Path:
        return self.cfg.root

    @cached_property
    def store(self) -> BlobStore:
        return BlobStore(self.root)

    @cached_property
    def db(self) -> Database:
        return Database(self.cfg.database_url)

    @cached_property
    def whoami(self) -> Identity:
        """This process's authenticated identity against this registry (no display name)."""
        from registry.identity import resolve

        return resolve(self, "")

    @cached_property
    def statcache(self) -> StatCache:
        return StatCache(self.root / "cache" / "stat.sqlite")

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()
        if "statcache" in self.__dict__:
            self.statcache.close()
