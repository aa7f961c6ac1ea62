"""What only the aiokafka publisher promises: zombie fencing by transactional id."""

from __future__ import annotations

import uuid

import pytest

from gateway.adapters.kafka_producer import AiokafkaPublisher, KafkaSettings
from gateway.core.ids import InstanceId, LocalSeq
from gateway.core.records import OutRecord
from gateway.errors import KafkaFenced, KafkaUnavailable
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_reader import read_committed

pytestmark = pytest.mark.integration


async def test_a_new_incarnation_fences_the_zombie(kafka_broker: KafkaBroker) -> None:
    name = f"fence-{uuid.uuid4().hex[:8]}"
    settings = KafkaSettings(
        bootstrap=kafka_broker.bootstrap,
        instance=InstanceId(name),
        position_topic=f"{name}.positions",
        topics={name: {}},
        partitions=1,
        linger_ms=0,
    )
    zombie, successor = AiokafkaPublisher(settings), AiokafkaPublisher(settings)
    record = OutRecord(LocalSeq(1), name, b"k", b"v", (("event_id", b"zombie"),))
    try:
        await zombie.open("store")
        await successor.open("store")
        with pytest.raises((KafkaFenced, KafkaUnavailable)):
            await zombie.publish([record], LocalSeq(1), "store")
        await successor.publish(
            [OutRecord(LocalSeq(1), name, b"k", b"v", (("event_id", b"successor"),))],
            LocalSeq(1),
            "store",
        )
    finally:
        await zombie.close()
        await successor.close()
    committed = await read_committed(kafka_broker.bootstrap, [name])
    assert [r.headers["event_id"] for r in committed] == [b"successor"]
