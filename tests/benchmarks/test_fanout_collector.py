"""The fan-out benchmark's reading of the gateway's collector pauses from ``GET /metrics``."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from benchmarks.fanout.phases import collector_delta, collector_totals_of
from benchmarks.fanout.report import collector_text
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
