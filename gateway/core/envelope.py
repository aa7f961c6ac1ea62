"""The event envelope: the ADR's metadata around every domain event.

An envelope arrives from a device as a JSON or msgpack object. :func:`parse_envelope` turns it
into an :class:`Envelope` with its canonical JSON bytes (what is stored and later becomes the
Kafka record value), or a :class:`~gateway.core.rejections.Rejection` that names the offending
field.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
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
from pydantic_core import PydanticSerializationError

from gateway.core.ids import EventId
from gateway.core.rejections import RejectCode, Rejection

EVENT_TYPE_PATTERN: Final = r"^[A-Z][A-Za-z0-9]{0,63}\.[A-Z][A-Za-z0-9]{0,63}$"
MAX_PAYLOAD_DEPTH: Final = 32
_CONTAINERS: Final = (dict, list)

_CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_RFC3339_LOCAL: Final = r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?"
_RFC3339: Final = re.compile(_RFC3339_LOCAL + r"(?:[Zz]|[+-]\d{2}:\d{2})")
_RFC3339_NO_ZONE: Final = re.compile(_RFC3339_LOCAL)
_TIME_EXAMPLE: Final = "e.g. 2026-11-21T10:00:00Z"

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
    payload: dict[str, Any] = Field(
        description="Event body (plain JSON), validated against its schema."
    )
    """Its values are checked by :func:`parse_envelope`'s own walk (plain, finite JSON, bounded
    depth): one pass instead of pydantic's JSON-value union at every node, which cost half of
    the validation of an envelope."""

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

    @field_validator("event_time", mode="before")
    @classmethod
    def _rfc3339_text(cls, value: object) -> object:
        # Lax parsing would also take a number, or a string of digits, as Unix seconds.
        if isinstance(value, str) and _RFC3339.fullmatch(value):
            return value  # the values (month 13, offset +25:00) are checked by the parse
        if isinstance(value, str) and _RFC3339_NO_ZONE.fullmatch(value):
            raise ValueError(f"event_time has no timezone (RFC 3339, {_TIME_EXAMPLE})")
        raise ValueError(f"event_time must be an RFC 3339 datetime with timezone, {_TIME_EXAMPLE}")

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
    payload = raw.get("payload")
    payload_problem = _payload_problem(payload) if isinstance(payload, dict) else None
    if payload_problem is not None and payload_problem.message == _TOO_DEEP:
        return payload_problem  # before anything walks it
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        return _rejection_from(exc)
    if payload_problem is not None:
        return payload_problem
    try:
        encoded = envelope.encode()
    except (PydanticSerializationError, UnicodeEncodeError):
        # e.g. a JSON "\udcff" escape: decodes to a str that is not valid Unicode text
        return Rejection(RejectCode.INVALID_ENVELOPE, "a string holds an unpaired surrogate")
    return envelope, encoded


_TOO_DEEP: Final = f"payload is nested deeper than {MAX_PAYLOAD_DEPTH} levels"
_SCALARS: Final = (str, int, type(None))  # bool is an int
_Path = list[str | int | bytes | object]


def _payload_problem(payload: dict[object, object]) -> Rejection | None:
    """Why ``payload`` does not hold plain, finite JSON values nested at most
    :data:`MAX_PAYLOAD_DEPTH` levels, with the dotted path of the culprit; None if it does.
    Too deep wins over any other problem (nothing else walks a hostile payload)."""
    found = _json_problem(payload, MAX_PAYLOAD_DEPTH)
    if found is None:
        return None
    path, message = found
    if message == _TOO_DEEP:
        return Rejection(RejectCode.INVALID_PAYLOAD, _TOO_DEEP, "payload")
    if _deeper_than(payload, MAX_PAYLOAD_DEPTH):
        return Rejection(RejectCode.INVALID_PAYLOAD, _TOO_DEEP, "payload")
    field = ".".join(["payload", *map(str, reversed(path))])
    return Rejection(RejectCode.INVALID_PAYLOAD, f"{field}: {message}", field)


def _json_problem(
    container: dict[object, object] | list[object], room: int
) -> tuple[_Path, str] | None:
    """The first value of ``container`` that is not plain JSON, or that lies more than
    ``room`` levels below it: its path (innermost first) and what is wrong. Recursion stops at
    ``room`` levels, so a hostile nesting never reaches Python's recursion limit."""
    if room == 0:
        return ([], _TOO_DEEP) if container else None
    is_object = isinstance(container, dict)
    items: Iterable[tuple[object, object]] = (
        container.items() if isinstance(container, dict) else enumerate(container)
    )
    for key, child in items:
        if is_object and not isinstance(key, str):
            return [key], "object keys must be strings"
        if isinstance(child, _SCALARS):
            continue
        if isinstance(child, float):
            if child - child != 0.0:  # inf or nan, without a call per number
                return [key], "numbers must be finite"
            continue
        if isinstance(child, _CONTAINERS):
            found = _json_problem(child, room - 1)
            if found is not None:
                found[0].append(key)
                return found
            continue
        return [key], f"not a JSON value ({type(child).__name__})"
    return None


def _deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` levels. The walk never goes
    deeper than ``limit`` (a hostile body may nest far deeper than Python's recursion limit),
    and stops at the first value found below it."""
    return isinstance(value, _CONTAINERS) and _lies_below(value, limit + 1)


def _lies_below(container: dict[object, object] | list[object], depth: int) -> bool:
    """Whether some value lies ``depth`` levels below ``container``."""
    if depth == 1:
        return len(container) > 0
    for child in container.values() if isinstance(container, dict) else container:
        if isinstance(child, _CONTAINERS) and _lies_below(child, depth - 1):
            return True
    return False


def _rejection_from(exc: ValidationError) -> Rejection:
    first = exc.errors(include_url=False)[0]
    loc = first["loc"]  # never inside the payload: that is walked by _payload_problem
    field = ".".join(str(part) for part in loc) or None
    code = RejectCode.INVALID_ENVELOPE
    if first["type"] == "missing":
        message = f"missing required field {field!r}"
    elif first["type"] == "extra_forbidden":
        message = f"unknown field {field!r}"
    else:
        message = f"{field}: {first['msg']}" if field else first["msg"]
    return Rejection(code, message, field)
