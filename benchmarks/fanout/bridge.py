"""The second baseline: the least a Kafka-to-websocket bridge does, in its own process. An
aiokafka ``read_committed`` consumer with the gateway's fetch settings reads the updates the
producer writes (to a topic of its own) and hands each record's frame to ``broadcast()`` for
the subscribers of its channel: no log, no cursor, no per-subscription state, no replay.

Where the bare ``broadcast()`` baseline (:mod:`benchmarks.fanout.baseline`) makes its frames
itself, this one pays for Kafka as the gateway does: the fetch cycle, the records waiting in
the broker while a batch is being written out, the consumer's decoding. The frames are the
gateway's (the template), stamped with each record's ``event_time``, so the clients measure
the same thing: produce to receipt."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from multiprocessing.connection import Connection
from typing import Any

from aiokafka import AIOKafkaConsumer
from websockets.asyncio.server import broadcast

from benchmarks.fanout.baseline import BaselineServer, serve_subscribers, server_live
from benchmarks.fanout.clients import Workers
from benchmarks.fanout.phases import Live, Shape, consumer_at_end
from benchmarks.fanout.processes import Child, quiet_child, serve_commands
from benchmarks.fanout.updates import TIME_CHARS, TIME_MARK, Updates, produce

BATCH_MAX = 500
"""Records per fetch, as the gateway's ``DownstreamSettings.batch_max``."""


def channel_of(key: bytes) -> int:
    """The channel number of an :class:`~benchmarks.fanout.updates.Updates` key (``s-7:SKU-001``
    is channel 7)."""
    return int(key[2 : key.index(b":")])


class Bridge:
    """Consumes the topic from its end and broadcasts each record's frame (module docstring)."""

    def __init__(self, server: BaselineServer, template: str) -> None:
        at = template.find(TIME_MARK) + len(TIME_MARK)
        self._head, self._tail = template[:at], template[at + TIME_CHARS :]
        self._server = server

    def frame(self, value: bytes) -> str:
        """The template stamped with the record's ``event_time``."""
        text = value.decode()
        at = text.find(TIME_MARK) + len(TIME_MARK)
        return self._head + text[at : at + TIME_CHARS] + self._tail

    async def run(self, consumer: AIOKafkaConsumer) -> None:
        subscribers = self._server.subscribers
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=BATCH_MAX)
            for messages in batches.values():
                for message in messages:
                    subs = subscribers.get(channel_of(message.key), ())
                    broadcast(subs, self.frame(message.value))


def bridge_server_main(
    conn: Connection, port: int, bootstrap: str, topic: str, template: str
) -> None:
    quiet_child()
    server = BaselineServer()
    bridge = Bridge(server, template)

    async def main() -> None:
        consumer = await consumer_at_end(bootstrap, topic)
        try:
            async with serve_subscribers(server, port):
                task = asyncio.create_task(bridge.run(consumer))
                conn.send("ready")
                try:
                    await serve_commands(conn, {})  # until "quit"
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        finally:
            await consumer.stop()

    asyncio.run(main())


async def bridge_live(
    workers: Workers,
    shape: Shape,
    rate: float,
    template: str,
    args: argparse.Namespace,
    kafka: tuple[str, int, Any, str],
    updates: Updates,
    phase: int,
) -> Live:
    """The bridge's live phase. ``kafka``: the broker's bootstrap and pid, the producer and the
    bridge's own topic (one the gateway does not consume)."""
    from gateway.testing.ports import free_port

    bootstrap, broker_pid, producer, topic = kafka
    port = free_port()
    server = Child(bridge_server_main, port, bootstrap, topic, template)
    try:
        await server.answer(60)  # "ready"
        if args.warmup > 0:  # as the gateway's phases: the broker's first seconds on a topic
            # cost it ~3x the CPU of later ones; produced with no client connected
            await produce(
                producer, topic, updates, phase, shape.channels, int(rate * args.warmup), rate
            )
        count = int(rate * args.seconds)

        async def send() -> tuple[list[int], float]:
            produced = await produce(producer, topic, updates, phase, shape.channels, count, rate)
            return produced.per_channel, produced.started

        label = f"Kafka + broadcast(), {shape.connections:,} conns"
        others = {"broker": broker_pid}
        return await server_live(server, port, label, rate, workers, shape, args, send, others)
    finally:
        server.close()
