"""Randomized authorization against a real gateway process: thousands of channel names
(other users', wildcards, look-alike characters, malformed), with no cursor, the holder's own
cursor, another user's cursor or a garbage one; and publishes with other sources and event
types. Zero foreign updates delivered, zero foreign publishes accepted, and the gateway's
decision always equals the authorization core's."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from gateway.core.authz import Principal
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.factories import inventory_updated, order_placed
from tests.integration.auth_tokens import Keys
from tests.integration.gateway_client import streaming_gateway
from tests.integration.kafka_topics import TestTopics

pytestmark = pytest.mark.integration

JSON_PROTOCOL = Subprotocol("sync-gateway.v1.json")
A_CHANNELS = ["orders:{sub}", "inventory:s-1"]
ALLOWED = {"orders:user-a", "inventory:s-1"}
SEEDED = {"orders:user-a": 3, "orders:user-b": 3, "inventory:s-1": 3, "inventory:s-2": 3}


@dataclass
class World:
    gateway: GatewayProcess
    keys: Keys
    token_a: str
    principal_a: Principal
    cursors: list[str]
    """Valid cursors of every seeded channel, from before and after its updates."""


def _order(user: str) -> dict[str, Any]:
    event = order_placed(f"o-{uuid.uuid4().hex[:8]}", source=user)
    event["payload"]["userId"] = user
    return event


def _stock(store: str, warehouse: str) -> dict[str, Any]:
    return inventory_updated(store) | {"source": warehouse}


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _now_cursor(http: httpx.Client, token: str, channel: str) -> str:
    """A cursor at the current end of ``channel``."""
    answer = http.get(
        "/v1/changes", params={"channel": channel, "wait": "0"}, headers=_headers(token)
    )
    assert answer.status_code == 200, answer.text
    cursor: str = answer.json()["cursor"]
    return cursor


def _follow(http: httpx.Client, token: str, channel: str, cursor: str, count: int) -> str:
    """Long-poll ``channel`` after ``cursor`` until ``count`` updates came; the cursor after."""
    seen = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        params = {"channel": channel, "wait": "2", "cursor": cursor}
        answer = http.get("/v1/changes", params=params, headers=_headers(token))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        seen += len(body["events"])
        cursor = body["cursor"]
        if seen >= count:
            return cursor
    raise TimeoutError(f"{channel}: {seen} of {count} updates")


@pytest.fixture(scope="module")
def world(kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    keys = Keys.make(tmp_path_factory.mktemp("keys"))
    settings_ = (
        TestTopics().settings(kafka_broker.bootstrap)
        | keys.settings()
        | {"rate_limit_requests_per_s": "0", "rate_limit_events_per_s": "0"}
    )
    with (
        streaming_gateway(tmp_path_factory.mktemp("gw"), settings_) as gw,
        httpx.Client(base_url=gw.url, timeout=30) as http,
    ):
        token_a = keys.token("user-a", channels=A_CHANNELS)
        token_b = keys.token("user-b")
        warehouse = keys.token("warehouse-1", channels=["inventory:*"], publish=["Inventory.*"])
        start = {
            "orders:user-a": _now_cursor(http, token_a, "orders:user-a"),
            "orders:user-b": _now_cursor(http, token_b, "orders:user-b"),
            "inventory:s-1": _now_cursor(http, warehouse, "inventory:s-1"),
            "inventory:s-2": _now_cursor(http, warehouse, "inventory:s-2"),
        }
        for token, events in (
            (token_a, [_order("user-a") for _ in range(3)]),
            (token_b, [_order("user-b") for _ in range(3)]),
            (warehouse, [_stock(s, "warehouse-1") for s in ("s-1", "s-2") for _ in range(3)]),
        ):
            answer = http.post("/v1/events", json={"events": events}, headers=_headers(token))
            assert answer.status_code == 200
            assert answer.json()["accepted"] == len(events)
        end = {
            channel: _follow(
                http,
                token_b
                if "user-b" in channel
                else warehouse
                if channel.startswith("inventory")
                else token_a,
                channel,
                cursor,
                3,
            )
            for channel, cursor in start.items()
        }
        cursors = [*start.values(), *end.values()]
        claims = keys.claims("user-a", channels=A_CHANNELS)
        yield World(gw, keys, token_a, Principal.from_claims(claims), cursors)


LOOK_ALIKES = [
    "user-a",
    "user-b",
    "USER-A",
    "user-\u0430",  # Cyrillic a
    "user\u2010a",  # Unicode hyphen
    "user-a\u200b",  # zero-width space
    "user-a ",
    " user-a",
    "user-a\x00",
    "user-a/../user-b",
    "user-a%2F",
    "s-1",
    "s-2",
    "S-1",
    "s-1*",
    "s-*",
    "*",
    "**",
    "{sub}",
    "",
    "user-a:user-b",
]
FAMILIES = ["orders", "inventory", "Orders", "order", "inventory ", "\uff4frders", "*", "", "users"]
SEPARATORS = [":", "::", "\uff1a", "", " :"]

channel_names = st.one_of(
    st.builds(
        lambda f, s, n: f + s + n,
        st.sampled_from(FAMILIES),
        st.sampled_from(SEPARATORS),
        st.sampled_from(LOOK_ALIKES),
    ),
    st.sampled_from(sorted(SEEDED)),
    st.builds(
        lambda f, n: f"{f}:{n}",
        st.sampled_from(["orders", "inventory"]),
        st.sampled_from(LOOK_ALIKES),
    ),
    st.from_regex(r"(orders|inventory|users):[A-Za-z0-9][A-Za-z0-9._~-]{0,20}", fullmatch=True),
    st.text(max_size=40),
    st.text(alphabet="orderinvtyus:-*{}abs12", max_size=24),
)


def _channel_of(update: dict[str, Any]) -> str:
    payload = update["data"]["payload"]
    if "userId" in payload:
        return f"orders:{payload['userId']}"
    return f"inventory:{payload['storeId']}"


class Session:
    """User A's websocket, driving subscriptions one at a time. A connection that used up its
    error budget (closed with 1008) is replaced by a new one."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self._stack = contextlib.ExitStack()
        self.ws = self._connect()
        self.n = 0
        self.reconnects = 0

    def _connect(self) -> ClientConnection:
        self._stack.close()
        headers = _headers(self.token)
        return self._stack.enter_context(
            connect(self.url, subprotocols=[JSON_PROTOCOL], additional_headers=headers)
        )

    def close(self) -> None:
        self._stack.close()

    def recv(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(self.ws.recv(timeout=30))
        return frame

    def attempt(self, channel: str, cursor: str | None) -> tuple[str, list[dict[str, Any]]]:
        """Subscribe; ("subscribed", updates until live) or ("error:<code>", [])."""
        for _ in range(2):
            try:
                return self._attempt(channel, cursor)
            except ConnectionClosed:
                assert self.ws.close_code == 1008, self.ws.close_code  # the error budget
                self.ws = self._connect()
                self.reconnects += 1
        raise AssertionError("two connections closed during one attempt")

    def _attempt(self, channel: str, cursor: str | None) -> tuple[str, list[dict[str, Any]]]:
        self.n += 1
        sub = f"s{self.n}"
        subscribe = {"type": "subscribe", "sub": sub, "channel": channel, "cursor": cursor}
        self.ws.send(json.dumps(subscribe))
        updates: list[dict[str, Any]] = []
        for _ in range(1000):
            frame = self.recv()
            if frame.get("sub") != sub:
                continue
            if frame["type"] == "error":
                return f"error:{frame['code']}", []
            if frame["type"] == "events":
                updates += frame["events"]
            elif frame["type"] in ("live", "reset"):
                break
        self.ws.send(json.dumps({"type": "unsubscribe", "sub": sub}))
        for _ in range(1000):
            frame = self.recv()
            if frame.get("sub") == sub and frame["type"] == "events":
                updates += frame["events"]
            if frame.get("sub") == sub and frame["type"] == "unsubscribed":
                break
        return "subscribed", updates


def test_no_channel_name_or_cursor_reaches_foreign_updates(world: World, long_run: bool) -> None:
    stats: Counter[str] = Counter()
    url = world.gateway.url.replace("http://", "ws://") + "/v1/stream"
    garbage = ["garbage", world.cursors[0][:-2], world.cursors[-1] + "A"]
    cursors = st.sampled_from([None, *world.cursors, *garbage])
    session = Session(url, world.token_a)
    try:

        @settings(
            max_examples=20_000 if long_run else 2_500,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(channel=channel_names, cursor=cursors)
        def attempt(channel: str, cursor: str | None) -> None:
            outcome, updates = session.attempt(channel, cursor)
            allowed = world.principal_a.may_subscribe(channel)
            stats["attempts"] += 1
            if outcome == "subscribed":
                stats["subscribed"] += 1
                assert allowed, f"subscribed to {channel!r}, which the token does not allow"
                assert channel in ALLOWED
            else:
                stats[outcome] += 1
                bad_cursor = cursor in garbage
                assert not allowed or (bad_cursor and outcome == "error:invalid_cursor"), (
                    channel,
                    outcome,
                )
            for update in updates:
                stats["delivered"] += 1
                if _channel_of(update) != channel or channel not in ALLOWED:
                    stats["foreign"] += 1

        attempt()
    finally:
        session.close()
    assert stats["foreign"] == 0, stats
    # the run exercised both sides: refusals, and subscriptions that delivered updates
    assert stats["subscribed"] > 10, stats
    assert stats["error:forbidden"] > 100, stats
    assert stats["delivered"] > 0, stats


SOURCES = [
    "user-a",
    "user-b",
    "User-a",
    "user-\u0430",
    "user-a ",
    "*",
    "warehouse-1",
    "user-a\u200b",
]
EVENT_TYPES = ["Order.Placed", "Inventory.Updated", "Order.Cancelled", "Payment.Completed"]


def test_no_foreign_publish_is_accepted(world: World, long_run: bool) -> None:
    stats: Counter[str] = Counter()
    with httpx.Client(base_url=world.gateway.url, timeout=30) as http:

        @settings(max_examples=2_000 if long_run else 300, deadline=None, database=None)
        @given(
            batch=st.lists(
                st.tuples(
                    st.sampled_from(EVENT_TYPES),
                    st.one_of(st.sampled_from(SOURCES), st.text(max_size=12)),
                ),
                min_size=1,
                max_size=8,
            )
        )
        def publish(batch: list[tuple[str, str]]) -> None:
            events = []
            for event_type, source in batch:
                event = _order("user-a") if event_type.startswith("Order") else _stock("s-1", "x")
                event.update(event_type=event_type, source=source)
                events.append(event)
            answer = http.post(
                "/v1/events", json={"events": events}, headers=_headers(world.token_a)
            )
            assert answer.status_code == 200, answer.text
            for (event_type, source), result in zip(batch, answer.json()["results"], strict=True):
                allowed = world.principal_a.may_publish(event_type, source)
                stats["allowed" if allowed else "forbidden"] += 1
                if result["status"] == "accepted":
                    stats["accepted"] += 1
                    if not allowed:
                        stats["foreign_accepted"] += 1
                elif not allowed:
                    assert result["error"]["code"] in ("publish_forbidden", "invalid_envelope")

        publish()
    assert stats["foreign_accepted"] == 0, stats
    assert stats["accepted"] > 0, stats
    assert stats["forbidden"] > 100, stats
