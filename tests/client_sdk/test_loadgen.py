"""The load generator end to end: a real gateway process and broker, 200 simulated devices on a
link that goes down and up, then Kafka read ``read_committed``: nothing lost, nothing doubled.
``--long`` runs more events, for longer, with subscriptions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from client_sdk.loadgen import latency
from client_sdk.loadgen.cli import main, parse_args, run_cli
from client_sdk.loadgen.plot import plot_timeline
from client_sdk.loadgen.report import LoadReport
from gateway.testing.gateway_process import GatewayProcess
from gateway.testing.kafka_broker import KafkaBroker
from tests.integration.gateway_client import wait_streaming
from tests.integration.kafka_topics import TestTopics

pytestmark = pytest.mark.integration


@pytest.fixture
def topics() -> TestTopics:
    return TestTopics()


@pytest.fixture
async def gateway(
    kafka_broker: KafkaBroker, topics: TestTopics, tmp_path: Path
) -> AsyncIterator[GatewayProcess]:
    settings = topics.settings(kafka_broker.bootstrap)
    with GatewayProcess(tmp_path / "gw", settings=settings) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            await wait_streaming(http, 6)
        yield gw


def args(gw: GatewayProcess, bootstrap: str, topics: TestTopics, *extra: str) -> list[str]:
    return [
        "--gateway",
        gw.url,
        "--kafka-bootstrap",
        bootstrap,
        "--topic",
        topics.inventory,
        "--no-progress",
        "--drain-timeout",
        "60",
        *extra,
    ]


def assert_clean(report: LoadReport, events: int) -> None:
    text = report.text()  # every failure shows the whole report, with its notes
    assert report.published == events, text
    assert report.verified, text
    assert (report.lost, report.duplicated, report.pending) == (0, 0, 0), text
    assert report.rejected == 0, text
    assert report.accepted + report.duplicate == events, text
    assert report.kafka_records == events, text
    assert report.ok, text


async def test_200_devices_on_a_flaky_link_lose_and_double_nothing(
    gateway: GatewayProcess,
    kafka_broker: KafkaBroker,
    topics: TestTopics,
    tmp_path: Path,
    long_run: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    devices, per_device = (200, 100) if long_run else (200, 10)
    rate, up, down = ("2000", "2", "0.5") if long_run else ("800", "0.5", "0.25")
    started = time.monotonic()
    report = await run_cli(
        args(
            gateway,
            kafka_broker.bootstrap,
            topics,
            "--devices",
            str(devices),
            "--events-per-device",
            str(per_device),
            "--rate",
            rate,
            "--up",
            up,
            "--down",
            down,
            "--seed",
            "5",
            "--workdir",
            str(tmp_path / "devices"),
            *(["--subscribe", "--stores", "20"] if long_run else []),
        )
    )
    took = time.monotonic() - started
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\n{out}load run took {took:.1f} s")
    assert "result" in out
    assert_clean(report, devices * per_device)
    assert report.proxy is not None
    assert report.proxy.cuts >= 2, "the link never went down"
    assert report.proxy.dropped + report.proxy.refused > 0
    assert report.ack_latency is not None
    assert report.ack_latency.count == devices * per_device
    if long_run:
        assert report.stream_duplicates == report.stream_missing == 0


async def test_subscriptions_see_every_event_once_across_cuts(
    gateway: GatewayProcess, kafka_broker: KafkaBroker, topics: TestTopics
) -> None:
    report = await run_cli(
        args(
            gateway,
            kafka_broker.bootstrap,
            topics,
            "--devices",
            "20",
            "--events-per-device",
            "10",
            "--stores",
            "4",
            "--subscribe",
            "--rate",
            "100",
            "--up",
            "0.5",
            "--down",
            "0.3",
        )
    )
    assert_clean(report, 200)
    text = report.text()
    assert report.e2e_latency is not None, text
    assert (report.stream_duplicates, report.stream_missing) == (0, 0), text
    assert report.stream_received == 200 * 5, text  # each store's events reach its 5 devices
    assert report.proxy is not None, text
    assert report.proxy.cuts >= 1, text


def test_cli_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--devices", "0"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        main(["--gateway", "https://example.com"])


def test_latency_recorder_without_hdrhistogram_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(latency, "_load_hdr", lambda: None)
    recorder = latency.LatencyRecorder()
    for ms in range(1, 1001):
        recorder.record(ms / 1000)
    summary = recorder.summary()
    assert not summary.exact
    assert (summary.count, summary.p50_ms, summary.p99_ms, summary.max_ms) == (1000, 500, 990, 1000)
    assert "sampled" in summary.text()


def test_latency_recorder_with_hdrhistogram() -> None:
    recorder = latency.LatencyRecorder()
    for ms in range(1, 1001):
        recorder.record(ms / 1000)
    summary = recorder.summary()
    assert summary.exact
    assert summary.p50_ms == pytest.approx(500, rel=0.01)


def test_plot_is_written_or_skipped_with_a_note(tmp_path: Path) -> None:
    target = tmp_path / "run.png"
    note = plot_timeline([(0.0, 0, 0, True), (0.5, 10, 5, False), (1.0, 20, 20, True)], target)
    if note is None:
        assert target.stat().st_size > 0
    else:
        assert "matplotlib" in note
        assert not target.exists()
