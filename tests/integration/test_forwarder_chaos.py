"""Guarantee 2: every acknowledged event reaches Kafka exactly once, in per-key order.

The acceptance test of the forwarder: concurrent HTTP clients retry each batch until it is
acknowledged while the gateway is SIGKILLed at random moments and the Kafka broker is stopped and
restarted; in the end a ``read_committed`` consumer must find every acknowledged event exactly
once, nothing that was never sent, and each key's events in the order their client sent them.

A second, deterministic test crashes the gateway between Kafka's commit and the local mark
(crash point ``after_kafka_commit``) and checks that the restarted gateway resumes from Kafka's
position rather than from its stale local mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from gateway.app import CRASH_EXIT_CODE
from gateway.core.routing import DEFAULT_ROUTES
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_reader import ConsumedRecord, read_committed
from tests.factories import order_placed

pytestmark = pytest.mark.integration

MSGPACK = "application/msgpack"
RETRY_PAUSE_S = 0.05
MAX_ATTEMPTS_PER_BATCH = 2_000
MAX_AHEAD = 10_000
"""Events the clients may upload ahead of the forwarder (also while Kafka is down)."""
GATEWAY_START_TIMEOUT_S = 60.0
BROKER_START_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Scenario:
    events: int
    clients: int
    batch: int
    keys_per_client: int
    kills: int
    broker_restarts: int
    deadline_s: float
    """Bound on the whole scenario (upload, chaos, drain); the read-back has its own."""

    @property
    def batches_per_client(self) -> int:
        return self.events // (self.clients * self.batch)


SHORT = Scenario(
    events=50_000,
    clients=5,
    batch=500,
    keys_per_client=25,
    kills=10,
    broker_restarts=2,
    deadline_s=270.0,
)
LONG = Scenario(
    events=300_000,
    clients=6,
    batch=500,
    keys_per_client=50,
    kills=30,
    broker_restarts=2,
    deadline_s=1800.0,
)


@dataclass(frozen=True, slots=True)
class Batch:
    body: bytes
    event_ids: list[str]


@dataclass
class Ledger:
    """What the clients sent and what the gateway answered."""

    sent_key: dict[str, str] = field(default_factory=dict)
    """event id -> key, for every event any client sent."""
    key_order: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """key -> event ids in the order the key's (only) client sent them."""
    accepted: set[str] = field(default_factory=set)
    duplicate: set[str] = field(default_factory=set)
    acked_events: int = 0
    posts: int = 0
    failed_posts: int = 0

    @property
    def acked(self) -> set[str]:
        return self.accepted | self.duplicate


def topic_prefix(kind: str) -> str:
    return f"test.{kind}.{uuid.uuid4().hex[:10]}"


def gateway_settings(
    broker: KafkaBroker, prefix: str, **extra: str
) -> tuple[dict[str, str], list[str]]:
    """Settings routing every aggregate to a topic of its own under ``prefix`` (so reruns and
    other tests never share a topic), and the topics to read back (event topics and dead
    letters)."""
    routes = {aggregate: f"{prefix}.{topic}" for aggregate, topic in DEFAULT_ROUTES.items()}
    dead_letters = f"{prefix}.dead-letters"
    settings = {
        "kafka_bootstrap": broker.bootstrap,
        "instance_id": f"{prefix}.gw",
        "topic_routes": json.dumps(routes),
        "dead_letter_topic": dead_letters,
        "position_topic": f"{prefix}.positions",
        **extra,
    }
    return settings, sorted({*routes.values(), dead_letters})


def build_batches(scenario: Scenario, client: int, tag: str, ledger: Ledger) -> list[Batch]:
    """The client's batches; its keys are its own, each key's events in sending order."""
    batches = []
    for b in range(scenario.batches_per_client):
        events = [
            order_placed(f"{tag}-c{client}-k{(b * scenario.batch + i) % scenario.keys_per_client}")
            for i in range(scenario.batch)
        ]
        for event in events:
            ledger.sent_key[event["event_id"]] = event["key"]
            ledger.key_order[event["key"]].append(event["event_id"])
        body: bytes = msgpack.packb({"events": events})
        batches.append(Batch(body, [e["event_id"] for e in events]))
    return batches


async def post_until_acked(
    http: httpx.AsyncClient, batch: Batch, ledger: Ledger, deadline: float
) -> None:
    """POST the same batch (same event ids) until a 200 answers it."""
    for _ in range(MAX_ATTEMPTS_PER_BATCH):
        if time.monotonic() > deadline:
            break
        ledger.posts += 1
        try:
            answer = await http.post(
                "/v1/events",
                content=batch.body,
                headers={"content-type": MSGPACK, "accept": "application/json"},
            )
        except httpx.TransportError:  # killed mid-request, or not listening yet
            ledger.failed_posts += 1
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        if answer.status_code == 200:
            results = answer.json()["results"]
            assert [r["event_id"] for r in results] == batch.event_ids
            for result in results:
                status = result["status"]
                assert status in ("accepted", "duplicate"), result
                (ledger.accepted if status == "accepted" else ledger.duplicate).add(
                    result["event_id"]
                )
            ledger.acked_events += len(batch.event_ids)
            return
        assert answer.status_code in (500, 502, 503), (answer.status_code, answer.text[:500])
        ledger.failed_posts += 1
        await asyncio.sleep(RETRY_PAUSE_S)
    raise AssertionError(f"a batch was not acknowledged in time ({ledger.posts} posts so far)")


@dataclass
class Chaos:
    """What the fault injectors did, and what the clients need to know of it."""

    kills: list[tuple[int, int, bool]] = field(default_factory=list)
    """Per kill: the forwarder's position and the backlog seen just before it, and whether
    clients were still uploading."""
    broker_restarts: int = 0
    forwarded: int = 0
    """Highest forwarder position seen."""


async def run_client(
    gateway: GatewayProcess, batches: list[Batch], ledger: Ledger, chaos: Chaos, end: float
) -> None:
    """Send the batches in order, each retried until acknowledged. The clients stay at most
    about MAX_AHEAD events ahead of the forwarder, so that the upload lasts as long as the
    forwarding and most kills land while both are busy."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        for batch in batches:
            while ledger.acked_events - chaos.forwarded > MAX_AHEAD and time.monotonic() < end:
                position, _ = await forwarding_state(http)
                chaos.forwarded = max(chaos.forwarded, position)
                await asyncio.sleep(0.1)
            await post_until_acked(http, batch, ledger, end)


async def forwarding_state(http: httpx.AsyncClient) -> tuple[int, int]:
    """The forwarder's position (0 until its link is up) and the backlog; zeros if down."""
    details = await readiness(http)
    if details is None or "kafka" not in details or "backlog" not in details:
        return 0, 0
    return int(details["kafka"]["position"]), int(details["backlog"]["events"])


async def wait_until_forwarded(
    http: httpx.AsyncClient, threshold: int, chaos: Chaos, end: float
) -> tuple[int, int]:
    """Wait until the running forwarder's position reaches ``threshold``: then the gateway is
    up, its link to Kafka is up and it has been forwarding."""
    position = backlog = 0
    while time.monotonic() < end:
        position, backlog = await forwarding_state(http)
        chaos.forwarded = max(chaos.forwarded, position)
        if position >= threshold:
            return position, backlog
        await asyncio.sleep(0.05)
    raise AssertionError(f"forwarding stuck at position {position} (backlog {backlog})")


async def kill_gateway_repeatedly(
    gateway: GatewayProcess,
    ledger: Ledger,
    total: int,
    thresholds: list[int],
    rng: random.Random,
    chaos: Chaos,
    end: float,
) -> None:
    """SIGKILL the gateway at a random moment after its forwarder passes each threshold, and
    restart it. Every kill lands on a forwarder that is up and forwarding (mid-transaction,
    between transactions, between a commit and the local mark), many while clients upload.
    A threshold passed already is hit right after the restarted forwarder's link is up."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        for threshold in thresholds:
            position, backlog = await wait_until_forwarded(http, threshold, chaos, end)
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            await asyncio.to_thread(gateway.kill)
            chaos.kills.append((position, backlog, ledger.acked_events < total))
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await asyncio.to_thread(gateway.start, GATEWAY_START_TIMEOUT_S)


async def restart_broker_repeatedly(
    gateway: GatewayProcess,
    broker: KafkaBroker,
    thresholds: list[int],
    rng: random.Random,
    chaos: Chaos,
    end: float,
) -> None:
    """Stop the broker at a random moment after the forwarder passes each threshold; start it
    again a little later (the gateway keeps acknowledging meanwhile)."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        for threshold in thresholds:
            await wait_until_forwarded(http, threshold, chaos, end)
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            await asyncio.to_thread(broker.start, BROKER_START_TIMEOUT_S)
            chaos.broker_restarts += 1


async def readiness(http: httpx.AsyncClient) -> dict[str, Any] | None:
    try:
        answer = await http.get("/readyz")
    except httpx.TransportError:
        return None
    details: dict[str, Any] = answer.json()
    return details


async def wait_for_empty_backlog(gateway: GatewayProcess, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    last: dict[str, Any] | None = None
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        while time.monotonic() < end:
            last = await readiness(http)
            if last is not None and last.get("backlog", {}).get("events") == 0:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(
        f"backlog not forwarded within {timeout_s:g}s; last /readyz: {last}\n{gateway.log_tail()}"
    )


def in_kafka_order(records: list[ConsumedRecord]) -> list[ConsumedRecord]:
    return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))


def order_by_key(records: list[ConsumedRecord]) -> dict[str, list[str]]:
    per_key: dict[str, list[str]] = defaultdict(list)
    for record in in_kafka_order(records):
        assert record.key is not None
        per_key[record.key.decode()].append(record.event_id)
    return per_key


@pytest.mark.timeout(2400)  # the long form (--long) runs longer than the default timeout
async def test_every_acked_event_reaches_kafka_exactly_once_in_key_order_despite_crashes(
    kafka_broker: KafkaBroker, tmp_path: Path, long_run: bool
) -> None:
    scenario = LONG if long_run else SHORT
    rng = random.Random()
    prefix = topic_prefix("chaos")
    settings, topics = gateway_settings(kafka_broker, prefix)
    gateway = GatewayProcess(tmp_path / "gw", settings=settings)
    ledger = Ledger()
    batches = [build_batches(scenario, c, prefix, ledger) for c in range(scenario.clients)]
    total = scenario.clients * scenario.batches_per_client * scenario.batch
    assert total == len(ledger.sent_key) >= scenario.events
    kill_at = sorted(rng.randrange(total // 50, total * 19 // 20) for _ in range(scenario.kills))
    broker_at = sorted(
        rng.randrange(total * (3 * i + 1) // 9, total * (3 * i + 2) // 9)
        for i in range(scenario.broker_restarts)
    )
    chaos = Chaos()

    started = time.monotonic()
    end = started + scenario.deadline_s
    gateway.start()
    try:
        try:
            async with asyncio.timeout(scenario.deadline_s), asyncio.TaskGroup() as group:
                group.create_task(
                    kill_gateway_repeatedly(gateway, ledger, total, kill_at, rng, chaos, end)
                )
                group.create_task(
                    restart_broker_repeatedly(gateway, kafka_broker, broker_at, rng, chaos, end)
                )
                for client_batches in batches:
                    group.create_task(run_client(gateway, client_batches, ledger, chaos, end))
        finally:
            if not kafka_broker.is_running:  # the session's broker stays up whatever happens
                await asyncio.to_thread(kafka_broker.start, BROKER_START_TIMEOUT_S)
        uploaded = time.monotonic() - started
        await wait_for_empty_backlog(gateway, max(30.0, end - time.monotonic()))
        elapsed = time.monotonic() - started
        records = await read_committed(kafka_broker.bootstrap, topics, timeout_s=120)
    finally:
        gateway.terminate()

    acked = ledger.acked
    found = Counter(r.event_id for r in records)
    duplicates = sum(n - 1 for n in found.values() if n > 1)
    lost = acked - found.keys()
    unknown = found.keys() - ledger.sent_key.keys()
    dead_letters = [r for r in records if r.topic == settings["dead_letter_topic"]]
    per_key = order_by_key([r for r in records if r.topic != settings["dead_letter_topic"]])
    out_of_order = [key for key, ids in ledger.key_order.items() if per_key.get(key) != ids]
    print(
        f"\nforwarder chaos ({'long' if long_run else 'short'} form):"
        f" events acked {len(acked)} ({len(ledger.accepted)} accepted,"
        f" {len(ledger.duplicate)} duplicate answers; {ledger.posts} posts,"
        f" {ledger.failed_posts} failed), kills {len(chaos.kills)}"
        f" ({sum(uploading for *_, uploading in chaos.kills)} during the upload; forwarder"
        f" position/backlog before each: {[(p, b) for p, b, _ in chaos.kills]}),"
        f" broker restarts {chaos.broker_restarts},"
        f" found in Kafka {len(records)} ({len(found)} distinct), duplicates {duplicates},"
        f" lost {len(lost)}, never sent {len(unknown)}, dead letters {len(dead_letters)},"
        f" keys out of order {len(out_of_order)}/{len(ledger.key_order)},"
        f" elapsed {elapsed:.1f}s (upload and chaos {uploaded:.1f}s)"
    )
    assert len(chaos.kills) >= scenario.kills
    assert chaos.broker_restarts == scenario.broker_restarts
    assert len(acked) == total  # every batch was retried until acknowledged
    assert not ledger.accepted & ledger.duplicate
    assert not lost, f"{len(lost)} acknowledged events never reached Kafka"
    assert duplicates == 0, f"{duplicates} events reached Kafka more than once"
    assert not unknown, f"{len(unknown)} events in Kafka were never sent"
    assert not dead_letters
    assert not out_of_order, f"{len(out_of_order)} keys out of order, e.g. {out_of_order[:3]}"


def local_forwarded_mark(data_dir: Path) -> int:
    """The store's forwarded mark, read as an auditor would (read-only, outside the process)."""
    path = data_dir / "gateway.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT value FROM meta WHERE name = 'forwarded_seq'").fetchone()
    return int(row[0]) if row is not None else 0


def kafka_position(records: list[ConsumedRecord], instance_id: str) -> int:
    """The last position the instance committed to its position topic (0 if none)."""
    position = 0
    for record in in_kafka_order(records):
        if record.key == instance_id.encode() and record.value is not None:
            position = int(json.loads(record.value)["seq"])
    return position


async def post_once(gateway: GatewayProcess, events: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        answer = await http.post("/v1/events", json={"events": events})
    assert answer.status_code == 200, answer.text[:500]
    assert answer.json()["accepted"] == len(events)


async def wait_for_exit(gateway: GatewayProcess, timeout_s: float) -> int | None:
    """The exit code once the process has exited by itself; None if it still runs."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if not gateway.is_running:
            return gateway.terminate()  # already exited: reaps it, returns its exit code
        await asyncio.sleep(0.05)
    return None


async def test_crash_between_kafka_commit_and_local_mark_forwards_nothing_twice(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    events_total, batch_max = 500, 100
    prefix = topic_prefix("crash-after-commit")
    settings, topics = gateway_settings(
        kafka_broker, prefix, forward_batch_max=str(batch_max), crash_point="after_kafka_commit"
    )
    events = [order_placed(f"{prefix}-k{i % 7}") for i in range(events_total)]
    sent_ids = [e["event_id"] for e in events]

    crashing = GatewayProcess(tmp_path / "gw", settings=settings)
    crashing.start()
    try:
        await post_once(crashing, events)
        exit_code = await wait_for_exit(crashing, 60)
    finally:
        if crashing.is_running:
            crashing.kill()
    assert exit_code == CRASH_EXIT_CODE, crashing.log_tail()

    # The scenario really happened: the first transaction is committed in Kafka (its events
    # and the position), while the local mark never moved.
    committed = await read_committed(kafka_broker.bootstrap, topics, timeout_s=60)
    positions = await read_committed(
        kafka_broker.bootstrap, [settings["position_topic"]], timeout_s=60
    )
    position_in_kafka = kafka_position(positions, settings["instance_id"])
    local_mark = local_forwarded_mark(crashing.data_dir)
    assert 0 < position_in_kafka <= batch_max
    assert local_mark < position_in_kafka, "the crash did not leave the local mark behind"
    assert sorted(r.event_id for r in committed) == sorted(sent_ids[:position_in_kafka])

    restarted_settings = {k: v for k, v in settings.items() if k != "crash_point"}
    restarted = GatewayProcess(crashing.data_dir, port=crashing.port, settings=restarted_settings)
    restarted.start()
    try:
        await wait_for_empty_backlog(restarted, 120)
        assert local_forwarded_mark(restarted.data_dir) == events_total
    finally:
        restarted.terminate()

    records = await read_committed(kafka_broker.bootstrap, topics, timeout_s=60)
    found = Counter(r.event_id for r in records)
    assert sorted(found) == sorted(sent_ids)
    assert set(found.values()) == {1}, "an event reached Kafka twice"
    sent_order: dict[str, list[str]] = defaultdict(list)
    for event in events:
        sent_order[event["key"]].append(event["event_id"])
    assert order_by_key(records) == sent_order
