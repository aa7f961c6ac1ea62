"""The baseline: a bare ``websockets`` asyncio server in its own process (``serve`` +
``broadcast()``, on uvloop as the gateway) sending frames of the gateway's size at the same
rate to the same clients, and the phase that measures it."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from multiprocessing.connection import Connection
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve

from benchmarks.fanout.clients import SUBPROTOCOL, Workers
from benchmarks.fanout.phases import Live, Send, Shape, connect_all, measure
from benchmarks.fanout.processes import Child, RssWatch, quiet_child, rss_bytes, serve_commands
from benchmarks.fanout.updates import TIME_CHARS, TIME_MARK, rfc3339_us


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


def serve_subscribers(server: BaselineServer, port: int) -> Server:
    """The websockets server of a baseline, on loopback."""
    return serve(
        server.handler,
        "127.0.0.1",
        port,
        subprotocols=[SUBPROTOCOL],
        compression=None,
        ping_interval=20,
        ping_timeout=20,
        backlog=4096,
    )


def baseline_server_main(conn: Connection, port: int) -> None:
    quiet_child()
    server = BaselineServer()

    async def main() -> None:
        async with serve_subscribers(server, port):
            conn.send("ready")
            await serve_commands(conn, {"run": server.run})

    asyncio.run(main())


async def server_live(
    server: Child,
    port: int,
    label: str,
    rate: float,
    workers: Workers,
    shape: Shape,
    args: argparse.Namespace,
    send: Send,
    others: dict[str, int],
) -> Live:
    """A baseline server's live phase, once it answered "ready": connect the clients,
    :func:`measure` what ``send`` sends, disconnect them."""
    rss_idle = rss_bytes(server.pid)
    connect_s = await connect_all(workers, [f"ws://127.0.0.1:{port}/v1/stream"], shape, args)
    rss_connected = rss_bytes(server.pid)
    watch = RssWatch(server.pid)
    watch.start()
    live = await measure(label, rate, workers, shape, args, send, [server.pid], others)
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

        label = f"baseline, {shape.connections:,} conns, {rate:,.0f} frames/s"
        return await server_live(server, port, label, rate, workers, shape, args, send, {})
    finally:
        server.close()
