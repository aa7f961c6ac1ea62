"""Small helpers to drive a gateway process over HTTP in tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx


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
