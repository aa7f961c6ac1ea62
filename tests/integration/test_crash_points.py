"""Crash-point sweep (issue 8): the gateway exits abruptly at each named point of the ingest and
forwarding paths while clients upload with retries; after a restart the checker finds every
acknowledged event in Kafka exactly once, in per-key order, and nothing nobody sent."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import CRASH_EXIT_CODE
from gateway.testing.checker import Ack, check
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.factories import order_placed
from tests.integration.gateway_client import wait_drained
from tests.integration.kafka_topics import TestTopics

pytestmark = pytest.mark.integration

POINTS = [
    "after_parse",
    "mid_store_commit",
    "after_store_commit",
    "before_kafka_commit",
    "after_kafka_commit",
]


class Client:
    """Uploads batches and re-sends each unacknowledged batch until it is acknowledged."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.acked: list[Ack] = []
        self.sent: set[str] = set()
        self.answers: list[str] = []
        self._order = itertools.count()

    async def upload(self, http: httpx.AsyncClient, events: list[dict[str, Any]]) -> bool:
        """One attempt; whether the batch was acknowledged."""
        self.sent |= {e["event_id"] for e in events}
        try:
            answer = await http.post("/v1/events", json={"events": events})
        except httpx.TransportError:
            return False
        if answer.status_code != 200:
            return False
        for event, result in zip(events, answer.json()["results"], strict=True):
            assert result["status"] in ("accepted", "duplicate"), result
            self.answers.append(result["status"])
            self.acked.append(Ack(event["event_id"], event["key"], self.name, next(self._order)))
        return True


@pytest.mark.parametrize("point", POINTS)
async def test_crash_at_each_named_point_loses_and_repeats_nothing(
    kafka_broker: KafkaBroker, tmp_path: Path, point: str
) -> None:
    topics = TestTopics()
    base = topics.settings(kafka_broker.bootstrap) | {"forward_batch_max": "10"}
    data = tmp_path / "gw"
    crashing = GatewayProcess(data, settings=base | {"crash_point": point})
    crashing.start()
    client = Client("c1")
    batches = [[order_placed(f"o-{i % 4}") for i in range(b * 10, b * 10 + 10)] for b in range(6)]
    try:
        async with httpx.AsyncClient(base_url=crashing.url, timeout=10) as http:
            first = batches[0]
            acked = await client.upload(http, first)
            # the ingest points crash before the answer; the forwarder points after the ack
            exit_code = await asyncio.to_thread(crashing.wait, 60)
            assert exit_code == CRASH_EXIT_CODE, crashing.log_tail()
            assert acked == (point in ("before_kafka_commit", "after_kafka_commit"))
    finally:
        crashing.kill()
    restarted = GatewayProcess(data, port=crashing.port, settings=base)
    with restarted:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=30) as http:
            for batch in batches[1:] if acked else batches:
                for _ in range(20):  # re-send until acknowledged, as the SDK does
                    if await client.upload(http, batch):
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise AssertionError(f"batch never acknowledged:\n{restarted.log_tail()}")
            await wait_drained(http)
    report = await check(
        kafka_broker.bootstrap,
        [topics.orders],
        client.acked,
        sent=client.sent,
        stores={"gw": data},
        dead_letter_topic=topics.dead_letters,
    )
    assert report.ok, str(report)
    assert len({a.event_id for a in client.acked}) == 60
    if point == "after_store_commit":
        # stored but never answered: the re-send is answered "duplicate", and it is in Kafka once
        assert client.answers[:10] == ["duplicate"] * 10
