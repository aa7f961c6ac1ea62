"""The downstream consumer's Kafka side: an aiokafka consumer reading whole topics.

``read_committed``, so records of aborted or still-open transactions are never returned; manual
assignment of every partition of the configured topics, without a consumer group, because the
positions live in the downstream log beside the records (committed in the same SQLite
transaction). ``auto_offset_reset="none"``: a position Kafka no longer holds raises instead of
silently jumping to the earliest or latest offset, so the flow can tell subscribers ``reset``.

aiokafka's errors are translated here to ``KafkaUnavailable``; every client is closed within a
bounded time even when the broker is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError as AiokafkaError
from aiokafka.errors import OffsetOutOfRangeError

from gateway.adapters.kafka_common import close_quietly, describe
from gateway.core.ids import KafkaOffset
from gateway.errors import KafkaUnavailable
from gateway.flows.downstream_ports import Fetched, LogRecord, OffsetRange, PartitionKey

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    bootstrap: str
    client_id: str = "sync-gateway-downstream"
    request_timeout_ms: int = 15_000
    fetch_max_wait_ms: int = 200
    """How long the broker holds a fetch with no new data (bounds delivery latency too)."""
    max_partition_fetch_bytes: int = 1024 * 1024
    fetch_max_bytes: int = 16 * 1024 * 1024

    @property
    def request_timeout_s(self) -> float:
        return self.request_timeout_ms / 1000


class AiokafkaSource:
    """:class:`~gateway.flows.downstream_ports.KafkaSource` on aiokafka."""

    def __init__(self, settings: ConsumerSettings) -> None:
        self._s = settings
        self._consumer: AIOKafkaConsumer | None = None
        self._assigned: list[TopicPartition] = []

    async def start(self, topics: Collection[str]) -> dict[PartitionKey, OffsetRange]:
        await self.close()
        consumer = self._new_consumer()
        try:
            async with asyncio.timeout(self._s.request_timeout_s * 3):
                await consumer.start()
                found = sorted(await _partitions(consumer, topics))
                assigned = [TopicPartition(t, p) for t, p in found]
                consumer.assign(assigned)
                ranges = await offset_ranges(consumer, assigned)
        except BaseException as exc:
            await close_quietly(consumer.stop())
            if isinstance(exc, AiokafkaError | OSError | TimeoutError):
                raise KafkaUnavailable(f"cannot start consuming: {describe(exc)}") from exc
            raise
        self._consumer, self._assigned = consumer, assigned
        return ranges

    async def seek(self, positions: Mapping[PartitionKey, KafkaOffset]) -> None:
        consumer = self._require()
        missing = [tp for tp in self._assigned if (tp.topic, tp.partition) not in positions]
        if missing:
            raise ValueError(f"no position given for {missing}")
        for tp in self._assigned:
            consumer.seek(tp, positions[(tp.topic, tp.partition)])

    async def fetch(self, max_records: int, timeout_s: float) -> Fetched:
        consumer = self._require()
        if not self._assigned:  # none of the topics exists (yet)
            await asyncio.sleep(timeout_s)
            return Fetched([], {}, None)
        with kafka_errors("fetch failed"):
            async with asyncio.timeout(timeout_s + self._s.request_timeout_s):
                batches = await consumer.getmany(
                    timeout_ms=int(timeout_s * 1000), max_records=max_records
                )
                positions = {
                    (tp.topic, tp.partition): KafkaOffset(await consumer.position(tp))
                    for tp in self._assigned
                }
        records = [log_record(m) for messages in batches.values() for m in messages]
        return Fetched(records, positions, self._lag(consumer, positions))

    def _lag(
        self, consumer: AIOKafkaConsumer, positions: Mapping[PartitionKey, KafkaOffset]
    ) -> int | None:
        """Sum over partitions of last stable offset minus position, from the last fetch."""
        known = [
            (int(stable), positions[(tp.topic, tp.partition)])
            for tp in self._assigned
            if (stable := consumer.last_stable_offset(tp)) is not None and stable >= 0
        ]
        if not known:
            return None
        return sum(max(0, stable - position) for stable, position in known)

    async def partitions(self, topics: Collection[str]) -> set[PartitionKey]:
        consumer = self._require()
        with kafka_errors("metadata request failed"):
            async with asyncio.timeout(self._s.request_timeout_s):
                return await _partitions(consumer, topics)

    async def earliest_and_end(self, topic: str, partition: int) -> OffsetRange:
        tp = TopicPartition(topic, partition)
        own = self._consumer
        consumer = own if own is not None else self._new_consumer()
        try:
            with kafka_errors(f"cannot read the offsets of {tp}"):
                async with asyncio.timeout(self._s.request_timeout_s * 2):
                    if own is None:
                        await consumer.start()
                    return (await offset_ranges(consumer, [tp]))[(topic, partition)]
        finally:
            if own is None:
                await close_quietly(consumer.stop())

    async def ping(self) -> None:
        consumer = self._require()
        with kafka_errors("Kafka does not answer"):
            async with asyncio.timeout(self._s.request_timeout_s):
                await consumer.topics()

    async def close(self) -> None:
        consumer, self._consumer, self._assigned = self._consumer, None, []
        if consumer is not None:
            await close_quietly(consumer.stop())

    def _new_consumer(self) -> AIOKafkaConsumer:
        return new_consumer(self._s)

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise KafkaUnavailable("the Kafka consumer is not started")
        return self._consumer


async def _partitions(consumer: AIOKafkaConsumer, topics: Collection[str]) -> set[PartitionKey]:
    """Partitions of the existing ``topics`` from fresh metadata (a missing topic is logged)."""
    # The consumer's own client: AIOKafkaConsumer has no public call returning fresh metadata
    # with partitions (topics() keeps only the names).
    cluster = await consumer._client.fetch_all_metadata()
    found: set[PartitionKey] = set()
    for topic in topics:
        numbers = cluster.partitions_for_topic(topic)
        if numbers is None:
            log.warning("topic %s does not exist (yet); it is not consumed", topic)
            continue
        found.update((topic, int(number)) for number in numbers)
    return found


def new_consumer(settings: ConsumerSettings) -> AIOKafkaConsumer:
    """A ``read_committed`` consumer without a group that raises on positions out of range."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        client_id=settings.client_id,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="none",
        request_timeout_ms=settings.request_timeout_ms,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        fetch_max_bytes=settings.fetch_max_bytes,
    )


@contextlib.contextmanager
def kafka_errors(what: str) -> Iterator[None]:
    """Translate aiokafka's errors, socket errors and timeouts to ``KafkaUnavailable``."""
    try:
        yield
    except OffsetOutOfRangeError as exc:
        raise KafkaUnavailable(
            f"a position is no longer in Kafka (records deleted before they were consumed):"
            f" {describe(exc)}"
        ) from exc
    except (AiokafkaError, OSError, TimeoutError) as exc:
        raise KafkaUnavailable(f"{what}: {describe(exc)}") from exc


def log_record(message: Any) -> LogRecord:
    """An aiokafka ``ConsumerRecord`` as a :class:`LogRecord` (a null value becomes ``b""``)."""
    return LogRecord(
        topic=message.topic,
        partition=message.partition,
        offset=KafkaOffset(message.offset),
        key=message.key,
        value=message.value if message.value is not None else b"",
        headers=tuple(message.headers),
        timestamp_ms=message.timestamp,
    )


async def offset_ranges(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[PartitionKey, OffsetRange]:
    """What Kafka holds of each partition: earliest offset and ``read_committed`` end."""
    if not partitions:
        return {}
    earliest = await consumer.beginning_offsets(partitions)
    end = await consumer.end_offsets(partitions)  # read_committed: the last stable offset
    return {
        (tp.topic, tp.partition): OffsetRange(KafkaOffset(earliest[tp]), KafkaOffset(end[tp]))
        for tp in partitions
    }
