"""Shared live delivery: subscriptions of a channel at the same cursor get one :class:`Update`
object (and one ``cursor_after`` object) per record. Each subscription must still get exactly
its records (no gap, no duplicate, per-partition order) with the right cursor after each,
whatever mix of cursors, slow readers and replays shares the channel."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from gateway.core.cursor import Cursor, CursorCodec
from gateway.core.ids import Epoch, KafkaOffset
from gateway.core.replay import SubscriptionPhase
from gateway.flows.fanout import Fanout
from gateway.flows.subscription import CaughtUp, Item, Reset, Shared, Subscription, Update
from tests.adapters.test_downstream_log import INV, MemoryDownstreamLog, rec

EPOCH = Epoch("e1")
S1, S2 = "inventory:s1", "inventory:s2"
PARTITIONS = 3
CODEC = CursorCodec(b"k" * 32)


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


class Model:
    """The log and the consumer's positions, and per subscription what it must receive."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.dlog = MemoryDownstreamLog()
        self.next = {(INV, p): KafkaOffset(0) for p in range(PARTITIONS)}
        self.fanout = Fanout(
            self.dlog, EPOCH, now=lambda: dict(self.next), max_queue=5, page_size=4
        )
        self.log: list[tuple[int, int, tuple[str, ...]]] = []  # (partition, offset, channels)
        self.subs: list[tuple[Subscription, dict[int, int]]] = []  # start position/partition
        self.got: dict[int, list[Item]] = {}

    async def start(self) -> None:
        """The consumer's first positions: the log knows every partition."""
        await self.dlog.append_batch([], dict(self.next))

    async def publish(self, count: int) -> None:
        records = []
        for _ in range(count):
            partition = self.rng.randrange(PARTITIONS)
            channels = self.rng.choice(((S1,), (S2,), (S1, S2)))
            offset = self.next[(INV, partition)]
            self.next[(INV, partition)] = KafkaOffset(offset + 1)
            self.log.append((partition, offset, channels))
            records.append(rec(INV, partition, offset, *channels))
        fresh = await self.dlog.append_batch(records, {})
        self.fanout.on_records(fresh)

    def subscribe(self) -> None:
        if self.rng.random() < 0.6:  # from now
            start = {p: int(self.next[(INV, p)]) for p in range(PARTITIONS)}
            sub = self.fanout.subscribe(S1, None)
        else:  # from a cursor somewhere in the past
            start = {p: self.rng.randint(0, int(self.next[(INV, p)])) for p in range(PARTITIONS)}
            sub = self.fanout.subscribe(S1, Cursor(EPOCH, {INV: start}))
        self.subs.append((sub, start))
        self.got[id(sub)] = []

    def read(self, everything: bool = False) -> None:
        for sub, _ in self.subs:
            if everything or self.rng.random() < 0.5:  # the others are slow readers
                limit = sub.queued if everything else self.rng.randint(1, 4)
                self.got[id(sub)] += sub.take_ready(limit)

    def check(self) -> Counter[int]:
        """Every subscription got exactly its records, with the right cursors; how many
        subscriptions each delivered Update object went to."""
        shared: Counter[int] = Counter()
        for sub, start in self.subs:
            items = self.got[id(sub)]
            assert not [i for i in items if isinstance(i, Reset)]
            expected = [(p, o) for p, o, channels in self.log if S1 in channels and o >= start[p]]
            updates = [i for i in items if isinstance(i, Update)]
            delivered = [(u.record.partition, u.record.offset) for u in updates]
            assert len(delivered) == len(set(delivered)), "a duplicate"
            assert sorted(delivered) == sorted(expected), "a gap or a stray record"
            for partition in range(PARTITIONS):
                mine = [o for p, o in delivered if p == partition]
                assert mine == sorted(mine), "out of partition order"
            so_far: set[tuple[int, int]] = set()
            last = dict(start)
            for item in items:
                if isinstance(item, Update):
                    so_far.add((item.record.partition, item.record.offset))
                    cursor = item.cursor_after
                    assert cursor.position(INV, item.record.partition) == item.record.offset + 1
                    shared[id(item)] += 1
                elif isinstance(item, CaughtUp):
                    cursor = item.cursor
                else:
                    continue
                # the cursor's contract: resuming from it gives exactly the rest; and it is
                # this subscription's own cursor: it never moves back
                for partition in range(PARTITIONS):
                    position = cursor.position(INV, partition)
                    assert position is not None
                    assert position >= last[partition], "another subscription's cursor"
                    last[partition] = position
                    for p, o in expected:
                        if p == partition:
                            assert ((p, o) in so_far) == (o < position), "a wrong cursor"
                fresh = Cursor(EPOCH, cursor.positions)  # its token, not a cached one
                assert CODEC.encode(cursor) == CODEC.encode(fresh)
            assert sub.phase is SubscriptionPhase.LIVE
        return shared


@pytest.mark.parametrize("seed", range(12))
async def test_shared_updates_give_each_subscription_exactly_its_records(seed: int) -> None:
    model = Model(seed)
    await model.start()
    await model.publish(6)
    for _ in range(4):
        model.subscribe()
    await settle()
    for step in range(40):
        await model.publish(model.rng.randint(1, 6))
        if step % 7 == 0:
            model.subscribe()
        model.read()
        await settle()
    for _ in range(200):  # drain: the slow readers' replays catch up
        model.read(everything=True)
        await settle()
        if all(s.phase is SubscriptionPhase.LIVE and not s.queued for s, _ in model.subs):
            break
    shared = model.check()
    assert max(shared.values()) > 1  # subscriptions at one cursor did share Update objects
    assert sum(sub.fell_behind for sub, _ in model.subs) > 0  # and some fell behind
    await model.fanout.close()


async def test_subscriptions_at_one_cursor_share_one_update_and_cursor() -> None:
    dlog = MemoryDownstreamLog()
    fanout = Fanout(dlog, EPOCH, now=lambda: {(INV, 0): KafkaOffset(0)}, max_queue=2)
    one, two, three = (fanout.subscribe(S1, None) for _ in range(3))
    for sub in (one, two, three):
        assert isinstance(sub.take_ready(1)[0], CaughtUp)
    fanout.on_records([rec(INV, 0, 0, S1), rec(INV, 0, 1, S1)])
    a, b = one.take_ready(5), two.take_ready(5)
    assert [x is y for x, y in zip(a, b, strict=True)] == [True, True]
    assert isinstance(a[1], Update)
    assert one.cursor is two.cursor is three.cursor is a[1].cursor_after
    fanout.on_records([rec(INV, 0, 2, S1)])  # three's queue is full: it falls behind alone
    assert three.fell_behind == 1
    assert three.cursor == Cursor(EPOCH, {INV: {0: 2}})  # not moved past what it queued
    assert one.take_ready(5) == two.take_ready(5)
    assert one.cursor == Cursor(EPOCH, {INV: {0: 3}})
    await fanout.close()


async def test_replays_from_equal_cursors_share_their_updates() -> None:
    """A resume storm: subscriptions replaying the same records from equal cursors (distinct
    cursor objects, each reading its own copy of the records) get the same Update objects;
    one from a later cursor gets the right ones, the same as theirs once their cursors are
    equal."""
    dlog = MemoryDownstreamLog()
    await dlog.append_batch([rec(INV, 0, n, S1) for n in range(6)], {(INV, 0): KafkaOffset(6)})
    fanout = Fanout(dlog, EPOCH, now=lambda: {(INV, 0): KafkaOffset(6)}, page_size=4)
    subs = [fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 1}})) for _ in range(3)]
    other = fanout.subscribe(S1, Cursor(EPOCH, {INV: {0: 3}}))
    await settle()
    got = [[i for i in sub.take_ready(10) if isinstance(i, Update)] for sub in [*subs, other]]
    assert [[u.record.offset for u in g] for g in got] == [[1, 2, 3, 4, 5]] * 3 + [[3, 4, 5]]
    for first, second, third in zip(*got[:3], strict=True):
        assert first is second is third
    for group in got:
        assert all(u.cursor_after == Cursor(EPOCH, {INV: {0: u.record.offset + 1}}) for u in group)
    assert all(x is y for x, y in zip(got[3], got[0][2:], strict=True))
    assert all(sub.phase is SubscriptionPhase.LIVE for sub in [*subs, other])
    await fanout.close()


def test_one_record_means_each_cursor_its_own_update_in_any_order() -> None:
    """Subscriptions at two cursors (one of them also as an equal but distinct object), met in
    turn, and one already past the record: each gets the update of its own cursor, one object
    per cursor value, whatever the identity shortcut remembered last."""
    at_a = Cursor(EPOCH, {INV: {0: 3, 1: 0, 2: 0}})
    at_b = Cursor(EPOCH, {INV: {0: 5, 1: 2, 2: 0}})
    past = Cursor(EPOCH, {INV: {0: 9, 1: 0, 2: 0}})
    equal_a = Cursor(EPOCH, {INV: {0: 3, 1: 0, 2: 0}})
    order = [at_a, at_b, at_a, equal_a, at_b, past, at_b, at_b, at_a, at_a, equal_a, past, past]
    record = rec(INV, 0, 7, S1)
    shared = Shared()
    results: list[Update | None] = []
    for cursor in order:
        sub = Subscription(S1, cursor, 5, lambda sub: None)
        results.append(sub._update_for(record, shared))
    for cursor, update in zip(order, results, strict=True):
        if cursor is past:
            assert update is None
        else:
            assert update is not None
            assert update.cursor_after == cursor.advance(INV, 0, KafkaOffset(7))
    a_updates = {id(u) for c, u in zip(order, results, strict=True) if c == at_a}
    b_updates = {id(u) for c, u in zip(order, results, strict=True) if c == at_b}
    assert len(a_updates) == len(b_updates) == 1
    assert a_updates != b_updates
