"""The interfaces flows depend on; adapters implement them (and contract tests check each)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.core.ids import EventId, LocalSeq
from gateway.core.ingest import Claim, StorableEvent
from gateway.core.records import Backlog, OutRecord, QuarantineEntry, StoredEvent


class EventStore(Protocol):
    """Durable, deduplicating event store of one gateway instance."""

    store_id: str
    """Identity of this store (a new store file has a new one)."""

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

    async def wait_for_append(self, max_wait: float) -> None:
        """Return once new events were committed since the last call, or after ``max_wait`` s."""
        ...

    async def forwarded_mark(self) -> LocalSeq:
        """Highest sequence this instance knows to be committed in Kafka (0 if none)."""
        ...

    async def mark_forwarded(self, seq: LocalSeq) -> None: ...

    async def backlog(self) -> Backlog: ...

    async def quarantine(self, entries: Sequence[QuarantineEntry]) -> None: ...

    async def quarantined(self, *, include_replayed: bool = False) -> list[QuarantineEntry]: ...

    async def replay_quarantined(self, event_ids: Sequence[EventId] | None = None) -> int:
        """Give quarantined events new sequences so that they are forwarded again."""
        ...

    async def prune_forwarded(self, received_before_ms: int) -> int:
        """Delete forwarded, unquarantined events received before the cutoff."""
        ...


class KafkaPublisher(Protocol):
    """Transactional writer of forwarded records and the forwarder's position."""

    async def open(self, store_id: str) -> LocalSeq:
        """Fence earlier incarnations of this instance, let their open transaction end, and
        return the position committed in Kafka for this store (0 if none: a position written
        for another store of the same instance id does not count). Raises
        ``KafkaUnavailable``."""
        ...

    async def publish(
        self, records: Sequence[OutRecord], position: LocalSeq, store_id: str
    ) -> None:
        """Commit ``records`` and ``position`` in one transaction, or nothing.

        Raises ``RecordsRefused`` naming the records Kafka will never take (nothing committed;
        Kafka refuses whole produce batches, so innocent records of the culprit's batch may be
        named too: a caller finds the culprit by publishing one record at a time),
        ``KafkaUnavailable`` / ``KafkaFenced`` when the link must be rebuilt.
        """
        ...

    async def ping(self) -> None:
        """Raise ``KafkaUnavailable`` if the cluster does not answer a metadata request."""
        ...

    async def close(self) -> None: ...

    @property
    def max_record_bytes(self) -> int:
        """Largest record the publisher will attempt; larger ones go to the dead letters."""
        ...


class FleetDedup(Protocol):
    """Dedup of event ids across the gateway instances of a fleet (Redis).

    Every method raises :class:`~gateway.errors.FleetDedupUnavailable` when the shared state
    cannot be reached; the ingest flow then relies on its local store alone.
    """

    async def claim(self, ids: Sequence[str]) -> dict[str, Claim]:
        """Claim ``ids`` as pending for this instance; what the fleet says of each."""
        ...

    async def confirm(self, ids: Sequence[str]) -> list[str]:
        """Mark ``ids`` committed by this instance; the ids another instance holds."""
        ...

    async def release(self, ids: Sequence[str]) -> int:
        """Drop this instance's pending claims on ``ids`` (its store did not commit)."""
        ...

    async def close(self) -> None: ...
