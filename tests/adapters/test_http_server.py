"""The gateway's HTTP protocol under a real uvicorn and real websocket clients over loopback:
once a connection is upgraded, the HTTP protocol object it started on is freed by reference
counting, not left to the garbage collector (a connection storm otherwise fills the young
generations with one reference cycle per connection)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from websockets.asyncio.client import connect

from gateway.adapters.http_server import handshake_deadline_protocol
from tests.adapters.uvicorn_serving import serving

CONNECTIONS = 20


async def _echo(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text(await ws.receive_text())
    await ws.receive()  # until the client closes


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[weakref.ref[HttpToolsProtocol]]]]:
    made: list[weakref.ref[HttpToolsProtocol]] = []
    base = handshake_deadline_protocol(10.0)

    class Recording(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:
            made.append(weakref.ref(self))
            super().connection_made(transport)

    app = Starlette(routes=[WebSocketRoute("/ws", _echo)])
    async with serving(app, http=Recording) as port:
        yield port, made


async def test_an_upgraded_connection_leaves_no_http_protocol_for_the_collector(
    server: tuple[int, list[weakref.ref[HttpToolsProtocol]]],
) -> None:
    port, made = server
    gc.collect()
    gc.disable()  # only reference counting may free them
    try:
        async with contextlib.AsyncExitStack() as stack:
            for i in range(CONNECTIONS):
                ws = await stack.enter_async_context(connect(f"ws://127.0.0.1:{port}/ws"))
                await ws.send(f"hello {i}")
                async with asyncio.timeout(10):
                    assert await ws.recv() == f"hello {i}"  # upgraded and served
            await asyncio.sleep(0.05)
            assert len(made) == CONNECTIONS
            alive = [ref for ref in made if ref() is not None]
            assert alive == [], f"{len(alive)} of {CONNECTIONS} HTTP protocol objects still alive"
    finally:
        gc.enable()
