"""The client side, in the worker processes: each a share of the connections, on the lean
client of :mod:`benchmarks.fanout.rawws` (the default) or the ``websockets`` asyncio client,
counting updates and their latency (frames are scanned, not parsed), or checking a resume's
replay; :class:`Workers` is the main process's handle on them all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from hdrh.histogram import HdrHistogram
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from benchmarks.common import new_histogram
from benchmarks.fanout.processes import (
    Child,
    Handler,
    cpu_seconds,
    own_cpu,
    quiet_child,
    serve_commands,
)
from benchmarks.fanout.rawws import Message, RawWebSocket, open_raw
from benchmarks.fanout.updates import (
    ID_CHARS,
    ID_MARK,
    LATENCY_CAP_US,
    TIME_CHARS,
    TIME_MARK,
    id_fields,
)

SUBPROTOCOL = Subprotocol("sync-gateway.v1.json")
EVENTS_PREFIX = '{"type":"events"'
CURSOR_MARK = '"cursor":"'
PARTITION_MARK = '"partition":'
OFFSET_MARK = '"offset":'


@dataclass(slots=True)
class Client:
    index: int
    channel: int
    sub: str = "c"
    gateway: int = 0
    """Which of the worker's ``urls`` it connects to."""
    ws: ClientConnection | RawWebSocket | None = None
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
        urls: list[str],
        channels: list[tuple[int, int, int]],
        concurrency: int,
        timeout_s: float,
        compression: str | None,
        client: str,
        distinct_subs: bool = False,
    ) -> dict[str, Any]:
        """Open one connection per ``(index, channel, gateway)`` to ``urls[gateway]``, subscribe
        from now (as subscription ``c``, or ``c<index>`` with ``distinct_subs``); wait until each
        is live (or ``timeout_s``)."""
        self.clients = [
            Client(index, channel, sub=f"c{index}" if distinct_subs else "c", gateway=gateway)
            for index, channel, gateway in channels
        ]
        self.tally, self.live, self.closes = Tally(), 0, Counter()
        self.verify_phase = None
        return await self._open_all(urls, concurrency, timeout_s, compression, client, resume=False)

    async def resume(
        self,
        urls: list[str],
        phase: int,
        behind: int,
        concurrency: int,
        timeout_s: float,
        compression: str | None,
        client: str,
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
        opened = await self._open_all(
            urls, concurrency, timeout_s, compression, client, resume=True
        )
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
            with contextlib.suppress(Exception):
                if isinstance(c.ws, RawWebSocket):
                    await c.ws.close(timeout_s)
                elif c.ws is not None:
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
        self,
        urls: list[str],
        concurrency: int,
        timeout_s: float,
        compression: str | None,
        client: str,
        *,
        resume: bool,
    ) -> dict[str, Any]:
        gate = asyncio.Semaphore(concurrency)
        started = time.perf_counter()
        for c in self.clients:
            if client == "raw" and compression is None:
                run = self._run_raw(c, urls[c.gateway], gate, resume)
            else:
                run = self._run(c, urls[c.gateway], gate, compression, resume)
            c.task = asyncio.create_task(run)
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
                await ws.send(subscribe_frame(c, resume))
            async for message in ws:
                self._dispatch(c, message)
            c.closed_code = ws.close_code if ws.close_code is not None else 1006
        except ConnectionClosed as exc:
            c.closed_code = exc.rcvd.code if exc.rcvd is not None else 1006
        except Exception as exc:
            c.problem = f"{type(exc).__name__}: {exc}"[:120]
        self._ended(c)

    async def _run_raw(self, c: Client, url: str, gate: asyncio.Semaphore, resume: bool) -> None:
        try:
            async with gate:
                ws = await open_raw(url, SUBPROTOCOL, partial(self._dispatch, c), timeout_s=120)
                c.ws = ws
                ws.send_text(subscribe_frame(c, resume))
            c.closed_code = await ws.closed
        except Exception as exc:
            c.problem = f"{type(exc).__name__}: {exc}"[:120]
        self._ended(c)

    def _ended(self, c: Client) -> None:
        if not c.closing:
            self.closes[str(c.closed_code if c.problem is None else c.problem)] += 1

    def _dispatch(self, c: Client, message: Message) -> None:
        if isinstance(message, str) and message.startswith(EVENTS_PREFIX):
            if self.verify_phase is None:
                self._on_events(message)
            else:
                self._on_replayed(c, message)
        else:
            self._on_control(c, message)

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


def subscribe_frame(c: Client, resume: bool) -> str:
    return json.dumps(
        {
            "type": "subscribe",
            "sub": c.sub,
            "channel": f"inventory:s-{c.channel}",
            "cursor": c.cursor if resume else None,
        }
    )


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
