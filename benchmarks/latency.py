"""End-to-end latency to Kafka: paced senders, and a ``read_committed`` consumer that times
each event from just before it was sent until it is received (matched by its ``event_id``
header). The same harness measures the gateway (HTTP requests) and a bare producer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.common import Figures, new_histogram


@dataclass
class Watch:
    """Send times of events, and what the consumer saw."""

    sent_at: dict[str, float]
    seen: int = 0
    value_bytes: int = 0


async def consume_latencies(
    consumer: Any, watch: Watch, histogram: Any, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=100, max_records=10_000)
        now = time.perf_counter()
        for messages in batches.values():
            for message in messages:
                event_id = dict(message.headers)["event_id"].decode()
                sent = watch.sent_at.pop(event_id, None)
                if sent is not None:
                    histogram.record_value(max(1, int((now - sent) * 1e6)))
                    watch.seen += 1
                    watch.value_bytes = len(message.value)


Sender = Callable[[int, Callable[[list[str]], None]], Awaitable[None]]
"""Sends ``n`` new events (one request, or one producer batch), calling ``sending(ids)`` just
before they leave; returns once they are acknowledged."""


async def paced_latency(
    label: str,
    bootstrap: str,
    topic: str,
    partitions: int,
    senders: list[Sender],
    rate: float,
    batch: int,
    seconds: float,
) -> Figures:
    """Paced senders (``rate`` events/s in all, ``batch`` per send); each event's latency until
    a ``read_committed`` consumer of ``topic`` (its ``partitions``) running here receives it."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        # A fetch returns as soon as committed records are there; polling faster only loads
        # the broker (5 ms cost it half a core here).
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    histogram = new_histogram()
    watch = Watch({})
    stop = asyncio.Event()
    sent = 0

    def sending(ids: list[str]) -> None:
        watch.sent_at.update(dict.fromkeys(ids, time.perf_counter()))

    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:
            await consumer.position(tp)  # resolve the end offsets before any load
        reader = asyncio.create_task(consume_latencies(consumer, watch, histogram, stop))
        interval = len(senders) * batch / rate
        deadline = time.perf_counter() + seconds

        async def pace(index: int, send: Sender) -> None:
            nonlocal sent
            next_at = time.perf_counter() + interval * index / len(senders)
            while next_at < deadline:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                await send(batch, sending)
                sent += batch
                next_at += interval

        started = time.perf_counter()
        await asyncio.gather(*(pace(i, send) for i, send in enumerate(senders)))
        elapsed = time.perf_counter() - started
        for _ in range(2400):  # up to 2 minutes for the last records
            if not watch.sent_at or reader.done():
                break
            await asyncio.sleep(0.05)
        stop.set()
        await reader
        if watch.sent_at:
            raise RuntimeError(f"{len(watch.sent_at)} events never seen by the consumer")
    finally:
        stop.set()
        await consumer.stop()
    return Figures(label, sent, elapsed, histogram)
