"""Guarantee 5 under random interleavings: records published to Kafka, clients that drop and
come back with their last cursors, gateway restarts (graceful and SIGKILL) and Kafka restarts.

Each simulated device applies an update and persists its cursor in one step, as the protocol
asks. The checker fails on any duplicate, any out-of-order record within a partition, any reset,
and, at the end, any record of a subscribed channel that never arrived. Seeds are fixed so a
failure replays; ``--long`` runs more seeds and longer schedules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.integration.gateway_client import wait_streaming
from tests.integration.kafka_topics import TestTopics, create_topic
from tests.integration.stream_client import StreamClient, stream

pytestmark = pytest.mark.integration

STORES = [f"s-{i}" for i in range(4)]
Position = tuple[int, int]  # (partition, offset)


@dataclass
class Device:
    """A client that persists its cursors and checks everything it receives."""

    name: str
    channels: list[str]
    cursors: dict[str, str] = field(default_factory=dict)
    received: dict[str, list[Position]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    connections: int = 0

    def apply(self, channel: str, update: dict[str, Any]) -> None:
        position = (update["partition"], update["offset"])
        seen = self.received.setdefault(channel, [])
        if position in seen:
            self.problems.append(f"{self.name} {channel}: duplicate {position}")
        same_partition = [o for p, o in seen if p == position[0]]
        if same_partition and same_partition[-1] > position[1]:
            self.problems.append(f"{self.name} {channel}: {position} after {same_partition[-1]}")
        if update["data"]["payload"]["storeId"] != channel.split(":", 1)[1]:
            self.problems.append(f"{self.name} {channel}: foreign update {update['data']}")
        seen.append(position)
        self.cursors[channel] = update["cursor"]  # persisted together with the apply

    async def connection(self, url: str) -> None:
        self.connections += 1
        subs = {f"c{i}": channel for i, channel in enumerate(self.channels)}
        try:
            encoding = "json" if self.connections % 2 else "msgpack"
            async with stream(url, encoding) as client:
                for sub, channel in subs.items():
                    await client.subscribe(sub, channel, self.cursors.get(channel))
                await self._read(client, subs)
        except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
            pass  # the link dropped: the schedule reconnects

    async def _read(self, client: StreamClient, subs: dict[str, str]) -> None:
        while True:
            frame = await client.recv(wait=3600)
            kind, sub = frame["type"], frame.get("sub")
            channel = subs.get(sub or "")
            if kind == "events" and channel:
                for update in frame["events"]:
                    self.apply(channel, update)
            elif kind == "live" and channel:
                self.cursors[channel] = frame["cursor"]
            elif kind not in ("subscribed",):
                self.problems.append(f"{self.name}: unexpected frame {frame}")

    def connect(self, url: str) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.connection(url))

    async def disconnect(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class Publisher:
    """Publishes inventory updates straight to Kafka and remembers where each landed."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.published: dict[str, set[Position]] = {f"inventory:{s}": set() for s in STORES}
        self.quantity = 0

    async def publish(self, rng: random.Random, count: int) -> None:
        for _ in range(count):
            store = rng.choice(STORES)
            self.quantity += 1
            key = f"{store}:SKU-{self.quantity % 5}"
            envelope = {
                "event_id": str(uuid.uuid4()),
                "event_type": "Inventory.Updated",
                "event_version": 1,
                "event_time": "2026-11-22T10:00:00Z",
                "source": "property-test",
                "correlation_id": "p",
                "key": key,
                "payload": {"storeId": store, "sku": "SKU-1", "quantity": self.quantity},
            }
            meta = await self.producer.send_and_wait(
                self.topic, json.dumps(envelope).encode(), key=key.encode()
            )
            self.published[f"inventory:{store}"].add((meta.partition, meta.offset))


def missing(devices: list[Device], publisher: Publisher) -> int:
    return len(gaps(devices, publisher))


def gaps(devices: list[Device], publisher: Publisher) -> list[str]:
    """Each record of a subscribed channel a device never received."""
    return [
        f"{d.name} {c} {position}"
        for d in devices
        for c in d.channels
        for position in sorted(publisher.published[c] - set(d.received.get(c, [])))
    ]


async def live(devices: list[Device]) -> None:
    """Wait until every device's first subscriptions are live (their cursors known): until
    then a subscription without a cursor starts from whatever the gateway has consumed."""
    for _ in range(1200):  # 60 s
        if all(set(d.cursors) >= set(d.channels) for d in devices):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"devices not live: {[(d.name, d.cursors) for d in devices]}")


async def run_schedule(
    seed: int, steps: int, kafka_broker: KafkaBroker, tmp_path: Path
) -> tuple[list[Device], Publisher, dict[str, int]]:
    rng = random.Random(seed)
    topics = TestTopics()
    await create_topic(kafka_broker.bootstrap, topics.inventory, 3)
    settings = topics.settings(kafka_broker.bootstrap)
    devices = [
        Device(f"d{i}", rng.sample([f"inventory:{s}" for s in STORES], rng.randint(1, 2)))
        for i in range(3)
    ]
    publisher = Publisher(kafka_broker.bootstrap, topics.inventory)
    counts = {"publish": 0, "drop": 0, "gateway": 0, "kafka": 0}
    with GatewayProcess(tmp_path / f"gw-{seed}", settings=settings) as gw:
        await publisher.producer.start()
        try:
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
                await wait_streaming(http, 6)
            for device in devices:
                device.connect(gw.url)
            await live(devices)  # from now on, every record published is each device's
            actions = rng.choices(["publish", "drop", "gateway", "kafka"], [10, 4, 1, 1], k=steps)
            actions[rng.randrange(1, steps)] = "gateway"  # every schedule has each fault
            actions[rng.randrange(1, steps)] = "kafka"
            for action in actions:
                counts[action] += 1
                if action == "publish":
                    await publisher.publish(rng, rng.randint(1, 30))
                elif action == "drop":
                    device = rng.choice(devices)
                    await device.disconnect()
                    if rng.random() < 0.5:
                        await publisher.publish(rng, rng.randint(1, 10))
                elif action == "gateway":
                    if rng.random() < 0.5:
                        gw.kill()
                    else:
                        gw.stop()
                    await asyncio.to_thread(gw.start)
                else:
                    await publisher.producer.stop()
                    await asyncio.to_thread(kafka_broker.restart)
                    publisher.producer = AIOKafkaProducer(
                        bootstrap_servers=kafka_broker.bootstrap, acks="all"
                    )
                    await publisher.producer.start()
                for device in devices:
                    device.connect(gw.url)  # a dropped link comes back
                await asyncio.sleep(rng.random() * 0.3)
            deadline = time.monotonic() + 90
            while missing(devices, publisher) and time.monotonic() < deadline:
                for device in devices:
                    device.connect(gw.url)
                await asyncio.sleep(0.2)
        finally:
            for device in devices:
                await device.disconnect()
            await publisher.producer.stop()
    return devices, publisher, counts


@pytest.mark.timeout(1800)  # the long form (--long): four schedules of 200 steps, ~3 min each
@pytest.mark.parametrize("seed", [1, 2])
async def test_every_update_exactly_once_in_order_through_random_faults(
    seed: int, kafka_broker: KafkaBroker, tmp_path: Path, long_run: bool
) -> None:
    steps = 200 if long_run else 30
    for extra in range(4 if long_run else 1):
        devices, publisher, counts = await run_schedule(
            seed * 100 + extra, steps, kafka_broker, tmp_path
        )
        problems = [p for d in devices for p in d.problems]
        assert problems == [], problems[:10]
        assert missing(devices, publisher) == 0, (counts, gaps(devices, publisher)[:10])
        assert sum(len(p) for p in publisher.published.values()) > 0
        assert counts["publish"] > 0
