"""SQLite state database (WAL) with versioned migrations.

Every object is one row: a few indexed columns for lookups plus a JSON document with the
rest. Each state transition is written in one transaction, so a crash at any point leaves
either the old or the new row, never a mix (SQLite's journal guarantees this; WAL with
synchronous=FULL makes a committed transition survive power loss too).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from frakpy.errors import FailedPrecondition

# Each entry upgrades the schema by one version; never edit a released entry, append one.
MIGRATIONS: list[str] = [
    # v1
    """
    CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        namespace TEXT NOT NULL,
        uid TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE UNIQUE INDEX sandboxes_by_identity ON sandboxes(name, namespace, uid, attempt);
    CREATE TABLE containers (
        id TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        name TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX containers_by_sandbox ON containers(sandbox_id);
    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        doc TEXT NOT NULL
    );
    CREATE TABLE image_refs (
        ref TEXT PRIMARY KEY,
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class Database:
    """One connection shared by the daemon; calls are short and serialised by a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise FailedPrecondition(
                f"state database {self.path} has schema v{version}, newer than this frakpy "
                f"(v{SCHEMA_VERSION}); upgrade frakpy or move the state dir aside"
            )
        for index in range(version, SCHEMA_VERSION):
            with self.tx() as cur:
                cur.executescript_safe(MIGRATIONS[index])
                cur.execute(f"PRAGMA user_version={index + 1}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def tx(self) -> Iterator[_Cursor]:
        """A write transaction: everything inside commits together or not at all."""
        with self._lock:
            cur = _Cursor(self._conn.cursor())
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # Small typed helpers used by the record layer.
    def put(self, table: str, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.tx() as cur:
            cur.execute(f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})", tuple(row.values()))

    def delete(self, table: str, ident: str) -> None:
        with self.tx() as cur:
            cur.execute(f"DELETE FROM {table} WHERE id = ?", (ident,))

    def docs(self, table: str) -> list[dict[str, Any]]:
        return [json.loads(r["doc"]) for r in self.query(f"SELECT doc FROM {table}")]

    def get_setting(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM settings WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def set_setting(self, key: str, value: str) -> None:
        self.put("settings", {"key": key, "value": value})

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Cursor:
    """Cursor inside a transaction; executescript is split by statement so it stays in it."""

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self._cur.execute(sql, params)

    def executescript_safe(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self._cur.execute(statement)
