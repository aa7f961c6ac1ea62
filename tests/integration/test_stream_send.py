"""The send side of ``WS /v1/stream`` without a socket: a fake websocket under the real
:class:`~gateway.adapters.ws_stream._Connection`.

- subscribers of one channel share encoded updates (one piece per fan-out Update object):
  each must still get exactly its updates, each with the token of its own cursor;
- the slow-consumer close (one stall timer per connection, not a timeout per send): a socket
  that does not drain for ``send_stall_timeout_s`` closes the connection with 4001, one that
  drains slowly but steadily does not.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway.adapters.stream_items import UpdatePieces
from gateway.adapters.ws_stream import StreamEndpoint, StreamSettings, _Connection
from gateway.core.authz import Principal
from gateway.core.cursor import Cursor, CursorCodec
from gateway.core.ids import Epoch, KafkaOffset
from gateway.core.stream_protocol import CloseCode, Encoding, FrameWriter
from gateway.flows.fanout import Fanout
from gateway.flows.subscription import Update
from gateway.metrics import GatewayMetrics
from tests.adapters.test_downstream_log import INV, MemoryDownstreamLog, rec

EPOCH = Epoch("e1")
S1, S2 = "inventory:s1", "inventory:s2"
CODEC = CursorCodec(b"k" * 32)


class FakeSocket:
    """Records the frames sent; ``drained`` closed: sends wait (a full socket buffer)."""

    def __init__(self, send_delay_s: float = 0.0) -> None:
        self.frames: list[Any] = []
        self.drained = asyncio.Event()
        self.drained.set()
        self.send_delay_s = send_delay_s
        self.closed: tuple[int, str] | None = None
        self.scope: dict[str, Any] = {}  # no SEND_NOW extension: every frame goes through send()

    async def send(self, message: dict[str, Any]) -> None:
        await self.drained.wait()
        if self.send_delay_s:
            await asyncio.sleep(self.send_delay_s)
        self.frames.append(json.loads(message["text"]))

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()  # the client sends nothing
        raise AssertionError

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def endpoint(fanout: Fanout, **settings: Any) -> StreamEndpoint:
    return StreamEndpoint(
        fanout,
        CODEC,
        None,  # type: ignore[arg-type]  # no publish in these tests
        GatewayMetrics(),
        StreamSettings(**settings),
    )


def connect(ep: StreamEndpoint, socket: FakeSocket, channels: dict[str, str]) -> _Connection:
    conn = _Connection(ep, socket, ep.writers[Encoding.JSON], Principal.insecure_anonymous())  # type: ignore[arg-type]
    for sub_id, channel in channels.items():
        sub = ep.fanout.subscribe(channel, None)
        conn._subs[sub_id] = sub
        conn._pumps[sub_id] = asyncio.create_task(conn._pump(sub_id, sub))
    return conn


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


async def test_shared_pieces_carry_each_subscribers_own_cursor() -> None:
    positions = {(INV, 0): KafkaOffset(0), (INV, 1): KafkaOffset(0)}
    fanout = Fanout(MemoryDownstreamLog(), EPOCH, now=lambda: dict(positions))
    ep = endpoint(fanout)
    early = [FakeSocket() for _ in range(3)]
    conns = [connect(ep, s, {"a": S1, "b": S2}) for s in early]
    fanout.on_records([rec(INV, 0, 0, S1), rec(INV, 0, 1, S2), rec(INV, 1, 0, S1, S2)])
    await settle()
    positions.update({(INV, 0): KafkaOffset(2), (INV, 1): KafkaOffset(1)})
    late = FakeSocket()  # at another cursor: its updates are not the early ones'
    conns.append(connect(ep, late, {"a": S1}))
    await settle()
    fanout.on_records([rec(INV, 0, 2, S1), rec(INV, 1, 1, S1), rec(INV, 0, 3, S2)])
    await settle()
    start = {0: 0, 1: 0}
    expected_subs = [*((s, {"a": start, "b": start}) for s in early), (late, {"a": {0: 2, 1: 1}})]
    log = [(0, 0, (S1,)), (0, 1, (S2,)), (1, 0, (S1, S2)), (0, 2, (S1,)), (1, 1, (S1,))]
    log.append((0, 3, (S2,)))
    for socket, sub_starts in expected_subs:
        for sub_id, begin in sub_starts.items():
            channel = S1 if sub_id == "a" else S2
            frames = [f for f in socket.frames if f.get("sub") == sub_id]
            events = [e for f in frames if f["type"] == "events" for e in f["events"]]
            position = dict(begin)
            expected = [(p, o) for p, o, chans in log if channel in chans and o >= begin[p]]
            assert [(e["partition"], e["offset"]) for e in events] == expected
            live = next(f for f in frames if f["type"] == "live")
            assert CODEC.decode(live["cursor"]) == Cursor(EPOCH, {INV: position})
            for event in events:
                position[event["partition"]] = event["offset"] + 1
                assert CODEC.decode(event["cursor"]) == Cursor(EPOCH, {INV: position})
    for conn in conns:
        for pump in conn._pumps.values():
            pump.cancel()
    await fanout.close()


async def test_pieces_are_built_once_per_update_object_and_never_confused() -> None:
    writer = FrameWriter(Encoding.JSON)
    pieces = UpdatePieces(writer, CODEC, max_entries=2)
    updates = [Update(rec(INV, 0, o, S1), Cursor(EPOCH, {INV: {0: o + 1}})) for o in range(5)]
    first = pieces.of(updates[0])
    assert pieces.of(updates[0]) is first
    for _ in range(2):  # the cache fills and is cleared along the way
        for update in updates:
            piece = pieces.of(update)
            decoded = json.loads(piece)
            assert decoded["offset"] == update.record.offset
            assert CODEC.decode(decoded["cursor"]) == update.cursor_after


async def run_connection(socket: FakeSocket, stall_s: float, produce_for_s: float) -> _Connection:
    fanout = Fanout(MemoryDownstreamLog(), EPOCH, now=lambda: {(INV, 0): KafkaOffset(0)})
    ep = endpoint(fanout, send_stall_timeout_s=stall_s, close_timeout_s=1.0)
    conn = connect(ep, socket, {"a": S1})
    running = asyncio.create_task(conn.run())
    offset = 0
    deadline = asyncio.get_running_loop().time() + produce_for_s
    while asyncio.get_running_loop().time() < deadline and not running.done():
        fanout.on_records([rec(INV, 0, offset, S1)])
        offset += 1
        await asyncio.sleep(0.02)
    async with asyncio.timeout(5):
        if not running.done():
            conn._finish(CloseCode.NORMAL, "test over")
        await running
    await fanout.close()
    return conn


async def test_a_socket_that_does_not_drain_is_closed_as_a_slow_consumer() -> None:
    socket = FakeSocket()
    socket.drained.clear()
    loop = asyncio.get_running_loop()
    began = loop.time()
    conn = await run_connection(socket, stall_s=0.3, produce_for_s=3.0)
    assert socket.closed is not None
    assert socket.closed[0] == CloseCode.SLOW_CONSUMER
    assert 0.3 <= loop.time() - began < 2.5
    assert conn._e.metrics.stream_slow_closes._value.get() == 1


async def test_a_socket_that_drains_slowly_but_steadily_is_not_closed() -> None:
    socket = FakeSocket(send_delay_s=0.1)  # each send waits, never as long as the stall
    conn = await run_connection(socket, stall_s=0.3, produce_for_s=1.2)
    assert socket.closed == (CloseCode.NORMAL, "test over")
    assert conn._e.metrics.stream_slow_closes._value.get() == 0
    assert len(socket.frames) >= 5
