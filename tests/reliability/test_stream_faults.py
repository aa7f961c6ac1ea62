"""Stream faults (issue 8): a reconnect storm, a gateway killed during replays, slow readers.

Every subscriber here is a device that applies each update and persists its cursor in the same
step (docs/protocol.md §8.2), and resumes with that cursor after any disconnect. Updates are
published through the gateway (``POST /v1/events``, ``Inventory.Updated``); each scenario ends
with :func:`gateway.testing.checker.check`: every acknowledged event exactly once in Kafka,
nothing nobody sent, and every subscriber holding every update of its channel exactly once and
in per-partition order (DESIGN.md guarantee 5).

- ``test_reconnect_storm``: many subscribers on a few channels; every few seconds a random third
  of them loses its socket (aborted, no close frame) and reconnects with its last cursor while
  updates keep coming. CI: 300 subscribers for ~15 s; ``--long``: 1,000 for ~2 minutes.
- ``test_gateway_exits_mid_replay``: subscribers far behind reconnect to a gateway started with
  ``crash_point=mid_replay``, which exits abruptly once a replay page is delivered and the replay
  is not complete; restarted normally, they resume with their stored cursors.
- ``test_sigkill_during_replays``: the same backlog, many replays running, SIGKILL at a random
  moment (no crash point), restart; repeated.
- ``test_drops_during_replays``: the same backlog; while the replays run, random subscribers
  lose their socket every few tens of milliseconds (the gateway cancels replays mid-read), and
  reconnect with their cursors.
- ``test_slow_and_stalled_readers``: one subscriber that reads slowly while a burst arrives (one
  frame a second, through small buffers: it falls behind and is replayed from the log) and one
  that stops reading (closed with 4001, it resumes with its last cursor) next to normal
  subscribers of the same channel, whose latency is compared with a baseline run without the two
  (ratios only).

The socket buffers of a loopback connection hold a lot (here ~3.4 MB, ~3,250 padded updates,
before the gateway's send blocks), so the slow-reader scenario needs a burst of padded updates
larger than that; the stalled client's count before its close measures it in each run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from gateway.app import CRASH_EXIT_CODE
from gateway.testing.checker import (
    Ack,
    Position,
    Received,
    Report,
    StreamLog,
    channels_by_rules,
    check,
    drain,
)
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.factories import inventory_updated
from tests.integration.gateway_client import wait_drained, wait_streaming
from tests.integration.kafka_topics import TestTopics
from tests.integration.stream_client import StalledClient

pytestmark = pytest.mark.integration

SUBPROTOCOL: Final = Subprotocol("sync-gateway.v1.json")
LINK_ERRORS: Final = (ConnectionClosed, InvalidHandshake, InvalidURI, OSError, TimeoutError)
START_TIMEOUT_S: Final = 60.0
MAX_ATTEMPTS: Final = 10_000
"""Bound on the attempts of one publish batch (the deadline ends a hopeless loop first)."""
MAX_SESSIONS: Final = 100_000
"""Bound on one subscriber's connections (its deadline ends the loop first)."""


def now() -> float:
    return time.monotonic()


# -- the gateway ---------------------------------------------------------------------------------


@dataclass
class Harness:
    gw: GatewayProcess
    topics: TestTopics

    @property
    def bootstrap(self) -> str:
        return self.gw.settings["kafka_bootstrap"]

    async def start(self, **extra: str | None) -> None:
        """(Re)start the gateway with ``extra`` settings (``None`` removes one)."""
        for name, value in extra.items():
            if value is None:
                self.gw.settings.pop(name, None)
            else:
                self.gw.settings[name] = value
        await asyncio.to_thread(self.gw.start, START_TIMEOUT_S)

    async def streaming(self) -> None:
        async with httpx.AsyncClient(base_url=self.gw.url, timeout=30) as http:
            await wait_streaming(http, 6, timeout_s=START_TIMEOUT_S)

    async def settled(self, timeout_s: float = 120.0) -> None:
        """Backlog forwarded and the downstream consumer caught up (the local log holds every
        update), bounded."""
        deadline = now() + timeout_s
        async with httpx.AsyncClient(base_url=self.gw.url, timeout=30) as http:
            await wait_drained(http, timeout_s=timeout_s)
            status: dict[str, Any] = {}
            for _ in range(100_000):  # bounded by the deadline long before this count
                with contextlib.suppress(httpx.TransportError, ValueError):
                    status = (await http.get("/readyz")).json().get("downstream", {})
                if status.get("lag") == 0 or now() > deadline:
                    break
                await asyncio.sleep(0.1)
        assert status.get("lag") == 0, f"downstream still behind: {status}"

    def log_levels(self) -> dict[str, int]:
        """How many lines of each level the gateway logged (all its runs)."""
        text = self.gw.log_path.read_text(errors="replace")
        return dict(Counter(re.findall(r'"level": "([a-z]+)"', text)))

    async def metric(self, name: str) -> float:
        async with httpx.AsyncClient(base_url=self.gw.url, timeout=30) as http:
            text = (await http.get("/metrics")).text
        match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    async def check(
        self, publisher: Publisher, subscribers: Sequence[Subscriber]
    ) -> tuple[Report, str]:
        report = await check(
            self.bootstrap,
            [self.topics.inventory, self.topics.orders],
            publisher.acks,
            sent=publisher.sent,
            streams=[s.log() for s in subscribers],
            channels_of=channels_by_rules(self.topics.channel_rules),
            stores={"gw": self.gw.data_dir},
        )
        problems = [p for s in subscribers for p in s.problems] + publisher.problems
        return report, "\n".join(problems[:10])


@contextlib.asynccontextmanager
async def gateway(
    tmp_path: Path, kafka_broker: KafkaBroker, **extra: str
) -> AsyncIterator[Harness]:
    topics = TestTopics()
    # insecure_no_auth (GatewayProcess's default): every caller is the unrestricted anonymous
    # principal, which no per-subject connection or rate limit applies to (http_auth.py).
    settings = topics.settings(kafka_broker.bootstrap) | extra
    harness = Harness(GatewayProcess(tmp_path / "gw", settings=settings), topics)
    try:
        await harness.start()
        await harness.streaming()
        yield harness
    finally:
        await asyncio.to_thread(harness.gw.stop)
        harness.gw.kill()


# -- publishing ----------------------------------------------------------------------------------


@dataclass
class Publisher:
    """Posts ``Inventory.Updated`` batches through the gateway, re-sending a batch (same event
    ids) until it is acknowledged."""

    url: str
    rng: random.Random
    acks: list[Ack] = field(default_factory=list)
    sent: set[str] = field(default_factory=set)
    posted_at: dict[str, float] = field(default_factory=dict)
    """event id -> when its first POST started (latency origin)."""
    answers: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    made: int = 0

    async def publish(
        self,
        http: httpx.AsyncClient,
        stores: Sequence[str],
        count: int,
        deadline: float,
        padded: bool = False,
    ) -> None:
        batch = []
        for _ in range(count):
            self.made += 1
            event = inventory_updated(self.rng.choice(stores), f"SKU-{self.made % 7}", 1)
            if padded:  # ~1 KB: bytes, not updates, fill a socket
                event["correlation_id"] = "c" * 100
                event["payload"] |= {"reference": "r" * 128, "deviceId": "d" * 128}
            batch.append(event)
        pending = {e["event_id"]: e for e in batch}
        started = now()
        for event_id in pending:
            self.sent.add(event_id)
            self.posted_at[event_id] = started
        for _ in range(MAX_ATTEMPTS):
            if not pending or now() > deadline:
                break
            try:
                answer = await http.post(
                    f"{self.url}/v1/events", json={"events": list(pending.values())}
                )
            except httpx.TransportError as exc:
                self.answers[type(exc).__name__] += 1
                await asyncio.sleep(self.rng.uniform(0.05, 0.2))
                continue
            self.answers[str(answer.status_code)] += 1
            if answer.status_code != 200:
                await asyncio.sleep(self.rng.uniform(0.05, 0.2))
                continue
            for result in answer.json()["results"]:
                if result["status"] not in ("accepted", "duplicate"):
                    self.problems.append(f"rejected: {result}")
                    continue
                event = pending.pop(result["event_id"])
                self.acks.append(Ack(event["event_id"], event["key"], "publisher", len(self.acks)))
        if pending:
            self.problems.append(f"{len(pending)} events never acknowledged")

    async def run(
        self,
        stores: Sequence[str],
        *,
        total: int,
        batch: int,
        pause_s: float,
        deadline: float,
        padded: bool = False,
    ) -> None:
        """Publish until ``total`` events were made, in batches ``pause_s`` apart."""
        async with httpx.AsyncClient(timeout=30) as http:
            for _ in range(total // batch + 1):
                if self.made >= total or now() > deadline:
                    break
                count = min(batch, total - self.made)
                await self.publish(http, stores, count, deadline, padded)
                await asyncio.sleep(pause_s)


# -- subscribing ---------------------------------------------------------------------------------


@dataclass
class Subscriber:
    """A device following one channel: applies each update and persists its cursor with it;
    on any disconnect it reconnects (after a short jittered pause) with that cursor."""

    name: str
    channel: str
    url: str
    rng: random.Random
    apply_s: float = 0.0
    """Time spent applying each update (a slow reader)."""
    frame_delay_s: float = 0.0
    """Time spent on each ``events`` frame before the next is read (a slow reader)."""
    small_buffers: bool = False
    """Read through a small socket buffer and websocket queue (backpressure reaches the server
    quickly)."""
    cursor: str | None = None
    since: dict[tuple[str, int], int] | None = None
    """Where the subscriber's first subscription started (``None``: before every update)."""
    received: list[Received] = field(default_factory=list)
    arrivals: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    sessions: int = 0
    lives: int = 0
    closes: Counter[str] = field(default_factory=Counter)
    ws: ClientConnection | None = None
    live: asyncio.Event = field(default_factory=asyncio.Event)

    def log(self) -> StreamLog:
        return StreamLog(self.name, self.channel, list(self.received), since=self.since)

    def owed(self, history: dict[str, list[Position]]) -> int:
        since = self.since or {}
        return sum(1 for t, p, o in history.get(self.channel, []) if o >= since.get((t, p), 0))

    def positions(self) -> set[tuple[str, int, int]]:
        return {r.position for r in self.received}

    async def _open(self) -> ClientConnection:
        url = self.url.replace("http://", "ws://") + "/v1/stream"
        if not self.small_buffers:
            return await connect(url, subprotocols=[SUBPROTOCOL], max_size=None, open_timeout=10)
        sock = socket.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            host, port = self.url.removeprefix("http://").split(":")
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (host, int(port))), 10
            )
            return await connect(
                url,
                sock=sock,
                subprotocols=[SUBPROTOCOL],
                max_size=None,
                max_queue=1,
                open_timeout=10,
            )
        except BaseException:
            sock.close()
            raise

    async def session(self) -> None:
        self.sessions += 1
        self.live.clear()
        ws = await self._open()
        self.ws = ws
        try:
            await ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "sub": "s",
                        "channel": self.channel,
                        "cursor": self.cursor,
                    }
                )
            )
            async for message in ws:
                await self.apply(json.loads(message))
        finally:
            self.ws = None
            if ws.close_code is not None:
                self.closes[str(ws.close_code)] += 1
            ws.transport.abort()

    async def apply(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "events" and frame["sub"] == "s":
            if self.frame_delay_s:
                await asyncio.sleep(self.frame_delay_s)
            for update in frame["events"]:
                if self.apply_s:
                    await asyncio.sleep(self.apply_s)
                self.received.append(
                    Received(update["topic"], update["partition"], update["offset"], self.channel)
                )
                self.arrivals.setdefault(update["data"]["event_id"], now())
                self.cursor = update["cursor"]  # persisted together with the apply
        elif kind == "live" and frame["sub"] == "s":
            self.cursor = frame["cursor"]
            self.lives += 1
            self.live.set()
        elif kind != "subscribed":
            self.problems.append(f"{self.name}: unexpected frame {frame}")
            raise ConnectionError(f"unexpected frame {kind}")

    async def run(self, stop: asyncio.Event, deadline: float) -> None:
        for _ in range(MAX_SESSIONS):
            if stop.is_set() or now() > deadline:
                break
            try:
                await self.session()
            except (*LINK_ERRORS, ConnectionError) as exc:
                self.closes[type(exc).__name__] += 1
            if not stop.is_set():
                await asyncio.sleep(self.rng.uniform(0.0, 0.5))

    def drop(self) -> bool:
        """Lose the connection abruptly (no close frame), as a network failure would."""
        ws = self.ws
        if ws is None:
            return False
        ws.transport.abort()
        return True


@dataclass
class Crowd:
    subscribers: list[Subscriber]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, deadline: float) -> None:
        self.tasks = [asyncio.create_task(s.run(self.stop, deadline)) for s in self.subscribers]

    async def all_live(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(s.live.wait() for s in self.subscribers))

    async def close(self) -> None:
        self.stop.set()
        for s in self.subscribers:
            s.drop()
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=30)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def complete(self, harness: Harness, timeout_s: float) -> dict[str, int]:
        """Wait (bounded) until every subscriber holds as many distinct updates as it is owed
        by Kafka's history of its channel; the size of each channel's history."""
        await harness.settled()
        history = await channel_history(harness)
        deadline = now() + timeout_s
        for _ in range(100_000):  # bounded by the deadline long before this count
            behind = [s for s in self.subscribers if len(s.positions()) < s.owed(history)]
            if not behind or now() > deadline or any(s.problems for s in self.subscribers):
                break  # (a problem fails the test anyway: no need to wait for the rest)
            await asyncio.sleep(0.2)
        return {c: len(p) for c, p in history.items()}


def crowd_of(harness: Harness, stores: Sequence[str], n: int, apply_s: float = 0.0) -> Crowd:
    """``n`` subscribers ``d0``..., spread over the stores' inventory channels in turn."""
    return Crowd(
        [
            Subscriber(
                f"d{i}",
                f"inventory:{stores[i % len(stores)]}",
                harness.gw.url,
                random.Random(i),
                apply_s=apply_s,
            )
            for i in range(n)
        ]
    )


async def channel_history(harness: Harness) -> dict[str, list[Position]]:
    """Every committed update of each channel, from Kafka."""
    records = await drain(harness.bootstrap, [harness.topics.inventory])
    channels_of = channels_by_rules(harness.topics.channel_rules)
    history: dict[str, list[Position]] = {}
    for r in records:
        for c in channels_of(r):
            history.setdefault(c, []).append((r.topic, r.partition, r.offset))
    return history


async def connect_all(crowd: Crowd, deadline: float, timeout_s: float) -> None:
    """Start every subscriber (from now) and wait until each is live."""
    crowd.start(deadline)
    await crowd.all_live(timeout_s)


def assert_ok(report: Report, problems: str, summary: str) -> None:
    assert problems == "", problems
    assert report.ok, f"{report}\n{summary}"
    assert report.updates_received == report.updates_expected, f"{report}\n{summary}"


# -- 1. reconnect storm --------------------------------------------------------------------------


async def test_reconnect_storm(kafka_broker: KafkaBroker, tmp_path: Path, long_run: bool) -> None:
    subscribers_n = 1000 if long_run else 300
    channels_n = 10 if long_run else 6
    storm_s = 120.0 if long_run else 15.0
    drop_every_s = (1.5, 3.5)
    rate = 40.0 if long_run else 25.0  # updates per second
    stores = [f"st-{i}" for i in range(channels_n)]
    rng = random.Random(8101)
    started = now()
    deadline = started + storm_s + 300
    async with gateway(tmp_path, kafka_broker, stream_queue_max="200") as harness:
        crowd = crowd_of(harness, stores, subscribers_n)
        publisher = Publisher(harness.gw.url, random.Random(rng.random()))
        drops = rounds = flaps = 0
        try:
            await connect_all(crowd, deadline, timeout_s=120)
            connected_s = now() - started
            batch = 5
            total = int(rate * storm_s)
            publishing = asyncio.create_task(
                publisher.run(
                    stores, total=total, batch=batch, pause_s=batch / rate, deadline=deadline
                )
            )
            storm_end = now() + storm_s
            for _ in range(10_000):  # bounded by storm_end long before this count
                await asyncio.sleep(rng.uniform(*drop_every_s))
                if now() > storm_end or publishing.done():
                    break
                victims = rng.sample(crowd.subscribers, subscribers_n // 3)
                drops += sum(s.drop() for s in victims)
                rounds += 1
                # a flapping link: some of them drop again while they reconnect and replay
                await asyncio.sleep(rng.uniform(0.2, 0.6))
                flaps += sum(s.drop() for s in victims[: len(victims) // 2])
            await publishing
            owed = await crowd.complete(harness, timeout_s=90)
            replays = await harness.metric("sync_gateway_stream_replays_total")
        finally:
            await crowd.close()
        report, problems = await harness.check(publisher, crowd.subscribers)
        levels = harness.log_levels()
    seconds = now() - started
    sessions = sum(s.sessions for s in crowd.subscribers)
    summary = (
        f"storm: {subscribers_n} subscribers on {channels_n} channels (connected and live in "
        f"{connected_s:.1f}s), {rounds} drop rounds, {drops} drops + {flaps} "
        f"drops again while reconnecting, {sessions} sessions, "
        f"{len(publisher.acks)} events acked, owed per channel {sorted(owed.values())}, "
        f"{report.updates_received} updates delivered ({report.updates_expected} owed), "
        f"answers {dict(publisher.answers)}, closes "
        f"{dict(sum((s.closes for s in crowd.subscribers), Counter()))}, {replays:g} replays "
        f"(resumes from a cursor) on the gateway, gateway log levels {levels}; {seconds:.1f}s"
    )
    print(summary)
    assert rounds >= 3, summary
    assert drops >= rounds * subscribers_n // 4, summary
    assert replays >= drops, summary
    assert_ok(report, problems, summary)


# -- 2. gateway killed during replay -------------------------------------------------------------

REPLAY_SETTINGS: Final = {"stream_queue_max": "64"}
"""A small queue: replay pages are at most the queue's room, so a replay takes many pages."""


async def fall_behind(
    harness: Harness, crowd: Crowd, publisher: Publisher, stores: Sequence[str], total: int
) -> None:
    """Every subscriber subscribes from now and goes away; ``total`` updates are published;
    the gateway stops (gracefully) with all of them in its local log."""
    deadline = now() + 300
    await connect_all(crowd, deadline, timeout_s=60)
    await crowd.close()
    crowd.stop.clear()
    crowd.tasks = []
    await publisher.run(stores, total=total, batch=100, pause_s=0.0, deadline=deadline)
    await harness.settled()


async def test_gateway_exits_mid_replay(
    kafka_broker: KafkaBroker, tmp_path: Path, long_run: bool
) -> None:
    subscribers_n = 60 if long_run else 20
    stores = ["r-0", "r-1", "r-2", "r-3"]
    total = 8000 if long_run else 2000
    crashes_planned = 3 if long_run else 2
    started = now()
    async with gateway(tmp_path, kafka_broker, **REPLAY_SETTINGS) as harness:
        crowd = crowd_of(harness, stores, subscribers_n)
        publisher = Publisher(harness.gw.url, random.Random(82))
        await fall_behind(harness, crowd, publisher, stores, total)
        await asyncio.to_thread(harness.gw.stop)
        crashes: list[tuple[int | None, int]] = []
        deadline = now() + 300
        try:
            for _ in range(crashes_planned):
                try:
                    await harness.start(crash_point="mid_replay")
                except RuntimeError:  # reconnecting subscribers made it exit before it was healthy
                    assert not harness.gw.is_running
                before = sum(len(s.received) for s in crowd.subscribers)
                if not crowd.tasks:
                    crowd.start(deadline)
                code = await asyncio.to_thread(harness.gw.wait, 60)
                await asyncio.sleep(0.3)  # the subscribers see the drop
                crashes.append((code, sum(len(s.received) for s in crowd.subscribers) - before))
            await harness.start(crash_point=None)
            # new updates while the subscribers catch up: the replay/live seam is crossed too
            await publisher.run(
                stores, total=total + 200, batch=20, pause_s=0.05, deadline=deadline
            )
            owed = await crowd.complete(harness, timeout_s=120)
        finally:
            await crowd.close()
        report, problems = await harness.check(publisher, crowd.subscribers)
        log = harness.gw.log_path.read_text(errors="replace")
        levels = harness.log_levels()
    summary = (
        f"crash point mid_replay: {subscribers_n} subscribers {total} updates behind on 4 "
        f"channels (owed {sorted(owed.values())}); exits (code, updates received before "
        f"it) {crashes}; {report.updates_received} updates delivered "
        f"({report.updates_expected} owed), "
        f"{sum(s.sessions for s in crowd.subscribers)} sessions, gateway log levels {levels}; "
        f"{now() - started:.1f}s"
    )
    print(summary)
    assert [c for c, _ in crashes] == [CRASH_EXIT_CODE] * crashes_planned, (
        f"{summary}\n{harness.gw.log_tail()}"
    )
    assert log.count("crash point 'mid_replay' reached") == crashes_planned, summary
    assert_ok(report, problems, summary)


async def test_sigkill_during_replays(
    kafka_broker: KafkaBroker, tmp_path: Path, long_run: bool
) -> None:
    subscribers_n = 120 if long_run else 40
    stores = ["k-0", "k-1", "k-2", "k-3"]
    total = 8000 if long_run else 2000
    kills_planned = 5 if long_run else 2
    rng = random.Random(83)
    started = now()
    async with gateway(tmp_path, kafka_broker, **REPLAY_SETTINGS) as harness:
        # replays last a few seconds: the kill lands in them
        crowd = crowd_of(harness, stores, subscribers_n, apply_s=0.002)
        publisher = Publisher(harness.gw.url, random.Random(84))
        await fall_behind(harness, crowd, publisher, stores, total)
        history = await channel_history(harness)
        kills: list[tuple[float, int]] = []
        deadline = now() + 300
        try:
            crowd.start(deadline)
            for _ in range(kills_planned):
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                for _ in range(200):  # bounded (~10 s): kill once some replay is under way
                    mid = sum(0 < len(s.positions()) < s.owed(history) for s in crowd.subscribers)
                    if mid:
                        break
                    await asyncio.sleep(0.05)
                at = now() - started
                await asyncio.to_thread(harness.gw.kill)
                await asyncio.to_thread(harness.gw.wait, 30)
                kills.append((round(at, 1), mid))
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                await harness.start()
            owed = await crowd.complete(harness, timeout_s=120)
        finally:
            await crowd.close()
        report, problems = await harness.check(publisher, crowd.subscribers)
        levels = harness.log_levels()
    summary = (
        f"SIGKILL during replays: {subscribers_n} subscribers {total} updates behind "
        f"(owed {sorted(owed.values())}); kills (at s, subscribers mid-replay) {kills}; "
        f"{report.updates_received} updates delivered ({report.updates_expected} owed), "
        f"{sum(s.sessions for s in crowd.subscribers)} sessions, gateway log levels {levels}; "
        f"{now() - started:.1f}s"
    )
    print(summary)
    assert len(kills) == kills_planned, summary
    assert any(mid > 0 for _, mid in kills), f"no kill landed during a replay: {summary}"
    assert_ok(report, problems, summary)


async def test_drops_during_replays(
    kafka_broker: KafkaBroker, tmp_path: Path, long_run: bool
) -> None:
    """Subscribers far behind reconnect at once; while their replays run, random ones lose
    their socket again and again (the gateway cancels replays mid-read)."""
    subscribers_n = 300 if long_run else 150
    stores = ["q-0", "q-1", "q-2", "q-3"]
    total = 8000 if long_run else 3000
    drop_for_s = 60.0 if long_run else 8.0
    rng = random.Random(86)
    started = now()
    async with gateway(tmp_path, kafka_broker, **REPLAY_SETTINGS) as harness:
        crowd = crowd_of(harness, stores, subscribers_n)
        publisher = Publisher(harness.gw.url, random.Random(87))
        await fall_behind(harness, crowd, publisher, stores, total)
        history = await channel_history(harness)
        drops = mid = 0
        deadline = now() + 300
        try:
            crowd.start(deadline)
            drop_end = now() + drop_for_s
            for _ in range(100_000):  # bounded by drop_end long before this count
                await asyncio.sleep(rng.uniform(0.01, 0.05))
                if now() > drop_end:
                    break
                for s in rng.sample(crowd.subscribers, subscribers_n // 10):
                    replaying = 0 < len(s.positions()) < s.owed(history)
                    if s.drop():
                        drops += 1
                        mid += replaying
            owed = await crowd.complete(harness, timeout_s=90)
            replays = await harness.metric("sync_gateway_stream_replays_total")
        finally:
            await crowd.close()
        report, problems = await harness.check(publisher, crowd.subscribers)
        levels = harness.log_levels()
    failed = sum(1 for s in crowd.subscribers for p in s.problems if "replay failed" in p)
    summary = (
        f"drops during replays: {subscribers_n} subscribers {total} updates behind "
        f"(owed {sorted(owed.values())}); {drops} drops ({mid} of them mid-replay), "
        f"{replays:g} replays on the gateway, {failed} 'replay failed' ends; "
        f"{report.updates_received} updates delivered ({report.updates_expected} owed), "
        f"{sum(s.sessions for s in crowd.subscribers)} sessions, gateway log levels {levels}; "
        f"{now() - started:.1f}s"
    )
    print(summary)
    assert mid > 0, f"no drop landed during a replay: {summary}"
    assert_ok(report, problems, summary)


# -- 3. slow reader, stalled reader --------------------------------------------------------------


def latencies(
    publisher: Publisher, subscribers: Sequence[Subscriber], ids: set[str]
) -> list[float]:
    return sorted(
        s.arrivals[i] - publisher.posted_at[i] for s in subscribers for i in ids if i in s.arrivals
    )


def quantile(values: Sequence[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


async def load(
    publisher: Publisher,
    store: str,
    burst: int,
    steady: int,
    rate: float,
    deadline: float,
    after_burst: Callable[[], Awaitable[object]],
) -> set[str]:
    """One phase's workload: a burst (batches of 500 at once, padded), ``after_burst``, then
    ``steady`` updates at ``rate`` per second; the ids of the steady part (the latency
    sample)."""
    await publisher.run(
        [store], total=publisher.made + burst, batch=500, pause_s=0, deadline=deadline, padded=True
    )
    await after_burst()
    before = set(publisher.sent)
    await publisher.run(
        [store], total=publisher.made + steady, batch=10, pause_s=10 / rate, deadline=deadline
    )
    return set(publisher.sent) - before


async def test_slow_and_stalled_readers(
    kafka_broker: KafkaBroker, tmp_path: Path, long_run: bool
) -> None:
    normal_n = 5
    burst = 12_000 if long_run else 5000
    steady = 2000 if long_run else 200
    rate = 100.0  # steady updates per second
    queue_max = 50
    store = "hot"
    channel = f"inventory:{store}"
    started = now()
    settings = {"stream_queue_max": str(queue_max), "stream_send_stall_timeout_s": "3"}
    async with gateway(tmp_path, kafka_broker, **settings) as harness:
        url = harness.gw.url
        normal = Crowd(
            [Subscriber(f"n{i}", channel, url, random.Random(i)) for i in range(normal_n)]
        )
        slow = Subscriber(
            "slow", channel, url, random.Random(99), frame_delay_s=1.0, small_buffers=True
        )
        resumed = Subscriber("stalled", channel, url, random.Random(98))
        others = Crowd([slow])
        back = Crowd([resumed])
        publisher = Publisher(url, random.Random(85))
        deadline = now() + 300
        stalled: StalledClient | None = None
        try:
            await connect_all(normal, deadline, timeout_s=60)

            async def burst_delivered() -> None:
                """Every normal subscriber holds the whole burst (so it has reached the
                gateway's log and fan-out), bounded."""
                wanted = len(publisher.sent)
                for _ in range(10_000):  # bounded by the deadline
                    if min(len(s.received) for s in normal.subscribers) >= wanted:
                        return
                    assert now() < deadline, "the burst never reached the normal subscribers"
                    await asyncio.sleep(0.05)

            marks = [("live", now() - started)]
            # warm-up (the first updates after start-up are slow: producer, consumer)
            await load(publisher, store, 0, 100, rate, deadline, burst_delivered)
            await normal.complete(harness, timeout_s=60)
            # baseline: the normal subscribers alone, the steady part only (the loaded run's
            # steady part starts once its burst reached them too)
            baseline_ids = await load(publisher, store, 0, steady, rate, deadline, burst_delivered)
            await normal.complete(harness, timeout_s=60)
            since: dict[tuple[str, int], int] = {}
            for t, p, o in (await channel_history(harness)).get(channel, []):
                since[(t, p)] = max(since.get((t, p), 0), o + 1)
            slow.since = resumed.since = since
            marks.append(("baseline", now() - started))
            # the same load with a slow and a stalled subscriber on the same channel
            await connect_all(others, deadline, timeout_s=60)
            stalled = await asyncio.to_thread(StalledClient, url)
            stalled.send({"type": "subscribe", "sub": "s", "channel": channel, "cursor": None})
            await asyncio.sleep(0.5)  # subscribed (live from now) before the load
            at_burst_end: list[int] = []

            async def after_burst() -> None:
                await burst_delivered()
                at_burst_end.append(burst - len(slow.received))

            loaded_ids = await load(
                publisher,
                store,
                burst,
                steady,
                rate,
                deadline,
                after_burst,
            )
            behind_at_end = burst + steady - len(slow.received)
            slow.frame_delay_s = 0.0  # it reads at full speed again and catches up
            marks.append(("loaded", now() - started))
            slow_closes = 0.0
            closes_deadline = now() + 30
            for _ in range(1000):  # bounded by closes_deadline
                slow_closes = await harness.metric("sync_gateway_stream_slow_consumer_closes_total")
                if slow_closes >= 1 or now() > closes_deadline:
                    break
                await asyncio.sleep(0.2)
            frames, code = await asyncio.to_thread(stalled.read_all, 60.0)
            stalled_updates = [u for f in frames if f["type"] == "events" for u in f["events"]]
            lives = [f["cursor"] for f in frames if f["type"] == "live"]
            assert lives, f"the stalled client got no live frame: {frames[:3]}"
            resumed.cursor = stalled_updates[-1]["cursor"] if stalled_updates else lives[-1]
            resumed.received = [
                Received(u["topic"], u["partition"], u["offset"], channel) for u in stalled_updates
            ]
            before_close = len(resumed.received)
            marks.append(("stalled closed", now() - started))
            back.start(deadline)  # it comes back with its last cursor
            await Crowd([*normal.subscribers, slow, resumed]).complete(harness, timeout_s=120)
            marks.append(("complete", now() - started))
        finally:
            if stalled is not None:
                stalled.close()
            await normal.close()
            await others.close()
            await back.close()
        report, problems = await harness.check(publisher, [*normal.subscribers, slow, resumed])
        levels = harness.log_levels()
    base = latencies(publisher, normal.subscribers, baseline_ids)
    loaded = latencies(publisher, normal.subscribers, loaded_ids)
    p50_ratio = quantile(loaded, 0.5) / quantile(base, 0.5)
    p95_ratio = quantile(loaded, 0.95) / quantile(base, 0.95)
    summary = (
        f"slow readers: {normal_n} normal subscribers, {steady} updates at {rate:g}/s alone, "
        f"then a burst of {burst} and {steady} at {rate:g}/s with the slow and stalled ones; "
        f"slow reader (1 s per frame during the load) "
        f"{at_burst_end[0]} updates behind after the burst, {behind_at_end} when the load "
        f"ended, {len(slow.received)} received, "
        f"sessions {slow.sessions}, lives {slow.lives}; stalled closed with {code} after "
        f"{before_close} updates (slow-consumer closes {slow_closes:g}), resumed with "
        f"{len(resumed.received) - before_close} more; normal latency (steady part) p50 "
        f"{quantile(base, 0.5) * 1000:.0f} -> {quantile(loaded, 0.5) * 1000:.0f} ms "
        f"(x{p50_ratio:.2f}), p95 {quantile(base, 0.95) * 1000:.0f} -> "
        f"{quantile(loaded, 0.95) * 1000:.0f} ms (x{p95_ratio:.2f}); "
        f"{report.updates_received} updates delivered ({report.updates_expected} owed), "
        f"gateway log levels {levels}; {now() - started:.1f}s "
        f"({', '.join(f'{m} {t:.1f}s' for m, t in marks)})"
    )
    print(summary)
    assert code in (4001, 1011), summary
    assert slow_closes >= 1, summary
    assert before_close < burst + steady, summary
    if not long_run:
        # Slow for less than ws_ping_interval_s + ws_ping_timeout_s (40 s): never disconnected.
        # Slow for longer (the long form), its pong waits behind the ~3.4 MB the gateway's
        # socket holds, and the keepalive may close it (1011; seen as 1006 here): it resumes.
        assert slow.sessions == 1, f"the slow reader was disconnected: {summary}"
        assert slow.lives == 1, summary
    # The stalled client shows how many updates the server can push into one small-buffered
    # socket; more than that plus the queue and a frame in the reader's hands cannot be in
    # flight: the slow reader's backlog beyond it was necessarily replayed from the log.
    assert at_burst_end[0] > before_close + queue_max + 2 * 64, f"never fell behind: {summary}"
    assert len(base) == len(loaded) == normal_n * steady, summary
    assert p50_ratio < 4.0, summary
    assert p95_ratio < 6.0, summary
    assert_ok(report, problems, summary)
