"""Stream cursors: the Kafka positions a client has applied, as an opaque, signed, URL-safe token.

A :class:`Cursor` is an :data:`~gateway.core.ids.Epoch` plus, per topic and partition, the *next*
Kafka offset the client needs (one past the last record it applied). It names Kafka positions,
never local row ids, so it means the same thing on every gateway instance and after restarts.
Whether its epoch is still the current one is not checked here: a cursor from another history
decodes fine and then gets a ``reset`` (:mod:`gateway.core.replay`).

Token format, version 1: ``base64url`` without padding of ::

    0x01 | body | tag
    body = msgpack([epoch, [[topic, [partition, next_offset, partition, next_offset, ...]], ...]])
    tag  = HMAC-SHA256(key, b"sync-gateway/cursor\\0" | 0x01 | body), first 16 bytes

Topics and partitions are written sorted, so one cursor has exactly one token per key. The tag
makes a cursor unforgeable: a client cannot invent, widen or move one without the server-side
key, and every gateway instance given the same key accepts the others' cursors. Keys can be
rotated: a :class:`CursorCodec` signs with its current key and also accepts previous ones.

Decoding trusts nothing: a token over :data:`MAX_TOKEN_CHARS`, not base64url, of an unknown
version, with a wrong tag, or that names more than :data:`MAX_TOPICS` topics,
:data:`MAX_PARTITIONS` partitions per topic, an invalid topic name, or a partition or offset out
of Kafka's ranges raises :class:`~gateway.errors.InvalidCursor`, whose ``reason`` is a
:class:`CursorProblem`. Every token :meth:`CursorCodec.encode` produces decodes again.

Encoding is on the hot path (every ``event`` frame carries a cursor), so a cursor caches the
packed bytes of each topic and :meth:`Cursor.advance` re-packs only the topic that moved.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from functools import lru_cache
from itertools import chain
from typing import Final

import msgpack

from gateway.core.ids import Epoch, KafkaOffset
from gateway.errors import ConfigError, InvalidCursor

FORMAT_VERSION: Final = 1
"""The first byte of every token this module writes."""

MAX_TOKEN_CHARS: Final = 8192
"""Longest token accepted or produced (fits a URL query string)."""

MAX_TOPICS: Final = 64
"""Most topics one cursor may name."""

MAX_PARTITIONS: Final = 1024
"""Most partitions one cursor may name per topic."""

MAX_EPOCH_CHARS: Final = 128
"""Longest epoch string (printable ASCII, no spaces)."""

MIN_KEY_BYTES: Final = 16
"""Shortest signing key accepted (a configuration error below that)."""

MAX_PARTITION: Final = 2**31 - 1
"""Kafka partition ids are non-negative int32."""

MAX_OFFSET: Final = 2**63 - 1
"""Kafka offsets are non-negative int64."""

TAG_BYTES: Final = 16
"""HMAC-SHA256 truncated to 128 bits."""

_MAC_CONTEXT: Final = b"sync-gateway/cursor\x00"
_VERSION_BYTE: Final = bytes([FORMAT_VERSION])
_TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")
_EPOCH_TEXT: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_EPOCH_CHARS}}}")
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+")


class CursorProblem(StrEnum):
    """Why a token or cursor was refused: the ``reason`` of :class:`InvalidCursor`."""

    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    UNSUPPORTED_VERSION = "unsupported_version"
    BAD_SIGNATURE = "bad_signature"
    INVALID_POSITION = "invalid_position"


def _refuse(problem: CursorProblem, message: str) -> InvalidCursor:
    return InvalidCursor(problem, message)


def _check_topic(topic: object) -> str:
    if not isinstance(topic, str) or _TOPIC_NAME.fullmatch(topic) is None:
        raise _refuse(CursorProblem.INVALID_POSITION, f"invalid topic name {topic!r:.80}")
    return topic


def _check_partition(partition: object) -> int:
    if type(partition) is not int:  # exactly int: bool is an int to Python and msgpack alike
        raise _refuse(CursorProblem.INVALID_POSITION, f"invalid partition {partition!r:.40}")
    if not 0 <= partition <= MAX_PARTITION:
        raise _refuse(CursorProblem.INVALID_POSITION, f"partition {partition} out of range")
    return partition


def _check_offset(offset: object, limit: int = MAX_OFFSET) -> KafkaOffset:
    if type(offset) is not int:
        raise _refuse(CursorProblem.INVALID_POSITION, f"invalid offset {offset!r:.40}")
    if not 0 <= offset <= limit:
        raise _refuse(CursorProblem.INVALID_POSITION, f"offset {offset} out of range")
    return KafkaOffset(offset)


def _check_epoch(epoch: object) -> Epoch:
    if not isinstance(epoch, str) or _EPOCH_TEXT.fullmatch(epoch) is None:
        raise _refuse(CursorProblem.MALFORMED, "invalid epoch")
    return Epoch(epoch)


def _array_header(length: int) -> bytes:
    """msgpack's header of an array of ``length`` items (fixarray or array 16)."""
    return bytes([0x90 | length]) if length < 16 else b"\xdc" + length.to_bytes(2, "big")


class _Signer:
    """HMAC-SHA256(key, context | signed), truncated; the keyed state is prepared once and
    copied per tag (the standard library's ``hmac`` object supports ``copy()``; its one-shot
    ``hmac.digest`` sets the key up again on every call, and costs more)."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"a cursor key must be bytes, at least {MIN_KEY_BYTES} of them")
        self._keyed = hmac.new(key, _MAC_CONTEXT, hashlib.sha256)

    def tag(self, signed: bytes) -> bytes:
        """The first :data:`TAG_BYTES` of HMAC-SHA256(key, context | signed)."""
        mac = self._keyed.copy()
        mac.update(signed)
        return mac.digest()[:TAG_BYTES]


class Cursor:
    """An epoch plus the next Kafka offset per (topic, partition); immutable, compared by value.

    A (topic, partition) the cursor does not name has no position (:meth:`position` returns
    ``None``); what that means is the subscription's decision (see :mod:`gateway.core.replay`).
    """

    __slots__ = ("_epoch", "_hash", "_packed", "_positions", "_token")

    _epoch: Epoch
    _positions: dict[str, dict[int, KafkaOffset]]  # sorted by topic, then partition; never mutated
    _packed: dict[str, bytes]  # cache: topic -> msgpack of [topic, flat positions]
    _hash: int | None  # cache: the cursor is immutable
    _token: tuple[CursorCodec, str] | None  # cache: the last codec's token of this cursor

    def __init__(self, epoch: Epoch, positions: Mapping[str, Mapping[int, int]] | None = None):
        """Validate and copy; raise :class:`InvalidCursor` for out-of-range or oversize input.

        Topics with no partitions are dropped.
        """
        copied: dict[str, dict[int, KafkaOffset]] = {}
        for topic, partitions in (positions or {}).items():
            if not partitions:
                continue
            if len(partitions) > MAX_PARTITIONS:
                raise _refuse(CursorProblem.TOO_LARGE, f"more than {MAX_PARTITIONS} partitions")
            copied[_check_topic(topic)] = dict(
                sorted((_check_partition(p), _check_offset(o)) for p, o in partitions.items())
            )
        if len(copied) > MAX_TOPICS:
            raise _refuse(CursorProblem.TOO_LARGE, f"more than {MAX_TOPICS} topics")
        self._epoch = _check_epoch(epoch)
        self._positions = dict(sorted(copied.items()))
        self._packed = {}
        self._hash = None
        self._token = None

    @classmethod
    def _trusted(
        cls,
        epoch: Epoch,
        positions: dict[str, dict[int, KafkaOffset]],
        packed: dict[str, bytes],
    ) -> Cursor:
        cursor = cls.__new__(cls)
        cursor._epoch = epoch
        cursor._positions = positions
        cursor._packed = packed
        cursor._hash = None
        cursor._token = None
        return cursor

    # -- reading --------------------------------------------------------------------------

    @property
    def epoch(self) -> Epoch:
        """The history this cursor's positions belong to."""
        return self._epoch

    @property
    def topics(self) -> frozenset[str]:
        """The topics the cursor names a position in."""
        return frozenset(self._positions)

    @property
    def positions(self) -> dict[str, dict[int, KafkaOffset]]:
        """A copy of topic -> partition -> next offset."""
        return {topic: dict(parts) for topic, parts in self._positions.items()}

    def position(self, topic: str, partition: int) -> KafkaOffset | None:
        """The next offset the client needs in this partition, or None if the cursor has none."""
        parts = self._positions.get(topic)
        return None if parts is None else parts.get(partition)

    def entries(self) -> Iterator[tuple[str, int, KafkaOffset]]:
        """Every (topic, partition, next offset), sorted by topic then partition."""
        for topic, parts in self._positions.items():
            for partition, offset in parts.items():
                yield topic, partition, offset

    # -- deriving -------------------------------------------------------------------------

    def advance(self, topic: str, partition: int, offset: KafkaOffset) -> Cursor:
        """The cursor after the client applied the record at ``offset``: position ``offset + 1``.

        Monotonic: a record before the current position leaves the cursor as it is (the same
        object is returned), so a record delivered twice never moves a cursor back.
        """
        following = _check_offset(offset, MAX_OFFSET - 1) + 1
        return self.advance_to(topic, partition, KafkaOffset(following))

    def advance_to(self, topic: str, partition: int, next_offset: KafkaOffset) -> Cursor:
        """The cursor with its position in this partition moved forward to ``next_offset``.

        For consumer positions, which pass offsets that hold no record for the client
        (transaction markers, aborted records, records of other channels). Monotonic like
        :meth:`advance`: a position at or behind the current one returns the same cursor.
        """
        following = _check_offset(next_offset)
        parts = self._positions.get(topic)
        current = None if parts is None else parts.get(partition)
        if current is not None and current >= following:
            return self
        positions = dict(self._positions)  # other topics' maps are shared: never mutated
        if parts is None:
            _check_topic(topic)
            _check_partition(partition)
            if len(positions) >= MAX_TOPICS:
                raise _refuse(CursorProblem.TOO_LARGE, f"more than {MAX_TOPICS} topics")
            positions[topic] = {partition: following}
            positions = dict(sorted(positions.items()))
        elif current is None:
            _check_partition(partition)
            if len(parts) >= MAX_PARTITIONS:
                raise _refuse(CursorProblem.TOO_LARGE, f"more than {MAX_PARTITIONS} partitions")
            positions[topic] = dict(sorted({**parts, partition: following}.items()))
        else:
            positions[topic] = {**parts, partition: following}  # keeps the key order
        packed = {t: b for t, b in self._packed.items() if t != topic}
        return Cursor._trusted(self._epoch, positions, packed)

    def advance_many(self, positions: Mapping[tuple[str, int], int]) -> Cursor:
        """:meth:`advance_to` for each ``(topic, partition) -> next offset`` (e.g. a log page's)."""
        cursor = self
        for (topic, partition), next_offset in positions.items():
            cursor = cursor.advance_to(topic, partition, KafkaOffset(next_offset))
        return cursor

    def restricted_to(self, topics: Iterable[str]) -> Cursor:
        """The same cursor naming only its positions in ``topics``."""
        keep = set(topics)
        return Cursor._trusted(
            self._epoch,
            {t: parts for t, parts in self._positions.items() if t in keep},
            {t: b for t, b in self._packed.items() if t in keep},
        )

    # -- the token ------------------------------------------------------------------------

    def encode(self, key: bytes) -> str:
        """The cursor as an opaque URL-safe token signed with ``key`` (see :class:`CursorCodec`)."""
        return _codec(key).encode(self)

    @classmethod
    def decode(cls, token: str, key: bytes) -> Cursor:
        """The cursor a token names; raise :class:`InvalidCursor` unless ``key`` signed it."""
        return _codec(key).decode(token)

    def _body(self) -> bytes:
        """msgpack of ``[epoch, [[topic, [partition, offset, ...]], ...]]`` from cached pieces."""
        pieces = [b"\x92", msgpack.packb(self._epoch), _array_header(len(self._positions))]
        for topic, parts in self._positions.items():
            packed = self._packed.get(topic)
            if packed is None:
                packed = msgpack.packb([topic, list(chain.from_iterable(parts.items()))])
                self._packed[topic] = packed
            pieces.append(packed)
        return b"".join(pieces)

    @classmethod
    def _from_body(cls, body: bytes) -> Cursor:
        try:
            decoded = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
        except (ValueError, TypeError, msgpack.UnpackException, RecursionError):
            raise _refuse(CursorProblem.MALFORMED, "the cursor body is not msgpack") from None
        if not (isinstance(decoded, list) and len(decoded) == 2):
            raise _refuse(CursorProblem.MALFORMED, "the cursor body is not [epoch, positions]")
        epoch, topics = decoded
        if not isinstance(topics, list):
            raise _refuse(CursorProblem.MALFORMED, "the cursor positions are not a list")
        if len(topics) > MAX_TOPICS:
            raise _refuse(CursorProblem.TOO_LARGE, f"more than {MAX_TOPICS} topics")
        positions: dict[str, dict[int, KafkaOffset]] = {}
        for entry in topics:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list)):
                raise _refuse(CursorProblem.MALFORMED, "a cursor topic entry is malformed")
            topic, flat = _check_topic(entry[0]), entry[1]
            if not flat or len(flat) % 2:
                raise _refuse(CursorProblem.MALFORMED, "a cursor partition list is malformed")
            if len(flat) > 2 * MAX_PARTITIONS:
                raise _refuse(CursorProblem.TOO_LARGE, f"more than {MAX_PARTITIONS} partitions")
            if topic in positions:
                raise _refuse(CursorProblem.MALFORMED, "a topic appears twice in the cursor")
            if not all(type(n) is int for n in flat):
                raise _refuse(CursorProblem.INVALID_POSITION, "a position is not an integer")
            partitions, offsets = flat[0::2], flat[1::2]
            if min(partitions) < 0 or max(partitions) > MAX_PARTITION:
                raise _refuse(CursorProblem.INVALID_POSITION, "a partition is out of range")
            if min(offsets) < 0 or max(offsets) > MAX_OFFSET:
                raise _refuse(CursorProblem.INVALID_POSITION, "an offset is out of range")
            parts = dict(sorted(zip(partitions, offsets, strict=True)))
            if len(parts) != len(partitions):
                raise _refuse(CursorProblem.MALFORMED, "a partition appears twice in the cursor")
            positions[topic] = parts
        return cls._trusted(_check_epoch(epoch), dict(sorted(positions.items())), {})

    # -- value semantics ------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if not isinstance(other, Cursor):
            return NotImplemented
        return self._epoch == other._epoch and self._positions == other._positions

    def __hash__(self) -> int:
        cached = self._hash
        if cached is None:
            cached = self._hash = hash((self._epoch, tuple(self.entries())))
        return cached

    def __repr__(self) -> str:
        return f"Cursor({self._epoch!r}, {self._positions!r})"


class CursorCodec:
    """Turns cursors into signed tokens and back, with a server-side key.

    Every instance of the fleet must be given the same ``key`` for cursors to work across
    instances. ``previous_keys`` are still accepted when decoding (key rotation: deploy the new
    key with the old one as previous, then drop the old one once its cursors have aged out).
    """

    __slots__ = ("_signer", "_tokens", "_tokens_max", "_verifiers")

    def __init__(
        self, key: bytes, previous_keys: Iterable[bytes] = (), *, cache_size: int = 65536
    ) -> None:
        """Prepare the keys; raise :class:`~gateway.errors.ConfigError` for a short key.

        ``cache_size`` bounds the tokens remembered by body: live subscribers of a channel
        soon share one position per partition, so one token serves many of them."""
        self._signer = _Signer(key)
        self._verifiers = (self._signer, *(_Signer(k) for k in previous_keys))
        self._tokens: dict[bytes, str] = {}
        self._tokens_max = cache_size

    def encode(self, cursor: Cursor) -> str:
        """The cursor's token: deterministic, URL-safe, at most :data:`MAX_TOKEN_CHARS`.

        The token is also kept on the cursor object: live subscribers of a channel share one
        cursor object per position (see :mod:`gateway.flows.fanout`), so it is built once."""
        cached = cursor._token
        if cached is not None and cached[0] is self:
            return cached[1]
        body = cursor._body()
        token = self._tokens.get(body)
        if token is None:
            token = self._sign(body)
            if len(self._tokens) >= self._tokens_max:
                self._tokens.clear()  # cheaper than LRU bookkeeping on the hot path
            self._tokens[body] = token
        cursor._token = (self, token)
        return token

    def _sign(self, body: bytes) -> str:
        signed = _VERSION_BYTE + body
        raw = signed + self._signer.tag(signed)
        token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        if len(token) > MAX_TOKEN_CHARS:
            raise _refuse(CursorProblem.TOO_LARGE, f"token over {MAX_TOKEN_CHARS} characters")
        return token

    def decode(self, token: str) -> Cursor:
        """The cursor a token names; raise :class:`InvalidCursor` unless our keys signed it."""
        if not isinstance(token, str) or not token:
            raise _refuse(CursorProblem.MALFORMED, "the cursor is not a non-empty string")
        if len(token) > MAX_TOKEN_CHARS:
            raise _refuse(CursorProblem.TOO_LARGE, f"cursor over {MAX_TOKEN_CHARS} characters")
        if _BASE64URL.fullmatch(token) is None:
            raise _refuse(CursorProblem.MALFORMED, "the cursor is not base64url")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise _refuse(CursorProblem.MALFORMED, "the cursor is not base64url") from None
        if len(raw) < 1 + 1 + TAG_BYTES:
            raise _refuse(CursorProblem.MALFORMED, "the cursor is too short")
        if raw[0] != FORMAT_VERSION:
            raise _refuse(CursorProblem.UNSUPPORTED_VERSION, f"unknown cursor version {raw[0]}")
        signed, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
        if not any(hmac.compare_digest(tag, v.tag(signed)) for v in self._verifiers):
            raise _refuse(CursorProblem.BAD_SIGNATURE, "the cursor was not issued by this service")
        return Cursor._from_body(signed[1:])


@lru_cache(maxsize=8)
def _codec(key: bytes) -> CursorCodec:
    return CursorCodec(key)


def derive_epoch(cluster_id: str, topic_ids: Mapping[str, str]) -> Epoch:
    """A short epoch naming one history: a Kafka cluster and the ids of the streamed topics.

    Re-creating a topic gives it a new id, so the epoch changes and older cursors get a reset.
    Pass the same topics on every instance (e.g. all configured downstream topics): the epoch is
    a hash, so it cannot tell which topic changed, and cursors of every topic reset together.
    """
    canonical = json.dumps([cluster_id, sorted(topic_ids.items())], separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()[:12]
    return Epoch(base64.urlsafe_b64encode(digest).decode("ascii"))
