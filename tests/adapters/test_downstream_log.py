"""The same assertions against every DownstreamLog implementation: SQLite and an in-memory
reference model (which is also the oracle of a randomized differential test)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from pathlib import Path

import pytest

from gateway.adapters import sqlite_downstream
from gateway.adapters.sqlite_downstream import SqliteDownstreamLog
from gateway.core.ids import KafkaOffset
from gateway.flows.downstream_ports import (
    DownstreamLog,
    LogBounds,
    LogPage,
    LogRecord,
    PartitionKey,
)

INV, ORD = "inventory.events", "order.events"


class MemoryDownstreamLog:
    """:class:`DownstreamLog` in memory: the reference the SQLite log is held to."""

    def __init__(self) -> None:
        self._rows: dict[int, LogRecord] = {}  # local sequence (arrival order) -> record
        self._bounds: dict[PartitionKey, LogBounds] = {}
        self._seq = 0

    async def append_batch(
        self, records: Sequence[LogRecord], positions: Mapping[PartitionKey, KafkaOffset]
    ) -> list[LogRecord]:
        fresh = []
        for record in records:
            key = record.partition_key
            held = self._bounds.get(key)
            if held is not None and record.offset < held.next:
                continue
            start = held.start if held is not None else record.offset
            self._bounds[key] = LogBounds(start, KafkaOffset(record.offset + 1))
            self._seq += 1
            self._rows[self._seq] = record
            fresh.append(record)
        for key, position in positions.items():
            start, next_ = self._bounds.get(key, (position, position))
            self._bounds[key] = LogBounds(start, max(next_, position))
        return fresh

    async def positions(self) -> dict[PartitionKey, KafkaOffset]:
        return {key: bounds.next for key, bounds in self._bounds.items()}

    async def bounds(self, topic: str, partition: int) -> LogBounds | None:
        return self._bounds.get((topic, partition))

    async def read(
        self, channels: Collection[str], after: Mapping[PartitionKey, KafkaOffset], limit: int
    ) -> LogPage:
        wanted = set(channels)
        matches = [
            r
            for _, r in sorted(self._rows.items())
            if wanted & set(r.channels) and r.offset >= after.get(r.partition_key, 0)
        ]
        page = matches[:limit] if limit > 0 else []
        complete = not wanted or (limit > 0 and len(page) < limit)
        positions = dict(after)
        if complete:
            for key, bounds in self._bounds.items():
                positions[key] = max(positions.get(key, bounds.next), bounds.next)
        else:
            for r in page:
                positions[r.partition_key] = KafkaOffset(r.offset + 1)
        return LogPage(page, positions, complete)

    async def reset_partition(self, topic: str, partition: int, offset: KafkaOffset) -> None:
        self._rows = {s: r for s, r in self._rows.items() if r.partition_key != (topic, partition)}
        self._bounds[(topic, partition)] = LogBounds(offset, offset)

    async def prune(self, older_than_ms: int) -> int:
        pruned = 0
        for key, bounds in list(self._bounds.items()):
            rows = sorted((r.offset, s) for s, r in self._rows.items() if r.partition_key == key)
            for offset, seq in rows:
                if self._rows[seq].timestamp_ms >= older_than_ms:
                    break
                del self._rows[seq]
                pruned += 1
                self._bounds[key] = bounds = LogBounds(KafkaOffset(offset + 1), bounds.next)
        return pruned

    async def count(self) -> int:
        return len(self._rows)


def rec(
    topic: str, partition: int, offset: int, *channels: str, ts: int = 1000, key: bytes = b"k"
) -> LogRecord:
    return LogRecord(
        topic=topic,
        partition=partition,
        offset=KafkaOffset(offset),
        key=key,
        value=f'{{"o":{offset}}}'.encode(),
        headers=(("event_type", b"Inventory.Updated"), ("event_id", f"{offset}".encode())),
        timestamp_ms=ts,
        channels=channels,
    )


def off(value: int) -> KafkaOffset:
    return KafkaOffset(value)


@pytest.fixture(params=["memory", "sqlite"])
async def dlog(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DownstreamLog]:
    if request.param == "memory":
        yield MemoryDownstreamLog()
        return
    async with SqliteDownstreamLog(tmp_path / "downstream.sqlite3") as sqlite_log:
        yield sqlite_log


async def test_reads_a_channel_in_per_partition_order(dlog: DownstreamLog) -> None:
    batch = [
        rec(INV, 0, 0, "inventory:s1"),
        rec(INV, 1, 0, "inventory:s2"),
        rec(INV, 0, 1, "inventory:s2"),
        rec(INV, 1, 1, "inventory:s1"),
        rec(INV, 0, 3, "inventory:s1"),  # offset 2: an aborted record or a marker
    ]
    assert await dlog.append_batch(batch, {(INV, 0): off(5), (INV, 1): off(2)}) == batch
    page = await dlog.read(["inventory:s1"], {}, 100)
    assert page.records == [batch[0], batch[3], batch[4]]
    assert page.complete
    assert page.positions == {(INV, 0): 5, (INV, 1): 2}
    assert await dlog.positions() == {(INV, 0): 5, (INV, 1): 2}
    assert await dlog.count() == 5


async def test_read_after_a_cursor_and_new_partitions_from_zero(dlog: DownstreamLog) -> None:
    await dlog.append_batch([rec(INV, 0, o, "c") for o in range(5)], {})
    await dlog.append_batch([rec(ORD, 0, o, "c") for o in range(3)], {})
    page = await dlog.read(["c"], {(INV, 0): off(3)}, 100)
    assert [(r.topic, r.offset) for r in page.records] == [(INV, 3), (INV, 4)] + [
        (ORD, o) for o in range(3)
    ]
    assert page.positions == {(INV, 0): 5, (ORD, 0): 3}
    nothing = await dlog.read(["c"], page.positions, 100)
    assert nothing.records == []
    assert nothing.complete
    assert nothing.positions == page.positions


async def test_paging_returns_every_record_once(dlog: DownstreamLog) -> None:
    records = [rec(INV, o % 3, o // 3, "c", "d") for o in range(30)]
    await dlog.append_batch(records, {})
    seen: list[LogRecord] = []
    cursor: dict[PartitionKey, KafkaOffset] = {}
    for _ in range(20):
        page = await dlog.read(["c", "d", "other"], cursor, 7)
        seen += page.records
        cursor = page.positions
        if page.complete:
            break
    assert seen == records  # a record of two subscribed channels comes once
    assert cursor == {(INV, p): 10 for p in range(3)}


async def test_a_cursor_may_name_many_partitions(dlog: DownstreamLog) -> None:
    await dlog.append_batch([rec(INV, 0, o, "c") for o in range(3)], {})
    after = {(f"other-{i}", i % 7): off(i) for i in range(800)} | {(INV, 0): off(1)}
    page = await dlog.read(["c"], after, 10)
    assert [r.offset for r in page.records] == [1, 2]
    assert page.positions == after | {(INV, 0): 3}


async def test_a_quiet_channel_cursor_moves_to_the_log_positions(dlog: DownstreamLog) -> None:
    await dlog.append_batch([rec(INV, 0, o, "busy") for o in range(10)], {(INV, 0): off(11)})
    page = await dlog.read(["quiet"], {}, 10)
    assert page.records == []
    assert page.complete
    assert page.positions == {(INV, 0): 11}
    ahead = await dlog.read(["quiet"], {(INV, 0): off(50)}, 10)
    assert ahead.positions == {(INV, 0): 50}  # never moved back
    assert (await dlog.read([], {}, 10)).complete


async def test_positions_never_move_back_and_old_records_are_ignored(dlog: DownstreamLog) -> None:
    first = [rec(INV, 0, 0, "c"), rec(INV, 0, 1, "c")]
    await dlog.append_batch(first, {(INV, 0): off(3)})
    assert await dlog.append_batch([rec(INV, 0, 1, "c"), rec(INV, 0, 2, "c")], {}) == []
    assert await dlog.append_batch([], {(INV, 0): off(1)}) == []
    assert await dlog.positions() == {(INV, 0): 3}
    later = rec(INV, 0, 4, "c")
    assert await dlog.append_batch([later], {(INV, 0): off(4)}) == [later]
    assert await dlog.positions() == {(INV, 0): 5}  # moved past the record stored
    assert (await dlog.read(["c"], {}, 10)).records == [*first, later]


async def test_bounds_of_new_partitions(dlog: DownstreamLog) -> None:
    assert await dlog.bounds(INV, 0) is None
    await dlog.append_batch([rec(INV, 0, 7, "c")], {(INV, 0): off(9), (INV, 1): off(4)})
    assert await dlog.bounds(INV, 0) == (7, 9)
    assert await dlog.bounds(INV, 1) == (4, 4)


async def test_reset_partition_forgets_its_history(dlog: DownstreamLog) -> None:
    await dlog.append_batch([rec(INV, p, o, "c") for p in (0, 1) for o in range(4)], {})
    await dlog.reset_partition(INV, 0, off(2))
    assert await dlog.bounds(INV, 0) == (2, 2)
    assert await dlog.bounds(INV, 1) == (0, 4)
    assert [r.partition for r in (await dlog.read(["c"], {}, 100)).records] == [1] * 4
    fresh = [rec(INV, 0, 2, "c"), rec(INV, 0, 3, "c")]
    assert await dlog.append_batch(fresh, {}) == fresh
    await dlog.reset_partition(ORD, 0, off(10))
    assert await dlog.positions() == {(INV, 0): 4, (INV, 1): 4, (ORD, 0): 10}


async def test_prune_removes_an_old_prefix_and_keeps_positions(dlog: DownstreamLog) -> None:
    stamps = [1, 2, 10, 3, 20]
    await dlog.append_batch(
        [rec(INV, 0, o, "c", ts=t) for o, t in enumerate(stamps)], {(INV, 0): off(6)}
    )
    await dlog.append_batch([rec(INV, 1, 0, "c", ts=1)], {})
    assert await dlog.prune(older_than_ms=5) == 3  # offsets 0, 1 of partition 0; partition 1
    assert await dlog.bounds(INV, 0) == (2, 6)
    assert await dlog.bounds(INV, 1) == (1, 1)
    left = (await dlog.read(["c"], {}, 10)).records
    assert [r.offset for r in left] == [2, 3, 4]  # ts 3 stays: it follows a newer record
    assert await dlog.prune(older_than_ms=5) == 0
    assert await dlog.positions() == {(INV, 0): 6, (INV, 1): 1}


async def test_record_fields_round_trip(dlog: DownstreamLog) -> None:
    tombstone = LogRecord(ORD, 2, off(9), None, b"", (), 123, ("orders:u1", "orders:all"))
    full = rec(ORD, 2, 10, "orders:u1", ts=456, key=b"\x00\xff")
    await dlog.append_batch([tombstone, full], {})
    assert (await dlog.read(["orders:u1"], {}, 10)).records == [tombstone, full]


async def test_sqlite_log_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "downstream.sqlite3"
    records = [rec(INV, 0, o, "c") for o in range(3)]
    async with SqliteDownstreamLog(path) as first:
        await first.append_batch(records, {(INV, 0): off(4)})
    async with SqliteDownstreamLog(path) as again:
        assert await again.positions() == {(INV, 0): 4}
        assert (await again.read(["c"], {}, 10)).records == records


async def test_sqlite_prune_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_downstream, "_PRUNE_CHUNK", 4)
    async with SqliteDownstreamLog(tmp_path / "downstream.sqlite3") as dlog:
        await dlog.append_batch([rec(INV, 0, o, "c", ts=o) for o in range(23)], {})
        assert await dlog.prune(older_than_ms=21) == 21
        assert await dlog.bounds(INV, 0) == (21, 23)
        assert [r.offset for r in (await dlog.read(["c"], {}, 10)).records] == [21, 22]


async def test_sqlite_matches_the_reference_under_random_operations(tmp_path: Path) -> None:
    """Random appends (with replays, gaps, markers), resets, prunes and paged reads give the
    same answers from both implementations."""
    keys = [(INV, 0), (INV, 1), (ORD, 0)]
    channels = ["a", "b", "c", "d"]
    for seed in range(6):
        rng = random.Random(seed)
        model = MemoryDownstreamLog()
        async with SqliteDownstreamLog(tmp_path / f"d{seed}.sqlite3") as real:
            nexts = dict.fromkeys(keys, 0)
            for step in range(50):
                roll = rng.random()
                if roll < 0.6:
                    batch: list[LogRecord] = []
                    for _ in range(rng.randint(0, 8)):
                        key = rng.choice(keys)
                        nexts[key] = max(0, nexts[key] + rng.choice([-2, 0, 0, 1, 2]))
                        picked = rng.sample(channels, rng.randint(0, 2))
                        batch.append(rec(*key, nexts[key], *picked, ts=step))
                        nexts[key] += 1
                    moved = {k: off(nexts[k] + rng.randint(0, 2)) for k in rng.sample(keys, 2)}
                    assert await real.append_batch(batch, moved) == await model.append_batch(
                        batch, moved
                    )
                elif roll < 0.7:
                    key = rng.choice(keys)
                    await real.reset_partition(*key, off(nexts[key]))
                    await model.reset_partition(*key, off(nexts[key]))
                elif roll < 0.8:
                    cutoff = step - rng.randint(0, 30)
                    assert await real.prune(cutoff) == await model.prune(cutoff)
                wanted = rng.sample(channels, rng.randint(1, 3))
                after = {k: off(rng.randint(0, nexts[k] + 1)) for k in rng.sample(keys, 2)}
                limit = rng.randint(1, 12)
                assert await real.read(wanted, after, limit) == await model.read(
                    wanted, after, limit
                ), (seed, step)
                assert await real.positions() == await model.positions()
                for key in keys:
                    assert await real.bounds(*key) == await model.bounds(*key)
