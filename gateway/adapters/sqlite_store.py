"""The local durable store: SQLite in WAL mode with ``synchronous=FULL`` and group commit.

Every ``append`` call joins the next commit: one writer task takes all calls queued while the
previous commit was syncing and commits them in one transaction, so durability costs one fsync
per group of requests, not per event. ``event_id`` is unique in the table; the writer is the
only one to insert, so two concurrent requests with the same id get one ``accepted`` and one
``duplicate`` answer, never two rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiosqlite

from gateway.core.ids import EventId, LocalSeq
from gateway.core.ingest import StorableEvent
from gateway.errors import StoreCorrupt, StoreError, StoreUnavailable
from gateway.flows.ports import StoredEvent

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
_ROWS_PER_STATEMENT: Final = 500  # 6 parameters a row stays far below SQLite's 32766 limit
_COLUMNS: Final = "event_id, event_type, event_version, key, value, received_at_ms"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    event_version INTEGER NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(slots=True)
class _Append:
    events: Sequence[StorableEvent]
    done: asyncio.Future[list[bool]]


class SqliteEventStore:
    """:class:`~gateway.flows.ports.EventStore` on one SQLite file."""

    def __init__(self, path: Path, *, max_group_events: int = 5000) -> None:
        self._path = path
        self._max_group_events = max_group_events
        self._db: aiosqlite.Connection | None = None
        self._queue: deque[_Append] = deque()
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def path(self) -> Path:
        return self._path

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(self._path, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise _translate(exc, f"cannot open store {self._path}") from exc
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.executescript(_SCHEMA)
            await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            await db.close()
            raise _translate(exc, f"cannot open store {self._path}") from exc
        self._db = db
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        """Commit what is queued, then close."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> SqliteEventStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def append(self, events: Sequence[StorableEvent]) -> list[bool]:
        if not events:
            return []
        if self._closing or self._db is None:
            raise StoreUnavailable("store is closed")
        done: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Append(events, done))
        self._wakeup.set()
        # The commit goes on even if the caller is cancelled: the events are then stored
        # but unacknowledged, and a retry of them is answered ``duplicate``.
        return await asyncio.shield(done)

    async def get(self, event_id: EventId) -> StoredEvent | None:
        rows = await self._query(
            f"SELECT seq, {_COLUMNS} FROM events WHERE event_id = ?", (event_id,)
        )
        return _row_to_stored(rows[0]) if rows else None

    async def count(self) -> int:
        rows = await self._query("SELECT count(*) FROM events", ())
        return int(str(rows[0][0]))

    async def read_after(self, seq: LocalSeq, limit: int) -> list[StoredEvent]:
        rows = await self._query(
            f"SELECT seq, {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [_row_to_stored(row) for row in rows]

    async def _query(
        self, sql: str, params: tuple[object, ...]
    ) -> list[sqlite3.Row | tuple[object, ...]]:
        db = self._require_open()
        try:
            async with db.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.DatabaseError as exc:
            raise _translate(exc, "store read failed") from exc

    def _require_open(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreUnavailable("store is not open")
        return self._db

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                group = self._take_group()
                try:
                    outcomes = await self._commit([e for item in group for e in item.events])
                except StoreError as exc:
                    for item in group:
                        if not item.done.done():
                            item.done.set_exception(exc)
                    continue
                start = 0
                for item in group:
                    end = start + len(item.events)
                    if not item.done.done():
                        item.done.set_result(outcomes[start:end])
                    start = end
            if self._closing:
                return

    def _take_group(self) -> list[_Append]:
        group = [self._queue.popleft()]
        size = len(group[0].events)
        while self._queue and size + len(self._queue[0].events) <= self._max_group_events:
            item = self._queue.popleft()
            group.append(item)
            size += len(item.events)
        return group

    async def _commit(self, events: list[StorableEvent]) -> list[bool]:
        """Insert in one transaction; True for each event whose id was not stored before."""
        db = self._require_open()
        first: dict[EventId, int] = {}
        for position, event in enumerate(events):
            first.setdefault(event.event_id, position)
        unique = [events[position] for position in first.values()]
        now_ms = int(time.time() * 1000)
        inserted: set[str] = set()
        try:
            await db.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(unique), _ROWS_PER_STATEMENT):
                    chunk = unique[start : start + _ROWS_PER_STATEMENT]
                    placeholders = ",".join(["(?,?,?,?,?,?)"] * len(chunk))
                    params: list[object] = []
                    for e in chunk:
                        params += (
                            e.event_id,
                            e.event_type,
                            e.event_version,
                            e.key,
                            e.value,
                            now_ms,
                        )
                    async with db.execute(
                        f"INSERT INTO events ({_COLUMNS}) VALUES {placeholders} "
                        "ON CONFLICT(event_id) DO NOTHING RETURNING event_id",
                        params,
                    ) as cursor:
                        inserted.update(str(row[0]) for row in await cursor.fetchall())
                await db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise _translate(exc, "store commit failed") from exc
        return [
            event.event_id in inserted and first[event.event_id] == position
            for position, event in enumerate(events)
        ]


def _row_to_stored(row: sqlite3.Row | tuple[object, ...]) -> StoredEvent:
    seq, event_id, event_type, event_version, key, value, received_at_ms = row
    return StoredEvent(
        seq=LocalSeq(int(str(seq))),
        event=StorableEvent(
            event_id=EventId(str(event_id)),
            event_type=str(event_type),
            event_version=int(str(event_version)),
            key=str(key),
            value=bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode(),
        ),
        received_at_ms=int(str(received_at_ms)),
    )


def _translate(exc: sqlite3.DatabaseError, what: str) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StoreCorrupt(f"{what}: database is damaged ({exc})")
    return StoreUnavailable(f"{what}: {exc}")
