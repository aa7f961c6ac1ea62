"""Downstream fan-out to ``WS /v1/stream`` clients from a real Kafka broker: delivered rate,
latency, memory per connection, a resume storm, and a bare websockets server as the baseline.

Starts its own single-node Kafka broker and a gateway process (loopback only), and client
worker processes (``--workers``, each a share of the connections on the ``websockets``
asyncio client, with minimal work per message: frames are scanned, not parsed). Then:

0. Kafka alone, for reference: the updates of the first phase, at its rate, read by a bare
   ``read_committed`` aiokafka consumer with the gateway's fetch settings (on a topic the
   gateway does not consume): Kafka's own share of the latency on this machine;
1. live fan-out, for each ``--connections`` count and each ``--rate``: the connections
   subscribe "from now" to ``--channels`` channels ``inventory:s-<i>`` (spread evenly);
   ``Inventory.Updated`` envelopes, shaped like the gateway's, are produced straight to the
   inventory topic by a bare aiokafka producer at ``--rate`` updates/s for ``--seconds``
   (round-robin over the channels; keys ``s-<i>:SKU-n`` spread over the partitions). Reported:
   updates/s delivered (sum over clients, until the last one arrived), latency from just
   before the produce call to the client's receipt (``event_time`` is the produce wall-clock
   time, in microseconds), the gateway's RSS per connection, the CPU of every process;
2. resume storm (``--storm-clients``): clients subscribe, keep their cursor and disconnect;
   ``--storm-behind`` updates per channel are produced and consumed by the gateway; then every
   client reconnects at once with its cursor. Reported: the time until all received ``live``
   after their replay, replayed updates/s, and a check that each client got exactly the
   updates it missed (event ids carry the channel and a sequence number: no loss, no
   duplicate, per-partition offsets increasing);
3. the baseline, in the same run, for each phase of (1): a bare ``websockets`` asyncio server
   (``serve`` + ``broadcast()``, in its own process, on uvloop as the gateway) answering the
   same subscribe frames and sending, at the same rate for the same time, frames of the same
   size (a copy of a frame the gateway sent) to the same connections, measured with the same
   client workers. Its frames are stamped with the time they were due, so a server that falls
   behind its schedule shows it in its latency, as the gateway does behind a paced producer.

The gateway's rates are printed next to the baseline's (ratio). The machine runs the broker,
the gateway, the producer and the clients together (and whatever else runs on it: the CPU
lines say who had the cores). With a rate the gateway cannot sustain, the backlog waits in
Kafka and the latency grows with the length of the run: compare latencies at sustainable
rates (``--rate 100,300,1000``: a latency curve).

    python -m benchmarks.fanout [--connections 1000,10000] [--channels 100] [--seconds 10]
                                [--rate 0 (auto: 50k/s delivered)] [--workers 4]
                                [--storm-clients 1000 --storm-behind 300] [--no-baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import resource
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from hdrh.histogram import HdrHistogram
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from benchmarks.common import Figures, new_histogram
from benchmarks.load import downstream_consumed, wait_quiet
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.integration.kafka_topics import TestTopics, create_topic

PARTITIONS = 3
"""Partitions of the inventory topic (the gateway's default for the topics it creates)."""
CONSUMER_FETCH_MAX_WAIT_MS = 200
"""The gateway's downstream consumer's (``ConsumerSettings.fetch_max_wait_ms``)."""
GOAL_DELIVERED = 50_000
"""The product's goal: updates/s delivered (with p99 < 100 ms)."""
SUBPROTOCOL = Subprotocol("sync-gateway.v1.json")
EVENTS_PREFIX = '{"type":"events"'
TIME_MARK = '"event_time":"'
ID_MARK = '"event_id":"'
CURSOR_MARK = '"cursor":"'
PARTITION_MARK = '"partition":'
OFFSET_MARK = '"offset":'
TIME_CHARS = len("2026-11-21T10:00:00.123456Z")
ID_CHARS = 36
LATENCY_CAP_US = 59_999_999
"""Latencies are recorded up to a minute (new_histogram's range); longer ones count as that."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- processes: descriptors, memory, CPU --------------------------------------------------------


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft limit of open files (children inherit it); the new soft
    limit. Root may raise the hard limit too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            soft, hard = needed, needed
    target = max(soft, needed) if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return 0
    return int(fields[1]) * PAGE


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc), 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def machine_cpu() -> float:
    """CPU seconds spent by every process of the machine (Linux /proc/stat: all but idle and
    iowait), to tell what other work shared the cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


class RssWatch:
    """Samples a process's RSS every ``interval`` seconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak = pid, interval, rss_bytes(pid)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self.peak = rss_bytes(self.pid)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peak = max(self.peak, rss_bytes(self.pid))
        return self.peak


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


# -- updates ------------------------------------------------------------------------------------


def rfc3339_us(t: float) -> str:
    """A wall-clock time as RFC 3339 UTC with microseconds (27 characters)."""
    secs = int(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int((t - secs) * 1e6):06d}Z"


class Updates:
    """``Inventory.Updated`` envelopes as the gateway writes them (compact JSON, its key
    order), with ids that say which phase, channel and sequence number they are of, and the
    produce time as ``event_time``."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:8]

    def event_id(self, phase: int, channel: int, seq: int) -> str:
        return f"{self.run}-{phase:04x}-4{channel:03x}-8000-{seq:012x}"

    def record(self, phase: int, channel: int, seq: int) -> tuple[bytes, bytes]:
        """(key, value) of update ``seq`` of a channel, stamped now."""
        event_id = self.event_id(phase, channel, seq)
        store, sku = f"s-{channel}", f"SKU-{seq % 50:03d}"
        key = f"{store}:{sku}"
        value = (
            f'{{"event_id":"{event_id}","event_type":"Inventory.Updated","event_version":1,'
            f'"event_time":"{rfc3339_us(time.time())}","source":"bench-fanout",'
            f'"correlation_id":"{event_id}","key":"{key}","payload":{{"storeId":"{store}",'
            f'"sku":"{sku}","quantity":{seq % 1000},"reason":"restock"}}}}'
        )
        return key.encode(), value.encode()


def id_fields(event_id: str) -> tuple[int, int, int]:
    """(phase, channel, seq) of an :meth:`Updates.event_id`."""
    return int(event_id[9:13], 16), int(event_id[15:18], 16), int(event_id[24:36], 16)


@dataclass
class Produced:
    per_channel: list[int]
    started: float
    """Wall-clock time just before the first produce call."""
    seconds: float
    """From the first produce call to the last record acknowledged by the broker."""

    @property
    def total(self) -> int:
        return sum(self.per_channel)


async def wait_for_leaders(producer: Any, topic: str) -> None:
    """Until the producer's metadata shows a leader for every partition of a new topic."""
    for _ in range(300):
        await producer.client.force_metadata_update()
        cluster = producer.client.cluster
        known = cluster.partitions_for_topic(topic) or set()
        leaders = [cluster.leader_for_partition(TopicPartition(topic, p)) for p in known]
        if len(known) >= PARTITIONS and all(x is not None and x >= 0 for x in leaders):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no leaders for {topic} after 30s")


async def produce(
    producer: Any,
    topic: str,
    updates: Updates,
    phase: int,
    channels: int,
    count: int,
    rate: float | None,
) -> Produced:
    """``count`` updates round-robin over the channels, paced at ``rate``/s (None: at full
    speed); wait until the broker acknowledged them all. Each tick's records go as one batch
    per partition (the partition of the key, as the gateway's producer chooses it): a send()
    per record costs ~150 us in aiokafka, which would make this side the bottleneck."""
    await wait_for_leaders(producer, topic)  # send_batch() does not wait for metadata
    per_channel = [0] * channels
    pending: list[Any] = []
    partitioner = DefaultPartitioner()
    partitions = list(range(PARTITIONS))
    partition_of: dict[bytes, int] = {}
    tick = 0.005
    started_wall, started = time.time(), time.perf_counter()
    sent = 0
    max_ticks = int((count / rate if rate else count / 500) / tick) + 100_000
    for _ in range(max_ticks):
        if sent >= count:
            break
        if rate is None:
            due = min(count, sent + 500)
        else:
            due = min(count, int((time.perf_counter() - started) * rate) + 1)
        batches: dict[int, Any] = {}
        while sent < due:
            channel = sent % channels
            key, value = updates.record(phase, channel, per_channel[channel])
            per_channel[channel] += 1
            sent += 1
            partition = partition_of.get(key)
            if partition is None:
                partition = partition_of[key] = partitioner(key, partitions, partitions)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # full
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for partition, batch in batches.items():
            pending.append(await producer.send_batch(batch, topic, partition=partition))
        if rate is not None:
            await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter(), 0.001))
    await asyncio.gather(*pending)
    return Produced(per_channel, started_wall, time.perf_counter() - started)


# -- worker processes and their pipes -----------------------------------------------------------


async def receive(conn: Connection, wait_s: float) -> Any:
    """The next object on a pipe, without blocking the event loop (TimeoutError after
    ``wait_s``; EOFError if the other end is gone)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while not conn.poll():
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError("no answer on the pipe")
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), _wake, ready)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 1.0)):
                    await ready
        finally:
            loop.remove_reader(conn.fileno())
    # uvloop's add_reader leaves the descriptor non-blocking: a large message (a share of
    # 10k connections) would then fail half-read with EAGAIN; wait for its rest instead
    os.set_blocking(conn.fileno(), True)
    return conn.recv()


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def quiet_child() -> None:
    """In a child process: Ctrl-C is the parent's to handle (it stops the children)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


Handler = Callable[..., Coroutine[Any, Any, Any]]


async def serve_commands(conn: Connection, handlers: dict[str, Handler]) -> None:
    """A child's command loop: ``(name, kwargs)`` in, the handler's answer out, until "quit"
    or the parent is gone."""
    while True:
        try:
            name, kwargs = await receive(conn, 24 * 3600)
        except EOFError:
            return  # the parent is gone
        except (OSError, TimeoutError) as exc:
            print(f"child {os.getpid()}: command pipe failed: {exc!r}", flush=True)
            return
        if name == "quit":
            conn.send("bye")
            return
        try:
            answer = await handlers[name](**kwargs)
        except Exception as exc:  # report it; the parent decides
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        conn.send(answer)


class Child:
    """The parent's handle on a child process that serves commands."""

    def __init__(self, target: Callable[..., None], *args: object) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_end = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=target, args=(child_end, *args), daemon=True
        )
        self.process.start()
        child_end.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def send(self, name: str, **kwargs: object) -> None:
        self.conn.send((name, kwargs))

    async def answer(self, wait_s: float) -> Any:
        try:
            answer = await receive(self.conn, wait_s)
        except (EOFError, OSError) as exc:
            self.process.join(1)
            raise RuntimeError(
                f"child {self.pid} is gone (exit code {self.process.exitcode}): {exc!r}"
            ) from None
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"child {self.pid}: {answer['error']}")
        return answer

    async def call(self, name: str, wait_s: float, **kwargs: object) -> Any:
        self.send(name, **kwargs)
        return await self.answer(wait_s)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("quit", {}))
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


class Workers:
    """The client worker processes, addressed together."""

    def __init__(self, count: int) -> None:
        self.children = [Child(client_worker_main, i) for i in range(count)]

    async def call(
        self, name: str, wait_s: float, per_worker: Sequence[dict[str, Any]]
    ) -> list[Any]:
        for child, kwargs in zip(self.children, per_worker, strict=True):
            child.send(name, **kwargs)
        return list(await asyncio.gather(*(c.answer(wait_s) for c in self.children)))

    async def all(self, name: str, wait_s: float, **kwargs: object) -> list[Any]:
        return await self.call(name, wait_s, [kwargs] * len(self.children))

    def cpu(self) -> float:
        return sum(cpu_seconds(c.pid) for c in self.children)

    def close(self) -> None:
        for child in self.children:
            child.close()


# -- the client side (runs in the worker processes) ---------------------------------------------


@dataclass(slots=True)
class Client:
    index: int
    channel: int
    ws: ClientConnection | None = None
    task: asyncio.Task[None] | None = None
    cursor: str | None = None
    live_at: float = 0.0
    closing: bool = False
    closed_code: int | None = None
    problem: str | None = None
    # resume checks
    seqs: list[int] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)
    foreign: int = 0
    disordered: int = 0
    late: int = 0


@dataclass
class Tally:
    updates: int = 0
    frames: int = 0
    outside: int = 0
    """Updates received while not measuring."""
    first: float = 0.0
    last: float = 0.0
    latency: HdrHistogram = field(default_factory=new_histogram)
    sample: str | None = None
    """The first ``events`` frame with one update (the baseline's template)."""


class ClientWorker:
    """A share of the connections, each a ``websockets`` asyncio client with one reader task;
    frames are scanned with ``str.find``, never parsed, on the hot path."""

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.clients: list[Client] = []
        self.tally = Tally()
        self.measuring = False
        self.verify_phase: int | None = None
        self.live = 0
        self.closes: Counter[str] = Counter()

    # ---- commands

    async def connect(
        self,
        url: str,
        channels: list[tuple[int, int]],
        concurrency: int,
        timeout_s: float,
        compression: str | None,
    ) -> dict[str, Any]:
        """Open one connection per ``(index, channel)``, subscribe from now; wait until each
        is live (or ``timeout_s``)."""
        self.clients = [Client(index, channel) for index, channel in channels]
        self.tally, self.live, self.closes = Tally(), 0, Counter()
        self.verify_phase = None
        return await self._open_all(url, concurrency, timeout_s, compression, resume=False)

    async def resume(
        self,
        url: str,
        phase: int,
        behind: int,
        concurrency: int,
        timeout_s: float,
        compression: str | None,
    ) -> dict[str, Any]:
        """Reconnect every client with its cursor; each must get exactly ``behind`` updates of
        ``phase`` on its channel, then ``live``. The per-client checks and catch-up times."""
        for c in self.clients:
            c.ws = c.task = None
            c.live_at, c.closing, c.closed_code, c.problem = 0.0, False, None, None
            c.seqs, c.offsets, c.foreign, c.disordered, c.late = [], {}, 0, 0, 0
        self.tally, self.live, self.closes = Tally(), 0, Counter()
        self.verify_phase = phase
        started = time.time()
        cpu = own_cpu()
        opened = await self._open_all(url, concurrency, timeout_s, compression, resume=True)
        cpu = own_cpu() - cpu
        catch_up = new_histogram()
        exact = missing = duplicates = 0
        for c in self.clients:
            if c.live_at:
                catch_up.record_value(min(LATENCY_CAP_US, max(1, int((c.live_at - started) * 1e6))))
            got = set(c.seqs)
            duplicates += len(c.seqs) - len(got)
            missing += len(set(range(behind)) - got)
            if len(c.seqs) == behind and got == set(range(behind)) and c.live_at:
                exact += 1
        return {
            **opened,
            "cpu": cpu,
            "updates": self.tally.updates,
            "last_live": max((c.live_at for c in self.clients), default=0.0),
            "catch_up": catch_up.encode(),
            "exact": exact,
            "missing": missing,
            "duplicates": duplicates,
            "foreign": sum(c.foreign for c in self.clients),
            "disordered": sum(c.disordered for c in self.clients),
            "late": sum(c.late for c in self.clients),
            "problems": dict(Counter(c.problem for c in self.clients if c.problem)),
        }

    async def start(self) -> dict[str, Any]:
        self.tally = Tally()
        self.measuring = True
        return {"cpu": own_cpu()}

    async def progress(self) -> dict[str, Any]:
        return {"updates": self.tally.updates, "last": self.tally.last}

    async def stop(self) -> dict[str, Any]:
        self.measuring = False
        t = self.tally
        return {
            "cpu": own_cpu(),
            "updates": t.updates,
            "frames": t.frames,
            "outside": t.outside,
            "first": t.first,
            "last": t.last,
            "latency": t.latency.encode(),
            "sample": t.sample,
            "open": sum(1 for c in self.clients if c.closed_code is None and c.ws is not None),
            "closes": dict(self.closes),
        }

    async def disconnect(self, timeout_s: float) -> dict[str, Any]:
        """Close every connection (the cursors stay), bounded in time."""
        for c in self.clients:
            c.closing = True

        async def close(c: Client) -> None:
            if c.ws is not None:
                with contextlib.suppress(Exception):
                    await c.ws.close()

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(close(c) for c in self.clients))
        tasks = [c.task for c in self.clients if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in self.clients:
            c.ws = c.task = None
        return {"closed": len(tasks)}

    # ---- connections

    async def _open_all(
        self, url: str, concurrency: int, timeout_s: float, compression: str | None, *, resume: bool
    ) -> dict[str, Any]:
        gate = asyncio.Semaphore(concurrency)
        started = time.perf_counter()
        for c in self.clients:
            c.task = asyncio.create_task(self._run(c, url, gate, compression, resume))
        deadline = started + timeout_s
        while self.live < len(self.clients) and time.perf_counter() < deadline:
            if all(c.task is None or c.task.done() for c in self.clients):
                break
            await asyncio.sleep(0.02)
        return {
            "live": self.live,
            "failed": sum(1 for c in self.clients if c.problem or c.closed_code is not None),
            "seconds": time.perf_counter() - started,
            "closes": dict(self.closes),
            "problems": dict(Counter(c.problem for c in self.clients if c.problem)),
        }

    async def _run(
        self, c: Client, url: str, gate: asyncio.Semaphore, compression: str | None, resume: bool
    ) -> None:
        try:
            async with gate:
                ws = await connect(
                    url,
                    subprotocols=[SUBPROTOCOL],
                    compression=compression,
                    ping_interval=None,
                    open_timeout=120,
                    close_timeout=5,
                    max_queue=64,
                )
                c.ws = ws
                cursor = c.cursor if resume else None
                await ws.send(
                    json.dumps(
                        {
                            "type": "subscribe",
                            "sub": "c",
                            "channel": f"inventory:s-{c.channel}",
                            "cursor": cursor,
                        }
                    )
                )
            async for message in ws:
                if isinstance(message, str) and message.startswith(EVENTS_PREFIX):
                    if self.verify_phase is None:
                        self._on_events(message)
                    else:
                        self._on_replayed(c, message)
                else:
                    self._on_control(c, message)
            c.closed_code = ws.close_code if ws.close_code is not None else 1006
        except ConnectionClosed as exc:
            c.closed_code = exc.rcvd.code if exc.rcvd is not None else 1006
        except Exception as exc:
            c.problem = f"{type(exc).__name__}: {exc}"[:120]
        if not c.closing:
            self.closes[str(c.closed_code if c.problem is None else c.problem)] += 1

    def _on_events(self, message: str) -> None:
        """The hot path: count updates, their latency from the produce time."""
        now = time.time()
        t = self.tally
        found = message.find(TIME_MARK)
        count = 0
        if self.measuring:
            record = t.latency.record_value
            while found >= 0:
                found += len(TIME_MARK)
                produced = datetime.fromisoformat(message[found : found + TIME_CHARS])
                record(min(LATENCY_CAP_US, max(1, int((now - produced.timestamp()) * 1e6))))
                count += 1
                found = message.find(TIME_MARK, found)
            t.updates += count
            t.frames += 1
            t.last = now
            if not t.first:
                t.first = now
            if t.sample is None and count == 1:
                t.sample = message
        else:
            while found >= 0:
                count += 1
                found = message.find(TIME_MARK, found + len(TIME_MARK))
            t.outside += count

    def _on_replayed(self, c: Client, message: str) -> None:
        """A frame during a resume: check every update (channel, sequence, offset order)."""
        now = time.time()
        t = self.tally
        t.frames += 1
        t.last = now
        at = message.find(PARTITION_MARK)
        while at >= 0:
            comma = message.find(",", at)
            partition = int(message[at + len(PARTITION_MARK) : comma])
            at = message.find(OFFSET_MARK, comma)
            comma = message.find(",", at)
            offset = int(message[at + len(OFFSET_MARK) : comma])
            at = message.find(ID_MARK, comma) + len(ID_MARK)
            phase, channel, seq = id_fields(message[at : at + ID_CHARS])
            if c.offsets.get(partition, -1) >= offset:
                c.disordered += 1
            c.offsets[partition] = offset
            if phase != self.verify_phase or channel != c.channel:
                c.foreign += 1
            elif c.live_at:
                c.late += 1
            else:
                c.seqs.append(seq)
            t.updates += 1
            at = message.find(PARTITION_MARK, at)
        cursor_at = message.rfind(CURSOR_MARK) + len(CURSOR_MARK)
        c.cursor = message[cursor_at : message.find('"', cursor_at)]

    def _on_control(self, c: Client, message: str | bytes) -> None:
        frame = json.loads(message)
        kind = frame.get("type")
        if kind == "live":
            c.cursor = frame["cursor"]
            if not c.live_at:
                c.live_at = time.time()
                self.live += 1
        elif kind in ("reset", "error", "unsubscribed"):
            c.problem = f"{kind}: {frame.get('reason') or frame.get('code')}"


def client_worker_main(conn: Connection, worker: int) -> None:
    quiet_child()
    w = ClientWorker(worker)
    try:
        asyncio.run(worker_loop(conn, w))
    except BaseException as exc:
        print(f"client worker {worker} ({os.getpid()}) failed: {exc!r}", flush=True)
        raise


async def worker_loop(conn: Connection, w: ClientWorker) -> None:
    handlers: dict[str, Handler] = {
        "connect": w.connect,
        "resume": w.resume,
        "start": w.start,
        "progress": w.progress,
        "stop": w.stop,
        "disconnect": w.disconnect,
    }
    try:
        await serve_commands(conn, handlers)
    finally:
        await w.disconnect(timeout_s=5)


# -- the baseline server (runs in its own process) ----------------------------------------------


class BaselineServer:
    """A bare websockets server speaking just enough of the protocol for the same clients:
    ``subscribe`` gets ``subscribed`` and ``live``; updates go out with ``broadcast()``."""

    def __init__(self) -> None:
        self.subscribers: dict[int, set[ServerConnection]] = {}

    async def handler(self, ws: ServerConnection) -> None:
        mine: list[tuple[int, ServerConnection]] = []
        try:
            async for message in ws:
                frame = json.loads(message)
                if frame.get("type") != "subscribe":
                    continue
                channel = int(str(frame["channel"]).rpartition("-")[2])
                sub = frame["sub"]
                await ws.send(
                    json.dumps(
                        {"type": "subscribed", "sub": sub, "channel": frame["channel"]},
                        separators=(",", ":"),
                    )
                )
                await ws.send(
                    json.dumps(
                        {"type": "live", "sub": sub, "cursor": "baseline"}, separators=(",", ":")
                    )
                )
                self.subscribers.setdefault(channel, set()).add(ws)
                mine.append((channel, ws))
        finally:
            for channel, conn in mine:
                self.subscribers.get(channel, set()).discard(conn)

    async def run(self, template: str, channels: int, count: int, rate: float) -> dict[str, Any]:
        """Broadcast ``count`` frames round-robin over the channels at ``rate``/s, each a copy
        of ``template`` with the time it was due as its ``event_time``."""
        at = template.find(TIME_MARK) + len(TIME_MARK)
        head, tail = template[:at], template[at + TIME_CHARS :]
        started = time.perf_counter()
        started_wall = time.time()
        sent = deliveries = 0
        max_ticks = int(count / rate / 0.001) + 100_000
        for _ in range(max_ticks):
            if sent >= count:
                break
            due = min(count, int((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                subs = self.subscribers.get(sent % channels, ())
                # stamped with the time it was due, as a paced producer stamps it: a
                # server that falls behind its schedule shows it in its latency
                broadcast(subs, head + rfc3339_us(started_wall + sent / rate) + tail)
                deliveries += len(subs)
                sent += 1
            await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter(), 0.001))
        return {
            "sent": sent,
            "deliveries": deliveries,
            "started": started_wall,
            "seconds": time.perf_counter() - started,
        }


def baseline_server_main(conn: Connection, port: int) -> None:
    quiet_child()
    server = BaselineServer()

    async def main() -> None:
        async with serve(
            server.handler,
            "127.0.0.1",
            port,
            subprotocols=[SUBPROTOCOL],
            compression=None,
            ping_interval=20,
            ping_timeout=20,
            backlog=4096,
        ):
            conn.send("ready")
            await serve_commands(conn, {"run": server.run})

    asyncio.run(main())


# -- phases (run in the main process) -----------------------------------------------------------


@dataclass
class Shape:
    connections: int
    channels: int
    workers: int

    def assignment(self) -> list[dict[str, Any]]:
        """Per worker: its (client index, channel) pairs; channels spread evenly over
        clients, clients round-robin over workers."""
        shares: list[list[tuple[int, int]]] = [[] for _ in range(self.workers)]
        for index in range(self.connections):
            shares[index % self.workers].append((index, index % self.channels))
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

    @property
    def figures(self) -> Figures:
        return Figures(self.label, self.delivered, self.seconds, self.latency)


async def connect_all(workers: Workers, url: str, shape: Shape, args: argparse.Namespace) -> float:
    per_worker = [
        {
            "url": url,
            "concurrency": args.connect_concurrency,
            "timeout_s": args.connect_timeout,
            "compression": args.compression,
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
    send: Callable[[], Coroutine[Any, Any, tuple[list[int], float]]],
    server_pid: int,
    others: dict[str, int],
) -> Live:
    """Start counting in the workers, ``send`` the updates (it returns the count per channel
    and the wall-clock start), wait until the clients got them all (or no progress for
    ``--drain-timeout``, or ``--drain-max`` in all), stop counting; CPU of the server, the
    clients and ``others``."""
    pids = {"server": server_pid, **others}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
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
    cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
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
    gateway: GatewayProcess,
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
    """``rss_idle``: the gateway's RSS before its first connection (it keeps the memory of
    earlier phases' connections, so what it grows by from then on is a floor)."""
    gw_pid = process_pid(gateway)
    await wait_quiet(gateway)
    connect_s = await connect_all(workers, ws_url(gateway.url), shape, args)
    rss_connected = rss_bytes(gw_pid)
    watch = RssWatch(gw_pid)
    watch.start()
    count = int(rate * args.seconds)

    async def send() -> tuple[list[int], float]:
        produced = await produce(producer, topic, updates, phase, shape.channels, count, rate)
        return produced.per_channel, produced.started

    live = await measure(
        f"gateway, {shape.connections:,} conns, {rate:,.0f} upd/s in",
        rate,
        workers,
        shape,
        args,
        send,
        gw_pid,
        {"broker": process_pid(broker)},
    )
    live.connect_s = connect_s
    live.rss_idle, live.rss_connected = rss_idle, rss_connected
    live.rss_peak = await watch.stop()
    await workers.all("disconnect", 60, timeout_s=30)
    return live


async def baseline_live(
    workers: Workers, shape: Shape, rate: float, template: str, args: argparse.Namespace
) -> Live:
    from gateway.testing.ports import free_port

    port = free_port()
    server = Child(baseline_server_main, port)
    try:
        await server.answer(30)  # "ready"
        rss_idle = rss_bytes(server.pid)
        connect_s = await connect_all(workers, f"ws://127.0.0.1:{port}/v1/stream", shape, args)
        rss_connected = rss_bytes(server.pid)
        watch = RssWatch(server.pid)
        watch.start()
        count = int(rate * args.seconds)

        async def send() -> tuple[list[int], float]:
            answer = await server.call(
                "run",
                args.seconds * 3 + 60,
                template=template,
                channels=shape.channels,
                count=count,
                rate=rate,
            )
            per_channel = [
                len(range(ch, answer["sent"], shape.channels)) for ch in range(shape.channels)
            ]
            return per_channel, float(answer["started"])

        live = await measure(
            f"baseline, {shape.connections:,} conns, {rate:,.0f} frames/s",
            rate,
            workers,
            shape,
            args,
            send,
            server.pid,
            {},
        )
        live.connect_s = connect_s
        live.rss_idle, live.rss_connected = rss_idle, rss_connected
        live.rss_peak = await watch.stop()
        await workers.all("disconnect", 60, timeout_s=30)
        return live
    finally:
        server.close()


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
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        fetch_max_wait_ms=CONSUMER_FETCH_MAX_WAIT_MS,
    )
    await consumer.start()
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
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)  # resolve the end offsets before producing
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


@dataclass
class Storm:
    clients: int
    behind: int
    replayed: int
    expected: int
    seconds: float
    catch_up: HdrHistogram
    exact: int
    missing: int
    duplicates: int
    foreign: int
    disordered: int
    late: int
    problems: dict[str, int]
    produce_s: float
    consume_s: float
    client_cpu: float
    gateway_cpu: float
    rss_peak: int

    @property
    def figures(self) -> Figures:
        return Figures(
            f"resume storm: {self.clients:,} clients x {self.behind} behind, replayed",
            self.replayed,
            self.seconds,
            self.catch_up,
        )


async def wait_consumed(http: httpx.AsyncClient, target: int, timeout_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if await downstream_consumed(http) >= target:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the gateway did not consume {target:,} records in {timeout_s:g}s")


async def resume_storm(
    gateway: GatewayProcess,
    workers: Workers,
    producer: Any,
    topic: str,
    updates: Updates,
    phase: int,
    shape: Shape,
    behind: int,
    args: argparse.Namespace,
) -> Storm:
    url = ws_url(gateway.url)
    gw_pid = process_pid(gateway)
    await wait_quiet(gateway)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        await connect_all(workers, url, shape, args)  # each client keeps the cursor of "live"
        await workers.all("disconnect", 60, timeout_s=30)
        consumed = await downstream_consumed(http)
        started = time.perf_counter()
        produced = await produce(
            producer, topic, updates, phase, shape.channels, behind * shape.channels, None
        )
        await wait_consumed(http, consumed + produced.total, 300)
        consume_s = time.perf_counter() - started
    watch = RssWatch(gw_pid)
    watch.start()
    cpu0 = cpu_seconds(gw_pid)
    started_wall = time.time()
    answers = await workers.all(
        "resume",
        args.storm_timeout + 60,
        url=url,
        phase=phase,
        behind=behind,
        concurrency=args.connect_concurrency,
        timeout_s=args.storm_timeout,
        compression=args.compression,
    )
    gateway_cpu = cpu_seconds(gw_pid) - cpu0
    rss_peak = await watch.stop()
    await workers.all("disconnect", 60, timeout_s=30)
    catch_up = new_histogram()
    problems: Counter[str] = Counter()
    for a in answers:
        catch_up.decode_and_add(a["catch_up"])
        problems.update(a["problems"])
        problems.update(a["closes"])
    live = sum(a["live"] for a in answers)
    if live < shape.connections:
        problems[f"not live after {args.storm_timeout:g}s"] += shape.connections - live
    last_live = max(a["last_live"] for a in answers)
    return Storm(
        clients=shape.connections,
        behind=behind,
        replayed=sum(a["updates"] for a in answers),
        expected=shape.connections * behind,
        seconds=(last_live - started_wall) if last_live else float("nan"),
        catch_up=catch_up,
        exact=sum(a["exact"] for a in answers),
        missing=sum(a["missing"] for a in answers),
        duplicates=sum(a["duplicates"] for a in answers),
        foreign=sum(a["foreign"] for a in answers),
        disordered=sum(a["disordered"] for a in answers),
        late=sum(a["late"] for a in answers),
        problems=dict(problems),
        produce_s=produced.seconds,
        consume_s=consume_s,
        client_cpu=sum(a["cpu"] for a in answers),
        gateway_cpu=gateway_cpu,
        rss_peak=rss_peak,
    )


# -- main ---------------------------------------------------------------------------------------


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://") + "/v1/stream"


def process_pid(server: GatewayProcess | KafkaBroker) -> int:
    """The server's process id (the harness keeps its child private: read-only use)."""
    child = server._proc if isinstance(server, GatewayProcess) else server._child
    assert child is not None
    return child.pid


def latency_text(h: HdrHistogram) -> str:
    if not h.get_total_count():
        return "(no samples)"
    p = h.get_value_at_percentile
    return (
        f"p50 {p(50) / 1000:7.1f}  p95 {p(95) / 1000:7.1f}  p99 {p(99) / 1000:7.1f}"
        f"  max {h.get_max_value() / 1000:7.1f} ms"
    )


def row(figures: Figures, baseline: float | None, extra: str = "") -> str:
    ratio = f"{figures.rate / baseline:5.2f}x" if baseline else "   -  "
    lat = latency_text(figures.latency) if figures.latency is not None else ""
    return f"  {figures.label:<44} {figures.rate:>9,.0f} upd/s {ratio}  {lat}{extra}"


def cpu_text(live: Live) -> str:
    parts = [f"{name} {seconds / live.seconds:.2f}" for name, seconds in live.cpu.items()]
    per_update = live.cpu["server"] / live.delivered * 1e6 if live.delivered else 0.0
    per_frame = live.cpu["clients"] / live.frames * 1e6 if live.frames else 0.0
    return (
        "CPU (cores) "
        + ", ".join(parts)
        + f"; server {per_update:.0f} us/update delivered, clients {per_frame:.0f} us/frame"
    )


def section(title: str) -> None:
    print(f"\n{title}", flush=True)


def parse_counts(text: str) -> list[int]:
    return [int(part.replace("_", "").replace("k", "000")) for part in text.split(",") if part]


def rates(args: argparse.Namespace, connections: int) -> list[float]:
    """Updates/s to produce, one phase each: ``--rate``, where 0 is what delivers
    :data:`GOAL_DELIVERED`/s to ``connections``."""
    goal = GOAL_DELIVERED * args.channels / connections
    return [float(r) if r else goal for r in map(float, str(args.rate).split(","))]


async def run(
    args: argparse.Namespace,
    broker: KafkaBroker,
    gateway: GatewayProcess,
    topics: TestTopics,
    rss_start: int,
) -> None:
    updates = Updates()
    counts = parse_counts(args.connections)
    topic = topics.inventory
    workers = Workers(args.workers)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, client_id="bench-fanout")
    await producer.start()
    results: list[tuple[Live, Live | None]] = []
    storm: Storm | None = None
    kafka: Figures | None = None
    print(
        f"gateway pid {process_pid(gateway)}, broker pid {process_pid(broker)},"
        f" client workers {[c.pid for c in workers.children]}",
        flush=True,
    )
    try:
        phase = 1
        rate = rates(args, counts[0])[-1]
        section(f"(0) Kafka alone: {rate:,.0f} updates/s for {args.seconds:g}s ...")
        alone = f"{topics.prefix}.kafka-alone"  # a topic the gateway does not consume
        await create_topic(broker.bootstrap, alone, PARTITIONS)
        kafka = await kafka_alone(
            broker.bootstrap, producer, alone, updates, phase, args.channels, rate, args.seconds
        )
        lives: list[Live] = []
        for connections in counts:
            for rate in rates(args, connections):
                phase += 1
                shape = Shape(connections, args.channels, args.workers)
                section(
                    f"(1) gateway: {connections:,} connections on {args.channels} channels,"
                    f" {rate:,.0f} updates/s produced for {args.seconds:g}s"
                    f" (= {rate * connections / args.channels:,.0f}/s to deliver) ..."
                )
                live = await gateway_live(
                    gateway,
                    broker,
                    workers,
                    producer,
                    topic,
                    updates,
                    phase,
                    shape,
                    rate,
                    args,
                    rss_start,
                )
                print(
                    f"    connected in {live.connect_s:.1f}s; delivered {live.delivered:,} of"
                    f" {live.expected:,} in {live.seconds:.1f}s",
                    flush=True,
                )
                lives.append(live)
        if args.storm_clients:
            phase += 1
            shape = Shape(args.storm_clients, args.channels, args.workers)
            section(
                f"(2) resume storm: {args.storm_clients:,} clients, {args.storm_behind} updates"
                f" behind on each of {args.channels} channels ..."
            )
            storm = await resume_storm(
                gateway, workers, producer, topic, updates, phase, shape, args.storm_behind, args
            )
            print(f"    all caught up after {storm.seconds:.2f}s", flush=True)
        template = next((x.sample for x in lives if x.sample), None)
        if template is None and not args.no_baseline:
            print("    no gateway frame to copy: no baseline", flush=True)
        for live in lives:
            base: Live | None = None
            if template is not None and not args.no_baseline:
                section(
                    f"(3) baseline: bare websockets server, {live.connections:,} connections,"
                    f" {live.rate:,.0f} frames/s of {len(template.encode())} bytes ..."
                )
                shape = Shape(live.connections, args.channels, args.workers)
                base = await baseline_live(workers, shape, live.rate, template, args)
            results.append((live, base))
    finally:
        await producer.stop()
        workers.close()
    report(args, results, storm, kafka)


def report(
    args: argparse.Namespace,
    results: list[tuple[Live, Live | None]],
    storm: Storm | None,
    kafka: Figures | None,
) -> None:
    size = next((len(x.sample.encode()) for x, _ in results if x.sample), 0)
    section(
        f"results: updates/s delivered (sum over clients), ratio to the baseline, latency from"
        f" produce to client receipt ({args.channels} channels, {size}-byte events frames,"
        f" JSON subprotocol, compression {args.compression or 'off'}; {args.workers} client"
        f" processes; broker, gateway, producer and clients share {os.cpu_count()} cores):"
    )
    for live, base in results:
        baseline_rate = base.figures.rate if base is not None else None
        print(row(live.figures, baseline_rate))
        if base is not None:
            print(row(base.figures, baseline_rate))
    if storm is not None:
        print(row(storm.figures, None, "  (latency: per-client catch-up time)"))
    if kafka is not None:
        print(row(kafka, None, "  (records/s, 1 reader)"))
    print()
    for live, base in results:
        for x in (live, base):
            if x is None:
                continue
            per_conn = (x.rss_connected - x.rss_idle) / x.connections
            before = "before any connection" if x is live else "idle"
            lost = x.expected - x.delivered
            print(f"  {x.label}:")
            print(
                f"    {x.produced:,} updates sent, {x.expected:,} deliveries expected,"
                f" {x.delivered:,} delivered ({lost:,} missing) in {x.frames:,} frames;"
                f" {x.still_open:,} connections still open; unexpected closes: {x.closes or 0}"
            )
            print(
                f"    server RSS {before} {mib(x.rss_idle)}, with the connections subscribed"
                f" {mib(x.rss_connected)} ({per_conn / 1024:,.1f} KiB/connection), peak"
                f" {mib(x.rss_peak)}; {x.connections:,} connections opened in"
                f" {x.connect_s:.1f}s"
            )
            print(f"    {cpu_text(x)}")
    if storm is not None:
        ok = (
            storm.exact == storm.clients
            and not storm.missing
            and not storm.duplicates
            and not storm.foreign
            and not storm.disordered
        )
        print(f"  resume storm ({'exact: no loss, no duplicate' if ok else 'FAILED CHECKS'}):")
        print(
            f"    {storm.clients:,} clients reconnected at once, all live after"
            f" {storm.seconds:.2f}s; {storm.replayed:,} updates replayed of {storm.expected:,}"
            f" expected; {storm.exact:,} clients got exactly the updates they missed"
        )
        print(
            f"    missing {storm.missing}, duplicates {storm.duplicates}, other channel/phase"
            f" {storm.foreign}, out of offset order {storm.disordered}, after live {storm.late};"
            f" problems {storm.problems or 'none'}"
        )
        print(
            f"    backlog: {storm.behind * args.channels:,} records produced in"
            f" {storm.produce_s:.1f}s, consumed into the gateway's log after"
            f" {storm.consume_s:.1f}s; during the storm: gateway CPU"
            f" {storm.gateway_cpu / storm.seconds:.2f} cores, clients"
            f" {storm.client_cpu / storm.seconds:.2f} cores, gateway RSS peak"
            f" {mib(storm.rss_peak)}"
        )
    print(
        f"\n  goal: >= {GOAL_DELIVERED:,} updates/s delivered with p99 < 100 ms"
        " (the product's statement); the figures above are this machine's."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--connections", default="1000", help="comma-separated counts, e.g. 1000,10000"
    )
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="produce phase length")
    parser.add_argument(
        "--rate",
        default="0",
        help="updates/s produced, comma-separated for several phases (a latency curve);"
        f" 0: enough for {GOAL_DELIVERED:,}/s delivered",
    )
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument("--storm-clients", type=int, default=1000, help="0: no resume storm")
    parser.add_argument("--storm-behind", type=int, default=300, help="updates per channel")
    parser.add_argument("--storm-timeout", type=float, default=120.0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--gateway-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a gateway setting (e.g. downstream_min_interval_ms=0); repeatable",
    )
    parser.add_argument("--connect-concurrency", type=int, default=100, help="per worker")
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="after producing, wait until no update arrived for this long",
    )
    parser.add_argument(
        "--compression",
        choices=["off", "deflate"],
        default="off",
        help="offer permessage-deflate (the gateway accepts it when offered)",
    )
    parser.add_argument(
        "--drain-max", type=float, default=180.0, help="and at most this long in all"
    )
    parser.add_argument("--queue-max", type=int, default=0, help="stream_queue_max (0: default)")
    parser.add_argument(
        "--workdir", default="", help="keep the broker's and gateway's data and logs here"
    )
    args = parser.parse_args()
    args.compression = None if args.compression == "off" else args.compression
    # aiokafka logs (and retries) stale metadata while a new topic's leader is elected
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    counts = parse_counts(args.connections)
    if not 1 <= args.channels <= 0xFFF:
        parser.error("--channels must be 1..4095")
    if any("=" not in item for item in args.gateway_setting):
        parser.error("--gateway-setting takes NAME=VALUE")
    needed = max([*counts, args.storm_clients]) + 1024
    limit = raise_fd_limit(needed)
    if limit < needed:
        parser.error(f"open files limit {limit} < {needed} needed (ulimit -n)")

    with contextlib.ExitStack() as stack:
        if args.workdir:
            tmp = Path(args.workdir).resolve()
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fanout-")))
        print(f"open files limit {limit}; starting a Kafka broker in {tmp} ...", flush=True)
        broker = stack.enter_context(KafkaBroker(tmp / "kafka"))
        topics = TestTopics()
        asyncio.run(create_topic(broker.bootstrap, topics.inventory, PARTITIONS))
        settings = topics.settings(broker.bootstrap) | {
            "instance_id": "bench-fanout",
            "topic_partitions": str(PARTITIONS),
            "log_level": "warning",
        }
        if args.queue_max:
            settings["stream_queue_max"] = str(args.queue_max)
        settings |= dict(item.split("=", 1) for item in args.gateway_setting)
        gateway = stack.enter_context(GatewayProcess(tmp / "gw", settings=settings))
        log_from = 0
        try:
            asyncio.run(wait_quiet(gateway))  # start-up done (topics created, consumer up)
            log_from = gateway.log_path.stat().st_size
            rss_start = rss_bytes(process_pid(gateway))
            asyncio.run(run(args, broker, gateway, topics, rss_start))
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the gateway and the broker", flush=True)
        finally:
            print_log_problems(gateway, log_from)


def print_log_problems(gateway: GatewayProcess, offset: int, lines: int = 12) -> None:
    """The gateway's warnings and errors since ``offset`` in its log, if any (the log goes
    away with a temporary directory)."""
    try:
        with gateway.log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return
    problems = [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line]
    if problems:
        print(f"\ngateway log: {len(problems)} warnings/errors after start-up, the last {lines}:")
        for line in problems[-lines:]:
            print(f"  {line[:300]}")


if __name__ == "__main__":
    main()
