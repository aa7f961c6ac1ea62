"""WS /v1/stream and GET /v1/changes against a real gateway process and a real broker:
updates published through the gateway come back over Kafka to subscribers, resumable by
cursor, in both encodings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.factories import inventory_updated
from tests.integration.gateway_client import post_events, streaming_gateway
from tests.integration.kafka_topics import TestTopics
from tests.integration.stream_client import StalledClient, StreamClient, stream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def topics() -> TestTopics:
    return TestTopics()


@pytest.fixture(scope="module")
def gateway(
    kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory, topics: TestTopics
) -> Iterator[GatewayProcess]:
    settings = topics.settings(kafka_broker.bootstrap) | {
        "stream_queue_max": "200",
        "stream_send_stall_timeout_s": "2",
    }
    with streaming_gateway(tmp_path_factory.mktemp("gw"), settings) as gw:
        yield gw


def quantities(updates: list[dict[str, Any]]) -> list[int]:
    return [u["data"]["payload"]["quantity"] for u in updates]


async def publish(gw: GatewayProcess, store: str, quantities: range) -> None:
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
        events = [inventory_updated(store, "SKU-1", q) for q in quantities]
        answer = await post_events(http, events)
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_live_then_resume_after_disconnect_exactly_once(
    gateway: GatewayProcess, encoding: str
) -> None:
    store = f"s-{encoding}"
    channel = f"inventory:{store}"
    async with stream(gateway.url, encoding) as client:
        await client.subscribe("a", channel)
        assert (await client.expect("subscribed"))["channel"] == channel
        await client.expect("live")
        await publish(gateway, store, range(0, 10))
        got, others = await client.updates("a", 10)
        assert quantities(got) == list(range(10))
        assert others == []
        assert all(u["data"]["event_type"] == "Inventory.Updated" for u in got)
        cursor = client.cursors["a"]
    await publish(gateway, store, range(10, 25))  # while the client is away
    async with stream(gateway.url, encoding) as client:
        await client.subscribe("b", channel, cursor)
        await client.expect("subscribed")
        got, others = await client.updates("b", 15)
        await publish(gateway, store, range(25, 30))
        live, more = await client.updates("b", 5)
    assert quantities(got + live) == list(range(10, 30))
    assert [f["type"] for f in others + more] == ["live"]


async def test_other_channels_are_not_delivered(gateway: GatewayProcess) -> None:
    async with stream(gateway.url) as client:
        await client.subscribe("mine", "inventory:s-mine")
        await client.expect("subscribed")
        await client.expect("live")
        await publish(gateway, "s-other", range(0, 5))
        await publish(gateway, "s-mine", range(100, 101))
        got, others = await client.updates("mine", 1)
    assert quantities(got) == [100]
    assert others == []


BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("not json", "malformed_frame"),
    (b"\x93\x01\x02", "malformed_frame"),
    ("[1, 2]", "malformed_frame"),
    ('{"type": "launch"}', "unknown_type"),
    ('{"no": "type"}', "unknown_type"),
    ('{"type": "subscribe", "sub": "bad id!", "channel": "inventory:s-1"}', "invalid_field"),
    ('{"type": "subscribe", "sub": "x", "channel": "../etc"}', "invalid_channel"),
    (
        '{"type": "subscribe", "sub": "x", "channel": "inventory:s-1", "cursor": "garbage"}',
        "invalid_cursor",
    ),
    (
        '{"type": "subscribe", "sub": "x", "channel": "inventory:s-1", "cursor": 5}',
        "invalid_cursor",
    ),
    ('{"type": "unsubscribe", "sub": "nope"}', "unknown_subscription"),
    ('{"type": "publish", "req": "r1", "events": "x"}', "invalid_field"),
    ('{"type": "publish", "req": "r1", "events": [{"event_id": 1}]}', ""),  # per-event reject
]


async def test_bad_frames_get_error_frames_and_the_connection_goes_on(
    gateway: GatewayProcess,
) -> None:
    async with stream(gateway.url) as client:
        for frame, code in BAD_FRAMES:
            await client.ws.send(frame)
            answer = await client.recv()
            if code:
                assert (answer["type"], answer["code"]) == ("error", code), frame
            else:
                assert answer["type"] == "ack", answer
                assert answer["results"][0]["status"] == "rejected"
        await client.subscribe("ok", "inventory:s-ok")
        assert (await client.expect("subscribed"))["sub"] == "ok"
        await client.expect("live")
        await client.subscribe("ok", "inventory:s-ok")
        assert (await client.expect("error"))["code"] == "duplicate_subscription"
        await client.send({"type": "ping"})
        await client.expect("pong")


async def test_forged_cursor_is_refused(gateway: GatewayProcess) -> None:
    async with stream(gateway.url) as client:
        await client.subscribe("a", "inventory:s-forge")
        await client.expect("subscribed")
        token = (await client.expect("live"))["cursor"]
        forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
        await client.subscribe("b", "inventory:s-forge", forged)
        answer = await client.expect("error")
    assert (answer["code"], answer["sub"]) == ("invalid_cursor", "b")
    assert "bad_signature" in answer["message"]


async def test_oversize_frame_closes_with_1009(gateway: GatewayProcess) -> None:
    async with stream(gateway.url, max_size=None) as client:
        await client.ws.send("x" * (1024 * 1024 + 10))
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_publish_over_the_websocket_is_acked_per_event(gateway: GatewayProcess) -> None:
    event = inventory_updated("s-ws", "SKU-9", 7)
    async with stream(gateway.url, "msgpack") as client:
        await client.send({"type": "publish", "req": "r1", "events": [event, event]})
        ack = await client.expect("ack")
    assert ack["req"] == "r1"
    assert [r["status"] for r in ack["results"]] == ["accepted", "duplicate"]


async def test_long_poll_changes_resumes_by_cursor(gateway: GatewayProcess) -> None:
    channel = "inventory:s-poll"
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        first = (await http.get("/v1/changes", params={"channel": channel, "wait": 0})).json()
        assert (first["live"], first["events"]) == (True, [])
        assert first["cursor"]
        await publish(gateway, "s-poll", range(0, 7))
        got: list[dict[str, Any]] = []
        cursor = first["cursor"]
        for _ in range(20):
            if len(got) >= 7:
                break
            answer = (
                await http.get(
                    "/v1/changes", params={"channel": channel, "cursor": cursor, "wait": 5}
                )
            ).json()
            got += answer["events"]
            cursor = answer["cursor"]
        assert quantities(got) == list(range(7))
        again = await http.get(
            "/v1/changes", params={"channel": channel, "cursor": cursor, "wait": 0.2}
        )
        assert again.json()["events"] == []
        bad = await http.get("/v1/changes", params={"channel": channel, "cursor": "zz"})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_cursor"
        missing = await http.get("/v1/changes")
        assert missing.status_code == 400


async def publish_many(gw: GatewayProcess, store: str, total: int, batch: int = 500) -> None:
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as http:
        for start in range(0, total, batch):
            events = [
                inventory_updated(store, "SKU-1", q) | {"correlation_id": "c" * 100}
                for q in range(start, min(total, start + batch))
            ]
            for event in events:
                event["payload"] |= {"reference": "r" * 128, "deviceId": "d" * 128}
            answer = await post_events(http, events)
            assert answer.status_code == 200, answer.text


async def read_until_closed(
    client: StreamClient, max_frames: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Updates received until the server closed the connection, and its close code."""
    got: list[dict[str, Any]] = []
    try:
        for _ in range(max_frames):
            got += (await client.recv(wait=30)).get("events", [])
    except ConnectionClosed as closed:
        return got, closed.rcvd.code if closed.rcvd is not None else None
    raise AssertionError("the connection was not closed")


async def slow_closes(gw: GatewayProcess, count: int) -> None:
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
        for _ in range(600):
            lines = (await http.get("/metrics")).text.splitlines()
            name = "sync_gateway_stream_slow_consumer_closes_total "
            value = next(float(x.split()[1]) for x in lines if x.startswith(name))
            if value >= count:
                return
            await asyncio.sleep(0.1)
    raise AssertionError("no slow-consumer close")


async def test_stalled_client_is_closed_and_resumes_fast_one_unaffected(
    gateway: GatewayProcess,
) -> None:
    channel, total = "inventory:s-slow", 6000
    stalled = StalledClient(gateway.url)
    try:
        stalled.send({"type": "subscribe", "sub": "s", "channel": channel, "cursor": None})
        async with stream(gateway.url) as fast:
            await fast.subscribe("s", channel)
            await fast.expect("subscribed")
            await fast.expect("live")
            await publish_many(gateway, "s-slow", total)
            await slow_closes(gateway, 1)  # the stalled one is being closed: now let it read
            reading = asyncio.create_task(asyncio.to_thread(stalled.read_all))
            fast_got, fast_other = await fast.updates("s", total, wait=120)
            frames, code = await reading
    finally:
        stalled.close()
    assert quantities(fast_got) == list(range(total))
    assert fast_other == []
    assert code == 4001
    slow_got = [u for f in frames if f["type"] == "events" for u in f["events"]]
    assert 0 < len(slow_got) < total
    assert quantities(slow_got) == list(range(len(slow_got)))
    cursor = [f["cursor"] for f in frames if f["type"] == "live"][-1]
    if slow_got:
        cursor = slow_got[-1]["cursor"]
    async with stream(gateway.url) as again:
        await again.subscribe("s", channel, cursor)
        rest, _ = await again.updates("s", total - len(slow_got), wait=60)
    assert quantities(slow_got + rest) == list(range(total))


async def test_a_cursor_from_one_instance_resumes_on_another(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
    topics: TestTopics,
    gateway: GatewayProcess,
) -> None:
    channel = "inventory:s-cross"
    async with stream(gateway.url) as client:
        await client.subscribe("a", channel, None)
        await client.expect("subscribed")
        await client.expect("live")
        await publish(gateway, "s-cross", range(0, 10))
        got, _ = await client.updates("a", 10)
        middle = got[7]["cursor"]  # after quantity 7
    assert quantities(got) == list(range(10))
    settings = topics.settings(kafka_broker.bootstrap) | {"instance_id": f"{topics.prefix}-gw2"}
    with GatewayProcess(tmp_path / "gw2", settings=settings) as other:
        async with stream(other.url, "msgpack") as client:
            await client.subscribe("b", channel, middle)
            await client.expect("subscribed")
            rest, frames = await client.updates("b", 2, wait=60)
            await publish(gateway, "s-cross", range(10, 12))  # through the first instance
            live, _ = await client.updates("b", 2, wait=60)
    assert quantities(rest) == [8, 9]
    assert [f["type"] for f in frames] in ([], ["live"])
    assert quantities(live) == [10, 11]


async def test_snapshot_then_stream_from_its_cursor(gateway: GatewayProcess) -> None:
    store, channel = "s-snap", "inventory:s-snap"
    events = [inventory_updated(store, f"SKU-{i % 3}", i) for i in range(9)]
    async with stream(gateway.url) as client:
        await client.subscribe("w", channel)
        await client.expect("subscribed")
        await client.expect("live")
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            assert (await post_events(http, events)).status_code == 200
            await client.updates("w", 9)  # all of them are in the log now
            page = (await http.get("/v1/snapshot", params={"channel": channel})).json()
            other = await http.get("/v1/snapshot", params={"channel": "orders:u-1"})
    assert {i["key"]: i["data"]["payload"]["quantity"] for i in page["items"]} == {
        f"{store}:SKU-0": 6,
        f"{store}:SKU-1": 7,
        f"{store}:SKU-2": 8,
    }
    assert page["next"] is None
    assert other.status_code == 404
    async with stream(gateway.url) as client:
        await client.subscribe("s", channel, page["cursor"])
        await client.expect("subscribed")
        await client.expect("live")
        await publish(gateway, store, range(100, 101))
        got, others = await client.updates("s", 1)
    assert quantities(got) == [100]
    assert others == []


async def test_cached_updates_replay_while_kafka_is_down(
    gateway: GatewayProcess, kafka_broker: KafkaBroker
) -> None:
    channel = "inventory:s-down"
    async with stream(gateway.url) as client:
        await client.subscribe("a", channel)
        await client.expect("subscribed")
        await client.expect("live")
        await publish(gateway, "s-down", range(6))
        got, _ = await client.updates("a", 6)
    kafka_broker.stop()
    try:
        async with stream(gateway.url, "msgpack") as client:
            await client.subscribe("b", channel, got[1]["cursor"])
            await client.expect("subscribed")
            replayed, others = await client.updates("b", 4)
            others.append(await client.recv())
    finally:
        kafka_broker.start()
    assert quantities(replayed) == [2, 3, 4, 5]
    assert [f["type"] for f in others] == ["live"]
