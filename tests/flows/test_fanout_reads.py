"""Shared page reads: subscriptions that need the same page of the log share one read of it,
and a subscription whose live buffer started after such a read began reads once more rather
than go live over a record neither holds (the seam with live)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping

from gateway.core.cursor import Cursor
from gateway.core.ids import Epoch, KafkaOffset
from gateway.core.replay import SubscriptionPhase
from gateway.flows.downstream_ports import LogPage, PartitionKey
from gateway.flows.fanout import Fanout
from gateway.flows.subscription import CaughtUp, Item, Subscription, Update
from tests.adapters.test_downstream_log import INV, MemoryDownstreamLog, rec
from tests.flows.test_fanout import by_partition, items_until_caught_up, publish

EPOCH = Epoch("e1")
S1 = "inventory:s1"


class GatedLog(MemoryDownstreamLog):
    """Takes each read's snapshot when it is called and answers once ``gate`` is open; keeps
    the positions every read started from."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.reads: list[dict[PartitionKey, KafkaOffset]] = []
        self.cancelled = 0

    async def read(
        self, channels: Collection[str], after: Mapping[PartitionKey, KafkaOffset], limit: int
    ) -> LogPage:
        self.reads.append(dict(after))
        page = await super().read(channels, after, limit)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return page


async def wait_for(check: Callable[[], object]) -> None:
    """Run the loop until ``check()`` holds (bounded)."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


def updates(items: list[Item]) -> list[Update]:
    return [item for item in items if isinstance(item, Update)]


async def test_subscriptions_at_one_cursor_share_one_read_of_their_page() -> None:
    dlog = GatedLog()
    fanout = Fanout(dlog, EPOCH, page_size=50)
    await publish(dlog, fanout, [rec(INV, p, o, S1) for o in range(20) for p in (0, 1)])
    cursor = Cursor(EPOCH, {INV: {0: 5, 1: 3}})
    subs = [fanout.subscribe(S1, cursor) for _ in range(5)]
    await wait_for(lambda: dlog.reads)
    for _ in range(50):  # every subscription reaches the read
        await asyncio.sleep(0)
    dlog.gate.set()
    got = [await items_until_caught_up(sub) for sub in subs]
    assert dlog.reads == [{(INV, 0): 5, (INV, 1): 3}]  # one read, not five
    for items in got:
        assert by_partition(items) == {0: list(range(5, 20)), 1: list(range(3, 20))}
        assert items[-1] == CaughtUp(Cursor(EPOCH, {INV: {0: 20, 1: 20}}))
    first = updates(got[0])
    for items in got[1:]:  # the same records, so the same updates (see Shared)
        assert all(a is b for a, b in zip(updates(items), first, strict=True))
    await publish(dlog, fanout, [rec(INV, 0, 20, S1)])
    for sub in subs:
        assert sub.phase is SubscriptionPhase.LIVE
        assert by_partition([await sub.next_item()]) == {0: [20]}
    await fanout.close()


async def test_a_subscription_buffering_since_after_a_shared_read_began_reads_again() -> None:
    """The record committed between the first read's snapshot and the second subscription's
    start is in neither that page nor the second one's buffer: going live on that page would
    skip it."""
    dlog = GatedLog()
    fanout = Fanout(dlog, EPOCH, page_size=50)
    await publish(dlog, fanout, [rec(INV, 0, o, S1) for o in range(10)])
    cursor = Cursor(EPOCH, {INV: {0: 4}})
    early = fanout.subscribe(S1, cursor)
    await wait_for(lambda: dlog.reads)  # its read has taken its snapshot: offsets 4-9
    await publish(dlog, fanout, [rec(INV, 0, 10, S1)])  # buffered by `early` only
    late = fanout.subscribe(S1, cursor)
    for _ in range(50):
        await asyncio.sleep(0)
    dlog.gate.set()
    for sub in (early, late):
        items = await items_until_caught_up(sub)
        while sub.queued:  # `early` goes live at 10 and then delivers its buffer
            items.append(await sub.next_item())
        assert by_partition(items) == {0: list(range(4, 11))}, sub
        assert sub.phase is SubscriptionPhase.LIVE
        assert sub.cursor == Cursor(EPOCH, {INV: {0: 11}})
    # `late` shared the read at 4, then read from 10 itself; `early` went live on its buffer
    assert dlog.reads == [{(INV, 0): 4}, {(INV, 0): 10}]
    await fanout.close()


async def test_a_shared_read_outlives_the_subscription_that_started_it() -> None:
    dlog = GatedLog()
    fanout = Fanout(dlog, EPOCH, page_size=50)
    await publish(dlog, fanout, [rec(INV, 0, o, S1) for o in range(6)])
    cursor = Cursor(EPOCH, {INV: {0: 2}})
    first: Subscription = fanout.subscribe(S1, cursor)
    second = fanout.subscribe(S1, cursor)
    await wait_for(lambda: dlog.reads)
    fanout.unsubscribe(first)  # its task is cancelled while the shared read is in flight
    for _ in range(20):
        await asyncio.sleep(0)
    dlog.gate.set()
    items = await items_until_caught_up(second)
    assert by_partition(items) == {0: [2, 3, 4, 5]}
    assert len(dlog.reads) == 1
    await fanout.close()


async def test_a_subscription_that_fell_behind_does_not_go_live_on_a_read_from_before() -> None:
    """The record a full queue refused is in the log only: a read that took its snapshot
    before that record cannot be the last one of the replay that follows."""
    dlog = GatedLog()
    dlog.gate.set()
    fanout = Fanout(dlog, EPOCH, max_queue=1)
    await publish(dlog, fanout, [rec(INV, 0, 0, S1)])
    fast = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 1}}))
    assert await items_until_caught_up(fast) == [CaughtUp(Cursor(EPOCH, {INV: {0: 1}}))]
    dlog.gate.clear()
    await publish(dlog, fanout, [rec(INV, 0, 1, S1)])  # queued: the queue is full
    other = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 2}}))
    await wait_for(lambda: len(dlog.reads) == 2)  # its snapshot: nothing after offset 1
    await publish(dlog, fanout, [rec(INV, 0, 2, S1)])  # refused by `fast`: it falls behind
    assert fast.fell_behind == 1
    got = [await fast.next_item()]  # room: its replay reads the page `other` reads
    for _ in range(50):
        await asyncio.sleep(0)
    dlog.gate.set()
    others: list[Item] = []
    for _ in range(5):  # pages of one record at a time: take each as a client does
        for _ in range(50):
            await asyncio.sleep(0)
        while fast.queued:
            got.append(await fast.next_item())
        while other.queued:
            others.append(await other.next_item())
    assert fast.phase is SubscriptionPhase.LIVE
    assert by_partition(got) == {0: [1, 2]}
    assert by_partition(others) == {0: [2]}
    await fanout.close()


async def test_closing_cancels_every_read_in_flight_even_one_no_one_may_join() -> None:
    dlog = GatedLog()
    fanout = Fanout(dlog, EPOCH)
    await publish(dlog, fanout, [rec(INV, 0, o, S1) for o in range(3)])
    fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 1}}))
    await wait_for(lambda: dlog.reads)
    fanout.on_epoch(Epoch("e2"))  # the subscription is reset; its read can no longer be joined
    async with asyncio.timeout(5):
        await fanout.close()
    assert dlog.cancelled == 1
