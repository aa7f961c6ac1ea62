"""The SEND_NOW extension of :mod:`gateway.adapters.ws_protocol` on a real uvicorn server and a
real websocket client over loopback: frames written at once and frames sent through ASGI arrive
whole and in order; it refuses (instead of buffering without bound) once the transport is
paused by a client that does not read, and after the close."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from gateway.adapters.ws_frames import wire_frame
from gateway.adapters.ws_protocol import send_now_of
from tests.adapters.uvicorn_serving import serving

PAD = "x" * 1000
MAX_FRAMES = 40_000
"""Bound of the writing loop: 40 MB, far more than the socket buffers on loopback hold."""


def frame(i: int) -> str:
    return f"{i:08d}{PAD}"


class Script:
    """The server side: write with SEND_NOW until refused, then through ASGI."""

    def __init__(self) -> None:
        self.refused_at: int | None = None
        self.offered = False
        self.after_close: bool | None = None
        self.paused = asyncio.Event()
        self.done = asyncio.Event()

    async def endpoint(self, ws: WebSocket) -> None:
        await ws.accept()
        send_now = send_now_of(ws.scope)
        self.offered = send_now is not None
        assert send_now is not None
        await ws.receive()  # the client is ready (and then stops reading)
        i = 0
        while i < MAX_FRAMES and send_now(wire_frame(frame(i))):
            i += 1
        self.refused_at = i
        self.paused.set()
        for j in range(i, i + 5):  # the refused frame and four more: these wait for the drain
            await ws.send_text(frame(j))
        sent_now = 0
        for j in range(i + 5, i + 10):
            if send_now(wire_frame(frame(j))):
                sent_now += 1
            else:
                await ws.send_text(frame(j))
        await ws.close()
        self.after_close = send_now(wire_frame(frame(i + 10)))
        self.done.set()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Script, int]]:
    script = Script()
    async with serving(Starlette(routes=[WebSocketRoute("/ws", script.endpoint)])) as port:
        yield script, port


async def test_send_now_in_order_refused_when_paused_and_after_close(
    served: tuple[Script, int],
) -> None:
    script, port = served
    received: list[Any] = []
    # a fixed receive buffer: loopback autotuning would otherwise take tens of megabytes
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    async with connect(
        f"ws://127.0.0.1:{port}/ws", sock=sock, max_queue=1, max_size=None, compression=None
    ) as ws:  # no compression: the padding would shrink to nothing
        await ws.send("ready")
        async with asyncio.timeout(30):
            await script.paused.wait()  # the client read nothing meanwhile
        assert script.offered
        assert script.refused_at is not None
        assert 0 < script.refused_at < MAX_FRAMES
        async with asyncio.timeout(60):
            async for message in ws:
                received.append(message)
    async with asyncio.timeout(10):
        await script.done.wait()
    total = script.refused_at + 10
    assert len(received) == total
    assert [int(m[:8]) for m in received] == list(range(total))  # whole, in order
    assert all(m[8:] == PAD for m in received)
    assert script.after_close is False


SIZES = (0, 1, 125, 126, 65_535, 65_536, 200_000)
"""Payload lengths on both sides of each header form (7-bit, 16-bit, 64-bit)."""


async def _sizes_endpoint(ws: WebSocket) -> None:
    await ws.accept()
    send_now = send_now_of(ws.scope)
    assert send_now is not None
    await ws.receive()
    for size in SIZES:
        text, binary = "t" * size, bytes([size % 251]) * size
        for frame_ in (text, binary):
            if not send_now(wire_frame(frame_)):  # the buffer is over its mark: the ASGI send waits
                if isinstance(frame_, str):
                    await ws.send_text(frame_)
                else:
                    await ws.send_bytes(frame_)
    await ws.close()


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_send_now_frames_of_every_header_length_parse_on_a_real_client(
    compression: str | None,
) -> None:
    """The frames SEND_NOW builds itself (no extension) and those it leaves to the protocol
    object (permessage-deflate) are what a real client expects, text and binary."""
    async with serving(Starlette(routes=[WebSocketRoute("/ws", _sizes_endpoint)])) as port:
        received: list[Any] = []
        async with connect(
            f"ws://127.0.0.1:{port}/ws",
            max_size=None,
            compression=compression,
        ) as ws:
            assert ws.response is not None
            negotiated = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert ("permessage-deflate" in negotiated) == (compression is not None)
            await ws.send("ready")
            async with asyncio.timeout(30):
                async for message in ws:
                    received.append(message)
        expected: list[Any] = []
        for size in SIZES:
            expected += ["t" * size, bytes([size % 251]) * size]
        assert received == expected


async def test_send_now_refuses_once_the_client_closed() -> None:
    """After frames went out directly (no extension), the client's close ends them: uvicorn
    echoes it and closes the transport in the same callback, and SEND_NOW refuses from then
    on, before the connection is reported lost."""
    outcome: dict[str, object] = {}
    done = asyncio.Event()

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        send_now = send_now_of(ws.scope)
        assert send_now is not None
        outcome["before"] = [send_now(wire_frame(frame(i))) for i in range(3)]
        message = await ws.receive()  # the client's close
        outcome["received"] = message["type"]
        outcome["after"] = send_now(wire_frame(frame(3)))
        done.set()

    async with serving(Starlette(routes=[WebSocketRoute("/ws", endpoint)])) as port:
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
            assert [await ws.recv() for _ in range(3)] == [frame(i) for i in range(3)]
        async with asyncio.timeout(10):
            await done.wait()
    assert outcome == {"before": [True] * 3, "received": "websocket.disconnect", "after": False}
