"""The uploader against a real gateway process (and Kafka): offline start, rejections, a gateway
killed mid-upload, the blocking wrapper; plus the HTTP answers a real gateway rarely gives, through
httpx's mock transport."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from client_sdk.blocking import BlockingOutboxClient
from client_sdk.outbox import Outbox
from client_sdk.records import EventId, NewEvent, Receipt, ReceiptStatus
from client_sdk.states import ConnectionState, StateChange
from client_sdk.uploader import Uploader
from gateway.core.backoff import Backoff
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_reader import read_committed
from tests.factories import order_placed
from tests.integration.gateway_client import wait_drained
from tests.integration.kafka_topics import TestTopics
from tests.integration.store_reader import stored_ids

pytestmark = pytest.mark.integration

GATEWAY_MAX_BATCH = 50


def fast_backoff() -> Backoff:
    return Backoff(base=0.05, cap=0.5)


def order(i: int, **payload_changes: Any) -> NewEvent:
    """A valid Order.Placed v1 event (keys spread over 13 orders), payload changes applied."""
    payload = order_placed(f"order-{i % 13}")["payload"]
    payload.update(payload_changes)
    return NewEvent("Order.Placed", 1, f"order-{i % 13}", payload, source="device-7")


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway without Kafka (ingest does not need it), with small batches: 413 above 50."""
    settings = {
        "kafka_bootstrap": "127.0.0.1:9",
        "max_batch_events": str(GATEWAY_MAX_BATCH),
    }
    with GatewayProcess(tmp_path_factory.mktemp("gateway"), settings=settings) as proc:
        yield proc


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.db") as box:
        yield box


async def test_events_published_while_the_gateway_is_down_reach_kafka_once(
    kafka_broker: KafkaBroker, tmp_path: Path, outbox: Outbox
) -> None:
    topics = TestTopics()
    gw = GatewayProcess(tmp_path / "gw", settings=topics.settings(kafka_broker.bootstrap))
    ids = outbox.publish_many(order(i) for i in range(2000))
    states: list[StateChange] = []
    uploader = Uploader(
        outbox, gw.url, backoff=fast_backoff(), on_state=states.append, poll_interval=0.2
    )
    runner = asyncio.create_task(uploader.run())
    try:
        await wait_for(lambda: uploader.connection is ConnectionState.OFFLINE, 30, "offline")
        stats = await uploader.stats()
        assert stats.pending == 2000
        assert stats.last_error is not None
        assert "connect" in stats.last_error.lower()
        await asyncio.to_thread(gw.start, 60)
        started = time.monotonic()
        await uploader.flush(timeout=60)
        elapsed = time.monotonic() - started
        print(f"\n2000 events uploaded {elapsed:.2f} s after the gateway started")
        stats = await uploader.stats()
        assert (stats.pending, stats.oldest_pending_age_s, stats.last_error) == (0, None, None)
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            await wait_drained(http)
    finally:
        await uploader.close()
        await asyncio.wait_for(runner, 10)
        gw.stop()
    assert [c.state for c in states][:2] == [ConnectionState.OFFLINE, ConnectionState.ONLINE]
    assert states[-1].state is ConnectionState.CLOSED
    records = await read_committed(kafka_broker.bootstrap, [topics.orders])
    assert Counter(r.event_id for r in records) == Counter(ids)
    assert {r.status for r in outbox.receipts(limit=5000)} == {ReceiptStatus.ACCEPTED}


async def test_rejected_events_get_reasons_and_do_not_block_the_rest(
    gateway: GatewayProcess, outbox: Outbox
) -> None:
    """Default batches (500) exceed the gateway's 50: the 413s halve them on the way."""
    events = [order(i) for i in range(300)]
    bad_positions = {3, 60, 61, 299}
    for i in bad_positions:
        events[i] = order(i, userId=None)  # null where the schema wants a string
    events[150] = NewEvent("Order.Exploded", 1, "order-1", {"x": 1}, source="device-7")
    ids = outbox.publish_many(events)
    receipts: list[Receipt] = []
    async with Uploader(outbox, gateway.url, on_receipt=receipts.append) as uploader:
        notices = uploader.events()
        await uploader.flush(timeout=60)
        await uploader.close()
        seen = [notice async for notice in notices]
    by_id = {r.event_id: r for r in receipts}
    assert set(by_id) == set(ids)
    rejected_ids = {ids[i] for i in bad_positions} | {ids[150]}
    for event_id in rejected_ids:
        assert by_id[event_id].status is ReceiptStatus.REJECTED
    assert by_id[ids[3]].code == "invalid_payload"
    assert by_id[ids[3]].field == "payload.userId"
    assert by_id[ids[150]].code == "unknown_event_type"
    assert all(by_id[i].status is ReceiptStatus.ACCEPTED for i in set(ids) - rejected_ids)
    stored = set(stored_ids(gateway.data_dir))
    assert set(ids) - rejected_ids <= stored
    assert not rejected_ids & stored
    moved = outbox.rejected()
    assert [r.event_id for r in moved] == [i for i in ids if i in rejected_ids]
    assert all(r.message for r in moved)
    assert (outbox.stats().pending, outbox.stats().rejected) == (0, 5)
    assert [n for n in seen if isinstance(n, Receipt)] == receipts
    assert isinstance(seen[-1], StateChange)
    assert seen[-1].state is ConnectionState.CLOSED


async def test_gateway_killed_and_restarted_mid_upload_loses_and_doubles_nothing(
    kafka_broker: KafkaBroker, tmp_path: Path, outbox: Outbox
) -> None:
    topics = TestTopics()
    total = 6000
    answered: list[Receipt] = []
    with GatewayProcess(tmp_path / "gw", settings=topics.settings(kafka_broker.bootstrap)) as gw:
        ids = outbox.publish_many(order(i) for i in range(total))
        uploader = Uploader(
            outbox,
            gw.url,
            batch_events=100,
            backoff=fast_backoff(),
            on_receipt=answered.append,
            poll_interval=0.2,
        )
        runner = asyncio.create_task(uploader.run())
        try:
            for _ in range(2):
                target = len(answered) + 1000
                await wait_for(lambda: len(answered) >= target, 60, "uploads")  # noqa: B023
                gw.kill()
                await wait_for(
                    lambda: uploader.connection is ConnectionState.OFFLINE, 30, "offline"
                )
                assert (await uploader.stats()).pending > 0, "upload finished before the kill"
                await asyncio.to_thread(gw.start, 60)
            await uploader.flush(timeout=120)
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
                await wait_drained(http, timeout_s=180)
        finally:
            await uploader.close()
            await asyncio.wait_for(runner, 10)
    statuses = Counter(r.status for r in answered)
    print(f"\nreceipts across two gateway kills: {dict(statuses)}")
    assert {r.event_id for r in answered} == set(ids)
    assert statuses[ReceiptStatus.REJECTED] == 0
    records = await read_committed(kafka_broker.bootstrap, [topics.orders])
    assert Counter(r.event_id for r in records) == Counter(ids)


def test_blocking_client_from_plain_code(gateway: GatewayProcess, tmp_path: Path) -> None:
    received: list[Receipt] = []
    with BlockingOutboxClient(
        tmp_path / "outbox.db", gateway.url, encoding="json", on_receipt=received.append
    ) as client:
        ids = [
            client.publish(
                "Order.Placed", 1, f"order-{i}", order_placed()["payload"], source="script"
            )
            for i in range(120)
        ]
        client.flush(timeout=30)
        stats = client.stats()
        assert (stats.pending, stats.rejected) == (0, 0)
        assert [r.event_id for r in client.outbox.receipts(limit=500)] == ids
    assert {r.event_id for r in received} == set(ids)
    assert set(ids) <= set(stored_ids(gateway.data_dir))
    # reopening the same outbox later: nothing left to send
    with BlockingOutboxClient(tmp_path / "outbox.db", gateway.url) as again:
        again.flush(timeout=5)
        assert again.stats().pending == 0


# -- answers a healthy gateway rarely gives, through a mock transport ----------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def answer_all(request: httpx.Request, status: str = "accepted") -> httpx.Response:
    """A gateway's 200 answer (msgpack) accepting every event of the request."""
    events = msgpack.unpackb(request.content)["events"]
    results = [
        {"index": i, "status": status, "event_id": e["event_id"]} for i, e in enumerate(events)
    ]
    body = msgpack.packb({"results": results})
    return httpx.Response(200, content=body, headers={"content-type": "application/msgpack"})


@pytest.fixture
async def mock_http() -> AsyncIterator[Callable[[Handler], httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def make(handler: Handler) -> httpx.AsyncClient:
        clients.append(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


async def test_retry_after_is_honoured_and_5xx_retried(
    outbox: Outbox, mock_http: Callable[[Handler], httpx.AsyncClient]
) -> None:
    answers = iter(
        [
            httpx.Response(
                503,
                json={"error": {"code": "store_unavailable", "message": "full"}},
                headers={"retry-after": "1"},
            ),
            httpx.Response(500, text="boom"),
        ]
    )
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        return next(answers, None) or answer_all(request)

    ids = outbox.publish_many(order(i) for i in range(10))
    async with Uploader(outbox, "http://gw", backoff=fast_backoff(), http=mock_http(handler)) as up:
        await up.flush(timeout=10)
    assert len(times) == 3
    assert times[1] - times[0] >= 0.95  # Retry-After: 1
    assert {r.event_id for r in outbox.receipts()} == set(ids)


async def test_garbled_answer_and_connection_errors_lose_nothing(
    outbox: Outbox, mock_http: Callable[[Handler], httpx.AsyncClient]
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused")
        if calls == 2:
            raise httpx.ReadTimeout("slow")
        if calls == 3:  # stored, but the answer is cut: re-sent, comes back duplicate
            return httpx.Response(
                200, content=b"\x81\xa7res", headers={"content-type": "application/msgpack"}
            )
        return answer_all(request, "duplicate")

    ids = outbox.publish_many(order(i) for i in range(10))
    async with Uploader(outbox, "http://gw", backoff=fast_backoff(), http=mock_http(handler)) as up:
        await up.flush(timeout=10)
    assert calls == 4
    assert [(r.event_id, r.status) for r in outbox.receipts()] == [
        (i, ReceiptStatus.DUPLICATE) for i in ids
    ]


async def test_refused_batch_keeps_events_and_flush_times_out(
    outbox: Outbox, mock_http: Callable[[Handler], httpx.AsyncClient]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            415, json={"error": {"code": "unsupported_media_type", "message": "no"}}
        )

    outbox.publish_many(order(i) for i in range(3))
    async with Uploader(outbox, "http://gw", backoff=fast_backoff(), http=mock_http(handler)) as up:
        with pytest.raises(TimeoutError) as caught:
            await up.flush(timeout=0.5)
        assert getattr(caught.value, "pending", None) == 3
        assert up.last_error is not None
        assert "unsupported_media_type" in up.last_error
    stats = outbox.stats()
    assert stats.pending == 3
    assert stats.last_error is not None


async def test_lone_event_refused_with_413_is_moved_aside(
    outbox: Outbox, mock_http: Callable[[Handler], httpx.AsyncClient]
) -> None:
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        events = msgpack.unpackb(request.content)["events"]
        sizes.append(len(events))
        if any("huge" in e["payload"] for e in events):
            return httpx.Response(413, json={"error": {"code": "body_too_large", "message": "big"}})
        return answer_all(request)

    ids = outbox.publish_many([order(0), order(1), order(2, huge="x" * 10), order(3)])
    async with Uploader(outbox, "http://gw", http=mock_http(handler)) as up:
        await up.flush(timeout=10)
    assert sizes[0] == 4  # then halved until the big one goes alone
    assert sizes.count(1) >= 1
    [moved] = outbox.rejected()
    assert (moved.event_id, moved.code) == (ids[2], "body_too_large")
    assert {r.event_id for r in outbox.receipts()} == {ids[0], ids[1], ids[3]}


async def test_json_encoding_sends_the_stored_envelopes(
    outbox: Outbox, mock_http: Callable[[Handler], httpx.AsyncClient]
) -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == "application/json"
        body = json.loads(request.content)
        bodies.append(body)
        results = [{"index": i, "status": "accepted"} for i in range(len(body["events"]))]
        return httpx.Response(200, json={"results": results})

    ids: list[EventId] = outbox.publish_many(order(i) for i in range(3))
    async with Uploader(outbox, "http://gw", encoding="json", http=mock_http(handler)) as up:
        await up.flush(timeout=10)
    assert [e["event_id"] for e in bodies[0]["events"]] == ids
    assert outbox.stats().pending == 0
