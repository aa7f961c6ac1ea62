"""An in-memory :class:`~gateway.flows.ports.EventStore` for unit tests of the flows.

Not durable, so never evidence that a durability guarantee holds; the contract tests run the
same assertions against it and the SQLite store so that the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace

from gateway.core.ids import EventId, LocalSeq
from gateway.core.ingest import StorableEvent
from gateway.core.records import Backlog, QuarantineEntry, StoredEvent


class MemoryEventStore:
    def __init__(self) -> None:
        self._log: dict[LocalSeq, StoredEvent] = {}
        self._by_id: dict[EventId, LocalSeq] = {}
        self._next_seq = 1
        self._mark = LocalSeq(0)
        self._quarantine: dict[LocalSeq, QuarantineEntry] = {}
        self._appended = asyncio.Event()
        self.store_id = str(uuid.uuid4())

    def _insert(self, event: StorableEvent, received_at_ms: int) -> None:
        seq = LocalSeq(self._next_seq)
        self._next_seq += 1
        self._log[seq] = StoredEvent(seq, event, received_at_ms)
        self._by_id[event.event_id] = seq

    async def append(self, events: Sequence[StorableEvent]) -> list[bool]:
        now_ms = int(time.time() * 1000)
        outcomes = []
        for event in events:
            new = event.event_id not in self._by_id
            if new:
                self._insert(event, now_ms)
            outcomes.append(new)
        if any(outcomes):
            self._appended.set()
        return outcomes

    async def wait_for_append(self, max_wait: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait):  # not wait_for: see SqliteEventStore
                await self._appended.wait()
        self._appended.clear()

    async def get(self, event_id: EventId) -> StoredEvent | None:
        seq = self._by_id.get(event_id)
        return self._log[seq] if seq is not None else None

    async def count(self) -> int:
        return len(self._log)

    async def read_after(self, seq: LocalSeq, limit: int) -> list[StoredEvent]:
        return [self._log[s] for s in sorted(self._log) if s > seq][:limit]

    async def forwarded_mark(self) -> LocalSeq:
        return self._mark

    async def mark_forwarded(self, seq: LocalSeq) -> None:
        self._mark = max(self._mark, seq)

    async def backlog(self) -> Backlog:
        pending = [stored for seq, stored in self._log.items() if seq > self._mark]
        return Backlog(
            events=len(pending),
            oldest_received_ms=min((s.received_at_ms for s in pending), default=None),
        )

    async def quarantine(self, entries: Sequence[QuarantineEntry]) -> None:
        for entry in entries:
            self._quarantine.setdefault(entry.seq, entry)

    async def quarantined(self, *, include_replayed: bool = False) -> list[QuarantineEntry]:
        return [
            self._quarantine[seq]
            for seq in sorted(self._quarantine)
            if include_replayed or self._quarantine[seq].replayed_at_ms is None
        ]

    async def replay_quarantined(self, event_ids: Sequence[EventId] | None = None) -> int:
        now = int(time.time() * 1000)
        entries = [
            e for e in await self.quarantined() if event_ids is None or e.event_id in event_ids
        ]
        for entry in entries:
            stored = self._log.pop(entry.seq, None)
            if stored is not None:
                self._insert(stored.event, stored.received_at_ms)
            self._quarantine[entry.seq] = replace(entry, replayed_at_ms=now)
        return len(entries)

    async def prune_forwarded(self, received_before_ms: int) -> int:
        held = {e.seq for e in await self.quarantined()}
        doomed = [
            seq
            for seq, stored in self._log.items()
            if seq <= self._mark and stored.received_at_ms < received_before_ms and seq not in held
        ]
        for seq in doomed:
            del self._by_id[self._log.pop(seq).event.event_id]
        return len(doomed)
