"""Records that pass between the store, the forwarder and Kafka (plain data)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.ids import EventId, LocalSeq
from gateway.core.ingest import StorableEvent


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the local store holds it."""

    seq: LocalSeq
    event: StorableEvent
    received_at_ms: int
    damaged: bool = False
    """The stored bytes fail their checksum (disk damage): never forwarded as they are."""


@dataclass(frozen=True, slots=True)
class Backlog:
    """Stored events not yet known to be in Kafka."""

    events: int
    oldest_received_ms: int | None


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """An event Kafka refused for good, set aside with the reason (also on the DLQ topic)."""

    seq: LocalSeq
    event_id: EventId
    reason: str
    quarantined_at_ms: int
    replayed_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A Kafka record to write, with the local sequence it comes from."""

    seq: LocalSeq
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def size(self) -> int:
        """Serialized size estimate: payload bytes plus a record's framing overhead."""
        return (
            len(self.key) + len(self.value) + sum(len(k) + len(v) + 2 for k, v in self.headers) + 64
        )
