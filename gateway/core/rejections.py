"""Why one event of a batch is refused: a machine-readable code, the field, a message.

A rejection concerns a single event; the other events of the batch are unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RejectCode(StrEnum):
    """Stable, machine-readable reasons an event is rejected."""

    INVALID_ENVELOPE = "invalid_envelope"
    """The envelope itself is malformed: a field is missing, of the wrong type or out of range."""
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    """No schema exists for this event type."""
    UNKNOWN_EVENT_VERSION = "unknown_event_version"
    """The event type is known but not at this version."""
    INVALID_PAYLOAD = "invalid_payload"
    """The payload does not conform to the schema of its type and version."""
    EVENT_TOO_LARGE = "event_too_large"
    """The encoded event exceeds the configured per-event size limit."""
    PUBLISH_FORBIDDEN = "publish_forbidden"
    """The caller's token does not allow this event type, or ``source`` is not its subject."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """One event's refusal. ``field`` is a dotted path such as ``payload.items.0.sku``."""

    code: RejectCode
    message: str
    field: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"code": self.code.value, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out
