"""Latency recording for the load generator: HdrHistogram when it is installed.

``hdrhistogram`` is a development dependency of the project, not a runtime one, so it is
imported lazily: without it, :class:`LatencyRecorder` keeps a bounded uniform sample
(reservoir sampling) and computes percentiles from that, and says so (``exact`` is False).
Recording is thread-safe (subscription handlers run in worker threads).
"""

from __future__ import annotations

import importlib
import random
import threading
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["LatencyRecorder", "LatencySummary"]

MAX_US: Final = 3_600_000_000
"""Largest latency recorded (one hour, in microseconds); larger values are clamped."""
RESERVOIR: Final = 100_000
PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles of a latency distribution, in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    exact: bool
    """True with HdrHistogram (3 significant digits); False for a sampled estimate."""

    def text(self) -> str:
        """One line: ``n=..  p50 .. p90 .. p99 .. p99.9 .. max .. ms``."""
        if not self.count:
            return "n=0"
        return (
            f"n={self.count}  p50 {self.p50_ms:.1f}  p90 {self.p90_ms:.1f}  "
            f"p99 {self.p99_ms:.1f}  p99.9 {self.p999_ms:.1f}  max {self.max_ms:.1f} ms"
            + ("" if self.exact else "  (sampled: hdrhistogram not installed)")
        )


def _load_hdr() -> Any | None:
    try:
        module = importlib.import_module("hdrh.histogram")
    except ImportError:
        return None
    return module.HdrHistogram


class LatencyRecorder:
    """Records latencies (seconds) into an HdrHistogram, or a bounded sample without it."""

    def __init__(self, *, seed: int = 0) -> None:
        self._lock = threading.Lock()
        hdr = _load_hdr()
        self._hdr: Any | None = hdr(1, MAX_US, 3) if hdr is not None else None
        self._sample: list[int] = []
        self._seen = 0
        self._max = 0
        self._rng = random.Random(seed)

    @property
    def exact(self) -> bool:
        """True when backed by HdrHistogram."""
        return self._hdr is not None

    def record(self, seconds: float) -> None:
        """Add one latency (negative values, from clock skew, count as 0)."""
        micros = min(MAX_US, max(1, round(seconds * 1e6)))
        with self._lock:
            self._seen += 1
            self._max = max(self._max, micros)
            if self._hdr is not None:
                self._hdr.record_value(micros)
            elif len(self._sample) < RESERVOIR:
                self._sample.append(micros)
            else:
                slot = self._rng.randrange(self._seen)
                if slot < RESERVOIR:
                    self._sample[slot] = micros

    @property
    def count(self) -> int:
        """Latencies recorded."""
        return self._seen

    def percentile_ms(self, percentile: float) -> float:
        """The latency at ``percentile`` (0-100), in milliseconds (0 when empty)."""
        with self._lock:
            if not self._seen:
                return 0.0
            if self._hdr is not None:
                return float(self._hdr.get_value_at_percentile(percentile)) / 1000.0
            ordered = sorted(self._sample)
        index = min(len(ordered) - 1, max(0, round(percentile / 100.0 * len(ordered)) - 1))
        return ordered[index] / 1000.0

    def summary(self) -> LatencySummary:
        """Percentiles now."""
        p50, p90, p99, p999 = (self.percentile_ms(p) for p in PERCENTILES)
        return LatencySummary(self._seen, p50, p90, p99, p999, self._max / 1000.0, self.exact)
