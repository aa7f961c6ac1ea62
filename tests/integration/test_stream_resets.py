"""Cursors whose history is gone get an explicit ``reset``, never a silent skip: a topic
deleted and re-created (the epoch changes), and records past retention in Kafka and the log."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition

from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.factories import inventory_updated
from tests.integration.gateway_client import wait_streaming
from tests.integration.kafka_topics import TestTopics, create_topic, delete_topic
from tests.integration.stream_client import stream

pytestmark = pytest.mark.integration


async def produce(bootstrap: str, topic: str, store: str, quantities: range) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for q in quantities:
            event = inventory_updated(store, "SKU-1", q) | {"event_id": str(uuid.uuid4())}
            await producer.send_and_wait(topic, json.dumps(event).encode(), key=b"k", partition=0)
    finally:
        await producer.stop()


async def setup(
    kafka_broker: KafkaBroker, tmp_path: Path, **extra: str
) -> tuple[TestTopics, dict[str, str]]:
    topics = TestTopics()
    for topic in (topics.inventory, topics.orders):
        await create_topic(kafka_broker.bootstrap, topic, 1)
    return topics, topics.settings(kafka_broker.bootstrap) | extra


async def test_a_cursor_from_before_a_topic_recreation_gets_reset(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topics, settings = await setup(kafka_broker, tmp_path)
    channel = "inventory:s-re"
    with GatewayProcess(tmp_path / "gw", settings=settings) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            await wait_streaming(http, 2)
        async with stream(gw.url) as client:
            await client.subscribe("a", channel)
            await client.expect("subscribed")
            await client.expect("live")
            await produce(kafka_broker.bootstrap, topics.inventory, "s-re", range(5))
            got, _ = await client.updates("a", 5)
            old = got[1]["cursor"]  # at offset 2 of the old topic
        gw.stop()
        await delete_topic(kafka_broker.bootstrap, topics.inventory)
        await create_topic(kafka_broker.bootstrap, topics.inventory, 1)
        await produce(kafka_broker.bootstrap, topics.inventory, "s-re", range(100, 110))
        gw.start()
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            await wait_streaming(http, 2)
        async with stream(gw.url) as client:
            await client.subscribe("b", channel, old)
            await client.expect("subscribed")
            reset = await client.expect("reset", wait=30)
    assert reset["reason"] == "epoch_changed"


async def test_a_cursor_older_than_retention_gets_reset(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topics, settings = await setup(
        kafka_broker, tmp_path, downstream_retention_s="1", prune_interval_s="0.2"
    )
    channel = "inventory:s-old"
    with GatewayProcess(tmp_path / "gw", settings=settings) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            await wait_streaming(http, 2)
        async with stream(gw.url) as client:
            await client.subscribe("a", channel)
            await client.expect("subscribed")
            old = (await client.expect("live"))["cursor"]  # before any record
            await produce(kafka_broker.bootstrap, topics.inventory, "s-old", range(10))
            await client.updates("a", 10)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(topics.inventory, 0): RecordsToDelete(8)})
        finally:
            await admin.close()
        # the log prunes what is past its 1 s retention; then neither holds offsets 0..7
        async with stream(gw.url) as client:
            for attempt in range(100):
                await client.subscribe(f"b{attempt}", channel, old)
                await client.expect("subscribed")
                frame = await client.recv()
                if frame["type"] == "reset":
                    break
                assert frame["type"] == "events", frame  # not pruned yet: replays from 0
                await client.send({"type": "unsubscribe", "sub": f"b{attempt}"})
                while (await client.recv())["type"] != "unsubscribed":
                    pass
                await asyncio.sleep(0.2)
    assert frame["reason"] == "history_gone"
