"""What only the SQLite store promises: durability settings, persistence, group commit."""

import asyncio
import contextlib
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.adapters.sqlite_store import SqliteEventStore
from gateway.core.ids import LocalSeq
from gateway.core.ingest import StorableEvent
from gateway.core.records import StoredEvent
from gateway.errors import StoreCorrupt, StoreUnavailable
from tests.factories import storable


async def test_store_runs_in_wal_with_full_sync(tmp_path: Path) -> None:
    async with SqliteEventStore(tmp_path / "s.sqlite3") as store:
        await store.append([storable()])
        with sqlite3.connect(store.path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db_conn = store._db
        assert db_conn is not None
        async with db_conn.execute("PRAGMA synchronous") as cursor:
            row = await cursor.fetchone()
        assert row is not None
        assert row[0] == 2  # FULL


async def test_events_survive_reopen(tmp_path: Path) -> None:
    events = [storable() for _ in range(50)]
    async with SqliteEventStore(tmp_path / "s.sqlite3") as store:
        await store.append(events)
    async with SqliteEventStore(tmp_path / "s.sqlite3") as store:
        assert await store.count() == 50
        assert await store.append(events[:3]) == [False, False, False]


async def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    async with SqliteEventStore(tmp_path / "s.sqlite3") as store:
        commits = 0
        original = store._commit

        async def counting(events: list[StorableEvent]) -> list[bool]:
            nonlocal commits
            commits += 1
            return await original(events)

        store._commit = counting  # type: ignore[method-assign]
        await asyncio.gather(*(store.append([storable()]) for _ in range(200)))
        assert await store.count() == 200
        assert commits < 200 / 4  # group commit, not one fsync per request


async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "s.sqlite3")
    await store.open()
    pending = [asyncio.ensure_future(store.append([storable()])) for _ in range(20)]
    await asyncio.sleep(0)
    await store.close()
    assert all(p.result() == [True] for p in pending)
    async with SqliteEventStore(tmp_path / "s.sqlite3") as again:
        assert await again.count() == 20


async def test_append_after_close_is_refused(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "s.sqlite3")
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.append([storable()])


async def test_garbage_file_is_refused_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreCorrupt):
        await SqliteEventStore(path).open()


async def test_full_store_refuses_and_recovers_after_prune(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "s.sqlite3", max_bytes=256 * 1024)
    async with store:
        big = [storable() for _ in range(2000)]
        stored = 0
        refusal: StoreUnavailable | None = None
        for start in range(0, len(big), 50):
            try:
                await store.append(big[start : start + 50])
            except StoreUnavailable as exc:
                refusal = exc
                break
            stored += 50
        assert refusal is not None
        assert "full" in str(refusal)
        assert stored > 0
        assert await store.count() == stored  # the failed commit changed nothing
        last = (await store.read_after(LocalSeq(0), stored))[-1]
        await store.mark_forwarded(last.seq)
        assert await store.prune_forwarded(received_before_ms=2**62) == stored
        assert await store.append(big[stored : stored + 50]) == [True] * 50


async def test_a_read_never_sees_rows_of_a_commit_still_open(tmp_path: Path) -> None:
    """The forwarder reads while a group commit is open on the same connection. A read run
    inside that transaction would see its rows; if the commit then fails they vanish (the
    client re-sends them: forwarded twice) and their sequence numbers go to later events (which
    the forwarder's position has already passed: lost). Seen as 1,200 lost and 1,200 duplicated
    events in the long full-disk scenario."""
    reads: list[asyncio.Future[list[StoredEvent]]] = []

    def fail_mid_commit(point: str) -> None:
        if point == "mid_store_commit" and not reads:
            reads.append(asyncio.ensure_future(store.read_after(LocalSeq(0), 100)))
            raise sqlite3.OperationalError("database or disk is full")

    store = SqliteEventStore(tmp_path / "s.sqlite3", crash_hook=fail_mid_commit)
    async with store:
        refused = [storable() for _ in range(3)]
        with pytest.raises(StoreUnavailable):
            await store.append(refused)
        assert await reads[0] == [], "a read saw rows that were never committed"
        later = [storable() for _ in range(3)]
        assert await store.append(later) == [True] * 3
        stored = await store.read_after(LocalSeq(0), 100)
        assert [s.event.event_id for s in stored] == [e.event_id for e in later]


async def test_a_read_does_not_wait_for_a_commit_in_progress(tmp_path: Path) -> None:
    """Reads have their own connection: the forwarder's next read never queues behind an
    ingest commit's fsync (on one shared connection it waited for every one)."""
    async with SqliteEventStore(tmp_path / "s.sqlite3") as store:
        first = storable()
        await store.append([first])
        async with store._transaction("held open (a commit in progress)") as db:
            await db.execute("INSERT INTO meta (name, value) VALUES ('open', 1)")
            stored = await asyncio.wait_for(store.read_after(LocalSeq(0), 10), 5)
        assert [s.event.event_id for s in stored] == [first.event_id]


class Device:
    """A stand-in for ``shutil.disk_usage``: the store's device with ``free`` bytes free."""

    def __init__(self, free: int) -> None:
        self.free = free
        self._real = shutil.disk_usage

    def __call__(self, path: Path) -> object:
        return self._real(path)._replace(free=self.free)


async def test_ingest_keeps_off_the_device_reserve_and_recovers_as_pages_free_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below ``min_free_bytes`` (free on the device plus pages the store can reuse) new events
    are refused and nothing changes; the forwarder's mark and pruning still write, and the
    pages pruning frees count: ingest resumes without any space returning to the device."""
    device = Device(free=10 * 2**20)
    monkeypatch.setattr(shutil, "disk_usage", device)
    reserve = 64 * 1024
    async with SqliteEventStore(tmp_path / "s.sqlite3", min_free_bytes=reserve) as store:
        events = [replace(storable(), value=b"x" * 2000) for _ in range(200)]
        assert await store.append(events[:100]) == [True] * 100
        device.free = reserve - 1
        with pytest.raises(StoreUnavailable, match="nearly full"):
            await store.append(events[100:])
        assert await store.count() == 100  # the refused commit changed nothing
        last = (await store.read_after(LocalSeq(0), 100))[-1]
        await store.mark_forwarded(last.seq)  # bookkeeping still writes inside the reserve
        assert await store.prune_forwarded(received_before_ms=2**62) == 100
        assert await store.append(events[100:]) == [True] * 100  # reuses the freed pages
        device.free = 0
        with pytest.raises(StoreUnavailable, match="nearly full"):
            await store.append([storable() for _ in range(100)])


async def test_a_store_of_schema_version_1_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(
            """
            CREATE TABLE events (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
                event_type TEXT NOT NULL, event_version INTEGER NOT NULL, key TEXT NOT NULL,
                source TEXT NOT NULL, correlation_id TEXT NOT NULL, value BLOB NOT NULL,
                received_at_ms INTEGER NOT NULL);
            INSERT INTO events VALUES (1, 'old-1', 'Order.Placed', 1, 'k', 's', 'c', x'7b7d', 1);
            PRAGMA user_version=1;
            """
        )
    async with SqliteEventStore(path) as store:
        [old] = await store.read_after(LocalSeq(0), 10)
        assert old.event.event_id == "old-1"
        assert old.event.traceparent is None
        new = replace(
            storable(), traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        )
        assert await store.append([new]) == [True]
        assert (await store.read_after(LocalSeq(1), 10))[0].event == new


@pytest.mark.parametrize("steps", range(1, 8))
async def test_a_cancelled_write_leaves_the_store_writable(tmp_path: Path, steps: int) -> None:
    async with SqliteEventStore(tmp_path / "store.sqlite3") as store:
        await store.append([storable()])
        for _ in range(3):
            write = asyncio.create_task(store.mark_forwarded(LocalSeq(1)))
            for _ in range(steps):  # cancel it at a different point each time
                await asyncio.sleep(0)
            write.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await write
        assert await store.append([storable()]) == [True]
