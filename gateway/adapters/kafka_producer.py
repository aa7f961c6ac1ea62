"""The forwarder's Kafka side: a transactional aiokafka producer plus the position topic.

In each transaction the records of a batch and the forwarder's position (highest local sequence
forwarded, keyed by instance id on a compacted topic) are written together, as Kafka Connect's
exactly-once source connectors do (KIP-618). ``open()`` starts a producer with this instance's
stable transactional id, which fences any zombie and ends its open transaction, and only then
reads the committed position back with a ``read_committed`` consumer.

aiokafka's errors are translated here: per-record refusals to ``RecordsRefused``, fencing to
``KafkaFenced``, everything else to ``KafkaUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiokafka.producer.sender
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidMessageError,
    MessageSizeTooLargeError,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.errors import (
    KafkaError as AiokafkaError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from gateway.adapters.kafka_common import close_quietly, describe
from gateway.core.ids import InstanceId, LocalSeq
from gateway.core.records import OutRecord
from gateway.errors import KafkaFenced, KafkaUnavailable, RecordsRefused

log = logging.getLogger(__name__)

_REFUSED_FOR_GOOD: Final = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidMessageError,
)
_CONCURRENT_TXN_BACKOFF_S: Final = 0.002
"""aiokafka speaks the pre-KIP-890 transaction protocol: a transaction that follows another
at once is refused with CONCURRENT_TRANSACTIONS until the broker has written the previous
markers (a millisecond or two on a healthy broker), and aiokafka then sleeps a fixed 20 ms
(KAFKA-5477). Back-to-back transactions are the forwarder's normal case, so that sleep alone
was ~60% of its end-to-end latency; a 2 ms retry keeps the broker load negligible."""
aiokafka.producer.sender.BACKOFF_OVERRIDE = _CONCURRENT_TXN_BACKOFF_S

_POSITION_SCAN_START: Final = 1000
"""Records read back from the end of the position topic first (then 4x more each round)."""


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap: str
    instance: InstanceId
    position_topic: str
    topics: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Topics the forwarder writes, with the configs to create them with."""
    create_topics: bool = True
    partitions: int = 3
    replication_factor: int = 1
    request_timeout_ms: int = 15_000
    transaction_timeout_s: float = 30.0
    max_record_bytes: int = 1_000_000
    linger_ms: int = 0
    """Each transaction is flushed as soon as its records are handed over: lingering would
    only delay its commit."""

    @property
    def transactional_id(self) -> str:
        return f"sync-gateway.{self.instance}"


class AiokafkaPublisher:
    """:class:`~gateway.flows.ports.KafkaPublisher` on aiokafka."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._s = settings
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()

    @property
    def max_record_bytes(self) -> int:
        return self._s.max_record_bytes

    async def open(self, store_id: str) -> LocalSeq:
        await self.close()
        try:
            async with asyncio.timeout(self._s.transaction_timeout_s * 2):
                if self._s.create_topics:
                    await self._ensure_topics()
                producer = self._new_producer()
                try:
                    await producer.start()  # init_transactions: fences zombies, ends their txn
                    position = await self._read_position(store_id)
                except BaseException:
                    await _stop_quietly(producer)
                    raise
        except (AiokafkaError, OSError, TimeoutError) as exc:
            raise KafkaUnavailable(f"cannot open the Kafka link: {describe(exc)}") from exc
        self._producer = producer
        return position

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._s.bootstrap,
            client_id=f"sync-gateway-{self._s.instance}",
            transactional_id=self._s.transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=self._s.linger_ms,
            max_batch_size=256 * 1024,
            max_request_size=self._s.max_record_bytes + 64 * 1024,
            request_timeout_ms=self._s.request_timeout_ms,
            transaction_timeout_ms=int(self._s.transaction_timeout_s * 1000),
        )

    async def _renew_producer(self) -> None:
        """A broker-side refusal leaves the idempotent producer's sequence numbers out of
        step (the refused batch used them up); a new producer epoch starts them afresh."""
        await self.close()
        producer = self._new_producer()
        try:
            await producer.start()
        except BaseException:
            await _stop_quietly(producer)
            raise
        self._producer = producer

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)

    async def ping(self) -> None:
        producer = self._producer
        if producer is None:
            raise KafkaUnavailable("the Kafka link is not open")
        try:
            async with asyncio.timeout(self._s.request_timeout_ms / 1000):
                await producer.client.fetch_all_metadata()
        except (AiokafkaError, OSError, TimeoutError) as exc:
            raise KafkaUnavailable(f"Kafka does not answer: {describe(exc)}") from exc

    async def publish(
        self, records: Sequence[OutRecord], position: LocalSeq, store_id: str
    ) -> None:
        producer = self._producer
        if producer is None:
            raise KafkaUnavailable("the Kafka link is not open")
        refused: dict[int, str] = {}
        sent: list[tuple[list[int], asyncio.Future[Any]]] = []
        try:
            async with asyncio.timeout(self._s.transaction_timeout_s):
                await producer.begin_transaction()
                try:
                    sent = await self._send_batched(producer, records, refused)
                    if refused:
                        raise RecordsRefused(refused)
                    await producer.send(
                        self._s.position_topic,
                        _position_value(position, self._s.instance, store_id),
                        key=self._s.instance.encode(),
                    )
                    # flush() waits for every delivery; cheaper than awaiting each future.
                    await producer.flush()
                    for seqs, future in sent:
                        if not future.done():
                            raise KafkaUnavailable("a delivery is unconfirmed after flush")
                        failure = future.exception()
                        if isinstance(failure, _REFUSED_FOR_GOOD):
                            refused.update(dict.fromkeys(seqs, describe(failure)))
                        elif failure is not None:
                            raise failure
                    if refused:
                        # The refused batch used up sequence numbers: start a new epoch.
                        await self._renew_producer()
                        raise RecordsRefused(refused)
                    await producer.commit_transaction()
                except BaseException:
                    _retrieve_failures(sent)  # one failure is raised; the others are known
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(producer.abort_transaction(), 5)
                    raise
        except (RecordsRefused, KafkaUnavailable):
            raise
        except ProducerFenced as exc:
            raise KafkaFenced(f"producer fenced: {describe(exc)}") from exc
        except (AiokafkaError, OSError, TimeoutError) as exc:
            raise KafkaUnavailable(f"transaction failed: {describe(exc)}") from exc

    async def _send_batched(
        self, producer: AIOKafkaProducer, records: Sequence[OutRecord], refused: dict[int, str]
    ) -> list[tuple[list[int], asyncio.Future[Any]]]:
        """Hand the records to the producer as record batches, one builder per partition, in
        order: far cheaper than a send() per record. Partitions are chosen as Kafka's default
        partitioner does (murmur2 of the key), so keys land where Java clients put them."""
        sent: list[tuple[list[int], asyncio.Future[Any]]] = []
        open_batches: dict[tuple[str, int], tuple[BatchBuilder, list[int]]] = {}
        partitions: dict[str, list[int]] = {}
        for r in records:
            if r.topic not in partitions:
                partitions[r.topic] = sorted(await producer.partitions_for(r.topic))
            candidates = partitions[r.topic]
            partition = self._partitioner(r.key, candidates, candidates)
            builder, seqs = open_batches.get((r.topic, partition)) or (producer.create_batch(), [])
            headers = list(r.headers)
            added = builder.append(key=r.key, value=r.value, timestamp=None, headers=headers)
            if added is None and seqs:  # the batch is full: send it, start the next one
                sent.append(
                    (seqs, await producer.send_batch(builder, r.topic, partition=partition))
                )
                builder, seqs = producer.create_batch(), []
                append = builder.append
                added = append(key=r.key, value=r.value, timestamp=None, headers=headers)
            if added is None:
                refused[r.seq] = "record larger than the producer's batch size"
                continue
            seqs.append(r.seq)
            open_batches[(r.topic, partition)] = (builder, seqs)
        for (topic, partition), (builder, seqs) in open_batches.items():
            if seqs:
                sent.append((seqs, await producer.send_batch(builder, topic, partition=partition)))
        return sent

    async def _ensure_topics(self) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._s.bootstrap, request_timeout_ms=self._s.request_timeout_ms
        )
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            wanted = {**self._s.topics, self._s.position_topic: _POSITION_TOPIC_CONFIG}
            missing = [
                NewTopic(
                    name,
                    1 if name == self._s.position_topic else self._s.partitions,
                    self._s.replication_factor,
                    topic_configs=dict(configs),
                )
                for name, configs in wanted.items()
                if name not in existing
            ]
            if missing:
                log.info("creating Kafka topics: %s", ", ".join(t.name for t in missing))
                await admin.create_topics(missing)
        finally:
            await close_quietly(admin.close())

    async def _read_position(self, store_id: str) -> LocalSeq:
        """The last position this instance committed, scanning back from the topic's end.

        Reads with read_committed up to the high watermark taken now, so that a transaction
        still open at this moment (another instance's) ends before we decide."""
        partition = TopicPartition(self._s.position_topic, 0)
        key = self._s.instance.encode()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._s.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            request_timeout_ms=self._s.request_timeout_ms,
        )
        await consumer.start()
        try:
            consumer.assign([partition])
            first = (await consumer.beginning_offsets([partition]))[partition]
            end = await _high_watermark(self._s.bootstrap, partition)
            window = _POSITION_SCAN_START
            while end > first:
                start = max(first, end - window)
                found = await _last_value_for(consumer, partition, key, start, end)
                if found is not None:
                    value = json.loads(found)
                    if value.get("store_id") != store_id:
                        log.warning(
                            "Kafka holds position %s of another store for instance %s;"
                            " this store (%s) starts from its local mark",
                            value.get("seq"),
                            self._s.instance,
                            store_id,
                        )
                        return LocalSeq(0)
                    return LocalSeq(int(value["seq"]))
                end, window = start, window * 4
            return LocalSeq(0)
        finally:
            await close_quietly(consumer.stop())


_POSITION_TOPIC_CONFIG: Final = {
    "cleanup.policy": "compact",
    "segment.bytes": str(16 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.1",
}


def _position_value(position: LocalSeq, instance: InstanceId, store_id: str) -> bytes:
    return json.dumps({"seq": position, "instance": instance, "store_id": store_id}).encode()


async def _high_watermark(bootstrap: str, partition: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        return int((await consumer.end_offsets([partition]))[partition])
    finally:
        await close_quietly(consumer.stop())


async def _last_value_for(
    consumer: AIOKafkaConsumer, partition: TopicPartition, key: bytes, start: int, end: int
) -> bytes | None:
    consumer.seek(partition, start)
    found: bytes | None = None
    while await consumer.position(partition) < end:
        batches = await consumer.getmany(partition, timeout_ms=1000, max_records=5000)
        for message in batches.get(partition, []):
            if message.offset >= end:
                return found
            if message.key == key and message.value is not None:
                found = message.value
    return found


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    await close_quietly(producer.stop())


def _retrieve_failures(sent: Sequence[tuple[list[int], asyncio.Future[Any]]]) -> None:
    """Mark the failures of a failed transaction's deliveries as seen (asyncio would log
    every one as "never retrieved")."""
    for _, future in sent:
        future.add_done_callback(_seen)


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
