"""A minimal websocket client of the stream protocol for tests (JSON or msgpack)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect

SUBPROTOCOLS = {"json": "sync-gateway.v1.json", "msgpack": "sync-gateway.v1.msgpack"}


class StreamClient:
    def __init__(self, ws: ClientConnection, encoding: str) -> None:
        self.ws = ws
        self.encoding = encoding
        self.cursors: dict[str, str] = {}
        """Last cursor seen per subscription (from events and live frames)."""

    async def send(self, frame: dict[str, Any]) -> None:
        if self.encoding == "json":
            await self.ws.send(json.dumps(frame))
        else:
            await self.ws.send(msgpack.packb(frame))

    async def recv(self, wait: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(wait):
            data = await self.ws.recv()
        frame: dict[str, Any]
        if isinstance(data, str):
            assert self.encoding == "json", "text frame on msgpack"
            frame = json.loads(data)
        else:
            assert self.encoding == "msgpack", "binary frame on json"
            frame = msgpack.unpackb(data)
        if frame.get("type") == "events":
            self.cursors[frame["sub"]] = frame["events"][-1]["cursor"]
        elif frame.get("type") == "live":
            self.cursors[frame["sub"]] = frame["cursor"]
        return frame

    async def subscribe(self, sub: str, channel: str, cursor: str | None = None) -> None:
        await self.send({"type": "subscribe", "sub": sub, "channel": channel, "cursor": cursor})

    async def expect(self, kind: str, wait: float = 10.0) -> dict[str, Any]:
        frame = await self.recv(wait)
        assert frame["type"] == kind, frame
        return frame

    async def updates(
        self, sub: str, count: int, wait: float = 30.0
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Receive until ``count`` updates of ``sub`` arrived; (updates, other frames)."""
        got: list[dict[str, Any]] = []
        others: list[dict[str, Any]] = []
        deadline = time.monotonic() + wait
        while len(got) < count:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if frame["type"] == "events" and frame["sub"] == sub:
                got += frame["events"]
            else:
                others.append(frame)
        return got, others


@asynccontextmanager
async def stream(url: str, encoding: str = "json", **kwargs: Any) -> AsyncIterator[StreamClient]:
    ws_url = url.replace("http://", "ws://") + "/v1/stream"
    async with connect(ws_url, subprotocols=[SUBPROTOCOLS[encoding]], **kwargs) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == SUBPROTOCOLS[encoding]
        yield StreamClient(ws, encoding)


class StalledClient:
    """A websocket client on a raw socket (websockets' sans-I/O protocol) that reads only
    when told to: the kernel buffers fill and the server sees a client that does not drain."""

    def __init__(self, url: str, rcvbuf: int = 4096) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        uri = parse_uri(url.replace("http://", "ws://") + "/v1/stream")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect((uri.host, uri.port))
        self.proto = ClientProtocol(uri, subprotocols=[SUBPROTOCOLS["json"]])  # type: ignore[list-item]
        self.proto.send_request(self.proto.connect())
        self._flush()
        while self.proto.handshake_exc is None and not self.proto.events_received():
            self.proto.receive_data(self.sock.recv(65536))
        assert self.proto.handshake_exc is None, self.proto.handshake_exc

    def _flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                self.sock.sendall(data)

    def send(self, frame: dict[str, Any]) -> None:
        self.proto.send_text(json.dumps(frame).encode())
        self._flush()

    def read_all(self, limit_s: float = 60.0) -> tuple[list[dict[str, Any]], int | None]:
        """Read until the server closes: the frames received and the close code."""
        from websockets.frames import Frame, Opcode

        frames: list[dict[str, Any]] = []
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            data = self.sock.recv(65536)
            if not data:
                self.proto.receive_eof()
            else:
                self.proto.receive_data(data)
            for event in self.proto.events_received():
                assert isinstance(event, Frame)
                if event.opcode is Opcode.TEXT:
                    frames.append(json.loads(bytes(event.data)))
                elif event.opcode is Opcode.CLOSE:
                    close = self.proto.close_rcvd
                    return frames, close.code if close is not None else None
            if not data:
                return frames, None
        raise TimeoutError("the server did not close the connection")

    def close(self) -> None:
        self.sock.close()
