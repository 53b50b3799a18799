"""Stat cache: skip re-hashing files whose (device, inode, size, mtime) did not change.

It lives beside the store (`cache/stat.sqlite`, stdlib sqlite3, local to this machine even
when the registry database is a team's PostgreSQL) because it describes local files. A hit
is only a hint: the store still checks that the blob it names exists with that size.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from registry.digest import Descriptor

RACY_NS = 1_000_000_000


class StatCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS stat (path TEXT PRIMARY KEY, dev INTEGER,"
                " ino INTEGER, size INTEGER, mtime_ns INTEGER, digest TEXT)"
            )
        return self._db

    @staticmethod
    def _key(path: Path) -> tuple[str, os.stat_result]:
        return os.path.realpath(path), os.stat(path)

    def get(self, path: Path) -> Descriptor | None:
        key, st = self._key(path)
        row = (
            self._conn()
            .execute("SELECT dev, ino, size, mtime_ns, digest FROM stat WHERE path = ?", (key,))
            .fetchone()
        )
        if row and tuple(row[:4]) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
            return Descriptor(row[4], st.st_size)
        return None

    def put(self, path: Path, desc: Descriptor) -> None:
        key, st = self._key(path)
        if st.st_size != desc.size:
            return  # the file changed while it was stored: do not cache a guess
        if st.st_mtime_ns > time.time_ns() - RACY_NS:
            # Written within the timestamp granularity: a later edit could keep the same
            # mtime (git's "racy clean" problem). Hash it again next time instead.
            return
        self._conn().execute(
            "INSERT OR REPLACE INTO stat VALUES (?, ?, ?, ?, ?, ?)",
            (key, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, desc.digest),
        )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
