"""The event envelope: the ADR's metadata around every domain event.

An envelope arrives from a device as a JSON or msgpack object. :func:`parse_envelope` turns it
into an :class:`Envelope` or a :class:`~gateway.core.rejections.Rejection` that names the
offending field; :meth:`Envelope.encode` gives the canonical JSON bytes that are stored and later
become the Kafka record value.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
)

from gateway.core.ids import EventId
from gateway.core.rejections import RejectCode, Rejection

EVENT_TYPE_PATTERN: Final = r"^[A-Z][A-Za-z0-9]{0,63}\.[A-Z][A-Za-z0-9]{0,63}$"
MAX_PAYLOAD_DEPTH: Final = 32

Text128 = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Envelope(BaseModel):
    """One domain event with its metadata, as published by a device or service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: EventId = Field(
        description="Idempotency key: a UUID, stored in canonical form.",
        json_schema_extra={"type": "string", "format": "uuid"},
    )
    event_type: Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)] = Field(
        description="Aggregate and verb, e.g. `Order.Placed`."
    )
    event_version: StrictInt = Field(ge=1, le=1000, description="Schema version of the payload.")
    event_time: AwareDatetime = Field(description="When the event happened (RFC 3339, with zone).")
    source: Text128 = Field(description="Device or service that produced the event.")
    correlation_id: Text128 | None = Field(
        None, description="Correlates events of one flow; defaults to the event id."
    )
    key: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="Aggregate id: the Kafka partition key, so per-key order is kept."
    )
    payload: dict[str, Any] = Field(description="Event body, validated against its schema.")

    @field_validator("event_id", mode="plain")
    @classmethod
    def _canonical_uuid(cls, value: object) -> EventId:
        if not isinstance(value, str):
            raise ValueError("event_id must be a UUID string")
        try:
            return EventId(str(uuid.UUID(value)))
        except ValueError:
            raise ValueError("event_id must be a UUID string") from None

    @property
    def effective_correlation_id(self) -> str:
        return self.correlation_id if self.correlation_id is not None else self.event_id

    def encode(self) -> bytes:
        """Canonical JSON bytes of the envelope (the stored form and the Kafka value)."""
        return self.model_dump_json(exclude_none=True).encode()


def parse_envelope(raw: object) -> Envelope | Rejection:
    """Validate one decoded event object. Never raises for bad input."""
    if not isinstance(raw, Mapping):
        return Rejection(RejectCode.INVALID_ENVELOPE, "event must be an object")
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        return _rejection_from(exc)
    try:
        # Fast check that the payload is plain JSON; the walk below only runs to name the field.
        json.dumps(envelope.payload, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return _non_json_value(envelope.payload, "payload", 0) or Rejection(
            RejectCode.INVALID_PAYLOAD, "payload is not plain JSON", "payload"
        )
    return envelope


def _rejection_from(exc: ValidationError) -> Rejection:
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    if first["type"] == "missing":
        message = f"missing required field {field!r}"
    elif first["type"] == "extra_forbidden":
        message = f"unknown field {field!r}"
    else:
        message = f"{field}: {first['msg']}" if field else first["msg"]
    return Rejection(RejectCode.INVALID_ENVELOPE, message, field)


def _non_json_value(value: object, path: str, depth: int) -> Rejection | None:
    """Name the value JSON cannot carry faithfully (msgpack can): bytes, NaN, odd keys."""
    if depth > MAX_PAYLOAD_DEPTH:
        return Rejection(
            RejectCode.INVALID_PAYLOAD, f"nested deeper than {MAX_PAYLOAD_DEPTH} levels", path
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return Rejection(RejectCode.INVALID_PAYLOAD, "object keys must be strings", path)
            problem = _non_json_value(item, f"{path}.{key}", depth + 1)
            if problem is not None:
                return problem
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problem = _non_json_value(item, f"{path}.{index}", depth + 1)
            if problem is not None:
                return problem
    elif isinstance(value, float):
        if not math.isfinite(value):
            return Rejection(RejectCode.INVALID_PAYLOAD, "numbers must be finite", path)
    elif value is not None and not isinstance(value, str | int | bool):
        return Rejection(
            RejectCode.INVALID_PAYLOAD, f"unsupported value of type {type(value).__name__}", path
        )
    return None
