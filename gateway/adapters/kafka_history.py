"""Kafka history for replays: the records of one partition between two offsets, on demand.

A cursor older than the downstream log is served from Kafka while Kafka still holds its records
(:mod:`gateway.flows.replayer`). :class:`AiokafkaHistory` is one ``read_committed`` consumer
without a group, started on first use and shared by every replaying subscription: each read
assigns the one partition it needs and seeks, unless the consumer is already positioned there
(the previous chunk of the same replay), so prefetched records are not thrown away. Reads are
serialized by a lock and each is bounded in time, so replays take turns chunk by chunk; offset
look-ups (:meth:`AiokafkaHistory.bounds`) do not wait for reads.

aiokafka's errors are translated to ``KafkaUnavailable`` here; after a failed read the consumer
is dropped and the next call starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ConsumerStoppedError

from gateway.adapters.kafka_common import close_quietly
from gateway.adapters.kafka_consumer import (
    ConsumerSettings,
    kafka_errors,
    log_record,
    new_consumer,
    offset_ranges,
)
from gateway.core.ids import KafkaOffset
from gateway.errors import KafkaUnavailable
from gateway.flows.downstream_ports import LogRecord, OffsetRange

log = logging.getLogger(__name__)

_POLL_MS: Final = 100
"""How long one ``getmany`` waits before the position is looked at again (a range of only
transaction markers or aborted records moves the position without returning records)."""


class AiokafkaHistory:
    """:class:`~gateway.flows.downstream_ports.KafkaHistory` on one shared aiokafka consumer.

    ``read_wait_s`` bounds how long one read waits for a first record (or any progress) before
    it gives up with ``KafkaUnavailable``; the whole read, connecting included, is bounded by
    that plus twice the request timeout.
    """

    def __init__(
        self,
        bootstrap: str,
        request_timeout_ms: int = 10_000,
        *,
        read_wait_s: float = 2.0,
        client_id: str = "sync-gateway-history",
    ) -> None:
        if request_timeout_ms < 1 or read_wait_s <= 0:
            raise ValueError("request_timeout_ms and read_wait_s must be positive")
        self._s = ConsumerSettings(
            bootstrap, client_id=client_id, request_timeout_ms=request_timeout_ms
        )
        self._read_wait_s = read_wait_s
        self._consumer: AIOKafkaConsumer | None = None
        self._starting = asyncio.Lock()
        self._reading = asyncio.Lock()
        self._at: tuple[TopicPartition, int] | None = None
        """Where the consumer stands after the last read, if it is known."""
        self._closed = False

    async def bounds(self, topic: str, partition: int) -> OffsetRange:
        tp = TopicPartition(topic, partition)
        with _kafka_call(f"cannot read the offsets of {tp}"):
            async with asyncio.timeout(self._s.request_timeout_s * 2):
                consumer = await self._started()
                return (await offset_ranges(consumer, [tp]))[(topic, partition)]

    async def read(
        self,
        topic: str,
        partition: int,
        from_offset: KafkaOffset,
        until_offset: KafkaOffset,
        max_records: int,
    ) -> tuple[list[LogRecord], KafkaOffset]:
        if max_records < 1:
            raise ValueError(f"max_records must be positive, got {max_records}")
        if from_offset >= until_offset:
            return [], from_offset
        tp = TopicPartition(topic, partition)
        async with self._reading:
            try:
                with _kafka_call(f"cannot read {tp} from offset {from_offset}"):
                    async with asyncio.timeout(self._s.request_timeout_s * 2 + self._read_wait_s):
                        consumer = await self._started()
                        self._position(consumer, tp, from_offset)
                        messages, position = await self._fetch(
                            consumer, tp, from_offset, max_records
                        )
            except KafkaUnavailable as exc:
                log.info("history read failed (a new consumer is started next): %s", exc)
                await self._discard()
                raise
        records = [log_record(m) for m in messages if from_offset <= m.offset < until_offset]
        return records, KafkaOffset(min(position, until_offset))

    async def close(self) -> None:
        """Stop the consumer; every later call raises ``KafkaUnavailable``."""
        self._closed = True
        await self._discard()

    # -- internals --------------------------------------------------------------------------

    async def _started(self) -> AIOKafkaConsumer:
        async with self._starting:
            if self._closed:
                raise KafkaUnavailable("the Kafka history reader is closed")
            if self._consumer is None:
                consumer = new_consumer(self._s)
                try:
                    await consumer.start()
                    if self._closed:  # closed while it started
                        raise KafkaUnavailable("the Kafka history reader is closed")
                except BaseException:
                    await close_quietly(consumer.stop())
                    raise
                self._consumer, self._at = consumer, None
            return self._consumer

    def _position(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        """Assign ``tp`` alone and seek to ``offset``, unless the consumer stands there."""
        at, self._at = self._at, None  # unknown until this read completes
        if consumer.assignment() != {tp}:
            consumer.assign([tp])
            at = None
        if at != (tp, offset):
            consumer.seek(tp, offset)

    async def _fetch(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, from_offset: int, max_records: int
    ) -> tuple[list[Any], int]:
        """Records from the consumer's position, once there are some or the position moved."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._read_wait_s
        while True:
            wait_ms = max(0, min(_POLL_MS, int((deadline - loop.time()) * 1000)))
            batches = await consumer.getmany(tp, timeout_ms=wait_ms, max_records=max_records)
            messages: list[Any] = batches.get(tp, [])
            position = int(await consumer.position(tp))
            if messages or position > from_offset:
                self._at = (tp, position)
                return messages, position
            if loop.time() >= deadline:
                raise KafkaUnavailable(
                    f"nothing read from {tp} at offset {from_offset} in {self._read_wait_s}s"
                )

    async def _discard(self) -> None:
        """Drop the consumer (the next call starts a new one)."""
        consumer, self._consumer, self._at = self._consumer, None, None
        if consumer is not None:
            await close_quietly(consumer.stop())


@contextlib.contextmanager
def _kafka_call(what: str) -> Iterator[None]:
    """:func:`kafka_errors`, and a consumer stopped under the call (:meth:`close`) too."""
    with kafka_errors(what):
        try:
            yield
        except ConsumerStoppedError as exc:
            raise KafkaUnavailable(f"{what}: the consumer was closed") from exc
