"""The downstream consumer against the real broker: committed records only, with channels and
positions in the log; broker and consumer restarts lose nothing and repeat nothing; history
that cannot continue (records deleted before they were consumed, a re-created topic) is reset
explicitly, never skipped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from gateway.adapters.kafka_consumer import AiokafkaSource, ConsumerSettings
from gateway.adapters.sqlite_downstream import SqliteDownstreamLog
from gateway.core.backoff import Backoff
from gateway.core.ids import Epoch, KafkaOffset
from gateway.flows.downstream import DownstreamConsumer, DownstreamSettings
from gateway.flows.downstream_ports import LogRecord, PartitionKey
from gateway.flows.sessions import LinkState
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_reader import read_committed
from tests.integration.kafka_topics import create_topic

pytestmark = pytest.mark.integration

Sent = tuple[str, bytes, bytes]  # topic, key, value


class PayloadChannels:
    """Stand-in for the channel mapper: ``inventory:<storeId>``, ``orders:<userId>``."""

    def channels_for(self, topic: str, value: bytes) -> list[str]:
        payload = json.loads(value)["payload"]
        channels = [f"inventory:{payload['storeId']}"] if "storeId" in payload else []
        return channels + ([f"orders:{payload['userId']}"] if "userId" in payload else [])


@dataclass
class Recorder:
    """A listener that keeps what it is told."""

    records: list[LogRecord] = field(default_factory=list)
    resets: list[tuple[PartitionKey, KafkaOffset, str]] = field(default_factory=list)
    epochs: list[Epoch] = field(default_factory=list)
    batches: int = 0

    def on_records(self, records: Sequence[LogRecord]) -> None:
        self.records.extend(records)
        self.batches += 1

    def on_reset(self, partition: PartitionKey, offset: KafkaOffset, reason: str) -> None:
        self.resets.append((partition, offset, reason))

    def on_epoch(self, epoch: Epoch) -> None:
        self.epochs.append(epoch)


@dataclass
class Topics:
    inventory: str
    orders: str

    @property
    def both(self) -> tuple[str, str]:
        return (self.inventory, self.orders)


@pytest.fixture
async def topics(kafka_broker: KafkaBroker) -> Topics:
    prefix = f"d{uuid.uuid4().hex[:8]}"
    made = Topics(f"{prefix}.inventory.events", f"{prefix}.order.events")
    await create_topic(kafka_broker.bootstrap, made.inventory, 3)
    await create_topic(kafka_broker.bootstrap, made.orders, 2)
    return made


@contextlib.asynccontextmanager
async def producing(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A transactional producer of its own (closed at the end)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"downstream-test-{uuid.uuid4().hex[:8]}",
        enable_idempotence=True,
        linger_ms=0,
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def update(topic: str, n: int, *, store: str | None = None, user: str | None = None) -> Sent:
    payload = {
        "n": n,
        **({"storeId": store} if store else {}),
        **({"userId": user} if user else {}),
    }
    envelope = {"event_id": str(uuid.uuid4()), "payload": payload}
    return topic, f"key-{n % 7}".encode(), json.dumps(envelope).encode()


def updates(t: Topics, count: int, first: int = 0) -> list[Sent]:
    inventory = [update(t.inventory, n, store=f"s{n % 3}") for n in range(first, first + count)]
    orders = [update(t.orders, n, user=f"u{n % 2}") for n in range(first, first + count // 2)]
    return inventory + orders


async def transact(producer: AIOKafkaProducer, records: Sequence[Sent], *, commit: bool) -> None:
    await producer.begin_transaction()
    for topic, key, value in records:
        # Each record is acknowledged before the abort, so aborted ones really are in the log.
        await producer.send_and_wait(topic, value, key=key, headers=[("k", key)])
    if commit:
        await producer.commit_transaction()
    else:
        await producer.abort_transaction()


def make_consumer(
    bootstrap: str, dlog: SqliteDownstreamLog, t: Sequence[str]
) -> DownstreamConsumer:
    return DownstreamConsumer(
        dlog,
        AiokafkaSource(ConsumerSettings(bootstrap, request_timeout_ms=5000)),
        PayloadChannels(),
        DownstreamSettings(
            topics=tuple(t),
            bootstrap=bootstrap,
            batch_max=50,
            fetch_timeout_s=0.2,
            ping_interval_s=0.5,
            metadata_interval_s=1.0,
            prune_interval_s=3600,
        ),
        Backoff(base=0.05, cap=0.5),
    )


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s}s: {what}")


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[PartitionKey, int]:
    """Read-committed end of each partition (a source that is not started opens its own)."""
    source = AiokafkaSource(ConsumerSettings(bootstrap))
    return {(topic, p): (await source.earliest_and_end(topic, p)).end for p in range(partitions)}


async def caught_up(bootstrap: str, dlog: SqliteDownstreamLog, t: Topics) -> None:
    target = await end_offsets(bootstrap, t.inventory, 3) | await end_offsets(
        bootstrap, t.orders, 2
    )

    async def reached() -> bool:
        return await dlog.positions() == target

    await eventually(reached, f"log positions reach {target}")


async def all_records(dlog: SqliteDownstreamLog) -> list[LogRecord]:
    channels = [f"inventory:s{i}" for i in range(3)] + ["orders:u0", "orders:u1"]
    page = await dlog.read(channels, {}, 100_000)
    assert page.complete
    return page.records


def ids(records: Sequence[LogRecord]) -> list[tuple[str, int, int]]:
    return sorted((r.topic, r.partition, r.offset) for r in records)


async def test_the_log_holds_exactly_the_committed_records(
    kafka_broker: KafkaBroker, topics: Topics, tmp_path: Path
) -> None:
    committed = updates(topics, 12) + updates(topics, 9, first=100)
    no_channel = [update(topics.inventory, 999), (topics.orders, b"k", b"not json")]
    async with producing(kafka_broker.bootstrap) as producer:
        await transact(producer, committed[:18], commit=True)
        await transact(producer, updates(topics, 8, first=50), commit=False)
        await transact(producer, committed[18:] + no_channel, commit=True)
    recorder = Recorder()
    async with SqliteDownstreamLog(tmp_path / "downstream.sqlite3") as dlog:
        consumer = make_consumer(kafka_broker.bootstrap, dlog, topics.both)
        consumer.add_listener(recorder)
        consumer.start()
        try:
            await caught_up(kafka_broker.bootstrap, dlog, topics)
            status = consumer.status()
        finally:
            await consumer.stop()
        held = await all_records(dlog)
        positions = await dlog.positions()
    truth = await read_committed(kafka_broker.bootstrap, list(topics.both))
    kept = [r for r in truth if r.value not in {value for _, _, value in no_channel}]
    assert len(kept) == len(truth) - 2  # records of no channel are not kept
    assert ids(held) == sorted((r.topic, r.partition, r.offset) for r in kept)
    assert sorted(r.value for r in held) == sorted(value for _, _, value in committed)
    assert ids(recorder.records) == ids(held)  # each told once
    for key in {r.partition_key for r in held}:
        in_log = [r.offset for r in held if r.partition_key == key]
        assert in_log == sorted(in_log)  # per-partition order, as read back and as told
        assert [r.offset for r in recorder.records if r.partition_key == key] == in_log
    for record in held:
        payload = json.loads(record.value)["payload"]
        expected = f"inventory:{payload['storeId']}" if record.topic == topics.inventory else ""
        assert record.channels == (expected or f"orders:{payload['userId']}",)
        assert dict(record.headers) == {"k": record.key}
    last = {(r.topic, r.partition): r.offset for r in sorted(held, key=lambda r: r.offset)}
    assert all(positions[key] > offset + 1 for key, offset in last.items())  # past markers
    assert status["state"] == "up"
    assert status["consumed"] == len(committed)
    assert status["unmapped"] == 2
    assert status["lag"] == 0
    assert recorder.resets == []
    assert consumer.batches == recorder.batches >= 1  # the metrics' batch count
    assert consumer.work_s > 0


async def test_broker_and_consumer_restarts_lose_and_repeat_nothing(
    kafka_broker: KafkaBroker, topics: Topics, tmp_path: Path
) -> None:
    path = tmp_path / "downstream.sqlite3"
    told = Recorder()
    async with SqliteDownstreamLog(path) as dlog:
        consumer = make_consumer(kafka_broker.bootstrap, dlog, topics.both)
        consumer.add_listener(told)
        consumer.start()
        try:
            async with producing(kafka_broker.bootstrap) as producer:
                await transact(producer, updates(topics, 10), commit=True)
            await caught_up(kafka_broker.bootstrap, dlog, topics)
            await asyncio.to_thread(kafka_broker.stop)
            try:

                async def down() -> bool:
                    return consumer.state is LinkState.DOWN

                await eventually(down, "the consumer sees the outage", 30)
            finally:
                await asyncio.to_thread(kafka_broker.start)
            async with producing(kafka_broker.bootstrap) as again:
                await transact(again, updates(topics, 6, first=20), commit=False)
                await transact(again, updates(topics, 10, first=30), commit=True)
            await caught_up(kafka_broker.bootstrap, dlog, topics)
            assert consumer.state is LinkState.UP
        finally:
            await consumer.stop()
        async with producing(kafka_broker.bootstrap) as later:
            await transact(later, updates(topics, 8, first=60), commit=True)
    told_after = Recorder()
    async with SqliteDownstreamLog(path) as reopened:
        consumer = make_consumer(kafka_broker.bootstrap, reopened, topics.both)
        consumer.add_listener(told_after)
        consumer.start()
        try:
            await caught_up(kafka_broker.bootstrap, reopened, topics)
        finally:
            await consumer.stop()
        held = await all_records(reopened)
    truth = await read_committed(kafka_broker.bootstrap, list(topics.both))
    assert ids(held) == sorted((r.topic, r.partition, r.offset) for r in truth)
    assert len(held) == 15 + 15 + 12
    assert ids(told.records + told_after.records) == ids(held)  # none twice, none missed
    assert sorted(json.loads(r.value)["payload"]["n"] for r in told_after.records) == sorted(
        [*range(60, 68), *range(60, 64)]
    )


async def test_records_deleted_before_consumption_reset_the_partition(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = f"d{uuid.uuid4().hex[:8]}.inventory.events"
    await create_topic(kafka_broker.bootstrap, topic, 1)
    first = [update(topic, n, store="s0") for n in range(5)]
    second = [update(topic, n, store="s0") for n in range(5, 15)]
    told = Recorder()
    async with SqliteDownstreamLog(tmp_path / "downstream.sqlite3") as dlog:
        await run_until_caught_up(kafka_broker.bootstrap, dlog, topic, first, Recorder())
        async with producing(kafka_broker.bootstrap) as producer:
            await transact(producer, second, commit=True)
        end = (await end_offsets(kafka_broker.bootstrap, topic, 1))[(topic, 0)]
        await delete_records(kafka_broker.bootstrap, topic, end - 4)
        await run_until_caught_up(kafka_broker.bootstrap, dlog, topic, [], told)
        held = (await dlog.read(["inventory:s0"], {}, 100)).records
        bounds = await dlog.bounds(topic, 0)
    assert told.resets == [
        ((topic, 0), end - 4, "records were deleted from Kafka before they were consumed")
    ]
    assert bounds == (end - 4, end)
    assert [json.loads(r.value)["payload"]["n"] for r in held] == [12, 13, 14]
    assert told.records == held


async def test_a_recreated_topic_resets_the_partition(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = f"d{uuid.uuid4().hex[:8]}.order.events"
    await create_topic(kafka_broker.bootstrap, topic, 1)
    old = [update(topic, n, user="u0") for n in range(10)]
    told = Recorder()
    async with SqliteDownstreamLog(tmp_path / "downstream.sqlite3") as dlog:
        await run_until_caught_up(kafka_broker.bootstrap, dlog, topic, old, Recorder())
        await recreate(kafka_broker.bootstrap, topic)
        new = [update(topic, n, user="u0") for n in range(100, 103)]
        await run_until_caught_up(kafka_broker.bootstrap, dlog, topic, new, told)
        held = (await dlog.read(["orders:u0"], {}, 100)).records
    assert [reason for _, _, reason in told.resets] == [
        "the stored position is beyond the partition's end (topic re-created?)"
    ]
    assert [json.loads(r.value)["payload"]["n"] for r in held] == [100, 101, 102]
    assert told.records == held


async def run_until_caught_up(
    bootstrap: str,
    dlog: SqliteDownstreamLog,
    topic: str,
    records: Sequence[Sent],
    told: Recorder,
) -> None:
    if records:
        async with producing(bootstrap) as producer:
            await transact(producer, records, commit=True)
    target = await end_offsets(bootstrap, topic, 1)
    consumer = make_consumer(bootstrap, dlog, [topic])
    consumer.add_listener(told)
    consumer.start()
    try:

        async def reached() -> bool:
            return await dlog.positions() == target

        await eventually(reached, f"log positions reach {target}")
    finally:
        await consumer.stop()


async def delete_records(bootstrap: str, topic: str, before: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before)})
    finally:
        await admin.close()


async def recreate(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    for attempt in range(150):  # the deletion completes asynchronously: up to 30 s
        try:
            await create_topic(bootstrap, topic, 1)
            return
        except Exception:
            if attempt == 149:
                raise
            await asyncio.sleep(0.2)
