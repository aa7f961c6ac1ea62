"""The fan-out benchmark's lean websocket client against a real ``websockets`` server over
loopback: what it receives must be exactly what was sent (small, 16-bit and 64-bit lengths,
fragmented messages), it answers pings, reports close codes, and refuses a bad handshake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from benchmarks.fanout.rawws import HandshakeError, Message, open_raw

PROTOCOL = "sync-gateway.v1.json"
MESSAGES: list[str | bytes] = ["x", "é" * 200, "y" * 70_000, b"\x00\x01binary"]


async def script(ws: ServerConnection) -> None:
    first = await ws.recv(decode=True)
    assert isinstance(first, str)
    for message in MESSAGES:
        await ws.send(message)
    await ws.send(iter(["frag", "mented ", "message"]))  # three frames: text, cont, cont
    pong = await ws.ping(b"are you there")
    async with asyncio.timeout(5):
        await pong
    await ws.send(f"pong ok, first was {first}")
    if first == "close please":
        await ws.close(4001, "bye")
    else:
        await ws.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with serve(script, "127.0.0.1", 0, subprotocols=[Subprotocol(PROTOCOL)]) as srv:
        yield srv


def url_of(server: Server) -> str:
    port = next(iter(server.sockets)).getsockname()[1]
    return f"ws://127.0.0.1:{port}/v1/stream"


async def test_receives_every_message_whole_and_answers_pings(server: Server) -> None:
    got: list[Message] = []
    all_in = asyncio.Event()

    def on_message(message: Message) -> None:
        got.append(message)
        if len(got) == len(MESSAGES) + 2:
            all_in.set()

    ws = await open_raw(url_of(server), PROTOCOL, on_message, timeout_s=5)
    ws.send_text("hello")
    async with asyncio.timeout(10):
        await all_in.wait()
    assert got == [*MESSAGES, "fragmented message", "pong ok, first was hello"]
    assert await ws.close(timeout_s=5) == 1000


async def test_reports_the_servers_close_code(server: Server) -> None:
    got: list[Message] = []
    ws = await open_raw(url_of(server), PROTOCOL, got.append, timeout_s=5)
    ws.send_text("close please")
    async with asyncio.timeout(10):
        assert await ws.closed == 4001
    assert got[-1] == "pong ok, first was close please"


async def test_refuses_a_refused_handshake(server: Server) -> None:
    with pytest.raises(HandshakeError, match="status 400"):
        await open_raw(url_of(server), "other.v1", lambda _: None, timeout_s=5)
