"""Token-bucket rate limiting, pure: the clock is a value handed in by the caller.

A bucket holds at most ``burst`` tokens and gains ``rate`` tokens per second; a request of cost
``c`` is admitted when the bucket holds at least ``c`` tokens, which it then spends. Over any
interval of length ``t`` a bucket therefore admits at most ``burst + rate * t`` tokens' worth of
requests, and a refused request learns exactly when it would be admitted
(:attr:`Decision.retry_after_s`).

:class:`LocalRateLimiter` keeps one bucket per key (e.g. a token's subject) in one process, with
a bounded number of keys: buckets that are full are dropped first (a full bucket behaves exactly
like a missing one), then the least recently used. The Redis adapter
(``gateway.adapters.redis_limits``) runs the same arithmetic inside Redis for a fleet and falls
back to a :class:`LocalRateLimiter` when Redis is unavailable; both satisfy :class:`RateLimiter`.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

EPSILON: Final = 1e-9
"""Relative slack on comparisons, so that waiting exactly ``retry_after_s`` is enough despite
floating-point rounding (``tokens + elapsed * rate`` may land a hair below ``cost``)."""

_PRUNE_PER_CALL: Final = 8
"""At most this many full buckets are dropped per call: pruning stays O(1) per request."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one request: admitted or not, and if not, when to try again.

    ``retry_after_s`` is 0.0 when ``allowed``; otherwise the time after which the same request
    would be admitted if nothing else spends tokens of the bucket meanwhile.
    """

    allowed: bool
    retry_after_s: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """``retry_after_s`` for an HTTP ``Retry-After`` header: whole seconds, rounded up."""
        return str(max(1, math.ceil(self.retry_after_s))) if not self.allowed else "0"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate`` tokens per second, at most ``burst`` at once (both > 0, finite)."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        for name, value in (("rate", self.rate), ("burst", self.burst)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, not {value!r}")

    @property
    def refill_s(self) -> float:
        """Seconds an empty bucket takes to become full."""
        return self.burst / self.rate

    def check_cost(self, cost: float) -> None:
        """ValueError unless ``0 <= cost <= burst`` (a larger cost could never be admitted)."""
        if not (math.isfinite(cost) and 0 <= cost <= self.burst):
            raise ValueError(f"cost must be between 0 and burst={self.burst:g}, not {cost!r}")


@dataclass(slots=True)
class TokenBucket:
    """One bucket's state: ``tokens`` as of time ``updated_at`` (seconds of the caller's clock).

    A new bucket starts full. Time that goes backwards counts as no time at all.
    """

    limit: RateLimit
    tokens: float
    updated_at: float

    @classmethod
    def full(cls, limit: RateLimit, now: float) -> TokenBucket:
        return cls(limit=limit, tokens=limit.burst, updated_at=now)

    def level(self, now: float) -> float:
        """The tokens the bucket holds at ``now`` (without changing it)."""
        elapsed = max(0.0, now - self.updated_at)
        return min(self.limit.burst, self.tokens + elapsed * self.limit.rate)

    def is_full(self, now: float) -> bool:
        """Whether the bucket is full at ``now``, i.e. indistinguishable from a new one."""
        return self.level(now) >= self.limit.burst * (1 - EPSILON)

    def take(self, now: float, cost: float = 1.0) -> Decision:
        """Admit a request of ``cost`` tokens at ``now`` and spend them, or refuse it.

        ValueError unless ``0 <= cost <= burst``.
        """
        self.limit.check_cost(cost)
        tokens = self.level(now)
        self.updated_at = max(self.updated_at, now)
        if tokens >= cost - EPSILON * max(1.0, cost):
            self.tokens = max(0.0, tokens - cost)
            return Decision(allowed=True)
        self.tokens = tokens
        return Decision(allowed=False, retry_after_s=(cost - tokens) / self.limit.rate)


class RateLimiter(Protocol):
    """What the app needs of a rate limiter (local or shared through Redis)."""

    async def acquire(self, key: str, cost: float = 1.0) -> Decision:
        """Admit or refuse a request of ``cost`` tokens against the bucket of ``key``."""
        ...

    async def close(self) -> None:
        """Release what the limiter holds (connections); it must not be used afterwards."""
        ...


class LocalRateLimiter:
    """Token buckets keyed by str in this process, at most ``max_keys`` of them.

    When a new key would exceed ``max_keys``, full buckets are dropped first (no effect on
    decisions), then the least recently used bucket even if not full: that key starts again
    with a full bucket, so a client can get more than its share only when more than
    ``max_keys`` keys were active within the last ``burst / rate`` seconds. ``forgiven`` counts
    such evictions (a metric worth watching: raise ``max_keys`` if it grows).

    ``clock`` gives the time in seconds for :meth:`acquire` (monotonic by default); the
    synchronous :meth:`take` takes the time as an argument instead.
    """

    def __init__(
        self,
        limit: RateLimit,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, not {max_keys}")
        self.limit = limit
        self.max_keys = max_keys
        self.clock = clock
        self.forgiven = 0
        """Buckets evicted while not full (their keys got a fresh, full bucket)."""
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def take(self, key: str, now: float, cost: float = 1.0) -> Decision:
        """Admit or refuse a request of ``cost`` tokens for ``key`` at time ``now``."""
        self.limit.check_cost(cost)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = TokenBucket.full(self.limit, now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        decision = bucket.take(now, cost)
        self._prune(now)
        return decision

    async def acquire(self, key: str, cost: float = 1.0) -> Decision:
        """:meth:`take` at ``clock()``; async only to satisfy :class:`RateLimiter` (never waits)."""
        return self.take(key, self.clock(), cost)

    async def close(self) -> None:
        """Forget every bucket."""
        self._buckets.clear()

    def _prune(self, now: float) -> None:
        """Drop a few full buckets from the least recently used end."""
        for _ in range(_PRUNE_PER_CALL):
            if not self._buckets:
                return
            key, bucket = next(iter(self._buckets.items()))
            if not bucket.is_full(now):
                return
            del self._buckets[key]

    def _make_room(self, now: float) -> None:
        while len(self._buckets) >= self.max_keys:
            _, bucket = self._buckets.popitem(last=False)
            if not bucket.is_full(now):
                self.forgiven += 1
