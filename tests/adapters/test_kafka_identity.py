"""Reading the history identity (cluster id, topic ids) from the real broker: the ids are the
broker's own, a re-created topic gets a new id and so a new epoch, an unchanged history keeps
its epoch on every read and every client, and an unreachable Kafka is KafkaUnavailable."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient

from gateway.adapters import kafka_identity
from gateway.adapters.kafka_identity import (
    HistoryIdentity,
    fetch_history_identity,
    read_history_identity,
)
from gateway.core.cursor import derive_epoch
from gateway.errors import KafkaUnavailable
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.ports import LOOPBACK, free_port
from tests.integration.kafka_topics import create_topic, delete_topic

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0


def unique(kind: str) -> str:
    return f"id-{uuid.uuid4().hex[:8]}.{kind}"


async def test_reads_the_cluster_id_and_the_brokers_own_topic_ids(
    kafka_broker: KafkaBroker,
) -> None:
    orders, payments, missing = unique("orders"), unique("payments"), unique("missing")
    await create_topic(kafka_broker.bootstrap, orders, 2)
    await create_topic(kafka_broker.bootstrap, payments, 1)

    identity = await fetch_history_identity(kafka_broker.bootstrap, [orders, payments, missing])

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    assert identity.cluster_id == cluster["cluster_id"]
    assert set(identity.topic_ids) == {orders, payments}
    assert identity.topic_ids[orders] != identity.topic_ids[payments]
    for name, topic_id in identity.topic_ids.items():
        assert str(uuid.UUID(topic_id)) == topic_id  # canonical form
        assert topic_id == await id_on_disk(kafka_broker, name)


async def test_a_recreated_topic_changes_the_epoch_an_unchanged_history_keeps_it(
    kafka_broker: KafkaBroker,
) -> None:
    orders, payments = unique("orders"), unique("payments")
    topics = [orders, payments]
    await create_topic(kafka_broker.bootstrap, orders, 1)
    await create_topic(kafka_broker.bootstrap, payments, 1)
    first = await fetch_history_identity(kafka_broker.bootstrap, topics)
    again = await fetch_history_identity(kafka_broker.bootstrap, topics)
    one, other = await read_with_two_clients(kafka_broker.bootstrap, topics)
    assert set(first.topic_ids) == set(topics)
    assert again == one == other == first
    assert epoch(again) == epoch(one) == epoch(other) == epoch(first)

    await delete_topic(kafka_broker.bootstrap, orders)
    await create_topic(kafka_broker.bootstrap, orders, 1)
    recreated = await until_present(kafka_broker.bootstrap, topics)

    assert recreated.cluster_id == first.cluster_id
    assert recreated.topic_ids[payments] == first.topic_ids[payments]
    assert recreated.topic_ids[orders] != first.topic_ids[orders]
    assert epoch(recreated) != epoch(first)


async def test_every_metadata_version_defined_reads_the_same(
    kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection picks the highest version (v13 on Kafka 4.x); older brokers get older."""
    orders, missing = unique("orders"), unique("missing")
    await create_topic(kafka_broker.bootstrap, orders, 3)
    newest = await fetch_history_identity(kafka_broker.bootstrap, [orders, missing])
    for version in kafka_identity._VERSIONS:
        monkeypatch.setattr(kafka_identity, "_VERSIONS", (version,))
        assert await fetch_history_identity(kafka_broker.bootstrap, [orders, missing]) == newest
        monkeypatch.undo()
    assert set(newest.topic_ids) == {orders}


async def test_an_unreachable_kafka_is_unavailable_soon() -> None:
    nobody = f"{LOOPBACK}:{free_port()}"
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable):
        async with asyncio.timeout(DEADLINE_S):
            await fetch_history_identity(nobody, ["order.events"], request_timeout_ms=1000)
    assert time.monotonic() - started < 5.0


def epoch(identity: HistoryIdentity) -> str:
    return derive_epoch(identity.cluster_id, identity.topic_ids)


async def read_with_two_clients(
    bootstrap: str, topics: list[str]
) -> tuple[HistoryIdentity, HistoryIdentity]:
    """Two gateway instances: each its own client, each reading once."""
    clients = [AIOKafkaClient(bootstrap_servers=bootstrap) for _ in range(2)]
    try:
        for client in clients:
            await client.bootstrap()
        one, other = [await read_history_identity(client, topics) for client in clients]
    finally:
        for client in clients:
            await client.close()
    return one, other


async def id_on_disk(broker: KafkaBroker, topic: str) -> str:
    """The topic id the broker wrote next to partition 0's log (Kafka's base64url form), as a
    canonical UUID string: an independent witness of what the Metadata answer says."""
    path = broker.data_dir / f"{topic}-0" / "partition.metadata"
    deadline = time.monotonic() + DEADLINE_S
    while not path.exists() or "topic_id:" not in path.read_text():
        assert time.monotonic() < deadline, f"{path} not written within {DEADLINE_S}s"
        await asyncio.sleep(0.1)
    fields = dict(line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line)
    raw = base64.urlsafe_b64decode(fields["topic_id"].strip() + "==")
    return str(uuid.UUID(bytes=raw))


async def until_present(bootstrap: str, topics: list[str]) -> HistoryIdentity:
    """Read until every topic has an id (a new topic reaches the broker's metadata shortly
    after CreateTopics answers)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        identity = await fetch_history_identity(bootstrap, topics)
        if set(identity.topic_ids) == set(topics):
            return identity
        assert time.monotonic() < deadline, f"not all of {topics} present after {DEADLINE_S}s"
        await asyncio.sleep(0.1)
