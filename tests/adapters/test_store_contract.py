"""The same assertions against every EventStore implementation."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.adapters.memory_store import MemoryEventStore
from gateway.adapters.sqlite_store import SqliteEventStore
from gateway.core.ids import LocalSeq
from gateway.core.records import Backlog, QuarantineEntry
from gateway.flows.ports import EventStore
from tests.factories import cancel_after, storable


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    if request.param == "memory":
        yield MemoryEventStore()
        return
    async with SqliteEventStore(tmp_path / "store.sqlite3") as sqlite_store:
        yield sqlite_store


async def test_new_events_are_stored_once(store: EventStore) -> None:
    a, b = storable(), storable()
    assert await store.append([a, b]) == [True, True]
    assert await store.append([b, a]) == [False, False]
    assert await store.count() == 2
    got = await store.get(a.event_id)
    assert got is not None
    assert got.event == a


async def test_same_id_twice_in_one_append(store: EventStore) -> None:
    a = storable()
    assert await store.append([a, a]) == [True, False]
    assert await store.count() == 1


async def test_concurrent_appends_of_one_id_accept_exactly_one(store: EventStore) -> None:
    a = storable()
    answers = await asyncio.gather(*(store.append([a]) for _ in range(20)))
    assert sorted(answer[0] for answer in answers).count(True) == 1
    assert await store.count() == 1


async def test_read_after_is_in_store_order(store: EventStore) -> None:
    events = [storable() for _ in range(10)]
    await store.append(events[:4])
    await store.append(events[4:])
    page = await store.read_after(LocalSeq(0), 100)
    assert [s.event.event_id for s in page] == [e.event_id for e in events]
    seqs = [s.seq for s in page]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    rest = await store.read_after(page[3].seq, 3)
    assert [s.event.event_id for s in rest] == [e.event_id for e in events[4:7]]


async def test_empty_append_is_a_no_op(store: EventStore) -> None:
    assert await store.append([]) == []
    assert await store.count() == 0


async def test_unknown_id_is_none(store: EventStore) -> None:
    assert await store.get(storable().event_id) is None


async def test_forwarded_mark_only_moves_forward(store: EventStore) -> None:
    assert await store.forwarded_mark() == 0
    await store.mark_forwarded(LocalSeq(5))
    await store.mark_forwarded(LocalSeq(3))
    assert await store.forwarded_mark() == 5


async def test_backlog_counts_what_is_past_the_mark(store: EventStore) -> None:
    await store.append([storable() for _ in range(5)])
    page = await store.read_after(LocalSeq(0), 10)
    assert (await store.backlog()).events == 5
    await store.mark_forwarded(page[2].seq)
    backlog = await store.backlog()
    assert backlog.events == 2
    assert backlog.oldest_received_ms == page[3].received_at_ms
    await store.mark_forwarded(page[4].seq)
    assert await store.backlog() == Backlog(0, None)


async def test_quarantine_and_replay(store: EventStore) -> None:
    events = [storable() for _ in range(3)]
    await store.append(events)
    page = await store.read_after(LocalSeq(0), 10)
    poison = page[1]
    entry = QuarantineEntry(poison.seq, poison.event.event_id, "record too large", 1)
    await store.quarantine([entry])
    await store.quarantine([entry])
    assert await store.quarantined() == [entry]
    await store.mark_forwarded(page[2].seq)
    assert await store.replay_quarantined([poison.event.event_id]) == 1
    assert await store.quarantined() == []
    assert len(await store.quarantined(include_replayed=True)) == 1
    again = await store.read_after(page[2].seq, 10)
    assert [s.event for s in again] == [poison.event]
    assert await store.count() == 3


async def test_prune_keeps_unforwarded_and_quarantined(store: EventStore) -> None:
    await store.append([storable() for _ in range(4)])
    page = await store.read_after(LocalSeq(0), 10)
    await store.quarantine([QuarantineEntry(page[0].seq, page[0].event.event_id, "x", 1)])
    await store.mark_forwarded(page[2].seq)
    pruned = await store.prune_forwarded(received_before_ms=page[3].received_at_ms + 1)
    assert pruned == 2
    left = await store.read_after(LocalSeq(0), 10)
    assert [s.seq for s in left] == [page[0].seq, page[3].seq]
    assert await store.prune_forwarded(received_before_ms=0) == 0


async def test_wait_for_append_wakes_on_new_events(store: EventStore) -> None:
    waiter = asyncio.ensure_future(store.wait_for_append(5))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await store.append([storable()])
    await asyncio.wait_for(waiter, 1)


async def test_trace_context_is_kept_with_the_event(store: EventStore) -> None:
    traced = replace(
        storable(), traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    )
    plain = storable()
    await store.append([traced, plain])
    [first, second] = await store.read_after(LocalSeq(0), 10)
    assert first.event == traced
    assert second.event.traceparent is None


@pytest.mark.parametrize("steps", range(1, 7))
async def test_a_cancelled_read_leaves_the_store_current_and_writable(
    store: EventStore, steps: int
) -> None:
    """A request cancelled mid-read (its client went away) must not pin the store's view: a
    statement left active would hold an old snapshot, hiding later commits from every read on
    that connection (and a write transaction could not start on it)."""
    await store.append([storable() for _ in range(20)])
    reads: list[Callable[[], Awaitable[object]]] = [
        lambda: store.read_after(LocalSeq(0), 1000),
        lambda: store.backlog(),
        lambda: store.count(),
        lambda: store.quarantined(),
    ]
    expected = 20
    for start in reads:
        await cancel_after(start, steps)
        assert await store.append([storable()]) == [True]
        expected += 1
        assert await store.count() == expected
        assert len(await store.read_after(LocalSeq(0), 1000)) == expected
        assert (await store.backlog()).events == expected


async def test_a_cancelled_wait_for_append_is_cancelled_even_with_an_append_pending(
    store: EventStore,
) -> None:
    """The forwarder goes idle with the append flag already set just as stop() cancels it.
    Python 3.11's ``asyncio.wait_for`` then returned normally and the cancellation was lost:
    the forwarder ran on and stop() waited for it forever."""
    await store.append([storable()])  # the flag is set
    task = asyncio.create_task(store.wait_for_append(10))
    await asyncio.sleep(0)  # the wait has begun
    requested = task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return
    assert not requested, "the cancellation was swallowed"
