"""Fleet-wide rate limits: the token bucket of ``gateway.core.rate_limit``, run inside Redis.

One Lua script (sent once, then called by SHA; reloaded by itself after a Redis restart) reads
the bucket, refills it, spends the cost and writes it back atomically, so every gateway instance
sharing the Redis spends from the same bucket per key. The time is Redis's own (``TIME`` inside
the script): the gateways' clocks do not matter. A bucket is a small hash under
``<prefix>rl:<key>`` that expires once it would be full again (``burst / rate`` seconds plus a
second), so idle keys vanish by themselves; keys longer than 200 bytes are replaced by their
SHA-256, so key sizes are bounded.

Behaviour when Redis is down or slow (chosen: availability, limits stay enforced)
--------------------------------------------------------------------------------
Every call to Redis is bounded by a short socket timeout (``socket_timeout_s``, default
0.25 s) and is never retried by the client. When a call fails (refused, timed out, Redis error)
the limiter answers from a :class:`~gateway.core.rate_limit.LocalRateLimiter` of this instance
with the same rate and burst, and keeps doing so without touching Redis for ``cooldown_s``
(default 5 s); then one call probes Redis again (the others stay local while it is in flight),
and on success the limiter is shared again. So during a Redis outage:

- requests are neither refused wholesale nor waved through unlimited: each instance enforces
  the limit on its own, so a fleet of N instances admits up to N times the configured rate
  (plus N bursts) per key; a single instance behaves exactly as configured;
- the added latency is at most one socket timeout per instance per ``cooldown_s``;
- after recovery, Redis buckets start full (a flush or restart forgives past spending once).

``degraded`` tells whether the limiter currently answers locally; ``redis_failures`` counts
failed calls (for metrics and ``/readyz`` details).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.core.rate_limit import EPSILON, Decision, LocalRateLimiter, RateLimit

log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "sync-gateway:"
MAX_KEY_BYTES: Final = 200
"""Longer keys are replaced by ``h:<sha256>`` so that Redis keys stay small."""
MAX_PREFIX_BYTES: Final = 100

# KEYS[1] bucket; ARGV: rate (tokens/s), burst, cost, ttl (ms), epsilon.
# Replies {1, "0"} when admitted, {0, "<retry after, s>"} when refused (a string: Lua numbers
# become integers in Redis replies). A refusal writes nothing: the stored state stays exact.
_TOKEN_BUCKET_LUA: Final = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local ttl_ms = tonumber(ARGV[4])
local eps = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if ts > now then
  now = ts
end
tokens = math.min(burst, tokens + (now - ts) * rate)
if tokens >= cost - eps * math.max(1, cost) then
  tokens = math.max(0, tokens - cost)
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
             'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  return {1, '0'}
end
return {0, string.format('%.17g', (cost - tokens) / rate)}
"""


def bounded_key(prefix: str, kind: str, key: str) -> str:
    """``<prefix><kind>:k:<key>``, or ``<prefix><kind>:h:<sha256 of key>`` for long keys."""
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_KEY_BYTES:
        return f"{prefix}{kind}:k:{key}"
    return f"{prefix}{kind}:h:{hashlib.sha256(raw).hexdigest()}"


def check_prefix(prefix: str) -> str:
    """The prefix, or ValueError if it is longer than ``MAX_PREFIX_BYTES``."""
    if len(prefix.encode()) > MAX_PREFIX_BYTES:
        raise ValueError(f"key prefix longer than {MAX_PREFIX_BYTES} bytes")
    return prefix


def redis_client(url: str, *, socket_timeout_s: float, max_connections: int) -> Redis:
    """A client that fails fast: short socket timeouts, no retries, a bounded pool (a caller
    waits at most ``socket_timeout_s`` for a free connection)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=socket_timeout_s,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    return Redis.from_pool(pool)


class RedisClientContext:
    """``async with`` for the Redis adapters: :meth:`close` on the way out."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class RedisRateLimiter(RedisClientContext):
    """Token buckets per key shared by every instance using the same Redis (see module doc).

    Satisfies :class:`gateway.core.rate_limit.RateLimiter`. Close it with :meth:`close` (or use
    it as an async context manager).
    """

    def __init__(
        self,
        url: str,
        limit: RateLimit,
        *,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout_s: float = 0.25,
        cooldown_s: float = 5.0,
        max_connections: int = 32,
        max_local_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.prefix = check_prefix(prefix)
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._client = redis_client(
            url, socket_timeout_s=socket_timeout_s, max_connections=max_connections
        )
        self._script = self._client.register_script(_TOKEN_BUCKET_LUA)
        self._ttl_ms = math.ceil(limit.refill_s * 1000) + 1000
        self.local = LocalRateLimiter(limit, max_keys=max_local_keys, clock=clock)
        """The fallback used while Redis is unavailable."""
        self.redis_failures = 0
        self._down_until: float | None = None

    @property
    def degraded(self) -> bool:
        """Whether decisions currently come from the local fallback (Redis failed recently)."""
        return self._down_until is not None

    def redis_key(self, key: str) -> str:
        """The Redis key of ``key``'s bucket."""
        return bounded_key(self.prefix, "rl", key)

    async def acquire(self, key: str, cost: float = 1.0) -> Decision:
        """Admit or refuse a request of ``cost`` tokens (0 <= cost <= burst) for ``key``."""
        self.limit.check_cost(cost)
        now = self._clock()
        if self._down_until is not None:
            if now < self._down_until:
                return self.local.take(key, now, cost)
            # This call probes Redis; concurrent calls stay local until it answers.
            self._down_until = now + self.cooldown_s
        try:
            reply = await self._script(
                keys=[self.redis_key(key)],
                args=[
                    repr(self.limit.rate),
                    repr(self.limit.burst),
                    repr(cost),
                    self._ttl_ms,
                    repr(EPSILON),
                ],
            )
            decision = _parse_reply(reply)
        except (RedisError, OSError, ValueError) as exc:
            self._mark_down(exc)
            return self.local.take(key, self._clock(), cost)
        if self._down_until is not None:
            log.warning("Redis is reachable again: rate limits are shared across the fleet")
            self._down_until = None
        return decision

    def _mark_down(self, exc: Exception) -> None:
        self.redis_failures += 1
        if self._down_until is None:
            log.warning(
                "Redis unavailable for rate limits (%s: %s): enforcing limits per instance "
                "for now, next try in %g s",
                type(exc).__name__,
                exc,
                self.cooldown_s,
            )
        self._down_until = self._clock() + self.cooldown_s

    async def close(self) -> None:
        """Close the Redis connections; the limiter must not be used afterwards."""
        await self._client.aclose()
        await self.local.close()


def _parse_reply(reply: object) -> Decision:
    """``[1, b"0"]`` or ``[0, b"<seconds>"]`` -> Decision; ValueError for anything else."""
    if not (isinstance(reply, list) and len(reply) == 2):
        raise ValueError(f"unexpected reply from the rate-limit script: {reply!r}")
    allowed, retry_after = reply
    if not isinstance(retry_after, bytes | str) or allowed not in (0, 1):
        raise ValueError(f"unexpected reply from the rate-limit script: {reply!r}")
    if allowed == 1:
        return Decision(allowed=True)
    seconds = float(retry_after)
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"unexpected retry-after from the rate-limit script: {reply!r}")
    return Decision(allowed=False, retry_after_s=seconds)
