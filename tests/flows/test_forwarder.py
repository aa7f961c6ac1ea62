"""The forwarder flow against the in-memory store and publisher (fast, deterministic)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Sequence

import pytest

from gateway.adapters.memory_publisher import MemoryPublisher
from gateway.adapters.memory_store import MemoryEventStore
from gateway.core.backoff import Backoff
from gateway.core.ids import InstanceId, LocalSeq
from gateway.core.ingest import StorableEvent
from gateway.core.records import OutRecord, StoredEvent
from gateway.core.routing import DEFAULT_ROUTES, TopicRouter
from gateway.errors import KafkaUnavailable
from gateway.flows.forwarder import Forwarder, ForwarderSettings
from gateway.flows.ports import EventStore
from gateway.flows.sessions import LinkState
from gateway.metrics import GatewayMetrics
from tests.factories import storable

DLQ = "dead-letters"


def make_forwarder(store: EventStore, publisher: MemoryPublisher) -> Forwarder:
    settings = ForwarderSettings(
        router=TopicRouter(DEFAULT_ROUTES),
        dead_letter_topic=DLQ,
        instance=InstanceId("test"),
        bootstrap="memory",
        batch_max=7,
        idle_wait_s=0.01,
        housekeeping_interval_s=0.01,
        ping_interval_s=0.01,
    )
    return Forwarder(
        store, publisher, settings, GatewayMetrics(), Backoff(0.001, 0.01, random.Random(1))
    )


@pytest.fixture
async def running() -> AsyncIterator[tuple[MemoryEventStore, MemoryPublisher, Forwarder]]:
    store, publisher = MemoryEventStore(), MemoryPublisher(max_record_bytes=2000)
    forwarder = make_forwarder(store, publisher)
    forwarder.start()
    yield store, publisher, forwarder
    await forwarder.stop()


async def wait_drained(store: EventStore) -> None:
    for _ in range(500):
        if (await store.backlog()).events == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("backlog not drained")


def big(event: StorableEvent) -> StorableEvent:
    return StorableEvent(event.event_id, event.event_type, 1, event.key, "d", "c", b"x" * 5000)


async def test_forwards_in_store_order_once(
    running: tuple[MemoryEventStore, MemoryPublisher, Forwarder],
) -> None:
    store, publisher, forwarder = running
    events = [storable(key=f"k{i % 3}") for i in range(50)]
    for start in range(0, 50, 10):
        await store.append(events[start : start + 10])
    await wait_drained(store)
    assert [r.headers[0][1].decode() for r in publisher.committed] == [e.event_id for e in events]
    assert {r.topic for r in publisher.committed} == {"order.events"}
    assert forwarder.state is LinkState.UP
    assert await store.forwarded_mark() == 50


async def test_outage_is_survived_and_nothing_is_repeated(
    running: tuple[MemoryEventStore, MemoryPublisher, Forwarder],
) -> None:
    store, publisher, forwarder = running
    publisher.down = True
    publisher.is_open = False
    events = [storable() for _ in range(20)]
    await store.append(events)
    await asyncio.sleep(0.05)
    assert forwarder.state is LinkState.DOWN
    assert (await store.backlog()).events == 20
    publisher.down = False
    await wait_drained(store)
    ids = [r.headers[0][1].decode() for r in publisher.committed]
    assert sorted(ids) == sorted(e.event_id for e in events)


async def test_restart_resumes_from_kafka_position_not_local_mark() -> None:
    """A crash after Kafka's commit but before the local mark must not duplicate."""
    store, publisher = MemoryEventStore(), MemoryPublisher()
    events = [storable() for _ in range(10)]
    await store.append(events)
    publisher.positions[store.store_id] = LocalSeq(10)  # Kafka has them; local mark is 0
    forwarder = make_forwarder(store, publisher)
    forwarder.start()
    try:
        await wait_drained(store)
    finally:
        await forwarder.stop()
    assert publisher.committed == []
    assert await store.forwarded_mark() == 10


async def test_oversize_event_goes_to_dead_letters_and_does_not_block(
    running: tuple[MemoryEventStore, MemoryPublisher, Forwarder],
) -> None:
    store, publisher, _ = running
    a, b, c = storable(), big(storable()), storable()
    await store.append([a, b, c])
    await wait_drained(store)
    topics = [(r.topic, r.headers[0][1].decode()) for r in publisher.committed]
    assert topics == [
        ("order.events", a.event_id),
        (DLQ, b.event_id),
        ("order.events", c.event_id),
    ]
    letter = json.loads(publisher.committed[1].value)
    assert "exceeds" in letter["reason"]
    assert [e.event_id for e in await store.quarantined()] == [b.event_id]


async def test_broker_refusal_finds_the_culprit_only() -> None:
    store = MemoryEventStore()
    publisher = MemoryPublisher(topic_limit=3000)
    forwarder = make_forwarder(store, publisher)
    forwarder.start()
    try:
        events = [storable(), storable(), big(storable()), storable()]
        await store.append(events)
        await wait_drained(store)
    finally:
        await forwarder.stop()
    by_topic = [(r.topic, r.headers[0][1].decode()) for r in publisher.committed]
    assert by_topic == [
        ("order.events", events[0].event_id),
        ("order.events", events[1].event_id),
        (DLQ, events[2].event_id),
        ("order.events", events[3].event_id),
    ]
    assert [e.event_id for e in await store.quarantined()] == [events[2].event_id]


async def test_idle_link_failure_is_noticed(
    running: tuple[MemoryEventStore, MemoryPublisher, Forwarder],
) -> None:
    _, publisher, forwarder = running
    for _ in range(200):
        if forwarder.state is LinkState.UP:
            break
        await asyncio.sleep(0.01)
    publisher.down = True
    for _ in range(200):
        if forwarder.state is LinkState.DOWN:
            break
        await asyncio.sleep(0.01)
    assert forwarder.state is LinkState.DOWN


class SlowCancelStore(MemoryEventStore):
    """The prefetch (a read after the first batch) takes a moment to wind down when cancelled,
    as a query running in a thread does."""

    async def read_after(self, seq: LocalSeq, limit: int) -> list[StoredEvent]:
        rows = await super().read_after(seq, limit)
        if seq > 0:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)
                raise
        return rows


class FailingPublisher(MemoryPublisher):
    def __init__(self) -> None:
        super().__init__()
        self.failed = asyncio.Event()

    async def publish(
        self, records: Sequence[OutRecord], position: LocalSeq, store_id: str
    ) -> None:
        await asyncio.sleep(0.01)
        self.failed.set()
        raise KafkaUnavailable("broker gone (test)")


async def test_stop_during_the_prefetch_wind_down_ends_the_forwarder() -> None:
    store, publisher = SlowCancelStore(), FailingPublisher()
    await store.append([storable() for _ in range(3)])
    settings = ForwarderSettings(
        router=TopicRouter(DEFAULT_ROUTES),
        dead_letter_topic="dlq",
        instance=InstanceId("x"),
        bootstrap="memory",
        batch_max=1,
        idle_wait_s=0.01,
        housekeeping_interval_s=0.01,
        ping_interval_s=0.01,
    )
    forwarder = Forwarder(
        store, publisher, settings, GatewayMetrics(), Backoff(0.2, 0.2, random.Random(1))
    )
    forwarder.start()
    await asyncio.wait_for(publisher.failed.wait(), 5)
    await asyncio.sleep(0.01)  # the session now waits for the cancelled prefetch to wind down
    await asyncio.wait_for(forwarder.stop(), 3)  # used to hang: the cancellation was swallowed


class SlowMarkStore(MemoryEventStore):
    """A store whose mark writes wait until released (a slow fsync)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.marks_started = 0

    async def mark_forwarded(self, seq: LocalSeq) -> None:
        self.marks_started += 1
        await self.release.wait()
        await super().mark_forwarded(seq)


async def test_the_next_transaction_does_not_wait_for_the_local_mark() -> None:
    store, publisher = SlowMarkStore(), MemoryPublisher()
    forwarder = make_forwarder(store, publisher)
    forwarder.start()
    try:
        for round_ in range(3):
            await store.append([storable()])
            for _ in range(300):
                if publisher.transactions > round_:
                    break
                await asyncio.sleep(0.01)
        # three transactions committed while the first mark write is still held up
        assert publisher.transactions == 3
        assert store.marks_started == 1
        assert await store.forwarded_mark() == 0
        store.release.set()
        await wait_drained(store)  # the mark catches up with the latest position
        assert await store.forwarded_mark() == 3
        assert store.marks_started == 2  # the two held-back positions became one write
    finally:
        store.release.set()
        await forwarder.stop()


def spaced_forwarder(
    store: EventStore, publisher: MemoryPublisher, min_interval_s: float
) -> Forwarder:
    settings = ForwarderSettings(
        router=TopicRouter(DEFAULT_ROUTES),
        dead_letter_topic=DLQ,
        instance=InstanceId("test"),
        bootstrap="memory",
        min_interval_s=min_interval_s,
    )
    return Forwarder(store, publisher, settings, GatewayMetrics())


async def transactions_for(min_interval_s: float, events: int) -> tuple[int, int]:
    """Transactions used for ``events`` events appended one at a time, 2 ms apart."""
    store, publisher = MemoryEventStore(), MemoryPublisher()
    forwarder = spaced_forwarder(store, publisher, min_interval_s)
    forwarder.start()
    try:
        for _ in range(events):
            await store.append([storable()])
            await asyncio.sleep(0.002)
        await wait_drained(store)
    finally:
        await forwarder.stop()
    return publisher.transactions, len(publisher.committed)


async def test_steady_load_is_carried_by_fewer_larger_transactions() -> None:
    spaced, forwarded = await transactions_for(0.2, 100)
    unspaced, _ = await transactions_for(0.0, 100)
    assert forwarded == 100
    # 100 events over >= 0.2 s: one transaction per 0.2 s at most (plus the first, at once)
    assert spaced <= unspaced / 5, (spaced, unspaced)


async def test_an_event_after_a_quiet_spell_goes_at_once() -> None:
    store, publisher = MemoryEventStore(), MemoryPublisher()
    # 30 s would time the test out if the first event had to wait
    forwarder = spaced_forwarder(store, publisher, 30.0)
    forwarder.start()
    try:
        await store.append([storable()])
        await asyncio.wait_for(wait_drained(store), 10)
        assert publisher.transactions == 1
    finally:
        await forwarder.stop()
