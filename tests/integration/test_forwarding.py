"""Forwarding to a real Kafka broker: outages, dead letters, disk quota (guarantees 3 and 4)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_reader import read_committed
from tests.factories import order_placed
from tests.integration.gateway_client import post_events, wait_drained
from tests.integration.kafka_topics import TestTopics, create_topic
from tests.integration.store_reader import stored_ids

pytestmark = pytest.mark.integration


def big_order(lines: int = 60) -> dict[str, Any]:
    event = order_placed("order-big")
    line = event["payload"]["items"][0]
    event["payload"]["items"] = [dict(line, sku=f"SKU-{i:04d}") for i in range(lines)]
    return event


async def test_events_reach_kafka_once_in_per_key_order(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topics = TestTopics()
    sent: list[dict[str, Any]] = []
    with GatewayProcess(tmp_path / "gw", settings=topics.settings(kafka_broker.bootstrap)) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            for _ in range(10):
                events = [order_placed(f"order-{i % 13}") for i in range(100)]
                answer = await post_events(http, events)
                assert answer.status_code == 200
                sent += events
            status = await wait_drained(http)
    assert status["kafka"]["state"] == "up"
    records = await read_committed(kafka_broker.bootstrap, [topics.orders])
    ids = [r.event_id for r in records]
    assert Counter(ids) == Counter(e["event_id"] for e in sent)
    for key in {e["key"] for e in sent}:
        in_kafka = [r.event_id for r in records if r.key == key.encode()]
        assert in_kafka == [e["event_id"] for e in sent if e["key"] == key]
    headers = records[0].headers
    assert headers["event_type"] == b"Order.Placed"
    assert headers["content-type"] == b"application/json"
    assert json.loads(records[0].value or b"")["event_id"] == records[0].event_id


async def test_outage_longer_than_transaction_timeout_is_survived(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topics = TestTopics()
    settings = {
        **topics.settings(kafka_broker.bootstrap),
        "kafka_transaction_timeout_s": "3",
        "kafka_request_timeout_ms": "2000",
    }
    sent: list[str] = []
    with GatewayProcess(tmp_path / "gw", settings=settings) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:

            async def send(count: int) -> None:
                events = [order_placed(f"order-{i % 5}") for i in range(count)]
                assert (await post_events(http, events)).status_code == 200
                sent.extend(e["event_id"] for e in events)

            await send(100)
            await wait_drained(http)
            kafka_broker.stop()
            try:
                await send(200)  # acks go on: they are local
                outage_end = time.monotonic() + 8  # > transaction and request timeouts
                while time.monotonic() < outage_end:
                    await send(20)
                    await asyncio.sleep(0.5)
                status = (await http.get("/readyz")).json()
                assert status["kafka"]["state"] == "down"
                assert status["backlog"]["events"] >= 200
            finally:
                kafka_broker.start()
            await send(50)
            await wait_drained(http, timeout_s=180)
    records = await read_committed(kafka_broker.bootstrap, [topics.orders])
    assert Counter(r.event_id for r in records) == Counter(sent)


async def test_poison_event_goes_to_dead_letters_and_does_not_block(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """The broker refuses a record too large for its topic: DLQ topic + quarantine, with the
    reason; the events behind it are forwarded."""
    topics = TestTopics()
    await create_topic(kafka_broker.bootstrap, topics.orders, 1, **{"max.message.bytes": "4000"})
    poison = big_order()
    before = [order_placed("order-1") for _ in range(5)]
    after = [order_placed("order-1") for _ in range(5)]
    with GatewayProcess(tmp_path / "gw", settings=topics.settings(kafka_broker.bootstrap)) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            answer = await post_events(http, [*before, poison, *after])
            assert answer.json()["accepted"] == 11
            status = await wait_drained(http)
            metrics = (await http.get("/metrics")).text
        assert status["dlq"]["events"] == 1
        assert "sync_gateway_dlq_events 1.0" in metrics
        env = {**os.environ, "SYNC_GATEWAY_DATA_DIR": str(gw.data_dir)}
        listing = subprocess.run(  # noqa: ASYNC221 (a short CLI call; nothing else runs)
            [sys.executable, "-m", "gateway.cli", "dlq", "list"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    assert poison["event_id"] in listing
    assert "1 quarantined event" in listing
    forwarded = await read_committed(kafka_broker.bootstrap, [topics.orders])
    assert [r.event_id for r in forwarded] == [e["event_id"] for e in [*before, *after]]
    letters = await read_committed(kafka_broker.bootstrap, [topics.dead_letters])
    assert [r.event_id for r in letters] == [poison["event_id"]]
    letter = json.loads(letters[0].value or b"")
    assert letter["intended_topic"] == topics.orders
    assert "TooLarge" in letter["reason"]


async def test_full_store_answers_503_and_recovers_by_itself(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topics = TestTopics()
    settings = {
        **topics.settings(kafka_broker.bootstrap),
        "max_store_bytes": str(600 * 1024),
        "retention_s": "1",
        "prune_interval_s": "0.5",
        "kafka_transaction_timeout_s": "3",
        "kafka_request_timeout_ms": "2000",
    }
    acked: list[str] = []
    with GatewayProcess(tmp_path / "gw", settings=settings) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            kafka_broker.stop()
            try:
                refused: httpx.Response | None = None
                refused_ids: list[str] = []
                for _ in range(300):
                    events = [order_placed(f"order-{i}") for i in range(50)]
                    answer = await post_events(http, events)
                    if answer.status_code == 503:
                        refused, refused_ids = answer, [e["event_id"] for e in events]
                        break
                    assert answer.status_code == 200
                    acked.extend(e["event_id"] for e in events)
                assert refused is not None, "the quota was never reached"
                assert refused.headers["retry-after"].isdigit()
                assert refused.json()["error"]["code"] == "store_unavailable"
                stored = set(stored_ids(gw.data_dir))
                assert set(acked) <= stored
                assert not set(refused_ids) & stored
            finally:
                kafka_broker.start()
            # Kafka is back: the backlog drains, forwarded events age out, ingest recovers.
            recovered = False
            for _ in range(240):
                events = [order_placed("order-x") for _ in range(50)]
                answer = await post_events(http, events)
                if answer.status_code == 200:
                    acked.extend(e["event_id"] for e in events)
                    recovered = True
                    break
                await asyncio.sleep(0.5)
            assert recovered, "ingest did not recover after space returned"
            await wait_drained(http, timeout_s=120)
    records = await read_committed(kafka_broker.bootstrap, [topics.orders])
    assert Counter(r.event_id for r in records) == Counter(acked)
