"""What a :class:`~client_sdk.protocol.StreamSession` reports of the server's frames: one
frozen dataclass per kind of event (``docs/protocol.md`` §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The subscribe of ``sub`` was accepted (always the subscription's first frame)."""

    sub: str
    channel: str


@dataclass(frozen=True, slots=True)
class Update:
    """One update of a channel: a Kafka record and the cursor to persist once it is applied."""

    sub: str
    channel: str
    topic: str
    partition: int
    offset: int
    key: str | None
    timestamp: int
    """Kafka record timestamp, milliseconds since the Unix epoch."""
    data: dict[str, Any] | None
    """The event envelope (``None``: a tombstone, which does not occur today)."""
    cursor: str


@dataclass(frozen=True, slots=True)
class Live:
    """The subscription caught up; persist ``cursor`` once everything before it is applied."""

    sub: str
    channel: str
    cursor: str


@dataclass(frozen=True, slots=True)
class ResetEvent:
    """The history after the subscription's cursor is gone (final frame; re-snapshot)."""

    sub: str
    channel: str
    reason: str


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """The subscription ended (final frame). ``reason != "unsubscribed"``: the gateway ended
    it, and the client should subscribe again with its stored cursor after a backoff."""

    sub: str
    channel: str
    reason: str

    @property
    def by_client(self) -> bool:
        """True when this answers the client's own ``unsubscribe``."""
        return self.reason == "unsubscribed"


@dataclass(frozen=True, slots=True)
class AckResult:
    """The outcome of one event of a publish: ``accepted``, ``duplicate`` or ``rejected``."""

    index: int
    status: str
    event_id: str | None
    error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to ``publish(req, ...)``: one result per event, in the batch's order."""

    req: str
    results: tuple[AckResult, ...]


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """A refused client frame. ``channel`` and ``cursor`` are filled in when the error ended a
    pending subscribe of this session (for ``invalid_cursor``: the cursor to drop)."""

    code: str
    message: str
    sub: str | None
    req: str | None
    channel: str | None = None
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to an application ``ping``."""


Event: TypeAlias = Subscribed | Update | Live | ResetEvent | Unsubscribed | Ack | ErrorEvent | Pong
