"""The stream protocol of ``WS /v1/stream``, sans I/O: client frames in, server frames out.

``docs/protocol.md`` is the specification; this module is its one implementation on the gateway
side, and the recorded frame sequences under ``tests/vectors/`` are replayed against it.

Encodings, chosen by websocket subprotocol at the handshake (:func:`choose_subprotocol`):
``sync-gateway.v1.json`` (text frames, JSON objects; also the default when the client offers
no known subprotocol) and ``sync-gateway.v1.msgpack`` (binary frames, msgpack maps). Every frame
is one object with a ``type``; unknown fields are ignored, so both sides can add fields.

Client frames (:func:`parse_frame` turns one into a command or raises
:class:`~gateway.errors.FrameError`, whose ``error_code`` is an :class:`ErrorCode`)::

    {"type": "subscribe",   "sub": ID, "channel": CHANNEL, "cursor": TOKEN | null}
    {"type": "unsubscribe", "sub": ID}
    {"type": "publish",     "req": ID, "events": [ENVELOPE, ...]}
    {"type": "ping"}

Server frames (built by :class:`FrameWriter`)::

    {"type": "subscribed",   "sub": ID, "channel": CHANNEL}
    {"type": "events",       "sub": ID, "events": [UPDATE, ...]}
    {"type": "live",         "sub": ID, "cursor": TOKEN}
    {"type": "reset",        "sub": ID, "channel": CHANNEL, "reason": REASON}
    {"type": "unsubscribed", "sub": ID, "reason": TEXT}
    {"type": "ack",          "req": ID, "results": [RESULT, ...]}
    {"type": "error",        "code": CODE, "message": TEXT, "sub"?: ID, "req"?: ID}
    {"type": "pong"}

    UPDATE = {"topic", "partition", "offset", "key", "timestamp", "data", "cursor"}

``data`` is the record's value (the event envelope) as an object, ``null`` for a tombstone;
``cursor`` is the token to persist once that update is applied. Connection-level problems end
the connection with a :class:`CloseCode`.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Final, NamedTuple

import msgpack

from gateway.core.codec import refuse_json_constant
from gateway.errors import FrameError

SUBPROTOCOL_JSON: Final = "sync-gateway.v1.json"
SUBPROTOCOL_MSGPACK: Final = "sync-gateway.v1.msgpack"
ID_PATTERN: Final = r"[A-Za-z0-9._:-]{1,64}"
"""Grammar of the client-chosen ``sub`` and ``req`` ids."""

_ID: Final = re.compile(ID_PATTERN)


class Encoding(StrEnum):
    JSON = "json"
    MSGPACK = "msgpack"


_SUBPROTOCOLS: Final = {SUBPROTOCOL_JSON: Encoding.JSON, SUBPROTOCOL_MSGPACK: Encoding.MSGPACK}


def choose_subprotocol(offered: Sequence[str]) -> tuple[str | None, Encoding]:
    """The first known subprotocol the client offered (to echo in the handshake) and its
    encoding; ``(None, JSON)`` when it offered none we know."""
    for name in offered:
        encoding = _SUBPROTOCOLS.get(name.strip())
        if encoding is not None:
            return name.strip(), encoding
    return None, Encoding.JSON


class CloseCode(IntEnum):
    """Websocket close codes the gateway sends (``docs/protocol.md`` says what a client does)."""

    NORMAL = 1000
    SERVICE_RESTART = 1012
    """The gateway is shutting down (sent by the websocket layer): reconnect, to any
    instance, with the last cursors."""
    POLICY_VIOLATION = 1008
    """Too many refused frames: fix the client; do not reconnect in a loop."""
    MESSAGE_TOO_BIG = 1009
    """A frame over the size limit (sent by the websocket layer)."""
    INTERNAL_ERROR = 1011
    IDLE_TIMEOUT = 4000
    """No subscription and no frame for the idle timeout."""
    SLOW_CONSUMER = 4001
    """The client did not read fast enough and its send queue filled: reconnect, resume from
    the last cursor it persisted."""
    TOKEN_EXPIRED = 4003
    """The connection's token expired: reconnect with a fresh token, resume from the cursors."""


class ErrorCode(StrEnum):
    """The ``code`` of an ``error`` frame."""

    MALFORMED_FRAME = "malformed_frame"
    """Not an object of the connection's encoding (or a text frame on msgpack, or vice versa)."""
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    INVALID_CHANNEL = "invalid_channel"
    INVALID_CURSOR = "invalid_cursor"
    DUPLICATE_SUBSCRIPTION = "duplicate_subscription"
    UNKNOWN_SUBSCRIPTION = "unknown_subscription"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    FORBIDDEN = "forbidden"
    """The connection's token does not allow this channel."""
    RATE_LIMITED = "rate_limited"
    """Retriable: over the token subject's rate limit; slow down (the message says for how
    long). Counts against the error budget."""
    PUBLISH_REFUSED = "publish_refused"
    """The publish batch was refused as a whole (too many events, malformed): nothing stored."""
    UNAVAILABLE = "unavailable"
    """Retriable: the gateway cannot serve this now (e.g. its store is down); retry later."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    sub: str
    channel: str
    cursor: str | None
    """The token to resume after; ``None``: from now."""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    sub: str


@dataclass(frozen=True, slots=True)
class Publish:
    req: str
    events: list[object]


@dataclass(frozen=True, slots=True)
class Ping:
    pass


Command = Subscribe | Unsubscribe | Publish | Ping


def _decode(data: str | bytes, encoding: Encoding) -> object:
    if encoding is Encoding.JSON:
        if not isinstance(data, str):
            raise FrameError(ErrorCode.MALFORMED_FRAME, "binary frame on the JSON subprotocol")
        try:
            return json.loads(data, parse_constant=refuse_json_constant)
        except (ValueError, RecursionError) as exc:
            raise FrameError(ErrorCode.MALFORMED_FRAME, f"frame is not JSON: {exc}") from None
    if not isinstance(data, bytes):
        raise FrameError(ErrorCode.MALFORMED_FRAME, "text frame on the msgpack subprotocol")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise FrameError(
            ErrorCode.MALFORMED_FRAME, f"frame is not msgpack: {type(exc).__name__}"
        ) from None


def _id(frame: dict[str, object], field: str) -> str:
    value = frame.get(field)
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise FrameError(ErrorCode.INVALID_FIELD, f"{field!r} must match {ID_PATTERN}")
    return value


def parse_frame(data: str | bytes, encoding: Encoding) -> Command:
    """The command of one client frame; raise FrameError (with the ``sub``/``req`` it names,
    when valid) for anything else. The channel and cursor are checked by the caller."""
    frame = _decode(data, encoding)
    if not isinstance(frame, dict):
        raise FrameError(ErrorCode.MALFORMED_FRAME, "a frame must be an object with a 'type'")
    kind = frame.get("type")
    if kind == "subscribe":
        sub = _id(frame, "sub")
        channel, cursor = frame.get("channel"), frame.get("cursor")
        if not isinstance(channel, str):
            raise FrameError(ErrorCode.INVALID_CHANNEL, "'channel' must be a string", sub=sub)
        if cursor is not None and not isinstance(cursor, str):
            raise FrameError(ErrorCode.INVALID_CURSOR, "'cursor' must be a string", sub=sub)
        return Subscribe(sub, channel, cursor or None)
    if kind == "unsubscribe":
        return Unsubscribe(_id(frame, "sub"))
    if kind == "publish":
        req = _id(frame, "req")
        events = frame.get("events")
        if not isinstance(events, list):
            raise FrameError(ErrorCode.INVALID_FIELD, "'events' must be a list", req=req)
        return Publish(req, events)
    if kind == "ping":
        return Ping()
    shown = kind if isinstance(kind, str) else type(kind).__name__
    raise FrameError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {shown!r:.40}")


class UpdateView(NamedTuple):
    """One update as the writer needs it (the adapter fills it from a log record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    value: bytes
    """The record's value: a JSON envelope, or empty for a tombstone."""
    cursor: str


class FrameWriter:
    """Builds server frames in one encoding: ``str`` for JSON (text frames), ``bytes`` for
    msgpack (binary frames). ``events`` frames built from pieces (:meth:`events_of`) come as
    encoded bytes in both encodings.

    Record values are JSON already: the JSON writer embeds them without parsing; the msgpack
    writer parses each value once and keeps the latest ``cache_size`` of them, since one
    record usually goes to many subscribers. One writer serves every connection of an encoding.
    """

    def __init__(
        self, encoding: Encoding, cache_size: int = 4096, sub_cache_size: int = 65_536
    ) -> None:
        self.encoding = encoding
        self._cache: OrderedDict[tuple[str, int, int, bytes], object] = OrderedDict()
        self._cache_size = cache_size
        self._json_heads: dict[tuple[str, int, int, bytes], str] = {}
        self._sub_cache_size = sub_cache_size
        self._events_prefixes: dict[str, bytes] = {}

    def frame(self, obj: dict[str, object]) -> str | bytes:
        """Any server frame from a plain object."""
        if self.encoding is Encoding.JSON:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
        return packed

    def subscribed(self, sub: str, channel: str) -> str | bytes:
        return self.frame({"type": "subscribed", "sub": sub, "channel": channel})

    def live(self, sub: str, cursor: str) -> str | bytes:
        return self.frame({"type": "live", "sub": sub, "cursor": cursor})

    def reset(self, sub: str, channel: str, reason: str) -> str | bytes:
        return self.frame({"type": "reset", "sub": sub, "channel": channel, "reason": reason})

    def unsubscribed(self, sub: str, reason: str) -> str | bytes:
        return self.frame({"type": "unsubscribed", "sub": sub, "reason": reason})

    def ack(self, req: str, results: list[dict[str, object]]) -> str | bytes:
        return self.frame({"type": "ack", "req": req, "results": results})

    def pong(self) -> str | bytes:
        return self.frame({"type": "pong"})

    def error(self, error: FrameError | tuple[str, str]) -> str | bytes:
        """An ``error`` frame from a FrameError or a ``(code, message)`` pair."""
        if isinstance(error, FrameError):
            obj: dict[str, object] = {
                "type": "error",
                "code": error.error_code,
                "message": str(error),
            }
            if error.sub is not None:
                obj["sub"] = error.sub
            if error.req is not None:
                obj["req"] = error.req
            return self.frame(obj)
        return self.frame({"type": "error", "code": error[0], "message": error[1]})

    def events(self, sub: str, updates: Sequence[UpdateView]) -> str | bytes:
        """One ``events`` frame with the updates in order."""
        payload = self.events_of(sub, [self.update_piece(u) for u in updates])
        return payload.decode() if self.encoding is Encoding.JSON else payload

    def update_piece(self, u: UpdateView) -> bytes:
        """One update encoded as it goes in an ``events`` frame (JSON as UTF-8, or packed
        msgpack): a pure function of the update, so the caller may build it once for every
        subscriber that gets the same update and pass the pieces to :meth:`events_of`."""
        if self.encoding is Encoding.JSON:
            return self._update_json(u).encode()
        packed: bytes = msgpack.packb(self._objects((u,))[0], use_bin_type=True)
        return packed

    def events_of(self, sub: str, pieces: Sequence[bytes]) -> bytes:
        """:meth:`events` from the updates' :meth:`update_piece` (in order), encoded (UTF-8
        for JSON): the same frame."""
        prefix, separator, suffix = self.events_parts(sub, len(pieces))
        return b"".join((prefix, separator.join(pieces), suffix))

    def events_parts(self, sub: str, count: int) -> tuple[bytes, bytes, bytes]:
        """``(prefix, separator, suffix)`` of an ``events`` frame of ``count`` pieces:
        ``prefix + separator.join(pieces) + suffix`` is :meth:`events_of`, so a caller can
        join them with other bytes (a websocket header) in one copy. The part that names
        ``sub`` is kept per subscription id (up to ``sub_cache_size`` of them)."""
        prefix = self._events_prefixes.get(sub)
        if prefix is None:
            if self.encoding is Encoding.JSON:
                prefix = f'{{"type":"events","sub":{json.dumps(sub)},"events":['.encode()
            else:  # {"type": "events", "sub": sub, "events": [...]}
                prefix = _EVENTS_HEAD + msgpack.packb(sub, use_bin_type=True) + _MSGPACK_EVENTS_KEY
            if len(self._events_prefixes) >= self._sub_cache_size:
                self._events_prefixes.clear()
            self._events_prefixes[sub] = prefix
        if self.encoding is Encoding.JSON:
            return prefix, b",", b"]}"
        return prefix + _msgpack_array_header(count), b"", b""

    def _update_json(self, u: UpdateView) -> str:
        """:func:`_update_json`, with the part before the cursor kept per record: a record
        whose subscribers are at several cursors gets several pieces."""
        where = (u.topic, u.partition, u.offset, u.value)  # the value too: offsets repeat in
        head = self._json_heads.get(where)  # a re-created topic (bytes cache their hash)
        if head is None:
            head = _update_head(u)
            if len(self._json_heads) >= self._cache_size:
                self._json_heads.clear()
            self._json_heads[where] = head
        return f'{head}"{u.cursor}"}}'

    def changes(
        self,
        channel: str,
        updates: Sequence[UpdateView],
        cursor: str | None,
        *,
        live: bool,
        reset: str | None,
    ) -> str | bytes:
        """The answer of ``GET /v1/changes``: updates, the cursor after them, whether the
        subscription caught up, and the reset reason if its history is gone."""
        reset_obj = None if reset is None else {"reason": reset}
        if self.encoding is Encoding.JSON:
            head = json.dumps(
                {"channel": channel, "cursor": cursor, "live": live, "reset": reset_obj},
                separators=(",", ":"),
            )
            items = ",".join(map(_update_json, updates))
            return f'{head[:-1]},"events":[{items}]}}'
        return self.frame(
            {
                "channel": channel,
                "cursor": cursor,
                "live": live,
                "reset": reset_obj,
                "events": self._objects(updates),
            }
        )

    def _objects(self, updates: Sequence[UpdateView]) -> list[dict[str, object]]:
        return [
            {
                "topic": u.topic,
                "partition": u.partition,
                "offset": u.offset,
                "key": _key_text(u.key),
                "timestamp": u.timestamp_ms,
                "data": self._parsed(u),
                "cursor": u.cursor,
            }
            for u in updates
        ]

    def _parsed(self, u: UpdateView) -> object:
        if not u.value:
            return None
        where = (u.topic, u.partition, u.offset, u.value)
        cached = self._cache.get(where)
        if cached is None:
            cached = json.loads(u.value)
            self._cache[where] = cached
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return cached


_EVENTS_HEAD: Final = (
    b"\x83" + msgpack.packb("type") + msgpack.packb("events") + msgpack.packb("sub")
)
_MSGPACK_EVENTS_KEY: Final = msgpack.packb("events")


def _msgpack_array_header(length: int) -> bytes:
    """msgpack's header of an array of ``length`` items (fixarray, array 16 or array 32)."""
    if length < 16:
        return bytes([0x90 | length])
    if length < 1 << 16:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


def _update_json(u: UpdateView) -> str:
    """An update as JSON text, the value embedded as it is (it is JSON already)."""
    return f'{_update_head(u)}"{u.cursor}"}}'


def _update_head(u: UpdateView) -> str:
    """:func:`_update_json` up to the cursor's value (``...,"cursor":``). Strings go through
    the json module's C string encoders: ``json.dumps`` costs several times as much per call,
    and this runs for every record streamed."""
    data = u.value.decode(errors="replace") if u.value else "null"
    key = _key_text(u.key)
    key_json = "null" if key is None else encode_basestring(key)
    return (
        f'{{"topic":{encode_basestring_ascii(u.topic)},"partition":{u.partition},'
        f'"offset":{u.offset},"key":{key_json},"timestamp":{u.timestamp_ms},"data":{data},'
        '"cursor":'
    )


def _key_text(key: bytes | None) -> str | None:
    """A record key as text: keys are the envelopes' aggregate ids, UTF-8 strings; a key that
    is not UTF-8 (written by another producer) is sent as ``null``."""
    if key is None:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return None
