"""The fan-out benchmark's reading of the gateway's collector pauses and downstream consumer
totals from ``GET /metrics``."""

from __future__ import annotations

import functools

import pytest
from prometheus_client import generate_latest

from benchmarks.fanout.phases import (
    ConsumerTotals,
    collector_delta,
    collector_totals_of,
    consumer_totals_of,
)
from benchmarks.fanout.report import collector_text, consumer_text
from gateway.metrics import GatewayMetrics


def test_pauses_are_read_per_generation_and_differenced() -> None:
    metrics = GatewayMetrics()
    metrics.collector.observe(0, 0.002, 0)
    before = collector_totals_of(generate_latest(metrics.registry).decode())
    for seconds in (0.010, 0.020):
        metrics.collector.observe(1, seconds, 0)
    metrics.collector.observe(0, 0.001, 0)

    after = collector_totals_of(generate_latest(metrics.registry).decode())
    phase = collector_delta(before, after)

    assert before == {"0": (1, 0.002), "1": (0, 0.0), "2": (0, 0.0)}
    assert phase.keys() == {"0", "1", "2"}
    assert phase["0"] == pytest.approx((1, 0.001))
    assert phase["1"] == pytest.approx((2, 0.030))
    assert phase["2"] == (0, 0.0)
    assert collector_delta({}, phase, phase)["1"][0] == 4  # summed over gateways
    assert "generation 1: 2 (30 ms)" in collector_text(phase)


def test_the_consumer_totals_are_read_and_differenced() -> None:
    metrics = GatewayMetrics()
    totals = {"records": 100.0, "batches": 2.0, "work_seconds": 0.5}
    for name in totals:
        metrics.downstream.set_function(name, functools.partial(totals.__getitem__, name))
    before = consumer_totals_of(generate_latest(metrics.registry).decode(), at=10.0)
    totals.update(records=1400.0, batches=12.0, work_seconds=9.7)
    after = consumer_totals_of(generate_latest(metrics.registry).decode(), at=20.0)

    phase = after - before
    assert before == ConsumerTotals(0.5, 2, 100, 10.0)
    assert phase.work_s == pytest.approx(9.2)
    assert (phase.batches, phase.records, phase.at) == (10, 1300, 10.0)
    assert (phase + phase).batches == 20  # summed over gateways
    assert consumer_text(phase) == (
        "downstream consumer (server): storing and fanning out 92% of the phase,"
        " 1,300 records in 10 batches (130 per batch)"
    )
