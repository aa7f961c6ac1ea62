"""Authentication and authorization against a real gateway process (RS256 tokens, JWKS file):
the auth matrix on every HTTP endpoint and on the websocket handshake, the Origin allowlist,
tenants, browser subprotocol tokens, per-channel and per-event authorization."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from gateway.adapters.http_auth import BEARER_SUBPROTOCOL_PREFIX
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.factories import order_placed
from tests.integration.auth_tokens import ALLOWED_ORIGIN, Keys
from tests.integration.gateway_client import streaming_gateway
from tests.integration.kafka_topics import TestTopics
from tests.integration.stream_client import StreamClient

pytestmark = pytest.mark.integration

JSON_PROTOCOL = Subprotocol("sync-gateway.v1.json")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys.make(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def gateway(
    kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory, keys: Keys
) -> Iterator[GatewayProcess]:
    settings = TestTopics().settings(kafka_broker.bootstrap) | keys.settings()
    with streaming_gateway(tmp_path_factory.mktemp("gw"), settings) as gw:
        yield gw


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def ws_url(gw: GatewayProcess) -> str:
    return gw.url.replace("http://", "ws://") + "/v1/stream"


def order_of(user: str) -> dict[str, Any]:
    event = order_placed(f"order-{uuid.uuid4().hex[:8]}", source=user)
    event["payload"]["userId"] = user
    return event


async def handshake_status(gw: GatewayProcess, **kwargs: Any) -> int:
    """The HTTP status of a websocket handshake (101 when it was accepted)."""
    try:
        async with connect(ws_url(gw), open_timeout=10, **kwargs):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def read_until_closed(client: StreamClient) -> None:
    for _ in range(10_000):
        await client.recv(wait=30)


HOSTILE_NAMES = [
    "no_token",
    "malformed",
    "alg_none",
    "hs256_with_rs_public_key",
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "unknown_kid",
    "signed_by_stranger",
    "tampered_payload",
    "other_tenant",
    "no_tenant",
    "no_exp",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_hostile_token_is_refused_everywhere_before_data_moves(
    gateway: GatewayProcess, keys: Keys, name: str
) -> None:
    token = keys.hostile()[name]
    expected = 403 if name in ("other_tenant", "no_tenant") else 401
    events = [order_of("user-a")]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        answers = [
            await http.post("/v1/events", json={"events": events}, headers=bearer(token)),
            await http.get(
                "/v1/changes",
                params={"channel": "orders:user-a", "wait": "0"},
                headers=bearer(token),
            ),
            await http.get(
                "/v1/snapshot", params={"channel": "inventory:s-1"}, headers=bearer(token)
            ),
            await http.get("/metrics", headers=bearer(token)),
            await http.get("/openapi.json", headers=bearer(token)),
        ]
        for answer in answers:
            assert answer.status_code == expected, (answer.request.url, answer.text)
            error = answer.json()["error"]
            assert error["code"] == ("forbidden" if expected == 403 else "unauthorized")
            if token is not None:
                assert token not in answer.text  # never echoed
        if expected == 401:
            assert answers[0].headers["WWW-Authenticate"].startswith("Bearer ")
        assert await handshake_status(gateway, additional_headers=bearer(token)) == expected
        if token is not None:
            protocols = [JSON_PROTOCOL, Subprotocol(BEARER_SUBPROTOCOL_PREFIX + token)]
            assert await handshake_status(gateway, subprotocols=protocols) == expected
        # the refused event was not stored: with a valid token it is new
        valid = keys.token("user-a")
        answer = await http.post("/v1/events", json={"events": events}, headers=bearer(valid))
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == 1


async def test_health_endpoints_need_no_token(gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200


async def test_origin_allowlist_is_exact(gateway: GatewayProcess, keys: Keys) -> None:
    headers = bearer(keys.token("user-a"))
    assert await handshake_status(gateway, additional_headers=headers) == 101
    assert await handshake_status(gateway, additional_headers=headers, origin=ALLOWED_ORIGIN) == 101
    for origin in (
        "https://evil.example",
        ALLOWED_ORIGIN + ".evil.example",
        ALLOWED_ORIGIN.upper(),
        "http://app.example",
        "null",
    ):
        status = await handshake_status(gateway, additional_headers=headers, origin=origin)
        assert status == 403, origin


async def test_browser_token_in_a_subprotocol_is_never_echoed(
    gateway: GatewayProcess, keys: Keys
) -> None:
    token = keys.token("user-a")
    protocols = [JSON_PROTOCOL, Subprotocol(BEARER_SUBPROTOCOL_PREFIX + token)]
    async with connect(
        ws_url(gateway), subprotocols=protocols, origin=Origin(ALLOWED_ORIGIN)
    ) as ws:
        assert ws.subprotocol == JSON_PROTOCOL
        client = StreamClient(ws, "json")
        await client.subscribe("a", "orders:user-a")
        assert (await client.recv())["type"] == "subscribed"


async def test_channels_and_publishes_follow_the_token(gateway: GatewayProcess, keys: Keys) -> None:
    token_a = keys.token("user-a")
    async with connect(
        ws_url(gateway), subprotocols=[JSON_PROTOCOL], additional_headers=bearer(token_a)
    ) as ws:
        client = StreamClient(ws, "json")
        await client.subscribe("b", "orders:user-b")
        refused = await client.recv()
        assert (refused["type"], refused["code"], refused["sub"]) == ("error", "forbidden", "b")
        # subscribed from now, and live, before the event is published: it must then arrive
        await client.subscribe("a", "orders:user-a")
        await client.expect("subscribed")
        await client.expect("live")
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            mine, foreign, as_other = order_of("user-a"), order_of("user-a"), order_of("user-b")
            foreign["event_type"] = "Inventory.Updated"  # not in the token's publish patterns
            answer = await http.post(
                "/v1/events", json={"events": [mine, foreign, as_other]}, headers=bearer(token_a)
            )
            assert answer.status_code == 200, answer.text
            results = answer.json()["results"]
            assert [r["status"] for r in results] == ["accepted", "rejected", "rejected"]
            assert {r["error"]["code"] for r in results[1:]} == {"publish_forbidden"}
            changes = await http.get(
                "/v1/changes",
                params={"channel": "orders:user-b", "wait": "0"},
                headers=bearer(token_a),
            )
            assert changes.status_code == 403, changes.text
        updates, _ = await client.updates("a", 1, wait=60)
        assert updates[0]["data"]["payload"]["userId"] == "user-a"
        await client.send({"type": "publish", "req": "r1", "events": [order_of("user-b")]})
        ack = await client.recv()
        while ack["type"] != "ack":
            ack = await client.recv()
        assert ack["results"][0]["status"] == "rejected"
        assert ack["results"][0]["error"]["code"] == "publish_forbidden"


async def test_stream_is_closed_when_its_token_expires(gateway: GatewayProcess, keys: Keys) -> None:
    # the gateway's leeway is 30 s: a token that expired 25 s ago is accepted and the stream
    # is closed about 5 s later
    now = int(time.time())
    token = keys.token("user-a", iat=now - 60, nbf=now - 60, exp=now - 25)
    started = time.monotonic()
    async with connect(
        ws_url(gateway), subprotocols=[JSON_PROTOCOL], additional_headers=bearer(token)
    ) as ws:
        client = StreamClient(ws, "json")
        await client.subscribe("a", "orders:user-a")
        with pytest.raises(ConnectionClosed):
            await read_until_closed(client)
        assert ws.close_code == 4003
    assert time.monotonic() - started < 25


async def test_tokens_never_reach_the_log(gateway: GatewayProcess, keys: Keys) -> None:
    token = keys.token("user-a")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        await http.get(
            "/v1/changes", params={"channel": "orders:user-a", "wait": "0"}, headers=bearer(token)
        )
    protocols = [JSON_PROTOCOL, Subprotocol(BEARER_SUBPROTOCOL_PREFIX + token)]
    assert await handshake_status(gateway, subprotocols=protocols) == 101
    log_text = gateway.log_path.read_text()
    assert "/v1/changes" in log_text  # the requests were logged...
    signature = token.rsplit(".", 1)[1]
    assert signature not in log_text  # ...their tokens were not
    for hostile in keys.hostile().values():
        tail = (hostile or "").rsplit(".", 1)[-1]
        if tail:
            assert tail not in log_text
