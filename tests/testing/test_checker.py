"""The reliability checker can fail: each kind of problem planted in a real Kafka topic (and a
gateway store, and a stream log) is reported exactly, and a clean run is reported ok."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from gateway.adapters.sqlite_store import SqliteEventStore
from gateway.testing.checker import (
    Ack,
    Position,
    Received,
    StreamLog,
    channels_by_rules,
    check,
    check_records,
)
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_reader import ConsumedRecord
from tests.factories import inventory_updated, storable
from tests.integration.kafka_topics import create_topic

pytestmark = pytest.mark.integration


def event(store: str, quantity: int) -> dict[str, Any]:
    return inventory_updated(store=store, sku="SKU-1", quantity=quantity)


class Writer:
    """Writes envelopes to one topic as the forwarder would (key, JSON value, event_id
    header) and remembers where each landed."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.positions: list[Position] = []

    async def write(self, envelope: dict[str, Any], partition: int) -> Position:
        meta = await self.producer.send_and_wait(
            self.topic,
            json.dumps(envelope).encode(),
            key=envelope["key"].encode(),
            partition=partition,
            headers=[("event_id", envelope["event_id"].encode())],
        )
        position = (self.topic, meta.partition, meta.offset)
        self.positions.append(position)
        return position


def acks(client: str, envelopes: list[dict[str, Any]]) -> list[Ack]:
    return [Ack(e["event_id"], e["key"], client, n) for n, e in enumerate(envelopes)]


def received(channel: str, positions: list[Position]) -> list[Received]:
    return [Received(t, p, o, channel) for t, p, o in positions]


async def test_every_planted_problem_is_reported_exactly(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = f"checker-{uuid.uuid4().hex[:10]}"
    await create_topic(kafka_broker.bootstrap, topic, 2)
    a = [event("s-1", q) for q in range(4)]  # one key, partition 0
    b = [event("s-2", q) for q in range(3)]  # another key, partition 1
    lost, waiting, phantom, unacked = (
        event("s-1", 9),
        event("s-1", 10),
        event("s-2", 9),
        event("s-2", 10),
    )

    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    await producer.start()
    try:
        writer = Writer(producer, topic)
        a_at = [await writer.write(e, 0) for e in (a[0], a[2], a[1], a[3])]  # a1, a2 swapped
        b_at = [await writer.write(e, 1) for e in (b[0], b[1], b[1], b[2])]  # b1 twice
        await writer.write(phantom, 1)  # nobody sent it
    finally:
        await producer.stop()

    store = SqliteEventStore(tmp_path / "gw-a" / "gateway.sqlite3")
    await store.open()
    try:  # acked by the gateway, never forwarded: backlog, not lost
        await store.append([storable(waiting["event_id"], waiting["key"])])
    finally:
        await store.close()

    s1, s2 = "inventory:s-1", "inventory:s-2"
    streams = [  # s1 owes a_at (offsets 0..3 of partition 0) and gets one skipped, one twice
        StreamLog("sub-1", s1, received(s1, [a_at[0], a_at[2], a_at[2], a_at[3]])),
        StreamLog("sub-2", s2, received(s2, [*b_at, writer.positions[-1]])),  # all 5
    ]
    acked = acks("c1", [*a, lost, waiting]) + acks("c2", b)
    report = await check(
        kafka_broker.bootstrap,
        [topic],
        acked,
        sent=[e["event_id"] for e in [*a, *b, lost, waiting, unacked]],
        streams=streams,
        channels_of=channels_by_rules(f"{topic}=inventory:{{payload.storeId}}"),
        stores={"gw-a": tmp_path / "gw-a"},
    )

    assert not report.ok, report
    assert report.records == 9
    assert report.acked == 9
    assert report.sent == 10
    assert report.lost == [lost["event_id"]]
    assert report.backlog == [waiting["event_id"]]
    assert report.quarantined == []
    assert report.duplicated == {b[1]["event_id"]: 2}
    assert report.raw_duplicates == {json.dumps(b[1]).encode(): 2}
    assert report.phantom == [phantom["event_id"]]
    assert [(v.earlier, v.later) for v in report.out_of_order] == [
        (a[1]["event_id"], a[2]["event_id"])
    ]
    assert [(p.client, p.position) for p in report.skipped] == [("sub-1", a_at[1])]
    assert [(p.client, p.position) for p in report.repeated] == [("sub-1", a_at[2])]
    assert report.stream_out_of_order == []
    assert report.unexpected == []
    assert report.updates_expected == 4 + 5  # b1's second copy is an update of s-2 too
    text = str(report)
    assert "FAILED" in text
    for title in ("lost", "backlog", "duplicated", "phantom", "out of order", "skipped"):
        assert title in text, text


async def test_a_clean_run_is_ok(kafka_broker: KafkaBroker) -> None:
    topic = f"checker-{uuid.uuid4().hex[:10]}"
    await create_topic(kafka_broker.bootstrap, topic, 2)
    a = [event("s-1", q) for q in range(5)]
    b = [event("s-2", q) for q in range(5)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    await producer.start()
    try:
        writer = Writer(producer, topic)
        a_at = [await writer.write(e, 0) for e in a]
        b_at = [await writer.write(e, 1) for e in b]
    finally:
        await producer.stop()
    s1, s2 = "inventory:s-1", "inventory:s-2"
    report = await check(
        kafka_broker.bootstrap,
        [topic],
        acks("c1", a) + acks("c2", b),
        streams=[
            StreamLog("sub-1", s1, received(s1, a_at)),
            StreamLog("sub-2", s2, received(s2, b_at[2:]), since={(topic, 1): b_at[2][2]}),
        ],
        channels_of=channels_by_rules(f"{topic}=inventory:{{payload.storeId}}"),
    )
    assert report.ok, report
    assert (report.records, report.acked, report.updates_received) == (10, 10, 8)
    assert str(report).startswith("reliability check OK")


def test_stream_order_and_foreign_updates_without_kafka() -> None:
    """The pure comparison: an update received after a later one of its partition, and an
    update of another channel, are reported; scopes keep fleet instances apart."""
    envelopes = [event("s-1", q) for q in range(3)]
    records = [
        ConsumedRecord(
            "t",
            0,
            n,
            e["key"].encode(),
            json.dumps(e).encode(),
            {"event_id": e["event_id"].encode()},
        )
        for n, e in enumerate(envelopes)
    ]
    records.append(
        ConsumedRecord("t", 1, 0, b"x", json.dumps(event("s-2", 1)).encode(), {})
    )  # no header: the envelope's event_id names it, nobody sent it
    c = "inventory:s-1"
    # acked 2, 1, 0 but in three scopes (instances): no order promised between them
    scoped = [
        Ack(e["event_id"], e["key"], "c", 3 - n, scope=f"gw-{n}") for n, e in enumerate(envelopes)
    ]
    report = check_records(
        records,
        scoped,
        streams=[
            StreamLog("sub", c, received(c, [("t", 0, 0), ("t", 0, 2), ("t", 0, 1), ("t", 1, 0)]))
        ],
        channels_of=channels_by_rules("t=inventory:{payload.storeId}"),
    )
    assert report.out_of_order == []
    assert len(report.phantom) == 1
    assert [p.position for p in report.stream_out_of_order] == [("t", 0, 1)]
    assert [p.position for p in report.unexpected] == [("t", 1, 0)]
    assert report.skipped == []
    assert report.repeated == []
    unscoped = [Ack(a.event_id, a.key, a.client, a.order) for a in scoped]
    assert len(check_records(records, unscoped).out_of_order) == 2
