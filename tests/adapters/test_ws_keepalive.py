"""The keepalive of :mod:`gateway.adapters.ws_keepalive`: its decision (bytes drained since the
ping extend the pong deadline, none fail the connection), the kernel count it reads, and the
protocol's deadline with that count faked."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from gateway.adapters import ws_keepalive
from gateway.adapters.ws_keepalive import (
    PING_FRAME_BYTES,
    DrainTolerantWebSocketProtocol,
    bytes_acked,
    drained_beyond_ping,
)

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO is read on Linux")


@pytest.mark.parametrize(
    ("at_mark", "now", "drained"),
    [
        (1000, 1000 + PING_FRAME_BYTES + 4096, 4096),  # the peer took bytes: extend
        (1000, 1000, 0),  # it took none: fail
        (1000, 1000 + PING_FRAME_BYTES, 0),  # only the ping (an idle peer's kernel): fail
        (None, 1000, 0),  # unknown counts never extend
        (1000, None, 0),
        (None, None, 0),
    ],
)
def test_the_deadline_is_extended_only_for_bytes_drained(
    at_mark: int | None, now: int | None, drained: int
) -> None:
    assert drained_beyond_ping(at_mark, now) == drained


@linux_only
async def test_bytes_acked_counts_what_a_tcp_peer_took_and_is_unknown_elsewhere() -> None:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[asyncio.Transport] = asyncio.Queue()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            accepted.put_nowait(transport)

    server = await loop.create_server(Accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        transport = await accepted.get()
        before = bytes_acked(transport)
        assert before is not None
        transport.write(b"x" * 10_000)
        assert await reader.readexactly(10_000) == b"x" * 10_000
        for _ in range(100):  # the ack follows the data on loopback at once, but not in-line
            if bytes_acked(transport) == before + 10_000:
                break
            await asyncio.sleep(0.01)
        assert bytes_acked(transport) == before + 10_000
        transport.close()
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()

    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        unix, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        assert bytes_acked(unix) is None
        unix.close()


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


@pytest.fixture
def acked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int | None]]:
    """The counts the protocol reads, in order (the kernel's, faked)."""
    counts: list[int | None] = []
    monkeypatch.setattr(ws_keepalive, "bytes_acked", lambda transport: counts.pop(0))
    yield counts
    assert counts == [], "not every count was read"


async def empty_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not run")


def keepalive_protocol() -> tuple[DrainTolerantWebSocketProtocol, FakeTransport]:
    config = uvicorn.Config(
        empty_app, ws=DrainTolerantWebSocketProtocol, ws_ping_interval=0.5, ws_ping_timeout=0.5
    )
    config.load()
    protocol = DrainTolerantWebSocketProtocol(config, ServerState(), {})
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.conn.state = State.OPEN  # as after the handshake
    return protocol, transport


def deadline_passes(protocol: DrainTolerantWebSocketProtocol) -> None:
    assert protocol.pong_timer is not None
    protocol.pong_timer.cancel()
    protocol.keepalive_timeout()


async def test_a_draining_peer_keeps_its_ping_and_a_stopped_one_fails(
    acked: list[int | None],
) -> None:
    protocol, transport = keepalive_protocol()
    acked += [1000, 50_000, 90_000]  # at the ping, then two deadlines with bytes drained
    protocol.send_keepalive_ping()
    payload = protocol.pending_ping_payload
    deadline_passes(protocol)
    deadline_passes(protocol)
    assert protocol.pending_ping_payload == payload
    assert protocol.pong_timer is not None
    assert not protocol.close_sent
    assert payload is not None
    protocol.handle_pong(Frame(Opcode.PONG, payload))  # the late pong is the awaited one
    assert protocol.pong_timer is None
    assert protocol.ping_timer is not None

    acked += [90_000, 90_000 + PING_FRAME_BYTES]  # the next ping, then only the ping drained
    protocol.send_keepalive_ping()
    deadline_passes(protocol)
    assert protocol.close_sent
    assert transport.closing
    assert struct.pack("!H", 1011) + b"keepalive ping timeout" in transport.written
    protocol.connection_lost(None)
