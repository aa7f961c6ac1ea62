"""The interfaces flows depend on; adapters implement them (and contract tests check each)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.core.ids import EventId, LocalSeq
from gateway.core.ingest import StorableEvent


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the local store holds it."""

    seq: LocalSeq
    event: StorableEvent
    received_at_ms: int


class EventStore(Protocol):
    """Durable, deduplicating event store of one gateway instance."""

    async def append(self, events: Sequence[StorableEvent]) -> list[bool]:
        """Store events durably; ``True`` for each that was new, ``False`` for a duplicate id.

        Returns only once the new events are committed and synced to disk. Raises
        :class:`~gateway.errors.StoreUnavailable` when nothing could be committed.
        """
        ...

    async def get(self, event_id: EventId) -> StoredEvent | None: ...

    async def count(self) -> int: ...

    async def read_after(self, seq: LocalSeq, limit: int) -> list[StoredEvent]:
        """Events with a sequence above ``seq``, in store order, at most ``limit``."""
        ...
