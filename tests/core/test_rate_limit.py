"""Token bucket maths and the bounded local limiter, with a fake clock."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.rate_limit import Decision, LocalRateLimiter, RateLimit, TokenBucket


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal() -> None:
    bucket = TokenBucket.full(RateLimit(rate=2.0, burst=5.0), now=0.0)
    assert [bucket.take(0.0).allowed for _ in range(5)] == [True] * 5
    refused = bucket.take(0.0)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.5)


def test_refill_is_linear_and_capped_at_burst() -> None:
    limit = RateLimit(rate=10.0, burst=3.0)
    bucket = TokenBucket.full(limit, now=0.0)
    for _ in range(3):
        assert bucket.take(0.0).allowed
    assert bucket.level(0.1) == pytest.approx(1.0)
    assert bucket.level(0.25) == pytest.approx(2.5)
    assert bucket.level(100.0) == 3.0
    assert bucket.take(0.1).allowed
    assert not bucket.take(0.1).allowed


@pytest.mark.parametrize(
    ("rate", "burst", "cost"),
    [(1.0, 1.0, 1.0), (3.0, 10.0, 7.0), (0.1, 2.0, 1.5), (1000.0, 5.0, 0.3), (7.0, 1.0, 1.0)],
)
def test_retry_after_is_exact(rate: float, burst: float, cost: float) -> None:
    bucket = TokenBucket.full(RateLimit(rate=rate, burst=burst), now=0.0)
    now = 0.0
    while bucket.take(now, cost).allowed:
        pass
    refused = bucket.take(now, cost)
    assert not refused.allowed
    assert refused.retry_after_s > 0
    early = refused.retry_after_s * 0.99
    assert not bucket.take(now + early, cost).allowed
    assert bucket.take(now + refused.retry_after_s, cost).allowed


def test_retry_after_exact_after_refill_rounding() -> None:
    bucket = TokenBucket.full(RateLimit(rate=3.0, burst=1.0), now=0.0)
    now = 0.0
    admitted = 0
    for _ in range(1000):
        decision = bucket.take(now)
        if decision.allowed:
            admitted += 1
        else:
            now += decision.retry_after_s
    assert admitted >= 499  # every refusal is followed by an admission at exactly retry_after


def test_cost_out_of_range_is_refused_loudly() -> None:
    bucket = TokenBucket.full(RateLimit(rate=1.0, burst=2.0), now=0.0)
    for cost in (-1.0, 2.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="cost"):
            bucket.take(0.0, cost)
    assert bucket.take(0.0, 2.0).allowed
    assert bucket.take(0.0, 0.0).allowed


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (math.inf, 1)])
def test_invalid_limits(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="must be a finite number"):
        RateLimit(rate=rate, burst=burst)


def test_clock_going_backwards_adds_no_tokens() -> None:
    bucket = TokenBucket.full(RateLimit(rate=1.0, burst=1.0), now=100.0)
    assert bucket.take(100.0).allowed
    assert not bucket.take(50.0).allowed
    assert not bucket.take(100.5).allowed
    assert bucket.take(101.0).allowed


def test_retry_after_header_rounds_up() -> None:
    assert Decision(allowed=False, retry_after_s=0.2).retry_after_header == "1"
    assert Decision(allowed=False, retry_after_s=2.01).retry_after_header == "3"
    assert Decision(allowed=True).retry_after_header == "0"


async def test_local_limiter_keys_are_independent() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(RateLimit(rate=1.0, burst=2.0), clock=clock)
    assert [(await limiter.acquire("a")).allowed for _ in range(3)] == [True, True, False]
    assert (await limiter.acquire("b")).allowed
    clock.now += 1.0
    assert (await limiter.acquire("a")).allowed
    assert not (await limiter.acquire("a")).allowed
    await limiter.close()
    assert len(limiter) == 0


def test_local_limiter_drops_full_buckets_first() -> None:
    limiter = LocalRateLimiter(RateLimit(rate=1.0, burst=1.0), max_keys=3)
    assert limiter.take("busy", 0.0).allowed  # empty bucket, refills at 1.0
    for i in range(1000):
        assert limiter.take(f"k{i}", 10.0 + i * 0.5, cost=0.5).allowed
        assert len(limiter) <= 3
    assert limiter.forgiven == 0  # every evicted bucket had refilled: nothing forgiven


def test_local_limiter_is_bounded_lru() -> None:
    limiter = LocalRateLimiter(RateLimit(rate=0.001, burst=1.0), max_keys=100)
    for i in range(10_000):
        assert limiter.take(f"k{i}", 0.0).allowed
        assert len(limiter) <= 100
    assert limiter.forgiven == 10_000 - 100
    assert "k9999" in limiter
    assert "k0" not in limiter
    # The most recently used keys keep their (empty) buckets.
    assert not limiter.take("k9999", 0.0).allowed


def test_local_limiter_lru_keeps_recently_used_key() -> None:
    limiter = LocalRateLimiter(RateLimit(rate=0.001, burst=1.0), max_keys=2)
    assert limiter.take("a", 0.0).allowed
    assert limiter.take("b", 0.0).allowed
    assert not limiter.take("a", 0.0).allowed  # "a" is now the most recently used
    assert limiter.take("c", 0.0).allowed  # evicts "b"
    assert "a" in limiter
    assert "b" not in limiter
    assert not limiter.take("a", 0.0).allowed


steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
        st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    ),
    min_size=1,
    max_size=200,
)


@given(
    rate=st.floats(min_value=0.01, max_value=100.0),
    burst=st.floats(min_value=1.0, max_value=50.0),
    steps=steps,
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: float, steps: list[tuple[float, float]]
) -> None:
    limit = RateLimit(rate=rate, burst=burst)
    limiter = LocalRateLimiter(limit, max_keys=4)
    start = now = 0.0
    admitted = 0.0
    for dt, fraction in steps:
        now += dt
        cost = fraction * burst
        decision = limiter.take("subject", now, cost)
        if decision.allowed:
            admitted += cost
            assert decision.retry_after_s == 0.0
        else:
            assert decision.retry_after_s > 0
        bound = burst + rate * (now - start)
        assert admitted <= bound * (1 + 1e-9) + 1e-9
