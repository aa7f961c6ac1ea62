"""The fan-out's synchronous writers (:attr:`Subscription.writer`): a channel's only record in a
batch is written at once, unqueued, and otherwise each subscription the batch touched is handed
to its writer once, only while the adapter's loop is parked with nothing in hand; what a writer
leaves (the socket refused it, or it is not an update) reaches the adapter's loop in order, and
nothing is written twice or lost."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.core.ids import Epoch, KafkaOffset
from gateway.flows.fanout import Fanout
from gateway.flows.subscription import CaughtUp, Item, Reset, Subscription, Update
from tests.adapters.test_downstream_log import INV, MemoryDownstreamLog, rec

EPOCH = Epoch("e1")
S1 = "inventory:s1"


class Socket:
    """A writer over a fake socket that takes ``room`` frames, then refuses."""

    def __init__(self, room: int = 1_000_000, per_frame: int = 64) -> None:
        self.room = room
        self.per_frame = per_frame
        self.frames: list[list[int]] = []
        self.calls = 0
        self.ones = 0

    def write_queued(self, sub: Subscription) -> None:
        self.calls += 1
        while updates := sub.take_updates(self.per_frame):
            if not self._take(updates):
                sub.unread(updates)
                return

    def write_one(self, sub: Subscription, update: Update) -> bool:
        assert sub.queued == 0  # never ahead of queued updates
        self.ones += 1
        return self._take([update])

    def _take(self, updates: Sequence[Update]) -> bool:
        if self.room <= 0:
            return False
        self.room -= 1
        self.frames.append([u.record.offset for u in updates])
        return True

    @property
    def written(self) -> list[int]:
        return [offset for frame in self.frames for offset in frame]


class Model:
    def __init__(self) -> None:
        self.dlog = MemoryDownstreamLog()
        self.next = KafkaOffset(0)
        self.fanout = Fanout(self.dlog, EPOCH, now=lambda: {(INV, 0): self.next}, max_queue=50)

    async def start(self) -> None:
        await self.dlog.append_batch([], {(INV, 0): self.next})

    async def publish(self, count: int) -> list[int]:
        records = []
        for _ in range(count):
            records.append(rec(INV, 0, self.next, S1))
            self.next = KafkaOffset(self.next + 1)
        fresh = await self.dlog.append_batch(records, {})
        self.fanout.on_records(fresh)
        return [r.offset for r in records]


async def parked(sub: Subscription, seen: list[Item]) -> asyncio.Task[None]:
    """An adapter's loop: take every item, in order, until cancelled; parked once started."""

    async def loop() -> None:
        while True:
            seen.append(await sub.next_item())
            seen.extend(sub.take_ready(64))

    task = asyncio.create_task(loop())
    for _ in range(5):
        await asyncio.sleep(0)
    return task


async def written_and_parked(
    socket: Socket,
) -> tuple[Model, Subscription, list[Item], asyncio.Task[None]]:
    """A live subscription written by ``socket``, its adapter's loop parked (what the loop
    takes goes to the list)."""
    model = Model()
    await model.start()
    sub = model.fanout.subscribe(S1, None)
    sub.writer = socket
    seen: list[Item] = []
    return model, sub, seen, await parked(sub, seen)


def update_offsets(items: Sequence[Item]) -> list[int]:
    return [i.record.offset for i in items if isinstance(i, Update)]


async def test_a_parked_subscription_is_written_once_per_batch_and_its_loop_gets_nothing() -> None:
    model, sub, seen, loop = await written_and_parked(socket := Socket(per_frame=4))
    assert isinstance(seen[0], CaughtUp)
    first = await model.publish(10)
    assert socket.calls == 1  # one call per batch, not per record
    assert socket.frames == [first[0:4], first[4:8], first[8:10]]
    second = await model.publish(3)
    third = await model.publish(1)  # the channel's only record: written without the queue
    assert (socket.calls, socket.ones) == (2, 1)
    assert socket.frames[-1] == third
    assert socket.written == first + second + third
    for _ in range(5):
        await asyncio.sleep(0)
    assert update_offsets(seen) == []  # the loop was never handed what was written
    assert sub.cursor.position(INV, 0) == model.next
    loop.cancel()


async def test_what_the_socket_refuses_goes_to_the_loop_in_order() -> None:
    model, _, seen, loop = await written_and_parked(socket := Socket(room=2, per_frame=3))
    offsets = await model.publish(10)
    for _ in range(5):
        await asyncio.sleep(0)
    assert socket.written == offsets[:6]
    assert update_offsets(seen) == offsets[6:]  # the rest, once, in order
    loop.cancel()


async def test_a_lone_record_the_socket_refuses_goes_to_the_loop() -> None:
    model, sub, seen, loop = await written_and_parked(socket := Socket(room=1))
    taken = await model.publish(1)
    refused = await model.publish(1)
    for _ in range(5):
        await asyncio.sleep(0)
    assert (socket.written, socket.ones) == (taken, 2)
    assert update_offsets(seen) == refused  # once, through the loop
    assert sub.cursor.position(INV, 0) == model.next
    loop.cancel()


async def test_a_loop_that_is_not_parked_is_woken_not_bypassed() -> None:
    """Before the loop first waits (it may still be writing its ``subscribed`` frame), the
    writer is not called: a write there could overtake the loop's frame."""
    model = Model()
    await model.start()
    sub = model.fanout.subscribe(S1, None)
    socket = Socket()
    sub.writer = socket
    offsets = [*await model.publish(1), *await model.publish(4)]
    assert (socket.calls, socket.ones) == (0, 0)
    items = [await sub.next_item(), *sub.take_ready(64)]
    assert isinstance(items[0], CaughtUp)
    assert update_offsets(items) == offsets


async def test_items_that_are_not_updates_stay_for_the_loop() -> None:
    model = Model()
    await model.start()
    sub = model.fanout.subscribe(S1, None)  # its CaughtUp is queued first
    assert sub.take_updates(10) == []
    assert sub.queued == 1
    await model.publish(2)
    assert sub.take_updates(10) == []  # the marker still leads: order is kept
    assert isinstance(sub.take_ready(1)[0], CaughtUp)
    taken = sub.take_updates(10)
    assert [u.record.offset for u in taken] == [0, 1]
    sub.unread(taken)
    assert [u.record.offset for u in sub.take_updates(1)] == [0]


async def test_a_final_reset_stays_for_the_loop_after_the_updates() -> None:
    model = Model()
    await model.start()
    sub = model.fanout.subscribe(S1, None)
    sub.take_ready(1)  # its CaughtUp
    await model.publish(2)
    model.fanout.on_reset((INV, 0), KafkaOffset(0), "gone")
    assert [u.record.offset for u in sub.take_updates(10)] == [0, 1]
    assert sub.take_updates(10) == []
    assert isinstance(await sub.next_item(), Reset)


async def test_a_writer_frees_room_for_a_replay_waiting_on_a_full_queue() -> None:
    model = Model()
    await model.start()
    sub = model.fanout.subscribe(S1, None)
    sub.take_ready(1)
    await model.publish(50)  # no writer: the queue is full
    assert sub.queued == 50
    waiter = asyncio.create_task(sub._wait_for_room())
    await asyncio.sleep(0)
    assert not waiter.done()
    assert len(sub.take_updates(10)) == 10
    async with asyncio.timeout(5):
        assert await waiter == 10
