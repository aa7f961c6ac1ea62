"""Issue 8, broker faults: Kafka frozen, restarted, or reached over a degraded or cut link while
clients upload to a real gateway process with retries. Every scenario ends with the checker:
nothing acknowledged lost, nothing duplicated, nothing nobody sent, per-key order kept, and the
backlog drained once Kafka is healthy again.

- ``test_broker_freeze``: SIGSTOP the broker for longer than the forwarder's delivery timeout
  (``kafka_transaction_timeout_s`` + ``kafka_request_timeout_ms``), SIGCONT, repeated.
- ``test_broker_restart``: stop and start the broker (same ports, same data) mid-run.
- ``test_broker_link_degraded`` / ``test_broker_link_cut``: a broker of this module advertises
  a :class:`~client_sdk.loadgen.proxy.FaultProxy` in front of it, so that every Kafka
  connection of the gateway (producer, admin, downstream consumer) goes through the proxy; the
  link gets latency with jitter, a bandwidth cap, resets after N bytes and tiny writes, then is
  black-holed and refused.
- ``test_kafka_clients_work_through_the_proxy``: the proxied broker itself, with aiokafka.

Each test prints one ``FIGURES`` line (run with ``-s`` to see them). CI forms take seconds of
faults each; ``--long`` runs minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from client_sdk.loadgen.proxy import FaultProxy, Faults, ProxyStats
from gateway.testing.checker import Ack, check
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_reader import read_committed
from tests.factories import order_placed
from tests.integration.kafka_topics import TestTopics, create_topic

pytestmark = pytest.mark.integration

T = TypeVar("T")

REQUEST_TIMEOUT_MS = 2_000
TRANSACTION_TIMEOUT_S = 2.5
DELIVERY_TIMEOUT_S = TRANSACTION_TIMEOUT_S + REQUEST_TIMEOUT_MS / 1000
"""How long the forwarder waits for a transaction before giving it up."""
FAST_KAFKA = {
    "kafka_request_timeout_ms": str(REQUEST_TIMEOUT_MS),
    "kafka_transaction_timeout_s": str(TRANSACTION_TIMEOUT_S),
    "forward_batch_max": "200",
}
RETRY_PAUSE_S = 0.2
MAX_ATTEMPTS = 300
"""Per batch; a batch not acknowledged after that many posts fails the test."""
KEYS_PER_CLIENT = 5
DRAIN_TIMEOUT_S = 120.0
BROKER_START_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Load:
    """The clients' side of a scenario."""

    clients: int = 3
    batch: int = 10
    pause_s: float = 0.1
    """Between two acknowledged batches of one client (so ~100 events/s per client)."""
    max_batches: int = 20_000
    """Per client: a bound on the loop, far above what a scenario sends."""


LOAD = Load()


@dataclass(frozen=True, slots=True)
class Timing:
    """The faults' side: how many rounds and how long each fault and each healthy spell."""

    rounds: int
    fault_s: float
    healthy_s: float


FREEZE = {False: Timing(2, DELIVERY_TIMEOUT_S + 1.0, 1.5), True: Timing(8, 30.0, 10.0)}
RESTART = {False: Timing(1, 0.5, 2.0), True: Timing(4, 10.0, 20.0)}
DEGRADE_PHASE_S = {False: 5.0, True: 60.0}
"""Per phase of the degraded link (four phases, then, in the long form, all at once)."""
CUT = {False: Timing(2, DELIVERY_TIMEOUT_S + 1.0, 1.5), True: Timing(6, 40.0, 15.0)}


# -- the clients -------------------------------------------------------------------------------


class Client:
    """Uploads batches in order, re-sending each until acknowledged; its keys are its own."""

    def __init__(self, name: str, load: Load) -> None:
        self.name = name
        self.load = load
        self.acked: list[Ack] = []
        self.sent: set[str] = set()
        self.posts = 0
        self.retries = 0
        self.duplicates = 0
        self._order = itertools.count()

    async def upload(self, http: httpx.AsyncClient, events: list[dict[str, Any]]) -> bool:
        """One attempt; whether the batch was acknowledged."""
        self.sent |= {e["event_id"] for e in events}
        self.posts += 1
        try:
            answer = await http.post("/v1/events", json={"events": events})
        except httpx.TransportError:
            return False
        if answer.status_code != 200:
            assert answer.status_code in (500, 502, 503), (answer.status_code, answer.text[:300])
            return False
        for event, result in zip(events, answer.json()["results"], strict=True):
            assert result["status"] in ("accepted", "duplicate"), result
            self.duplicates += result["status"] == "duplicate"
            self.acked.append(Ack(event["event_id"], event["key"], self.name, next(self._order)))
        return True

    async def run(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        load = self.load
        for b in range(load.max_batches):
            if stop.is_set():
                return
            events = [
                order_placed(f"{self.name}-k{(b * load.batch + i) % KEYS_PER_CLIENT}")
                for i in range(load.batch)
            ]
            for _ in range(MAX_ATTEMPTS):
                if await self.upload(http, events):
                    break
                self.retries += 1
                await asyncio.sleep(RETRY_PAUSE_S)
            else:
                raise AssertionError(f"{self.name}: a batch was never acknowledged")
            await asyncio.sleep(load.pause_s)


@dataclass
class Watch:
    """What /readyz said while the scenario ran (sampled every 0.25 s)."""

    samples: int = 0
    max_backlog: int = 0
    kafka_not_up: int = 0
    """Samples in which the forwarder's Kafka link was not up."""
    last: dict[str, Any] = field(default_factory=dict)

    async def run(self, http: httpx.AsyncClient) -> None:
        while True:
            with contextlib.suppress(httpx.TransportError, ValueError):
                status = (await http.get("/readyz")).json()
                self.samples += 1
                self.last = status
                self.max_backlog = max(self.max_backlog, status["backlog"]["events"])
                self.kafka_not_up += status["kafka"]["state"] != "up"
            await asyncio.sleep(0.25)


@dataclass
class Figures:
    scenario: str
    events: int = 0
    posts: int = 0
    retries: int = 0
    duplicates_answered: int = 0
    max_backlog: int = 0
    kafka_not_up_s: float = 0.0
    fault_phase_s: float = 0.0
    drain_s: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (
            f"FIGURES {self.scenario}: events={self.events} posts={self.posts} "
            f"retries={self.retries} duplicates_answered={self.duplicates_answered} "
            f"max_backlog={self.max_backlog} kafka_not_up~{self.kafka_not_up_s:.1f}s "
            f"fault_phase={self.fault_phase_s:.1f}s drain={self.drain_s:.1f}s{extra}"
        )


async def run_scenario(
    name: str,
    gateway: GatewayProcess,
    topics: TestTopics,
    checker_bootstrap: str,
    faults: Callable[[dict[str, object]], Awaitable[None]],
    load: Load = LOAD,
) -> tuple[Figures, Watch]:
    """Clients upload while ``faults(extra)`` runs (it must leave Kafka healthy, and may note
    figures of its own in ``extra``); then the clients stop, the backlog must drain, and the
    checker must find nothing wrong."""
    clients = [Client(f"{name}-c{i}", load) for i in range(load.clients)]
    watch = Watch()
    stop = asyncio.Event()
    figures = Figures(name)
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as http,
        httpx.AsyncClient(base_url=gateway.url, timeout=5) as probe,
    ):
        watcher = asyncio.create_task(watch.run(probe))
        uploads = [asyncio.create_task(c.run(http, stop)) for c in clients]
        try:
            await asyncio.sleep(0.5)  # a healthy start
            started = time.monotonic()
            await faults(figures.extra)
            healed = time.monotonic()
            figures.fault_phase_s = healed - started
            stop.set()
            await asyncio.wait_for(asyncio.gather(*uploads), 60)
            try:
                await wait_backlog_empty(probe, DRAIN_TIMEOUT_S)
            except TimeoutError:
                raise AssertionError(
                    f"{name}: backlog not drained in {DRAIN_TIMEOUT_S}s: {watch.last}\n"
                    f"{gateway.log_tail()}"
                ) from None
            figures.drain_s = time.monotonic() - healed
        finally:
            stop.set()
            for task in [*uploads, watcher]:
                task.cancel()
            await asyncio.gather(*uploads, watcher, return_exceptions=True)
    acked = [a for c in clients for a in c.acked]
    figures.events = len({a.event_id for a in acked})
    figures.posts = sum(c.posts for c in clients)
    figures.retries = sum(c.retries for c in clients)
    figures.duplicates_answered = sum(c.duplicates for c in clients)
    figures.max_backlog = watch.max_backlog
    figures.kafka_not_up_s = watch.kafka_not_up * 0.25
    report = await check(
        checker_bootstrap,
        [topics.orders],
        acked,
        sent=set().union(*(c.sent for c in clients)),
        stores={"gw": gateway.data_dir},
        dead_letter_topic=topics.dead_letters,
    )
    print(f"\n{figures}")
    assert report.ok, f"{report}\ngateway log: {gateway.log_path}\n{gateway.log_tail()}"
    assert figures.events > 0
    return figures, watch


async def wait_backlog_empty(http: httpx.AsyncClient, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError, ValueError):
            if (await http.get("/readyz")).json()["backlog"]["events"] == 0:
                return
        await asyncio.sleep(0.2)
    raise TimeoutError


@contextlib.contextmanager
def gateway_for(data_dir: Path, bootstrap: str, topics: TestTopics) -> Iterator[GatewayProcess]:
    with GatewayProcess(data_dir, settings=topics.settings(bootstrap) | FAST_KAFKA) as gateway:
        yield gateway


# -- a: the broker frozen ----------------------------------------------------------------------


async def test_broker_freeze(kafka_broker: KafkaBroker, tmp_path: Path, long_run: bool) -> None:
    timing = FREEZE[long_run]
    assert timing.fault_s > DELIVERY_TIMEOUT_S
    topics = TestTopics()

    async def freeze_rounds(extra: dict[str, object]) -> None:
        freezes: list[float] = []
        for _ in range(timing.rounds):
            await asyncio.to_thread(kafka_broker.pause)
            try:
                began = time.monotonic()
                await asyncio.sleep(timing.fault_s)
            finally:
                await asyncio.to_thread(kafka_broker.resume)
            freezes.append(time.monotonic() - began)
            await asyncio.sleep(timing.healthy_s)
        extra["freezes"] = f"{len(freezes)}x{min(freezes):.1f}s"

    try:
        with gateway_for(tmp_path / "gw", kafka_broker.bootstrap, topics) as gateway:
            figures, watch = await run_scenario(
                "broker-freeze", gateway, topics, kafka_broker.bootstrap, freeze_rounds
            )
    finally:
        if kafka_broker.is_paused:
            kafka_broker.resume()
    assert watch.kafka_not_up > 0, "the forwarder never noticed the freeze"
    assert figures.max_backlog > 0


# -- b: the broker restarted -------------------------------------------------------------------


async def test_broker_restart(kafka_broker: KafkaBroker, tmp_path: Path, long_run: bool) -> None:
    timing = RESTART[long_run]
    topics = TestTopics()

    async def restarts(extra: dict[str, object]) -> None:
        downtimes: list[float] = []
        for _ in range(timing.rounds):
            began = time.monotonic()
            await asyncio.to_thread(kafka_broker.stop)
            await asyncio.sleep(timing.fault_s)
            await asyncio.to_thread(kafka_broker.start, BROKER_START_TIMEOUT_S)
            downtimes.append(time.monotonic() - began)
            await asyncio.sleep(timing.healthy_s)
        extra["restarts"] = len(downtimes)
        extra["max_downtime"] = f"{max(downtimes):.1f}s"

    try:
        with gateway_for(tmp_path / "gw", kafka_broker.bootstrap, topics) as gateway:
            _, watch = await run_scenario(
                "broker-restart", gateway, topics, kafka_broker.bootstrap, restarts
            )
    finally:
        if not kafka_broker.is_running:  # the session's broker must outlive this test
            kafka_broker.start(BROKER_START_TIMEOUT_S)
    assert watch.kafka_not_up > 0, "the forwarder never noticed the restart"


# -- c: the link to the broker degraded or cut -------------------------------------------------


class ProxyThread:
    """A :class:`FaultProxy` on an event loop of its own thread, so that a module-scoped
    (synchronous) fixture can put it in front of a broker that outlives each test's loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy")
        self.proxy = FaultProxy("127.0.0.1", 1, rng=random.Random(8))

    def start(self) -> None:
        self._thread.start()
        self.call(self.proxy.start())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def do(self, action: Callable[[FaultProxy], T]) -> T:
        async def run() -> T:
            return action(self.proxy)

        return self.call(run())

    async def ado(self, action: Callable[[FaultProxy], T]) -> T:
        """:meth:`do` from another event loop."""
        return await asyncio.to_thread(self.do, action)

    def stats(self) -> ProxyStats:
        return self.do(lambda p: p.stats())

    def stop(self) -> None:
        try:
            self.call(self.proxy.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()


@dataclass
class ProxiedBroker:
    broker: KafkaBroker
    link: ProxyThread

    def heal(self) -> None:
        def heal(proxy: FaultProxy) -> None:
            proxy.heal()
            proxy.restore()

        self.link.do(heal)


@pytest.fixture(scope="module")
def proxied_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedBroker]:
    """A broker of this module, advertising a fault proxy that relays to it."""
    link = ProxyThread()
    link.start()
    try:
        broker = KafkaBroker(
            tmp_path_factory.mktemp("kafka-proxied"), advertised_port=link.proxy.port
        )
        link.proxy.target_port = broker.port
        with broker:
            yield ProxiedBroker(broker, link)
    finally:
        link.stop()


@pytest.fixture
def healthy_link(proxied_broker: ProxiedBroker) -> Iterator[ProxiedBroker]:
    proxied_broker.heal()
    try:
        yield proxied_broker
    finally:
        proxied_broker.heal()


async def test_kafka_clients_work_through_the_proxy(healthy_link: ProxiedBroker) -> None:
    broker, link = healthy_link.broker, healthy_link.link
    bootstrap = broker.advertised_bootstrap
    assert bootstrap == f"127.0.0.1:{link.proxy.port}" != broker.bootstrap
    topic = f"t{random.randrange(1 << 32):08x}.through-proxy"
    await create_topic(bootstrap, topic, 2)
    before = link.stats()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"{topic}.tx", enable_idempotence=True
    )
    await producer.start()
    try:
        # metadata names the proxy, not the broker's own port
        brokers = producer.client.cluster.brokers()
        assert {(b.host, b.port) for b in brokers} == {("127.0.0.1", link.proxy.port)}
        await link.ado(lambda p: p.degrade(latency_s=0.02, jitter_s=0.02, slice_bytes=16))
        async with producer.transaction():
            for i in range(50):
                await producer.send(topic, f"v{i}".encode(), key=f"k{i % 5}".encode())
        await link.ado(lambda p: p.heal())
        await producer.begin_transaction()
        await producer.send(topic, b"aborted", key=b"k0")
        await producer.flush()
        await producer.abort_transaction()
    finally:
        await producer.stop()
    records = await read_committed(bootstrap, [topic], timeout_s=30)
    values = sorted(r.value or b"" for r in records)
    assert values == sorted(f"v{i}".encode() for i in range(50))
    after = link.stats()
    assert after.bytes_up - before.bytes_up > 50 * 2
    assert after.writes - before.writes > (after.bytes_up - before.bytes_up) // 32  # sliced
    assert after.connections > before.connections

    # all the traffic goes through the proxy: with the link cut, a consumer gets nothing
    await link.ado(lambda p: p.cut())
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap,  # bootstrapping directly does not help
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        request_timeout_ms=3000,
    )
    try:
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            await asyncio.wait_for(consumer.start(), 5)
            consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
            batch = await consumer.getmany(timeout_ms=2000)
            assert not any(batch.values()), "records arrived over a cut link"
    finally:
        await consumer.stop()
        await link.ado(lambda p: p.restore())


async def test_broker_link_degraded(
    healthy_link: ProxiedBroker, tmp_path: Path, long_run: bool
) -> None:
    broker, link = healthy_link.broker, healthy_link.link
    phase_s = DEGRADE_PHASE_S[long_run]
    phases: list[tuple[str, Faults]] = [
        ("latency", Faults(latency_s=0.05, jitter_s=0.1)),
        ("bandwidth", Faults(bandwidth_bps=32 * 1024)),
        ("resets", Faults(reset_after_bytes=48 * 1024)),
        ("slices", Faults(slice_bytes=7)),
    ]
    if long_run:
        phases.append(
            (
                "all",
                Faults(
                    latency_s=0.05,
                    jitter_s=0.1,
                    bandwidth_bps=64 * 1024,
                    reset_after_bytes=256 * 1024,
                    slice_bytes=64,
                ),
            )
        )
    topics = TestTopics()
    seen: dict[str, ProxyStats] = {}

    async def degrade(extra: dict[str, object]) -> None:
        for name, faults in phases:
            before = await asyncio.to_thread(link.stats)
            await link.ado(lambda p, f=faults: p.degrade(f))  # type: ignore[misc]
            await asyncio.sleep(phase_s)
            seen[name] = _delta(await asyncio.to_thread(link.stats), before)
        await asyncio.to_thread(healthy_link.heal)
        extra["phases"] = ",".join(
            f"{name}(up={s.bytes_up}B,writes={s.writes},resets={s.resets})"
            for name, s in seen.items()
        )

    with gateway_for(tmp_path / "gw", broker.advertised_bootstrap, topics) as gateway:
        await run_scenario("link-degraded", gateway, topics, broker.advertised_bootstrap, degrade)
    assert seen["resets"].resets > 0, "no connection was reset after N bytes"
    assert seen["slices"].writes > seen["slices"].bytes_up // 8  # tiny writes happened
    assert all(s.bytes_up > 0 for s in seen.values())


async def test_broker_link_cut(healthy_link: ProxiedBroker, tmp_path: Path, long_run: bool) -> None:
    broker, link = healthy_link.broker, healthy_link.link
    timing = CUT[long_run]
    assert timing.fault_s > DELIVERY_TIMEOUT_S
    topics = TestTopics()
    dropped: list[int] = []

    async def cuts(extra: dict[str, object]) -> None:
        before = await asyncio.to_thread(link.stats)
        for i in range(timing.rounds):
            mode = "blackhole" if i % 2 == 0 else "refuse"

            def cut(proxy: FaultProxy, mode: str = mode) -> None:
                proxy.mode = "blackhole" if mode == "blackhole" else "refuse"
                proxy.cut()

            await link.ado(cut)
            await asyncio.sleep(timing.fault_s)
            await link.ado(lambda p: p.restore())
            await asyncio.sleep(timing.healthy_s)
        stats = _delta(await asyncio.to_thread(link.stats), before)
        extra["cuts"] = f"{timing.rounds}x{timing.fault_s:.1f}s"
        extra["dropped"] = stats.dropped
        extra["refused"] = stats.refused
        dropped.append(stats.dropped)

    with gateway_for(tmp_path / "gw", broker.advertised_bootstrap, topics) as gateway:
        figures, watch = await run_scenario(
            "link-cut", gateway, topics, broker.advertised_bootstrap, cuts
        )
    assert watch.kafka_not_up > 0, "the forwarder never noticed the cut"
    assert dropped[0] > 0, figures


def _delta(after: ProxyStats, before: ProxyStats) -> ProxyStats:
    return ProxyStats(
        connections=after.connections - before.connections,
        refused=after.refused - before.refused,
        active=after.active,
        cuts=after.cuts - before.cuts,
        dropped=after.dropped - before.dropped,
        bytes_up=after.bytes_up - before.bytes_up,
        bytes_down=after.bytes_down - before.bytes_down,
        resets=after.resets - before.resets,
        writes=after.writes - before.writes,
    )
