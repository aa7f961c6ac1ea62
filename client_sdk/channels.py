"""The channels a :class:`~client_sdk.subscriber.Subscriber` follows: the handler types an app
gives, and how a channel's updates are applied through the
:class:`~client_sdk.cursor_store.CursorStore` (sync handlers exactly once, in the store's
transaction; async handlers at least once).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeAlias, cast

from client_sdk.cursor_store import CursorStore
from client_sdk.events import Update
from gateway.core.backoff import Backoff

__all__ = ["AsyncHandler", "Channel", "Handler", "ResetHandler", "SyncHandler"]

SyncHandler: TypeAlias = Callable[[Update, sqlite3.Connection], None]
"""Applies one update through the store's connection, inside its transaction (exactly once)."""
AsyncHandler: TypeAlias = Callable[[Update], Awaitable[None]]
"""Applies one update outside the store's transaction (at least once)."""
Handler: TypeAlias = SyncHandler | AsyncHandler
ResetHandler: TypeAlias = Callable[[str], Awaitable[str | None]]
"""Rebuilds a channel after a reset; returns the cursor to resume from (``None``: from now)."""


@dataclass(slots=True, eq=False)
class Channel:
    """A channel the subscriber follows: its handlers, its subscription on the current
    connection (``sub``, ``live``) and the backoff of its re-subscribes."""

    name: str
    handler: Handler
    is_async: bool
    on_reset: ResetHandler | None
    sub: str | None = None
    live: bool = False
    retry: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=30.0))

    async def apply(self, store: CursorStore, updates: list[Update]) -> None:
        """Apply the updates of one ``events`` frame, in order, and store the last one's
        cursor: in one store transaction with a sync handler, after the updates with an
        async one."""
        cursor = updates[-1].cursor
        if self.is_async:
            handler = cast(AsyncHandler, self.handler)
            for update in updates:
                await handler(update)
            await asyncio.to_thread(store.apply, self.name, cursor, None)
            return
        sync_handler = cast(SyncHandler, self.handler)

        def effect(db: sqlite3.Connection) -> None:
            for update in updates:
                sync_handler(update, db)

        await asyncio.to_thread(store.apply, self.name, cursor, effect)
