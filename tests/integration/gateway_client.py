"""Small helpers to drive a gateway process over HTTP in tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from gateway.testing.gateway_process import GatewayProcess


async def post_events(http: httpx.AsyncClient, events: list[dict[str, Any]]) -> httpx.Response:
    return await http.post("/v1/events", json={"events": events})


async def wait_drained(http: httpx.AsyncClient, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll /readyz until the backlog is empty; the last status."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status = (await http.get("/readyz")).json()
        except httpx.TransportError:
            status = {}
        if status.get("backlog", {}).get("events") == 0:
            return status
        await asyncio.sleep(0.2)
    raise TimeoutError(f"backlog not drained in {timeout_s}s: {status}")


async def wait_streaming(http: httpx.AsyncClient, partitions: int, timeout_s: float = 60.0) -> None:
    """Poll /readyz until the downstream consumer is up on ``partitions`` partitions (every
    streamed topic exists: subscribing earlier may see the epoch change once)."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status = (await http.get("/readyz")).json().get("downstream", {})
        except httpx.TransportError:
            status = {}
        if status.get("state") == "up" and status.get("partitions") == partitions:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"downstream not streaming in {timeout_s}s: {status}")


@contextlib.contextmanager
def streaming_gateway(data_dir: Path, settings: dict[str, str]) -> Iterator[GatewayProcess]:
    """A gateway process whose downstream consumer is up on both streamed topics (3
    partitions each) before it is handed out."""
    with GatewayProcess(data_dir, settings=settings) as gw:
        asyncio.run(_streaming(gw))
        yield gw


async def _streaming(gw: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
        await wait_streaming(http, 6)
