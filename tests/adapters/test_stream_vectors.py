"""Replays every recorded frame sequence of ``tests/vectors/`` against the real ``WS /v1/stream``.

Each vector (format: ``tests/vectors/README.md``) runs against a fresh in-process gateway:
:class:`~gateway.adapters.ws_stream.StreamEndpoint` over a :class:`Fanout` of an in-memory
downstream log, a :class:`CursorCodec` with the vector's key, and an :class:`IngestFlow` over
the in-memory event store with the real schema registry. It is served by uvicorn (the
``websockets-sansio`` implementation that ``sync-gateway serve`` uses) on a loopback socket in
the test's own event loop, and driven by a real websockets client, so subprotocol negotiation,
text versus binary frames and close codes are the real ones. ``inject`` steps do what the
downstream consumer does: commit records to the log, then hand the new ones to the fan-out.

Starlette's ``TestClient`` is not used: it cannot show close codes sent by the websocket layer
(1009), its receive has no timeout, and importing it warns with this ``httpx`` (an error under
``filterwarnings = error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gateway.adapters.memory_store import MemoryEventStore
from gateway.adapters.ws_protocol import GatewayWebSocketProtocol
from gateway.adapters.ws_stream import StreamEndpoint, StreamSettings
from gateway.core.cursor import CursorCodec
from gateway.core.ids import Epoch, KafkaOffset
from gateway.core.ingest import IngestLimits, StorableEvent
from gateway.core.schemas import SchemaRegistry, default_schema_root
from gateway.core.stream_protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK
from gateway.errors import StoreUnavailable
from gateway.flows.downstream_ports import LogRecord
from gateway.flows.fanout import Fanout
from gateway.flows.ingest import IngestFlow
from gateway.metrics import GatewayMetrics
from gateway.testing.edge import INSECURE_EDGE
from tests.adapters.test_downstream_log import MemoryDownstreamLog

VECTORS = Path(__file__).parents[1] / "vectors"
FILES = sorted(VECTORS.glob("*.json"))
ANY = "<any>"
"""Placeholder of an expected value: the field must be present, its value is not compared."""
WAIT_S = 5.0
"""Longest wait for one expected frame or close."""
SUBPROTOCOLS = {"json": SUBPROTOCOL_JSON, "msgpack": SUBPROTOCOL_MSGPACK}
SCHEMAS = SchemaRegistry.load(default_schema_root())


class UnavailableStore(MemoryEventStore):
    """An event store that cannot commit (``"store": "unavailable"`` in a vector's setup)."""

    async def append(self, events: Sequence[StorableEvent]) -> list[bool]:
        raise StoreUnavailable("the store is unavailable (test)")


def log_record(raw: Mapping[str, Any]) -> LogRecord:
    """A vector's record as the downstream log holds it (value: compact JSON, or a tombstone)."""
    key, value = raw["key"], raw["value"]
    return LogRecord(
        topic=raw["topic"],
        partition=raw["partition"],
        offset=KafkaOffset(raw["offset"]),
        key=None if key is None else key.encode(),
        value=b"" if value is None else json.dumps(value, separators=(",", ":")).encode(),
        headers=(),
        timestamp_ms=raw["timestamp_ms"],
        channels=tuple(raw["channels"]),
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test runner keeps its signal handlers


@dataclass
class Gateway:
    """The pieces of one in-process gateway a vector talks to."""

    url: str
    log: MemoryDownstreamLog
    fanout: Fanout

    async def inject(self, records: Sequence[Mapping[str, Any]]) -> None:
        """What the downstream consumer does: commit to the log, then announce the new ones."""
        fresh = await self.log.append_batch([log_record(r) for r in records], {})
        if fresh:
            self.fanout.on_records(fresh)


@contextlib.asynccontextmanager
async def serve(setup: Mapping[str, Any]) -> AsyncIterator[Gateway]:
    """A gateway on a loopback port, in this event loop, configured by a vector's ``setup``."""
    log = MemoryDownstreamLog()
    await log.append_batch([log_record(r) for r in setup.get("log", [])], {})
    fanout = Fanout(log, Epoch(setup["epoch"]), max_queue=setup.get("max_queue", 1000))
    store = UnavailableStore() if setup.get("store") == "unavailable" else MemoryEventStore()
    metrics = GatewayMetrics()
    ingest = IngestFlow(
        store=store,
        checker=SCHEMAS,
        ingest_limits=IngestLimits(
            max_batch_events=setup.get("max_batch_events", 1000),
            max_event_bytes=setup.get("max_event_bytes", 256 * 1024),
        ),
        metrics=metrics,
    )
    endpoint = StreamEndpoint(
        fanout,
        CursorCodec(setup["cursor_key"].encode()),
        ingest,
        metrics,
        StreamSettings(**setup.get("stream", {})),
    )
    app = Starlette(
        routes=[WebSocketRoute("/v1/stream", endpoint.handle)], middleware=INSECURE_EDGE
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(
        uvicorn.Config(
            app,
            ws=GatewayWebSocketProtocol,  # the gateway's: frames take its SEND_NOW path
            ws_max_size=setup.get("ws_max_frame_bytes", 1024 * 1024),
            lifespan="off",
            log_config=None,
            log_level="warning",
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(WAIT_S):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.005)
        yield Gateway(f"ws://127.0.0.1:{port}/v1/stream", log, fanout)
    finally:
        server.should_exit = True
        await task
        await fanout.close()
        sock.close()


# -- frames ---------------------------------------------------------------------------------


def encode(frame: object, encoding: str) -> str | bytes:
    if encoding == "json":
        return json.dumps(frame, separators=(",", ":"))
    packed: bytes = msgpack.packb(frame, use_bin_type=True)
    return packed


def decode(data: str | bytes, encoding: str) -> Any:
    if encoding == "json":
        assert isinstance(data, str), f"binary frame on the JSON subprotocol: {data!r:.200}"
        return json.loads(data)
    assert isinstance(data, bytes), f"text frame on the msgpack subprotocol: {data!r:.200}"
    return msgpack.unpackb(data, raw=False)


def matches(expected: object, actual: object) -> bool:
    """Exact equality, except that ``"<any>"`` matches any value (of a present field)."""
    if expected == ANY:
        return True
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(matches(v, actual[k]) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return type(expected) is type(actual) and expected == actual


class Replay:
    """One vector's client side."""

    def __init__(self, ws: ClientConnection, encoding: str, name: str) -> None:
        self.ws = ws
        self.encoding = encoding
        self.name = name

    async def receive(self) -> Any:
        async with asyncio.timeout(WAIT_S):
            data = await self.ws.recv()
        return decode(data, self.encoding)

    async def expect_group(self, expected: list[Any], at: int) -> None:
        """Receive ``len(expected)`` frames; frames of different ``sub`` values may interleave,
        those of one ``sub`` (and those without one) arrive in the listed order."""
        pending = list(expected)
        for _ in expected:
            try:
                frame = await self.receive()
            except (TimeoutError, ConnectionClosed) as exc:
                pytest.fail(f"{self.name} step {at}: expected {pending[0]}, got {exc!r}")
            stream = frame.get("sub") if isinstance(frame, dict) else None
            candidates = [e for e in pending if e.get("sub") == stream]
            if not candidates or not matches(candidates[0], frame):
                wanted = candidates[0] if candidates else pending
                pytest.fail(f"{self.name} step {at}: expected {wanted}\n got {frame}")
            pending.remove(candidates[0])

    async def expect_close(self, code: int, reason: str | None, at: int) -> None:
        try:
            async with asyncio.timeout(WAIT_S):
                frame = await self.ws.recv()
        except ConnectionClosed as closed:
            received = closed.rcvd
            assert received is not None, f"{self.name} step {at}: closed without a close frame"
            assert received.code == code, f"{self.name} step {at}: close {received}"
            if reason is not None:
                assert received.reason == reason, f"{self.name} step {at}: close {received}"
            return
        except TimeoutError:
            pytest.fail(f"{self.name} step {at}: expected close {code}, the connection stayed open")
        pytest.fail(f"{self.name} step {at}: expected close {code}, got a frame {frame!r:.300}")

    async def send(self, step: Mapping[str, Any]) -> None:
        if "send" in step:
            await self.ws.send(encode(step["send"], self.encoding))
        elif "send_raw" in step:
            await self.ws.send(step["send_raw"])
        elif "send_raw_hex" in step:
            await self.ws.send(bytes.fromhex(step["send_raw_hex"]))
        else:
            pytest.fail(f"{self.name}: unknown step {step}")


def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    assert vector["name"] == path.stem, "a vector's name is its file name"
    assert vector["encoding"] in SUBPROTOCOLS
    return vector


def test_vectors_exist() -> None:
    assert len(FILES) >= 20
    for path in FILES:
        load(path)


async def run_steps(replay: Replay, gateway: Gateway, steps: list[dict[str, Any]]) -> bool:
    """Play the steps; whether they ended with the connection closed."""
    at = 0
    while at < len(steps):
        step = steps[at]
        if "expect" in step:
            group: list[Any] = []
            while at + len(group) < len(steps) and "expect" in steps[at + len(group)]:
                group.append(steps[at + len(group)]["expect"])
            await replay.expect_group(group, at)
            at += len(group)
            continue
        if "expect_close" in step:
            assert at == len(steps) - 1, f"{replay.name}: expect_close must be the last step"
            await replay.expect_close(step["expect_close"], step.get("reason"), at)
            return True
        if "inject" in step:
            await gateway.inject(step["inject"])
        elif "sleep" in step:
            await asyncio.sleep(step["sleep"])
        else:
            await replay.send(step)
        at += 1
    return False


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
async def test_vector(path: Path) -> None:
    vector = load(path)
    setup, encoding, name = vector["setup"], vector["encoding"], vector["name"]
    offered = setup.get("subprotocols", [SUBPROTOCOLS[encoding]])
    async with (
        serve(setup) as gateway,
        connect(
            gateway.url,
            subprotocols=[Subprotocol(s) for s in offered] or None,
            max_size=None,
            open_timeout=WAIT_S,
            close_timeout=WAIT_S,
        ) as ws,
    ):
        assert ws.subprotocol == setup.get("expect_subprotocol", SUBPROTOCOLS[encoding])
        replay = Replay(ws, encoding, name)
        if not await run_steps(replay, gateway, vector["steps"]):
            # Nothing unexpected is pending: the next frame is the answer to a ping.
            await ws.send(encode({"type": "ping"}, encoding))
            assert await replay.receive() == {"type": "pong"}, f"{name}: unexpected frame"
