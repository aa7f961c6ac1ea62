"""The event store's file format: the SQLite tables (``events``, ``meta``, ``quarantine``),
opening a file (WAL, ``synchronous=FULL``, the damage check, the upgrade of files written by an
older schema version, the size quota), and the mapping from an ``events`` row to a
:class:`~gateway.core.records.StoredEvent` (its value checked against the row's CRC-32).

:class:`~gateway.adapters.sqlite_store.SqliteEventStore` reads and writes through these.
"""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path
from typing import Any, Final

import aiosqlite

from gateway.adapters.sqlite_common import connect, fetch_all, translate_sqlite_error
from gateway.core.ingest import StorableEvent
from gateway.core.records import StoredEvent
from gateway.errors import StoreCorrupt

SCHEMA_VERSION: Final = 3
"""1: the first schema; 2: ``events.traceparent``; 3: ``events.crc`` (CRC-32 of the value;
NULL for rows written before). Older files are upgraded at open."""
ROWS_PER_STATEMENT: Final = 400  # 10 parameters a row stays far below SQLite's 32766 limit
COLUMNS: Final = (
    "event_id, event_type, event_version, key, source, correlation_id, value, received_at_ms, "
    "traceparent, crc"
)
ROW_PLACEHOLDER: Final = "(?,?,?,?,?,?,?,?,?,?)"
FORWARDED_MARK: Final = "forwarded_seq"
STORE_ID: Final = "store_id"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    event_version INTEGER NOT NULL,
    key TEXT NOT NULL,
    source TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    value BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    traceparent TEXT,
    crc INTEGER
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    quarantined_at_ms INTEGER NOT NULL,
    replayed_at_ms INTEGER
);
"""


async def open_connections(
    path: Path, max_bytes: int | None
) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
    """The writer's connection to the store file at ``path`` (checked for damage, schema made
    or upgraded, quota of ``max_bytes`` set) and a read-only reader's."""
    what = f"cannot open store {path}"
    db = await connect(path, what)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await _quick_check(db, path)
        await db.executescript(_SCHEMA)
        columns = {str(row[1]) for row in await fetch_all(db, "PRAGMA table_info(events)")}
        for column, kind in (("traceparent", "TEXT"), ("crc", "INTEGER")):
            if column not in columns:  # a store made by an older schema version
                await db.execute(f"ALTER TABLE events ADD COLUMN {column} {kind}")
        await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        if max_bytes is not None:
            rows = await fetch_all(db, "PRAGMA page_size")
            page_size = int(rows[0][0]) if rows else 4096
            await db.execute(f"PRAGMA max_page_count={max(1, max_bytes // page_size)}")
        reader = await connect(path, what, "PRAGMA query_only=1")
    except BaseException as exc:
        await db.close()
        if isinstance(exc, sqlite3.DatabaseError):
            raise translate_sqlite_error(exc, what) from exc
        raise
    return db, reader


def row_to_stored(row: Any) -> StoredEvent:
    # Column types are fixed by the schema (and this runs per forwarded event): no coercion.
    seq, event_id, event_type, version, key, source, correlation, value, at_ms, trace, crc = row
    return StoredEvent(
        seq=seq,
        event=StorableEvent(event_id, event_type, version, key, source, correlation, value, trace),
        received_at_ms=at_ms,
        damaged=crc is not None and zlib.crc32(value) != crc,
    )


async def _quick_check(db: aiosqlite.Connection, path: Path) -> None:
    """Refuse a damaged file (SQLite's ``quick_check``: page and index structure) with a clear
    :class:`~gateway.errors.StoreCorrupt` rather than serve from it."""
    problems = [str(row[0]) for row in await fetch_all(db, "PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise StoreCorrupt(
            f"store {path} is damaged ({'; '.join(problems)[:500]}): the gateway will not "
            "serve from it. Move it aside (with its -wal file) and start again with an empty "
            "store, or restore a copy; `sqlite3 <file> .recover` may save its events"
        )
