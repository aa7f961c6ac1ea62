"""Graceful shutdown of a real gateway process (SIGTERM): websockets are closed with 1012
(reconnect elsewhere), a waiting long-poll is answered at once, readiness fails, the backlog is
flushed to Kafka and the process exits within its deadline; on restart the streams resume."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_reader import read_committed
from tests.factories import inventory_updated, order_placed
from tests.integration.gateway_client import post_events, wait_streaming
from tests.integration.kafka_topics import TestTopics
from tests.integration.stream_client import StreamClient, stream

pytestmark = pytest.mark.integration

GRACE_S = 4
DRAIN_S = 5


async def read_until_closed(client: StreamClient) -> None:
    for _ in range(10_000):
        await client.recv(wait=60)


async def test_sigterm_closes_streams_with_1012_answers_polls_and_flushes_the_backlog(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topics = TestTopics()
    settings = topics.settings(kafka_broker.bootstrap) | {
        "shutdown_grace_s": str(GRACE_S),
        "shutdown_drain_s": str(DRAIN_S),
    }
    gw = GatewayProcess(tmp_path / "gw", settings=settings)
    gw.start()
    try:
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as http:
            await wait_streaming(http, 6)
            async with stream(gw.url) as client:
                await client.subscribe("inv", "inventory:s-1")
                await client.expect("subscribed")
                await client.expect("live")
                answer = await post_events(http, [inventory_updated("s-1", "SKU-1", 1)])
                assert answer.status_code == 200
                updates, _ = await client.updates("inv", 1, wait=60)
                cursor = client.cursors["inv"]
                poll = asyncio.create_task(
                    http.get("/v1/changes", params={"channel": "orders:nobody", "wait": "30"})
                )
                await asyncio.sleep(0.5)  # the poll is waiting
                # events still in the backlog when the signal comes are flushed before exit
                orders = [order_placed(f"o-{i}") for i in range(200)]
                assert (await post_events(http, orders)).status_code == 200
                signalled = time.monotonic()
                gw.sigterm()
                answered = await asyncio.wait_for(poll, 10)
                assert answered.status_code == 200
                assert time.monotonic() - signalled < GRACE_S  # not held to the grace period
                with pytest.raises(ConnectionClosed):
                    await read_until_closed(client)
                assert client.ws.close_code == 1012
        code = await asyncio.to_thread(gw.wait, GRACE_S + DRAIN_S + 20)
        elapsed = time.monotonic() - signalled
        # uvicorn re-raises the signal after its graceful shutdown: exit "by SIGTERM"
        assert code in (0, -signal.SIGTERM), gw.log_tail()
        assert "Application shutdown complete" in gw.log_tail()
        assert elapsed < GRACE_S + DRAIN_S + 10
        in_kafka = {
            r.event_id for r in await read_committed(kafka_broker.bootstrap, [topics.orders])
        }
        assert {e["event_id"] for e in orders} <= in_kafka
        # back up: the stream resumes from the cursor, on the same or any other instance
        gw.start()
        async with stream(gw.url) as client:
            await client.subscribe("inv", "inventory:s-1", cursor)
            await client.expect("subscribed")
            assert (await client.recv(wait=30))["type"] == "live"  # nothing missed, no repeat
        assert updates[0]["data"]["payload"]["quantity"] == 1
    finally:
        gw.kill()
