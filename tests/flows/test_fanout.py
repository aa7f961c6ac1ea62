"""Fan-out over the in-memory downstream log: from now, replay then live, isolation, slow
subscribers, resets."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence

import pytest

from gateway.core.cursor import Cursor
from gateway.core.ids import Epoch, KafkaOffset
from gateway.core.replay import SubscriptionPhase
from gateway.flows.downstream_ports import LogPage, LogRecord, PartitionKey
from gateway.flows.fanout import (
    KAFKA_REPLAY_MISSING,
    SLOW_CONSUMER,
    CaughtUp,
    Fanout,
    Reset,
    Subscription,
    SubscriptionClosed,
    Update,
)
from tests.adapters.test_downstream_log import INV, MemoryDownstreamLog, rec

EPOCH = Epoch("e1")
S1, S2 = "inventory:s1", "inventory:s2"


async def publish(dlog: MemoryDownstreamLog, fanout: Fanout, records: Sequence[LogRecord]) -> None:
    """What the consumer does: commit to the log, then tell the listener."""
    fresh = await dlog.append_batch(records, {})
    if fresh:
        fanout.on_records(fresh)


def drain(sub: Subscription) -> list[Update | Reset]:
    items: list[Update | Reset] = []
    while sub.queued:
        items.append(sub._queue.popleft())
    return items


async def next_data(sub: Subscription) -> Update | Reset:
    """The next item that is not a :class:`CaughtUp` marker."""
    while not isinstance(item := await sub.next_item(), Update | Reset):
        pass
    return item


def offsets(items: Sequence[Update | Reset]) -> list[tuple[int, int]]:
    return [(i.record.partition, i.record.offset) for i in items if isinstance(i, Update)]


async def settle() -> None:
    for _ in range(20):
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


async def test_slow_subscriber_is_closed_and_others_get_everything() -> None:
    dlog = MemoryDownstreamLog()
    fanout = Fanout(dlog, EPOCH, max_queue=4)
    slow, fast = fanout.subscribe(S1, None), fanout.subscribe(S1, None)
    await settle()
    received: list[tuple[int, int]] = []
    for o in range(10):
        await publish(dlog, fanout, [rec(INV, 0, o, S1)])
        received += offsets(drain(fast))
    assert received == [(0, o) for o in range(10)]
    assert slow.slow
    assert slow.queued == 0
    assert fanout.subscriptions == 1
    with pytest.raises(SubscriptionClosed) as closed:
        await slow.next_item()
    assert closed.value.reason == SLOW_CONSUMER


async def test_a_resuming_subscriber_far_behind_is_paced_not_slow() -> None:
    dlog = MemoryDownstreamLog()
    fanout = Fanout(dlog, EPOCH, max_queue=3, page_size=10)
    await publish(dlog, fanout, [rec(INV, 0, o, S1) for o in range(20)])
    sub = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 0}}))
    got = [await sub.next_item() for _ in range(20)]
    assert offsets(got) == [(0, o) for o in range(20)]
    assert not sub.slow
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


async def test_cursors_the_local_log_cannot_serve_get_reset() -> None:
    dlog = MemoryDownstreamLog()
    fanout = Fanout(dlog, EPOCH)
    await publish(dlog, fanout, [rec(INV, 0, o, S1, ts=o) for o in range(5)])
    await dlog.prune(older_than_ms=3)
    old = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 1}}))
    other = fanout.subscribe(S1, Cursor(Epoch("e0"), {INV: {0: 4}}))
    assert await old.next_item() == Reset(KAFKA_REPLAY_MISSING)
    assert await other.next_item() == Reset("epoch_changed")
    await fanout.close()
