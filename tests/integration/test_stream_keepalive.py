"""The websocket keepalive against a real gateway process (docs/protocol.md §13.5): a client
that reads slowly but steadily is never dropped, one that stops reading is closed.

The gateway pings every 0.5 s and waits 0.5 s for the pong; its stream's own stall timeout is
60 s. Padded updates are published faster than the slow client reads, so megabytes queue in
the socket buffers ahead of each ping and its pong comes seconds late: uvicorn's stock
keepalive closes such a client with 1011 (:mod:`gateway.adapters.ws_keepalive`). The client
that stops reading takes no more bytes once its small receive buffer is full, so the keepalive
closes it with 1011 at most a ping interval and two timeouts later, long before the 60 s stall
timeout could close it with 4001.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import pytest
from websockets.frames import Frame, Opcode

from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.integration.gateway_client import streaming_gateway
from tests.integration.kafka_topics import TestTopics
from tests.integration.stream_client import StalledClient
from tests.integration.test_stream import publish_many, quantities

pytestmark = pytest.mark.integration

PING_INTERVAL_S: Final = 0.5
PING_TIMEOUT_S: Final = 0.5
STALL_TIMEOUT_S: Final = 60.0
TOTAL: Final = 5000
"""Padded updates (~0.9 KB each as frames, 4.6 MB in all): more than the socket buffers of a
connection hold (~3 MB)."""
READ_CHUNK: Final = 4096
READ_PAUSE_S: Final = 0.01
"""The slow client reads at most 4 KB every 10 ms (~400 KB/s), slower than they arrive."""
STOP_AFTER: Final = 200
"""The stopping client reads this many updates, then stops."""
STOPPED_S: Final = 5.0
"""How long it does not read: far beyond a ping and its timeout, far below the stall timeout."""
MAX_READS: Final = 100_000
LIMIT_S: Final = 120.0


@pytest.fixture(scope="module")
def gateway(
    kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    keepalive = {
        "ws_ping_interval_s": str(PING_INTERVAL_S),
        "ws_ping_timeout_s": str(PING_TIMEOUT_S),
        "stream_send_stall_timeout_s": str(STALL_TIMEOUT_S),
    }
    settings = TestTopics().settings(kafka_broker.bootstrap) | keepalive
    with streaming_gateway(tmp_path_factory.mktemp("gw"), settings) as gw:
        yield gw


@dataclass
class Reading:
    updates: list[dict[str, Any]] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)
    pings: list[float] = field(default_factory=list)
    """When each ping arrived (monotonic)."""
    received_bytes: int = 0
    close_code: int | None = None
    closed: bool = False
    error: str | None = None


class PacedClient(StalledClient):
    """A client on a small receive buffer that reads a few KB at a time, with pauses, and
    answers each ping as soon as it reads it."""

    def __init__(self, url: str) -> None:
        super().__init__(url, rcvbuf=READ_CHUNK)
        self.reading = Reading()

    def subscribe(self, channel: str) -> None:
        self.send({"type": "subscribe", "sub": "s", "channel": channel, "cursor": None})
        self.read_until(lambda r: any(f["type"] == "live" for f in r.others), pause_s=0.0)

    def read_until(self, done: Callable[[Reading], bool], pause_s: float) -> Reading:
        r = self.reading
        deadline = time.monotonic() + LIMIT_S
        for _ in range(MAX_READS):
            if done(r) or r.closed or time.monotonic() > deadline:
                break
            try:
                data = self.sock.recv(READ_CHUNK)
            except ConnectionError as exc:  # reset: closed without a close frame (1006)
                r.closed, r.error = True, repr(exc)
                break
            r.received_bytes += len(data)
            if not data:
                self.proto.receive_eof()
                r.closed = True
            else:
                self.proto.receive_data(data)
            for event in self.proto.events_received():
                assert isinstance(event, Frame)
                if event.opcode is Opcode.TEXT:
                    frame = json.loads(bytes(event.data))
                    if frame["type"] == "events":
                        r.updates += frame["events"]
                    else:
                        r.others.append(frame)
                elif event.opcode is Opcode.PING:
                    r.pings.append(time.monotonic())
                elif event.opcode is Opcode.CLOSE:
                    r.closed = True
                    r.close_code = self.proto.close_rcvd.code if self.proto.close_rcvd else None
            if not r.closed:
                self._flush()  # the pongs
            time.sleep(pause_s)
        return r


async def test_a_slow_reader_is_kept_and_a_stopped_one_is_closed(
    gateway: GatewayProcess,
) -> None:
    channel = "inventory:s-keepalive"
    slow = PacedClient(gateway.url)
    stopping = PacedClient(gateway.url)
    try:
        slow.subscribe(channel)
        stopping.subscribe(channel)

        def read_slowly() -> tuple[Reading, float]:
            started = time.monotonic()
            reading = slow.read_until(lambda r: len(r.updates) >= TOTAL, READ_PAUSE_S)
            return reading, time.monotonic() - started

        def read_then_stop() -> tuple[list[dict[str, Any]], int | None]:
            reading = stopping.read_until(lambda r: len(r.updates) >= STOP_AFTER, 0.0)
            assert not reading.closed, reading.close_code
            time.sleep(STOPPED_S)  # not reading: the socket buffers fill
            frames, code = stopping.read_all(limit_s=LIMIT_S)
            return reading.updates + [
                u for f in frames if f["type"] == "events" for u in f["events"]
            ], code

        slow_task = asyncio.create_task(asyncio.to_thread(read_slowly))
        stopping_task = asyncio.create_task(asyncio.to_thread(read_then_stop))
        await publish_many(gateway, "s-keepalive", TOTAL)
        (reading, duration_s), (stopped_got, stopped_code) = await asyncio.gather(
            slow_task, stopping_task
        )
    finally:
        slow.close()
        stopping.close()

    gaps = [b - a for a, b in zip(reading.pings, reading.pings[1:], strict=False)]
    late_s = PING_INTERVAL_S + PING_TIMEOUT_S
    summary = (
        f"slow reader: {len(reading.updates)}/{TOTAL} updates, {reading.received_bytes:,} "
        f"bytes in {duration_s:.1f} s ({reading.received_bytes / duration_s / 1000:.0f} KB/s), "
        f"{len(reading.pings)} pings answered, up to {max(gaps, default=0):.1f} s apart (ping "
        f"interval {PING_INTERVAL_S} s, timeout {PING_TIMEOUT_S} s), closed {reading.closed} "
        f"({reading.close_code or reading.error}); stopped reader: closed with {stopped_code} "
        f"after {len(stopped_got)} updates"
    )
    print(summary)
    assert not reading.closed, summary
    assert quantities(reading.updates) == list(range(TOTAL)), summary
    # Pings came seconds apart: each waited behind the queued updates, and its pong was later
    # than the timeout allows (uvicorn's stock keepalive closes such a client).
    assert max(gaps) > 2 * late_s, summary
    assert stopped_code == 1011, summary
    assert STOP_AFTER <= len(stopped_got) < TOTAL, summary
    assert quantities(stopped_got) == list(range(len(stopped_got))), summary
