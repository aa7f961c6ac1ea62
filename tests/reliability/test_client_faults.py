"""Client-side faults (issue 8): the SDK app of the acceptance test (tests/client_sdk/sdk_app.py)
runs with its wall clock skewed by hours, forwards or backwards, and jumped again while it runs
(libfaketime, its offset read from a file the test rewrites), behind a link that is down about
30 % of the time (FaultProxy.run_pattern), and is SIGKILLed twice mid-upload (the gateway once
in between). Nothing may be lost or repeated (the checker: the outbox's receipts are the acks,
the app's applied updates the stream log), and retries and backoff must not stall on the skewed
clock: the app finishes within a bound.

Needs Debian's ``libfaketime`` (``apt-get install libfaketime``); skipped without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from client_sdk import Outbox
from client_sdk.loadgen.proxy import FaultProxy
from gateway.testing.checker import Ack, Received, StreamLog, channels_by_rules, check
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_reader import read_committed
from tests.client_sdk import sdk_app
from tests.integration.gateway_client import streaming_gateway
from tests.integration.kafka_topics import TestTopics

pytestmark = pytest.mark.integration

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
HOUR = 3600
SKEWS = {
    # offsets (seconds) of the app's wall clock: at start, after the first kill, mid-run
    # after the second kill (a jump while the process runs)
    "forward": (6 * HOUR, 6 * HOUR, 12 * HOUR),
    "backward": (-6 * HOUR, -6 * HOUR, -12 * HOUR),
}
LINK_UP_S, LINK_DOWN_S = 0.7, 0.3
"""The link flaps: down about 30 % of the time."""


@pytest.fixture
def topics() -> TestTopics:
    return TestTopics()


@pytest.fixture
def gateway(
    kafka_broker: KafkaBroker, tmp_path: Path, topics: TestTopics
) -> Iterator[GatewayProcess]:
    with streaming_gateway(tmp_path / "gw", topics.settings(kafka_broker.bootstrap)) as gw:
        yield gw


def set_clock(path: Path, offset_s: int) -> None:
    path.write_text(f"{offset_s:+d}\n")


def start_app(url: str, workdir: Path, total: int, clock: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(clock),
        "FAKETIME_CACHE_DURATION": "1",  # the offset file is read again every second
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # a device's wall clock moves; its uptime does not
    }
    with (workdir / "app.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.client_sdk.sdk_app", url, str(workdir), str(total)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def acks_of(workdir: Path, total: int) -> list[Ack]:
    """The outbox's receipts as acks, in publish order (the app publishes quantity q as the
    outbox's event q + 1 with key ``<store>:SKU-<q % 7>``)."""
    with Outbox(workdir / "outbox.db") as outbox:
        receipts = outbox.receipts(limit=total + 1)
        assert outbox.pending_count() == 0
    assert all(r.ok for r in receipts)
    return [
        Ack(r.event_id, f"{sdk_app.STORE}:SKU-{q % 7}", "app", q) for q, r in enumerate(receipts)
    ]


def stream_log(workdir: Path, topic: str) -> StreamLog:
    with sqlite3.connect(workdir / "state.db") as db:
        rows = db.execute("SELECT partition, kafka_offset FROM seen ORDER BY rowid").fetchall()
    return StreamLog(
        "app", sdk_app.CHANNEL, [Received(topic, p, o, sdk_app.CHANNEL) for p, o in rows]
    )


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime missing: apt-get install it")
@pytest.mark.parametrize("skew", ["forward", "backward"])
@pytest.mark.timeout(1500)
async def test_skewed_clock_flapping_link_and_app_kills_lose_and_repeat_nothing(
    gateway: GatewayProcess,
    kafka_broker: KafkaBroker,
    topics: TestTopics,
    tmp_path: Path,
    long_run: bool,
    skew: str,
) -> None:
    total = 6_000 if long_run else 900
    bound_s = 900.0 if long_run else 180.0
    """The app must be done by then (it publishes for about total / 50 * 0.6 s)."""
    offsets = SKEWS[skew]
    rng = random.Random()
    workdir = tmp_path / "device"
    workdir.mkdir()
    clock = tmp_path / "clock"
    set_clock(clock, offsets[0])
    started = time.monotonic()
    async with FaultProxy("127.0.0.1", gateway.port) as proxy:
        loop = asyncio.get_running_loop()
        faults = asyncio.create_task(
            proxy.run_pattern(LINK_UP_S, LINK_DOWN_S, rng, until=loop.time() + bound_s)
        )
        app = start_app(proxy.url, workdir, total, clock)
        try:
            for kill in range(2):  # the app itself, mid-upload
                await asyncio.sleep(rng.uniform(2.0, 4.0))
                assert app.poll() is None, "the app finished before it could be killed"
                app.kill()
                app.wait(10)
                set_clock(clock, offsets[1])
                app = start_app(proxy.url, workdir, total, clock)
                if kill == 0:  # and the gateway once, in between
                    await asyncio.sleep(rng.uniform(1.0, 2.0))
                    gateway.kill()
                    await asyncio.to_thread(gateway.start)
            await asyncio.sleep(rng.uniform(1.0, 2.0))
            set_clock(clock, offsets[2])  # the clock jumps while the app runs
            left = bound_s - (time.monotonic() - started)
            try:
                code: int | None = await asyncio.to_thread(app.wait, max(1.0, left))
            except subprocess.TimeoutExpired:
                code = None
        finally:
            if app.poll() is None:
                app.kill()
            faults.cancel()
        elapsed = time.monotonic() - started
        log = (workdir / "app.log").read_text()[-3000:]
        assert code == 0, f"app not done in {bound_s:g}s (stuck?):\n{log}"
        stats = proxy.stats()

    acked = acks_of(workdir, total)
    report = await check(
        kafka_broker.bootstrap,
        [topics.inventory],
        acked,
        sent={a.event_id for a in acked},
        streams=[stream_log(workdir, topics.inventory)],
        channels_of=channels_by_rules(topics.channel_rules),
        stores={"gw": gateway.data_dir},
        dead_letter_topic=topics.dead_letters,
    )
    # the skew was real: the app stamped its events with its own (skewed) clock
    records = await read_committed(kafka_broker.bootstrap, [topics.inventory])
    stamps = [datetime.fromisoformat(json.loads(r.value or b"")["event_time"]) for r in records]
    skews_seen = sorted(round((s.timestamp() - time.time()) / HOUR) for s in stamps)
    print(
        f"\nclient faults ({skew} skew, offsets {[o // HOUR for o in offsets]} h):"
        f" {total} events, app killed twice, gateway once; link cut {stats.cuts} times"
        f" ({stats.dropped} connections dropped, {stats.refused} refused),"
        f" event_time offsets seen {sorted(set(skews_seen))} h; done in {elapsed:.1f}s"
        f" (bound {bound_s:g}s)\n{report}"
    )
    assert report.ok, str(report)
    assert len(acked) == total
    assert stats.cuts > 0
    assert {round(o / HOUR) for o in offsets} & set(skews_seen), "the clock was not skewed"
