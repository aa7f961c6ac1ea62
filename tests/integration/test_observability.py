"""Operations against a real gateway and broker: trace context from the HTTP request into the
Kafka headers, JSON log lines carrying the request's correlation id, and `sync-gateway status`
against a running instance."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from gateway.testing.kafka_reader import read_committed
from tests.factories import order_placed
from tests.integration.gateway_client import wait_drained
from tests.integration.kafka_topics import TestTopics

pytestmark = pytest.mark.integration


def status_command(url: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_GATEWAY_")}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", "--url", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_trace_context_reaches_kafka_and_logs_carry_the_correlation_id(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topics = TestTopics()
    traced, untraced = order_placed("o-traced"), order_placed("o-plain")
    with GatewayProcess(tmp_path / "gw", settings=topics.settings(kafka_broker.bootstrap)) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            answer = await http.post(
                "/v1/events",
                json={"events": [traced]},
                headers={"traceparent": TRACEPARENT, "X-Correlation-Id": "checkout-42"},
            )
            assert answer.status_code == 200
            assert answer.headers["x-correlation-id"] == "checkout-42"
            plain = await http.post("/v1/events", json={"events": [untraced]})
            generated = plain.headers["x-correlation-id"]
            assert len(generated) == 32
            await wait_drained(http)
        # the status command asks the running instance
        report = json.loads(await asyncio.to_thread(status_command, gw.url))
        assert report["backlog"]["events"] == 0
        assert report["kafka"]["state"] == "up"
        log_text = gw.log_path.read_text()
    records = {r.event_id: r for r in await read_committed(kafka_broker.bootstrap, [topics.orders])}
    assert records[traced["event_id"]].headers["traceparent"] == TRACEPARENT.encode()
    assert "traceparent" not in records[untraced["event_id"]].headers
    lines = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    assert lines, log_text[-2000:]
    assert all({"ts", "level", "logger", "message", "instance"} <= set(line) for line in lines)
    correlated = {line.get("correlation_id") for line in lines}
    assert {"checkout-42", generated} <= correlated, correlated


def test_text_log_format_is_available(tmp_path: Path) -> None:
    settings = {"kafka_bootstrap": "127.0.0.1:1", "log_format": "text"}
    with GatewayProcess(tmp_path, settings=settings) as gw:
        time.sleep(0.2)
        first = gw.log_path.read_text().splitlines()[0]
    assert not first.startswith("{")
