"""Rate limiters against a real redis-server: one contract for the local and the Redis limiter,
buckets shared across instances, and the fallback to per-instance limits while Redis is down."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.adapters.redis_limits import RedisRateLimiter, bounded_key
from gateway.core.rate_limit import LocalRateLimiter, RateLimit, RateLimiter
from gateway.testing.redis_server import RedisServer

pytestmark = pytest.mark.integration

LIMIT = RateLimit(rate=20.0, burst=5.0)


def new_key() -> str:
    return f"subject-{uuid.uuid4()}"


@pytest.fixture(params=["local", "redis"])
async def limiter(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[RateLimiter]:
    impl: RateLimiter
    if request.param == "local":
        impl = LocalRateLimiter(LIMIT)
    else:
        impl = RedisRateLimiter(redis_server.url, LIMIT)
    try:
        yield impl
    finally:
        await impl.close()


async def admitted(limiter: RateLimiter, key: str, n: int, cost: float = 1.0) -> list[bool]:
    return [(await limiter.acquire(key, cost)).allowed for _ in range(n)]


# --- contract: the same assertions for both limiters -------------------------------------------


async def test_burst_is_admitted_then_refused_with_retry_after(limiter: RateLimiter) -> None:
    key = new_key()
    assert await admitted(limiter, key, 5) == [True] * 5
    refused = await limiter.acquire(key)
    assert not refused.allowed
    # At most one token short: 1 / rate, a little less if time passed since the burst.
    assert 0 < refused.retry_after_s <= 1 / LIMIT.rate + 1e-9


async def test_waiting_retry_after_is_enough(limiter: RateLimiter) -> None:
    key = new_key()
    await admitted(limiter, key, 5)
    for _ in range(3):
        refused = await limiter.acquire(key)
        assert not refused.allowed
        await asyncio.sleep(refused.retry_after_s + 0.005)
        assert (await limiter.acquire(key)).allowed


async def test_refill_over_time(limiter: RateLimiter) -> None:
    key = new_key()
    await admitted(limiter, key, 5)
    await asyncio.sleep(3 / LIMIT.rate + 0.02)  # about three tokens back
    got = await admitted(limiter, key, 5)
    assert got[:3] == [True] * 3
    assert got[-1] is False


async def test_keys_are_independent(limiter: RateLimiter) -> None:
    a, b = new_key(), new_key()
    await admitted(limiter, a, 5)
    assert not (await limiter.acquire(a)).allowed
    assert await admitted(limiter, b, 5) == [True] * 5


async def test_cost_is_spent(limiter: RateLimiter) -> None:
    key = new_key()
    assert (await limiter.acquire(key, cost=4.5)).allowed
    refused = await limiter.acquire(key, cost=1.0)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.5 / LIMIT.rate, abs=0.01)
    assert (await limiter.acquire(key, cost=0.0)).allowed


async def test_cost_above_burst_is_a_value_error(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="cost"):
        await limiter.acquire(new_key(), cost=6.0)


async def test_long_keys_work(limiter: RateLimiter) -> None:
    key = "x" * 5000 + new_key()
    assert await admitted(limiter, key, 6) == [True] * 5 + [False]


# --- Redis specifics ----------------------------------------------------------------------------


async def test_bucket_is_shared_by_two_instances(redis_server: RedisServer) -> None:
    async with (
        RedisRateLimiter(redis_server.url, LIMIT) as one,
        RedisRateLimiter(redis_server.url, LIMIT) as two,
    ):
        key = new_key()
        assert await admitted(one, key, 3) == [True] * 3
        assert await admitted(two, key, 2) == [True] * 2
        assert not (await one.acquire(key)).allowed
        assert not (await two.acquire(key)).allowed
        assert not one.degraded
        assert not two.degraded


async def test_bucket_key_has_a_prefix_and_expires(redis_server: RedisServer) -> None:
    limit = RateLimit(rate=1.0, burst=2.0)
    async with RedisRateLimiter(redis_server.url, limit, prefix="test-rl:") as limiter:
        key = new_key()
        assert (await limiter.acquire(key)).allowed
        redis_key = limiter.redis_key(key)
        assert redis_key.startswith("test-rl:")
        assert len(bounded_key("test-rl:", "rl", "y" * 10_000)) < 300
        with redis_server.client() as client:
            ttl_ms = client.pttl(redis_key)
        assert 0 < ttl_ms <= 2000 + 1000  # refill time (2 s) plus a second


async def test_idle_key_vanishes(redis_server: RedisServer) -> None:
    limit = RateLimit(rate=100.0, burst=1.0)  # full again after 10 ms: TTL 1.01 s
    async with RedisRateLimiter(redis_server.url, limit) as limiter:
        key = new_key()
        assert (await limiter.acquire(key)).allowed
        with redis_server.client() as client:
            assert client.exists(limiter.redis_key(key)) == 1
            deadline = time.monotonic() + 5.0
            for _ in range(100):
                if client.exists(limiter.redis_key(key)) == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert client.exists(limiter.redis_key(key)) == 0


async def test_redis_down_falls_back_to_local_then_shares_again(
    redis_server: RedisServer,
) -> None:
    cooldown = 0.3
    one = RedisRateLimiter(redis_server.url, LIMIT, cooldown_s=cooldown)
    two = RedisRateLimiter(redis_server.url, LIMIT, cooldown_s=cooldown)
    try:
        assert (await one.acquire(new_key())).allowed  # connected
        redis_server.kill()
        key = new_key()
        started = time.monotonic()
        got = await admitted(one, key, 6)
        assert time.monotonic() - started < 1.0  # fails fast, then no more Redis calls
        assert got == [True] * 5 + [False]  # still enforced, by this instance alone
        assert one.degraded
        assert one.redis_failures == 1  # retried after the cooldown only, not on every call
        # The documented cost: each instance has its own bucket while Redis is down.
        assert await admitted(two, key, 6) == [True] * 5 + [False]
        assert two.degraded

        redis_server.start()
        await asyncio.sleep(cooldown + 0.05)
        shared = new_key()
        assert await admitted(one, shared, 3) == [True] * 3
        assert not one.degraded
        assert await admitted(two, shared, 3) == [True, True, False]
        assert not two.degraded
    finally:
        redis_server.start()
        await one.close()
        await two.close()


async def test_slow_redis_falls_back_within_the_socket_timeout(
    redis_server: RedisServer,
) -> None:
    async with RedisRateLimiter(
        redis_server.url, LIMIT, socket_timeout_s=0.1, cooldown_s=10.0
    ) as limiter:
        key = new_key()
        assert (await limiter.acquire(key)).allowed
        with redis_server.client() as client:
            client.execute_command("CLIENT", "PAUSE", "800", "ALL")
        try:
            started = time.monotonic()
            decision = await limiter.acquire(key)
            elapsed = time.monotonic() - started
            assert decision.allowed  # the local bucket of this instance starts full
            assert elapsed < 0.5
            assert limiter.degraded
        finally:
            with redis_server.client() as client:
                client.execute_command("CLIENT", "UNPAUSE")
