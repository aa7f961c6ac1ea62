"""Builders of valid and invalid events shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.core.ids import EventId
from gateway.core.ingest import StorableEvent


def order_placed(key: str = "order-1", **overrides: Any) -> dict[str, Any]:
    """A valid ``Order.Placed`` v1 envelope as a device would send it."""
    order_id = key
    envelope: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": "Order.Placed",
        "event_version": 1,
        "event_time": "2026-11-21T10:00:00Z",
        "source": "device-1",
        "correlation_id": "corr-1",
        "key": key,
        "payload": {
            "orderId": order_id,
            "userId": "user-1",
            "storeId": "store-1",
            "items": [
                {"sku": "SKU-1", "quantity": 2, "unitPrice": {"amount": "9.99", "currency": "EUR"}}
            ],
            "total": {"amount": "19.98", "currency": "EUR"},
        },
    }
    envelope.update(overrides)
    return envelope


def inventory_updated(store: str = "s-1", sku: str = "SKU-1", quantity: int = 1) -> dict[str, Any]:
    """A valid ``Inventory.Updated`` v1 envelope (channel ``inventory:<store>``)."""
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": "Inventory.Updated",
        "event_version": 1,
        "event_time": "2026-11-21T10:00:00Z",
        "source": "scanner-1",
        "correlation_id": "corr-1",
        "key": f"{store}:{sku}",
        "payload": {"storeId": store, "sku": sku, "quantity": quantity, "reason": "restock"},
    }


def storable(event_id: str | None = None, key: str = "k") -> StorableEvent:
    return StorableEvent(
        event_id=EventId(event_id or str(uuid.uuid4())),
        event_type="Order.Placed",
        event_version=1,
        key=key,
        source="device-1",
        correlation_id="corr-1",
        value=b'{"x":1}' + b" " * 300,
    )


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
"""A valid W3C trace context."""


async def cancel_after(start: Callable[[], Awaitable[object]], steps: int) -> None:
    """Start a call, let it run ``steps`` loop iterations, cancel it and wait until it ends
    (a request whose client went away, cut at a chosen point)."""
    task = asyncio.ensure_future(start())
    for _ in range(steps):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def ticks_during(work: Awaitable[object]) -> int:
    """How many times a 1 ms ticker ran on the loop while ``work`` ran."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(100_000):  # bounded; cancelled well before
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    before = ticks
    await work
    during = ticks - before
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return during
