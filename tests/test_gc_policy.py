"""The cycle collector policy: survivors frozen out of every scan, young cycles freed first,
every collection's pause and freed cycles reported, nothing left behind at stop."""

from __future__ import annotations

import asyncio
import gc
import re
import weakref
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from gateway.config import GatewayConfig
from gateway.gc_policy import GC_THRESHOLDS, GcPolicy, GcSettings
from gateway.metrics import GatewayMetrics

SURVIVORS = 20_000


class Node:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    """Each test leaves the process's collector as it found it."""
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    gc.disable()  # only the collections a test makes
    try:
        yield
    finally:
        gc.unfreeze()
        gc.callbacks[:] = callbacks
        gc.set_threshold(*thresholds)
        gc.enable()


def sample(metrics: GatewayMetrics, name: str, generation: int | None = None) -> float:
    labels = {} if generation is None else {"generation": str(generation)}
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_survivors_are_frozen_out_of_the_full_collection() -> None:
    policy = GcPolicy(GcSettings(), GatewayMetrics())
    survivors = [[i] for i in range(SURVIVORS)]
    gc.collect()  # all of them in the oldest generation, as a long-lived connection's objects
    assert len(gc.get_objects(2)) >= SURVIVORS

    policy.freeze_survivors()

    assert len(gc.get_objects(2)) < SURVIVORS / 10  # a full collection no longer scans them
    assert gc.get_freeze_count() >= SURVIVORS
    assert survivors[-1] == [SURVIVORS - 1]  # frozen objects are the same live objects


def test_young_cycles_are_freed_before_the_freeze_not_kept_forever() -> None:
    policy = GcPolicy(GcSettings(), GatewayMetrics())
    cycle = Node()
    alive = weakref.ref(cycle)
    del cycle

    policy.freeze_survivors()

    assert alive() is None


def test_a_frozen_object_is_still_freed_by_reference_counting() -> None:
    policy = GcPolicy(GcSettings(), GatewayMetrics())
    holder = [Node.__new__(Node)]  # no cycle
    alive = weakref.ref(holder[0])
    policy.freeze_survivors()

    holder.clear()

    assert alive() is None


async def test_start_applies_the_thresholds_freezes_periodically_and_stop_undoes_it() -> None:
    metrics = GatewayMetrics()
    policy = GcPolicy(GcSettings(freeze_interval_s=0.02), metrics)
    policy.start()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 0  # start-up objects, at once

    for _ in range(250):  # bounded: 5 s
        if sample(metrics, "sync_gateway_gc_freezes_total") >= 2:
            break
        await asyncio.sleep(0.02)
    assert sample(metrics, "sync_gateway_gc_freezes_total") >= 2

    policy.stop()
    frozen = sample(metrics, "sync_gateway_gc_freezes_total")
    await asyncio.sleep(0.1)
    assert sample(metrics, "sync_gateway_gc_freezes_total") == frozen
    assert all(getattr(cb, "__self__", None) is not policy for cb in gc.callbacks)


async def test_no_periodic_freeze_when_the_interval_is_zero() -> None:
    metrics = GatewayMetrics()
    policy = GcPolicy(GcSettings(freeze_interval_s=0), metrics)
    policy.start()
    await asyncio.sleep(0.05)
    policy.stop()
    assert sample(metrics, "sync_gateway_gc_freezes_total") == 0


@pytest.mark.parametrize("generation", [0, 1, 2])
async def test_each_collection_reports_its_pause_and_the_cycles_it_freed(generation: int) -> None:
    metrics = GatewayMetrics()
    policy = GcPolicy(GcSettings(freeze_interval_s=0), metrics)
    policy.start()
    try:
        for _ in range(3):
            Node()

        gc.collect(generation)

        count = "sync_gateway_gc_pause_seconds_count"
        assert sample(metrics, count, generation) == 1
        assert sample(metrics, "sync_gateway_gc_pause_seconds_sum", generation) > 0
        assert sample(metrics, "sync_gateway_gc_collected_objects_total", generation) >= 3
        others = [g for g in range(3) if g != generation]
        assert all(sample(metrics, count, g) == 0 for g in others)
    finally:
        policy.stop()


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="freeze_interval_s"):
        GcSettings(freeze_interval_s=-1)


@pytest.mark.parametrize("interval", [0, 1, 10, 3600])
def test_the_setting_takes_off_or_at_least_a_second(interval: float) -> None:
    assert GatewayConfig(gc_freeze_interval_s=interval).gc_freeze_interval_s == interval


@pytest.mark.parametrize(
    ("interval", "words"), [(0.5, "0 (off) or at least 1"), (-1, "greater than or equal to 0")]
)
def test_the_setting_refuses_a_collection_more_than_once_a_second(
    interval: float, words: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(words)):
        GatewayConfig(gc_freeze_interval_s=interval)


def test_a_pause_counts_in_the_first_bucket_at_or_above_it() -> None:
    metrics = GatewayMetrics()
    for pause_s in (0.01, 0.0100001, 11.0):  # on a bound, just above it, above them all
        metrics.collector.observe(2, pause_s, 0)

    def bucket(le: str) -> float:
        value = metrics.registry.get_sample_value(
            "sync_gateway_gc_pause_seconds_bucket", {"generation": "2", "le": le}
        )
        assert value is not None
        return value

    assert (bucket("0.005"), bucket("0.01"), bucket("0.025"), bucket("10.0")) == (0, 1, 2, 2)
    assert bucket("+Inf") == 3
    assert sample(metrics, "sync_gateway_gc_pause_seconds_sum", 2) == pytest.approx(11.0200001)


async def test_started_twice_it_still_reports_each_collection_once() -> None:
    metrics = GatewayMetrics()
    policy = GcPolicy(GcSettings(freeze_interval_s=0.02), metrics)
    policy.start()
    policy.start()
    try:
        gc.collect(0)
        assert sample(metrics, "sync_gateway_gc_pause_seconds_count", 0) == 1
    finally:
        policy.stop()
    assert all(getattr(cb, "__self__", None) is not policy for cb in gc.callbacks)
