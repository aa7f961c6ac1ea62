"""Load against a running gateway: templated event bodies, paced or full-speed HTTP clients,
and the gateway's backlog as /readyz reports it (shared by the forward benchmark's phases)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import msgpack

from benchmarks.common import MSGPACK, RawHttpConnection
from gateway.core.envelope import parse_envelope
from gateway.core.forwarding import event_record
from gateway.core.ids import LocalSeq
from gateway.core.ingest import StorableEvent
from gateway.core.records import OutRecord, StoredEvent
from gateway.core.rejections import Rejection
from gateway.core.routing import DEFAULT_ROUTES, TopicRouter
from gateway.testing.gateway_process import GatewayProcess
from tests.factories import order_placed

KEYS = 1000
ID_SLOT = "ffffffff-ffff-4fff-bfff-ffffffffffff"
KEY_SLOT = "order-#####"


class EventSource:
    """Order.Placed events with sequential ids and fixed-width keys, so that every event (and
    every Kafka record) has the same size, made by patching one template: cheap enough for the
    load side to cost far less than the gateway."""

    def __init__(self) -> None:
        self._run = uuid.uuid4().hex[:8]
        self._next = 0
        packed: bytes = msgpack.packb(order_placed(KEY_SLOT, event_id=ID_SLOT))
        self._packed = packed

    def event_id(self, n: int) -> str:
        return f"{self._run}-0000-4000-8000-{n:012x}"

    @staticmethod
    def key(n: int) -> str:
        return f"order-{n % KEYS:05d}"

    def take(self) -> int:
        """The number of a new event (for senders that build their own records)."""
        self._next += 1
        return self._next - 1

    def body(self, count: int) -> tuple[bytes, list[str]]:
        """A msgpack ``{"events": [...]}`` body of ``count`` new events, and their ids."""
        start, self._next = self._next, self._next + count
        ids = [self.event_id(n) for n in range(start, start + count)]
        header: bytes = msgpack.packb({"events": [None] * count})[:-count]  # None packs as 1 byte
        parts = [header]
        for n, event_id in zip(range(start, start + count), ids, strict=True):
            parts.append(
                self._packed.replace(ID_SLOT.encode(), event_id.encode()).replace(
                    KEY_SLOT.encode(), self.key(n).encode()
                )
            )
        return b"".join(parts), ids


def template_record() -> OutRecord:
    """The record the gateway's own code makes of a template event (value, key, headers)."""
    parsed = parse_envelope(order_placed(KEY_SLOT, event_id=ID_SLOT))
    if isinstance(parsed, Rejection):
        raise RuntimeError(f"the template event is refused: {parsed}")
    stored = StoredEvent(LocalSeq(1), StorableEvent.from_envelope(*parsed), 0)
    return event_record(stored, TopicRouter(DEFAULT_ROUTES))


# -- the gateway's side ------------------------------------------------------------------------


async def readiness(http: httpx.AsyncClient) -> dict[str, Any]:
    answer = await http.get("/readyz")
    details: dict[str, Any] = answer.json()
    return details


async def backlog_events(http: httpx.AsyncClient) -> int:
    return int((await readiness(http))["backlog"]["events"])


async def downstream_consumed(http: httpx.AsyncClient) -> int:
    return int((await downstream(http))["consumed"])


async def downstream(http: httpx.AsyncClient) -> dict[str, Any]:
    details: dict[str, Any] = (await http.get("/readyz")).json()["downstream"]
    return details


async def wait_quiet(
    gateway: GatewayProcess, settle: float = 1.0, timeout_s: float = 300.0
) -> None:
    """Until the gateway's downstream consumer has no lag and consumed nothing new for
    ``settle`` s (so that a phase does not start with the last one's backlog)."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        deadline = time.perf_counter() + timeout_s
        previous, since = await downstream_consumed(http), time.perf_counter()
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            state = await downstream(http)
            if state["consumed"] != previous or state["lag"]:
                previous, since = state["consumed"], time.perf_counter()
            elif time.perf_counter() - since >= settle:
                return
    raise TimeoutError(f"the gateway's consumer still busy after {timeout_s:g}s")


async def wait_for_empty_backlog(http: httpx.AsyncClient, timeout_s: float) -> float:
    """Poll until the backlog is 0; the time it became 0 (perf_counter)."""
    end = time.perf_counter() + timeout_s
    while time.perf_counter() < end:
        if await backlog_events(http) == 0:
            return time.perf_counter()
        await asyncio.sleep(0.1)
    raise TimeoutError(f"backlog not forwarded within {timeout_s:g}s")


@dataclass
class Load:
    acked: int = 0
    requests: int = 0


async def post_batch(connection: RawHttpConnection, body: bytes, count: int, load: Load) -> None:
    status, answer = await connection.post("/v1/events", body, MSGPACK)
    if status != 200:
        raise RuntimeError(f"{status}: {answer[:300]!r}")
    results: dict[str, Any] = msgpack.unpackb(answer)
    if results["accepted"] != count:
        raise RuntimeError(f"only {results['accepted']} of {count} events accepted")
    load.acked += count
    load.requests += 1


async def full_speed(
    port: int, source: EventSource, clients: int, batch: int, seconds: float, load: Load
) -> float:
    """Clients POST new batches back to back for ``seconds``; the elapsed time."""
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        connection = RawHttpConnection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                body, _ = source.body(batch)
                await post_batch(connection, body, batch, load)
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started


async def upload(port: int, source: EventSource, clients: int, batch: int, events: int) -> None:
    """POST exactly ``events`` new events, as fast as possible."""
    load = Load()
    todo = [batch] * (events // batch) + ([events % batch] if events % batch else [])

    async def client() -> None:
        connection = RawHttpConnection("127.0.0.1", port)
        try:
            while todo:
                count = todo.pop()
                body, _ = source.body(count)
                await post_batch(connection, body, count, load)
        finally:
            await connection.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    assert load.acked == events
