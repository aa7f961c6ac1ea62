"""The downstream log's schema and write transactions, as plain functions of a ``sqlite3``
connection: :class:`~gateway.adapters.sqlite_downstream.SqliteDownstreamLog` runs each in one
transaction of its :class:`~gateway.adapters.sqlite_common.SqliteWriter`.

:class:`DownstreamWrites` keeps, between appends, the next offsets and the highest ``seq`` as
the last append committed them: only appends move them, so an append reads neither again.
Every other write forgets them, and so does an append until it is committed.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

import msgpack

from gateway.core.ids import Epoch, KafkaOffset
from gateway.flows.downstream_ports import LogBounds, LogRecord, PartitionKey

SCHEMA_VERSION: Final = 2

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
DROP INDEX IF EXISTS snapshot_partition;
"""
"""(No index of ``snapshot`` by partition: only a partition reset, which is rare, would use it,
and every upsert paid for it in the pages each commit writes.)"""
COLUMNS: Final = "topic, part, kafka_offset, key, value, headers, timestamp_ms, channels"
"""The columns of a record row, in :class:`LogRecord` order."""
POSITIONS_SQL: Final = "SELECT topic, part, start_offset, next_offset FROM positions"

Appended = tuple[list[LogRecord], dict[PartitionKey, KafkaOffset], int]
"""What an append wrote: the fresh records, the next offsets after it, the highest ``seq``."""


class DownstreamWrites:
    """The write transactions of the downstream log, one at a time."""

    def __init__(self, snapshot_families: Collection[str]) -> None:
        self._families = frozenset(snapshot_families)
        self._nexts: dict[PartitionKey, KafkaOffset] | None = None
        """The next offsets as the last append committed them (None: read them first)."""
        self._last_seq: int | None = None
        """The highest ``seq`` as of the last append (None: read it first)."""

    def create_schema(self, db: sqlite3.Connection) -> None:
        self.forget()
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def forget(self) -> None:
        """The next append reads positions and sequence from the file again."""
        self._nexts = self._last_seq = None

    def append(
        self,
        db: sqlite3.Connection,
        records: Sequence[LogRecord],
        positions: Mapping[PartitionKey, KafkaOffset],
    ) -> Appended:
        """Insert the records past each partition's next offset, move the positions; pass
        the result to :meth:`committed` once the transaction is committed."""
        known, seq = self._nexts, self._last_seq
        self.forget()  # until this commits
        if known is None:
            known = {key: b.next for key, b in bounds_of(_all(db, POSITIONS_SQL)).items()}
        nexts = dict(known)
        starts: dict[PartitionKey, KafkaOffset] = {}
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
        if seq is None:
            [(seq,)] = _all(db, "SELECT coalesce(max(seq), 0) FROM records")
        rows: list[tuple[object, ...]] = []
        channel_rows: list[tuple[str, int]] = []
        latest: dict[tuple[str, bytes], tuple[object, ...] | None] = {}  # None: tombstone
        for record in fresh:
            seq += 1
            row = _record_row(record)
            rows.append((seq, *row))
            channel_rows.extend((channel, seq) for channel in set(record.channels))
            if record.key is not None:
                for channel in _snapshot_channels(record.channels, self._families):
                    latest[(channel, record.key)] = (channel, *row[:-1]) if record.value else None
        db.executemany(f"INSERT INTO records (seq, {COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        db.executemany("INSERT INTO record_channels (channel, seq) VALUES (?, ?)", channel_rows)
        db.executemany(
            "DELETE FROM snapshot WHERE channel = ? AND key = ?",
            [where for where, row in latest.items() if row is None],
        )
        db.executemany(  # an update in place: OR REPLACE deletes and inserts (11% more commit)
            "INSERT INTO snapshot (channel, topic, part, kafka_offset, key, value, headers,"
            " timestamp_ms) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (channel, key) DO UPDATE SET"
            " topic = excluded.topic, part = excluded.part, kafka_offset = excluded.kafka_offset,"
            " value = excluded.value, headers = excluded.headers,"
            " timestamp_ms = excluded.timestamp_ms",
            [row for row in latest.values() if row is not None],
        )
        db.executemany(
            "INSERT INTO positions (topic, part, start_offset, next_offset)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (topic, part)"
            " DO UPDATE SET next_offset = excluded.next_offset",
            [
                (topic, part, starts.get((topic, part), next_offset), next_offset)
                for (topic, part), next_offset in nexts.items()
                if known.get((topic, part)) != next_offset
            ],
        )
        return fresh, nexts, seq

    def committed(self, appended: Appended) -> None:
        """An append is committed: the next one starts from what it wrote."""
        _, self._nexts, self._last_seq = appended

    def reset_partition(
        self, db: sqlite3.Connection, topic: str, partition: int, offset: KafkaOffset
    ) -> None:
        """Drop the partition's records and snapshot rows; its history restarts at ``offset``."""
        self.forget()
        _delete_below(db, topic, partition, None)
        db.execute("DELETE FROM snapshot WHERE topic = ? AND part = ?", (topic, partition))
        db.execute(
            "INSERT INTO positions (topic, part, start_offset, next_offset)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (topic, part) DO UPDATE"
            " SET start_offset = excluded.start_offset, next_offset = excluded.next_offset",
            (topic, partition, offset, offset),
        )

    def begin_epoch(self, db: sqlite3.Connection, epoch: Epoch) -> None:
        """Empty the log and name the history it holds from now on."""
        self.forget()
        for table in ("record_channels", "records", "positions", "snapshot"):
            db.execute(f"DELETE FROM {table}")
        db.execute(
            "INSERT INTO meta (name, value) VALUES ('epoch', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (epoch,),
        )

    def prune_chunk(
        self, db: sqlite3.Connection, topic: str, partition: int, older_than_ms: int, chunk: int
    ) -> int:
        """Delete up to ``chunk`` records of the partition's prefix older than the cutoff;
        how many (positions keep their next offsets: an append's view stays true)."""
        where, params = "WHERE topic = ? AND part = ?", [topic, partition]
        kept = _all(
            db,
            f"SELECT kafka_offset FROM records {where} AND timestamp_ms >= ?"
            " ORDER BY kafka_offset LIMIT 1",
            [*params, older_than_ms],
        )
        if kept:
            where, params = f"{where} AND kafka_offset < ?", [*params, kept[0][0]]
        last_of_chunk = _all(
            db,
            f"SELECT kafka_offset FROM records {where} ORDER BY kafka_offset LIMIT 1 OFFSET ?",
            [*params, chunk - 1],
        )
        cut = last_of_chunk[0][0] + 1 if last_of_chunk else (kept[0][0] if kept else None)
        deleted = _delete_below(db, topic, partition, cut)
        if deleted is None:
            return 0
        count, highest = deleted
        db.execute(
            "UPDATE positions SET start_offset = max(start_offset, ?) WHERE topic = ? AND part = ?",
            (highest + 1, topic, partition),
        )
        return count


def snapshot_channels(record: LogRecord, families: Collection[str]) -> list[str]:
    """The record's channels whose family (the part before ``:``) is one of ``families``."""
    return list(_snapshot_channels(record.channels, frozenset(families)))


@functools.lru_cache(maxsize=4096)
def _snapshot_channels(channels: tuple[str, ...], families: frozenset[str]) -> tuple[str, ...]:
    """:func:`snapshot_channels`, worked out once per channel list (an append asks per record)."""
    return tuple(c for c in dict.fromkeys(channels) if family_of(c) in families)


@functools.lru_cache(maxsize=4096)
def _channels_text(channels: tuple[str, ...]) -> str:
    """The ``channels`` column of a record (a JSON list), encoded once per channel list."""
    return json.dumps(list(channels))


def family_of(channel: str) -> str | None:
    """The part of a channel name before ``:`` (None without one)."""
    family, colon, _ = channel.partition(":")
    return family if colon else None


def bounds_of(rows: list[Any]) -> dict[PartitionKey, LogBounds]:
    """Rows of :data:`POSITIONS_SQL` as bounds per partition."""
    return {
        (str(topic), int(part)): LogBounds(KafkaOffset(int(start)), KafkaOffset(int(next_)))
        for topic, part, start, next_ in rows
    }


def _all(db: sqlite3.Connection, sql: str, params: Sequence[object] = ()) -> list[Any]:
    return db.execute(sql, params).fetchall()


def _delete_below(
    db: sqlite3.Connection, topic: str, partition: int, below: int | None
) -> tuple[int, int] | None:
    """Delete the partition's records below an offset (all if None); (count, highest) or None."""
    where = "topic = ? AND part = ?" + (" AND kafka_offset < ?" if below is not None else "")
    params = (topic, partition, *([below] if below is not None else []))
    [row] = _all(db, f"SELECT count(*), max(kafka_offset) FROM records WHERE {where}", params)
    if not row[0]:
        return None
    db.execute(
        f"DELETE FROM record_channels WHERE seq IN (SELECT seq FROM records WHERE {where})",
        params,
    )
    db.execute(f"DELETE FROM records WHERE {where}", params)
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
        _channels_text(record.channels),
    )
