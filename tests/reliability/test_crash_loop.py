"""Crash loop (issue 8): the gateway is SIGKILLed at random, every 0.5-3 s of uptime, again and
again, while many clients upload and re-send each batch until it is acknowledged. In the end the
checker finds every acknowledged event in Kafka exactly once, nothing nobody sent, each key in
the order its client had it acknowledged.

CI form: 10k events from 8 clients, at least 10 kills. ``--long``: 100k events from 16
clients, at least 30 kills (the issue's wording).

The upload is paced so that it lasts through the kills: clients follow a schedule spread over
the planned number of kills, and never run more than one kill's share ahead of the kill loop,
so every planned kill lands while clients are uploading (and the forwarder is forwarding).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.testing.checker import check
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.integration.kafka_topics import TestTopics
from tests.reliability.clients import Batch, RetryingClient, Tally, order_batches, wait_drained

pytestmark = pytest.mark.integration

GATEWAY_START_TIMEOUT_S = 60.0
KILL_INTERVAL_S = (0.5, 3.0)
RESTART_ESTIMATE_S = 1.5
"""Rough time of one gateway restart, for the upload schedule only (nothing asserts on it)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    events: int
    clients: int
    batch: int
    keys_per_client: int
    min_kills: int
    deadline_s: float

    @property
    def planned_s(self) -> float:
        """How long the upload is spread over: the planned kills at their mean interval."""
        return self.min_kills * (sum(KILL_INTERVAL_S) / 2 + RESTART_ESTIMATE_S)


SHORT = Scenario(
    events=10_000, clients=8, batch=50, keys_per_client=10, min_kills=10, deadline_s=240.0
)
LONG = Scenario(
    events=100_000, clients=16, batch=100, keys_per_client=20, min_kills=30, deadline_s=1500.0
)


@dataclass
class Progress:
    kills: int = 0
    kills_while_uploading: int = 0
    restart_s: float = 0.0
    uploading: bool = True


async def run_client(
    url: str,
    client: RetryingClient,
    batches: list[Batch],
    scenario: Scenario,
    progress: Progress,
    started: float,
    deadline: float,
) -> None:
    """Send the batches in order, each until acknowledged, on the schedule (batch i of n not
    before started + planned_s * i / n) and not ahead of the kill loop's share."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for i, batch in enumerate(batches):
            not_before = started + scenario.planned_s * i / len(batches)
            for _ in range(int(scenario.deadline_s / 0.05)):  # bounded wait for its turn
                ahead = i / len(batches) > (progress.kills + 1) / (scenario.min_kills + 1)
                if time.monotonic() >= deadline or (time.monotonic() >= not_before and not ahead):
                    break
                await asyncio.sleep(0.05)
            await client.upload(http, batch, deadline)


async def kill_loop(
    gateway: GatewayProcess, progress: Progress, rng: random.Random, deadline: float
) -> None:
    """While clients upload: let the gateway run 0.5-3 s, SIGKILL it, restart it."""
    while progress.uploading and time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(*KILL_INTERVAL_S))
        if not progress.uploading:
            break
        await asyncio.to_thread(gateway.kill)
        progress.kills += 1
        progress.kills_while_uploading += 1
        began = time.monotonic()
        await asyncio.to_thread(gateway.start, GATEWAY_START_TIMEOUT_S)
        progress.restart_s += time.monotonic() - began


@pytest.mark.timeout(1800)  # the long form runs longer than the default timeout
async def test_crash_loop_loses_repeats_and_reorders_nothing(
    kafka_broker: KafkaBroker, tmp_path: Path, long_run: bool
) -> None:
    scenario = LONG if long_run else SHORT
    rng = random.Random()
    topics = TestTopics()
    data = tmp_path / "gw"
    gateway = GatewayProcess(data, settings=topics.settings(kafka_broker.bootstrap))
    tally = Tally()
    per_client = scenario.events // scenario.clients
    clients = [RetryingClient(f"c{c}", tally, rng=rng) for c in range(scenario.clients)]
    batches = [
        order_batches(topics.prefix, c, per_client, scenario.batch, scenario.keys_per_client)
        for c in range(scenario.clients)
    ]
    total = per_client * scenario.clients
    progress = Progress()

    gateway.start(GATEWAY_START_TIMEOUT_S)
    started = time.monotonic()
    deadline = started + scenario.deadline_s
    try:
        killer = asyncio.create_task(kill_loop(gateway, progress, rng, deadline))
        try:
            async with asyncio.timeout(scenario.deadline_s):
                await asyncio.gather(
                    *(
                        run_client(gateway.url, c, b, scenario, progress, started, deadline)
                        for c, b in zip(clients, batches, strict=True)
                    )
                )
        finally:
            progress.uploading = False
            await killer  # ends after at most one more kill and restart
        uploaded_s = time.monotonic() - started
        if not gateway.is_running:
            await asyncio.to_thread(gateway.start, GATEWAY_START_TIMEOUT_S)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            drain_s = await wait_drained(http, max(60.0, deadline - time.monotonic()))
    finally:
        gateway.terminate()

    acked = [a for c in clients for a in c.acked]
    sent = set().union(*(c.sent for c in clients))
    report = await check(
        kafka_broker.bootstrap,
        [topics.orders],
        acked,
        sent=sent,
        stores={"gw": data},
        dead_letter_topic=topics.dead_letters,
    )
    print(
        f"\ncrash loop ({'long' if long_run else 'short'} form): {total} events from"
        f" {scenario.clients} clients; kills {progress.kills} (all during the upload, every"
        f" {KILL_INTERVAL_S[0]}-{KILL_INTERVAL_S[1]} s of uptime; mean restart"
        f" {progress.restart_s / max(1, progress.kills):.2f}s); {tally.summary()};"
        f" upload {uploaded_s:.1f}s, drain after the upload {drain_s:.1f}s\n{report}"
    )
    assert report.ok, str(report)
    assert tally.acked_events == total == len({a.event_id for a in acked})
    assert progress.kills >= scenario.min_kills
