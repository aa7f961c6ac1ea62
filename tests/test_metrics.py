"""Metrics the gateway reads from its flows at scrape time."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.metrics import GatewayMetrics, ReadCounters


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    values = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_a_read_counter_reads_its_function_at_every_scrape() -> None:
    registry = CollectorRegistry()
    counters = ReadCounters("app_", {"things": "Things done.", "other": "Unset."})
    registry.register(counters)
    total = [3.0]
    counters.set_function("things", lambda: total[0])
    assert scrape(registry) == {"app_things_total": 3.0, "app_other_total": 0.0}
    total[0] = 7.5
    assert scrape(registry)["app_things_total"] == 7.5


def test_a_read_counter_must_be_declared() -> None:
    counters = ReadCounters("app_", {"things": "Things done."})
    with pytest.raises(KeyError, match="app_nothing"):
        counters.set_function("nothing", lambda: 1.0)


def test_the_downstream_consumer_totals_are_exported() -> None:
    metrics = GatewayMetrics()
    metrics.downstream.set_function("records", lambda: 260)
    metrics.downstream.set_function("batches", lambda: 2)
    metrics.downstream.set_function("work_seconds", lambda: 0.04)
    metrics.downstream.set_function("log_held_seconds", lambda: 0.003)
    values = scrape(metrics.registry)
    assert values["sync_gateway_downstream_records_total"] == 260
    assert values["sync_gateway_downstream_batches_total"] == 2
    assert values["sync_gateway_downstream_work_seconds_total"] == 0.04
    assert values["sync_gateway_downstream_log_held_seconds_total"] == 0.003
