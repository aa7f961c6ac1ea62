"""A minimal websocket client of the stream protocol for tests (JSON or msgpack)."""

from __future__ import annotations

import asyncio
import json
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
