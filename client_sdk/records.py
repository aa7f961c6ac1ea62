"""The records the outbox takes and hands out: event ids, new and pending events, the
gateway's receipts, rejected events and the outbox's stats.

They are plain values (frozen dataclasses), shared by the :class:`~client_sdk.outbox.Outbox`,
the :class:`~client_sdk.uploader.Uploader` and the apps that read receipts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NewType

__all__ = [
    "EventId",
    "NewEvent",
    "OutboxStats",
    "PendingEvent",
    "Receipt",
    "ReceiptStatus",
    "RejectedEvent",
]

EventId = NewType("EventId", str)
"""Idempotency key of an event: a canonical lowercase UUID string."""


class ReceiptStatus(StrEnum):
    """The gateway's answer for one event."""

    ACCEPTED = "accepted"
    """Stored durably by the gateway (it will reach Kafka)."""
    DUPLICATE = "duplicate"
    """The gateway had already stored this event id (e.g. a re-send after a lost answer)."""
    REJECTED = "rejected"
    """Refused for good (``code`` and ``message`` say why); moved to the rejected table."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One event for :meth:`~client_sdk.outbox.Outbox.publish_many` (the arguments of
    :meth:`~client_sdk.outbox.Outbox.publish`)."""

    event_type: str
    version: int
    key: str
    payload: Mapping[str, Any]
    source: str
    correlation_id: str | None = None
    event_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An event waiting in the outbox. ``envelope`` is its JSON encoding, as built at publish."""

    seq: int
    event_id: EventId
    event_type: str
    published_at: float
    envelope: bytes

    @property
    def size(self) -> int:
        """Size of the encoded envelope in bytes."""
        return len(self.envelope)

    def decoded(self) -> dict[str, Any]:
        """The envelope as a dict."""
        value: dict[str, Any] = json.loads(self.envelope)
        return value


@dataclass(frozen=True, slots=True)
class Receipt:
    """The gateway's answer for one event; ``code``/``field``/``message`` only when rejected."""

    event_id: EventId
    status: ReceiptStatus
    received_at: float = field(default_factory=time.time)
    code: str | None = None
    field: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        """True when the gateway holds the event (accepted or duplicate)."""
        return self.status is not ReceiptStatus.REJECTED


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """An event the gateway refused, kept aside with its envelope and the reason."""

    seq: int
    event_id: EventId
    event_type: str
    published_at: float
    envelope: bytes
    code: str
    field: str | None
    message: str
    rejected_at: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """What the outbox holds now. ``oldest_pending_age_s`` is None when nothing is pending;
    ``last_error`` is the last upload failure recorded (None after a success)."""

    pending: int
    oldest_pending_age_s: float | None
    rejected: int
    last_error: str | None
