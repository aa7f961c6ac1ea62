"""Ingest + exactly-once forwarding to a real Kafka broker: throughput, latency, backlog drain.

Starts its own single-node Kafka broker and a gateway process, then measures

1. sustained throughput: clients POST at full speed for ``--seconds``; events/s acknowledged,
   and events/s committed to Kafka (from the first request until the backlog is 0);
2. end-to-end latency at a paced, moderate load (``--load`` x the acknowledged rate of 1, or
   ``--rate``), once the gateway has settled after (1) (its downstream consumer idle for 2 s):
   from just before the HTTP request until a ``read_committed`` consumer running here sees the
   record; then the same pacing through a bare producer (4);
3. the drain of a backlog left by an outage: the broker is stopped, ``--backlog`` events are
   acknowledged into the local store, the broker is started; the drain rate is measured from
   the moment the backlog is seen shrinking until it is 0 (the broker's own start-up and the
   forwarder's reconnection delay are reported beside it);
4. the baseline, in the same run: a bare aiokafka producer (acks=all, idempotent, no
   transactions; same linger and batch size as the gateway's producer) sending records of the
   same size, keys and headers to a topic with the same partitions, as fast as it can.

Every figure is printed next to the baseline as a ratio. The clients, the consumer and the
baseline producer run in this process; the gateway and the broker in their own.

    python -m benchmarks.forward [--seconds 10] [--clients 8] [--batch 200] [--backlog 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks.common import Figures, RawHttpConnection
from benchmarks.latency import Sender, paced_latency
from benchmarks.load import (
    ID_SLOT,
    KEY_SLOT,
    EventSource,
    Load,
    backlog_events,
    full_speed,
    post_batch,
    template_record,
    upload,
    wait_for_empty_backlog,
    wait_quiet,
)
from gateway.core.routing import DEFAULT_ROUTES
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker

PARTITIONS = 3
"""Partitions of the gateway's topics (its default) and of the baseline's topic."""
TOPIC = DEFAULT_ROUTES["Order"]
BASELINE_TOPIC = f"baseline.{TOPIC}"


# -- (1) sustained throughput -------------------------------------------------------------------


async def sustained(
    gateway: GatewayProcess, source: EventSource, clients: int, batch: int, seconds: float
) -> tuple[Figures, Figures]:
    load = Load()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        assert await backlog_events(http) == 0
        started = time.perf_counter()
        elapsed = await full_speed(gateway.port, source, clients, batch, seconds, load)
        drained = await wait_for_empty_backlog(http, 600)
    return (
        Figures(f"(1) full speed, {clients}x{batch} ev/request: acknowledged", load.acked, elapsed),
        Figures("(1) full speed: committed to Kafka (backlog 0)", load.acked, drained - started),
    )


# -- (2) end-to-end latency ---------------------------------------------------------------------


async def gateway_latency(
    gateway: GatewayProcess,
    bootstrap: str,
    source: EventSource,
    rate: float,
    clients: int,
    batch: int,
    seconds: float,
) -> Figures:
    """Clients on keep-alive connections, each POSTing ``batch`` events at a time."""
    load = Load()
    connections = [RawHttpConnection("127.0.0.1", gateway.port) for _ in range(clients)]

    def sender(connection: RawHttpConnection) -> Sender:
        async def send(n: int, sending: Callable[[list[str]], None]) -> None:
            body, ids = source.body(n)
            sending(ids)
            await post_batch(connection, body, n, load)

        return send

    try:
        return await paced_latency(
            "(2) paced load: end-to-end latency",
            bootstrap,
            TOPIC,
            PARTITIONS,
            [sender(c) for c in connections],
            rate,
            batch,
            seconds,
        )
    finally:
        for connection in connections:
            await connection.close()


async def producer_latency(
    bootstrap: str, source: EventSource, rate: float, clients: int, batch: int, seconds: float
) -> Figures:
    """The same pacing through a bare producer: each send is ``batch`` records, awaited."""
    producer = bare_producer(bootstrap)
    await producer.start()
    make = RecordMaker(source)

    async def send(n: int, sending: Callable[[list[str]], None]) -> None:
        records = [make(source.take()) for _ in range(n)]
        sending([event_id for event_id, *_ in records])
        futures = [
            await producer.send(BASELINE_TOPIC, value, key=key, headers=headers)
            for _, value, key, headers in records
        ]
        await asyncio.gather(*futures)

    try:
        return await paced_latency(
            "(4) baseline at the paced load of (2)",
            bootstrap,
            BASELINE_TOPIC,
            PARTITIONS,
            [send] * clients,
            rate,
            batch,
            seconds,
        )
    finally:
        await producer.stop()


# -- (3) drain after an outage ------------------------------------------------------------------


@dataclass
class Drain:
    events: int
    upload_s: float
    """Time to acknowledge the backlog into the store with Kafka down."""
    broker_ready_s: float
    """From broker.start() to the broker being ready (JVM start, readiness probe)."""
    moving_s: float
    """From broker.start() to the first poll that saw the backlog shrink."""
    drained_s: float
    """From broker.start() to the backlog being 0."""
    backlog_when_moving: int

    @property
    def figures(self) -> Figures:
        return Figures(
            "(3) backlog drain, once moving, until backlog 0",
            self.backlog_when_moving,
            self.drained_s - self.moving_s,
        )


async def watch_drain(
    http: httpx.AsyncClient, started: float, events: int
) -> tuple[float, int, float]:
    """Poll /readyz until the backlog is 0: (the first poll to see it shrink, the backlog
    then, the first poll to see it 0), in seconds since ``started``. Polls sparingly: each
    poll counts the backlog in the store."""
    moving: float | None = None
    backlog_when_moving = 0
    for _ in range(20_000):
        backlog = await backlog_events(http)
        now = time.perf_counter() - started
        if moving is None and backlog < events:
            moving, backlog_when_moving = now, backlog
        if backlog == 0:
            return (now if moving is None else moving), backlog_when_moving, now
        await asyncio.sleep(0.1 if moving is None else 0.25)
    raise TimeoutError("the backlog was not drained")


async def drain_after_outage(
    gateway: GatewayProcess,
    broker: KafkaBroker,
    source: EventSource,
    events: int,
    clients: int,
    batch: int,
) -> Drain:
    """Stop the broker, acknowledge ``events`` into the store, start the broker, time the
    drain (watched from the moment the broker is started)."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        assert await backlog_events(http) == 0
        await asyncio.to_thread(broker.stop)
        started = time.perf_counter()
        await upload(gateway.port, source, clients, batch, events)
        upload_s = time.perf_counter() - started
        print(f"    backlog acknowledged with Kafka down in {upload_s:.1f}s", flush=True)
        assert await backlog_events(http) == events
        started = time.perf_counter()
        watcher = asyncio.create_task(watch_drain(http, started, events))
        await asyncio.to_thread(broker.start, 120)
        broker_ready_s = time.perf_counter() - started
        moving_s, backlog_when_moving, drained_s = await watcher
    return Drain(events, upload_s, broker_ready_s, moving_s, drained_s, backlog_when_moving)


# -- (4) baseline -------------------------------------------------------------------------------


async def create_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()


Header = tuple[str, bytes]


class RecordMaker:
    """Records like the gateway's for event number ``n`` of a source: (event id, value, key,
    headers), patched into the gateway's own record of the template event."""

    def __init__(self, source: EventSource) -> None:
        self._source = source
        self._template = template_record()
        self._headers = list(self._template.headers)
        self._id_at = [name for name, _ in self._headers].index("event_id")

    def __call__(self, n: int) -> tuple[str, bytes, bytes, list[Header]]:
        event_id = self._source.event_id(n)
        key = self._source.key(n).encode()
        value = self._template.value.replace(ID_SLOT.encode(), event_id.encode()).replace(
            KEY_SLOT.encode(), key
        )
        headers = list(self._headers)
        headers[self._id_at] = ("event_id", event_id.encode())
        return event_id, value, key, headers


def bare_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="baseline",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,  # the best of 0 and 5 for a producer sending flat out
        max_batch_size=256 * 1024,  # as the gateway's producer
    )


async def baseline(bootstrap: str, source: EventSource, events: int) -> Figures:
    """A bare idempotent producer sending ``events`` records like the gateway's, flat out."""
    make = RecordMaker(source)
    producer = bare_producer(bootstrap)
    await producer.start()
    try:
        started = time.perf_counter()
        previous: list[Awaitable[Any]] = []
        current: list[Awaitable[Any]] = []
        for n in range(events):
            _, value, key, headers = make(n)
            current.append(await producer.send(BASELINE_TOPIC, value, key=key, headers=headers))
            if len(current) >= 20_000:  # keep two windows in flight, bounded memory
                await asyncio.gather(*previous)
                previous, current = current, []
        await asyncio.gather(*previous, *current)
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    return Figures("(4) baseline: bare idempotent aiokafka producer", events, elapsed)


# -- main ---------------------------------------------------------------------------------------


def section(title: str) -> None:
    print(f"\n{title}", flush=True)


async def run(args: argparse.Namespace, broker: KafkaBroker, gateway: GatewayProcess) -> None:
    source = EventSource()

    section(f"(1) full speed for {args.seconds:g}s ...")
    acked, committed = await sustained(gateway, source, args.clients, args.batch, args.seconds)
    print(f"    {acked.events:,} events", flush=True)

    # Let the last phase's after-effects end (its events streamed into the downstream log,
    # its checkpoints): this phase measures a steady moderate load.
    await wait_quiet(gateway, settle=2.0)
    rate = args.rate if args.rate else acked.rate * args.load
    how = "as asked" if args.rate else f"{args.load:.0%} of the acknowledged rate"
    section(f"(2) latency at {rate:,.0f} ev/s ({how}) ...")
    lat = await gateway_latency(
        gateway,
        broker.bootstrap,
        source,
        rate,
        args.latency_clients,
        args.latency_batch,
        args.latency_seconds,
    )

    section(f"(3) backlog of {args.backlog:,} events with Kafka down, then drain ...")
    drain = await drain_after_outage(
        gateway, broker, source, args.backlog, args.clients, args.batch
    )

    section(f"(4) baseline: {args.backlog:,} records from a bare producer, then paced ...")
    await create_topic(broker.bootstrap, BASELINE_TOPIC)
    base_source = EventSource()
    base = await baseline(broker.bootstrap, base_source, args.backlog)
    base_lat = await producer_latency(
        broker.bootstrap,
        base_source,
        rate,
        args.latency_clients,
        args.latency_batch,
        args.latency_seconds,
    )

    size = len(template_record().value)
    section(
        f"results: rate, and ratio to the baseline's rate (records of {size}-byte values,"
        f" 11-byte keys, 6 headers; {PARTITIONS} partitions; single-node Kafka; this machine):"
    )
    for figures in (acked, committed, lat, drain.figures, base, base_lat):
        print(" ", figures.row(base.rate))
    notes = [
        f"(1) {acked.events:,} events acknowledged in {acked.seconds:.1f}s;"
        f" backlog 0 after {committed.seconds:.1f}s",
        f"(2) {lat.events:,} events, {args.latency_clients} clients x {args.latency_batch}"
        f" ev/request paced at {rate:,.0f} ev/s ({how}); latency from just before the POST to"
        " the receipt by a read_committed consumer",
        f"(3) {drain.events:,} events acknowledged with Kafka down in {drain.upload_s:.1f}s;"
        f" after broker.start(): broker ready at {drain.broker_ready_s:.1f}s, backlog seen"
        f" shrinking at {drain.moving_s:.1f}s (then {drain.backlog_when_moving:,}), backlog 0"
        f" at {drain.drained_s:.1f}s = {drain.events / drain.drained_s:,.0f} ev/s overall",
        f"(4) {base.events:,} records; acks=all, idempotent, no transactions, linger 5 ms,"
        " 256 KiB batches; then paced as (2), each send of"
        f" {args.latency_batch} records awaited, latency from just before the send to the"
        " receipt by the same consumer",
    ]
    print()
    for note in notes:
        print(" ", note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="full-speed phase length")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=200, help="events per request")
    parser.add_argument("--load", type=float, default=0.25, help="latency load / max rate")
    parser.add_argument("--rate", type=float, default=0.0, help="latency load in ev/s")
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--latency-clients", type=int, default=4)
    parser.add_argument("--latency-batch", type=int, default=20)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        print("starting a Kafka broker ...", flush=True)
        with KafkaBroker(Path(tmp) / "kafka") as broker:
            gateway = GatewayProcess(
                Path(tmp) / "gw",
                settings={
                    "kafka_bootstrap": broker.bootstrap,
                    "instance_id": "bench-forward",
                    "topic_partitions": str(PARTITIONS),
                    "log_level": "warning",
                },
            )
            with gateway:
                asyncio.run(run(args, broker, gateway))


if __name__ == "__main__":
    main()
