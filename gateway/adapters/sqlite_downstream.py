"""The downstream log on SQLite: a local cache of the update topics (``downstream.sqlite3``).

Records are keyed by (topic, partition, offset) and carry a local sequence ``seq`` in arrival
order; ``record_channels`` indexes them by (channel, seq), so a subscriber's replay is an index
range scan. ``positions`` holds, per partition, the next offset to consume and the offset from
which the log is complete (``start``).

Why ``synchronous=NORMAL`` is enough here, unlike the event store's ``FULL``: Kafka is the
source of truth and every batch's records and consumer positions are committed in one
transaction. A process crash loses nothing (WAL); a power or OS failure can only lose the last
commits whole, with their positions, and the file stays consistent. The consumer then resumes
from the older positions and reads those records again, with the same offsets: neither a gap
nor a duplicate appears in the log. (A cursor issued just before may be ahead of the log for a
moment; that is the ordinary "cursor at or past the log's next offset" case of replay.)

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

Writes go through one connection under a lock; reads use a second connection, so that a reader
never sees a transaction in progress and WAL lets it run beside the writer. SQLite errors leave
as :class:`~gateway.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import aiosqlite
import msgpack

from gateway.adapters.sqlite_common import (
    connect,
    fetch_all,
    translate_sqlite_error,
    write_transaction,
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

SCHEMA_VERSION: Final = 2
_PRUNE_CHUNK: Final = 20_000
"""Most records of one partition deleted per transaction (the writer is not held long)."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    kafka_offset INTEGER NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    channels TEXT NOT NULL,
    UNIQUE (topic, part, kafka_offset)
);
CREATE TABLE IF NOT EXISTS record_channels (
    channel TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (channel, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS record_channels_seq ON record_channels (seq);
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshot (
    channel TEXT NOT NULL,
    key BLOB NOT NULL,
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    kafka_offset INTEGER NOT NULL,
    value BLOB NOT NULL,
    headers BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS snapshot_partition ON snapshot (topic, part);
"""
_COLUMNS: Final = "topic, part, kafka_offset, key, value, headers, timestamp_ms, channels"
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
_POSITIONS_SQL: Final = "SELECT topic, part, start_offset, next_offset FROM positions"
_SNAPSHOT_SQL: Final = """
SELECT topic, part, kafka_offset, key, value, headers, timestamp_ms, json_array(channel)
FROM snapshot WHERE channel = ? AND key {after} ? ORDER BY key LIMIT ?
"""


class SqliteDownstreamLog:
    """:class:`~gateway.flows.downstream_ports.DownstreamLog` on one SQLite file."""

    def __init__(self, path: Path, *, snapshot_families: Collection[str] = ("inventory",)) -> None:
        if isinstance(snapshot_families, str):
            raise TypeError("snapshot_families is a collection of family names, not one string")
        self._path = path
        self._families = frozenset(snapshot_families)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def snapshot_families(self) -> frozenset[str]:
        return self._families

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        what = f"cannot open downstream log {self._path}"
        writer = await connect(self._path, what)
        try:
            try:
                await writer.execute("PRAGMA journal_mode=WAL")
                await writer.execute("PRAGMA synchronous=NORMAL")
                await writer.executescript(_SCHEMA)
                await writer.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except sqlite3.DatabaseError as exc:
                raise translate_sqlite_error(exc, what) from exc
            reader = await connect(self._path, what)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await writer.close()
            raise
        self._writer, self._reader = writer, reader

    async def close(self) -> None:
        async with self._write_lock, self._read_lock:
            for db in (self._reader, self._writer):
                if db is not None:
                    with contextlib.suppress(sqlite3.Error):
                        await db.close()
            self._reader = self._writer = None

    async def __aenter__(self) -> SqliteDownstreamLog:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- writes ----------------------------------------------------------------------------

    async def append_batch(
        self, records: Sequence[LogRecord], positions: Mapping[PartitionKey, KafkaOffset]
    ) -> list[LogRecord]:
        async with self._transaction("append") as db:
            known = _bounds_of(await fetch_all(db, _POSITIONS_SQL))
            nexts = {key: bounds.next for key, bounds in known.items()}
            starts: dict[PartitionKey, int] = {}
            fresh: list[LogRecord] = []
            for record in records:
                key = record.partition_key
                current = nexts.get(key)
                if current is not None and record.offset < current:
                    continue
                if current is None:
                    starts[key] = record.offset
                nexts[key] = KafkaOffset(record.offset + 1)
                fresh.append(record)
            for key, position in positions.items():
                if key not in nexts:
                    starts[key] = position
                nexts[key] = max(nexts.get(key, position), position)
            [(seq,)] = await fetch_all(db, "SELECT coalesce(max(seq), 0) FROM records")
            rows: list[tuple[object, ...]] = []
            channel_rows: list[tuple[str, int]] = []
            latest: dict[tuple[str, bytes], tuple[object, ...] | None] = {}  # None: tombstone
            for record in fresh:
                seq += 1
                row = _record_row(record)
                rows.append((seq, *row))
                channel_rows.extend((channel, seq) for channel in set(record.channels))
                if record.key is not None:
                    for channel in snapshot_channels(record, self._families):
                        latest[(channel, record.key)] = (
                            (channel, *row[:-1]) if record.value else None
                        )
            await db.executemany(
                f"INSERT INTO records (seq, {_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows
            )
            await db.executemany(
                "INSERT INTO record_channels (channel, seq) VALUES (?, ?)", channel_rows
            )
            await db.executemany(
                "DELETE FROM snapshot WHERE channel = ? AND key = ?",
                [where for where, row in latest.items() if row is None],
            )
            await db.executemany(
                "INSERT OR REPLACE INTO snapshot (channel, topic, part, kafka_offset, key, value,"
                " headers, timestamp_ms) VALUES (?,?,?,?,?,?,?,?)",
                [row for row in latest.values() if row is not None],
            )
            await db.executemany(
                "INSERT INTO positions (topic, part, start_offset, next_offset)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (topic, part)"
                " DO UPDATE SET next_offset = excluded.next_offset",
                [
                    (topic, part, starts.get((topic, part), next_offset), next_offset)
                    for (topic, part), next_offset in nexts.items()
                    if (topic, part) not in known or known[(topic, part)].next != next_offset
                ],
            )
        return fresh

    async def reset_partition(self, topic: str, partition: int, offset: KafkaOffset) -> None:
        async with self._transaction("reset partition") as db:
            await _delete_below(db, topic, partition, None)
            await db.execute(
                "DELETE FROM snapshot WHERE topic = ? AND part = ?", (topic, partition)
            )
            await db.execute(
                "INSERT INTO positions (topic, part, start_offset, next_offset)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (topic, part) DO UPDATE"
                " SET start_offset = excluded.start_offset, next_offset = excluded.next_offset",
                (topic, partition, offset, offset),
            )

    async def prune(self, older_than_ms: int) -> int:
        pruned = 0
        for topic, partition in await self.positions():
            for _ in range(1_000_000):  # ends when the partition's old prefix is gone
                deleted = await self._prune_chunk(topic, partition, older_than_ms)
                pruned += deleted
                if deleted < _PRUNE_CHUNK:
                    break
        return pruned

    async def _prune_chunk(self, topic: str, partition: int, older_than_ms: int) -> int:
        """Delete up to _PRUNE_CHUNK records of the partition's old prefix; how many."""
        where, params = "WHERE topic = ? AND part = ?", [topic, partition]
        async with self._transaction("prune") as db:
            kept = await fetch_all(
                db,
                f"SELECT kafka_offset FROM records {where} AND timestamp_ms >= ?"
                " ORDER BY kafka_offset LIMIT 1",
                [*params, older_than_ms],
            )
            if kept:
                where, params = f"{where} AND kafka_offset < ?", [*params, kept[0][0]]
            last_of_chunk = await fetch_all(
                db,
                f"SELECT kafka_offset FROM records {where} ORDER BY kafka_offset LIMIT 1 OFFSET ?",
                [*params, _PRUNE_CHUNK - 1],
            )
            cut = last_of_chunk[0][0] + 1 if last_of_chunk else (kept[0][0] if kept else None)
            deleted = await _delete_below(db, topic, partition, cut)
            if deleted is None:
                return 0
            count, highest = deleted
            await db.execute(
                "UPDATE positions SET start_offset = max(start_offset, ?)"
                " WHERE topic = ? AND part = ?",
                (highest + 1, topic, partition),
            )
            return count

    # -- reads -----------------------------------------------------------------------------

    async def positions(self) -> dict[PartitionKey, KafkaOffset]:
        return {key: b.next for key, b in _bounds_of(await self._read(_POSITIONS_SQL)).items()}

    async def bounds(self, topic: str, partition: int) -> LogBounds | None:
        return _bounds_of(await self._read(_POSITIONS_SQL)).get((topic, partition))

    async def count(self) -> int:
        return int((await self._read("SELECT count(*) FROM records"))[0][0])

    async def epoch(self) -> Epoch | None:
        rows = await self._read("SELECT value FROM meta WHERE name = 'epoch'")
        return Epoch(rows[0][0]) if rows else None

    async def begin_epoch(self, epoch: Epoch) -> None:
        async with self._transaction("begin epoch") as db:
            for table in ("record_channels", "records", "positions", "snapshot"):
                await db.execute(f"DELETE FROM {table}")
            await db.execute(
                "INSERT INTO meta (name, value) VALUES ('epoch', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (epoch,),
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
            after=after_sql, columns=_COLUMNS, channels=",".join("?" * len(wanted))
        )
        params = [v for (topic, part), offset in after.items() for v in (topic, part, offset)]
        query = (sql, [*params, *wanted, limit]) if wanted and limit > 0 else (_NO_ROWS, [])
        rows, held_rows = await self._read_together(query, (_POSITIONS_SQL, []))
        held = _bounds_of(held_rows)
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
            (sql, [channel, after_key or b"", limit + 1]), (_POSITIONS_SQL, [])
        )
        items = [_row_record(row) for row in rows[:limit]]
        positions = {key: bounds.next for key, bounds in _bounds_of(held).items()}
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

    def _require(self, db: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if db is None:
            raise StoreUnavailable("downstream log is not open")
        return db

    def _transaction(
        self, what: str
    ) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]:
        return write_transaction(
            self._require(self._writer), self._write_lock, f"downstream log {what}"
        )


def snapshot_channels(record: LogRecord, families: Collection[str]) -> list[str]:
    """The record's channels whose family (the part before ``:``) is one of ``families``."""
    return [c for c in dict.fromkeys(record.channels) if _family(c) in families]


def check_snapshot_request(channel: str, limit: int, families: Collection[str]) -> None:
    """Raise ``ValueError`` unless ``channel`` is of one of ``families`` and ``limit >= 1``."""
    if _family(channel) not in families:
        raise ValueError(f"channel {channel!r:.140} is not of a snapshot family")
    if limit < 1:
        raise ValueError(f"snapshot limit {limit} is below 1")


def _family(channel: str) -> str | None:
    family, colon, _ = channel.partition(":")
    return family if colon else None


def _bounds_of(rows: list[Any]) -> dict[PartitionKey, LogBounds]:
    return {
        (str(topic), int(part)): LogBounds(KafkaOffset(int(start)), KafkaOffset(int(next_)))
        for topic, part, start, next_ in rows
    }


async def _delete_below(
    db: aiosqlite.Connection, topic: str, partition: int, below: int | None
) -> tuple[int, int] | None:
    """Delete the partition's records below an offset (all if None); (count, highest) or None."""
    where = "topic = ? AND part = ?" + (" AND kafka_offset < ?" if below is not None else "")
    params = (topic, partition, *([below] if below is not None else []))
    [row] = await fetch_all(
        db, f"SELECT count(*), max(kafka_offset) FROM records WHERE {where}", params
    )
    if not row[0]:
        return None
    await db.execute(
        f"DELETE FROM record_channels WHERE seq IN (SELECT seq FROM records WHERE {where})",
        params,
    )
    await db.execute(f"DELETE FROM records WHERE {where}", params)
    return int(row[0]), int(row[1])


def _record_row(record: LogRecord) -> tuple[object, ...]:
    return (
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        msgpack.packb([list(header) for header in record.headers]),
        record.timestamp_ms,
        json.dumps(list(record.channels)),
    )


def _row_record(row: Any) -> LogRecord:
    topic, part, offset, key, value, headers, timestamp_ms, channels = row
    return LogRecord(
        topic=topic,
        partition=part,
        offset=KafkaOffset(offset),
        key=key,
        value=value,
        headers=tuple((str(k), bytes(v)) for k, v in msgpack.unpackb(headers)),
        timestamp_ms=timestamp_ms,
        channels=tuple(json.loads(channels)),
    )


async def _end_read(db: aiosqlite.Connection) -> None:
    await db.execute("ROLLBACK")  # a read transaction: nothing to keep
