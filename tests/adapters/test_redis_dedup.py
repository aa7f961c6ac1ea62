"""Fleet dedup against a real redis-server: claims, confirms and releases across two instances,
pending claims that expire, Redis flushed or down, and large batches."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.adapters.redis_dedup import RedisFleetDedup
from gateway.core.ingest import Claim
from gateway.errors import FleetDedupUnavailable, GatewayError
from gateway.testing.redis_server import RedisServer

pytestmark = pytest.mark.integration

WINDOW_S = 7 * 24 * 3600


def new_ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


@pytest.fixture
async def fleet(
    redis_server: RedisServer,
) -> AsyncIterator[tuple[RedisFleetDedup, RedisFleetDedup]]:
    a = RedisFleetDedup(redis_server.url, "gw-a", WINDOW_S, pending_ttl_s=30)
    b = RedisFleetDedup(redis_server.url, "gw-b", WINDOW_S, pending_ttl_s=30)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_claim_confirm_across_instances(
    fleet: tuple[RedisFleetDedup, RedisFleetDedup],
) -> None:
    a, b = fleet
    [x] = new_ids(1)
    assert await a.claim([x]) == {x: Claim.OURS}
    assert await b.claim([x]) == {x: Claim.PENDING_ELSEWHERE}
    assert await a.claim([x]) == {x: Claim.OURS}  # ours already: the local store decides
    assert await a.confirm([x]) == []
    assert await b.claim([x]) == {x: Claim.COMMITTED_ELSEWHERE}
    assert await a.claim([x]) == {x: Claim.OURS}


async def test_values_and_ttls(
    fleet: tuple[RedisFleetDedup, RedisFleetDedup], redis_server: RedisServer
) -> None:
    a, _ = fleet
    [x] = new_ids(1)
    key = a.redis_key(x)
    assert key.startswith("sync-gateway:")
    await a.claim([x])
    with redis_server.client() as client:
        assert client.get(key) == b"p:gw-a"
        assert 0 < client.pttl(key) <= 30_000
        await a.confirm([x])
        assert client.get(key) == b"c:gw-a"
        assert 30_000 < client.pttl(key) <= WINDOW_S * 1000


async def test_release_deletes_only_our_pending_claims(
    fleet: tuple[RedisFleetDedup, RedisFleetDedup],
) -> None:
    a, b = fleet
    mine, theirs, committed = new_ids(3)
    await a.claim([mine, committed])
    await a.confirm([committed])
    await b.claim([theirs])
    assert await a.release([mine, theirs, committed]) == 1
    assert await b.claim([mine, theirs, committed]) == {
        mine: Claim.OURS,
        theirs: Claim.OURS,
        committed: Claim.COMMITTED_ELSEWHERE,
    }
    assert await a.claim([theirs]) == {theirs: Claim.PENDING_ELSEWHERE}


async def test_confirm_leaves_another_instances_claim_and_reports_it(
    fleet: tuple[RedisFleetDedup, RedisFleetDedup], redis_server: RedisServer
) -> None:
    a, b = fleet
    held_by_b, vanished = new_ids(2)
    await b.claim([held_by_b])
    assert await a.confirm([held_by_b, vanished]) == [held_by_b]
    with redis_server.client() as client:
        assert client.get(a.redis_key(held_by_b)) == b"p:gw-b"
        assert client.get(a.redis_key(vanished)) == b"c:gw-a"  # nobody held it: now known
    assert await b.claim([vanished]) == {vanished: Claim.COMMITTED_ELSEWHERE}


async def test_pending_claim_of_a_crashed_instance_expires_and_never_says_duplicate(
    redis_server: RedisServer,
) -> None:
    crashed = RedisFleetDedup(redis_server.url, "gw-crashed", WINDOW_S, pending_ttl_s=0.5)
    survivor = RedisFleetDedup(redis_server.url, "gw-survivor", WINDOW_S, pending_ttl_s=0.5)
    try:
        ids = new_ids(20)
        assert set((await crashed.claim(ids)).values()) == {Claim.OURS}
        await crashed.close()  # "crashes" before its store commits: no confirm, no release
        seen: list[set[Claim]] = []
        deadline = time.monotonic() + 5.0
        for _ in range(200):
            answers = set((await survivor.claim(ids)).values())
            seen.append(answers)
            if answers == {Claim.OURS} or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert seen[0] == {Claim.PENDING_ELSEWHERE}
        assert seen[-1] == {Claim.OURS}
        assert all(Claim.COMMITTED_ELSEWHERE not in answers for answers in seen)
    finally:
        await survivor.close()


async def test_flush_makes_ids_claimable_again(
    fleet: tuple[RedisFleetDedup, RedisFleetDedup], redis_server: RedisServer
) -> None:
    """Documented bound (1): a flushed Redis forgets the fleet's claims; the local stores
    still know their own ids, so only a retry on *another* instance can duplicate."""
    a, b = fleet
    ids = new_ids(10)
    await a.claim(ids)
    await a.confirm(ids)
    assert set((await b.claim(ids)).values()) == {Claim.COMMITTED_ELSEWHERE}
    redis_server.flushall()
    assert set((await b.claim(ids)).values()) == {Claim.OURS}
    # A's store still holds them; A confirming again does not overwrite B's claims.
    assert sorted(await a.confirm(ids)) == sorted(ids)


async def test_redis_down_raises_quickly_then_recovers(redis_server: RedisServer) -> None:
    cooldown = 0.3
    dedup = RedisFleetDedup(
        redis_server.url, "gw-a", WINDOW_S, socket_timeout_s=0.25, cooldown_s=cooldown
    )
    try:
        [x, y] = new_ids(2)
        assert await dedup.claim([x]) == {x: Claim.OURS}
        redis_server.kill()
        for call in (dedup.claim, dedup.confirm, dedup.release):
            started = time.monotonic()
            with pytest.raises(FleetDedupUnavailable) as caught:
                await call([y])
            assert time.monotonic() - started < 0.5
            assert caught.value.retriable
            assert isinstance(caught.value, GatewayError)
        assert dedup.degraded
        assert dedup.redis_failures == 1  # the other calls failed fast within the cooldown
        redis_server.start()
        await asyncio.sleep(cooldown + 0.05)
        assert await dedup.claim([y]) == {y: Claim.OURS}
        assert not dedup.degraded
    finally:
        redis_server.start()
        await dedup.close()


async def test_slow_redis_raises_within_the_socket_timeout(redis_server: RedisServer) -> None:
    dedup = RedisFleetDedup(redis_server.url, "gw-a", WINDOW_S, socket_timeout_s=0.1)
    try:
        [x] = new_ids(1)
        await dedup.claim(new_ids(1))  # connected, script loaded
        with redis_server.client() as client:
            client.execute_command("CLIENT", "PAUSE", "800", "ALL")
        try:
            started = time.monotonic()
            with pytest.raises(FleetDedupUnavailable):
                await dedup.claim([x])
            assert time.monotonic() - started < 0.5
        finally:
            with redis_server.client() as client:
                client.execute_command("CLIENT", "UNPAUSE")
    finally:
        await dedup.close()


def evalsha_calls(redis_server: RedisServer) -> int:
    with redis_server.client() as client:
        stats = client.info("commandstats")
    entry = stats.get("cmdstat_evalsha", {"calls": 0})
    assert isinstance(entry, dict)
    return int(entry["calls"])


async def test_a_batch_of_1000_ids_is_one_round_trip(
    fleet: tuple[RedisFleetDedup, RedisFleetDedup], redis_server: RedisServer
) -> None:
    a, b = fleet
    for dedup in (a, b):  # load the scripts first
        await dedup.claim(new_ids(1))
        await dedup.confirm(new_ids(1))
    ids = new_ids(1000)
    before = evalsha_calls(redis_server)
    started = time.monotonic()
    claims = await a.claim(ids)
    assert evalsha_calls(redis_server) == before + 1
    assert len(claims) == 1000
    assert set(claims.values()) == {Claim.OURS}
    assert await a.confirm(ids) == []
    assert evalsha_calls(redis_server) == before + 2
    fresh = new_ids(1000)
    answers = await b.claim(ids + fresh)
    assert [answers[i] for i in ids] == [Claim.COMMITTED_ELSEWHERE] * 1000
    assert [answers[i] for i in fresh] == [Claim.OURS] * 1000
    assert time.monotonic() - started < 5.0


async def test_repeated_and_long_ids(fleet: tuple[RedisFleetDedup, RedisFleetDedup]) -> None:
    a, b = fleet
    long_id = "z" * 10_000 + str(uuid.uuid4())
    [x] = new_ids(1)
    assert await a.claim([x, x, long_id]) == {x: Claim.OURS, long_id: Claim.OURS}
    assert len(a.redis_key(long_id)) < 300
    assert await a.confirm([x, long_id, x]) == []
    assert await b.claim([long_id]) == {long_id: Claim.COMMITTED_ELSEWHERE}
    assert await a.claim([]) == {}


async def test_foreign_values_are_never_duplicates(
    fleet: tuple[RedisFleetDedup, RedisFleetDedup], redis_server: RedisServer
) -> None:
    a, _ = fleet
    [x] = new_ids(1)
    with redis_server.client() as client:
        client.set(a.redis_key(x), b"something else", px=60_000)
    assert await a.claim([x]) == {x: Claim.OURS}


@pytest.mark.parametrize("instance_id", ["", "i" * 65])
def test_instance_id_is_bounded(instance_id: str) -> None:
    with pytest.raises(ValueError, match="instance_id"):
        RedisFleetDedup("redis://127.0.0.1:1/0", instance_id)
