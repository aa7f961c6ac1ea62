"""The SDK against a gateway that requires tokens: uploads and streams carry the token of a
token source, a refused (401) or expired (4003) token is replaced by the source's next one with
nothing lost or repeated, and a forbidden handshake (403) stops the subscriber for good."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client_sdk.cursor_store import CursorStore
from client_sdk.errors import StreamClosedByPolicy
from client_sdk.outbox import Outbox
from client_sdk.protocol import DontReconnect, Reconnect, Update, handshake_policy
from client_sdk.reconnect import reconnect_policy
from client_sdk.subscriber import Subscriber
from client_sdk.uploader import Uploader
from gateway.adapters.jwt_auth import JwtSettings, mint
from gateway.core.backoff import Backoff
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.factories import inventory_updated
from tests.integration.gateway_client import streaming_gateway
from tests.integration.kafka_topics import TestTopics

SECRET = "sdk-auth-test-secret-0123456789abcdefgh"
JWT = JwtSettings(algorithms=("HS256",), secret=SECRET, tenant="acme")


def test_expired_token_reconnects_at_once_and_403_stops() -> None:
    assert reconnect_policy(4003) == Reconnect(4003, reset_backoff=True)
    assert isinstance(handshake_policy(403, None), DontReconnect)
    assert handshake_policy(429, 7.0) == 7.0
    assert handshake_policy(401, None) == Reconnect(None)


@pytest.fixture(scope="module")
def gateway(
    kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    settings = TestTopics().settings(kafka_broker.bootstrap) | {
        "jwt_algorithms": '["HS256"]',
        "jwt_secret": SECRET,
        "jwt_leeway_s": "0",
        "tenant": "acme",
    }
    with streaming_gateway(tmp_path_factory.mktemp("gw"), settings) as gw:
        yield gw


class Tokens:
    """A token source: mints a short-lived token per call; the first ``bad`` calls give an
    expired one."""

    def __init__(self, sub: str, ttl_s: float, bad: int = 0) -> None:
        self.sub, self.ttl_s, self.bad, self.calls = sub, ttl_s, bad, 0

    def __call__(self) -> str:
        self.calls += 1
        now = time.time() - (3600 if self.calls <= self.bad else 0)
        return mint(
            JWT,
            self.sub,
            channels=["inventory:*"],
            publish=["Inventory.*"],
            ttl_s=self.ttl_s,
            now=now,
        )


pytestmark = pytest.mark.integration


async def test_uploads_retry_a_refused_token_with_the_next_one(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    tokens = Tokens("scanner-7", ttl_s=600, bad=2)
    with Outbox(tmp_path / "outbox.db") as outbox:
        for quantity in range(20):
            payload = inventory_updated("s-auth", "SKU-1", quantity)["payload"]
            outbox.publish("Inventory.Updated", 1, "s-auth:SKU-1", payload, source="scanner-7")
        uploader = Uploader(outbox, gateway.url, token=tokens, backoff=Backoff(base=0.05, cap=0.2))
        try:
            await uploader.flush(timeout=60)
        finally:
            await uploader.close()
        stats = outbox.stats()
        statuses = [r.status.value for r in outbox.receipts()]
    assert tokens.calls >= 3  # two refused (401), then accepted
    assert stats.pending == 0
    assert statuses == ["accepted"] * 20


async def test_stream_survives_token_expiry_without_gap_or_repeat(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    store = CursorStore(tmp_path / "cursors.db")
    with store.transaction() as db:
        db.execute("CREATE TABLE seen (seq INTEGER PRIMARY KEY, quantity INTEGER NOT NULL)")

    def record(update: Update, db: sqlite3.Connection) -> None:
        assert update.data is not None
        db.execute("INSERT INTO seen (quantity) VALUES (?)", (update.data["payload"]["quantity"],))

    tokens = Tokens("device-3", ttl_s=3)
    subscriber = Subscriber(gateway.url, store, token=tokens, backoff=Backoff(base=0.05, cap=0.5))
    subscriber.subscribe("inventory:s-exp", record)
    runner = asyncio.create_task(subscriber.run())
    publisher = mint(JWT, "scanner-1", channels=[], publish=["Inventory.*"], ttl_s=600)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            for quantity in range(16):  # spread over ~8 s: at least two token expiries
                event = inventory_updated("s-exp", "SKU-1", quantity) | {"source": "scanner-1"}
                answer = await http.post(
                    "/v1/events",
                    json={"events": [event]},
                    headers={"authorization": f"Bearer {publisher}"},
                )
                assert answer.status_code == 200, answer.text
                await asyncio.sleep(0.5)
        await wait_for_rows(store, 16, timeout_s=60)
    finally:
        await subscriber.close()
        with contextlib.suppress(Exception):
            await runner
    assert seen(store) == list(range(16))  # every update once, in order, across reconnects
    assert tokens.calls >= 3  # the stream reconnected with fresh tokens


async def wait_for_rows(store: CursorStore, count: int, timeout_s: float) -> None:
    for _ in range(int(timeout_s * 10)):
        if len(seen(store)) >= count:
            return
        await asyncio.sleep(0.1)


def seen(store: CursorStore) -> list[int]:
    with store.transaction() as db:
        return [q for (q,) in db.execute("SELECT quantity FROM seen ORDER BY seq")]


async def test_forbidden_handshake_stops_the_subscriber(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    other_tenant = mint(
        JWT, "device-9", channels=["inventory:*"], publish=[], ttl_s=600, tenant="globex"
    )
    subscriber = Subscriber(gateway.url, CursorStore(tmp_path / "c.db"), token=other_tenant)
    subscriber.subscribe("inventory:s-1", lambda update, db: None)
    with pytest.raises(StreamClosedByPolicy):
        await asyncio.wait_for(subscriber.run(), 30)
