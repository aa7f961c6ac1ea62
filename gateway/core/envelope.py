"""The event envelope: the ADR's metadata around every domain event.

An envelope arrives from a device as a JSON or msgpack object. :func:`parse_envelope` turns it
into an :class:`Envelope` with its canonical JSON bytes (what is stored and later becomes the
Kafka record value), or a :class:`~gateway.core.rejections.Rejection` that names the offending
field.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Annotated, Final

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticSerializationError

from gateway.core.ids import EventId
from gateway.core.rejections import RejectCode, Rejection

EVENT_TYPE_PATTERN: Final = r"^[A-Z][A-Za-z0-9]{0,63}\.[A-Z][A-Za-z0-9]{0,63}$"
MAX_PAYLOAD_DEPTH: Final = 32

_CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

Text128 = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Envelope(BaseModel):
    """One domain event with its metadata, as published by a device or service."""

    # strict: no coercion anywhere (a "1" is not a version, bytes are not text), and payload
    # values must be plain, finite JSON; event_time alone is parsed from its RFC 3339 string.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    event_id: EventId = Field(
        description="Idempotency key: a UUID, stored in canonical form.",
        json_schema_extra={"type": "string", "format": "uuid"},
    )
    event_type: Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)] = Field(
        description="Aggregate and verb, e.g. `Order.Placed`."
    )
    event_version: StrictInt = Field(ge=1, le=1000, description="Schema version of the payload.")
    event_time: AwareDatetime = Field(
        strict=False, description="When the event happened (RFC 3339, with zone)."
    )
    source: Text128 = Field(description="Device or service that produced the event.")
    correlation_id: Text128 | None = Field(
        None, description="Correlates events of one flow; defaults to the event id."
    )
    key: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="Aggregate id: the Kafka partition key, so per-key order is kept."
    )
    payload: dict[str, JsonValue] = Field(
        description="Event body (plain JSON), validated against its schema."
    )

    @field_validator("event_id", mode="plain")
    @classmethod
    def _canonical_uuid(cls, value: object) -> EventId:
        if not isinstance(value, str):
            raise ValueError("event_id must be a UUID string")
        lowered = value.lower()
        if _CANONICAL_UUID.fullmatch(lowered):
            return EventId(lowered)
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


def parse_envelope(raw: object) -> tuple[Envelope, bytes] | Rejection:
    """Validate one decoded event object: the envelope and its canonical encoding, or why not.
    Never raises for bad input."""
    if not isinstance(raw, Mapping):
        return Rejection(RejectCode.INVALID_ENVELOPE, "event must be an object")
    if _deeper_than(raw.get("payload"), MAX_PAYLOAD_DEPTH):
        return Rejection(
            RejectCode.INVALID_PAYLOAD,
            f"payload is nested deeper than {MAX_PAYLOAD_DEPTH} levels",
            "payload",
        )
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        return _rejection_from(exc)
    try:
        encoded = envelope.encode()
    except (PydanticSerializationError, UnicodeEncodeError):
        # e.g. a JSON "\udcff" escape: decodes to a str that is not valid Unicode text
        return Rejection(RejectCode.INVALID_ENVELOPE, "a string holds an unpaired surrogate")
    return envelope, encoded


def _deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` levels (iteratively: a hostile
    body may nest far deeper than Python's recursion limit)."""
    level: list[object] = [value]
    for _ in range(limit + 1):
        level = [
            child
            for item in level
            if isinstance(item, Mapping | list)
            for child in (item.values() if isinstance(item, Mapping) else item)
        ]
        if not level:
            return False
    return True


def _rejection_from(exc: ValidationError) -> Rejection:
    first = exc.errors(include_url=False)[0]
    loc = first["loc"]
    if loc[:1] == ("payload",) and len(loc) > 2:
        # Inside the payload, pydantic names each JSON value's kind after its key or index
        # ("payload.a.list.1.float"); keep the keys and indexes only.
        loc = loc[:2] + loc[3::2]
    field = ".".join(str(part) for part in loc) or None
    code = (
        RejectCode.INVALID_PAYLOAD
        if len(loc) > 1 and loc[0] == "payload"
        else (RejectCode.INVALID_ENVELOPE)
    )
    if first["type"] == "missing":
        message = f"missing required field {field!r}"
    elif first["type"] == "extra_forbidden":
        message = f"unknown field {field!r}"
    else:
        message = f"{field}: {first['msg']}" if field else first["msg"]
    return Rejection(code, message, field)
