import base64
import hmac
import string

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.cursor import (
    MAX_OFFSET,
    MAX_PARTITION,
    MAX_PARTITIONS,
    MAX_TOKEN_CHARS,
    MAX_TOPICS,
    TAG_BYTES,
    Cursor,
    CursorCodec,
    CursorProblem,
    _Signer,
    derive_epoch,
)
from gateway.core.ids import Epoch, KafkaOffset
from gateway.errors import ConfigError, GatewayError, InvalidCursor, StreamError

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
EPOCH = derive_epoch("cluster-1", {"inventory.events": "t-1", "order.events": "t-2"})

topics = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=40)
partitions = st.integers(0, MAX_PARTITION)
offsets = st.integers(0, MAX_OFFSET)
epochs = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=128)
position_maps = st.dictionaries(
    topics, st.dictionaries(partitions, offsets, min_size=1, max_size=20), max_size=20
)


def sample() -> Cursor:
    return Cursor(EPOCH, {"inventory.events": {0: 10, 1: 0}, "order.events": {2: 7}})


def raw_of(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def token_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed_token(body: object, *, key: bytes = KEY, version: int = 1) -> str:
    """A token with a valid tag around any body: what only a holder of the key can make."""
    signed = bytes([version]) + (body if isinstance(body, bytes) else msgpack.packb(body))
    tag = hmac.digest(key, b"sync-gateway/cursor\x00" + signed, "sha256")[:TAG_BYTES]
    return token_of(signed + tag)


def refused(token: object, problem: CursorProblem, key: bytes = KEY) -> None:
    with pytest.raises(InvalidCursor) as caught:
        Cursor.decode(token, key)  # type: ignore[arg-type]
    assert caught.value.reason == problem, caught.value


# -- round trips ----------------------------------------------------------------------------


@given(epochs, position_maps)
def test_round_trip(epoch: str, positions: dict[str, dict[int, int]]) -> None:
    cursor = Cursor(Epoch(epoch), positions)
    token = cursor.encode(KEY)
    assert set(token) <= set(string.ascii_letters + string.digits + "-_")
    assert len(token) <= MAX_TOKEN_CHARS
    decoded = Cursor.decode(token, KEY)
    assert decoded == cursor
    assert hash(decoded) == hash(cursor)
    assert decoded.epoch == epoch
    assert decoded.positions == cursor.positions
    assert decoded.encode(KEY) == token  # one cursor, one token


@given(epochs, position_maps)
def test_body_is_plain_msgpack_of_the_documented_shape(
    epoch: str, positions: dict[str, dict[int, int]]
) -> None:
    cursor = Cursor(Epoch(epoch), positions)
    raw = raw_of(cursor.encode(KEY))
    assert raw[0] == 1
    expected = [
        epoch,
        [[t, [n for p in sorted(ps) for n in (p, ps[p])]] for t, ps in sorted(positions.items())],
    ]
    assert msgpack.unpackb(raw[1:-TAG_BYTES]) == expected
    assert raw[1:-TAG_BYTES] == msgpack.packb(expected)


def test_array_header_of_many_topics() -> None:
    many = {f"topic-{i:02}": {0: i} for i in range(MAX_TOPICS)}
    cursor = Cursor(EPOCH, many)
    assert Cursor.decode(cursor.encode(KEY), KEY) == cursor


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3), offsets)))
def test_advanced_cursor_encodes_like_a_fresh_one(steps: list[tuple[str, int, int]]) -> None:
    cursor = Cursor(EPOCH, {"b": {1: 5}})
    cursor.encode(KEY)  # fill the per-topic cache, then move
    for topic, partition, offset in steps:
        if offset == MAX_OFFSET:
            continue
        cursor = cursor.advance(topic, partition, KafkaOffset(offset))
        assert cursor.encode(KEY) == Cursor(EPOCH, cursor.positions).encode(KEY)
        assert cursor.restricted_to(["a"]).encode(KEY) == (
            Cursor(EPOCH, {t: p for t, p in cursor.positions.items() if t == "a"}).encode(KEY)
        )


def test_compact() -> None:
    cursor = Cursor(EPOCH, {"inventory.events": {p: 1_000_000 + p for p in range(12)}})
    assert len(cursor.encode(KEY)) < 180  # 172: 12 partitions at offset ~1M


def test_token_is_portable_between_codecs_with_the_same_key() -> None:
    token = CursorCodec(KEY).encode(sample())
    assert CursorCodec(bytes(KEY)).decode(token) == sample()


# -- forgery and tampering ------------------------------------------------------------------


def test_wrong_key_is_refused() -> None:
    refused(sample().encode(KEY), CursorProblem.BAD_SIGNATURE, key=OTHER_KEY)


def test_previous_keys_are_accepted_for_rotation() -> None:
    old_token = sample().encode(OTHER_KEY)
    rotated = CursorCodec(KEY, previous_keys=[OTHER_KEY])
    assert rotated.decode(old_token) == sample()
    assert rotated.encode(sample()) == sample().encode(KEY)
    with pytest.raises(InvalidCursor):
        CursorCodec(KEY).decode(old_token)


def test_every_single_byte_change_is_refused() -> None:
    raw = raw_of(sample().encode(KEY))
    for index in range(len(raw)):
        for flip in (0x01, 0x80):
            tampered = bytearray(raw)
            tampered[index] ^= flip
            with pytest.raises(InvalidCursor):
                Cursor.decode(token_of(bytes(tampered)), KEY)


def test_widening_without_the_key_is_refused() -> None:
    raw = raw_of(sample().encode(KEY))
    tag = raw[-TAG_BYTES:]
    wider = Cursor(EPOCH, {**sample().positions, "payment.events": {0: 0}})
    moved = sample().advance("inventory.events", 0, KafkaOffset(1_000))
    for forged in (wider, moved, sample().restricted_to(["order.events"])):
        body = raw_of(forged.encode(KEY))[:-TAG_BYTES]
        refused(token_of(body + tag), CursorProblem.BAD_SIGNATURE)
        refused(token_of(body + bytes(TAG_BYTES)), CursorProblem.BAD_SIGNATURE)


def test_truncated_and_extended_tokens_are_refused() -> None:
    token = sample().encode(KEY)
    for cut in (1, 2, 5, TAG_BYTES, len(token) - 3):
        with pytest.raises(InvalidCursor):
            Cursor.decode(token[:-cut], KEY)
    for extra in ("A", "AA", "AAAA"):
        with pytest.raises(InvalidCursor):
            Cursor.decode(token + extra, KEY)


def test_cursor_signed_for_another_purpose_is_refused() -> None:
    body = raw_of(sample().encode(KEY))[:-TAG_BYTES]
    plain_hmac = hmac.digest(KEY, body, "sha256")[:TAG_BYTES]  # no domain separation
    refused(token_of(body + plain_hmac), CursorProblem.BAD_SIGNATURE)


# -- garbage --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("", CursorProblem.MALFORMED),
        (None, CursorProblem.MALFORMED),
        (b"AQ", CursorProblem.MALFORMED),
        ("not a cursor", CursorProblem.MALFORMED),
        ("abc=", CursorProblem.MALFORMED),
        ("abc+/", CursorProblem.MALFORMED),
        ("\uff21\uff42\uff43", CursorProblem.MALFORMED),  # fullwidth "Abc"
        ("abcd\n", CursorProblem.MALFORMED),
        ("A", CursorProblem.MALFORMED),
        ("AQID", CursorProblem.MALFORMED),
        ("A" * (MAX_TOKEN_CHARS + 1), CursorProblem.TOO_LARGE),
        ("A" * 40, CursorProblem.UNSUPPORTED_VERSION),
        ("_" * 40, CursorProblem.UNSUPPORTED_VERSION),
    ],
)
def test_garbage_is_refused(token: object, problem: CursorProblem) -> None:
    refused(token, problem)


@given(st.text(max_size=300))
def test_arbitrary_text_is_refused_cleanly(token: str) -> None:
    with pytest.raises(InvalidCursor):
        Cursor.decode(token, KEY)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_cleanly(raw: bytes) -> None:
    with pytest.raises(InvalidCursor):
        Cursor.decode(token_of(raw), KEY)


def test_unknown_version_is_refused_even_when_signed() -> None:
    body = raw_of(sample().encode(KEY))[1:-TAG_BYTES]
    refused(signed_token(body, version=2), CursorProblem.UNSUPPORTED_VERSION)


def test_invalid_cursor_error() -> None:
    with pytest.raises(InvalidCursor) as caught:
        Cursor.decode("garbage!", KEY)
    error = caught.value
    assert isinstance(error, StreamError)
    assert isinstance(error, GatewayError)
    assert error.code == "invalid_cursor"
    assert error.retriable is False


# -- signed but invalid bodies (a key holder's bug must still not get through) ---------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\xc1", CursorProblem.MALFORMED),
        (msgpack.packb([EPOCH, []]) + b"\x00", CursorProblem.MALFORMED),
        ({"epoch": EPOCH}, CursorProblem.MALFORMED),
        ([EPOCH], CursorProblem.MALFORMED),
        ([EPOCH, {}], CursorProblem.MALFORMED),
        ([EPOCH, [["t", [0, 1]], 5]], CursorProblem.MALFORMED),
        ([EPOCH, [["t", [0, 1, 2]]]], CursorProblem.MALFORMED),
        ([EPOCH, [["t", []]]], CursorProblem.MALFORMED),
        ([EPOCH, [["t", [0, 1]], ["t", [1, 1]]]], CursorProblem.MALFORMED),
        ([EPOCH, [["t", [0, 1, 0, 2]]]], CursorProblem.MALFORMED),
        (["", []], CursorProblem.MALFORMED),
        (["an epoch", []], CursorProblem.MALFORMED),
        (["x" * 129, []], CursorProblem.MALFORMED),
        ([7, []], CursorProblem.MALFORMED),
        ([EPOCH, [["t", [0, -1]]]], CursorProblem.INVALID_POSITION),
        ([EPOCH, [["t", [-1, 0]]]], CursorProblem.INVALID_POSITION),
        ([EPOCH, [["t", [0, 2**64 - 1]]]], CursorProblem.INVALID_POSITION),
        ([EPOCH, [["t", [2**31, 0]]]], CursorProblem.INVALID_POSITION),
        ([EPOCH, [["t", [True, 0]]]], CursorProblem.INVALID_POSITION),
        ([EPOCH, [["t", [0, 1.5]]]], CursorProblem.INVALID_POSITION),
        ([EPOCH, [["t", [0, "1"]]]], CursorProblem.INVALID_POSITION),
        ([EPOCH, [["../etc", [0, 1]]]], CursorProblem.INVALID_POSITION),
        ([EPOCH, [["", [0, 1]]]], CursorProblem.INVALID_POSITION),
        ([EPOCH, [[b"t", [0, 1]]]], CursorProblem.INVALID_POSITION),
        ([EPOCH, [[f"t{i}", [0, 1]] for i in range(MAX_TOPICS + 1)]], CursorProblem.TOO_LARGE),
        (
            [EPOCH, [["t", [n for p in range(MAX_PARTITIONS + 1) for n in (p, 0)]]]],
            CursorProblem.TOO_LARGE,
        ),
    ],
)
def test_signed_but_invalid_bodies_are_refused(body: object, problem: CursorProblem) -> None:
    refused(signed_token(body), problem)


def test_signed_valid_body_in_any_order_decodes_canonically() -> None:
    token = signed_token([EPOCH, [["order.events", [2, 7]], ["inventory.events", [1, 0, 0, 10]]]])
    decoded = Cursor.decode(token, KEY)
    assert decoded == sample()
    assert decoded.encode(KEY) == sample().encode(KEY)


# -- construction, keys, limits -------------------------------------------------------------


@pytest.mark.parametrize(
    ("positions", "problem"),
    [
        ({"t": {0: -1}}, CursorProblem.INVALID_POSITION),
        ({"t": {-1: 0}}, CursorProblem.INVALID_POSITION),
        ({"t": {0: MAX_OFFSET + 1}}, CursorProblem.INVALID_POSITION),
        ({"bad topic": {0: 1}}, CursorProblem.INVALID_POSITION),
        ({"t" * 250: {0: 1}}, CursorProblem.INVALID_POSITION),
        ({f"t{i}": {0: 1} for i in range(MAX_TOPICS + 1)}, CursorProblem.TOO_LARGE),
        ({"t": dict.fromkeys(range(MAX_PARTITIONS + 1), 0)}, CursorProblem.TOO_LARGE),
    ],
)
def test_constructor_validates(positions: dict[str, dict[int, int]], problem: str) -> None:
    with pytest.raises(InvalidCursor) as caught:
        Cursor(EPOCH, positions)
    assert caught.value.reason == problem


@pytest.mark.parametrize("epoch", ["", "has space", "é", "x" * 129])
def test_constructor_validates_epoch(epoch: str) -> None:
    with pytest.raises(InvalidCursor):
        Cursor(Epoch(epoch))


def test_empty_topics_are_dropped() -> None:
    assert Cursor(EPOCH, {"t": {}}) == Cursor(EPOCH)
    assert Cursor.decode(Cursor(EPOCH).encode(KEY), KEY).topics == frozenset()


def test_too_large_to_encode_is_refused_at_encoding() -> None:
    huge = {f"t{i}": {p: MAX_OFFSET for p in range(MAX_PARTITIONS)} for i in range(4)}
    with pytest.raises(InvalidCursor) as caught:
        Cursor(EPOCH, huge).encode(KEY)
    assert caught.value.reason == CursorProblem.TOO_LARGE


@pytest.mark.parametrize("key", [b"", b"short", b"x" * 15, "a str key of enough length"])
def test_short_or_non_bytes_keys_are_a_config_error(key: bytes) -> None:
    with pytest.raises(ConfigError):
        sample().encode(key)
    with pytest.raises(ConfigError):
        CursorCodec(KEY, previous_keys=[key])


@given(st.binary(min_size=16, max_size=200), st.binary(max_size=100))
def test_tag_is_hmac_sha256(key: bytes, body: bytes) -> None:
    token = signed_token(body, key=key)
    raw = raw_of(token)
    assert _Signer(key).tag(raw[:-TAG_BYTES]) == raw[-TAG_BYTES:]


# -- reading and moving ---------------------------------------------------------------------


def test_position() -> None:
    cursor = sample()
    assert cursor.position("inventory.events", 0) == 10
    assert cursor.position("inventory.events", 5) is None
    assert cursor.position("user.events", 0) is None
    assert cursor.topics == {"inventory.events", "order.events"}
    assert list(cursor.entries()) == [
        ("inventory.events", 0, 10),
        ("inventory.events", 1, 0),
        ("order.events", 2, 7),
    ]


def test_positions_is_a_copy() -> None:
    cursor = sample()
    cursor.positions["inventory.events"][0] = KafkaOffset(99)
    assert cursor.position("inventory.events", 0) == 10


def test_advance_moves_to_the_next_offset() -> None:
    cursor = sample()
    moved = cursor.advance("inventory.events", 0, KafkaOffset(10))
    assert moved.position("inventory.events", 0) == 11
    assert cursor.position("inventory.events", 0) == 10  # immutable
    assert moved.advance("inventory.events", 0, KafkaOffset(10)) is moved
    assert moved.advance("inventory.events", 0, KafkaOffset(3)) is moved
    fresh = moved.advance("user.events", 4, KafkaOffset(0))
    assert fresh.position("user.events", 4) == 1
    assert fresh.advance("user.events", 1, KafkaOffset(8)).position("user.events", 1) == 9


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 2), st.integers(0, 50))))
def test_advance_is_monotonic(steps: list[tuple[str, int, int]]) -> None:
    cursor = Cursor(EPOCH)
    highest: dict[tuple[str, int], int] = {}
    for topic, partition, offset in steps:
        before = cursor.position(topic, partition)
        cursor = cursor.advance(topic, partition, KafkaOffset(offset))
        after = cursor.position(topic, partition)
        assert after is not None
        assert before is None or after >= before
        highest[topic, partition] = max(highest.get((topic, partition), -1), offset)
    assert {(t, p): o - 1 for t, p, o in cursor.entries()} == highest


@pytest.mark.parametrize(
    ("topic", "partition", "offset"),
    [("t", 0, -1), ("t", 0, MAX_OFFSET), ("t", -1, 0), ("no/slash", 0, 0), ("t", 0, True)],
)
def test_advance_validates(topic: str, partition: int, offset: int) -> None:
    with pytest.raises(InvalidCursor):
        sample().advance(topic, partition, KafkaOffset(offset))


def test_advance_respects_the_limits() -> None:
    full = Cursor(EPOCH, {f"t{i}": {0: 0} for i in range(MAX_TOPICS)})
    with pytest.raises(InvalidCursor):
        full.advance("another", 0, KafkaOffset(0))
    wide = Cursor(EPOCH, {"t": dict.fromkeys(range(MAX_PARTITIONS), 0)})
    with pytest.raises(InvalidCursor):
        wide.advance("t", MAX_PARTITIONS, KafkaOffset(0))
    assert wide.advance("t", 0, KafkaOffset(5)).position("t", 0) == 6


def test_restricted_to() -> None:
    cursor = sample().restricted_to(["order.events", "user.events"])
    assert cursor.topics == {"order.events"}
    assert cursor.epoch == EPOCH
    assert cursor.position("order.events", 2) == 7
    assert sample().restricted_to([]).topics == frozenset()


def test_equality() -> None:
    assert sample() == Cursor(EPOCH, {"order.events": {2: 7}, "inventory.events": {1: 0, 0: 10}})
    assert sample() != sample().advance("order.events", 2, KafkaOffset(7))
    assert sample() != Cursor(Epoch("other"), sample().positions)
    assert sample() != "a cursor"
    assert len({sample(), Cursor(EPOCH, sample().positions)}) == 1
    assert "inventory.events" in repr(sample())


def test_derive_epoch() -> None:
    ids = {"inventory.events": "t-1", "order.events": "t-2"}
    assert derive_epoch("cluster-1", ids) == EPOCH
    assert derive_epoch("cluster-1", dict(reversed(ids.items()))) == EPOCH
    assert derive_epoch("cluster-2", ids) != EPOCH
    assert derive_epoch("cluster-1", {**ids, "order.events": "t-3"}) != EPOCH
    assert len(EPOCH) == 16
    Cursor(EPOCH)  # a valid epoch


def test_advance_to_a_consumer_position() -> None:
    cursor = sample().advance_to("order.events", 2, KafkaOffset(12))  # past a marker at 11
    assert cursor.position("order.events", 2) == 12
    assert cursor.advance_to("order.events", 2, KafkaOffset(12)) is cursor
    assert cursor.advance_to("order.events", 2, KafkaOffset(9)) is cursor
    assert cursor.advance_to("user.events", 0, KafkaOffset(0)).position("user.events", 0) == 0
    with pytest.raises(InvalidCursor):
        cursor.advance_to("order.events", 2, KafkaOffset(-1))


def test_advance_many() -> None:
    page_positions = {
        ("inventory.events", 0): KafkaOffset(15),
        ("inventory.events", 1): KafkaOffset(0),
        ("order.events", 2): KafkaOffset(3),  # behind: stays at 7
        ("order.events", 5): KafkaOffset(4),
    }
    cursor = sample().advance_many(page_positions)
    assert cursor.positions == {
        "inventory.events": {0: 15, 1: 0},
        "order.events": {2: 7, 5: 4},
    }
    assert sample().advance_many({}) == sample()


def test_a_token_kept_on_a_cursor_is_its_codecs_only() -> None:
    """The token cached on a cursor object (live subscribers share one) belongs to the codec
    that made it: another key's codec signs afresh; equal cursors share a hash and token."""
    one, two = CursorCodec(b"1" * 32), CursorCodec(b"2" * 32)
    cursor = Cursor(Epoch("e1"), {"t": {0: 5}}).advance("t", 1, KafkaOffset(7))
    token_one = one.encode(cursor)
    token_two = two.encode(cursor)
    assert token_one != token_two
    assert one.encode(cursor) == token_one
    assert one.decode(token_one) == cursor
    assert two.decode(token_two) == cursor
    twin = Cursor(Epoch("e1"), {"t": {0: 5, 1: 8}})
    assert hash(twin) == hash(cursor)
    assert {cursor: 1}[twin] == 1
    assert one.encode(twin) == token_one
