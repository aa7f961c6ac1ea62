"""The measuring phases run in the main process: connecting the clients, measuring a live
fan-out (delivered rate, latency, CPU of every process) and the gateway's live phase; and Kafka
alone, the reference for Kafka's own share of the latency."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from hdrh.histogram import HdrHistogram
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import Figures, new_histogram
from benchmarks.fanout.clients import Workers
from benchmarks.fanout.processes import RssWatch, cpu_seconds, machine_cpu, own_cpu, rss_bytes
from benchmarks.fanout.updates import (
    LATENCY_CAP_US,
    PARTITIONS,
    TIME_CHARS,
    TIME_MARK,
    Updates,
    produce,
    wait_for_leaders,
)
from benchmarks.load import wait_quiet
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker

CONSUMER_FETCH_MAX_WAIT_MS = 200
"""The gateway's downstream consumer's (``ConsumerSettings.fetch_max_wait_ms``)."""


@dataclass
class Shape:
    connections: int
    channels: int
    workers: int
    gateways: int = 1

    def assignment(self) -> list[dict[str, Any]]:
        """Per worker: its (client index, channel, gateway) triples; channels spread evenly
        over clients, clients round-robin over workers, and each channel's subscribers evenly
        over the gateways (as a load balancer that knows nothing of channels would)."""
        shares: list[list[tuple[int, int, int]]] = [[] for _ in range(self.workers)]
        for index in range(self.connections):
            gateway = index // self.channels % self.gateways
            shares[index % self.workers].append((index, index % self.channels, gateway))
        return [{"channels": share} for share in shares]

    def subscribers(self, channel: int) -> int:
        return len(range(channel, self.connections, self.channels))


@dataclass
class Live:
    label: str
    connections: int
    rate: float
    """Updates/s offered."""
    produced: int
    expected: int
    delivered: int
    frames: int
    seconds: float
    latency: HdrHistogram
    connect_s: float
    cpu: dict[str, float]
    closes: dict[str, int]
    still_open: int
    rss_idle: int = 0
    rss_connected: int = 0
    rss_peak: int = 0
    sample: str | None = None
    collector: dict[str, tuple[int, float]] | None = None
    """The gateways' cycle collections in the phase, by generation: count and seconds paused."""
    consumer: ConsumerTotals | None = None
    """The gateways' downstream consumers in the phase (busy time, batches, records)."""

    @property
    def figures(self) -> Figures:
        return Figures(self.label, self.delivered, self.seconds, self.latency)


CollectorTotals = dict[str, tuple[int, float]]
Send = Callable[[], Coroutine[Any, Any, tuple[list[int], float]]]
"""Sends a phase's updates: their count per channel and the wall-clock time of the first."""


@dataclass(frozen=True)
class ConsumerTotals:
    """The gateways' downstream consumer totals (``sync_gateway_downstream_*``), summed, and
    when they were read; a difference of two is a phase's."""

    work_s: float = 0.0
    batches: int = 0
    records: int = 0
    at: float = 0.0
    """``time.monotonic()`` of the reading (of a difference: the seconds between the two)."""

    def __add__(self, other: ConsumerTotals) -> ConsumerTotals:
        return ConsumerTotals(
            self.work_s + other.work_s,
            self.batches + other.batches,
            self.records + other.records,
            max(self.at, other.at),
        )

    def __sub__(self, before: ConsumerTotals) -> ConsumerTotals:
        return ConsumerTotals(
            self.work_s - before.work_s,
            self.batches - before.batches,
            self.records - before.records,
            self.at - before.at,
        )


_CONSUMER_FAMILIES = {
    "sync_gateway_downstream_work_seconds": "work_s",
    "sync_gateway_downstream_batches": "batches",
    "sync_gateway_downstream_records": "records",
}


def consumer_totals_of(metrics_text: str, at: float = 0.0) -> ConsumerTotals:
    """The downstream consumer's totals in one ``GET /metrics`` answer, read at ``at``."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        field = _CONSUMER_FAMILIES.get(family.name)
        if field is not None:
            found[field] = sum(x.value for x in family.samples if x.name.endswith("_total"))
    return ConsumerTotals(
        found.get("work_s", 0.0), int(found.get("batches", 0)), int(found.get("records", 0)), at
    )


async def server_totals(urls: list[str]) -> tuple[CollectorTotals, ConsumerTotals]:
    """Collections and their pause so far, by generation, and the downstream consumer's
    totals, summed over the gateways."""
    totals: CollectorTotals = {}
    consumer = ConsumerTotals()
    for url in urls:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            text = (await http.get("/metrics")).raise_for_status().text
        totals = collector_delta({}, collector_totals_of(text), totals)
        consumer += consumer_totals_of(text, time.monotonic())
    return totals, consumer


def collector_totals_of(metrics_text: str) -> CollectorTotals:
    """``sync_gateway_gc_pause_seconds`` of one ``GET /metrics`` answer: per generation, the
    count and sum (seconds)."""
    totals: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "sync_gateway_gc_pause_seconds":
            continue
        for sample in family.samples:
            slot = {"_count": 0, "_sum": 1}.get(sample.name.removeprefix(family.name))
            if slot is not None:
                totals.setdefault(sample.labels["generation"], [0.0, 0.0])[slot] = sample.value
    return {g: (int(count), seconds) for g, (count, seconds) in sorted(totals.items())}


def collector_delta(
    before: CollectorTotals, after: CollectorTotals, plus: CollectorTotals | None = None
) -> CollectorTotals:
    """``after - before`` (``+ plus``), per generation."""
    zero, plus = (0, 0.0), plus or {}
    return {
        g: (
            n - before.get(g, zero)[0] + plus.get(g, zero)[0],
            s - before.get(g, zero)[1] + plus.get(g, zero)[1],
        )
        for g, (n, s) in after.items()
    }


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://") + "/v1/stream"


def process_pid(server: GatewayProcess | KafkaBroker) -> int:
    """The server's process id (the harness keeps its child private: read-only use)."""
    child = server._proc if isinstance(server, GatewayProcess) else server._child
    assert child is not None
    return child.pid


async def connect_all(
    workers: Workers, urls: list[str], shape: Shape, args: argparse.Namespace
) -> float:
    per_worker = [
        {
            "urls": urls,
            "concurrency": args.connect_concurrency,
            "timeout_s": args.connect_timeout,
            "compression": args.compression,
            "client": args.client,
            "distinct_subs": args.sub_ids == "distinct",
            **share,
        }
        for share in shape.assignment()
    ]
    started = time.perf_counter()
    answers = await workers.call("connect", args.connect_timeout + 30, per_worker)
    live = sum(a["live"] for a in answers)
    if live < shape.connections:
        problems: Counter[str] = Counter()
        for a in answers:
            problems.update(a["problems"])
            problems.update(a["closes"])
        raise RuntimeError(
            f"only {live:,} of {shape.connections:,} connections live after"
            f" {args.connect_timeout:g}s: {dict(problems.most_common(5))}"
        )
    return time.perf_counter() - started


async def measure(
    label: str,
    rate: float,
    workers: Workers,
    shape: Shape,
    args: argparse.Namespace,
    send: Send,
    server_pids: list[int],
    others: dict[str, int],
) -> Live:
    """Start counting in the workers, ``send`` the updates (it returns the count per channel
    and the wall-clock start), wait until the clients got them all (or no progress for
    ``--drain-timeout``, or ``--drain-max`` in all), stop counting; CPU of the servers
    (summed), the clients and ``others``."""
    pids = {"server": server_pids, **{name: [pid] for name, pid in others.items()}}
    cpu0 = {name: cpu_seconds(*group) for name, group in pids.items()}
    own0, clients0, machine0 = own_cpu(), workers.cpu(), machine_cpu()
    await workers.all("start", 30)
    per_channel, started = await send()
    expected = sum(n * shape.subscribers(ch) for ch, n in enumerate(per_channel))
    delivered, last_change, previous = 0, time.perf_counter(), -1
    deadline = time.perf_counter() + args.drain_max
    while time.perf_counter() < deadline:
        progress = await workers.all("progress", 30)
        delivered = sum(p["updates"] for p in progress)
        if delivered >= expected:
            break
        if delivered != previous:
            previous, last_change = delivered, time.perf_counter()
        elif time.perf_counter() - last_change > args.drain_timeout:
            break
        await asyncio.sleep(0.05)
    answers = await workers.all("stop", 30)
    cpu = {name: cpu_seconds(*group) - cpu0[name] for name, group in pids.items()}
    cpu["clients"] = workers.cpu() - clients0
    cpu["producer (this process)"] = own_cpu() - own0
    cpu["whole machine"] = machine_cpu() - machine0
    latency = new_histogram()
    closes: Counter[str] = Counter()
    for a in answers:
        latency.decode_and_add(a["latency"])
        closes.update(a["closes"])
    last = max(a["last"] for a in answers)
    elapsed = max(1e-9, last - started) if last else 1e-9
    return Live(
        label=label,
        connections=shape.connections,
        rate=rate,
        produced=sum(per_channel),
        expected=expected,
        delivered=sum(a["updates"] for a in answers),
        frames=sum(a["frames"] for a in answers),
        seconds=elapsed,
        latency=latency,
        connect_s=0.0,
        cpu=cpu,
        closes=dict(closes),
        still_open=sum(a["open"] for a in answers),
        sample=next((a["sample"] for a in answers if a["sample"]), None),
    )


async def gateway_live(
    gateways: list[GatewayProcess],
    broker: KafkaBroker,
    workers: Workers,
    producer: Any,
    topic: str,
    updates: Updates,
    phase: int,
    shape: Shape,
    rate: float,
    args: argparse.Namespace,
    rss_idle: int,
) -> Live:
    """``rss_idle``: the gateways' RSS before their first connection (they keep the memory of
    earlier phases' connections, so what they grow by from then on is a floor). Figures of
    several gateways are summed."""
    gw_pids = [process_pid(gateway) for gateway in gateways]
    for gateway in gateways:
        await wait_quiet(gateway)
    connect_s = await connect_all(workers, [ws_url(g.url) for g in gateways], shape, args)
    rss_connected = rss_bytes(*gw_pids)
    watch = RssWatch(*gw_pids)
    watch.start()
    count = int(rate * args.seconds)

    async def send() -> tuple[list[int], float]:
        produced = await produce(producer, topic, updates, phase, shape.channels, count, rate)
        return produced.per_channel, produced.started

    fleet = f" ({len(gateways)} processes)" if len(gateways) > 1 else ""
    collected, consumed = await server_totals([g.url for g in gateways])
    live = await measure(
        f"gateway{fleet}, {shape.connections:,} conns, {rate:,.0f} upd/s in",
        rate,
        workers,
        shape,
        args,
        send,
        gw_pids,
        {"broker": process_pid(broker)},
    )
    collected_after, consumed_after = await server_totals([g.url for g in gateways])
    live.collector = collector_delta(collected, collected_after)
    live.consumer = consumed_after - consumed
    live.connect_s = connect_s
    live.rss_idle, live.rss_connected = rss_idle, rss_connected
    live.rss_peak = await watch.stop()
    await workers.all("disconnect", 60, timeout_s=30)
    return live


async def kafka_alone(
    bootstrap: str,
    producer: Any,
    topic: str,
    updates: Updates,
    phase: int,
    channels: int,
    rate: float,
    seconds: float,
) -> Figures:
    """Kafka's share of the latency: the same updates at the same rate, read by a bare
    ``read_committed`` consumer with the gateway's fetch settings, in this process."""
    await wait_for_leaders(producer, topic)
    consumer = await consumer_at_end(bootstrap, topic)
    histogram = new_histogram()
    seen = 0
    stop = asyncio.Event()

    async def read() -> None:
        nonlocal seen
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=2000)
            now = time.time()
            for messages in batches.values():
                for message in messages:
                    value = message.value.decode()
                    at = value.find(TIME_MARK) + len(TIME_MARK)
                    produced = datetime.fromisoformat(value[at : at + TIME_CHARS]).timestamp()
                    histogram.record_value(min(LATENCY_CAP_US, max(1, int((now - produced) * 1e6))))
                    seen += 1

    try:
        reader = asyncio.create_task(read())
        count = int(rate * seconds)
        produced = await produce(producer, topic, updates, phase, channels, count, rate)
        for _ in range(200):  # up to 10 s for the last records
            if seen >= count or reader.done():
                break
            await asyncio.sleep(0.05)
        elapsed = time.time() - produced.started
        stop.set()
        await reader
    finally:
        stop.set()
        await consumer.stop()
    return Figures("Kafka alone: bare read_committed consumer", seen, elapsed, histogram)


async def consumer_at_end(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """A started bare ``read_committed`` consumer with the gateway's fetch settings, on every
    partition of ``topic`` at its end (resolved: what is produced from now on is read)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        fetch_max_wait_ms=CONSUMER_FETCH_MAX_WAIT_MS,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
    except BaseException:
        await consumer.stop()
        raise
    return consumer
