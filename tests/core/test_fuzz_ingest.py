"""Fuzzing of the pure functions of the ingest path and the stream's input parsers (hypothesis).

Every function here takes bytes or values straight from a device. The property is the same for
all of them: only the documented errors escape, never any other exception.

* :func:`~gateway.core.codec.decode`: arbitrary bytes, and hostile but well-formed bodies (huge
  ints, NaN/Infinity constants, deep nesting, non-string map keys, ext types): a value or
  :class:`~gateway.errors.MalformedBody`.
* :func:`~gateway.core.envelope.parse_envelope`: any decoded value: an envelope or a
  :class:`~gateway.core.rejections.Rejection` with a :class:`RejectCode`.
* :func:`~gateway.core.ingest.extract_events` + :func:`~gateway.core.ingest.plan_batch` with the
  real schema registry: a :class:`~gateway.errors.RequestError` for the whole batch, else one
  result per event in batch order; a rejected event has a RejectCode; an accepted event's stored
  value decodes back to an envelope equal in its fields; every result encodes in both media types
  (the HTTP and websocket answers carry it).
* :func:`~gateway.core.stream_protocol.parse_frame`: only :class:`~gateway.errors.FrameError`.
* :meth:`~gateway.core.cursor.CursorCodec.decode`: only :class:`~gateway.errors.InvalidCursor`,
  including for bodies signed with the right key (a forged body cannot be made, but the body
  parser must not trust the signature alone).

Bounded: the whole file runs in well under a minute; ``--long`` multiplies the examples.

Found by this file (``test_lone_surrogates_*``): a JSON body may carry lone UTF-16 surrogates
(``"\\udcff"``), which Python decodes into ``str`` values that cannot be encoded as UTF-8. They
once crashed :func:`parse_envelope` and the answer's encoding (500); such an event is now
rejected, and the general strategies draw surrogates too.
"""

from __future__ import annotations

import base64
import json
import math
import string
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.codec import MediaType, decode, encode
from gateway.core.cursor import (
    MAX_OFFSET,
    MAX_PARTITION,
    Cursor,
    CursorCodec,
    CursorProblem,
)
from gateway.core.envelope import Envelope, parse_envelope
from gateway.core.ids import Epoch
from gateway.core.ingest import (
    BatchPlan,
    IngestLimits,
    MayPublish,
    Status,
    StorableEvent,
    extract_events,
    finish_batch,
    plan_batch,
)
from gateway.core.rejections import RejectCode, Rejection
from gateway.core.schemas import SchemaRegistry, default_schema_root
from gateway.core.stream_protocol import (
    ID_PATTERN,
    Command,
    Encoding,
    ErrorCode,
    Ping,
    Publish,
    Subscribe,
    Unsubscribe,
    parse_frame,
)
from gateway.errors import FrameError, InvalidCursor, MalformedBody, RequestError

# -- budget ---------------------------------------------------------------------------------

SHORT_EXAMPLES = 100
"""Examples per property in the default (CI) run; the file stays well under a minute."""

LONG_FACTOR = 20
"""``--long`` runs this many times more examples per property."""


def fuzz(long_run: bool, examples: int = SHORT_EXAMPLES) -> settings:
    """Hypothesis settings of one property: bounded examples, no deadline (CI machines are
    slow and uneven), no health check on the deliberately big and slow inputs."""
    return settings(
        max_examples=examples * (LONG_FACTOR if long_run else 1),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- values ---------------------------------------------------------------------------------

_TEXT_ALPHABET = st.characters()
"""Any code point, lone surrogates included."""

_TEXT = st.text(_TEXT_ALPHABET, max_size=20)

_HOSTILE_INTS = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.integers(min_value=-(2**64), max_value=-(2**63) + 2),
    st.integers(min_value=10**30, max_value=10**200),
    st.sampled_from([0, -1, 1, 1000, 1001, 2**31 - 1, 2**31, 2**53 + 1]),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    _HOSTILE_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    _TEXT,
    st.binary(max_size=16),
)
_KEYS = st.one_of(_TEXT, st.integers(-5, 5), st.binary(max_size=4), st.none())
"""Map keys: mostly text, but also what msgpack or a Python caller may hand over."""


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4)


JSON_LIKE: st.SearchStrategy[Any] = st.recursive(_SCALARS, _nested, max_leaves=20)
"""Values as a decoder, or a careless caller, may produce: hostile scalars, mixed keys."""


@st.composite
def deeply_nested(draw: st.DrawFn) -> Any:
    """A list or object nested up to a few thousand levels (deeper than any limit)."""
    depth = draw(st.integers(0, 1500))
    value: Any = draw(_SCALARS)
    as_list = draw(st.booleans())
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


HOSTILE = st.one_of(JSON_LIKE, deeply_nested())


def packable(value: object) -> bool:
    """Whether msgpack can pack ``value`` (ints beyond 64 bits cannot be)."""
    try:
        msgpack.packb(value, use_bin_type=True)
    except (OverflowError, TypeError, ValueError, RecursionError):
        return False
    return True


# -- valid envelopes ------------------------------------------------------------------------


@cache
def registry() -> SchemaRegistry:
    return SchemaRegistry.load(default_schema_root())


@cache
def examples() -> tuple[tuple[str, int, dict[str, Any]], ...]:
    """(event type, version, valid example payload) of every schema of the repository."""
    found = []
    for path in sorted(default_schema_root().glob("*/v*.example.json")):
        version = int(path.name.removeprefix("v").removesuffix(".example.json"))
        found.append((path.parent.name, version, json.loads(path.read_text())))
    assert found, "no schema examples found"
    return tuple(found)


def _uuid_spellings(value: uuid.UUID) -> st.SearchStrategy[str]:
    """Spellings ``uuid.UUID`` accepts; the envelope stores the canonical one."""
    return st.sampled_from(
        [str(value), str(value).upper(), value.hex, f"{{{value}}}", f"urn:uuid:{value}"]
    )


_ZONES = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60, 23 * 60)
)
_TIMES = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30), timezones=_ZONES
)
_UNICODE_TEXT = st.characters(exclude_categories=["Cs"])
"""Valid Unicode text (no lone surrogates): what a valid envelope's strings may hold."""
_SHORT_TEXT = st.text(_UNICODE_TEXT, min_size=1, max_size=128)


@st.composite
def valid_envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A valid envelope of one of the repository's schemas, with varied metadata."""
    event_type, version, payload = draw(st.sampled_from(examples()))
    envelope: dict[str, Any] = {
        "event_id": draw(st.uuids().flatmap(_uuid_spellings)),
        "event_type": event_type,
        "event_version": version,
        "event_time": draw(_TIMES).isoformat(),
        "source": draw(_SHORT_TEXT),
        "key": draw(st.text(_UNICODE_TEXT, min_size=1, max_size=256)),
        "payload": json.loads(json.dumps(payload)),  # a private copy to mutate
    }
    if draw(st.booleans()):
        envelope["correlation_id"] = draw(st.none() | _SHORT_TEXT)
    return envelope


ENVELOPE_FIELDS = (
    "event_id",
    "event_type",
    "event_version",
    "event_time",
    "source",
    "correlation_id",
    "key",
    "payload",
)

NEAR_MISSES: dict[str, list[object]] = {
    "event_id": [
        "",
        "not-a-uuid",
        "0" * 31,
        str(uuid.UUID(int=0)) + "\n",
        " " + str(uuid.UUID(int=1)),
        str(uuid.UUID(int=2))[:-1],
        "x" * 200,
        12345,
    ],
    "event_type": ["", "order.placed", "Order.Placed\n", "Order", "Order.Placed.Again", "A.B"],
    "event_version": [0, -1, 1001, True, 1.0, "1", 2**70, None],
    "event_time": [
        "2026-11-21T10:00:00",
        "2026-13-01T00:00:00Z",
        "2026-11-21",
        "yesterday",
        "",
        1_700_000_000,
        "2026-11-21T10:00:00+25:00",
        "9999-12-31T23:59:59-23:59",
    ],
    "source": ["", "x" * 129, 1, None],
    "correlation_id": ["", "x" * 129, 7],
    "key": ["", "k" * 257, 0, None],
    "payload": [[], None, "{}", {"": None}, 1],
}


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> dict[Any, Any]:
    """A valid envelope with one thing changed: a field removed, replaced by a near miss or a
    hostile value, an unknown field added, or one value inside the payload replaced."""
    envelope: dict[Any, Any] = draw(valid_envelopes())
    kind = draw(st.sampled_from(["drop", "near_miss", "hostile", "extra", "payload"]))
    field = draw(st.sampled_from(ENVELOPE_FIELDS))
    if kind == "drop":
        envelope.pop(field, None)
    elif kind == "near_miss":
        envelope[field] = draw(st.sampled_from(NEAR_MISSES[field]))
    elif kind == "hostile":
        envelope[field] = draw(HOSTILE)
    elif kind == "extra":
        envelope[draw(_KEYS.filter(lambda k: k not in ENVELOPE_FIELDS))] = draw(JSON_LIKE)
    else:
        _mutate_inside(draw, envelope["payload"])
    return envelope


def _mutate_inside(draw: st.DrawFn, node: dict[str, Any]) -> None:
    """Walk down a random path of the payload (bounded) and replace, drop or add one value."""
    for _ in range(8):
        keys = [k for k, v in node.items() if isinstance(v, dict)]
        if not keys or draw(st.booleans()):
            break
        node = node[draw(st.sampled_from(sorted(keys)))]
    target = draw(st.sampled_from(sorted(node) or ["new"]))
    if draw(st.integers(0, 3)) == 0:
        node.pop(target, None)
    else:
        node[target] = draw(HOSTILE)


EVENTS = st.one_of(valid_envelopes(), mutated_envelopes(), HOSTILE)


def _allow_all(event_type: str, source: str) -> bool:
    return True


def _orders_only(event_type: str, source: str) -> bool:
    return event_type.startswith("Order.")


MAY_PUBLISH: st.SearchStrategy[MayPublish | None] = st.sampled_from(
    [None, _allow_all, _orders_only]
)
LIMITS = st.builds(
    IngestLimits,
    max_batch_events=st.sampled_from([1, 5, 1000]),
    max_event_bytes=st.sampled_from([300, 1000, 1_000_000]),
)


@st.composite
def batches(draw: st.DrawFn) -> list[Any]:
    """A list of events in which some events repeat (same id: duplicates in the batch)."""
    events = draw(st.lists(EVENTS, max_size=8))
    for _ in range(draw(st.integers(0, 3)) if events else 0):
        events.insert(draw(st.integers(0, len(events))), draw(st.sampled_from(events)))
    return events


# -- checks ---------------------------------------------------------------------------------


def check_rejection(rejection: object) -> None:
    assert isinstance(rejection, Rejection)
    assert isinstance(rejection.code, RejectCode)
    assert isinstance(rejection.message, str)
    assert rejection.message
    assert rejection.field is None or isinstance(rejection.field, str)


def check_encodable(value: object) -> None:
    """What the gateway answers must encode in both media types (else it would answer 500)."""
    for media in MediaType:
        encode(value, media)


def check_round_trip(raw: Mapping[Any, Any], envelope: Envelope, stored: StorableEvent) -> None:
    """The stored value is canonical JSON that decodes back to the same envelope, whose
    fields are those of the raw event (the id in canonical form)."""
    again = parse_envelope(json.loads(stored.value))
    assert not isinstance(again, Rejection), again
    assert again[0] == envelope
    assert again[1] == stored.value
    assert envelope.event_id == str(uuid.UUID(raw["event_id"]))
    assert envelope.event_type == raw["event_type"]
    assert envelope.event_version == raw["event_version"]
    assert envelope.event_time == datetime.fromisoformat(raw["event_time"])
    assert envelope.source == raw["source"]
    assert envelope.correlation_id == raw.get("correlation_id")
    assert envelope.key == raw["key"]
    assert envelope.payload == raw["payload"]
    assert stored.event_id == envelope.event_id
    assert stored.event_type == envelope.event_type
    assert stored.event_version == envelope.event_version
    assert stored.key == envelope.key
    assert stored.source == envelope.source
    assert stored.correlation_id == (raw.get("correlation_id") or envelope.event_id)


def check_plan(
    raw_events: list[Any],
    plan: BatchPlan,
    limits: IngestLimits,
    may_publish: MayPublish | None,
) -> None:
    """One decision per event, in batch order, each consistent with what parse_envelope
    says of the event alone."""
    assert len(plan.results) == len(raw_events)
    assert len(plan.slots) == len(plan.to_store)
    assert plan.slots == sorted(set(plan.slots))
    stored_ids = [event.event_id for event in plan.to_store]
    assert len(set(stored_ids)) == len(stored_ids)
    decided = set(plan.slots)
    for index, raw in enumerate(raw_events):
        result = plan.results[index]
        assert (result is None) == (index in decided)
        outcome = parse_envelope(raw)
        if index in decided:
            assert not isinstance(outcome, Rejection)
            stored = plan.to_store[plan.slots.index(index)]
            assert len(stored.value) <= limits.max_event_bytes
            if may_publish is not None:
                assert may_publish(stored.event_type, stored.source)
            check_round_trip(raw, outcome[0], stored)
            continue
        assert result is not None
        assert result.index == index
        if result.status is Status.REJECTED:
            check_rejection(result.error)
        else:
            assert result.status is Status.DUPLICATE
            assert result.error is None
            assert result.event_id in stored_ids[: _stored_before(plan, index)]


def _stored_before(plan: BatchPlan, index: int) -> int:
    return sum(1 for slot in plan.slots if slot < index)


def check_results(raw_events: list[Any], plan: BatchPlan) -> None:
    for stored in ([True] * len(plan.to_store), [False] * len(plan.to_store)):
        results = finish_batch(plan, stored)
        assert [r.index for r in results] == list(range(len(raw_events)))
        for result in results:
            assert isinstance(result.status, Status)
            assert (result.error is not None) == (result.status is Status.REJECTED)
        check_encodable({"results": [r.to_dict() for r in results]})


def ingest(body: object, limits: IngestLimits, may_publish: MayPublish | None) -> None:
    """The ingest path after decoding, with every property checked."""
    try:
        raw_events = extract_events(body, limits)
    except RequestError as exc:
        check_encodable(str(exc))
        return
    assert isinstance(body, Mapping)
    assert raw_events is body["events"]
    assert len(raw_events) <= limits.max_batch_events
    plan = plan_batch(raw_events, registry(), limits, may_publish)
    check_plan(raw_events, plan, limits, may_publish)
    check_results(raw_events, plan)


# -- codec ----------------------------------------------------------------------------------


def decode_or_refuse(data: bytes, media: MediaType) -> object | None:
    try:
        value = decode(data, media)
    except MalformedBody as exc:
        refused: MalformedBody | None = exc
    else:
        refused = None
    if refused is not None:
        assert str(refused)
        return None
    return value


def test_json_constants_are_refused_but_overflowing_numbers_decode_to_infinity() -> None:
    """``NaN``/``Infinity`` are refused by the decoder; a number too large for a float
    (``1e400``) is not: Python reads it as ``inf``. The envelope then rejects it (finite
    numbers only), so no infinity is ever stored or forwarded."""
    for constant in (b"NaN", b"Infinity", b"-Infinity", b"[1, NaN]"):
        with pytest.raises(MalformedBody):
            decode(constant, MediaType.JSON)
    assert decode(b"-1e400", MediaType.JSON) == -math.inf
    event = _order()
    event["payload"]["orderId"] = math.inf
    outcome = parse_envelope(event)
    assert isinstance(outcome, Rejection)
    assert outcome.code is RejectCode.INVALID_PAYLOAD


JSON_TOKENS = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e400",
        "1" * 5000,
        "-" + "9" * 4301,
        "0.1e-99999",
        '"\\u0000"',
        '"\\ud83d\\ude00"',
        "true",
        "null",
        "[]",
        "{}",
    ]
)


@st.composite
def hostile_json_bytes(draw: st.DrawFn) -> bytes:
    """Well-formed or nearly well-formed JSON with hostile tokens, deep nesting and duplicate
    keys, sometimes cut short or in another Unicode encoding."""
    depth = draw(st.integers(0, 2500))
    leaf = draw(JSON_TOKENS | JSON_LIKE.map(lambda v: to_json(v) or "null"))
    if draw(st.booleans()):
        text = "[" * depth + leaf + "]" * depth
    else:
        text = '{"events":' * depth + leaf + "}" * depth
    if draw(st.booleans()):
        text = '{"events":[' + text + "]," + '"events":[]}'
    data = text.encode(
        draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"])), "replace"
    )
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


def _json_dumpable(value: object) -> bool:
    return to_json(value) is not None


def to_json(value: object) -> str | None:
    """JSON text of a value as a careless client would write it: bytes as hex, keys that JSON
    cannot have dropped, NaN and Infinity as Python writes them (the decoder refuses those)."""
    try:
        return json.dumps(value, skipkeys=True, default=_bytes_as_hex)
    except (TypeError, ValueError, RecursionError):
        return None


def _bytes_as_hex(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


@st.composite
def hostile_msgpack_bytes(draw: st.DrawFn) -> bytes:
    """msgpack with non-string keys, ext types, NaN, 64-bit edge ints, huge declared lengths,
    deep nesting; sometimes cut short."""
    parts = draw(
        st.lists(
            st.one_of(
                JSON_LIKE.filter(packable).map(lambda v: msgpack.packb(v, use_bin_type=True)),
                st.sampled_from(
                    [
                        b"\xc1",  # never used
                        b"\xdd\xff\xff\xff\xff",  # array of 4G items
                        b"\xdf\xff\xff\xff\xff",  # map of 4G items
                        b"\xdb\xff\xff\xff\xff",  # str of 4G bytes
                        b"\xc6\xff\xff\xff\xff",  # bin of 4G bytes
                        b"\xa2\xed\xa0",  # str with a UTF-8 surrogate
                        b"\xa1\xff",  # str with invalid UTF-8
                        b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # NaN
                        b"\xd4\x05\x00",  # ext type 5
                        b"\xd6\xff\x00\x00\x00\x00",  # timestamp ext
                        b"\xc7\x03\xff\x00\x00\x00",  # timestamp ext of a wrong length
                        b"\x81\x01\xc0",  # map with an int key
                        b"\x81\x90\xc0",  # map with an array key
                        b"\x81\xc4\x01x\xc0",  # map with a bin key
                        b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",  # uint64 max
                    ]
                ),
            ),
            max_size=4,
        )
    )
    depth = draw(st.integers(0, 3000))
    head = b"\x91" * depth if draw(st.booleans()) else b"\x81\xa6events" * depth
    data = head + (parts[0] if parts else b"\xc0") + b"".join(parts[1:])
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


@pytest.mark.parametrize("media", list(MediaType))
def test_decode_of_arbitrary_bytes_raises_only_malformed_body(
    long_run: bool, media: MediaType
) -> None:
    @fuzz(long_run, 3 * SHORT_EXAMPLES)
    @given(data=st.binary(max_size=300))
    def check(data: bytes) -> None:
        decode_or_refuse(data, media)

    check()


def test_decode_of_hostile_json_raises_only_malformed_body(long_run: bool) -> None:
    @fuzz(long_run)
    @given(data=hostile_json_bytes(), limits=LIMITS)
    def check(data: bytes, limits: IngestLimits) -> None:
        value = decode_or_refuse(data, MediaType.JSON)
        if value is not None:
            ingest(value, limits, None)

    check()


def test_decode_of_hostile_msgpack_raises_only_malformed_body(long_run: bool) -> None:
    @fuzz(long_run)
    @given(data=hostile_msgpack_bytes(), limits=LIMITS)
    def check(data: bytes, limits: IngestLimits) -> None:
        value = decode_or_refuse(data, MediaType.MSGPACK)
        if value is not None:
            ingest(value, limits, None)

    check()


@pytest.mark.parametrize("media", list(MediaType))
def test_encoded_batches_decode_and_ingest(long_run: bool, media: MediaType) -> None:
    """A batch as a device would send it, through the decoder and the whole ingest path."""

    @fuzz(long_run)
    @given(events=batches(), limits=LIMITS, may_publish=MAY_PUBLISH)
    def check(events: list[Any], limits: IngestLimits, may_publish: MayPublish | None) -> None:
        body = {"events": events}
        if media is MediaType.JSON:
            text = to_json(body)
            if text is None:
                return
            data = text.encode()
        else:
            if not packable(body):
                return
            data = msgpack.packb(body, use_bin_type=True)
        value = decode_or_refuse(data, media)
        if value is not None:
            ingest(value, limits, may_publish)

    check()


# -- envelope and ingest --------------------------------------------------------------------


def test_parse_envelope_of_any_value_is_an_envelope_or_a_rejection(long_run: bool) -> None:
    @fuzz(long_run)
    @given(raw=HOSTILE | mutated_envelopes())
    def check(raw: object) -> None:
        outcome = parse_envelope(raw)
        if isinstance(outcome, Rejection):
            check_rejection(outcome)
            check_encodable(outcome.to_dict())
        else:
            envelope, encoded = outcome
            assert isinstance(envelope, Envelope)
            assert encoded == envelope.encode()
            assert parse_envelope(json.loads(encoded)) == outcome

    check()


def test_valid_envelopes_are_accepted_and_round_trip(long_run: bool) -> None:
    """The generator of valid envelopes really makes valid ones (else the other properties
    would test rejections only)."""

    @fuzz(long_run)
    @given(events=st.lists(valid_envelopes(), min_size=1, max_size=5))
    def check(events: list[dict[str, Any]]) -> None:
        limits = IngestLimits(max_batch_events=10, max_event_bytes=1_000_000)
        plan = plan_batch(events, registry(), limits)
        ids = [str(uuid.UUID(e["event_id"])) for e in events]
        assert plan.slots == [i for i, event_id in enumerate(ids) if event_id not in ids[:i]]
        check_plan(events, plan, limits, None)
        check_results(events, plan)

    check()


def test_mutated_envelopes_in_batches(long_run: bool) -> None:
    @fuzz(long_run)
    @given(events=batches(), limits=LIMITS, may_publish=MAY_PUBLISH)
    def check(events: list[Any], limits: IngestLimits, may_publish: MayPublish | None) -> None:
        ingest({"events": events}, limits, may_publish)

    check()


def test_hostile_bodies_raise_only_request_errors(long_run: bool) -> None:
    @fuzz(long_run)
    @given(
        body=HOSTILE
        | st.dictionaries(_KEYS, HOSTILE, max_size=3)
        | st.builds(
            lambda e, extra: {"events": e, **extra},
            HOSTILE,
            st.dictionaries(_KEYS, HOSTILE, max_size=2),
        ),
        limits=LIMITS,
    )
    def check(body: object, limits: IngestLimits) -> None:
        ingest(body, limits, None)

    check()


# -- stream frames --------------------------------------------------------------------------

_FRAME_TYPES = st.sampled_from(["subscribe", "unsubscribe", "publish", "ping", "pong", ""])
_IDS = st.from_regex(ID_PATTERN, fullmatch=True) | _TEXT | HOSTILE


@st.composite
def frame_objects(draw: st.DrawFn) -> dict[Any, Any]:
    frame: dict[Any, Any] = {"type": draw(_FRAME_TYPES | HOSTILE)}
    for field, values in (
        ("sub", _IDS),
        ("req", _IDS),
        ("channel", st.sampled_from(["inventory:s-1", "orders:u-1", ""]) | HOSTILE),
        ("cursor", st.none() | _TEXT | HOSTILE),
        ("events", st.lists(EVENTS, max_size=3) | HOSTILE),
    ):
        if draw(st.booleans()):
            frame[field] = draw(values)
    if draw(st.booleans()):
        frame[draw(_KEYS)] = draw(JSON_LIKE)
    return frame


def check_frame(data: str | bytes, encoding: Encoding) -> None:
    try:
        command: Command | FrameError = parse_frame(data, encoding)
    except FrameError as exc:
        command = exc
    if isinstance(command, FrameError):
        assert command.error_code in set(ErrorCode)
        for named in (command.sub, command.req):
            assert named is None or (isinstance(named, str) and 1 <= len(named) <= 64)
        return
    if isinstance(command, Subscribe):
        assert isinstance(command.channel, str)
        assert command.cursor is None or isinstance(command.cursor, str)
    elif isinstance(command, Publish):
        assert isinstance(command.events, list)
    else:
        assert isinstance(command, Unsubscribe | Ping)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_parse_frame_of_arbitrary_data_raises_only_frame_error(
    long_run: bool, encoding: Encoding
) -> None:
    @fuzz(long_run, 2 * SHORT_EXAMPLES)
    @given(data=st.text(max_size=200) | st.binary(max_size=200))
    def check(data: str | bytes) -> None:
        check_frame(data, encoding)

    check()


@pytest.mark.parametrize("encoding", list(Encoding))
def test_parse_frame_of_hostile_frames_raises_only_frame_error(
    long_run: bool, encoding: Encoding
) -> None:
    @fuzz(long_run)
    @given(frame=frame_objects() | HOSTILE, as_other=st.booleans())
    def check(frame: object, as_other: bool) -> None:
        if encoding is Encoding.JSON:
            text = to_json(frame)
            if text is None:
                return
            check_frame(text.encode() if as_other else text, encoding)
        else:
            if not packable(frame):
                return
            packed = msgpack.packb(frame, use_bin_type=True)
            check_frame(packed.decode("latin-1") if as_other else packed, encoding)

    check()


def test_parse_frame_of_deep_frames_raises_only_frame_error(long_run: bool) -> None:
    @fuzz(long_run, SHORT_EXAMPLES // 3)
    @given(depth=st.integers(0, 200_000))
    def check(depth: int) -> None:
        check_frame("[" * depth + "]" * depth, Encoding.JSON)
        check_frame(b"\x91" * depth + b"\xc0", Encoding.MSGPACK)

    check()


# -- cursors --------------------------------------------------------------------------------

CURSOR_KEY = b"fuzz-cursor-key-0123456789abcdef"
CODEC = CursorCodec(CURSOR_KEY)


def check_cursor(token: object, codec: CursorCodec = CODEC) -> Cursor | None:
    try:
        cursor: Cursor | InvalidCursor = codec.decode(token)  # type: ignore[arg-type]
    except InvalidCursor as exc:  # tokens come from clients: any type at all
        cursor = exc
    if isinstance(cursor, InvalidCursor):
        assert cursor.reason in set(CursorProblem)
        return None
    assert isinstance(cursor, Cursor)
    assert codec.decode(codec.encode(cursor)) == cursor
    return cursor


_B64_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-_=+/ \n", max_size=300)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@st.composite
def cursor_bodies(draw: st.DrawFn) -> object:
    """``[epoch, [[topic, [partition, offset, ...]], ...]]`` with hostile parts."""
    numbers = st.one_of(
        st.integers(-(2**63), 2**64 - 1),
        st.sampled_from([0, MAX_PARTITION, MAX_PARTITION + 1, MAX_OFFSET, -1]),
        st.booleans(),
        st.floats(),
        st.none(),
        _TEXT,
    )
    flat = st.lists(numbers, max_size=9) | JSON_LIKE
    topic = st.sampled_from(["t", "orders.events", "a" * 250, "bad topic", ""]) | JSON_LIKE
    entry = st.lists(st.one_of(topic, flat), max_size=3) | st.tuples(topic, flat).map(list)
    epoch = st.sampled_from(["e", "x" * 129, " e", "epoch-1"]) | JSON_LIKE
    body = st.tuples(epoch, st.lists(entry, max_size=4)).map(list) | JSON_LIKE
    return draw(body)


def test_cursor_decode_of_arbitrary_text_raises_only_invalid_cursor(long_run: bool) -> None:
    @fuzz(long_run, 2 * SHORT_EXAMPLES)
    @given(
        token=st.text(max_size=300)
        | _B64_TEXT
        | st.binary(max_size=300).map(_b64)
        | st.binary(max_size=60).map(lambda b: _b64(b"\x01" + b))
        | st.none()
        | st.integers()
    )
    def check(token: object) -> None:
        check_cursor(token)

    check()


def test_cursor_decode_of_signed_hostile_bodies_raises_only_invalid_cursor(
    long_run: bool,
) -> None:
    """Bodies signed with the right key reach the body parser: it must still refuse them."""

    @fuzz(long_run, 2 * SHORT_EXAMPLES)
    @given(body=cursor_bodies(), cut=st.booleans())
    def check(body: object, cut: bool) -> None:
        if not packable(body):
            return
        packed = msgpack.packb(body, use_bin_type=True)
        if cut:
            packed = packed[: len(packed) // 2]
        try:
            token = CODEC._sign(packed)
        except InvalidCursor:
            return  # over the token size limit
        check_cursor(token)

    check()


def test_cursor_decode_of_mutated_tokens_raises_only_invalid_cursor(long_run: bool) -> None:
    @fuzz(long_run)
    @given(
        positions=st.dictionaries(
            st.sampled_from(["inventory.events", "orders.events", "t"]),
            st.dictionaries(st.integers(0, 100), st.integers(0, MAX_OFFSET), max_size=4),
            max_size=3,
        ),
        at=st.integers(0, 10_000),
        char=st.sampled_from(string.ascii_letters + string.digits + "-_=."),
        keep=st.booleans(),
    )
    def check(positions: dict[str, dict[int, int]], at: int, char: str, keep: bool) -> None:
        cursor = Cursor(Epoch("epoch-1"), {t: p for t, p in positions.items() if p})
        token = CODEC.encode(cursor)
        assert check_cursor(token) == cursor
        at %= len(token)
        mutated = token[:at] + char + token[at + (0 if keep else 1) :]
        decoded = check_cursor(mutated)
        assert decoded is None or mutated == token or decoded == cursor

    check()


# -- lone surrogates (once a 500) -------------------------------------------------------------

SURROGATE = "\udcff"


@pytest.mark.parametrize("where", ["payload_key", "unknown_field"])
def test_lone_surrogates_in_names_are_rejected(where: str) -> None:
    ingest(_surrogate_body(where), IngestLimits(max_batch_events=10, max_event_bytes=10**6), None)


@pytest.mark.parametrize("where", ["payload_value", "payload_new_value", "nested_key", "event_id"])
def test_lone_surrogates_are_rejected_not_raised(where: str) -> None:
    ingest(_surrogate_body(where), IngestLimits(max_batch_events=10, max_event_bytes=10**6), None)


def _surrogate_body(where: str) -> object:
    """A batch of one Order.Placed whose JSON text carries a ``\\udcff`` escape at ``where``."""
    envelope = _order()
    if where == "payload_value":
        envelope["payload"]["orderId"] = SURROGATE
    elif where == "payload_new_value":
        envelope["payload"]["note"] = SURROGATE
    elif where == "payload_key":
        envelope["payload"][SURROGATE] = 1
    elif where == "nested_key":
        envelope["payload"]["total"][SURROGATE] = 1
    elif where == "event_id":
        envelope["event_id"] = SURROGATE
    else:
        envelope[SURROGATE] = 1
    text = json.dumps({"events": [envelope]})
    assert text.isascii()  # the surrogate travels as an escape, as a client would send it
    return decode(text.encode(), MediaType.JSON)


def _order() -> dict[str, Any]:
    for event_type, version, payload in examples():
        if event_type == "Order.Placed" and version == 1:
            return {
                "event_id": str(uuid.uuid4()),
                "event_type": event_type,
                "event_version": version,
                "event_time": datetime.now(UTC).isoformat(),
                "source": "device-1",
                "key": "order-1",
                "payload": json.loads(json.dumps(payload)),
            }
    raise AssertionError("no Order.Placed v1 example")


def test_the_schema_examples_are_found() -> None:
    assert len(examples()) >= 10
    assert Path(default_schema_root()).is_dir()
