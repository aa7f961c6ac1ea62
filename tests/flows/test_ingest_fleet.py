"""The ingest flow of two instances sharing one real Redis: an event accepted by one is
``duplicate`` on the other, a batch another instance is storing is retried, a failed commit
releases its claims, and Redis down or flushed never loses an acknowledged event."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from gateway.adapters.memory_store import MemoryEventStore
from gateway.adapters.redis_dedup import RedisFleetDedup
from gateway.core.authz import Principal
from gateway.core.ingest import IngestLimits, StorableEvent
from gateway.core.schemas import SchemaRegistry, default_schema_root
from gateway.errors import InFlightElsewhere, StoreUnavailable
from gateway.flows.ingest import IngestFlow
from gateway.metrics import GatewayMetrics
from gateway.testing.redis_server import RedisServer
from tests.factories import order_placed

pytestmark = pytest.mark.integration

SCHEMAS = SchemaRegistry.load(default_schema_root())
ANYONE = Principal.insecure_anonymous()


class FailingStore(MemoryEventStore):
    async def append(self, events: Sequence[StorableEvent]) -> list[bool]:
        raise StoreUnavailable("disk full (test)")


@dataclass
class Instance:
    flow: IngestFlow
    store: MemoryEventStore
    fleet: RedisFleetDedup
    metrics: GatewayMetrics

    async def send(self, *events: dict[str, object]) -> list[str]:
        results = await self.flow.ingest({"events": list(events)}, ANYONE)
        return [r.status.value for r in results]


def instance(url: str, name: str, store: MemoryEventStore | None = None) -> Instance:
    store = store if store is not None else MemoryEventStore()
    fleet = RedisFleetDedup(url, name, window_s=3600, pending_ttl_s=30)
    metrics = GatewayMetrics()
    flow = IngestFlow(
        store=store,
        checker=SCHEMAS,
        ingest_limits=IngestLimits(max_batch_events=100, max_event_bytes=64 * 1024),
        metrics=metrics,
        fleet=fleet,
    )
    return Instance(flow, store, fleet, metrics)


@pytest.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[tuple[Instance, Instance]]:
    a, b = instance(redis_server.url, "gw-a"), instance(redis_server.url, "gw-b")
    try:
        yield a, b
    finally:
        await a.fleet.close()
        await b.fleet.close()


async def test_accepted_on_one_instance_is_duplicate_on_the_other(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    e1, e2 = order_placed("o-1"), order_placed("o-2")
    assert await a.send(e1) == ["accepted"]
    assert await b.send(e1, e2) == ["duplicate", "accepted"]
    assert await b.store.count() == 1  # only e2: no second copy of e1 in the fleet
    assert await a.send(e1, e2) == ["duplicate", "duplicate"]
    assert await a.store.count() == 1
    assert b.metrics.registry.get_sample_value("sync_gateway_fleet_duplicates_total") == 1


async def test_a_batch_another_instance_is_storing_is_retried_not_duplicated(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    event = order_placed("o-3")
    await a.fleet.claim([event["event_id"]])  # a is storing it right now
    with pytest.raises(InFlightElsewhere):
        await b.send(event, order_placed("o-4"))
    assert await b.store.count() == 0  # nothing of the batch stored, nothing acked
    await a.fleet.release([event["event_id"]])  # a failed before committing
    assert await b.send(event) == ["accepted"]  # so b takes it: never lost


async def test_a_failed_commit_releases_its_claims(redis_server: RedisServer) -> None:
    failing = instance(redis_server.url, "gw-f", FailingStore())
    healthy = instance(redis_server.url, "gw-h")
    try:
        event = order_placed("o-5")
        with pytest.raises(StoreUnavailable):
            await failing.send(event)
        assert await healthy.send(event) == ["accepted"]  # no pending claim left behind
    finally:
        await failing.fleet.close()
        await healthy.fleet.close()


async def test_redis_down_or_flushed_loses_nothing(
    pair: tuple[Instance, Instance], redis_server: RedisServer
) -> None:
    a, b = pair
    before = order_placed("o-6")
    assert await a.send(before) == ["accepted"]
    redis_server.kill()
    try:
        during = order_placed("o-7")
        assert await a.send(during) == ["accepted"]  # ingest goes on: local dedup only
        assert await a.send(during) == ["duplicate"]  # and the local store still dedups
        unavailable = "sync_gateway_fleet_dedup_unavailable_total"
        assert (a.metrics.registry.get_sample_value(unavailable) or 0) >= 1
    finally:
        redis_server.start()
    # Redis restarted empty: its memory of `before` is gone. A retry of it on b is the
    # documented bound (a second copy), never a loss; `during` likewise.
    for flow in (a, b):
        await flow.fleet.close()
    a2, b2 = instance(redis_server.url, "gw-a", a.store), instance(redis_server.url, "gw-b")
    try:
        assert await b2.send(before) == ["accepted"]
        assert await a2.send(before) == ["duplicate"]
        fresh = order_placed("o-8")
        assert await a2.send(fresh) == ["accepted"]
        assert await b2.send(fresh) == ["duplicate"]  # shared again once Redis is back
    finally:
        await a2.fleet.close()
        await b2.fleet.close()
