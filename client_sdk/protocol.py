"""The client side of the sync gateway's stream protocol (``WS /v1/stream``), sans I/O.

``docs/protocol.md`` is the specification; the recorded frame sequences under
``tests/vectors/`` are replayed against this module from the client's side.

Like python-websockets' protocol objects and h11, a :class:`StreamSession` does no I/O at all:
no sockets, no asyncio, no clock. The caller moves bytes, the session turns them into typed
events and keeps the protocol's bookkeeping::

    session = StreamSession("msgpack")              # subprotocol sync-gateway.v1.msgpack
    ws.send(session.subscribe("s1", "inventory:S1", stored_cursor))
    for event in session.receive(ws.recv()):        # one websocket message = one frame
        match event:
            case Update(): ...                      # apply, then persist event.cursor
            case Live(): ...                        # persist event.cursor
            case ResetEvent(): ...                  # drop the cursor, re-snapshot
    policy = reconnect_policy(close_code)           # after the connection closed

Per subscription the session runs the state machine of the protocol's section 7, written as
one transition table (:data:`TRANSITIONS`)::

    SUBSCRIBING --subscribed--> REPLAYING --live--> LIVE
    REPLAYING / LIVE --unsubscribe (sent)--> CLOSING_REPLAYING / CLOSING_LIVE
    SUBSCRIBING --error--> ended;  any subscribed state --reset | unsubscribed--> ended

A server frame the table does not allow (``events`` for an unknown or ended subscription, a
second ``live``, a ``subscribed`` nobody asked for, a malformed frame) raises
:class:`ProtocolViolation`, after which the session is unusable: close the connection and
start over with a new session. A client call the protocol does not allow (reusing a ``sub`` id
still in use, an invalid id or channel name) raises :class:`LocalProtocolError` and sends
nothing.

Direct answers are matched leniently: an ``error`` may name any ``sub`` or ``req`` (or none),
and a ``pong`` is accepted at any time. An ``ack`` must answer a ``publish`` of this session.

The session also remembers the last cursor received per subscription (:meth:`StreamSession.
cursor`): the subscribe cursor, then each update's, then the ``live`` one. It is what the
connection has *received*; persisting a cursor only after its update is applied is the
caller's job (see :mod:`client_sdk.subscriber`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from client_sdk.errors import LocalProtocolError, ProtocolError, ProtocolViolation
from client_sdk.events import (
    Ack,
    AckResult,
    ErrorEvent,
    Event,
    Live,
    Pong,
    ResetEvent,
    Subscribed,
    Unsubscribed,
    Update,
)
from client_sdk.frames import (
    SUBPROTOCOLS,
    Encoding,
    check_channel,
    check_id,
    decode_frame,
    encode_frame,
    optional_field,
    parse_ack_result,
    parse_update,
    required_field,
)
from client_sdk.reconnect import (
    DontReconnect,
    Reconnect,
    ReconnectPolicy,
    handshake_policy,
    reconnect_policy,
)

__all__ = [
    "TRANSITIONS",
    "Ack",
    "AckResult",
    "DontReconnect",
    "ErrorEvent",
    "Event",
    "FrameKind",
    "Live",
    "LocalProtocolError",
    "Pong",
    "ProtocolError",
    "ProtocolViolation",
    "Reconnect",
    "ReconnectPolicy",
    "ResetEvent",
    "StreamSession",
    "SubState",
    "Subscribed",
    "Unsubscribed",
    "Update",
    "handshake_policy",
    "reconnect_policy",
]

# -- errors ---------------------------------------------------------------------------------


# ProtocolViolation and LocalProtocolError live in the SDK's error tree (client_sdk.errors).


# -- the subscription state machine ---------------------------------------------------------


class SubState(Enum):
    """Where one subscription is (ended subscriptions are forgotten: their id is free)."""

    SUBSCRIBING = "subscribing"
    REPLAYING = "replaying"
    LIVE = "live"
    CLOSING_REPLAYING = "closing_replaying"
    CLOSING_LIVE = "closing_live"
    ENDED = "ended"


class FrameKind(Enum):
    """What moves a subscription: frames the client sends and frames the server sends."""

    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    SUBSCRIBED = "subscribed"
    EVENTS = "events"
    LIVE = "live"
    RESET = "reset"
    UNSUBSCRIBED = "unsubscribed"
    ERROR = "error"


_S = SubState
_K = FrameKind
TRANSITIONS: Final[Mapping[tuple[SubState, FrameKind], SubState]] = {
    (_S.ENDED, _K.SUBSCRIBE): _S.SUBSCRIBING,
    (_S.SUBSCRIBING, _K.SUBSCRIBED): _S.REPLAYING,
    (_S.SUBSCRIBING, _K.ERROR): _S.ENDED,  # the subscribe was refused
    (_S.REPLAYING, _K.EVENTS): _S.REPLAYING,
    (_S.REPLAYING, _K.LIVE): _S.LIVE,
    (_S.REPLAYING, _K.RESET): _S.ENDED,
    (_S.REPLAYING, _K.UNSUBSCRIBED): _S.ENDED,
    (_S.REPLAYING, _K.UNSUBSCRIBE): _S.CLOSING_REPLAYING,
    (_S.REPLAYING, _K.ERROR): _S.REPLAYING,  # e.g. duplicate_subscription: it goes on
    (_S.LIVE, _K.EVENTS): _S.LIVE,
    (_S.LIVE, _K.RESET): _S.ENDED,
    (_S.LIVE, _K.UNSUBSCRIBED): _S.ENDED,
    (_S.LIVE, _K.UNSUBSCRIBE): _S.CLOSING_LIVE,
    (_S.LIVE, _K.ERROR): _S.LIVE,
    # after an unsubscribe, frames already on their way may still arrive
    (_S.CLOSING_REPLAYING, _K.EVENTS): _S.CLOSING_REPLAYING,
    (_S.CLOSING_REPLAYING, _K.LIVE): _S.CLOSING_LIVE,
    (_S.CLOSING_REPLAYING, _K.RESET): _S.ENDED,
    (_S.CLOSING_REPLAYING, _K.UNSUBSCRIBED): _S.ENDED,
    (_S.CLOSING_REPLAYING, _K.ERROR): _S.CLOSING_REPLAYING,
    (_S.CLOSING_LIVE, _K.EVENTS): _S.CLOSING_LIVE,
    (_S.CLOSING_LIVE, _K.RESET): _S.ENDED,
    (_S.CLOSING_LIVE, _K.UNSUBSCRIBED): _S.ENDED,
    (_S.CLOSING_LIVE, _K.ERROR): _S.CLOSING_LIVE,
}
"""Every legal move of a subscription; anything else is illegal. Client moves that are not
here raise :class:`LocalProtocolError`, server moves :class:`ProtocolViolation`. An ``error``
naming a subscription the session does not hold is legal and moves nothing."""


@dataclass(slots=True)
class _Subscription:
    channel: str
    cursor: str | None
    state: SubState = SubState.SUBSCRIBING


# -- the session ----------------------------------------------------------------------------


class StreamSession:
    """One websocket connection's protocol state, from the client's side.

    ``encoding`` is ``"json"`` (text frames) or ``"msgpack"`` (binary frames); offer
    ``SUBPROTOCOLS[encoding]`` (:mod:`client_sdk.frames`) in the handshake. Methods that build
    a client frame return it ready to send (``str`` for JSON, ``bytes`` for msgpack);
    :meth:`receive` parses one server frame into events. A session lives as long as its
    connection.
    """

    def __init__(self, encoding: Encoding = "msgpack") -> None:
        if encoding not in SUBPROTOCOLS:
            raise ValueError(f"unknown encoding {encoding!r}")
        self.encoding: Encoding = encoding
        self._subs: dict[str, _Subscription] = {}
        self._pending_publishes: Counter[str] = Counter()
        self._pings = 0
        self._broken: ProtocolViolation | None = None

    @property
    def subprotocol(self) -> str:
        """The websocket subprotocol of this session's encoding."""
        return SUBPROTOCOLS[self.encoding]

    # -- bookkeeping ------------------------------------------------------------------------

    def state(self, sub: str) -> SubState:
        """The state of subscription ``sub`` (``ENDED`` for an unknown id)."""
        held = self._subs.get(sub)
        return held.state if held is not None else SubState.ENDED

    def channel(self, sub: str) -> str | None:
        """The channel of subscription ``sub``, while it is held."""
        held = self._subs.get(sub)
        return held.channel if held is not None else None

    def cursor(self, sub: str) -> str | None:
        """The last cursor received for ``sub`` (its subscribe cursor before any update);
        ``None`` once the subscription ended, or when it started from now and is not live."""
        held = self._subs.get(sub)
        return held.cursor if held is not None else None

    @property
    def subscriptions(self) -> dict[str, SubState]:
        """The subscriptions held, by id."""
        return {sub: held.state for sub, held in self._subs.items()}

    @property
    def pending_publishes(self) -> int:
        """How many ``publish`` frames still wait for their ``ack`` or ``error``."""
        return sum(self._pending_publishes.values())

    # -- client frames ----------------------------------------------------------------------

    def subscribe(self, sub: str, channel: str, cursor: str | None = None) -> str | bytes:
        """A ``subscribe`` frame: follow ``channel`` under id ``sub`` after ``cursor``
        (``None`` or ``""``: from now). ``sub`` must not be in use on this session."""
        check_id("sub", sub)
        check_channel(channel)
        if cursor is not None and not isinstance(cursor, str):
            raise LocalProtocolError("a cursor is a string or None")
        self._move(sub, FrameKind.SUBSCRIBE, local=True)
        self._subs[sub] = _Subscription(channel, cursor or None)
        return encode_frame(
            self.encoding,
            {"type": "subscribe", "sub": sub, "channel": channel, "cursor": cursor or None},
        )

    def unsubscribe(self, sub: str) -> str | bytes:
        """An ``unsubscribe`` frame for a subscription that has been ``subscribed``."""
        check_id("sub", sub)
        self._subs[sub].state = self._move(sub, FrameKind.UNSUBSCRIBE, local=True)
        return encode_frame(self.encoding, {"type": "unsubscribe", "sub": sub})

    def publish(self, req: str, events: Sequence[Any]) -> str | bytes:
        """A ``publish`` frame of event envelopes (validated by the gateway, per event)."""
        check_id("req", req)
        if isinstance(events, str | bytes | Mapping):
            raise LocalProtocolError("events is a sequence of envelopes")
        frame = encode_frame(self.encoding, {"type": "publish", "req": req, "events": list(events)})
        self._pending_publishes[req] += 1
        return frame

    def ping(self) -> str | bytes:
        """An application-level ``ping`` (answered by a ``pong``)."""
        self._pings += 1
        return encode_frame(self.encoding, {"type": "ping"})

    # -- server frames ----------------------------------------------------------------------

    def receive(self, frame: str | bytes) -> list[Event]:
        """The events of one server frame (one websocket message), in order.

        Raises :class:`ProtocolViolation` for anything the protocol does not allow; the
        session is unusable afterwards (close the connection, start a new session).
        """
        if self._broken is not None:
            raise ProtocolViolation(f"the session already failed: {self._broken}")
        try:
            return self._receive(decode_frame(self.encoding, frame))
        except ProtocolViolation as violation:
            self._broken = violation
            raise

    def _receive(self, frame: dict[str, Any]) -> list[Event]:
        kind = frame["type"]
        if kind == "events":
            return list(self._on_events(frame))
        if kind == "live":
            sub = required_field(frame, "sub", str)
            cursor = required_field(frame, "cursor", str)
            held = self._advance(sub, FrameKind.LIVE)
            held.cursor = cursor
            return [Live(sub, held.channel, cursor)]
        if kind == "subscribed":
            sub = required_field(frame, "sub", str)
            channel = required_field(frame, "channel", str)
            held = self._advance(sub, FrameKind.SUBSCRIBED)
            if channel != held.channel:
                raise ProtocolViolation(f"subscribed {sub!r} to {channel!r}, not {held.channel!r}")
            return [Subscribed(sub, channel)]
        if kind == "reset":
            sub = required_field(frame, "sub", str)
            channel = required_field(frame, "channel", str)
            reason = required_field(frame, "reason", str)
            held = self._advance(sub, FrameKind.RESET)
            if channel != held.channel:
                raise ProtocolViolation(f"reset of {sub!r} names {channel!r}")
            return [ResetEvent(sub, held.channel, reason)]
        if kind == "unsubscribed":
            sub = required_field(frame, "sub", str)
            reason = required_field(frame, "reason", str)
            held = self._advance(sub, FrameKind.UNSUBSCRIBED)
            return [Unsubscribed(sub, held.channel, reason)]
        if kind == "ack":
            return [self._on_ack(frame)]
        if kind == "error":
            return [self._on_error(frame)]
        if kind == "pong":
            self._pings = max(0, self._pings - 1)
            return [Pong()]
        raise ProtocolViolation(f"unknown server frame type {kind!r}")

    def _on_events(self, frame: dict[str, Any]) -> list[Update]:
        sub = required_field(frame, "sub", str)
        raw = required_field(frame, "events", list)
        if not raw:
            raise ProtocolViolation("an events frame carries at least one update")
        held = self._advance(sub, FrameKind.EVENTS)
        updates = [parse_update(sub, held.channel, item) for item in raw]
        held.cursor = updates[-1].cursor
        return updates

    def _on_ack(self, frame: dict[str, Any]) -> Ack:
        req = required_field(frame, "req", str)
        results = required_field(frame, "results", list)
        if self._pending_publishes[req] <= 0:
            raise ProtocolViolation(f"ack of {req!r}, which no publish is waiting for")
        self._pending_publishes[req] -= 1
        if self._pending_publishes[req] == 0:
            del self._pending_publishes[req]
        return Ack(req, tuple(parse_ack_result(r) for r in results))

    def _on_error(self, frame: dict[str, Any]) -> ErrorEvent:
        code = required_field(frame, "code", str)
        message = required_field(frame, "message", str)
        sub = optional_field(frame, "sub", str)
        req = optional_field(frame, "req", str)
        if req is not None and self._pending_publishes[req] > 0:
            self._pending_publishes[req] -= 1
            if self._pending_publishes[req] == 0:
                del self._pending_publishes[req]
        held = self._subs.get(sub) if sub is not None else None
        if sub is None or held is None:
            return ErrorEvent(code, message, sub, req)
        self._advance(sub, FrameKind.ERROR)
        if held.state is SubState.ENDED:
            # the error refused the pending subscribe: say which channel and cursor it concerned
            return ErrorEvent(code, message, sub, req, held.channel, held.cursor)
        return ErrorEvent(code, message, sub, req)

    # -- transitions ------------------------------------------------------------------------

    def _move(self, sub: str, kind: FrameKind, *, local: bool) -> SubState:
        """The state after ``kind`` for ``sub``, from :data:`TRANSITIONS`, or raise."""
        current = self.state(sub)
        target = TRANSITIONS.get((current, kind))
        if target is None:
            where = "unknown or ended" if current is SubState.ENDED else current.value
            message = f"{kind.value} for subscription {sub!r}, which is {where}"
            raise LocalProtocolError(message) if local else ProtocolViolation(message)
        return target

    def _advance(self, sub: str, kind: FrameKind) -> _Subscription:
        """Apply a server frame's move to ``sub``; the subscription (forgotten if it ended)."""
        target = self._move(sub, kind, local=False)
        held = self._subs[sub]
        if target is SubState.ENDED:
            del self._subs[sub]
        held.state = target
        return held
