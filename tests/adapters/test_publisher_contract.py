"""The same assertions against the in-memory and the aiokafka publisher (real broker)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from gateway.adapters.kafka_producer import AiokafkaPublisher, KafkaSettings
from gateway.adapters.memory_publisher import MemoryPublisher
from gateway.core.ids import InstanceId, LocalSeq
from gateway.core.records import OutRecord
from gateway.errors import RecordsRefused
from gateway.flows.ports import KafkaPublisher
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_reader import read_committed

TOPIC_LIMIT = 3000


@dataclass
class Subject:
    make: Callable[[], KafkaPublisher]
    committed_ids: Callable[[], Awaitable[list[bytes]]]
    topic: str


def record(seq: int, topic: str, size: int = 100) -> OutRecord:
    return OutRecord(LocalSeq(seq), topic, b"k", b"v" * size, (("event_id", str(seq).encode()),))


@pytest.fixture(params=["memory", pytest.param("aiokafka", marks=pytest.mark.integration)])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    topic = f"contract-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        memory = MemoryPublisher(topic_limit=TOPIC_LIMIT)

        async def memory_ids() -> list[bytes]:
            return [r.headers[0][1] for r in memory.committed]

        yield Subject(lambda: memory, memory_ids, topic)
        return
    broker: KafkaBroker = request.getfixturevalue("kafka_broker")
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": str(TOPIC_LIMIT)})]
        )
    finally:
        await admin.close()
    settings = KafkaSettings(
        bootstrap=broker.bootstrap,
        instance=InstanceId(f"contract-{uuid.uuid4().hex[:8]}"),
        position_topic=f"{topic}.positions",
        topics={},
        linger_ms=0,
    )

    async def kafka_ids() -> list[bytes]:
        return [r.headers["event_id"] for r in await read_committed(broker.bootstrap, [topic])]

    yield Subject(lambda: AiokafkaPublisher(settings), kafka_ids, topic)


async def test_position_survives_reopen_and_belongs_to_its_store(subject: Subject) -> None:
    first = subject.make()
    assert await first.open("store-a") == 0
    await first.publish(
        [record(1, subject.topic), record(2, subject.topic)], LocalSeq(2), "store-a"
    )
    await first.close()
    second = subject.make()
    try:
        assert await second.open("store-a") == 2
        assert await second.open("store-b") == 0
    finally:
        await second.close()
    assert await subject.committed_ids() == [b"1", b"2"]


async def test_refused_record_aborts_the_whole_transaction(subject: Subject) -> None:
    publisher = subject.make()
    await publisher.open("store-a")
    try:
        with pytest.raises(RecordsRefused) as refused:
            await publisher.publish(
                [record(1, subject.topic), record(2, subject.topic, size=10 * TOPIC_LIMIT)],
                LocalSeq(2),
                "store-a",
            )
        # Kafka refuses whole produce batches: innocent neighbours may be named too
        assert 2 in refused.value.refused
        await publisher.close()
        await publisher.open("store-a")
        await publisher.publish([record(1, subject.topic)], LocalSeq(1), "store-a")
    finally:
        await publisher.close()
    assert await subject.committed_ids() == [b"1"]
    reopened = subject.make()
    try:
        assert await reopened.open("store-a") == 1
    finally:
        await reopened.close()
