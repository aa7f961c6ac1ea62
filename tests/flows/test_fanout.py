"""Fan-out over the in-memory downstream log: from now, replay then live, isolation, slow
subscribers, resets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace

import pytest

from gateway.core.cursor import Cursor
from gateway.core.ids import Epoch, KafkaOffset
from gateway.core.replay import SubscriptionPhase
from gateway.errors import KafkaUnavailable
from gateway.flows.downstream_ports import LogPage, LogRecord, OffsetRange, PartitionKey
from gateway.flows.fanout import KAFKA_REPLAY_MISSING, Fanout
from gateway.flows.subscription import (
    CaughtUp,
    Item,
    Reset,
    Subscription,
    SubscriptionClosed,
    Update,
)
from tests.adapters.test_downstream_log import INV, ORD, MemoryDownstreamLog, rec

EPOCH = Epoch("e1")
S1, S2 = "inventory:s1", "inventory:s2"


async def publish(dlog: MemoryDownstreamLog, fanout: Fanout, records: Sequence[LogRecord]) -> None:
    """What the consumer does: commit to the log, then tell the listener."""
    fresh = await dlog.append_batch(records, {})
    if fresh:
        fanout.on_records(fresh)


def drain(sub: Subscription) -> list[Item]:
    items: list[Item] = []
    while sub.queued:
        items.append(sub._queue.popleft())
    return items


async def next_data(sub: Subscription) -> Update | Reset:
    """The next item that is not a :class:`CaughtUp` marker."""
    async with asyncio.timeout(5):
        while not isinstance(item := await sub.next_item(), Update | Reset):
            pass
    return item


def offsets(items: Sequence[Item]) -> list[tuple[int, int]]:
    return [(i.record.partition, i.record.offset) for i in items if isinstance(i, Update)]


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_from_now_gets_only_new_records_of_its_channel() -> None:
    dlog = MemoryDownstreamLog()
    fanout = Fanout(dlog, EPOCH)
    await publish(dlog, fanout, [rec(INV, 0, 0, S1), rec(INV, 0, 1, S1)])
    sub = fanout.subscribe(S1, None)
    await settle()
    await publish(dlog, fanout, [rec(INV, 0, 2, S1), rec(INV, 0, 3, S2), rec(INV, 1, 0, S1)])
    caught_up = await sub.next_item()
    assert caught_up == CaughtUp(Cursor(EPOCH, {INV: {0: 2}}))
    first = await sub.next_item()
    assert isinstance(first, Update)
    assert first.cursor_after.position(INV, 0) == 3
    assert offsets([first, *drain(sub)]) == [(0, 2), (1, 0)]
    await fanout.close()


async def test_from_now_with_consumer_positions_is_live_at_once() -> None:
    dlog = MemoryDownstreamLog()
    fanout = Fanout(dlog, EPOCH, now=lambda: {(INV, 0): KafkaOffset(5)})
    sub = fanout.subscribe(S1, None)
    fanout.on_records([rec(INV, 0, 4, S1), rec(INV, 0, 5, S1)])  # 4 is before "now"
    assert offsets(drain(sub)) == [(0, 5)]


async def test_cursor_replays_after_it_then_goes_live() -> None:
    dlog = MemoryDownstreamLog()
    fanout = Fanout(dlog, EPOCH, page_size=2)
    await publish(dlog, fanout, [rec(INV, 0, o, S1) for o in range(6)])
    sub = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 3}}))
    got = [await sub.next_item() for _ in range(4)]
    assert offsets(got) == [(0, 3), (0, 4), (0, 5)]
    assert got[3] == CaughtUp(Cursor(EPOCH, {INV: {0: 6}}))
    await settle()
    await publish(dlog, fanout, [rec(INV, 0, 6, S1)])
    last = await sub.next_item()
    assert offsets([last]) == [(0, 6)]
    assert isinstance(last, Update)
    assert last.cursor_after == Cursor(EPOCH, {INV: {0: 7}})
    await fanout.close()


class InterleavingLog(MemoryDownstreamLog):
    """Publishes live records while a read is in flight: before its snapshot on even reads,
    after it (the racy case) on odd reads."""

    def __init__(self) -> None:
        super().__init__()
        self.fanout: Fanout | None = None
        self.next_offset = 0
        self.reads = 0

    async def read(
        self, channels: Collection[str], after: Mapping[PartitionKey, KafkaOffset], limit: int
    ) -> LogPage:
        self.reads += 1
        racy = self.reads % 2 == 0
        if not racy:
            await self._publish_one()
        page = await super().read(channels, after, limit)
        if racy:
            await self._publish_one()
        await asyncio.sleep(0)
        return page

    async def _publish_one(self) -> None:
        if self.fanout is not None and self.reads <= 12:
            record = rec(INV, self.next_offset % 2, self.next_offset // 2, S1)
            self.next_offset += 1
            assert self.fanout is not None
            await publish(self, self.fanout, [record])


async def test_no_gap_and_no_duplicate_at_the_seam_under_interleaving() -> None:
    dlog = InterleavingLog()
    fanout = Fanout(dlog, EPOCH, page_size=3)
    dlog.fanout = fanout
    for _ in range(10):
        await dlog._publish_one()
    sub = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 2, 1: 1}}))
    await settle()
    await publish(dlog, fanout, [rec(INV, 0, 100, S1)])
    got = offsets(drain(sub))
    assert dlog.reads >= 4  # several pages, with records arriving before and during reads
    assert dlog.next_offset == 10 + dlog.reads
    assert sub.phase is SubscriptionPhase.LIVE
    assert len(got) == len(set(got))
    expected = [(p, o) for p, o in ((n % 2, n // 2) for n in range(dlog.next_offset))]
    expected = [(p, o) for p, o in expected if o >= (2 if p == 0 else 1)] + [(0, 100)]
    assert sorted(got) == sorted(expected)
    for partition in (0, 1):  # per-partition order
        mine = [o for p, o in got if p == partition]
        assert mine == sorted(mine)
    await fanout.close()


async def test_channels_are_isolated() -> None:
    dlog = MemoryDownstreamLog()
    fanout = Fanout(dlog, EPOCH)
    one, two = fanout.subscribe(S1, None), fanout.subscribe(S2, None)
    await settle()
    await publish(dlog, fanout, [rec(INV, 0, 0, S1), rec(INV, 0, 1, S2), rec(INV, 0, 2, S1, S2)])
    assert offsets(drain(one)) == [(0, 0), (0, 2)]
    assert offsets(drain(two)) == [(0, 1), (0, 2)]
    with pytest.raises(ValueError, match="invalid channel"):
        fanout.subscribe("../etc", None)


async def test_a_full_queue_falls_behind_to_the_log_and_misses_nothing() -> None:
    dlog = MemoryDownstreamLog()
    fanout = Fanout(dlog, EPOCH, max_queue=4, page_size=3)
    behind, fast = fanout.subscribe(S1, None), fanout.subscribe(S1, None)
    await settle()
    received: list[tuple[int, int]] = []
    for o in range(10):
        await publish(dlog, fanout, [rec(INV, 0, o, S1)])
        received += offsets(drain(fast))
    assert received == [(0, o) for o in range(10)]
    assert behind.fell_behind == 1
    assert behind.queued <= 4  # bounded while the client does not read
    assert fast.fell_behind == 0
    got = [await behind.next_item() for _ in range(11)]
    assert isinstance(got[0], CaughtUp)  # from subscribing "from now"
    assert offsets(got[1:]) == [(0, o) for o in range(10)]
    await settle()
    assert behind.phase is SubscriptionPhase.LIVE
    await publish(dlog, fanout, [rec(INV, 0, 10, S1)])
    assert offsets([await behind.next_item()]) == [(0, 10)]  # "live" is said once only
    await fanout.close()


async def test_a_resuming_subscriber_far_behind_is_paced_not_slow() -> None:
    dlog = MemoryDownstreamLog()
    fanout = Fanout(dlog, EPOCH, max_queue=3, page_size=10)
    await publish(dlog, fanout, [rec(INV, 0, o, S1) for o in range(20)])
    sub = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 0}}))
    got = [await sub.next_item() for _ in range(20)]
    assert offsets(got) == [(0, o) for o in range(20)]
    assert sub.fell_behind == 0
    await fanout.close()


async def test_reset_propagates_and_ends_the_subscription() -> None:
    dlog = MemoryDownstreamLog()
    fanout = Fanout(dlog, EPOCH)
    await publish(dlog, fanout, [rec(INV, 0, 0, S1), rec(INV, 1, 0, S1)])
    sub = fanout.subscribe(S1, None)
    await settle()
    await publish(dlog, fanout, [rec(INV, 0, 1, S1)])
    fanout.on_reset((INV, 0), KafkaOffset(9), "records were deleted")
    assert offsets([await next_data(sub)]) == [(0, 1)]
    last = await sub.next_item()
    assert isinstance(last, Reset)
    assert "records were deleted" in last.reason
    with pytest.raises(SubscriptionClosed):
        await sub.next_item()
    assert fanout.subscriptions == 0


async def test_without_kafka_history_cursors_the_log_cannot_serve_get_reset() -> None:
    dlog = MemoryDownstreamLog()
    fanout = Fanout(dlog, EPOCH)
    await publish(dlog, fanout, [rec(INV, 0, o, S1, ts=o) for o in range(5)])
    await dlog.prune(older_than_ms=3)
    old = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 1}}))
    other = fanout.subscribe(S1, Cursor(Epoch("e0"), {INV: {0: 4}}))
    assert await old.next_item() == Reset(KAFKA_REPLAY_MISSING)
    assert await other.next_item() == Reset("epoch_changed")
    await fanout.close()


# -- replay from Kafka --------------------------------------------------------------------


def krec(partition: int, offset: int, *channels: str, ts: int | None = None) -> LogRecord:
    """A record whose value names its channels (read back by :class:`ValueChannels`)."""
    value = json.dumps({"p": partition, "o": offset, "channels": list(channels)})
    stamp = offset if ts is None else ts
    return replace(rec(INV, partition, offset, *channels, ts=stamp), value=value.encode())


class ValueChannels:
    """The channel mapping of :func:`krec` records."""

    def channels_for(self, topic: str, value: bytes) -> list[str]:
        return list(json.loads(value)["channels"])


class FakeKafka:
    """:class:`KafkaHistory` in memory: ``[earliest, end)`` of each partition, whose offsets
    without a record are transaction markers. ``down`` makes every call fail; ``on_read``
    runs inside each read (e.g. to publish live records meanwhile)."""

    def __init__(self, records: Sequence[LogRecord], ends: Mapping[PartitionKey, int]) -> None:
        self.records = sorted((replace(r, channels=()) for r in records), key=lambda r: r.offset)
        self.earliest: dict[PartitionKey, int] = dict.fromkeys(ends, 0)
        self.end = dict(ends)
        self.down = False
        self.reads: list[tuple[int, int, int]] = []  # partition, from, until
        self.on_read: Callable[[], Awaitable[None]] | None = None

    async def bounds(self, topic: str, partition: int) -> OffsetRange:
        self._check()
        key = (topic, partition)
        return OffsetRange(KafkaOffset(self.earliest[key]), KafkaOffset(self.end[key]))

    async def read(
        self,
        topic: str,
        partition: int,
        from_offset: KafkaOffset,
        until_offset: KafkaOffset,
        max_records: int,
    ) -> tuple[list[LogRecord], KafkaOffset]:
        self._check()
        self.reads.append((partition, from_offset, until_offset))
        if self.on_read is not None:
            await self.on_read()
        if from_offset < self.earliest[(topic, partition)]:
            raise KafkaUnavailable("offset out of range")
        chunk = [
            r
            for r in self.records
            if r.partition_key == (topic, partition) and from_offset <= r.offset < until_offset
        ][:max_records]
        full = len(chunk) == max_records
        return chunk, KafkaOffset(chunk[-1].offset + 1 if full else until_offset)

    def _check(self) -> None:
        if self.down:
            raise KafkaUnavailable("Kafka is down (fake)")


async def items_until_caught_up(sub: Subscription, limit: int = 200) -> list[Item]:
    """Every item up to and including the :class:`CaughtUp` marker (bounded)."""
    got: list[Item] = []
    async with asyncio.timeout(5):
        while len(got) < limit:
            got.append(await sub.next_item())
            if isinstance(got[-1], CaughtUp | Reset):
                return got
    raise AssertionError(f"no CaughtUp within {limit} items: {got}")


def by_partition(items: Sequence[Item]) -> dict[int, list[int]]:
    got: dict[int, list[int]] = {}
    for item in items:
        if isinstance(item, Update):
            got.setdefault(item.record.partition, []).append(item.record.offset)
    return got


MARKERS = {5, 11}
"""Offsets of partition 0 that hold transaction markers, not records."""


async def history_setup(
    *, max_queue: int = 4, page_size: int = 3
) -> tuple[MemoryDownstreamLog, FakeKafka, Fanout]:
    """Partition 0: records 0..19 (markers at 5 and 11), every third of channel S2, the log
    holding offsets >= 11 (older ones pruned) up to position 21. Partition 1: records 0..9,
    all of S1, the log holding offsets >= 4."""
    p0 = [krec(0, o, S2 if o % 3 == 0 else S1) for o in range(20) if o not in MARKERS]
    p1 = [krec(1, o, S1, ts=o + 8) for o in range(10)]
    kafka = FakeKafka(p0 + p1, {(INV, 0): 21, (INV, 1): 10})
    dlog = MemoryDownstreamLog()
    await dlog.append_batch(p0 + p1, {(INV, 0): KafkaOffset(21)})
    await dlog.prune(older_than_ms=12)
    assert await dlog.bounds(INV, 0) == (11, 21)  # 11 is a marker
    assert await dlog.bounds(INV, 1) == (4, 10)
    fanout = Fanout(
        dlog,
        EPOCH,
        max_queue=max_queue,
        page_size=page_size,
        history=kafka,
        channels=ValueChannels(),
        retry_cap_s=0.01,
    )
    return dlog, kafka, fanout


def s1_offsets(first: int, until: int) -> list[int]:
    return [o for o in range(first, until) if o not in MARKERS and o % 3 != 0]


async def test_a_cursor_older_than_the_log_replays_kafka_then_the_log_then_live() -> None:
    dlog, kafka, fanout = await history_setup()
    sub = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 1, 1: 0}}))
    got = await items_until_caught_up(sub)
    assert by_partition(got) == {0: s1_offsets(1, 20), 1: list(range(10))}
    assert got[-1] == CaughtUp(Cursor(EPOCH, {INV: {0: 21, 1: 10}}))
    assert all(isinstance(i, Update) and i.record.channels == (S1,) for i in got[:-1])
    assert {(p, until) for p, _, until in kafka.reads} == {(0, 11), (1, 4)}  # below the log only
    assert sub.fell_behind == 0
    await publish(dlog, fanout, [krec(0, 22, S1), krec(1, 10, S2), krec(1, 11, S1)])
    live = [await next_data(sub) for _ in range(2)]
    assert by_partition(live) == {0: [22], 1: [11]}
    assert sub.cursor == Cursor(EPOCH, {INV: {0: 23, 1: 12}})
    await fanout.close()


async def test_a_partition_only_kafka_holds_is_read_up_to_its_end() -> None:
    dlog, kafka, fanout = await history_setup()
    kafka.records += [krec(2, o, S1) for o in range(2, 6)]
    kafka.earliest[(INV, 2)], kafka.end[(INV, 2)] = 2, 7
    sub = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 21, 1: 10, 2: 3}}))
    got = await items_until_caught_up(sub)
    assert by_partition(got) == {2: [3, 4, 5]}
    assert got[-1] == CaughtUp(Cursor(EPOCH, {INV: {0: 21, 1: 10, 2: 7}}))
    await publish(dlog, fanout, [krec(2, 7, S1), krec(2, 8, S1)])
    assert by_partition([await next_data(sub), await next_data(sub)]) == {2: [7, 8]}
    await fanout.close()


async def test_history_gone_in_kafka_and_the_log_resets() -> None:
    _, kafka, fanout = await history_setup()
    kafka.earliest[(INV, 0)] = 8
    gone = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 7, 1: 0}}))
    ahead = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 30, 1: 0}}))
    assert await gone.next_item() == Reset("history_gone")
    assert await ahead.next_item() == Reset("cursor_ahead")
    kept = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 8, 1: 9}}))
    assert by_partition(await items_until_caught_up(kept)) == {0: s1_offsets(8, 20), 1: [9]}
    await fanout.close()


async def test_records_deleted_from_kafka_under_a_replay_reset_it() -> None:
    _, kafka, fanout = await history_setup(page_size=2)

    async def delete_segments() -> None:
        if len(kafka.reads) == 2:
            kafka.earliest[(INV, 0)] = 10

    kafka.on_read = delete_segments
    sub = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 0, 1: 0}}))
    got = await items_until_caught_up(sub)
    assert by_partition(got) == {0: [1]}  # the first chunk; the second fell out of range
    assert got[-1] == Reset("history_gone")


async def test_kafka_unreachable_waits_then_delivers_everything() -> None:
    dlog, kafka, fanout = await history_setup()
    kafka.down = True
    sub = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 1, 1: 5}}))
    cached = [await next_data(sub) for _ in range(5)]  # partition 1 is in the log: not held up
    assert by_partition(cached) == {1: [5, 6, 7, 8, 9]}
    for _ in range(50):
        if sub.phase is SubscriptionPhase.WAITING:
            break
        await asyncio.sleep(0.01)
    assert sub.phase is SubscriptionPhase.WAITING
    await publish(dlog, fanout, [krec(0, 21, S1), krec(1, 10, S1)])  # live while waiting
    assert by_partition([await next_data(sub)]) == {1: [10]}
    await asyncio.sleep(0.05)
    assert sub.queued == 0  # nothing of partition 0 before Kafka is back
    assert sub.phase is SubscriptionPhase.WAITING
    kafka.down = False
    got = await items_until_caught_up(sub)
    assert by_partition(got) == {0: [*s1_offsets(1, 20), 21]}
    assert isinstance(got[-1], CaughtUp)
    assert sub.state.phase is SubscriptionPhase.LIVE
    await fanout.close()


@pytest.mark.parametrize("arriving", [1, 12])
async def test_records_arriving_live_during_the_kafka_phase_are_delivered_once(
    arriving: int,
) -> None:
    dlog, kafka, fanout = await history_setup(max_queue=4)
    fresh = iter([krec(0, o, S1) for o in range(21, 21 + arriving)])

    async def live_meanwhile() -> None:  # 12 overflow the buffer of 4: read from the log again
        for record in fresh:
            await publish(dlog, fanout, [record])

    kafka.on_read = live_meanwhile
    sub = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 1, 1: 10}}))
    got = await items_until_caught_up(sub)
    assert by_partition(got) == {0: [*s1_offsets(1, 20), *range(21, 21 + arriving)]}
    await publish(dlog, fanout, [krec(0, 40, S1)])
    assert by_partition([await next_data(sub)]) == {0: [40]}
    await fanout.close()


class PruningLog(MemoryDownstreamLog):
    """Prunes once, right before a read (after the replay decided to read the log)."""

    def __init__(self) -> None:
        super().__init__()
        self.prune_before: int | None = None

    async def read(
        self, channels: Collection[str], after: Mapping[PartitionKey, KafkaOffset], limit: int
    ) -> LogPage:
        if self.prune_before is not None:
            await self.prune(self.prune_before)
            self.prune_before = None
        return await super().read(channels, after, limit)


async def test_a_log_pruned_under_a_read_is_replayed_from_kafka_without_a_gap() -> None:
    records = [krec(0, o, S1) for o in range(10)]
    dlog = PruningLog()
    await dlog.append_batch(records, {})
    kafka = FakeKafka(records, {(INV, 0): 10})
    fanout = Fanout(dlog, EPOCH, history=kafka, channels=ValueChannels(), page_size=4)
    dlog.prune_before = 6
    sub = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 2}}))
    got = await items_until_caught_up(sub)
    assert by_partition(got) == {0: list(range(2, 10))}
    assert kafka.reads == [(0, 2, 6)]
    await fanout.close()


async def test_history_needs_the_channel_mapping() -> None:
    with pytest.raises(ValueError, match="both history and channels"):
        Fanout(MemoryDownstreamLog(), EPOCH, history=FakeKafka([], {}))


class PublishingLog(MemoryDownstreamLog):
    """Commits ``during_read`` (and tells the fan-out) right after the next read's snapshot."""

    def __init__(self) -> None:
        super().__init__()
        self.fanout: Fanout | None = None
        self.during_read: list[LogRecord] = []

    async def read(
        self, channels: Collection[str], after: Mapping[PartitionKey, KafkaOffset], limit: int
    ) -> LogPage:
        page = await super().read(channels, after, limit)
        if self.during_read and self.fanout is not None:
            records, self.during_read = self.during_read, []
            await publish(self, self.fanout, records)
        return page


async def test_a_record_arriving_as_kafka_comes_back_is_not_lost() -> None:
    dlog = PublishingLog()
    await dlog.append_batch([krec(0, o, S1) for o in range(5)], {})
    kafka = FakeKafka([], {(INV, 0): 5, (INV, 2): 3})
    kafka.down = True
    fanout = Fanout(dlog, EPOCH, history=kafka, channels=ValueChannels(), retry_cap_s=0.01)
    dlog.fanout = fanout
    sub = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 5, 2: 3}}))  # partition 2: Kafka only
    for _ in range(50):
        if sub.phase is SubscriptionPhase.WAITING:
            break
        await asyncio.sleep(0.01)
    assert sub.phase is SubscriptionPhase.WAITING
    dlog.during_read = [krec(0, 5, S1)]  # while the last read before going live runs
    kafka.down = False  # and Kafka says the cursor is at partition 2's end: nothing to read
    got = await items_until_caught_up(sub)
    assert got == [CaughtUp(Cursor(EPOCH, {INV: {0: 5, 2: 3}}))]
    assert by_partition([await next_data(sub)]) == {0: [5]}
    await fanout.close()


async def test_live_records_overflowing_the_buffer_during_the_last_read_are_read_again() -> None:
    dlog = PublishingLog()
    await dlog.append_batch([krec(0, o, S1) for o in range(5)], {})
    fanout = Fanout(dlog, EPOCH, max_queue=4)
    dlog.fanout = fanout
    dlog.during_read = [krec(0, o, S1) for o in range(5, 11)]  # 6 > the buffer's 4
    sub = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 3}}))
    got = await items_until_caught_up(sub)
    assert by_partition(got) == {0: list(range(3, 11))}
    assert got[-1] == CaughtUp(Cursor(EPOCH, {INV: {0: 11}}))
    await fanout.close()


async def test_until_the_epoch_is_known_subscriptions_wait_then_replay() -> None:
    dlog = MemoryDownstreamLog()
    fanout = Fanout(dlog, None, now=lambda: {(INV, 0): KafkaOffset(3)})
    await publish(dlog, fanout, [rec(INV, 0, o, S1) for o in range(3)])
    resuming = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 1}}))
    fresh = fanout.subscribe(S1, None)
    await settle()
    assert resuming.phase is SubscriptionPhase.WAITING
    assert fresh.phase is SubscriptionPhase.WAITING
    assert (resuming.queued, fresh.queued) == (0, 0)
    fanout.epoch = EPOCH
    got = [await resuming.next_item() for _ in range(3)]
    assert offsets(got) == [(0, 1), (0, 2)]
    assert got[2] == CaughtUp(Cursor(EPOCH, {INV: {0: 3}}))
    assert await fresh.next_item() == CaughtUp(Cursor(EPOCH, {INV: {0: 3}}))
    await fanout.close()


async def test_a_new_epoch_resets_subscriptions_of_the_old_one_only() -> None:
    dlog = MemoryDownstreamLog()
    waiting = Fanout(dlog, None)
    early = waiting.subscribe(S1, Cursor(EPOCH))
    await settle()
    waiting.on_epoch(EPOCH)  # the first epoch known: nothing to reset
    assert isinstance(await early.next_item(), CaughtUp)
    known = Fanout(dlog, EPOCH)
    sub = known.subscribe(S1, None)
    await settle()
    known.on_epoch(Epoch("e2"))
    assert [await sub.next_item() for _ in range(2)][1] == Reset("epoch_changed")
    assert known.epoch == "e2"
    await waiting.close()
    await known.close()


async def test_cursors_name_only_the_channels_topics_and_other_resets_pass_by() -> None:
    dlog = MemoryDownstreamLog()
    topics = {S1: {INV}, "orders:u1": {ORD}}
    fanout = Fanout(dlog, EPOCH, topics_for=lambda channel: topics.get(channel, set()))
    await publish(dlog, fanout, [rec(INV, 0, 0, S1), rec(ORD, 0, 0, "orders:u1")])
    fresh = fanout.subscribe(S1, None)
    resumed = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 0}, ORD: {0: 1}}))
    await settle()
    for sub in (fresh, resumed):
        assert sub.cursor.topics == {INV}
    fanout.on_reset((ORD, 0), KafkaOffset(5), "records were deleted")
    await publish(dlog, fanout, [rec(INV, 0, 1, S1)])
    assert offsets(drain(fresh)) == [(0, 1)]
    assert offsets(drain(resumed)) == [(0, 0), (0, 1)]
    await fanout.close()


class BurstAfterSnapshotLog(MemoryDownstreamLog):
    """The first read publishes a burst of live records after taking its snapshot, so that
    the replay goes live with more buffered records than the queue has room for."""

    def __init__(self, burst: Sequence[LogRecord]) -> None:
        super().__init__()
        self.fanout: Fanout | None = None
        self.burst = list(burst)

    async def read(
        self, channels: Collection[str], after: Mapping[PartitionKey, KafkaOffset], limit: int
    ) -> LogPage:
        page = await super().read(channels, after, limit)
        if self.burst and self.fanout is not None:
            burst, self.burst = self.burst, []
            await publish(self, self.fanout, burst)
        return page


async def test_falling_behind_while_going_live_keeps_one_replay_task() -> None:
    # the page brings 2 records (+ the CaughtUp marker: the queue of 3 is full) and 3 records
    # arrive live meanwhile: going live overflows the queue, the subscription falls behind
    dlog = BurstAfterSnapshotLog([rec(INV, 0, o, S1) for o in range(2, 5)])
    fanout = Fanout(dlog, EPOCH, max_queue=3, page_size=10)
    dlog.fanout = fanout
    await publish(dlog, fanout, [rec(INV, 0, 0, S1), rec(INV, 0, 1, S1)])
    active, most = 0, 0
    run = fanout._replayer.run

    async def counted(sub: Subscription, *, from_now: bool) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        try:
            await run(sub, from_now=from_now)
        finally:
            active -= 1

    fanout._replayer.run = counted  # type: ignore[method-assign]
    sub = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 0}}))
    got: list[Item] = []
    async with asyncio.timeout(10):
        while len(offsets(got)) < 5:
            got.append(await sub.next_item())
            await asyncio.sleep(0)  # a slow reader: the replay and live race for the queue
        await publish(dlog, fanout, [rec(INV, 0, o, S1) for o in range(5, 12)])
        while len(offsets(got)) < 12:
            got.append(await sub.next_item())
            await asyncio.sleep(0)
    assert offsets(got) == [(0, o) for o in range(12)]  # no gap, no repeat
    assert sub.fell_behind >= 1
    assert most == 1, "two replay tasks ran for one subscription"
    await fanout.close()
