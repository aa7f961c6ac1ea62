"""The same assertions against every DownstreamLog implementation: SQLite and an in-memory
reference model (which is also the oracle of a randomized differential test)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.adapters import sqlite_downstream, sqlite_downstream_writes
from gateway.adapters.sqlite_downstream import SqliteDownstreamLog, check_snapshot_request
from gateway.adapters.sqlite_downstream_writes import snapshot_channels
from gateway.core.ids import Epoch, KafkaOffset
from gateway.flows.downstream_ports import (
    DownstreamLog,
    LogBounds,
    LogPage,
    LogRecord,
    PartitionKey,
    SnapshotPage,
)
from tests.factories import cancel_after, ticks_during

INV, ORD = "inventory.events", "order.events"


class MemoryDownstreamLog:
    """:class:`DownstreamLog` in memory: the reference the SQLite log is held to."""

    def __init__(self, snapshot_families: Collection[str] = ("inventory",)) -> None:
        self._rows: dict[int, LogRecord] = {}  # local sequence (arrival order) -> record
        self._bounds: dict[PartitionKey, LogBounds] = {}
        self._seq = 0
        self._families = frozenset(snapshot_families)
        self._snapshot: dict[tuple[str, bytes], LogRecord] = {}
        self._epoch: Epoch | None = None

    @property
    def snapshot_families(self) -> frozenset[str]:
        return self._families

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
            if record.key is None:
                continue
            for channel in snapshot_channels(record, self._families):
                if record.value:
                    self._snapshot[(channel, record.key)] = replace(record, channels=(channel,))
                else:
                    self._snapshot.pop((channel, record.key), None)
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
        self._snapshot = {
            at: r for at, r in self._snapshot.items() if r.partition_key != (topic, partition)
        }

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

    async def epoch(self) -> Epoch | None:
        return self._epoch

    async def begin_epoch(self, epoch: Epoch) -> None:
        self._rows, self._bounds, self._snapshot = {}, {}, {}
        self._epoch = epoch

    async def snapshot(
        self, channel: str, *, after_key: bytes | None = None, limit: int = 1000
    ) -> SnapshotPage:
        check_snapshot_request(channel, limit, self._families)
        keys = sorted(
            k for c, k in self._snapshot if c == channel and (after_key is None or k > after_key)
        )
        items = [self._snapshot[(channel, key)] for key in keys[:limit]]
        next_key = keys[limit - 1] if len(keys) > limit else None
        return SnapshotPage(items, await self.positions(), next_key)


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


async def test_begin_epoch_forgets_everything_and_records_the_epoch(dlog: DownstreamLog) -> None:
    assert await dlog.epoch() is None
    await dlog.append_batch([rec(INV, 0, o, "inventory:s1", key=b"k") for o in range(3)], {})
    await dlog.begin_epoch(Epoch("e2"))
    assert await dlog.epoch() == "e2"
    assert (await dlog.count(), await dlog.positions()) == (0, {})
    assert (await dlog.snapshot("inventory:s1")).items == []
    fresh = [rec(INV, 0, 0, "inventory:s1")]  # offsets start again: a re-created topic
    assert await dlog.append_batch(fresh, {}) == fresh


@pytest.mark.parametrize("forget", ["reset", "epoch"])
async def test_an_append_issued_during_a_reset_lands_after_it(
    dlog: DownstreamLog, forget: str
) -> None:
    await dlog.append_batch([rec(INV, 0, o, "c") for o in range(2000)], {})
    if forget == "reset":
        forgetting = asyncio.create_task(dlog.reset_partition(INV, 0, off(0)))
    else:
        forgetting = asyncio.create_task(dlog.begin_epoch(Epoch("e2")))
    await asyncio.sleep(0)  # under way (on a worker thread, for SQLite)
    fresh = [rec(INV, 0, 0, "c"), rec(INV, 0, 1, "c")]
    assert await dlog.append_batch(fresh, {}) == fresh
    await forgetting
    assert [r.offset for r in (await dlog.read(["c"], {}, 100)).records] == [0, 1]
    assert await dlog.positions() == {(INV, 0): 2}


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


S1, S2 = "inventory:s1", "inventory:s2"


def tomb(topic: str, partition: int, offset: int, channel: str, key: bytes) -> LogRecord:
    return replace(rec(topic, partition, offset, channel, key=key), value=b"")


async def held(dlog: DownstreamLog, channel: str) -> list[tuple[bytes | None, int]]:
    """(key, offset) of every item of a channel's snapshot, in one page."""
    return [(r.key, r.offset) for r in (await dlog.snapshot(channel, limit=10_000)).items]


async def test_snapshot_keeps_the_latest_record_per_key(dlog: DownstreamLog) -> None:
    first = [rec(INV, 0, 0, S1, key=b"a"), rec(INV, 0, 1, S1, key=b"b")]
    first.append(rec(INV, 1, 0, S1, S2, key=b"c"))
    await dlog.append_batch(first, {})
    second = [rec(INV, 0, o, S1, key=k) for o, k in ((2, b"a"), (3, b"a"), (4, b"b"))]
    await dlog.append_batch(second, {(INV, 0): off(7)})
    page = await dlog.snapshot(S1)
    assert page.items == [replace(r, channels=(S1,)) for r in (second[1], second[2], first[2])]
    assert page.next_key is None
    assert await held(dlog, S2) == [(b"c", 0)]
    await dlog.append_batch([rec(INV, 0, 5, S1, key=b"b")], {})  # below the position: ignored
    assert (await dlog.snapshot(S1)).items == page.items
    await dlog.append_batch([rec(INV, 1, 1, S1, key=b"a")], {})  # another partition: the later
    assert await held(dlog, S1) == [(b"a", 1), (b"b", 4), (b"c", 0)]


async def test_snapshot_tombstone_deletes_the_key(dlog: DownstreamLog) -> None:
    batch = [rec(INV, 0, 0, S1, key=b"a"), rec(INV, 0, 1, S1, key=b"b"), tomb(INV, 0, 2, S1, b"a")]
    await dlog.append_batch(batch, {})
    assert await held(dlog, S1) == [(b"b", 1)]
    batch = [tomb(INV, 0, 3, S1, b"b"), rec(INV, 0, 4, S1, key=b"a"), tomb(INV, 0, 5, S1, b"z")]
    await dlog.append_batch(batch, {})
    assert await held(dlog, S1) == [(b"a", 4)]


async def test_snapshot_only_of_snapshot_families_and_keyed_records(dlog: DownstreamLog) -> None:
    assert dlog.snapshot_families == {"inventory"}
    batch = [
        rec(ORD, 0, 0, "orders:u1", S1, key=b"a"),
        rec(ORD, 0, 1, "orders:u1", key=b"b"),
        replace(rec(INV, 0, 0, S1), key=None),
        rec(INV, 0, 1, "inventoryx:s1", "inventory", S2, key=b"c"),
    ]
    await dlog.append_batch(batch, {})
    assert await held(dlog, S1) == [(b"a", 0)]
    assert await held(dlog, S2) == [(b"c", 1)]
    for other in ("orders:u1", "inventoryx:s1", "inventory"):
        with pytest.raises(ValueError, match="not of a snapshot family"):
            await dlog.snapshot(other)
    with pytest.raises(ValueError, match="below 1"):
        await dlog.snapshot(S1, limit=0)


async def test_snapshot_survives_prune(dlog: DownstreamLog) -> None:
    batch = [rec(INV, 0, o, S1, ts=o, key=b"abc"[o % 3 : o % 3 + 1]) for o in range(6)]
    await dlog.append_batch(batch, {})
    before = await dlog.snapshot(S1)
    assert await dlog.prune(older_than_ms=100) == 6
    assert await dlog.count() == 0
    assert await dlog.snapshot(S1) == before
    assert [(r.key, r.offset) for r in before.items] == [(b"a", 3), (b"b", 4), (b"c", 5)]


async def test_reset_partition_drops_its_snapshot_rows(dlog: DownstreamLog) -> None:
    batch = [rec(INV, 0, 0, S1, key=b"a"), rec(INV, 1, 0, S1, key=b"b")]
    batch += [rec(ORD, 0, 0, S1, key=b"c"), rec(INV, 0, 1, S2, key=b"d")]
    await dlog.append_batch(batch, {})
    await dlog.reset_partition(INV, 0, off(5))
    assert await held(dlog, S1) == [(b"b", 0), (b"c", 0)]
    assert await held(dlog, S2) == []
    assert (await dlog.snapshot(S1)).positions == {(INV, 0): 5, (INV, 1): 1, (ORD, 0): 1}


async def test_snapshot_pages_by_key_cover_every_key_once(dlog: DownstreamLog) -> None:
    keys = [b"", b"\x00", b"\x00\x00", b"a", b"a\x00", b"b", b"\xff", b"\xff\xff"]
    keys += [f"k{i:02}".encode() for i in range(20)]
    random.Random(1).shuffle(keys)
    batch = [rec(INV, i % 3, i // 3, S1, key=k) for i, k in enumerate(keys)]
    await dlog.append_batch(batch, {})
    for limit in (1, 3, 7, len(keys), 100):
        seen: list[bytes | None] = []
        after: bytes | None = None
        pages = 0
        while pages <= len(keys):
            page = await dlog.snapshot(S1, after_key=after, limit=limit)
            pages += 1
            assert len(page.items) <= limit
            seen += [r.key for r in page.items]
            after = page.next_key
            if after is None:
                break
        assert seen == sorted(keys), limit
        assert pages == -(-len(keys) // limit)  # no empty last page


async def test_snapshot_positions_are_the_log_positions_at_the_read(dlog: DownstreamLog) -> None:
    await dlog.append_batch([rec(INV, 0, 0, S1, key=b"a")], {(INV, 0): off(3), (ORD, 1): off(9)})
    page = await dlog.snapshot(S1)
    assert page.positions == await dlog.positions() == {(INV, 0): 3, (ORD, 1): 9}
    await dlog.append_batch([rec(INV, 0, 3, S1, key=b"a")], {(INV, 2): off(1)})
    assert page.positions == {(INV, 0): 3, (ORD, 1): 9}  # the answer is not a live view
    assert (await dlog.snapshot(S1)).positions == {(INV, 0): 4, (ORD, 1): 9, (INV, 2): 1}


async def test_snapshot_items_and_positions_are_read_together(dlog: DownstreamLog) -> None:
    """While batches arrive, every snapshot holds exactly the records below its positions."""

    async def write() -> None:
        for o in range(300):
            await dlog.append_batch([rec(INV, 0, o, S1, key=b"%d" % (o % 7))], {})
            await asyncio.sleep(0)

    writer = asyncio.create_task(write())
    seen: set[int] = set()
    try:
        while not writer.done():
            page = await dlog.snapshot(S1)
            below = page.positions.get((INV, 0), off(0))
            expected = {b"%d" % (o % 7): o for o in range(below)}
            assert {r.key: r.offset for r in page.items} == expected, below
            seen.add(below)
            await asyncio.sleep(0)
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    assert len(seen) > 3  # the reads did interleave with the writes


@pytest.mark.parametrize("forget", ["reset", "epoch"])
async def test_sqlite_forgetting_a_long_history_lets_the_loop_run(
    tmp_path: Path, forget: str
) -> None:
    async with SqliteDownstreamLog(tmp_path / "downstream.sqlite3") as dlog:
        for start in range(0, 40_000, 5_000):
            await dlog.append_batch([rec(INV, 0, start + o, "c") for o in range(5_000)], {})
        if forget == "reset":
            forgetting = dlog.reset_partition(INV, 0, off(0))
        else:
            forgetting = dlog.begin_epoch(Epoch("e2"))
        assert await ticks_during(forgetting) >= 1  # held on the loop, it saw none
        assert await dlog.count() == 0


async def test_sqlite_log_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "downstream.sqlite3"
    records = [rec(INV, 0, o, "c") for o in range(3)]
    async with SqliteDownstreamLog(path) as first:
        await first.begin_epoch(Epoch("e1"))
        await first.append_batch(records, {(INV, 0): off(4)})
    async with SqliteDownstreamLog(path) as again:
        assert await again.epoch() == "e1"
        assert await again.positions() == {(INV, 0): 4}
        assert (await again.read(["c"], {}, 10)).records == records


async def test_sqlite_snapshot_families_are_configurable_and_survive_reopening(
    tmp_path: Path,
) -> None:
    path = tmp_path / "downstream.sqlite3"
    with pytest.raises(TypeError, match="not one string"):
        SqliteDownstreamLog(path, snapshot_families="orders")
    async with SqliteDownstreamLog(path, snapshot_families=("orders", "stock")) as first:
        assert first.snapshot_families == {"orders", "stock"}
        await first.append_batch([rec(ORD, 0, 0, "orders:u1", S1, key=b"a")], {})
        with pytest.raises(ValueError, match="not of a snapshot family"):
            await first.snapshot(S1)
    async with SqliteDownstreamLog(path, snapshot_families=["orders"]) as again:
        assert await held(again, "orders:u1") == [(b"a", 0)]


async def test_sqlite_prune_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_downstream, "_PRUNE_CHUNK", 4)
    async with SqliteDownstreamLog(tmp_path / "downstream.sqlite3") as dlog:
        await dlog.append_batch([rec(INV, 0, o, "c", ts=o) for o in range(23)], {})
        assert await dlog.prune(older_than_ms=21) == 21
        assert await dlog.bounds(INV, 0) == (21, 23)
        assert [r.offset for r in (await dlog.read(["c"], {}, 10)).records] == [21, 22]


async def test_sqlite_matches_the_reference_under_random_operations(tmp_path: Path) -> None:
    """Random appends (with replays, gaps, markers, tombstones), resets, prunes, paged reads
    and snapshot pages give the same answers from both implementations."""
    keys = [(INV, 0), (INV, 1), (ORD, 0)]
    channels = [S1, S2, "orders:c", "d"]
    record_keys = [b"x", b"y", b"z", b"", None]
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
                        record = rec(*key, nexts[key], *picked, ts=step)
                        record = replace(record, key=rng.choice(record_keys))
                        batch.append(replace(record, value=b"") if rng.random() < 0.2 else record)
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
                channel, after_key = rng.choice([S1, S2]), rng.choice(record_keys)
                limit = rng.randint(1, 3)
                assert await real.snapshot(
                    channel, after_key=after_key, limit=limit
                ) == await model.snapshot(channel, after_key=after_key, limit=limit), (seed, step)


@pytest.mark.parametrize("steps", range(1, 8))
async def test_a_cancelled_read_leaves_the_log_readable_and_current(
    dlog: DownstreamLog, steps: int
) -> None:
    """A replay task is cancelled when its client drops mid-replay, at any point of any of its
    reads. Every later read must still see every commit: a statement left active on the read
    connection would pin the old snapshot, and a replay going live on such a page skips what was
    committed since (a gap)."""
    await dlog.append_batch([rec(INV, 0, o, "c") for o in range(50)], {})
    reads: list[Callable[[], Awaitable[object]]] = [
        lambda: dlog.read(["c"], {}, 100),
        lambda: dlog.bounds(INV, 0),
        lambda: dlog.positions(),
    ]
    offset = 50
    for _ in range(2):
        for start in reads:
            await cancel_after(start, steps)
            await dlog.append_batch([rec(INV, 0, offset, "c")], {})
            offset += 1
            assert await dlog.positions() == {(INV, 0): off(offset)}
            assert (await dlog.bounds(INV, 0)) == LogBounds(off(0), off(offset))
            page = await dlog.read(["c"], {}, 1000)
            assert (len(page.records), page.positions) == (offset, {(INV, 0): off(offset)})


async def test_sqlite_append_that_fails_half_way_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log keeps what the last append committed, to read it no more: an append that fails
    after it began must leave neither rows nor a stale view behind (the same records then go
    in whole, once)."""
    async with SqliteDownstreamLog(tmp_path / "downstream.sqlite3") as sqlite_log:
        await sqlite_log.append_batch([rec(INV, 0, 0, "c")], {})
        row_of = sqlite_downstream_writes._record_row

        def fail_at_2(record: LogRecord) -> tuple[object, ...]:
            if record.offset == 2:
                raise RuntimeError("encoding failed")
            return row_of(record)

        batch = [rec(INV, 0, o, "c") for o in (1, 2, 3)]
        monkeypatch.setattr(sqlite_downstream_writes, "_record_row", fail_at_2)
        with pytest.raises(RuntimeError, match="encoding failed"):
            await sqlite_log.append_batch(batch, {(INV, 1): off(7)})
        assert (await sqlite_log.count(), await sqlite_log.positions()) == (1, {(INV, 0): 1})
        monkeypatch.setattr(sqlite_downstream_writes, "_record_row", row_of)
        assert await sqlite_log.append_batch(batch, {(INV, 1): off(7)}) == batch
        assert await sqlite_log.positions() == {(INV, 0): 4, (INV, 1): 7}
        page = await sqlite_log.read(["c"], {}, 100)
        assert [r.offset for r in page.records] == [0, 1, 2, 3]


async def test_sqlite_checkpoints_keep_the_wal_bounded(tmp_path: Path) -> None:
    """The writer never checkpoints (that would hold the event loop): the checkpointer must,
    or the WAL grows with every record ever written."""
    path = tmp_path / "downstream.sqlite3"
    wal = path.with_name(path.name + "-wal")
    value = b"v" * 2000
    async with SqliteDownstreamLog(path, checkpoint_interval_s=0.0) as sqlite_log:
        largest = 0
        for batch in range(150):
            records = [
                replace(rec(INV, 0, batch * 20 + i, f"c{i}"), value=value) for i in range(20)
            ]
            await sqlite_log.append_batch(records, {})
            async with asyncio.timeout(10):  # the checkpoint it started, on aiosqlite's thread
                await sqlite_log._checkpoints.settled()
            largest = max(largest, wal.stat().st_size)
        assert await sqlite_log.count() == 3000
    written = 3000 * len(value)
    assert largest < written / 4, (largest, written)
