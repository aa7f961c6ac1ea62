"""Abuse limits at the edge of a real gateway process: rate limits per subject (429 +
Retry-After, error frames then 1008), body and batch size (413), frame size (1009),
subscriptions per connection, connections per subject, the handshake deadline against
slowloris sockets, and the start-up refusal without authentication."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from gateway.adapters.jwt_auth import JwtSettings, JwtVerifier, mint
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.factories import order_placed
from tests.integration.kafka_topics import TestTopics
from tests.integration.stream_client import StreamClient

pytestmark = pytest.mark.integration

SECRET = "edge-limits-test-secret-0123456789abcdef"
JWT = JwtSettings(algorithms=("HS256",), secret=SECRET)
JSON_PROTOCOL = Subprotocol("sync-gateway.v1.json")
HANDSHAKE_TIMEOUT_S = 2.0
LIMITS = {
    "jwt_algorithms": '["HS256"]',
    "jwt_secret": SECRET,
    "jwt_leeway_s": "0",
    "rate_limit_requests_per_s": "2",
    "rate_limit_requests_burst": "5",
    "rate_limit_events_per_s": "1",
    "rate_limit_events_burst": "20",
    "max_batch_events": "10",
    "max_body_bytes": "20000",
    "ws_max_frame_bytes": "4096",
    "stream_max_subscriptions": "2",
    "max_connections_per_subject": "2",
    "handshake_timeout_s": str(HANDSHAKE_TIMEOUT_S),
}


@pytest.fixture(scope="module")
def gateway(
    kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    settings = TestTopics().settings(kafka_broker.bootstrap) | LIMITS
    with GatewayProcess(tmp_path_factory.mktemp("gw"), settings=settings) as gw:
        yield gw


def token(subject: str | None = None, ttl_s: float = 600) -> tuple[str, dict[str, str]]:
    """A fresh subject (its own buckets) and its Authorization header."""
    sub = subject or f"dev-{uuid.uuid4().hex[:8]}"
    signed = mint(JWT, sub, channels=["orders:{sub}"], publish=["Order.*"], ttl_s=ttl_s)
    return sub, {"Authorization": f"Bearer {signed}"}


def orders(sub: str, count: int) -> list[dict[str, Any]]:
    return [order_placed(f"o-{uuid.uuid4().hex[:8]}", source=sub) for _ in range(count)]


def ws_url(gw: GatewayProcess) -> str:
    return gw.url.replace("http://", "ws://") + "/v1/stream"


async def test_requests_over_the_subject_rate_get_429_with_retry_after(
    gateway: GatewayProcess,
) -> None:
    _, headers = token()
    _, other = token()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        statuses = []
        for _ in range(12):
            answer = await http.post("/v1/events", json={"events": []}, headers=headers)
            statuses.append(answer.status_code)
        assert statuses[:3] == [200, 200, 200]  # within the burst of 5
        assert statuses.count(429) >= 5, statuses
        refused = answer
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert refused.json()["error"]["retriable"] is True
        retry_after = int(refused.headers["Retry-After"])
        assert retry_after >= 1
        # another subject is not affected
        answer = await http.post("/v1/events", json={"events": []}, headers=other)
        assert answer.status_code == 200
        await asyncio.sleep(retry_after)
        answer = await http.post("/v1/events", json={"events": []}, headers=headers)
        assert answer.status_code == 200, answer.text


async def test_published_events_over_the_subject_rate_are_refused_whole(
    gateway: GatewayProcess,
) -> None:
    sub, headers = token()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        for _ in range(2):  # 20 events: the whole burst
            answer = await http.post(
                "/v1/events", json={"events": orders(sub, 10)}, headers=headers
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["accepted"] == 10
        refused_batch = orders(sub, 10)
        answer = await http.post("/v1/events", json={"events": refused_batch}, headers=headers)
        assert answer.status_code == 429, answer.text
        assert answer.json()["error"]["code"] == "rate_limited"
        assert int(answer.headers["Retry-After"]) >= 1
        # nothing of the refused batch was stored: one event later is new
        await asyncio.sleep(1.5)
        answer = await http.post("/v1/events", json={"events": refused_batch[:1]}, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == 1


async def test_body_and_batch_limits_answer_413(gateway: GatewayProcess) -> None:
    sub, headers = token()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        big = await http.post(
            "/v1/events",
            content=b'{"events": [' + b" " * 30_000 + b"]}",
            headers=headers | {"Content-Type": "application/json"},
        )
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "body_too_large"
        many = await http.post("/v1/events", json={"events": orders(sub, 11)}, headers=headers)
        assert many.status_code == 413
        assert many.json()["error"]["code"] == "batch_too_large"


async def test_websocket_frame_size_subscriptions_and_frame_rate(gateway: GatewayProcess) -> None:
    sub, headers = token()
    async with connect(
        ws_url(gateway), subprotocols=[JSON_PROTOCOL], additional_headers=headers
    ) as ws:
        client = StreamClient(ws, "json")
        for name in ("a", "b", "c"):
            await client.subscribe(name, f"orders:{sub}")
        # a and b: subscribed then live; c: the error. The order across subscriptions varies.
        frames = [await client.recv() for _ in range(5)]
        refused = [f for f in frames if f["type"] == "error"]
        assert [(f["code"], f["sub"]) for f in refused] == [("too_many_subscriptions", "c")]
        accepted = sorted((f["sub"], f["type"]) for f in frames if f["type"] != "error")
        assert accepted == [("a", "live"), ("a", "subscribed"), ("b", "live"), ("b", "subscribed")]
    # over the request rate: rate_limited error frames, then 1008 once the error budget is gone
    _, headers = token()
    async with connect(
        ws_url(gateway), subprotocols=[JSON_PROTOCOL], additional_headers=headers
    ) as ws:
        client = StreamClient(ws, "json")
        codes: list[str] = []
        with pytest.raises(ConnectionClosed):
            await ping_until_closed(client, codes)
        assert ws.close_code == 1008
        assert "rate_limited" in codes
    # a frame over ws_max_frame_bytes closes with 1009
    _, headers = token()
    async with connect(
        ws_url(gateway), subprotocols=[JSON_PROTOCOL], additional_headers=headers
    ) as ws:
        await ws.send(json.dumps({"type": "ping", "pad": "x" * 8000}))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1009


async def ping_until_closed(client: StreamClient, codes: list[str]) -> None:
    for _ in range(200):
        await client.send({"type": "ping"})
        frame = await client.recv(wait=10)
        if frame["type"] == "error":
            codes.append(frame["code"])


async def test_connections_per_subject_are_capped(gateway: GatewayProcess) -> None:
    _, headers = token()
    async with (
        connect(ws_url(gateway), subprotocols=[JSON_PROTOCOL], additional_headers=headers),
        connect(ws_url(gateway), subprotocols=[JSON_PROTOCOL], additional_headers=headers),
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(gateway), additional_headers=headers):
                pass
        assert refused.value.response.status_code == 429
        assert int(refused.value.response.headers["Retry-After"]) >= 1
    # both closed: a new connection of the same subject is let in (after the request bucket
    # refilled: the handshakes spent its tokens)
    await asyncio.sleep(1.5)
    async with connect(ws_url(gateway), subprotocols=[JSON_PROTOCOL], additional_headers=headers):
        pass


async def test_expired_token_closes_the_stream(gateway: GatewayProcess) -> None:
    sub, headers = token(ttl_s=3)
    started = time.monotonic()
    async with connect(
        ws_url(gateway), subprotocols=[JSON_PROTOCOL], additional_headers=headers
    ) as ws:
        client = StreamClient(ws, "json")
        await client.subscribe("a", f"orders:{sub}")
        with pytest.raises(ConnectionClosed):
            await ping_until_closed_slowly(client)
        assert ws.close_code == 4003
    assert time.monotonic() - started < 30


async def ping_until_closed_slowly(client: StreamClient) -> None:
    for _ in range(60):
        await client.recv(wait=30)


async def _trickle(host: str, port: int, cut_at: list[float], stop: asyncio.Event) -> None:
    """Open a connection and send request headers one byte every 0.2 s; record when the
    server cuts the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    request = b"GET /v1/changes?channel=orders:x HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 500
    try:
        for byte in request:
            if stop.is_set():
                return
            writer.write(bytes([byte]))
            try:
                data = await asyncio.wait_for(reader.read(1), 0.2)
            except TimeoutError:
                continue
            if not data:
                break
        cut_at.append(time.monotonic())
    except (ConnectionError, OSError):
        cut_at.append(time.monotonic())
    finally:
        writer.close()


async def test_slowloris_sockets_are_cut_while_normal_clients_connect(
    gateway: GatewayProcess,
) -> None:
    count = 500
    cut_at: list[float] = []
    stop = asyncio.Event()
    started = time.monotonic()
    trickles = [
        asyncio.create_task(_trickle("127.0.0.1", gateway.port, cut_at, stop)) for _ in range(count)
    ]
    try:
        await asyncio.sleep(0.5)  # every slow socket is open and trickling
        # normal clients still get through while the slow ones hold their sockets
        normal_latencies = []
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            for _ in range(10):
                t0 = time.monotonic()
                answer = await http.get("/healthz")
                normal_latencies.append(time.monotonic() - t0)
                assert answer.status_code == 200
        _, headers = token()
        async with connect(
            ws_url(gateway), subprotocols=[JSON_PROTOCOL], additional_headers=headers
        ) as ws:
            client = StreamClient(ws, "json")
            await client.send({"type": "ping"})
            assert (await client.recv())["type"] == "pong"
        _, pending = await asyncio.wait(trickles, timeout=HANDSHAKE_TIMEOUT_S * 10)
        assert not pending, f"{len(pending)} slow sockets still open"
    finally:
        stop.set()
        for task in trickles:
            task.cancel()
        await asyncio.gather(*trickles, return_exceptions=True)
    assert len(cut_at) == count
    # each was cut by the handshake deadline, long before its 550-byte trickle could end
    assert max(cut_at) - started < HANDSHAKE_TIMEOUT_S * 10
    assert max(normal_latencies) < HANDSHAKE_TIMEOUT_S


def test_serve_refuses_to_start_without_authentication(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_GATEWAY_")}
    env["SYNC_GATEWAY_DATA_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "no authentication configured" in done.stderr
    assert "--insecure-no-auth" in done.stderr


def test_insecure_mode_is_announced(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path, settings={"kafka_bootstrap": "127.0.0.1:1"}) as gw:
        assert "INSECURE" in gw.log_path.read_text()


def test_token_command_mints_a_token_the_gateway_verifies(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_GATEWAY_")}
    env |= {"SYNC_GATEWAY_JWT_ALGORITHMS": '["HS256"]', "SYNC_GATEWAY_JWT_SECRET": SECRET}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "token",
            "--sub",
            "device-9",
            "--channel",
            "orders:{sub}",
            "--publish",
            "Order.*",
            "--ttl",
            "60",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    principal = JwtVerifier(JWT).verify(done.stdout.strip())
    assert principal.subject == "device-9"
    assert principal.may_subscribe("orders:device-9")
    assert not principal.may_subscribe("orders:device-8")
    assert principal.may_publish("Order.Placed", "device-9")
