import uuid
from typing import Any

import pytest

from gateway.core.envelope import MAX_PAYLOAD_DEPTH, Envelope, parse_envelope
from gateway.core.rejections import RejectCode, Rejection
from tests.factories import order_placed


def test_valid_envelope_is_parsed_and_id_canonicalised() -> None:
    raw = order_placed()
    for spelling in (raw["event_id"].upper(), "{" + raw["event_id"] + "}"):
        parsed = parse_envelope(dict(raw, event_id=spelling))
        assert isinstance(parsed, tuple)
        assert parsed[0].event_id == str(uuid.UUID(raw["event_id"]))


def test_encode_round_trips_the_fields() -> None:
    parsed = parse_envelope(order_placed(event_time="2026-11-21T10:00:00.25+02:00"))
    assert isinstance(parsed, tuple)
    envelope, encoded = parsed
    assert encoded == envelope.encode()
    assert Envelope.model_validate_json(encoded) == envelope
    assert b'"event_time":"2026-11-21T10:00:00.250000+02:00"' in encoded


def test_correlation_id_defaults_to_event_id() -> None:
    raw = order_placed()
    del raw["correlation_id"]
    parsed = parse_envelope(raw)
    assert isinstance(parsed, tuple)
    envelope, encoded = parsed
    assert envelope.effective_correlation_id == envelope.event_id
    assert b"correlation_id" not in encoded


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"event_id": None}, "event_id", "missing"),
        ({"event_id": "not-a-uuid"}, "event_id", "UUID"),
        ({"event_id": 12}, "event_id", "UUID"),
        ({"event_type": "order placed"}, "event_type", "pattern"),
        ({"event_version": "1"}, "event_version", "integer"),
        ({"event_version": True}, "event_version", "integer"),
        ({"event_version": 0}, "event_version", "greater"),
        ({"event_time": "2026-11-21T10:00:00"}, "event_time", "timezone"),
        ({"event_time": "yesterday"}, "event_time", "datetime"),
        ({"event_time": 1_700_000_000}, "event_time", "RFC 3339"),  # not Unix seconds
        ({"event_time": 1.5}, "event_time", "RFC 3339"),
        ({"event_time": "1700000000"}, "event_time", "RFC 3339"),
        ({"event_time": "2026-11-21T10:00Z"}, "event_time", "RFC 3339"),  # seconds required
        ({"event_time": "2026-11-21"}, "event_time", "RFC 3339"),
        ({"event_time": "2026-13-01T00:00:00Z"}, "event_time", "month"),
        ({"source": ""}, "source", "at least 1"),
        ({"key": None}, "key", "missing"),
        ({"key": "k" * 257}, "key", "at most 256"),
        ({"payload": [1, 2]}, "payload", "dictionary"),
        ({"surprise": 1}, "surprise", "unknown field"),
    ],
)
def test_bad_envelope_names_the_field(change: dict[str, Any], field: str, words: str) -> None:
    raw = order_placed()
    for name, value in change.items():
        if value is None:
            raw.pop(name)
        else:
            raw[name] = value
    rejection = parse_envelope(raw)
    assert isinstance(rejection, Rejection)
    assert rejection.code is RejectCode.INVALID_ENVELOPE
    assert rejection.field == field
    assert words in rejection.message


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"a": float("nan")}, "payload.a"),
        ({"a": [1, {"b": float("inf")}]}, "payload.a.1.b"),
        ({"a": b"bytes"}, "payload.a"),
        ({"a": {b"bytes key": 1}}, "payload.a.b'bytes key'"),
        ({"a": [{"ok": [1, 2.5, None, True]}, {7: "int key"}]}, "payload.a.1.7"),
        ({"a": {"b": [[], {}, ("tuple",)]}}, "payload.a.b.2"),
    ],
)
def test_payload_must_be_plain_json(payload: dict[str, Any], field: str) -> None:
    rejection = parse_envelope(order_placed(payload=payload))
    assert isinstance(rejection, Rejection)
    assert rejection.code is RejectCode.INVALID_PAYLOAD
    assert rejection.field == field


def nested(depth: int, leaf: object) -> object:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def test_payload_depth_limit_is_exact_and_wins_over_other_problems() -> None:
    deepest = order_placed(payload={"x": nested(MAX_PAYLOAD_DEPTH - 1, 1)})
    assert not isinstance(parse_envelope(deepest), Rejection)
    too_deep = order_placed(payload={"x": nested(MAX_PAYLOAD_DEPTH, 1)})
    empty_at_limit = order_placed(payload={"x": nested(MAX_PAYLOAD_DEPTH - 1, {})})
    assert not isinstance(parse_envelope(empty_at_limit), Rejection)
    # bytes near the top and a nesting far too deep (never walked to its end): too deep wins
    both = order_placed(payload={"a": b"x", "z": nested(100_000, 1)})
    for event in (too_deep, both):
        rejection = parse_envelope(event)
        assert isinstance(rejection, Rejection)
        assert (rejection.code, rejection.field) == (RejectCode.INVALID_PAYLOAD, "payload")
        assert "deeper than" in rejection.message


def test_non_object_event_is_rejected() -> None:
    rejection = parse_envelope(["not", "an", "object"])
    assert isinstance(rejection, Rejection)
    assert rejection.code is RejectCode.INVALID_ENVELOPE


@pytest.mark.parametrize(
    "event_time",
    [
        "2026-11-21T10:00:00Z",
        "2026-11-21t10:00:00z",
        "2026-11-21 10:00:00+00:00",  # RFC 3339 allows a space for readability
        "2026-11-21T10:00:00.123456789012-05:30",  # any number of fraction digits
    ],
)
def test_rfc3339_times_are_accepted(event_time: str) -> None:
    parsed = parse_envelope(order_placed(event_time=event_time))
    assert isinstance(parsed, tuple), parsed
    assert parsed[0].event_time.tzinfo is not None
