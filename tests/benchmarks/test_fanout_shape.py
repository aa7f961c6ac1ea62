"""How the fan-out benchmark spreads its clients over workers, channels and gateways."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from benchmarks.fanout.phases import Shape
from benchmarks.fanout.processes import cpu_seconds, rss_bytes


@pytest.mark.parametrize("gateways", [1, 2, 3])
def test_each_channels_subscribers_are_spread_evenly_over_the_gateways(gateways: int) -> None:
    shape = Shape(connections=600, channels=10, workers=4, gateways=gateways)
    triples = [t for share in shape.assignment() for t in share["channels"]]

    assert sorted(index for index, _, _ in triples) == list(range(600))
    per_pair = Counter((channel, gateway) for _, channel, gateway in triples)
    assert set(per_pair) == {(c, g) for c in range(10) for g in range(gateways)}
    assert set(per_pair.values()) == {60 // gateways}
    assert all(shape.subscribers(c) == 60 for c in range(10))


def test_process_figures_are_summed_over_pids() -> None:
    pid = os.getpid()
    assert rss_bytes(pid, pid) == pytest.approx(2 * rss_bytes(pid), rel=0.05)
    assert rss_bytes() == 0
    assert cpu_seconds() == 0.0
    assert cpu_seconds(pid, pid) >= cpu_seconds(pid) > 0
