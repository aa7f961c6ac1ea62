"""Guarantee 1: an event acknowledged by the gateway survives a SIGKILL of the gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from gateway.testing.gateway_process import GatewayProcess
from tests.factories import order_placed
from tests.integration.store_reader import stored_ids

pytestmark = pytest.mark.integration

CLIENTS = 6
BATCH = 20


async def _upload_until_killed(
    gateway: GatewayProcess, acked: set[str], answers_before_kill: int
) -> None:
    """Clients post concurrently; the gateway is SIGKILLed right after the Nth answer."""
    answered = 0
    killed = asyncio.Event()

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal answered
        for _ in range(10_000):
            if killed.is_set():
                return
            events = [order_placed(f"order-{i % 7}") for i in range(BATCH)]
            try:
                answer = await http.post("/v1/events", json={"events": events})
            except httpx.TransportError:
                return
            if answer.status_code == 200:
                acked.update(
                    r["event_id"] for r in answer.json()["results"] if r["status"] == "accepted"
                )
                answered += 1
                if answered == answers_before_kill and not killed.is_set():
                    gateway.kill()  # synchronously, before any other answer is read
                    killed.set()

    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        await asyncio.wait_for(asyncio.gather(*(client(http) for _ in range(CLIENTS))), 60)
    assert killed.is_set()


async def test_acked_events_survive_sigkill(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "gw", settings={"kafka_bootstrap": "127.0.0.1:9"})
    acked: set[str] = set()
    gateway.start()
    try:
        for round_number in range(3):
            await _upload_until_killed(gateway, acked, answers_before_kill=15 + 10 * round_number)
            ids = stored_ids(gateway.data_dir)
            assert acked <= set(ids), f"lost {len(acked - set(ids))} acknowledged events"
            assert len(ids) == len(set(ids))
            gateway.start()
        # the restarted gateway serves the same store: every acked id is now a duplicate
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            sample = sorted(acked)[:50]
            events = [order_placed(event_id=event_id) for event_id in sample]
            answer = await http.post("/v1/events", json={"events": events})
        assert {r["status"] for r in answer.json()["results"]} == {"duplicate"}
    finally:
        gateway.terminate()
    assert len(acked) >= 3 * 15 * BATCH
