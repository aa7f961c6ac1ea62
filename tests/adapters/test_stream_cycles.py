"""A closed ``/v1/stream`` connection is freed by reference counting alone.

Whatever of a connection sits in a reference cycle waits for Python's cycle collector, whose
collections scan everything they track: with 10k connections a full one pauses the event loop
for hundreds of milliseconds, and garbage left by reconnecting devices keeps growing until it
runs. So once a connection has ended, however it ended, none of the gateway's objects for it
(the websocket protocol, the Starlette ``WebSocket``, the stream connection, its
subscriptions) may be left, in a cycle or otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections import Counter
from collections.abc import Iterator

import pytest
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.adapters.ws_protocol import GatewayWebSocketProtocol
from gateway.adapters.ws_stream import _Connection
from gateway.flows.subscription import Subscription
from tests.adapters.test_stream_vectors import Gateway, serve

OURS = (GatewayWebSocketProtocol, WebSocket, _Connection, Subscription)
CONNECTIONS = 4
RECORD = {
    "topic": "inventory.events",
    "partition": 0,
    "key": "s1:SKU-1",
    "value": {"payload": {"storeId": "s1"}},
    "timestamp_ms": 1,
    "channels": ["inventory:s1"],
}
SETUP = {
    "cursor_key": "cycles-cursor-key-0123456789abcdef",
    "epoch": "e1",
    "log": [{**RECORD, "offset": 0}],
    "ws_max_frame_bytes": 4096,
}


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def ours_alive() -> Counter[str]:
    """The gateway's connection objects still alive, by type (the collector is off)."""
    return Counter(type(o).__name__ for o in gc.get_objects() if isinstance(o, OURS))


def ours_in_cycles() -> Counter[str]:
    """The gateway's connection objects that only the cycle collector would free, by type."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return Counter(type(o).__name__ for o in gc.garbage if isinstance(o, OURS))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def receive(ws: ClientConnection, wanted: str) -> dict[str, object]:
    async with asyncio.timeout(5):
        while (frame := json.loads(await ws.recv()))["type"] != wanted:
            pass
    assert isinstance(frame, dict)
    return frame


async def subscribed_clients(gateway: Gateway) -> list[ClientConnection]:
    """Clients each with a live subscription and one that replayed from an older cursor."""
    clients, cursors = [], []
    for _ in range(CONNECTIONS):
        ws = await connect(gateway.url)
        await ws.send(json.dumps({"type": "subscribe", "sub": "now", "channel": "inventory:s1"}))
        cursors.append((await receive(ws, "live"))["cursor"])
        clients.append(ws)
    await gateway.inject([{**RECORD, "offset": 1}])
    for ws, cursor in zip(clients, cursors, strict=True):
        await receive(ws, "events")
        await ws.send(
            json.dumps(
                {"type": "subscribe", "sub": "old", "channel": "inventory:s1", "cursor": cursor}
            )
        )
        assert (await receive(ws, "events"))["sub"] == "old"
        await receive(ws, "live")
    return clients


async def end(ws: ClientConnection, how: str) -> None:
    if how == "client closes":
        await ws.close()
    elif how == "client drops":
        ws.transport.abort()
    else:  # the server closes: the frame is over its limit (1009)
        await ws.send("x" * 8192)
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()


@pytest.mark.parametrize("how", ["client closes", "client drops", "server closes"])
async def test_an_ended_connection_is_freed_without_the_cycle_collector(how: str) -> None:
    async with serve(SETUP) as gateway:
        clients = await subscribed_clients(gateway)
        with collector_off():
            assert ours_alive()["_Connection"] == CONNECTIONS  # the check sees them
            for ws in clients:
                await end(ws, how)
            for _ in range(100):  # until the server has ended them (bounded: 2 s)
                if not ours_alive() and not gateway.fanout.subscriptions:
                    break
                await asyncio.sleep(0.02)
            assert ours_in_cycles() == Counter()
            assert ours_alive() == Counter()
