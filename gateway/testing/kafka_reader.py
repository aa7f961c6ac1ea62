"""Read back what reached Kafka, as a ``read_committed`` consumer downstream would see it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    @property
    def event_id(self) -> str:
        return self.headers["event_id"].decode()


async def read_committed(
    bootstrap: str, topics: Sequence[str], *, timeout_s: float = 60.0
) -> list[ConsumedRecord]:
    """Every committed record of ``topics`` from the beginning up to their current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    partitions = await _partitions(bootstrap, topics)
    await consumer.start()
    records: list[ConsumedRecord] = []
    try:
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if all(positions[tp] >= ends[tp] for tp in partitions):
                break
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, messages in batches.items():
                records.extend(
                    ConsumedRecord(
                        tp.topic, tp.partition, m.offset, m.key, m.value, dict(m.headers)
                    )
                    for m in messages
                )
        else:
            raise TimeoutError(f"could not read {topics} to their end in {timeout_s}s")
    finally:
        await consumer.stop()
    return records


async def _partitions(bootstrap: str, topics: Sequence[str]) -> list[TopicPartition]:
    """Partitions of the existing topics among ``topics``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return [
        TopicPartition(str(t["topic"]), int(p["partition"]))
        for t in described
        if t["error_code"] == 0
        for p in t["partitions"]
    ]
