"""The downstream log's append: what storing a fetched batch costs the event loop, per record.

``python -m benchmarks.downstream_append [--batch 185] [--batches 300] [--channels 100]``

Batches shaped like the fan-out benchmark's at 1k connections (``Inventory.Updated`` records
of ~500 bytes round-robin over ``--channels`` stores, 50 SKUs each, 3 partitions) are appended
with :class:`~gateway.adapters.sqlite_downstream_writes.DownstreamWrites` on a WAL file with the
log's pragmas (no syncs), each in one transaction, as the consumer does; a checkpoint every 15
batches.
The statements and the ``COMMIT`` are timed apart (the commit writes every page the
transaction dirtied to the WAL). Beside it, in the same run: the same rows inserted into a bare
table (no channel index, no snapshot), and the log without a snapshot family (so no snapshot
upserts). The first 100 batches warm the file up and are not counted.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.adapters.sqlite_downstream import UNSYNCED, WRITER_PRAGMAS
from gateway.adapters.sqlite_downstream_writes import DownstreamWrites
from gateway.core.ids import KafkaOffset
from gateway.flows.downstream_ports import LogRecord

WARMUP_BATCHES = 100
SKUS = 50


@dataclass
class Timing:
    label: str
    records: int = 0
    statements_s: float = 0.0
    commit_s: float = 0.0

    def row(self, baseline: Timing | None) -> str:
        per = (self.statements_s + self.commit_s) / self.records * 1e6
        ratio = f"{per / baseline.per_record_us:5.2f}x" if baseline else "     "
        return (
            f"  {self.label:<44} {per:6.1f} us/record {ratio}  (statements"
            f" {self.statements_s / self.records * 1e6:5.1f}, commit"
            f" {self.commit_s / self.records * 1e6:5.1f})"
        )

    @property
    def per_record_us(self) -> float:
        return (self.statements_s + self.commit_s) / self.records * 1e6


class Batches:
    """Records as the consumer hands them to the log, numbered on from batch to batch."""

    def __init__(self, channels: int) -> None:
        self._channels = channels
        self._seq = 0
        self._next = [0, 0, 0]

    def next(self, size: int) -> list[LogRecord]:
        out = []
        for _ in range(size):
            store, sku = self._seq % self._channels, (self._seq // self._channels) % SKUS
            partition = (store * 7 + sku) % 3
            head = (
                b'{"event_type":"Inventory.Updated","payload":{"storeId":"s-%d","sku":"SKU-%03d"'
                % (
                    store,
                    sku,
                )
            )
            out.append(
                LogRecord(
                    "inventory.events",
                    partition,
                    KafkaOffset(self._next[partition]),
                    b"s-%d:SKU-%03d" % (store, sku),
                    head + b',"quantity":1}' + b" " * 400 + b"}",
                    (),
                    1_700_000_000_000 + self._seq,
                    (f"inventory:s-{store}",),
                )
            )
            self._next[partition] += 1
            self._seq += 1
        return out


def run(
    label: str,
    path: Path,
    create: Callable[[sqlite3.Connection], None],
    append: Callable[[sqlite3.Connection, Sequence[LogRecord]], None],
    args: argparse.Namespace,
) -> Timing:
    db = sqlite3.connect(path, isolation_level=None)
    checkpointer = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in WRITER_PRAGMAS:
            db.execute(pragma).fetchall()
        checkpointer.execute(UNSYNCED).fetchall()  # as the log's checkpoints run
        create(db)
        batches, timing = Batches(args.channels), Timing(label)
        for number in range(WARMUP_BATCHES + args.batches):
            records = batches.next(args.batch)
            started = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            append(db, records)
            written = time.perf_counter()
            db.execute("COMMIT")
            committed = time.perf_counter()
            if number >= WARMUP_BATCHES:
                timing.records += len(records)
                timing.statements_s += written - started
                timing.commit_s += committed - written
            if number % 15 == 0:
                checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return timing
    finally:
        checkpointer.close()
        db.close()


def log_append(families: Sequence[str]) -> tuple[Callable[..., None], Callable[..., None]]:
    writes = DownstreamWrites(families)

    def append(db: sqlite3.Connection, records: Sequence[LogRecord]) -> None:
        writes.committed(writes.append(db, records, {}))

    return writes.create_schema, append


def bare_table(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE records (seq INTEGER PRIMARY KEY, topic TEXT, part INTEGER,"
        " kafka_offset INTEGER, key BLOB, value BLOB, timestamp_ms INTEGER)"
    )


def bare_insert(db: sqlite3.Connection, records: Sequence[LogRecord]) -> None:
    db.executemany(
        "INSERT INTO records (topic, part, kafka_offset, key, value, timestamp_ms)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp_ms) for r in records],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.downstream_append",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--batch", type=int, default=185, help="records per append")
    parser.add_argument("--batches", type=int, default=300, help="appends measured")
    parser.add_argument("--channels", type=int, default=100)
    args = parser.parse_args()
    if args.batch < 1 or args.batches < 1 or args.channels < 1:
        parser.error("--batch, --batches and --channels must be positive")
    with tempfile.TemporaryDirectory(prefix="bench-append-") as tmp:
        base = run(
            "baseline: bare table, rows only", Path(tmp, "bare.db"), bare_table, bare_insert, args
        )
        plain = run("log, no snapshot family", Path(tmp, "plain.db"), *log_append(()), args)
        full = run(
            "log with the inventory snapshot (as served)",
            Path(tmp, "log.db"),
            *log_append(("inventory",)),
            args,
        )
    print(
        f"downstream log append: {args.batches} batches of {args.batch} records over"
        f" {args.channels} channels (after {WARMUP_BATCHES} not measured)"
    )
    print(base.row(None))
    print(plain.row(base))
    print(full.row(base))


if __name__ == "__main__":
    main()
