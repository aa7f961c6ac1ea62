"""Full disk (issue 8, guarantee 4): when the store cannot grow, ingest answers 503 with
``Retry-After`` and acknowledges nothing it has not committed; websocket streams keep
delivering updates meanwhile; when space returns, ingest recovers by itself (no restart), and
every acknowledged event is in Kafka exactly once.

Two ways to run out of space:

- ``quota``: the store's own page limit (``max_store_bytes``), with a short retention so that
  forwarded events are pruned and space returns by itself;
- ``tmpfs``: the data directory (the store) on a real 8 MiB tmpfs, filled up with a ballast
  file that is deleted later (an operator freeing space), and the downstream log on another
  volume (``downstream_dir``), as the README advises. The store keeps a 2 MiB reserve
  (``store_min_free_bytes``): without one, the uploaders fill the space that returns at once and
  the store's own file and WAL then take the whole device, so that neither the forwarder's marks
  nor the pruning that would free pages can write again. Needs root (``mount``); skipped
  otherwise.

Clients re-send refused batches after ``Retry-After``; a backend service meanwhile produces
inventory updates straight into Kafka, which a websocket subscriber must receive while ingest is
refused (checked by probes: a 503 before the update is produced and another after it arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from gateway.testing.checker import Received, StreamLog, channels_by_rules, check
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.factories import inventory_updated, order_placed
from tests.integration.gateway_client import wait_streaming
from tests.integration.kafka_topics import TestTopics
from tests.integration.stream_client import StreamClient, stream
from tests.reliability.clients import Batch, RetryingClient, Tally, order_batches, wait_drained

pytestmark = pytest.mark.integration

TMPFS_BYTES = 8 * 1024 * 1024
TMPFS_LEFT_FREE = 1024 * 1024
"""Free space the ballast leaves on the tmpfs (less than SQLite's WAL grows to)."""
TMPFS_RESERVE = 2 * 1024 * 1024
"""The store's reserve on the tmpfs (``store_min_free_bytes``)."""
RETRY_AFTER_S = 1
STORE = "s-fulldisk"
CHANNEL = f"inventory:{STORE}"


@dataclass(frozen=True, slots=True)
class Scenario:
    clients: int
    events_per_client: int
    batch: int
    updates_while_full: int
    deadline_s: float


SHORT = Scenario(
    clients=4, events_per_client=3_000, batch=100, updates_while_full=10, deadline_s=240.0
)
LONG = Scenario(
    clients=8, events_per_client=12_500, batch=100, updates_while_full=50, deadline_s=1200.0
)


@dataclass
class Subscriber:
    client: StreamClient
    received: list[Received] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)
    error: Exception | None = None
    """Why the subscription stopped receiving (the socket closed), if it did."""

    async def run(self) -> None:
        """Record every update of the subscription until cancelled."""
        try:
            await self._receive()
        except Exception as exc:
            self.error = exc
            raise

    async def _receive(self) -> None:
        for _ in range(10**9):  # bounded: ends when the test cancels it or the socket closes
            frame = await self.client.recv(3600)
            self.frames.append(frame["type"])
            if frame["type"] == "events":
                for u in frame["events"]:
                    self.received.append(Received(u["topic"], u["partition"], u["offset"], CHANNEL))


@contextlib.contextmanager
def small_tmpfs(path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted at ``path`` (skip the test if mounting is not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


def fill(path: Path, leave_free: int) -> int:
    """Write a ballast file so that about ``leave_free`` bytes stay free; its size."""
    stat = os.statvfs(path)
    size = max(0, stat.f_bavail * stat.f_frsize - leave_free)
    with (path / "ballast").open("wb") as f:
        chunk = b"\0" * (1024 * 1024)
        written = 0
        while written < size:
            written += f.write(chunk[: min(len(chunk), size - written)])
    return size


@contextlib.asynccontextmanager
async def producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def wait_refused(tally: Tally, deadline: float) -> None:
    for _ in range(100_000):
        if tally.statuses[503] > 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert tally.statuses[503] > 0, f"the store never filled up: {tally.summary()}"


async def refused_probe(http: httpx.AsyncClient, probe: RetryingClient, key: str) -> int | None:
    """Probe ingest until it refuses (bounded: a few seconds); the last status. Pruning frees
    space now and then and the uploaders fill it again at once: a single probe may slip in."""
    status: int | None = None
    for attempt in range(40):
        status = await probe.attempt(http, Batch.of([order_placed(f"{key}-{attempt}")]))
        if status == 503:
            break
        await asyncio.sleep(0.05)
    return status


async def updates_while_refused(
    http: httpx.AsyncClient,
    kafka: AIOKafkaProducer,
    topic: str,
    sub: Subscriber,
    probe: RetryingClient,
    count: int,
    deadline: float,
) -> tuple[list[str], int]:
    """Produce ``count`` inventory updates one at a time; each must reach the subscriber. The
    ids produced, and how many were delivered between two 503 probes (while ingest refused)."""
    ids: list[str] = []
    while_refused = 0
    for i in range(count):
        before = await refused_probe(http, probe, f"probe-{i}")
        event = inventory_updated(STORE, f"SKU-{i % 3}", i)
        ids.append(event["event_id"])
        meta = await kafka.send_and_wait(
            topic, json.dumps(event).encode(), key=event["key"].encode()
        )
        # The gateway may stream the update before send_and_wait returns (its consumer sees the
        # record as soon as the broker commits it): wait for this very record, not for "one
        # more than when send_and_wait returned", which would then wait for a record never sent.
        produced = Received(meta.topic, meta.partition, meta.offset, CHANNEL)
        for _ in range(100_000):
            if produced in sub.received or sub.error or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert produced in sub.received, (
            f"update {i} {produced.position} not streamed (frames {sub.frames[-5:]}, "
            f"stream error {sub.error!r})"
        )
        after = await refused_probe(http, probe, f"probe-{i}b")
        while_refused += before == after == 503
    return ids, while_refused


async def run_scenario(
    broker: KafkaBroker,
    data: Path,
    log_path: Path,
    variant: str,
    scenario: Scenario,
    downstream_dir: Path | None = None,
) -> None:
    topics = TestTopics()
    settings = topics.settings(broker.bootstrap) | {
        "store_retry_after_s": str(RETRY_AFTER_S),
        "retention_s": "5",
        "prune_interval_s": "0.5",
    }
    if variant == "quota":
        settings["max_store_bytes"] = str(1024 * 1024)
    if variant == "tmpfs":
        settings["store_min_free_bytes"] = str(TMPFS_RESERVE)
    if downstream_dir is not None:
        settings["downstream_dir"] = str(downstream_dir)
    gateway = GatewayProcess(data, settings=settings, log_path=log_path)
    tally, probe_tally = Tally(), Tally()
    clients = [RetryingClient(f"c{c}", tally, max_pause_s=2.0) for c in range(scenario.clients)]
    probe = RetryingClient("probe", probe_tally)
    batches = [
        order_batches(topics.prefix, c, scenario.events_per_client, scenario.batch, 10)
        for c in range(scenario.clients)
    ]
    started = time.monotonic()
    deadline = started + scenario.deadline_s
    ballast = 0
    gateway.start()
    try:
        async with (
            httpx.AsyncClient(base_url=gateway.url, timeout=30) as http,
            producer(broker.bootstrap) as kafka,
            stream(gateway.url) as ws,
        ):
            await wait_streaming(http, 6)
            sub = Subscriber(ws)
            await ws.subscribe("inv", CHANNEL)
            await ws.expect("subscribed")
            listener = asyncio.create_task(sub.run())
            if variant == "tmpfs":
                ballast = await asyncio.to_thread(fill, data, TMPFS_LEFT_FREE)

            async def upload(client: RetryingClient, mine: list[Batch]) -> None:
                for batch in mine:
                    await client.upload(http, batch, deadline)

            uploads = [
                asyncio.create_task(upload(c, b)) for c, b in zip(clients, batches, strict=True)
            ]
            await wait_refused(tally, deadline)
            refused_at = time.monotonic()
            updates, while_refused = await updates_while_refused(
                http, kafka, topics.inventory, sub, probe, scenario.updates_while_full, deadline
            )
            if variant == "tmpfs":
                (data / "ballast").unlink()  # space returns
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                await asyncio.gather(*uploads)
            recovered_s = time.monotonic() - refused_at
            drain_s = await wait_drained(http, max(30.0, deadline - time.monotonic()))
            await asyncio.sleep(1.0)  # the last updates reach the subscriber
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            assert gateway.is_running, "the gateway restarted or died"
    finally:
        gateway.terminate()

    acked = [a for c in [*clients, probe] for a in c.acked]
    sent = set().union(*(c.sent for c in [*clients, probe]), updates)
    report = await check(
        broker.bootstrap,
        [topics.orders, topics.inventory],
        acked,
        sent=sent,
        streams=[StreamLog("sub", CHANNEL, sub.received)],
        channels_of=channels_by_rules(topics.channel_rules),
        stores={"gw": data},
        dead_letter_topic=topics.dead_letters,
    )
    print(
        f"\nfull disk ({variant}{f', ballast {ballast >> 10} KiB' if ballast else ''}):"
        f" {tally.summary()}; probes {dict(probe_tally.statuses)};"
        f" Retry-After values {dict(tally.retry_after | probe_tally.retry_after)};"
        f" {len(updates)} updates streamed, {while_refused} of them between two 503 probes;"
        f" from first 503 to every batch acked {recovered_s:.1f}s, drain {drain_s:.1f}s,"
        f" total {time.monotonic() - started:.1f}s\n{report}"
    )
    assert report.ok, str(report)
    assert tally.acked_events == scenario.clients * scenario.events_per_client
    assert tally.statuses[503] > 0
    assert set(tally.statuses) <= {200, 503}, tally.statuses
    assert set(tally.retry_after | probe_tally.retry_after) == {str(RETRY_AFTER_S)}
    assert tally.refused_then_duplicate == 0, "a refused request had stored events"
    assert while_refused >= 1, "no update was streamed while ingest was refused"
    assert sub.received, "the subscriber received nothing"


@pytest.mark.timeout(1500)
async def test_store_quota_refuses_with_503_and_recovers_by_itself(
    kafka_broker: KafkaBroker, tmp_path: Path, long_run: bool
) -> None:
    scenario = LONG if long_run else SHORT
    await run_scenario(kafka_broker, tmp_path / "gw", tmp_path / "gw.log", "quota", scenario)


@pytest.mark.timeout(1500)
async def test_small_tmpfs_refuses_with_503_and_recovers_when_space_returns(
    kafka_broker: KafkaBroker, tmp_path: Path, long_run: bool
) -> None:
    scenario = LONG if long_run else SHORT
    with small_tmpfs(tmp_path / "mnt") as mount:
        await run_scenario(
            kafka_broker,
            mount / "gw",
            tmp_path / "gw.log",
            "tmpfs",
            scenario,
            downstream_dir=tmp_path / "downstream",
        )
