"""How the gateway's process uses Python's cycle collector: bounded pauses at any connection count.

CPython's collector has three generations. A collection scans every object tracked in the
generations it covers, at ~0.5 us per object in a heap of millions (each visit a cache miss),
and the event loop waits meanwhile. The stream path allocates mostly short-lived acyclic
objects (frames, cursors) that reference counting frees; what survives is the long-lived state
of connections and subscriptions, ~180 objects per connection. So:

- **Young and middle collections** are kept small by :data:`GC_THRESHOLDS`.
- **The full collection** would scan every live object: at 10k connections 1.8M of them, a
  1.3-1.4 s pause (measured). Instead, every ``freeze_interval_s`` the policy runs a middle
  collection (young cycles are freed, not kept) and moves every surviving object to the
  collector's *permanent* generation (:func:`gc.freeze`, constant time), which no collection
  scans. A full collection then scans only what survived since the last freeze.

The price: a reference cycle that becomes garbage after it was frozen is never freed. The
gateway's connection objects form none (``tests/adapters/test_stream_cycles.py``), and full
collections forced at 10k connections under load found no garbage; the metrics
``sync_gateway_gc_collected_objects`` (cycles the collector did free, by generation) and
``sync_gateway_gc_pause_seconds`` show what the collector finds and costs in production. An
object that is frozen and later released by reference counting is freed as usual.
``freeze_interval_s = 0`` turns the periodic freeze off (start-up objects are still frozen).
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass
from typing import Final

from gateway.metrics import GatewayMetrics

GC_THRESHOLDS: Final = (10_000, 3, 700)
"""Python's collector counts tracked objects allocated and not yet freed: the stream path's
short-lived acyclic objects (cursors, frames) do not add up. A young collection after 10k of
them (Python's default: 700) and a middle one after three young ones bound a pause by what they
scan: a storm of 10k connections makes ~1M objects, and with (50k, 20) the middle collection
scanned them all at once, 330-420 ms; with (10k, 10), 55-95 ms each, every 0.3 s while 10k
clients connect and every few seconds at 50k updates/s; now 18-28 ms (the same work in smaller
pieces: each surviving object is scanned once young, once middle-aged). The full collection
comes after as many allocations as before (~20M)."""

DEFAULT_FREEZE_INTERVAL_S: Final = 10.0
MIN_FREEZE_INTERVAL_S: Final = 1.0
"""Each freeze runs a middle collection (~10-25 ms at 10k connections): not more often."""


@dataclass(frozen=True, slots=True)
class GcSettings:
    """``freeze_interval_s``: seconds between two freezes of the surviving objects (0: only
    at start-up). ``thresholds``: :func:`gc.set_threshold`'s three numbers."""

    freeze_interval_s: float = DEFAULT_FREEZE_INTERVAL_S
    thresholds: tuple[int, int, int] = GC_THRESHOLDS

    def __post_init__(self) -> None:
        if self.freeze_interval_s < 0:
            raise ValueError("freeze_interval_s must not be negative")


class GcPolicy:
    """Applies :class:`GcSettings` to this process and reports each collection's pause."""

    def __init__(self, settings: GcSettings, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._stats = metrics.collector
        self._started_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Called on the event loop once the gateway has started: what exists now lives as long
        as the process, so it is collected once and frozen; then the periodic freeze begins."""
        self.stop()  # started twice: still one timer, one callback
        gc.collect()
        gc.freeze()
        gc.set_threshold(*self._settings.thresholds)
        gc.callbacks.append(self._on_gc)
        if self._settings.freeze_interval_s > 0:
            self._schedule()

    def stop(self) -> None:
        """Stop the periodic freeze and the reporting (what is frozen stays frozen: unfreezing
        would make the collector scan it all again)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def freeze_survivors(self) -> None:
        """Free the young cycles, then freeze every object still alive."""
        gc.collect(1)
        gc.freeze()
        self._stats.freezes += 1

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(
            self._settings.freeze_interval_s, self._tick
        )

    def _tick(self) -> None:
        self.freeze_survivors()
        self._schedule()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # Runs inside every collection, on whichever thread triggered it: no lock, no I/O.
        if phase == "start":
            self._started_at = time.perf_counter()
        else:
            pause_s = time.perf_counter() - self._started_at
            self._stats.observe(info["generation"], pause_s, info["collected"])
