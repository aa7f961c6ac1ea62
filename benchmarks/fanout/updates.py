"""The updates the benchmark produces: ``Inventory.Updated`` envelopes with ids that say which
phase, channel and sequence number they are of and the produce time as ``event_time``, where
those fields stand in a frame, and producing them to Kafka at a rate."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

PARTITIONS = 3
"""Partitions of the inventory topic (the gateway's default for the topics it creates)."""
TIME_MARK = '"event_time":"'
ID_MARK = '"event_id":"'
TIME_CHARS = len("2026-11-21T10:00:00.123456Z")
ID_CHARS = 36
LATENCY_CAP_US = 59_999_999
"""Latencies are recorded up to a minute (new_histogram's range); longer ones count as that."""


def rfc3339_us(t: float) -> str:
    """A wall-clock time as RFC 3339 UTC with microseconds (27 characters)."""
    secs = int(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int((t - secs) * 1e6):06d}Z"


class Updates:
    """``Inventory.Updated`` envelopes as the gateway writes them (compact JSON, its key
    order), with ids that say which phase, channel and sequence number they are of, and the
    produce time as ``event_time``."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:8]

    def event_id(self, phase: int, channel: int, seq: int) -> str:
        return f"{self.run}-{phase:04x}-4{channel:03x}-8000-{seq:012x}"

    def record(self, phase: int, channel: int, seq: int) -> tuple[bytes, bytes]:
        """(key, value) of update ``seq`` of a channel, stamped now."""
        event_id = self.event_id(phase, channel, seq)
        store, sku = f"s-{channel}", f"SKU-{seq % 50:03d}"
        key = f"{store}:{sku}"
        value = (
            f'{{"event_id":"{event_id}","event_type":"Inventory.Updated","event_version":1,'
            f'"event_time":"{rfc3339_us(time.time())}","source":"bench-fanout",'
            f'"correlation_id":"{event_id}","key":"{key}","payload":{{"storeId":"{store}",'
            f'"sku":"{sku}","quantity":{seq % 1000},"reason":"restock"}}}}'
        )
        return key.encode(), value.encode()


def id_fields(event_id: str) -> tuple[int, int, int]:
    """(phase, channel, seq) of an :meth:`Updates.event_id`."""
    return int(event_id[9:13], 16), int(event_id[15:18], 16), int(event_id[24:36], 16)


@dataclass
class Produced:
    per_channel: list[int]
    started: float
    """Wall-clock time just before the first produce call."""
    seconds: float
    """From the first produce call to the last record acknowledged by the broker."""

    @property
    def total(self) -> int:
        return sum(self.per_channel)


async def wait_for_leaders(producer: Any, topic: str) -> None:
    """Until the producer's metadata shows a leader for every partition of a new topic."""
    for _ in range(300):
        await producer.client.force_metadata_update()
        cluster = producer.client.cluster
        known = cluster.partitions_for_topic(topic) or set()
        leaders = [cluster.leader_for_partition(TopicPartition(topic, p)) for p in known]
        if len(known) >= PARTITIONS and all(x is not None and x >= 0 for x in leaders):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no leaders for {topic} after 30s")


async def produce(
    producer: Any,
    topic: str,
    updates: Updates,
    phase: int,
    channels: int,
    count: int,
    rate: float | None,
) -> Produced:
    """``count`` updates round-robin over the channels, paced at ``rate``/s (None: at full
    speed); wait until the broker acknowledged them all. Each tick's records go as one batch
    per partition (the partition of the key, as the gateway's producer chooses it): a send()
    per record costs ~150 us in aiokafka, which would make this side the bottleneck."""
    await wait_for_leaders(producer, topic)  # send_batch() does not wait for metadata
    per_channel = [0] * channels
    pending: list[Any] = []
    partitioner = DefaultPartitioner()
    partitions = list(range(PARTITIONS))
    partition_of: dict[bytes, int] = {}
    tick = 0.005
    started_wall, started = time.time(), time.perf_counter()
    sent = 0
    max_ticks = int((count / rate if rate else count / 500) / tick) + 100_000
    for _ in range(max_ticks):
        if sent >= count:
            break
        if rate is None:
            due = min(count, sent + 500)
        else:
            due = min(count, int((time.perf_counter() - started) * rate) + 1)
        batches: dict[int, Any] = {}
        while sent < due:
            channel = sent % channels
            key, value = updates.record(phase, channel, per_channel[channel])
            per_channel[channel] += 1
            sent += 1
            partition = partition_of.get(key)
            if partition is None:
                partition = partition_of[key] = partitioner(key, partitions, partitions)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # full
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for partition, batch in batches.items():
            pending.append(await producer.send_batch(batch, topic, partition=partition))
        if rate is not None:
            await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter(), 0.001))
    await asyncio.gather(*pending)
    return Produced(per_channel, started_wall, time.perf_counter() - started)
