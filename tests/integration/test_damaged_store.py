"""A damaged store (issue 8): a flipped byte in an event is caught by its checksum and never
forwarded; a flipped byte in the file's structure makes the gateway refuse to start with a clear
error; a truncated WAL is recovered to its last complete commit, with nothing damaged forwarded."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.adapters.memory_publisher import MemoryPublisher
from gateway.adapters.sqlite_store import SqliteEventStore
from gateway.core.forwarding import DAMAGED_REASON
from gateway.core.ids import LocalSeq
from gateway.errors import StoreCorrupt
from gateway.testing.gateway_process import GatewayProcess
from tests.factories import storable
from tests.flows.test_forwarder import DLQ, make_forwarder, wait_drained

pytestmark = pytest.mark.integration

MARKER = b"MARKER-0123456789"


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


async def test_a_flipped_byte_in_an_event_is_quarantined_not_forwarded(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    events = [storable() for _ in range(5)]
    marked = [
        e if i != 2 else replace(e, value=b'{"note": "' + MARKER + b'"}')
        for i, e in enumerate(events)
    ]
    async with SqliteEventStore(path) as store:
        assert await store.append(marked) == [True] * 5
    offset = path.read_bytes().find(MARKER)
    assert offset > 0, "the value is in the main file once the store is closed"
    flip(path, offset + 3)
    async with SqliteEventStore(path) as store:  # the structure is intact: it opens
        publisher = MemoryPublisher()
        forwarder = make_forwarder(store, publisher)
        forwarder.start()
        try:
            await wait_drained(store)
        finally:
            await forwarder.stop()
        [entry] = await store.quarantined()
        assert entry.event_id == marked[2].event_id
        assert entry.reason == DAMAGED_REASON
    forwarded = [r for r in publisher.committed if r.topic != DLQ]
    assert sorted(dict(r.headers)["event_id"].decode() for r in forwarded) == sorted(
        e.event_id for i, e in enumerate(marked) if i != 2
    )
    [letter] = [r for r in publisher.committed if r.topic == DLQ]
    assert MARKER[:3] not in letter.value  # the damaged bytes are not sent on


async def test_a_damaged_file_structure_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    async with SqliteEventStore(path) as store:
        await store.append([storable() for _ in range(2000)])
    size = path.stat().st_size
    assert size > 8 * 4096
    for page in (3, 4, 5):  # b-tree page headers of the events table and its index
        flip(path, page * 4096 + 1)
    with pytest.raises(StoreCorrupt, match="is damaged"):
        async with SqliteEventStore(path):
            pass


def test_the_gateway_refuses_to_start_on_a_damaged_store(tmp_path: Path) -> None:
    data = tmp_path / "gw"
    settings = {"kafka_bootstrap": "127.0.0.1:1"}
    asyncio.run(_fill(data / "gateway.sqlite3"))
    for page in (3, 4, 5):
        flip(data / "gateway.sqlite3", page * 4096 + 1)
    gateway = GatewayProcess(data, settings=settings)
    with pytest.raises(RuntimeError) as refused:
        gateway.start(timeout=60)
    assert "is damaged" in str(refused.value)


async def _fill(path: Path) -> None:
    async with SqliteEventStore(path) as store:
        await store.append([storable() for _ in range(2000)])


async def test_a_truncated_wal_recovers_to_its_last_complete_commit(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = SqliteEventStore(path)
    await store.open()
    acked = []
    for _ in range(20):
        batch = [storable() for _ in range(10)]
        assert await store.append(batch) == [True] * 10
        acked += [e.event_id for e in batch]
    wal = path.with_name(path.name + "-wal")
    # a crash copy: the files as they are on disk now, the WAL with its tail cut off
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(path, crashed / path.name)
    wal_bytes = wal.read_bytes()
    (crashed / wal.name).write_bytes(wal_bytes[: len(wal_bytes) - 5000])
    await store.close()
    async with SqliteEventStore(crashed / path.name) as recovered:
        rows = await recovered.read_after(LocalSeq(0), 10_000)
    ids = [r.event.event_id for r in rows]
    assert ids == acked[: len(ids)]  # a prefix of the commits: whole batches, in order
    assert len(ids) % 10 == 0
    assert not any(r.damaged for r in rows)
