"""The same assertions against every EventStore implementation."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.adapters.memory_store import MemoryEventStore
from gateway.adapters.sqlite_store import SqliteEventStore
from gateway.core.ids import LocalSeq
from gateway.flows.ports import EventStore
from tests.factories import storable


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
