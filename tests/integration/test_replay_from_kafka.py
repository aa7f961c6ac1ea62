"""Replay from Kafka against the real broker: a cursor older than the downstream log (pruned)
gets the channel's records from Kafka, then from the log, then live, each exactly once and in
per-partition order, through a Fanout wired with AiokafkaHistory and the ChannelMapper."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from gateway.adapters.kafka_history import AiokafkaHistory
from gateway.adapters.sqlite_downstream import SqliteDownstreamLog
from gateway.core.channels import ChannelMapper
from gateway.core.cursor import Cursor
from gateway.core.ids import Epoch, KafkaOffset
from gateway.core.replay import SubscriptionPhase
from gateway.errors import KafkaUnavailable
from gateway.flows.downstream import DownstreamConsumer
from gateway.flows.fanout import Fanout
from gateway.flows.subscription import CaughtUp, Item, Reset, Subscription, Update
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_reader import read_committed
from tests.integration.kafka_topics import create_topic
from tests.integration.test_downstream_consume import eventually, make_consumer, producing

pytestmark = pytest.mark.integration

EPOCH = Epoch("replay-test")
HOUR_MS = 3600 * 1000
STORES = ("s0", "s1", "s2")


@pytest.fixture
async def topic(kafka_broker: KafkaBroker) -> str:
    name = f"r{uuid.uuid4().hex[:8]}.inventory.events"
    await create_topic(kafka_broker.bootstrap, name, 2)
    return name


@pytest.fixture
def mapper(topic: str) -> ChannelMapper:
    """The channel rules the Fanout replays with."""
    return ChannelMapper.from_config(f"{topic}=inventory:{{payload.storeId}}")


async def send(
    producer: AIOKafkaProducer, topic: str, numbers: range, *, timestamp_ms: int, commit: bool
) -> None:
    """One transaction of updates ``n`` (store ``s<n % 3>``, partition ``n % 2``)."""
    await producer.begin_transaction()
    for n in numbers:
        envelope = {"event_id": str(uuid.uuid4()), "payload": {"n": n, "storeId": STORES[n % 3]}}
        await producer.send_and_wait(
            topic,
            json.dumps(envelope).encode(),
            key=f"key-{n}".encode(),
            partition=n % 2,
            timestamp_ms=timestamp_ms,
        )
    if commit:
        await producer.commit_transaction()
    else:
        await producer.abort_transaction()


@contextlib.asynccontextmanager
async def consuming(
    bootstrap: str, dlog: SqliteDownstreamLog, topic: str
) -> AsyncIterator[DownstreamConsumer]:
    """The downstream consumer (its channels are ``inventory:<storeId>`` too) while in use."""
    consumer = make_consumer(bootstrap, dlog, [topic])
    consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def produce(bootstrap: str, topic: str, *batches: tuple[range, int, bool]) -> int:
    """One transaction per ``(numbers, age in hours, committed)``; return now in ms."""
    now_ms = int(time.time() * 1000)
    async with producing(bootstrap) as producer:
        for numbers, age_h, commit in batches:
            stamp = now_ms - age_h * HOUR_MS
            await send(producer, topic, numbers, timestamp_ms=stamp, commit=commit)
    return now_ms


async def caught_up(
    bootstrap: str, dlog: SqliteDownstreamLog, topic: str
) -> dict[int, KafkaOffset]:
    """Wait until the log reached Kafka's end of both partitions; return those ends."""
    history = AiokafkaHistory(bootstrap, 5000)
    try:
        ends = {p: (await history.bounds(topic, p)).end for p in (0, 1)}
    finally:
        await history.close()

    async def reached() -> bool:
        return await dlog.positions() == {(topic, p): end for p, end in ends.items()}

    await eventually(reached, f"log positions reach {ends}")
    return ends


async def items(sub: Subscription, count: int, timeout_s: float = 60) -> list[Item]:
    """The next ``count`` items, or up to a Reset (bounded in count and time)."""
    got: list[Item] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and not any(isinstance(i, Reset) for i in got):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(got)} of {count} items in {timeout_s}s: {got[-3:]}"
        async with asyncio.timeout(remaining):
            got.append(await sub.next_item())
    return got


def delivered(got: Sequence[Item]) -> list[tuple[int, int, int]]:
    """(partition, offset, n) of each update."""
    return [
        (i.record.partition, i.record.offset, json.loads(i.record.value)["payload"]["n"])
        for i in got
        if isinstance(i, Update)
    ]


async def truth(bootstrap: str, topic: str, store: str) -> list[tuple[int, int, int]]:
    """(partition, offset, n) of every committed update of ``store``, by partition and offset."""
    records = await read_committed(bootstrap, [topic])
    found = [
        (r.partition, r.offset, json.loads(r.value or b"")["payload"])
        for r in records
        if json.loads(r.value or b"")["payload"]["storeId"] == store
    ]
    return sorted((p, o, payload["n"]) for p, o, payload in found)


async def test_a_cursor_older_than_the_log_replays_from_kafka_then_goes_live(
    kafka_broker: KafkaBroker, topic: str, mapper: ChannelMapper, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    now_ms = await produce(
        bootstrap,
        topic,
        (range(0, 20), 2, True),
        (range(100, 110), 2, False),
        (range(20, 40), 2, True),
        (range(40, 60), 0, True),
    )
    history = AiokafkaHistory(bootstrap, 5000)
    async with (
        SqliteDownstreamLog(tmp_path / "downstream.sqlite3") as dlog,
        consuming(bootstrap, dlog, topic) as consumer,
    ):
        ends = await caught_up(bootstrap, dlog, topic)
        assert await dlog.prune(now_ms - HOUR_MS) == 40  # the log keeps updates 40..59 only
        starts = {p: (await dlog.bounds(topic, p) or (0, 0))[0] for p in (0, 1)}
        assert all(start > 10 for start in starts.values())
        fanout = Fanout(dlog, EPOCH, history=history, channels=mapper, page_size=4, max_queue=5)
        consumer.add_listener(fanout)
        try:
            sub = fanout.subscribe("inventory:s1", Cursor(EPOCH, {topic: {0: 0, 1: 0}}))
            expected = await truth(bootstrap, topic, "s1")
            assert sorted(n for *_, n in expected) == [n for n in range(60) if n % 3 == 1]
            got = await items(sub, len(expected) + 1)
            assert sorted(delivered(got)) == expected  # each once, none missing
            for partition in (0, 1):  # in order, the old ones from Kafka (below the log)
                mine = [o for p, o, _ in delivered(got) if p == partition]
                assert mine == sorted(mine)
                assert any(o < starts[partition] for o in mine)
            assert got[-1] == CaughtUp(Cursor(EPOCH, {topic: ends}))
            assert {i.record.channels for i in got if isinstance(i, Update)} == {("inventory:s1",)}

            await produce(bootstrap, topic, (range(60, 72), 0, True))
            live = delivered(await items(sub, 4))
            assert sorted(n for *_, n in live) == [61, 64, 67, 70]
            for partition in (0, 1):
                offsets = [o for p, o, _ in live if p == partition]
                assert offsets == sorted(offsets)
                assert all(o >= ends[partition] for o in offsets)
            assert sub.queued == 0
            assert sub.fell_behind == 0
        finally:
            await fanout.close()
            await history.close()


async def test_history_reads_committed_records_and_moves_past_markers(
    kafka_broker: KafkaBroker, topic: str
) -> None:
    bootstrap = kafka_broker.bootstrap
    await produce(bootstrap, topic, (range(0, 8, 2), 0, True), (range(8, 16, 2), 0, False))
    history = AiokafkaHistory(bootstrap, 2000, read_wait_s=1.0)
    try:
        bounds = await history.bounds(topic, 0)
        assert bounds.earliest == 0
        assert bounds.end == 10  # 4 committed, a marker, 4 aborted, a marker
        first, reached = await history.read(topic, 0, KafkaOffset(0), bounds.end, 3)
        assert [r.offset for r in first] == [0, 1, 2]
        assert reached == 3
        assert first[0].channels == ()
        assert json.loads(first[0].value)["payload"]["n"] == 0
        rest: list[int] = []
        position = reached
        for _ in range(10):  # the markers and aborted records are passed without records
            if position >= bounds.end:
                break
            more, position = await history.read(topic, 0, position, bounds.end, 100)
            rest += [r.offset for r in more]
        assert rest == [3]
        assert position == bounds.end
        with pytest.raises(KafkaUnavailable):
            await history.bounds(f"{topic}-missing", 0)
    finally:
        await history.close()
    with pytest.raises(KafkaUnavailable, match="closed"):
        await history.bounds(topic, 0)


async def test_a_replay_waits_through_a_kafka_outage_then_delivers_everything(
    kafka_broker: KafkaBroker, topic: str, mapper: ChannelMapper, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    now_ms = await produce(bootstrap, topic, (range(0, 30), 2, True), (range(30, 40), 0, True))
    history = AiokafkaHistory(bootstrap, 2000, read_wait_s=1.0)
    async with SqliteDownstreamLog(tmp_path / "downstream.sqlite3") as dlog:
        async with consuming(bootstrap, dlog, topic):
            ends = await caught_up(bootstrap, dlog, topic)
        assert await dlog.prune(now_ms - HOUR_MS) == 30
        fanout = Fanout(dlog, EPOCH, history=history, channels=mapper, retry_cap_s=0.5)
        try:
            expected = await truth(bootstrap, topic, "s2")
            before = fanout.subscribe("inventory:s2", Cursor(EPOCH, {topic: {0: 0, 1: 0}}))
            assert sorted(delivered(await items(before, len(expected) + 1))) == expected
            await asyncio.to_thread(kafka_broker.stop)
            try:
                sub = fanout.subscribe("inventory:s2", Cursor(EPOCH, {topic: {0: 0, 1: 0}}))

                async def waiting() -> bool:
                    return sub.phase is SubscriptionPhase.WAITING

                await eventually(waiting, "the replay waits for Kafka", 30)
                assert sub.queued == 0
            finally:
                await asyncio.to_thread(kafka_broker.start)
            got = await items(sub, len(expected) + 1, timeout_s=90)
            assert sorted(delivered(got)) == expected
            for partition in (0, 1):
                mine = [o for p, o, _ in delivered(got) if p == partition]
                assert mine == sorted(mine)
            assert got[-1] == CaughtUp(Cursor(EPOCH, {topic: ends}))
        finally:
            await fanout.close()
            await history.close()
