"""Every recorded vector of ``tests/vectors/`` replayed from the client's side against the
sans-I/O :class:`~client_sdk.protocol.StreamSession`, plus its transition table and the
reconnect policy of ``docs/protocol.md`` §12.

The replay plays the fake server: each ``expect`` frame is encoded in the vector's encoding and
fed to :meth:`StreamSession.receive`; each ``send`` frame the session's API can build is built
with it and compared (decoded) with the vector's. Cursor bookkeeping is checked after every
``events`` and ``live`` frame, and every update's cursor is decoded with the vector's key to
check that it names the position right after that update.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest

from client_sdk.errors import LocalProtocolError, ProtocolViolation
from client_sdk.protocol import (
    TRANSITIONS,
    Ack,
    DontReconnect,
    ErrorEvent,
    Event,
    FrameKind,
    Live,
    Pong,
    Reconnect,
    ResetEvent,
    StreamSession,
    Subscribed,
    SubState,
    Unsubscribed,
    Update,
    reconnect_policy,
)
from gateway.core.cursor import CursorCodec

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
VECTOR_FILES = sorted(VECTORS.glob("*.json"))
CLIENT_FRAME_TYPES = {"subscribe", "unsubscribe", "publish", "ping"}


def encode(frame: object, encoding: str) -> str | bytes:
    if encoding == "json":
        return json.dumps(frame)
    packed: bytes = msgpack.packb(frame, use_bin_type=True)
    return packed


def decode(data: str | bytes, encoding: str) -> Any:
    if encoding == "json":
        assert isinstance(data, str)
        return json.loads(data)
    assert isinstance(data, bytes)
    return msgpack.unpackb(data, raw=False)


def api_form(frame: dict[str, Any]) -> dict[str, Any] | None:
    """The frame the session's API builds for the same request, or ``None`` when no API call
    means this frame (malformed on purpose: wrong types, missing fields, unknown types)."""
    kind = frame.get("type")
    if kind == "subscribe":
        sub, channel, cursor = frame.get("sub"), frame.get("channel"), frame.get("cursor")
        if isinstance(sub, str) and isinstance(channel, str) and isinstance(cursor, str | None):
            return {"type": "subscribe", "sub": sub, "channel": channel, "cursor": cursor or None}
    elif kind == "unsubscribe":
        if isinstance(frame.get("sub"), str):
            return {"type": "unsubscribe", "sub": frame["sub"]}
    elif kind == "publish":
        if isinstance(frame.get("req"), str) and isinstance(frame.get("events"), list):
            return {"type": "publish", "req": frame["req"], "events": frame["events"]}
    elif kind == "ping":
        return {"type": "ping"}
    return None


def build(session: StreamSession, frame: dict[str, Any]) -> str | bytes:
    """Build ``frame`` (in its API form) with the session's API."""
    match frame["type"]:
        case "subscribe":
            return session.subscribe(frame["sub"], frame["channel"], frame["cursor"])
        case "unsubscribe":
            return session.unsubscribe(frame["sub"])
        case "publish":
            return session.publish(frame["req"], frame["events"])
        case _:
            return session.ping()


@dataclass
class ClientReplay:
    """One vector played against one session."""

    vector: dict[str, Any]
    session: StreamSession = field(init=False)
    codec: CursorCodec = field(init=False)
    built: int = 0
    refused: int = 0
    expect_error_next: bool = False
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.session = StreamSession(self.vector["encoding"])
        self.codec = CursorCodec(self.vector["setup"]["cursor_key"].encode())

    @property
    def encoding(self) -> str:
        return str(self.vector["encoding"])

    def run(self) -> None:
        for step in self.vector["steps"]:
            if "send" in step:
                self.send(step["send"])
            elif "expect" in step:
                self.expect(step["expect"])
            elif "expect_close" in step:
                self.close(step["expect_close"])
            else:
                assert step.keys() & {"send_raw", "send_raw_hex", "inject", "sleep"}, step

    def send(self, frame: dict[str, Any]) -> None:
        wanted = api_form(frame)
        if wanted is None:
            return  # malformed on purpose: no SDK call sends it
        try:
            data = build(self.session, wanted)
        except LocalProtocolError:
            # the session refuses what the gateway refuses: the answer must be an error
            self.refused += 1
            self.expect_error_next = True
            return
        self.built += 1
        assert isinstance(data, str if self.encoding == "json" else bytes)
        assert decode(data, self.encoding) == wanted
        if wanted["type"] == "subscribe":
            assert self.session.cursor(wanted["sub"]) == wanted["cursor"]
            assert self.session.state(wanted["sub"]) is SubState.SUBSCRIBING

    def expect(self, frame: dict[str, Any]) -> None:
        if self.expect_error_next:
            assert frame["type"] == "error", (
                f"the session refused a frame the gateway took: {frame}"
            )
            self.expect_error_next = False
        sub = frame.get("sub")
        before = self.session.state(sub) if isinstance(sub, str) else None
        pending_cursor = self.session.cursor(sub) if isinstance(sub, str) else None
        got = self.session.receive(encode(frame, self.encoding))
        self.events += got
        self.check(frame, got, before, pending_cursor)

    def check(
        self,
        frame: dict[str, Any],
        got: list[Event],
        before: SubState | None,
        pending_cursor: str | None,
    ) -> None:
        kind = frame["type"]
        sub = str(frame.get("sub"))
        if kind == "events":
            assert [type(e) for e in got] == [Update] * len(frame["events"])
            channel = self.session.channel(sub)
            for update, raw in zip(got, frame["events"], strict=True):
                assert isinstance(update, Update)
                assert (update.sub, update.channel) == (sub, channel)
                assert (update.topic, update.partition, update.offset) == (
                    raw["topic"],
                    raw["partition"],
                    raw["offset"],
                )
                assert (update.key, update.timestamp, update.data, update.cursor) == (
                    raw["key"],
                    raw["timestamp"],
                    raw["data"],
                    raw["cursor"],
                )
                position = self.codec.decode(update.cursor)
                assert position.epoch == self.vector["setup"]["epoch"]
                assert position.position(update.topic, update.partition) == update.offset + 1
            assert self.session.cursor(sub) == frame["events"][-1]["cursor"]
        elif kind == "live":
            assert got == [Live(sub, self.session.channel(sub) or "", frame["cursor"])]
            assert self.session.cursor(sub) == frame["cursor"]
            assert self.session.state(sub) in (SubState.LIVE, SubState.CLOSING_LIVE)
            assert self.codec.decode(frame["cursor"]).epoch == self.vector["setup"]["epoch"]
        elif kind == "subscribed":
            assert got == [Subscribed(sub, frame["channel"])]
            assert self.session.state(sub) is SubState.REPLAYING
        elif kind == "reset":
            assert got == [ResetEvent(sub, frame["channel"], frame["reason"])]
            assert self.session.cursor(sub) is None  # dropped: re-snapshot
            assert self.session.state(sub) is SubState.ENDED
        elif kind == "unsubscribed":
            assert len(got) == 1
            assert isinstance(got[0], Unsubscribed)
            assert (got[0].sub, got[0].reason) == (sub, frame["reason"])
            assert self.session.state(sub) is SubState.ENDED  # forgotten, id free
        elif kind == "ack":
            assert len(got) == 1
            assert isinstance(got[0], Ack)
            assert got[0].req == frame["req"]
            assert [(r.index, r.status, r.event_id, r.error) for r in got[0].results] == [
                (r["index"], r["status"], r.get("event_id"), r.get("error"))
                for r in frame["results"]
            ]
        elif kind == "error":
            self.check_error(frame, got, before, pending_cursor)
        else:
            assert got == [Pong()]

    def check_error(
        self,
        frame: dict[str, Any],
        got: list[Event],
        before: SubState | None,
        pending_cursor: str | None,
    ) -> None:
        assert len(got) == 1
        error = got[0]
        assert isinstance(error, ErrorEvent)
        assert (error.code, error.sub, error.req) == (
            frame["code"],
            frame.get("sub"),
            frame.get("req"),
        )
        if before is SubState.SUBSCRIBING:
            # the subscribe was refused: it is gone, and its cursor is named to be dropped
            assert self.session.state(frame["sub"]) is SubState.ENDED
            assert error.cursor == pending_cursor
        elif before is not None:
            assert self.session.state(frame["sub"]) is before  # e.g. duplicate: it goes on

    def close(self, code: int) -> None:
        policy = reconnect_policy(code)
        if code in (1007, 1008, 1009):
            assert isinstance(policy, DontReconnect)
        else:
            assert isinstance(policy, Reconnect)
            assert policy.only_when_needed == (code == 4000)


@pytest.mark.parametrize("path", VECTOR_FILES, ids=[p.stem for p in VECTOR_FILES])
def test_vector_replays_from_the_client_side(path: Path) -> None:
    vector = json.loads(path.read_text())
    assert vector["name"] == path.stem
    replay = ClientReplay(vector)
    replay.run()
    assert not replay.expect_error_next, "a refused frame got no error"
    sends = [s["send"] for s in vector["steps"] if "send" in s]
    buildable = [s for s in sends if api_form(s) is not None]
    assert replay.built + replay.refused == len(buildable)
    assert replay.session.pending_publishes == 0


def test_every_vector_is_replayed_and_most_sends_are_built_by_the_api() -> None:
    assert len(VECTOR_FILES) >= 30
    built = refused = 0
    for path in VECTOR_FILES:
        replay = ClientReplay(json.loads(path.read_text()))
        replay.run()
        built, refused = built + replay.built, refused + replay.refused
    assert built >= 50
    assert refused >= 5  # the session refuses bad ids, bad channels and ids in use itself


# -- the transition table ---------------------------------------------------------------------


def json_frame(**frame: Any) -> str:
    return json.dumps(frame)


UPDATE = {
    "topic": "inventory.events",
    "partition": 0,
    "offset": 3,
    "key": "s1:SKU-1",
    "timestamp": 1763719200003,
    "data": {"event_id": "e-1"},
    "cursor": "AZKi-x",
}


def subscribed_session(state: SubState = SubState.REPLAYING) -> StreamSession:
    session = StreamSession("json")
    session.subscribe("a", "inventory:s1", None)
    if state is SubState.SUBSCRIBING:
        return session
    session.receive(json_frame(type="subscribed", sub="a", channel="inventory:s1"))
    if state in (SubState.LIVE, SubState.CLOSING_LIVE):
        session.receive(json_frame(type="live", sub="a", cursor="AZKi-live"))
    if state in (SubState.CLOSING_LIVE, SubState.CLOSING_REPLAYING):
        session.unsubscribe("a")
    assert session.state("a") is state
    return session


SERVER_FRAMES: dict[FrameKind, str] = {
    FrameKind.SUBSCRIBED: json_frame(type="subscribed", sub="a", channel="inventory:s1"),
    FrameKind.EVENTS: json_frame(type="events", sub="a", events=[UPDATE]),
    FrameKind.LIVE: json_frame(type="live", sub="a", cursor="AZKi-y"),
    FrameKind.RESET: json_frame(type="reset", sub="a", channel="inventory:s1", reason="x"),
    FrameKind.UNSUBSCRIBED: json_frame(type="unsubscribed", sub="a", reason="unsubscribed"),
}
LIVE_STATES = [s for s in SubState if s is not SubState.ENDED]


@pytest.mark.parametrize("state", LIVE_STATES, ids=[s.value for s in LIVE_STATES])
@pytest.mark.parametrize("kind", list(SERVER_FRAMES), ids=[k.value for k in SERVER_FRAMES])
def test_server_frames_follow_the_transition_table(state: SubState, kind: FrameKind) -> None:
    session = subscribed_session(state)
    target = TRANSITIONS.get((state, kind))
    if target is None:
        with pytest.raises(ProtocolViolation):
            session.receive(SERVER_FRAMES[kind])
        with pytest.raises(ProtocolViolation, match="already failed"):
            session.receive(json_frame(type="pong"))  # a failed session stays failed
    else:
        session.receive(SERVER_FRAMES[kind])
        assert session.state("a") is target


@pytest.mark.parametrize("kind", list(SERVER_FRAMES), ids=[k.value for k in SERVER_FRAMES])
def test_frames_of_an_unknown_subscription_are_violations(kind: FrameKind) -> None:
    with pytest.raises(ProtocolViolation, match="unknown or ended"):
        StreamSession("json").receive(SERVER_FRAMES[kind])


def test_frames_after_the_final_frame_are_violations() -> None:
    session = subscribed_session(SubState.LIVE)
    session.receive(SERVER_FRAMES[FrameKind.RESET])
    with pytest.raises(ProtocolViolation, match="unknown or ended"):
        session.receive(SERVER_FRAMES[FrameKind.EVENTS])


def test_a_second_live_is_a_violation() -> None:
    session = subscribed_session(SubState.LIVE)
    with pytest.raises(ProtocolViolation, match="live for subscription 'a', which is live"):
        session.receive(SERVER_FRAMES[FrameKind.LIVE])


def test_an_error_refusing_a_subscribe_ends_it_and_names_its_cursor() -> None:
    session = StreamSession("msgpack")
    session.subscribe("a", "inventory:s1", "AZKi-stored")
    frame = {"type": "error", "code": "invalid_cursor", "message": "bad_signature", "sub": "a"}
    (error,) = session.receive(msgpack.packb(frame))
    assert error == ErrorEvent(
        "invalid_cursor", "bad_signature", "a", None, "inventory:s1", "AZKi-stored"
    )
    assert session.subscriptions == {}
    session.subscribe("a", "inventory:s1", None)  # the id is free again


def test_client_calls_the_protocol_does_not_allow_raise_and_send_nothing() -> None:
    session = subscribed_session(SubState.SUBSCRIBING)
    with pytest.raises(LocalProtocolError, match="subscribing"):
        session.subscribe("a", "inventory:s2")  # id in use
    with pytest.raises(LocalProtocolError, match="subscribing"):
        session.unsubscribe("a")  # not subscribed yet
    with pytest.raises(LocalProtocolError, match="unknown or ended"):
        session.unsubscribe("b")
    for sub, channel in [("bad id!", "inventory:s1"), ("", "inventory:s1"), ("b", "../etc")]:
        with pytest.raises(LocalProtocolError):
            session.subscribe(sub, channel)
    with pytest.raises(LocalProtocolError):
        session.publish("r 1", [])
    assert session.subscriptions == {"a": SubState.SUBSCRIBING}


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1]",
        '{"type": "pong", "n": NaN}',
        b'{"type": "pong"}',
        json_frame(type="teleport"),
        json_frame(type="ack", req="nobody", results=[]),
        json_frame(type="events", sub="a", events=[]),
        json_frame(type="events", sub="a", events=[{**UPDATE, "offset": "3"}]),
        json_frame(type="events", sub="a", events=[{**UPDATE, "partition": True}]),
        json_frame(
            type="events", sub="a", events=[{k: v for k, v in UPDATE.items() if k != "key"}]
        ),
        json_frame(type="live", sub="a", cursor=None),
        json_frame(type="subscribed", sub="a", channel="inventory:s2"),
        json_frame(type="error", code="x"),
    ],
)
def test_malformed_server_frames_are_violations(frame: str | bytes) -> None:
    session = subscribed_session(SubState.SUBSCRIBING)
    if '"subscribed"' not in str(frame):
        session.receive(SERVER_FRAMES[FrameKind.SUBSCRIBED])
    with pytest.raises(ProtocolViolation):
        session.receive(frame)


def test_msgpack_session_refuses_text_frames_and_sends_binary() -> None:
    session = StreamSession("msgpack")
    assert session.subprotocol == "sync-gateway.v1.msgpack"
    assert msgpack.unpackb(session.ping()) == {"type": "ping"}
    with pytest.raises(ProtocolViolation, match="text frame"):
        session.receive('{"type": "pong"}')


def test_acks_and_errors_answer_publishes() -> None:
    session = StreamSession("json")
    session.publish("r1", [{"event_id": "x"}])
    session.publish("r1", [])
    assert session.pending_publishes == 2
    session.receive(json_frame(type="ack", req="r1", results=[]))
    session.receive(json_frame(type="error", code="unavailable", message="m", req="r1"))
    assert session.pending_publishes == 0
    with pytest.raises(ProtocolViolation, match="no publish is waiting"):
        session.receive(json_frame(type="ack", req="r1", results=[]))


# -- the reconnect policy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (None, Reconnect(None)),
        (1000, Reconnect(1000, only_when_needed=True)),
        (1001, Reconnect(1001, reset_backoff=True)),
        (1006, Reconnect(1006)),
        (1011, Reconnect(1011)),
        (1012, Reconnect(1012, reset_backoff=True)),
        (4000, Reconnect(4000, only_when_needed=True)),
        (4001, Reconnect(4001)),
        (4999, Reconnect(4999)),
    ],
)
def test_reconnect_policy_reconnects(code: int | None, expected: Reconnect) -> None:
    assert reconnect_policy(code) == expected


@pytest.mark.parametrize("code", [1007, 1008, 1009])
def test_reconnect_policy_does_not_loop_on_client_bugs(code: int) -> None:
    policy = reconnect_policy(code)
    assert isinstance(policy, DontReconnect)
    assert (policy.retry_after_s is not None) == (code == 1008)
