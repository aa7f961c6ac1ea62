"""An in-memory :class:`~gateway.flows.ports.EventStore` for unit tests of the flows.

Not durable, so never evidence that a durability guarantee holds; the contract tests run the
same assertions against it and the SQLite store so that the two cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.core.ids import EventId, LocalSeq
from gateway.core.ingest import StorableEvent
from gateway.errors import StoreUnavailable
from gateway.flows.ports import StoredEvent


class MemoryEventStore:
    def __init__(self) -> None:
        self._by_id: dict[EventId, StoredEvent] = {}
        self._log: list[StoredEvent] = []
        self.unavailable: str | None = None
        """When set, every append fails with this reason (simulates a full disk)."""

    async def append(self, events: Sequence[StorableEvent]) -> list[bool]:
        if self.unavailable is not None:
            raise StoreUnavailable(self.unavailable)
        now_ms = int(time.time() * 1000)
        outcomes = []
        for event in events:
            new = event.event_id not in self._by_id
            if new:
                stored = StoredEvent(LocalSeq(len(self._log) + 1), event, now_ms)
                self._by_id[event.event_id] = stored
                self._log.append(stored)
            outcomes.append(new)
        return outcomes

    async def get(self, event_id: EventId) -> StoredEvent | None:
        return self._by_id.get(event_id)

    async def count(self) -> int:
        return len(self._log)

    async def read_after(self, seq: LocalSeq, limit: int) -> list[StoredEvent]:
        return [stored for stored in self._log if stored.seq > seq][:limit]
