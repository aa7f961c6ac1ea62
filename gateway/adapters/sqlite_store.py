"""The local durable store: SQLite in WAL mode with ``synchronous=FULL`` and group commit.

Every ``append`` call joins the next commit: one writer task takes all calls queued while the
previous commit was syncing and commits them in one transaction, so durability costs one fsync
per group of requests, not per event. ``event_id`` is unique in the table and the writer is the
only one to insert, so two concurrent requests with the same id get one ``accepted`` and one
``duplicate`` answer, never two rows.

Reads go through a second connection: in WAL mode it sees only committed transactions, so a
read never waits for a commit's fsync and never sees rows of a commit that may yet roll back.

Beside the events the store keeps the forwarder's local mark (highest sequence known to be in
Kafka), the quarantine of events Kafka refused for good, and a size quota enforced by SQLite's
own ``max_page_count``: a full store refuses commits (``StoreUnavailable``) and changes nothing.
The file format (tables, opening and upgrading a file, rows) is
:mod:`gateway.adapters.sqlite_store_schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from gateway.adapters.sqlite_common import fetch_all, translate_sqlite_error, write_transaction
from gateway.adapters.sqlite_store_schema import (
    COLUMNS,
    FORWARDED_MARK,
    ROW_PLACEHOLDER,
    ROWS_PER_STATEMENT,
    STORE_ID,
    open_connections,
    row_to_stored,
)
from gateway.core.ids import EventId, LocalSeq
from gateway.core.ingest import StorableEvent
from gateway.core.records import Backlog, QuarantineEntry, StoredEvent
from gateway.errors import StoreError, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Append:
    events: Sequence[StorableEvent]
    done: asyncio.Future[list[bool]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class SqliteEventStore:
    """:class:`~gateway.flows.ports.EventStore` on one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        max_group_events: int = 5000,
        max_bytes: int | None = None,
        min_free_bytes: int = 0,
        on_commit: Callable[[int], None] | None = None,
        crash_hook: Callable[[str], None] | None = None,
    ) -> None:
        """``min_free_bytes`` is the device's reserve: new events are refused
        (:class:`~gateway.errors.StoreUnavailable`) while less than that is free on the store's
        device (counting pages the store itself can reuse), so that the forwarder's marks,
        pruning and WAL checkpoints, which free space, can always still write."""
        self._path = path
        self._crash_hook = crash_hook or (lambda point: None)
        """Testing: called at ``mid_store_commit`` (rows inserted, COMMIT not yet run)."""
        self._max_group_events = max_group_events
        self._max_bytes = max_bytes
        self._min_free_bytes = min_free_bytes
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: deque[_Append] = deque()
        self._wakeup = asyncio.Event()
        self._appended = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.store_id = ""
        self._on_commit = on_commit
        """Told the number of events of each group commit (for metrics)."""

    @property
    def path(self) -> Path:
        return self._path

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db, reader = await open_connections(self._path, self._max_bytes)
        self._db, self._reader = db, reader
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        async with self._transaction("create store id") as tx:
            await tx.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                (STORE_ID, str(uuid.uuid4())),
            )
        rows = await self._query("SELECT value FROM meta WHERE name = ?", (STORE_ID,))
        self.store_id = str(rows[0][0])
        """Identity of this store file: a position in Kafka counts only for the same store."""

    async def close(self) -> None:
        """Commit what is queued, then close."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        for db in (self._reader, self._db):
            if db is not None:
                await db.close()
        self._db = self._reader = None

    async def __aenter__(self) -> SqliteEventStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- ingest ---------------------------------------------------------------------------

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

    async def wait_for_append(self, max_wait: float) -> None:
        """Return when an append committed new events since the last call, or after max_wait."""
        # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
        # comes as the event is already set (stop() then never ended the forwarder)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait):
                await self._appended.wait()
        self._appended.clear()

    async def get(self, event_id: EventId) -> StoredEvent | None:
        rows = await self._query(
            f"SELECT seq, {COLUMNS} FROM events WHERE event_id = ?", (event_id,)
        )
        return row_to_stored(rows[0]) if rows else None

    async def count(self) -> int:
        rows = await self._query("SELECT count(*) FROM events", ())
        return int(str(rows[0][0]))

    async def read_after(self, seq: LocalSeq, limit: int) -> list[StoredEvent]:
        rows = await self._query(
            f"SELECT seq, {COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [row_to_stored(row) for row in rows]

    # -- forwarder bookkeeping -------------------------------------------------------------

    async def forwarded_mark(self) -> LocalSeq:
        rows = await self._query("SELECT value FROM meta WHERE name = ?", (FORWARDED_MARK,))
        return LocalSeq(int(str(rows[0][0])) if rows else 0)

    async def mark_forwarded(self, seq: LocalSeq) -> None:
        async with self._transaction("mark forwarded") as db:
            await db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE"
                " SET value = max(value, excluded.value)",
                (FORWARDED_MARK, seq),
            )

    async def backlog(self) -> Backlog:
        """Events above the forwarded mark. Rows above the mark are never deleted, so their
        count is the distance to the highest sequence: no scan of a large backlog."""
        mark = await self.forwarded_mark()
        top = await self._query("SELECT max(seq) FROM events", ())
        oldest = await self._query(
            "SELECT received_at_ms FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (mark,)
        )
        highest = int(str(top[0][0])) if top[0][0] is not None else 0
        return Backlog(
            events=max(0, highest - mark),
            oldest_received_ms=int(str(oldest[0][0])) if oldest else None,
        )

    async def quarantine(self, entries: Sequence[QuarantineEntry]) -> None:
        if not entries:
            return
        async with self._transaction("quarantine") as db:
            await db.executemany(
                "INSERT INTO quarantine (seq, event_id, reason, quarantined_at_ms)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(seq) DO NOTHING",
                [(e.seq, e.event_id, e.reason, e.quarantined_at_ms) for e in entries],
            )

    async def quarantined(self, *, include_replayed: bool = False) -> list[QuarantineEntry]:
        where = "" if include_replayed else "WHERE replayed_at_ms IS NULL"
        rows = await self._query(
            "SELECT seq, event_id, reason, quarantined_at_ms, replayed_at_ms"
            f" FROM quarantine {where} ORDER BY seq",
            (),
        )
        return [
            QuarantineEntry(
                seq=LocalSeq(int(str(seq))),
                event_id=EventId(str(event_id)),
                reason=str(reason),
                quarantined_at_ms=int(str(at)),
                replayed_at_ms=int(str(replayed)) if replayed is not None else None,
            )
            for seq, event_id, reason, at, replayed in rows
        ]

    async def replay_quarantined(self, event_ids: Sequence[EventId] | None = None) -> int:
        """Give quarantined events a new sequence so the forwarder tries them again."""
        entries = [
            e for e in await self.quarantined() if event_ids is None or e.event_id in event_ids
        ]
        now = _now_ms()
        async with self._transaction("replay quarantined") as db:
            for entry in entries:
                rows = await fetch_all(
                    db, f"SELECT {COLUMNS} FROM events WHERE seq = ?", (entry.seq,)
                )
                if rows:
                    await db.execute("DELETE FROM events WHERE seq = ?", (entry.seq,))
                    await db.execute(
                        f"INSERT INTO events ({COLUMNS}) VALUES {ROW_PLACEHOLDER}",
                        tuple(rows[0]),
                    )
                await db.execute(
                    "UPDATE quarantine SET replayed_at_ms = ? WHERE seq = ?", (now, entry.seq)
                )
        return len(entries)

    async def prune_forwarded(self, received_before_ms: int) -> int:
        """Delete forwarded events received before the cutoff (their dedup window ends)."""
        mark = await self.forwarded_mark()
        async with (
            self._transaction("prune") as db,
            db.execute(
                "DELETE FROM events WHERE seq <= ? AND received_at_ms < ?"
                " AND seq NOT IN (SELECT seq FROM quarantine WHERE replayed_at_ms IS NULL)",
                (mark, received_before_ms),
            ) as cursor,
        ):
            return max(cursor.rowcount, 0)

    # -- internals -------------------------------------------------------------------------

    async def _query(
        self, sql: str, params: tuple[object, ...]
    ) -> list[sqlite3.Row | tuple[object, ...]]:
        # The reader connection, never the writer's: a read on the writer's connection could
        # run inside a commit still open, and see rows that may yet roll back (and give their
        # sequence numbers to other events).
        if self._reader is None:
            raise StoreUnavailable("store is not open")
        try:
            return await fetch_all(self._reader, sql, params)
        except sqlite3.DatabaseError as exc:
            raise translate_sqlite_error(exc, "store read failed") from exc

    def _transaction(
        self, what: str
    ) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]:
        return write_transaction(self._require_open(), self._write_lock, f"store {what}")

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
        first: dict[EventId, int] = {}
        for position, event in enumerate(events):
            first.setdefault(event.event_id, position)
        unique = [events[position] for position in first.values()]
        now_ms = _now_ms()
        inserted: set[str] = set()
        await self._check_reserve()
        async with self._transaction("commit") as db:
            for start in range(0, len(unique), ROWS_PER_STATEMENT):
                chunk = unique[start : start + ROWS_PER_STATEMENT]
                params: list[object] = []
                for e in chunk:
                    params += (
                        e.event_id,
                        e.event_type,
                        e.event_version,
                        e.key,
                        e.source,
                        e.correlation_id,
                        e.value,
                        now_ms,
                        e.traceparent,
                        zlib.crc32(e.value),
                    )
                rows = await fetch_all(
                    db,
                    f"INSERT INTO events ({COLUMNS}) VALUES "
                    f"{','.join([ROW_PLACEHOLDER] * len(chunk))} "
                    "ON CONFLICT(event_id) DO NOTHING RETURNING event_id",
                    params,
                )
                inserted.update(str(row[0]) for row in rows)
            self._crash_hook("mid_store_commit")
        if self._on_commit is not None:
            self._on_commit(len(events))
        if inserted:
            self._appended.set()
        return [
            event.event_id in inserted and first[event.event_id] == position
            for position, event in enumerate(events)
        ]

    async def _check_reserve(self) -> None:
        """Refuse a commit while the device is within its reserve (see ``__init__``)."""
        if not self._min_free_bytes:
            return
        try:
            free = shutil.disk_usage(self._path.parent).free  # one statvfs: microseconds
        except OSError as exc:
            raise StoreUnavailable(f"free space of the store's device unknown: {exc}") from exc
        if free >= self._min_free_bytes:
            return
        rows = await self._query("SELECT * FROM pragma_freelist_count, pragma_page_size", ())
        available = free + int(str(rows[0][0])) * int(str(rows[0][1]))
        if available < self._min_free_bytes:
            raise StoreUnavailable(
                f"store device nearly full: {available} bytes available (free plus reusable "
                f"pages), below the reserve of {self._min_free_bytes}"
            )
