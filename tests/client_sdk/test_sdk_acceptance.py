"""Issue 5's acceptance run: an SDK app on a link cut and restored at random (a fault proxy),
publishing N events and following their channel, while the gateway is SIGKILLed and restarted
and the app itself is SIGKILLed twice. Every event reaches Kafka exactly once and every update
is handled exactly once. CI form: 1,500 events; ``--long``: 10,000."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_sdk.loadgen.proxy import FaultProxy
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_reader import read_committed
from tests.integration.gateway_client import streaming_gateway
from tests.integration.kafka_topics import TestTopics

pytestmark = pytest.mark.integration


@pytest.fixture
def topics() -> TestTopics:
    return TestTopics()


@pytest.fixture
def gateway(
    kafka_broker: KafkaBroker, tmp_path: Path, topics: TestTopics
) -> Iterator[GatewayProcess]:
    with streaming_gateway(tmp_path / "gw", topics.settings(kafka_broker.bootstrap)) as gw:
        yield gw


def start_app(url: str, workdir: Path, total: int) -> subprocess.Popen[bytes]:
    with (workdir / "app.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "tests.client_sdk.sdk_app", url, str(workdir), str(total)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_sdk_app_through_faults_loses_and_repeats_nothing(
    gateway: GatewayProcess,
    kafka_broker: KafkaBroker,
    topics: TestTopics,
    tmp_path: Path,
    long_run: bool,
) -> None:
    total = 10_000 if long_run else 1_500
    rng = random.Random(5)
    workdir = tmp_path / "device"
    workdir.mkdir()
    async with FaultProxy("127.0.0.1", gateway.port) as proxy:
        loop = asyncio.get_running_loop()
        faults = asyncio.create_task(
            proxy.run_pattern(1.0, 0.3, rng, until=loop.time() + (600 if long_run else 120))
        )
        app = start_app(proxy.url, workdir, total)
        try:
            for kill in range(2):  # the app itself, at random moments
                await asyncio.sleep(rng.uniform(2.0, 4.0))
                assert app.poll() is None, "the app finished before it could be killed"
                app.kill()
                app.wait(10)
                app = start_app(proxy.url, workdir, total)
                if kill == 0:  # and the gateway once, in between
                    await asyncio.sleep(rng.uniform(1.0, 2.0))
                    gateway.kill()
                    await asyncio.to_thread(gateway.start)
            try:
                code: int | None = await asyncio.to_thread(app.wait, 900 if long_run else 240)
            except subprocess.TimeoutExpired:
                code = None
        finally:
            if app.poll() is None:
                app.kill()
            faults.cancel()
        assert code == 0, (workdir / "app.log").read_text()[-3000:]
        cuts = proxy.stats().cuts

    records = await read_committed(kafka_broker.bootstrap, [topics.inventory])
    in_kafka = Counter(json.loads(r.value or b"")["payload"]["quantity"] for r in records)
    assert set(in_kafka) == set(range(total))
    assert max(in_kafka.values()) == 1
    db = sqlite3.connect(workdir / "state.db")
    seen = db.execute("SELECT partition, kafka_offset, qty FROM seen").fetchall()
    assert len(seen) == len({(p, o) for p, o, _ in seen}) == total  # handled exactly once
    assert {q for _, _, q in seen} == set(range(total))
    assert cuts > 0
