"""The downstream log on SQLite: a local cache of the update topics (``downstream.sqlite3``).

Records are keyed by (topic, partition, offset) and carry a local sequence ``seq`` in arrival
order; ``record_channels`` indexes them by (channel, seq), so a subscriber's replay is an index
range scan. ``positions`` holds, per partition, the next offset to consume and the offset from
which the log is complete (``start``).

Why ``synchronous=OFF`` (no sync at all, not even at checkpoints), unlike the event store's
``FULL``: Kafka is the source of truth and every batch's records and consumer positions are
committed in one transaction. A process crash loses nothing: what SQLite wrote is in the
kernel's page cache. Only a stop of the machine (power, kernel crash) can tear the file, so
while the log is open an :class:`~gateway.adapters.open_marker.OpenMarker` next to it names
the boot it was opened in; if the machine stopped with the log open, the next open discards
the file and the log refills from Kafka (cursors older than it are replayed from Kafka or
reset, as for any log that does not go back far enough). With ``NORMAL``, each checkpoint's
syncs stalled the writer's next commits on the event loop (ext4): in seven pairs of fan-out
phases at 1k connections and 50k updates/s (two on tmpfs), p50 was 17-33 ms lower in all seven
and p99 lower in five (the README has the figures; the log on tmpfs did as well as ``OFF``).

Each new record gets ``seq = max(seq) + 1``, so within a partition ``seq`` grows with the
offset: a read finds its lower ``seq`` bound from the cursor's offsets with one index seek per
partition, then scans only ``record_channels`` rows of the wanted channels above it.

``snapshot`` is the compacted view of the channels of the snapshot families (e.g. every
``inventory:<storeId>``): per (channel, key), the latest record, upserted (or deleted, for a
tombstone) by ``append_batch`` in the transaction that stores the records and moves the
positions, so it always reflects exactly the records below the positions. ``prune`` leaves it
alone; ``reset_partition`` deletes the rows that came from that partition. It starts empty
when a family is added to an existing file (or the file predates schema version 2): it then
reflects only what arrives from then on.

Writes run on a :class:`~gateway.adapters.sqlite_common.SqliteWriter`, each transaction whole
in one call on the event loop (:mod:`gateway.adapters.sqlite_downstream_writes`), except a
partition's reset and a new epoch, which delete whole histories and run on a worker thread
(the loop goes on meanwhile; the other writes wait); reads use a
second connection (aiosqlite, on its thread), so that a reader never sees a transaction in
progress and WAL lets it run beside the writer. SQLite errors leave as
:class:`~gateway.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite
import msgpack

from gateway.adapters.open_marker import OpenMarker, current_boot_id
from gateway.adapters.sqlite_common import (
    SqliteWriter,
    WalCheckpointer,
    connect,
    fetch_all,
    translate_sqlite_error,
)
from gateway.adapters.sqlite_downstream_writes import (
    COLUMNS,
    POSITIONS_SQL,
    DownstreamWrites,
    bounds_of,
    family_of,
)
from gateway.core.ids import Epoch, KafkaOffset
from gateway.errors import StoreUnavailable
from gateway.flows.downstream_ports import (
    LogBounds,
    LogPage,
    LogRecord,
    PartitionKey,
    SnapshotPage,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

UNSYNCED: Final = "PRAGMA synchronous=OFF"
"""On the writer and on the checkpoints' connection (a checkpoint syncs as the connection that
runs it is set to); see the module docstring."""
WRITER_PRAGMAS: Final = ("PRAGMA journal_mode=WAL", UNSYNCED, "PRAGMA wal_autocheckpoint=0")
"""The writer's settings: WAL, no syncs, no checkpoint run by a commit (they run on a thread)."""

_PRUNE_CHUNK: Final = 1000
"""Most records of one partition deleted per transaction: a transaction holds the event loop
(see SqliteWriter), a chunk a few milliseconds, and the loop runs between chunks."""

_READ_SQL: Final = """
WITH after(topic, part, next_offset) AS ({after}),
lowest(seq) AS (
    SELECT min((SELECT r.seq FROM records r
                WHERE r.topic = p.topic AND r.part = p.part
                  AND r.kafka_offset >= coalesce(a.next_offset, 0)
                ORDER BY r.kafka_offset LIMIT 1))
    FROM positions p LEFT JOIN after a ON a.topic = p.topic AND a.part = p.part
)
SELECT {columns} FROM records r
WHERE r.seq IN (SELECT c.seq FROM record_channels c
                WHERE c.channel IN ({channels}) AND c.seq >= (SELECT seq FROM lowest))
  AND r.kafka_offset >= coalesce(
        (SELECT a.next_offset FROM after a WHERE a.topic = r.topic AND a.part = r.part), 0)
ORDER BY r.seq
LIMIT ?
"""
_NO_ROWS: Final = "SELECT NULL, NULL, NULL WHERE 0"
_SNAPSHOT_SQL: Final = """
SELECT topic, part, kafka_offset, key, value, headers, timestamp_ms, json_array(channel)
FROM snapshot WHERE channel = ? AND key {after} ? ORDER BY key LIMIT ?
"""


class SqliteDownstreamLog:
    """:class:`~gateway.flows.downstream_ports.DownstreamLog` on one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        snapshot_families: Collection[str] = ("inventory",),
        checkpoint_interval_s: float = 0.5,
        boot_id: Callable[[], str | None] = current_boot_id,
    ) -> None:
        """``checkpoint_interval_s``: the least time between two WAL checkpoints (each runs
        off the event loop, see :class:`~gateway.adapters.sqlite_common.WalCheckpointer`).
        ``boot_id`` names the machine's current boot (see the module docstring)."""
        if isinstance(snapshot_families, str):
            raise TypeError("snapshot_families is a collection of family names, not one string")
        self._path = path
        self._families = frozenset(snapshot_families)
        self._writer: SqliteWriter | None = None
        self._reader: aiosqlite.Connection | None = None
        self._read_lock = asyncio.Lock()
        self._writes = DownstreamWrites(self._families)
        self._checkpoints = WalCheckpointer(
            path, f"downstream log {path}", checkpoint_interval_s, pragmas=(UNSYNCED,)
        )
        self._marker = OpenMarker(path.with_name(path.name + ".open"), boot_id)
        self._marked = False

    @property
    def path(self) -> Path:
        return self._path

    @property
    def checkpoints_held_s(self) -> float:
        """Time the writes waited for a checkpoint to copy the WAL's last frames, in all."""
        return self._checkpoints.held_s

    @property
    def snapshot_families(self) -> frozenset[str]:
        return self._families

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._mark_open)
        what = f"cannot open downstream log {self._path}"
        writer = SqliteWriter(self._path, f"downstream log {self._path}")
        writer.open(*WRITER_PRAGMAS)
        try:
            writer.run(self._writes.create_schema, "creating the schema")
            reader = await connect(self._path, what)
            try:
                await self._checkpoints.open()
            except BaseException:
                await reader.close()
                raise
        except BaseException:
            writer.close()
            raise
        self._writer, self._reader = writer, reader

    async def close(self) -> None:
        async with self._read_lock:
            if self._reader is not None:
                with contextlib.suppress(sqlite3.Error):
                    await self._reader.close()
            self._reader = None
        await self._checkpoints.close()
        if self._writer is not None:
            await self._writer.idle()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._marked:
            await asyncio.to_thread(self._marker.mark_closed, _database_files(self._path))
            self._marked = False

    def _mark_open(self) -> None:
        if self._marker.left_by_a_stopped_machine():
            log.warning(
                "downstream log %s was open when the machine stopped: discarded (it may be"
                " torn); it refills from Kafka",
                self._path,
            )
            try:
                for file in _database_files(self._path):
                    file.unlink(missing_ok=True)
            except OSError as exc:
                raise StoreUnavailable(f"cannot discard {self._path}: {exc}") from exc
        self._marker.mark_open()
        self._marked = True

    async def __aenter__(self) -> SqliteDownstreamLog:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- writes ----------------------------------------------------------------------------

    async def append_batch(
        self, records: Sequence[LogRecord], positions: Mapping[PartitionKey, KafkaOffset]
    ) -> list[LogRecord]:
        appended = await self._write(
            lambda db: self._writes.append(db, records, positions), "append"
        )
        self._writes.committed(appended)
        return appended[0]

    async def reset_partition(self, topic: str, partition: int, offset: KafkaOffset) -> None:
        await self._write(
            lambda db: self._writes.reset_partition(db, topic, partition, offset),
            "reset partition",
            in_thread=True,  # it deletes the partition's whole history
        )

    async def prune(self, older_than_ms: int) -> int:
        pruned = 0
        for topic, partition in await self.positions():
            chunk = functools.partial(
                self._writes.prune_chunk,
                topic=topic,
                partition=partition,
                older_than_ms=older_than_ms,
                chunk=_PRUNE_CHUNK,
            )
            for _ in range(1_000_000):  # ends when the partition's old prefix is gone
                deleted = await self._write(chunk, "prune")
                await asyncio.sleep(0)  # a long prune lets the loop run between chunks
                pruned += deleted
                if deleted < _PRUNE_CHUNK:
                    break
        return pruned

    # -- reads -----------------------------------------------------------------------------

    async def positions(self) -> dict[PartitionKey, KafkaOffset]:
        return {key: b.next for key, b in bounds_of(await self._read(POSITIONS_SQL)).items()}

    async def bounds(self, topic: str, partition: int) -> LogBounds | None:
        return bounds_of(await self._read(POSITIONS_SQL)).get((topic, partition))

    async def count(self) -> int:
        return int((await self._read("SELECT count(*) FROM records"))[0][0])

    async def epoch(self) -> Epoch | None:
        rows = await self._read("SELECT value FROM meta WHERE name = 'epoch'")
        return Epoch(rows[0][0]) if rows else None

    async def begin_epoch(self, epoch: Epoch) -> None:
        await self._write(
            lambda db: self._writes.begin_epoch(db, epoch), "begin epoch", in_thread=True
        )

    async def read(
        self,
        channels: Collection[str],
        after: Mapping[PartitionKey, KafkaOffset],
        limit: int,
    ) -> LogPage:
        wanted = sorted(set(channels))
        after_sql = "VALUES " + ",".join(["(?,?,?)"] * len(after)) if after else _NO_ROWS
        sql = _READ_SQL.format(
            after=after_sql, columns=COLUMNS, channels=",".join("?" * len(wanted))
        )
        params = [v for (topic, part), offset in after.items() for v in (topic, part, offset)]
        query = (sql, [*params, *wanted, limit]) if wanted and limit > 0 else (_NO_ROWS, [])
        rows, held_rows = await self._read_together(query, (POSITIONS_SQL, []))
        held = bounds_of(held_rows)
        records = [_row_record(row) for row in rows]
        positions = dict(after)
        complete = not wanted or (limit > 0 and len(records) < limit)
        if complete:
            for key, bounds in held.items():
                positions[key] = max(positions.get(key, bounds.next), bounds.next)
        else:
            for record in records:
                positions[record.partition_key] = KafkaOffset(record.offset + 1)
        return LogPage(records, positions, complete)

    async def snapshot(
        self, channel: str, *, after_key: bytes | None = None, limit: int = 1000
    ) -> SnapshotPage:
        check_snapshot_request(channel, limit, self._families)
        sql = _SNAPSHOT_SQL.format(after=">=" if after_key is None else ">")  # b"" is a key
        rows, held = await self._read_together(
            (sql, [channel, after_key or b"", limit + 1]), (POSITIONS_SQL, [])
        )
        items = [_row_record(row) for row in rows[:limit]]
        positions = {key: bounds.next for key, bounds in bounds_of(held).items()}
        return SnapshotPage(items, positions, items[-1].key if len(rows) > limit else None)

    # -- internals -------------------------------------------------------------------------

    async def _read_together(self, *statements: tuple[str, Sequence[object]]) -> list[list[Any]]:
        """Statements on the reader connection in one read transaction (one snapshot)."""
        async with self._read_lock:
            db = self._require(self._reader)
            try:
                try:
                    # BEGIN inside the try: a cancelled BEGIN still runs on aiosqlite's thread,
                    # and a reader left inside a transaction fails every later read
                    await db.execute("BEGIN")
                    return [await fetch_all(db, sql, params) for sql, params in statements]
                finally:
                    with contextlib.suppress(sqlite3.Error):  # "no transaction": none to end
                        await asyncio.shield(_end_read(db))
            except sqlite3.DatabaseError as exc:
                raise translate_sqlite_error(exc, "downstream log read failed") from exc

    async def _read(self, sql: str) -> list[Any]:
        """One statement on the reader connection (its own snapshot)."""
        async with self._read_lock:
            try:
                return await fetch_all(self._require(self._reader), sql)
            except sqlite3.DatabaseError as exc:
                raise translate_sqlite_error(exc, "downstream log read failed") from exc

    async def _write(
        self, work: Callable[[sqlite3.Connection], T], what: str, *, in_thread: bool = False
    ) -> T:
        """``work`` in one write transaction, on the event loop or ``in_thread`` (see
        SqliteWriter), after any transaction still running on a thread and while no checkpoint
        holds the writes (see WalCheckpointer)."""
        writer = self._writer
        if writer is None:
            raise StoreUnavailable("downstream log is not open")
        while not (writer.is_idle and self._checkpoints.is_writable):  # both, with no await between
            await writer.idle()
            await self._checkpoints.writable()
        what = f"downstream log {what}"
        if in_thread:
            result = await writer.transaction_in_thread(work, what)
        else:
            result = writer.transaction(work, what)
        self._checkpoints.due()
        return result

    def _require(self, db: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if db is None:
            raise StoreUnavailable("downstream log is not open")
        return db


def check_snapshot_request(channel: str, limit: int, families: Collection[str]) -> None:
    """Raise ``ValueError`` unless ``channel`` is of one of ``families`` and ``limit >= 1``."""
    if family_of(channel) not in families:
        raise ValueError(f"channel {channel!r:.140} is not of a snapshot family")
    if limit < 1:
        raise ValueError(f"snapshot limit {limit} is below 1")


def _row_record(row: Any) -> LogRecord:
    topic, part, offset, key, value, headers, timestamp_ms, channels = row
    # Positional, and the headers as msgpack gives them: a replay storm decodes every row.
    return LogRecord(
        topic,
        part,
        KafkaOffset(offset),
        key,
        value,
        msgpack.unpackb(headers, use_list=False),  # ((str, bytes), ...), as _record_row packed
        timestamp_ms,
        _channels_of(channels),
    )


@functools.lru_cache(maxsize=4096)
def _channels_of(text: str) -> tuple[str, ...]:
    """A row's channels (a JSON list): the same few texts again and again, parsed once."""
    return tuple(json.loads(text))


async def _end_read(db: aiosqlite.Connection) -> None:
    await db.execute("ROLLBACK")  # a read transaction: nothing to keep


def _database_files(path: Path) -> tuple[Path, ...]:
    """The database file and SQLite's files beside it."""
    return (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")))
